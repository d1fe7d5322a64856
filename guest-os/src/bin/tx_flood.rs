//! `tx-flood`: sends `count` UDP frames of `size` bytes (whole frame), one per doorbell, to QEMU's
//! user-network host (10.0.2.2, `port`), driving the vNIC rings directly. It measures the
//! kernel's transmit path per packet: the kernel stamps each doorbell (see the `kick` line it
//! prints at the end). Exits 0 when every frame was taken.
//!
//! Arguments: `size=BYTES` (frame length, 60 up to the MTU plus 14), `count=N` (0: for ever),
//! `port=N`, `idle=no` (while the ring is full, poll it instead of idling: a guest that never
//! idles, a hog for the performance-isolation tests), `gap_us=N` (idle N µs after each doorbell:
//! each frame goes out alone, its completion handled before the next, as in an echo; for
//! `bench dispatch --tx-paths`).

#![no_std]
#![no_main]

use core::sync::atomic::Ordering::{Acquire, Release};
use guest_os::{println, vi, Env};
use hypercall_abi::layout::VNIC_SHARED_ADDR;
use hypercall_abi::vnic::{
    max_frame, slot_size, tx_slot_addr_for, DescStatus, VnicShared, MAX_MTU, TX_HEADROOM, TX_RING_SIZE, TX_SLOTS,
};

const HOST_MAC: [u8; 6] = [0x52, 0x55, 0x0a, 0x00, 0x02, 0x02];

fn main(env: &Env) -> i32 {
    let Some(net) = env.net else {
        println!("tx-flood needs a virtual NIC (net = true)");
        return 2;
    };
    let mtu = u64::from(net.mtu);
    let size: usize = env.arg("size").and_then(|s| s.parse().ok()).unwrap_or(100).clamp(60, max_frame(mtu) as usize);
    let count: u32 = env.arg("count").and_then(|s| s.parse().ok()).unwrap_or(10_000);
    let port: u16 = env.arg("port").and_then(|s| s.parse().ok()).unwrap_or(9);
    let never_idle = env.arg("idle") == Some("no");
    let gap_us: u64 = env.arg("gap_us").and_then(|s| s.parse().ok()).unwrap_or(0);
    let gap_ticks = guest_os::time::tsc_hz().saturating_mul(gap_us) / 1_000_000;
    println!("tx-flood: frames of {size} bytes to port {port}, count {count} (0: for ever), idle {}", !never_idle);
    // SAFETY: the kernel maps the shared page at this address for guests with a NIC; this app is
    // its only user.
    let shared = unsafe { &*(VNIC_SHARED_ADDR as *const VnicShared) };
    let mut frame = [0u8; max_frame(MAX_MTU) as usize];
    frame[0..6].copy_from_slice(&HOST_MAC);
    frame[6..12].copy_from_slice(&net.mac);
    frame[12..14].copy_from_slice(&[0x08, 0x00]);
    let ip_len = (size - 14) as u16;
    frame[14] = 0x45;
    frame[16..18].copy_from_slice(&ip_len.to_be_bytes());
    frame[22] = 64;
    frame[23] = 17;
    frame[26..30].copy_from_slice(&net.ipv4);
    frame[30..34].copy_from_slice(&[10, 0, 2, 2]);
    let mut sum: u32 = frame[14..34].chunks(2).map(|w| u32::from(u16::from_be_bytes([w[0], w[1]]))).sum();
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    frame[24..26].copy_from_slice(&(!(sum as u16)).to_be_bytes());
    frame[34..36].copy_from_slice(&4001u16.to_be_bytes());
    frame[36..38].copy_from_slice(&port.to_be_bytes());
    frame[38..40].copy_from_slice(&(ip_len - 20).to_be_bytes());
    let mut rejected = 0u32;
    let mut sent = 0u32;
    while count == 0 || sent < count {
        sent = sent.wrapping_add(1);
        let index = shared.tx_producer.0.load(Acquire);
        // Wait for the slot's previous packet to complete: the kernel raises "tx done" and
        // wakes us (the deadline is only a safety net).
        while index.wrapping_sub(shared.tx_consumer.0.load(Acquire)) >= TX_RING_SIZE {
            shared.virq.0.store(0, Release);
            if index.wrapping_sub(shared.tx_consumer.0.load(Acquire)) < TX_RING_SIZE {
                break;
            }
            if never_idle {
                core::hint::spin_loop();
                continue;
            }
            vi::idle_until(guest_os::time::ticks() + guest_os::time::tsc_hz() / 20);
        }
        let slot = u64::from(index) % TX_SLOTS;
        let at = tx_slot_addr_for(slot, slot_size(mtu)) + TX_HEADROOM;
        // SAFETY: a slot of the tx area, mapped read-write, whose previous packet completed.
        unsafe { core::ptr::copy_nonoverlapping(frame.as_ptr(), at as *mut u8, size) };
        let desc = &shared.tx[(index % TX_RING_SIZE) as usize];
        if index >= TX_RING_SIZE && DescStatus::from_u32(desc.status.load(Acquire)) != Some(DescStatus::Done) {
            rejected += 1;
        }
        desc.addr.store(at, Release);
        desc.len.store(size as u32, Release);
        desc.status.store(DescStatus::Pending as u32, Release);
        shared.tx_producer.0.store(index.wrapping_add(1), Release);
        vi::vnic_tx_kick();
        if gap_ticks > 0 {
            let until = guest_os::time::ticks().saturating_add(gap_ticks);
            while guest_os::time::ticks() < until {
                shared.virq.0.store(0, Release);
                vi::idle_until(until);
            }
        }
    }
    println!("tx-flood: {count} frames of {size} bytes sent, {rejected} not completed as Done");
    i32::from(rejected > 0)
}

guest_os::entry!(main);
