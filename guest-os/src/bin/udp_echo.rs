//! `udp-echo`: echoes every UDP datagram back to its sender, on port 7 or `port=N`.

#![no_std]
#![no_main]

extern crate alloc;

use guest_os::net::{self, format_ipv4, AppOutcome, Duration};
use guest_os::{println, Env};

const DEFAULT_PORT: u16 = 7;
/// How long an echo may wait for room in the send buffer before it is dropped (and counted).
const ECHO_PATIENCE: Duration = Duration::from_secs(1);

fn main(env: &Env) -> i32 {
    let port = env.arg("port").and_then(|p| p.parse().ok()).unwrap_or(DEFAULT_PORT);
    let Some(mut net) = net::open(env) else {
        println!("udp-echo: this guest has no network interface");
        return 2;
    };
    let socket = match net.udp_bind(port) {
        Ok(socket) => socket,
        Err(e) => {
            println!("udp-echo: cannot bind port {port}: {e:?}");
            return 2;
        }
    };
    let ip = env.net.map(|n| n.ipv4).unwrap_or_default();
    println!("udp-echo listening on {}:{port}", format_ipv4(ip));
    // Room for the largest datagram the MTU allows, on the heap (a page or two beside the
    // stack's own allocations for the standard MTU; backed only as datagrams reach it).
    let mut buf = alloc::vec![0u8; net.max_udp_payload()];
    let mut echoed: u64 = 0;
    loop {
        net.poll();
        while let Some((len, from)) = net.udp_recv(socket, &mut buf) {
            if &buf[..len] == hypercall_abi::vnic::stamps::REPORT_REQUEST {
                // A benchmark asks for the receive-path stage records (stamping on).
                for line in net.dispatch_report() {
                    println!("{line}");
                }
                println!("dispatch: report done");
                net.app_outcome(AppOutcome::Consumed);
                continue;
            }
            // A full send buffer makes the echo wait for room, not vanish; it is given up (and
            // counted) only if nothing moves for ECHO_PATIENCE (say, the sender never answers ARP).
            let deadline = net.now() + ECHO_PATIENCE;
            if net.udp_send_by(socket, &buf[..len], from, deadline).is_ok() {
                echoed += 1;
                net.app_outcome(AppOutcome::Echoed);
                if echoed.is_power_of_two() {
                    println!("udp-echo: {echoed} datagrams echoed");
                }
            } else {
                net.app_outcome(AppOutcome::Dropped);
            }
        }
        if !net.poll() {
            net.wait();
        }
    }
}

guest_os::entry!(main);
