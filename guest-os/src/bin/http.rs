//! `http`: an HTTP/1.1 server (the `http-server` crate) on port 80 or `port=N`. `GET /` is a
//! page naming the guest, `GET /bytes/N` streams N bytes of the pattern `i % 251`; see the crate
//! for the rest.
//!
//! One loop serves every connection and never waits on any one of them: each pass reads what
//! has arrived (no more than the connection's parser takes: the rest waits in the socket, and
//! TCP's window holds the client back), writes as much as the socket has room for (a body is
//! generated as room appears: backpressure, never a drop), and checks the connection's
//! timeouts; then the guest sleeps until a frame, a send completion or the next deadline.
//!
//! Arguments: `port=N`; `max_connections=N` (default 64) connections are served at once;
//! beyond them, up to [`MAX_REFUSING`] more are accepted at a time and answered 503 (with
//! `Retry-After`) so that an HTTP client learns why, and any further ones are left in the
//! listener's backlog (`backlog=N`, default 16) until a slot frees (where the stack resets
//! connection requests once the backlog is full); `idle_timeout_ms=N`, `head_timeout_ms=N`, `max_head_bytes=N` (see
//! [`Limits`]). Counters go to the console as an `http:` line, at most once a second while they
//! change, and requests, error responses and body bytes also into the guest's published counters
//! (`guest_http_*` in the kernel's `stats:` line).

#![no_std]
#![no_main]

extern crate alloc;

use alloc::string::ToString;
use alloc::vec;
use alloc::vec::Vec;
use guest_os::net::{self, format_ipv4, Duration, Net, TcpError, TcpHandle};
use guest_os::{println, Env};
use http_server::{Connection, Counters, Ending, Limits, Server, Site, Timeout};
use hypercall_abi::vnic::GuestCounter;
use netstack::Instant;

const DEFAULT_PORT: u16 = 80;
const DEFAULT_MAX_CONNECTIONS: usize = 64;
/// Connections beyond the limit that are answered 503 at a time: each holds a socket until its
/// answer is out, so their number is bounded too.
const MAX_REFUSING: usize = 8;
/// Connections the listener holds ready before the app accepts them, unless `backlog=N`.
const DEFAULT_BACKLOG: usize = 16;
/// Bytes read from a socket in one step.
const CHUNK: usize = 16 * 1024;
/// The counters are printed at most this often.
const REPORT_INTERVAL: Duration = Duration::from_secs(1);

struct Client {
    socket: TcpHandle,
    http: Connection,
    /// Answered 503: not counted against the limit of served connections.
    refused: bool,
}

/// What became of a connection in one pass.
enum Pass {
    /// Still open; whether anything moved.
    Open { progressed: bool },
    /// Over, and how: the socket was given back.
    Ended(Ending),
}

fn millis(now: Instant) -> u64 {
    now.total_millis().max(0) as u64
}

/// One pass over one connection: read, time out, write, and end it if it is done.
fn serve(net: &mut Net, server: &mut Server, client: &mut Client, chunk: &mut [u8]) -> Pass {
    let socket = client.socket;
    let http = &mut client.http;
    let now = millis(net.now());
    let mut progressed = false;
    while http.wants_input() {
        let want = http.input_room().min(chunk.len());
        match net.tcp_recv(socket, &mut chunk[..want]) {
            Ok(0) => break,
            Ok(n) => {
                // The parser takes all of it: no more was read than it said it takes.
                http.receive(&chunk[..n], now);
                progressed = true;
            }
            Err(TcpError::Finished) => {
                http.peer_closed();
                break;
            }
            Err(_) => {
                // Reset by the peer, or timed out by the stack: give the handle back.
                net.tcp_abort(socket);
                return Pass::Ended(Ending::Reset);
            }
        }
    }
    match http.check_timeouts(server, now) {
        Some(Timeout::Idle { stalled: true }) => {
            // The client stopped reading mid-response: there is no clean end.
            net.tcp_abort(socket);
            return Pass::Ended(Ending::Reset);
        }
        Some(Timeout::Idle { stalled: false }) => {
            net.tcp_close(socket);
            return Pass::Ended(Ending::Closed);
        }
        Some(Timeout::Head) | None => {}
    }
    // Responses are written straight into the send buffer (bodies generated in place), as far
    // as it has room; the rest waits for the peer's acknowledgements.
    loop {
        match net.tcp_send_with(socket, |room| http.output(server, room, now)) {
            Ok(0) => break,
            Ok(_) => progressed = true,
            Err(_) => {
                net.tcp_abort(socket);
                return Pass::Ended(Ending::Reset);
            }
        }
    }
    if http.is_finished() {
        // What is queued goes out, then the FIN; the stack frees the socket when both sides are done.
        net.tcp_close(socket);
        return Pass::Ended(Ending::Closed);
    }
    Pass::Open { progressed }
}

fn main(env: &Env) -> i32 {
    let number = |key: &str, default: u64| env.arg(key).and_then(|v| v.parse::<u64>().ok()).unwrap_or(default);
    let port = number("port", u64::from(DEFAULT_PORT));
    let Ok(port) = u16::try_from(port) else {
        println!("http: port={port} is not a port");
        return 2;
    };
    let max_connections = number("max_connections", DEFAULT_MAX_CONNECTIONS as u64) as usize;
    let backlog = number("backlog", DEFAULT_BACKLOG as u64).clamp(1, 1024) as usize;
    let defaults = Limits::default();
    let limits = Limits {
        max_head_bytes: number("max_head_bytes", defaults.max_head_bytes as u64) as usize,
        idle_timeout_ms: number("idle_timeout_ms", defaults.idle_timeout_ms),
        head_timeout_ms: number("head_timeout_ms", defaults.head_timeout_ms),
    };
    let Some(mut net) = net::open(env) else {
        println!("http: this guest has no network interface");
        return 2;
    };
    let listener = match net.tcp_listen(port, backlog) {
        Ok(listener) => listener,
        Err(e) => {
            println!("http: cannot listen on port {port}: {e:?}");
            return 2;
        }
    };
    let ipv4 = env.net.map(|n| n.ipv4).unwrap_or_default();
    let mut server = Server::new(&Site { name: env.name.to_string(), id: env.id, ipv4 }, limits);
    println!(
        "http listening on {}:{port} (at most {max_connections} connections, idle timeout {} ms, head timeout {} ms)",
        format_ipv4(ipv4),
        limits.idle_timeout_ms,
        limits.head_timeout_ms
    );
    let mut clients: Vec<Client> = Vec::new();
    let mut chunk = vec![0u8; CHUNK];
    let mut reported = Counters::default();
    let mut next_report = net.now();
    loop {
        net.poll();
        let now = net.now();
        // Accept while there is room: served connections up to the limit, then a few refused.
        loop {
            let served = clients.iter().filter(|c| !c.refused).count();
            let refusing = clients.len() - served;
            let refuse = served >= max_connections;
            if refuse && refusing >= MAX_REFUSING {
                break;
            }
            let Some(socket) = net.tcp_accept(listener) else { break };
            let now_ms = millis(now);
            // A connection whose request buffer the heap cannot hold is refused too.
            let http =
                if refuse { Connection::refused(&mut server, now_ms) } else { Connection::new(&mut server, now_ms) };
            clients.push(Client { socket, refused: http.is_refusal(), http });
        }
        let mut progressed = false;
        let mut i = 0;
        while i < clients.len() {
            match serve(&mut net, &mut server, &mut clients[i], &mut chunk) {
                Pass::Open { progressed: p } => {
                    progressed |= p;
                    i += 1;
                }
                Pass::Ended(how) => {
                    clients.swap_remove(i).http.end(&mut server, how);
                    progressed = true;
                }
            }
        }
        // The counters also go into the guest's published ones, which the kernel's stats carry.
        let counters = &server.counters;
        net.set_app_total(GuestCounter::HttpRequests, counters.requests);
        net.set_app_total(GuestCounter::HttpErrors, counters.error_responses());
        net.set_app_total(GuestCounter::HttpBodyBytes, counters.body_bytes);
        if server.counters != reported && now >= next_report {
            println!("http: {}", server.counters);
            reported = server.counters.clone();
            next_report = now + REPORT_INTERVAL;
        }
        if progressed || net.poll() {
            continue;
        }
        // Sleep until something arrives or the next connection deadline (or report) is due.
        let mut deadline = clients.iter().map(|c| c.http.deadline(&server.limits)).min();
        if server.counters != reported {
            deadline = Some(deadline.map_or(millis(next_report), |d| d.min(millis(next_report))));
        }
        match deadline {
            Some(ms) => net.wait_until(Instant::from_millis(ms as i64)),
            None => net.wait(),
        }
    }
}

guest_os::entry!(main);
