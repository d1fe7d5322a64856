//! `tcp-client`: opens TCP connections to an echo server, sends each a pattern of `bytes` bytes
//! while reading the echo, checks every echoed byte, closes its sending half when all is sent
//! and expects the server to close after the last byte. Prints one result line and exits 0 only
//! if every connection came back whole and intact and every socket was freed.
//!
//! Arguments: `peer=IP:PORT` (required), `bytes=N` per connection (default 65536), `conns=N`
//! connections at once (default 1), `rounds=N` times that many in turn (default 1),
//! `timeout_ms=T` for the whole run (default 60000).

#![no_std]
#![no_main]

extern crate alloc;

use alloc::vec::Vec;
use core::time::Duration;
use guest_os::net::{self, Net, TcpError, TcpHandle};
use guest_os::time::Instant;
use guest_os::{println, Env};
use hypercall_abi::vnic::GuestCounter;

/// How long the connections may take to finish closing after the last one's outcome.
const SETTLE: Duration = Duration::from_secs(2);
/// How long the client stays after its sockets are freed.
const LINGER: Duration = Duration::from_millis(100);

/// Byte `at` of connection `conn`'s pattern: a position hash, so a byte lost, repeated or
/// moved is caught (a short period would let a shift of one period pass).
fn pattern(conn: u64, at: u64) -> u8 {
    let x = (at ^ conn << 40).wrapping_mul(0x9e37_79b9_7f4a_7c15);
    (x >> 56) as u8
}

/// One connection's progress.
struct Flow {
    handle: TcpHandle,
    /// Which connection of the run it is: picks its pattern.
    id: u64,
    sent: u64,
    received: u64,
    shut: bool,
    outcome: Option<Outcome>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Outcome {
    /// Every byte came back in order, then the server closed.
    Intact,
    /// A byte came back wrong, at this offset.
    Corrupted(u64),
    /// The connection failed, or the server closed early (`Finished` before every byte).
    Failed(TcpError),
}

/// Sends what the connection has room for and checks what came back. Sets the outcome when
/// the connection is over.
fn step(net: &mut Net, flow: &mut Flow, total: u64, scratch: &mut [u8]) {
    while flow.sent < total {
        let len = (total - flow.sent).min(scratch.len() as u64) as usize;
        for (i, byte) in scratch[..len].iter_mut().enumerate() {
            *byte = pattern(flow.id, flow.sent + i as u64);
        }
        match net.tcp_send(flow.handle, &scratch[..len]) {
            Ok(0) => break,
            Ok(n) => flow.sent += n as u64,
            Err(e) => {
                flow.outcome = Some(Outcome::Failed(e));
                return;
            }
        }
    }
    if flow.sent == total && !flow.shut {
        // Half-close: the echo of everything sent still comes back.
        if let Err(e) = net.tcp_shutdown(flow.handle) {
            flow.outcome = Some(Outcome::Failed(e));
            return;
        }
        flow.shut = true;
    }
    loop {
        match net.tcp_recv(flow.handle, scratch) {
            Ok(0) => return,
            Ok(n) => {
                let bad =
                    scratch[..n].iter().enumerate().find(|&(i, &b)| b != pattern(flow.id, flow.received + i as u64));
                if let Some((i, _)) = bad {
                    flow.outcome = Some(Outcome::Corrupted(flow.received + i as u64));
                    return;
                }
                flow.received += n as u64;
            }
            Err(TcpError::Finished) if flow.received == total && flow.shut => {
                flow.outcome = Some(Outcome::Intact);
                return;
            }
            Err(e) => {
                flow.outcome = Some(Outcome::Failed(e));
                return;
            }
        }
    }
}

fn main(env: &Env) -> i32 {
    let Some(peer) = env.arg("peer").and_then(net::parse_endpoint) else {
        println!("tcp-client: need peer=IP:PORT");
        return 2;
    };
    let number = |key: &str, default: u64| env.arg(key).and_then(|v| v.parse().ok()).unwrap_or(default);
    let total = number("bytes", 65536);
    let conns = number("conns", 1).max(1);
    let rounds = number("rounds", 1).max(1);
    let timeout = Duration::from_millis(number("timeout_ms", 60_000));
    let Some(mut net) = net::open(env) else {
        println!("tcp-client: this guest has no network interface");
        return 2;
    };
    let start = Instant::now();
    let deadline = start.checked_add(timeout).expect("deadline fits");
    let mut scratch = alloc::vec![0u8; 4096];
    let (mut intact, mut corrupted, mut failed) = (0u64, 0u64, 0u64);
    let mut first_problem = None;
    for round in 0..rounds {
        let mut flows: Vec<Flow> = Vec::new();
        for c in 0..conns {
            let id = round * conns + c;
            match net.tcp_connect(peer) {
                Ok(handle) => flows.push(Flow { handle, id, sent: 0, received: 0, shut: false, outcome: None }),
                Err(e) => {
                    println!("tcp-client: cannot connect to {}:{}: {e:?}", peer.0, peer.1);
                    failed += 1;
                }
            }
        }
        while flows.iter().any(|f| f.outcome.is_none()) && Instant::now() < deadline {
            net.poll();
            for flow in flows.iter_mut().filter(|f| f.outcome.is_none()) {
                step(&mut net, flow, total, &mut scratch);
            }
            if flows.iter().all(|f| f.outcome.is_some()) {
                break;
            }
            if !net.poll() {
                net.wait_until(net::instant_of(deadline.ticks()));
            }
        }
        for flow in &flows {
            let outcome = flow.outcome.unwrap_or(Outcome::Failed(TcpError::TimedOut));
            match outcome {
                Outcome::Intact => intact += 1,
                Outcome::Corrupted(_) => corrupted += 1,
                Outcome::Failed(_) => failed += 1,
            }
            if outcome != Outcome::Intact && first_problem.is_none() {
                first_problem = Some((flow.id, outcome, flow.sent, flow.received));
            }
            // Both sides are done with an intact one; anything else is cut off.
            if outcome == Outcome::Intact {
                net.tcp_close(flow.handle);
            } else {
                net.tcp_abort(flow.handle);
            }
        }
    }
    let elapsed = start.elapsed();
    // Let the last closes and resets finish (every socket freed), then linger a little so the
    // servers take our last ACKs before this guest ends and its counters are final.
    let settle = Instant::now().checked_add(SETTLE).expect("deadline fits");
    while net.guest_counters()[GuestCounter::TcpSockets as usize] > 0 && Instant::now() < settle {
        if !net.poll() {
            net.wait_until(net::instant_of(settle.ticks()));
        }
    }
    let linger = Instant::now().checked_add(LINGER).expect("deadline fits");
    while Instant::now() < linger {
        if !net.poll() {
            net.wait_until(net::instant_of(linger.ticks()));
        }
    }
    let freed = net.guest_counters()[GuestCounter::TcpSockets as usize] == 0;
    let moved = intact * total;
    let kib_per_s = moved as u128 * 1000 / elapsed.as_millis().max(1) / 1024;
    let connections = rounds * conns;
    println!(
        "tcp-client: {intact}/{connections} connections echoed intact by {}:{}, {total} bytes each, {corrupted} corrupted, \
         {failed} failed, {} ms, {kib_per_s} KiB/s, sockets freed: {freed}",
        peer.0,
        peer.1,
        elapsed.as_millis()
    );
    if let Some((id, outcome, sent, received)) = first_problem {
        println!("tcp-client: connection {id}: {outcome:?} after {sent} bytes sent, {received} received");
    }
    if intact == connections && freed {
        0
    } else {
        1
    }
}

guest_os::entry!(main);
