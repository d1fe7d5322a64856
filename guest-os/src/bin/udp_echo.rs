//! `udp-echo`: echoes every UDP datagram back to its sender, on port 7 or `port=N`.

#![no_std]
#![no_main]

use guest_os::net::{self, format_ipv4};
use guest_os::{println, Env};

const DEFAULT_PORT: u16 = 7;

fn main(env: &Env) -> i32 {
    let port = env.arg("port").and_then(|p| p.parse().ok()).unwrap_or(DEFAULT_PORT);
    let Some(mut net) = net::open(env.net) else {
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
    let mut buf = [0u8; 9216]; // room for a jumbo datagram
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
                continue;
            }
            // A full send buffer drops the echo; the client retries.
            if net.udp_send(socket, &buf[..len], from).is_ok() {
                echoed += 1;
            }
            if echoed.is_power_of_two() {
                println!("udp-echo: {echoed} datagrams echoed");
            }
        }
        if !net.poll() {
            net.wait();
        }
    }
}

guest_os::entry!(main);
