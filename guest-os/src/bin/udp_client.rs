//! `udp-client`: sends datagrams of given sizes to a UDP echo server, checks every echoed byte,
//! retries a lost datagram a bounded number of times, prints one result line, and exits 0 only
//! if every datagram came back intact.
//!
//! Arguments: `peer=IP:PORT` (required), `rounds=N` (default 10: each round sends every size),
//! `sizes=1,64,...` (default 1,64,100,512,1400,1472), `retries=R` (default 5),
//! `timeout_ms=T` (per attempt, default 500).

#![no_std]
#![no_main]

extern crate alloc;

use alloc::vec::Vec;
use core::time::Duration;
use guest_os::net;
use guest_os::time::Instant;
use guest_os::{println, Env};

/// Deterministic bytes for datagram `seq` of this guest (xorshift), so a wrong echo is caught.
fn payload(guest: u32, seq: u32, len: usize) -> Vec<u8> {
    let mut state = (u64::from(guest) << 32 | u64::from(seq)) ^ 0x9e37_79b9_7f4a_7c15;
    (0..len)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state as u8
        })
        .collect()
}

fn main(env: &Env) -> i32 {
    let Some(peer) = env.arg("peer").and_then(net::parse_endpoint) else {
        println!("udp-client: need peer=IP:PORT");
        return 2;
    };
    let rounds: u32 = env.arg("rounds").and_then(|n| n.parse().ok()).unwrap_or(10);
    let retries: u32 = env.arg("retries").and_then(|n| n.parse().ok()).unwrap_or(5);
    let timeout = Duration::from_millis(env.arg("timeout_ms").and_then(|n| n.parse().ok()).unwrap_or(500));
    let sizes: Vec<usize> = match env.arg("sizes") {
        Some(list) => list.split(',').filter_map(|s| s.parse().ok()).collect(),
        None => alloc::vec![1, 64, 100, 512, 1400, 1472],
    };
    let Some(mut net) = net::open(env) else {
        println!("udp-client: this guest has no network interface");
        return 2;
    };
    let socket = match net.udp_bind(40000 + (env.id as u16 % 20000)) {
        Ok(socket) => socket,
        Err(e) => {
            println!("udp-client: cannot bind: {e:?}");
            return 2;
        }
    };
    let mut buf = alloc::vec![0u8; 9216]; // room for a jumbo datagram
    let (mut ok, mut bad, mut lost, mut retried) = (0u32, 0u32, 0u32, 0u32);
    let start = Instant::now();
    let mut seq = 0u32;
    // Everything sent so far: a late echo of an earlier datagram (after a retry) is a
    // duplicate to skip, not a corruption.
    let mut earlier: Vec<Vec<u8>> = Vec::new();
    for _ in 0..rounds {
        for &size in &sizes {
            seq += 1;
            let data = payload(env.id, seq, size);
            let mut outcome = None;
            for attempt in 0..=retries {
                if attempt > 0 {
                    retried += 1;
                }
                if net.udp_send(socket, &data, peer).is_err() {
                    net.poll();
                    continue;
                }
                let deadline = Instant::now().checked_add(timeout).expect("deadline fits");
                while outcome.is_none() && Instant::now() < deadline {
                    net.poll();
                    while let Some((len, from)) = net.udp_recv(socket, &mut buf) {
                        net.app_outcome(net::AppOutcome::Consumed);
                        if from != peer || earlier.iter().any(|e| e[..] == buf[..len]) {
                            continue;
                        }
                        // Echoes of earlier attempts of the same datagram are identical.
                        outcome = Some(buf[..len] == data[..]);
                    }
                    if outcome.is_none() {
                        net.wait_until(net::instant_of(deadline.ticks()));
                    }
                }
                if outcome.is_some() {
                    break;
                }
            }
            earlier.push(data);
            match outcome {
                Some(true) => ok += 1,
                Some(false) => bad += 1,
                None => lost += 1,
            }
        }
    }
    let total = ok + bad + lost;
    println!(
        "udp-client: {ok}/{total} datagrams echoed intact by {}:{}, {bad} corrupted, {lost} lost, {retried} retries, {} ms",
        peer.0, peer.1, start.elapsed().as_millis()
    );
    if ok == total {
        0
    } else {
        1
    }
}

guest_os::entry!(main);
