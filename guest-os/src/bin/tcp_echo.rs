//! `tcp-echo`: echoes every byte of every TCP connection back, on port 7 or `port=N`, to many
//! connections at once.
//!
//! Backpressure end to end: a connection's bytes are read only as far as its send buffer has
//! room to echo them, so a client that does not read its echo fills our send buffer, then our
//! receive buffer, and its own sending stalls on our closed window; nothing is dropped and no
//! connection holds up another. When the client closes its sending half, the rest of the echo
//! goes out and the connection is closed.
//!
//! Arguments: `port=N` (default 7), `backlog=N` (connections waiting to be accepted, default
//! 16), `max_conns=N` (connections served at once, default 256: beyond it, new ones wait in the
//! backlog), `report=N` (print a `tcp-echo:` line every N connections ended, default 64).

#![no_std]
#![no_main]

extern crate alloc;

use alloc::vec::Vec;
use guest_os::net::{self, format_ipv4, Net, TcpError, TcpHandle};
use guest_os::{println, Env};

const DEFAULT_PORT: u16 = 7;
const DEFAULT_BACKLOG: usize = 16;
const DEFAULT_MAX_CONNS: usize = 256;
const DEFAULT_REPORT_EVERY: u64 = 64;

/// What the echo has done so far, for its report lines.
#[derive(Default)]
struct Totals {
    accepted: u64,
    ended: u64,
    /// Connections that ended with an error (reset, timed out) rather than the client's close.
    failed: u64,
    bytes: u64,
}

/// Moves what `conn` has received back to it, as far as its send buffer has room. Returns
/// how the connection ended once it is over (the client closed and everything it sent was
/// queued for echoing, or it failed), `None` while it goes on.
fn serve(net: &mut Net, conn: TcpHandle, buf: &mut [u8], totals: &mut Totals) -> Option<Result<(), TcpError>> {
    loop {
        let room = net.tcp_send_room(conn).min(buf.len());
        if room == 0 && !net.tcp_is_closed(conn) {
            // The send buffer is full (or not yet open): what came in waits in the receive
            // buffer, and the window tells the client to wait.
            return None;
        }
        match net.tcp_recv(conn, &mut buf[..room]) {
            Ok(0) => return None,
            Ok(n) => match net.tcp_send(conn, &buf[..n]) {
                // All of it: no more was read than the send buffer had room for.
                Ok(sent) if sent == n => totals.bytes += n as u64,
                Ok(sent) => {
                    println!("tcp-echo: the send buffer took {sent} of the {n} bytes it had room for");
                    return Some(Err(TcpError::SendClosed));
                }
                Err(e) => return Some(Err(e)),
            },
            Err(TcpError::Finished) => return Some(Ok(())),
            Err(e) => return Some(Err(e)),
        }
    }
}

fn main(env: &Env) -> i32 {
    let number = |key: &str, default: usize| env.arg(key).and_then(|v| v.parse().ok()).unwrap_or(default);
    let port = number("port", usize::from(DEFAULT_PORT)) as u16;
    let backlog = number("backlog", DEFAULT_BACKLOG);
    let max_conns = number("max_conns", DEFAULT_MAX_CONNS);
    let report_every = number("report", DEFAULT_REPORT_EVERY as usize).max(1) as u64;
    let Some(mut net) = net::open(env) else {
        println!("tcp-echo: this guest has no network interface");
        return 2;
    };
    let listener = match net.tcp_listen(port, backlog) {
        Ok(listener) => listener,
        Err(e) => {
            println!("tcp-echo: cannot listen on port {port}: {e:?}");
            return 2;
        }
    };
    let ip = env.net.map(|n| n.ipv4).unwrap_or_default();
    let options = net.tcp_options();
    println!(
        "tcp-echo listening on {}:{port} backlog={backlog} rx_buffer={} tx_buffer={}",
        format_ipv4(ip),
        options.rx_buffer,
        options.tx_buffer
    );
    let mut buf = alloc::vec![0u8; 16 * 1024];
    let mut conns: Vec<TcpHandle> = Vec::new();
    let mut totals = Totals::default();
    loop {
        net.poll();
        while conns.len() < max_conns {
            let Some(conn) = net.tcp_accept(listener) else { break };
            totals.accepted += 1;
            conns.push(conn);
        }
        let mut index = 0;
        while let Some(&conn) = conns.get(index) {
            match serve(&mut net, conn, &mut buf, &mut totals) {
                None => index += 1,
                Some(result) => {
                    // Closing sends what is still queued, then the FIN; the stack frees the
                    // connection when the client has acknowledged it.
                    if result.is_err() {
                        totals.failed += 1;
                    }
                    net.tcp_close(conn);
                    conns.swap_remove(index);
                    totals.ended += 1;
                    if totals.ended.is_multiple_of(report_every) {
                        println!(
                            "tcp-echo: {} connections accepted, {} ended ({} failed), {} open, {} bytes echoed",
                            totals.accepted,
                            totals.ended,
                            totals.failed,
                            conns.len(),
                            totals.bytes
                        );
                    }
                }
            }
        }
        if !net.poll() {
            net.wait();
        }
    }
}

guest_os::entry!(main);
