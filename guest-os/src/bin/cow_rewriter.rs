//! `cow-rewriter`: the copy-on-write path's correctness check. For each round it writes a UDP
//! datagram (payload `ORIGINAL <round>`) into tx slot 0, kicks, and at once, while the packet is
//! still in flight, rewrites the slot: the payload becomes `REWRITTEN <round>` and the source MAC
//! another guest's. The kernel must send the original bytes (the rewrite takes a COW fault and
//! lands in a private copy). After the round completes it sends `AFTER <round>` from the same
//! slot, which must carry those new bytes. It drives the vNIC rings itself (no smoltcp) and
//! sends to QEMU's user-network host address, which delivers to the host's loopback.
//!
//! Arguments: `port=N` (host UDP port), `rounds=N` (default 20).

#![no_std]
#![no_main]

use core::sync::atomic::Ordering::{Acquire, Release};
use guest_os::time::{ticks, tsc_hz};
use guest_os::{println, vi, Env};
use hypercall_abi::layout::{VNIC_SHARED_ADDR, VNIC_TX_AREA_ADDR};
use hypercall_abi::vnic::{DescStatus, VnicShared, TX_HEADROOM, TX_RING_SIZE};

/// QEMU user network's host (slirp): 10.0.2.2, MAC 52:55:0a:00:02:02.
const HOST_MAC: [u8; 6] = [0x52, 0x55, 0x0a, 0x00, 0x02, 0x02];
const HOST_IP: [u8; 4] = [10, 0, 2, 2];
/// A MAC that is not this guest's: the spoof attempt.
pub const SPOOFED_MAC: [u8; 6] = [0x02, 0x49, 0x4b, 0xee, 0xee, 0xee];
const FRAME_LEN: usize = 14 + 20 + 8 + 32;

fn ip_checksum(header: &[u8]) -> u16 {
    let mut sum: u32 = header.chunks(2).map(|w| u32::from(u16::from_be_bytes([w[0], w[1]]))).sum();
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

/// An Ethernet/IPv4/UDP frame from us to the host with a 32-byte payload (UDP checksum 0: none).
fn build_frame(mac: [u8; 6], ip: [u8; 4], port: u16, payload: &[u8; 32]) -> [u8; FRAME_LEN] {
    let mut f = [0u8; FRAME_LEN];
    f[0..6].copy_from_slice(&HOST_MAC);
    f[6..12].copy_from_slice(&mac);
    f[12..14].copy_from_slice(&[0x08, 0x00]);
    let ip_header = &mut f[14..34];
    ip_header[0] = 0x45;
    ip_header[2..4].copy_from_slice(&((20 + 8 + 32) as u16).to_be_bytes());
    ip_header[8] = 64;
    ip_header[9] = 17;
    ip_header[12..16].copy_from_slice(&ip);
    ip_header[16..20].copy_from_slice(&HOST_IP);
    let checksum = ip_checksum(ip_header);
    ip_header[10..12].copy_from_slice(&checksum.to_be_bytes());
    f[34..36].copy_from_slice(&4000u16.to_be_bytes());
    f[36..38].copy_from_slice(&port.to_be_bytes());
    f[38..40].copy_from_slice(&((8 + 32) as u16).to_be_bytes());
    f[42..].copy_from_slice(payload);
    f
}

fn payload(tag: &str, round: u32) -> [u8; 32] {
    let mut p = [b' '; 32];
    let mut w = 0;
    for &b in tag.as_bytes().iter().chain(b" ") {
        p[w] = b;
        w += 1;
    }
    let mut digits = [0u8; 10];
    let mut n = round;
    let mut len = 0;
    loop {
        digits[len] = b'0' + (n % 10) as u8;
        len += 1;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    for i in (0..len).rev() {
        p[w] = digits[i];
        w += 1;
    }
    p
}

fn main(env: &Env) -> i32 {
    let Some(net) = env.net else {
        println!("cow-rewriter needs a virtual NIC (net = true)");
        return 2;
    };
    let port: u16 = env.arg("port").and_then(|p| p.parse().ok()).unwrap_or(9);
    let rounds: u32 = env.arg("rounds").and_then(|p| p.parse().ok()).unwrap_or(20);
    // SAFETY: the kernel maps the shared page and the tx area at these addresses for guests
    // with a NIC; this app is their only user (it does not open the smoltcp stack).
    let shared = unsafe { &*(VNIC_SHARED_ADDR as *const VnicShared) };
    let slot = (VNIC_TX_AREA_ADDR + TX_HEADROOM) as *mut u8;
    let send = |frame: &[u8; FRAME_LEN]| -> u32 {
        // SAFETY: slot 0 of the tx area, mapped read-write; frame fits in the slot.
        unsafe { core::ptr::copy_nonoverlapping(frame.as_ptr(), slot, frame.len()) };
        let index = shared.tx_producer.0.load(Acquire);
        let desc = &shared.tx[(index % TX_RING_SIZE) as usize];
        desc.addr.store(slot as u64, Release);
        desc.len.store(frame.len() as u32, Release);
        desc.status.store(DescStatus::Pending as u32, Release);
        shared.tx_producer.0.store(index.wrapping_add(1), Release);
        vi::vnic_tx_kick();
        index
    };
    let wait_done = |index: u32| -> bool {
        let deadline = ticks() + tsc_hz();
        while shared.tx_consumer.0.load(Acquire).wrapping_sub(index) as i32 <= 0 {
            if ticks() > deadline {
                return false;
            }
            vi::idle_until(ticks() + tsc_hz() / 1000);
        }
        true
    };
    let (mut in_flight_rewrites, mut failures) = (0u32, 0u32);
    for round in 0..rounds {
        let index = send(&build_frame(net.mac, net.ipv4, port, &payload("ORIGINAL", round)));
        // Rewrite at once: payload and source MAC. In flight, so this write must fault.
        if shared.tx_consumer.0.load(Acquire) == index {
            in_flight_rewrites += 1;
        }
        let rewritten = build_frame(SPOOFED_MAC, net.ipv4, port, &payload("REWRITTEN", round));
        // SAFETY: as in `send`.
        unsafe { core::ptr::copy_nonoverlapping(rewritten.as_ptr(), slot, rewritten.len()) };
        if !wait_done(index) {
            failures += 1;
        }
        // The slot now holds our rewrite; send a proper frame from it with new bytes.
        let after = send(&build_frame(net.mac, net.ipv4, port, &payload("AFTER", round)));
        if !wait_done(after) {
            failures += 1;
        }
        let status = DescStatus::from_u32(shared.tx[(after % TX_RING_SIZE) as usize].status.load(Acquire));
        if status != Some(DescStatus::Done) {
            failures += 1;
        }
    }
    println!("cow-rewriter: {rounds} rounds, {in_flight_rewrites} rewrites while in flight, {failures} failures");
    i32::from(failures > 0)
}

guest_os::entry!(main);
