//! Host-native timing of the transmit path's portable work, copy vs COW, in TSC ticks (on the
//! machines here the TSC runs at the nominal clock, so ticks ~ cycles). What it cannot time:
//! the privileged steps (trap, PTE write through the direct map, `invlpg`), which never run
//! natively here; the note adds literature costs for those.
//!
//! `cargo run --release -p kernel-core --example tx_path_native`

use kernel_core::vnet::cow::CowSlots;
use kernel_core::vnet::TxRing;
use kernel_core::vnet::{PacketPool, Vswitch};
use std::arch::x86_64::_rdtsc;
use std::hint::black_box;

const ROUNDS: usize = 2_000;
/// Operations per timed sample: the TSC here advances in steps of ~26 ticks.
const BATCH: u64 = 256;

fn median(mut samples: Vec<u64>) -> u64 {
    samples.sort_unstable();
    samples[samples.len() / 2]
}

fn time(mut op: impl FnMut()) -> u64 {
    for _ in 0..1000 {
        op();
    }
    let samples = (0..ROUNDS)
        .map(|_| {
            // SAFETY: `rdtsc` has no preconditions on x86_64.
            let start = unsafe { _rdtsc() };
            for _ in 0..BATCH {
                op();
            }
            // SAFETY: as above.
            unsafe { _rdtsc() - start }
        })
        .collect();
    median(samples) / BATCH
}

fn main() {
    let mac = [0x02, 0x49, 0x4b, 0, 0, 1];
    let mut vswitch = Vswitch::new();
    vswitch.add_port(0, mac, [10, 0, 2, 16]).unwrap();
    let empty = time(|| {});
    println!("tx path, host-native TSC ticks per packet (median of {ROUNDS} batches of {BATCH}; empty loop {empty})");
    println!("{:>6} {:>10} {:>10} {:>10}", "size", "copy", "cow-book", "memcpy1");
    for size in [64usize, 100, 512, 1400, 4000, 9000] {
        let guest_slot = vec![0xabu8; 12288 + 320];
        let mut fifo_buf = vec![0u8; 12288 + 192];
        let mut nic_buf = vec![0u8; 12288 + 448];
        let mut frame = guest_slot.clone();
        frame[6..12].copy_from_slice(&mac);
        let mut pool = PacketPool::new(512);
        // Copy path: pool buffer, copy 1, source check on the copy, copy 2, release.
        let copy = time(|| {
            let buf = pool.alloc().unwrap();
            fifo_buf[..size].copy_from_slice(&frame[..size]);
            black_box(vswitch.source_is(0, &fifo_buf[..size]));
            nic_buf[..size].copy_from_slice(&fifo_buf[..size]);
            black_box(&nic_buf);
            pool.release(buf).unwrap();
        }) - empty;
        // COW path bookkeeping: ring take, protect, source check in place, release, complete.
        let mut slots = CowSlots::new(&[0x1000, 0x2000]);
        let mut ring = TxRing::new();
        let cow = time(|| {
            let index = ring.take().unwrap();
            black_box(slots.protect(0));
            black_box(vswitch.source_is(0, &frame[..size]));
            black_box(slots.release(0, 0x1000));
            ring.complete(index);
        }) - empty;
        let one = time(|| {
            fifo_buf[..size].copy_from_slice(&frame[..size]);
            black_box(&fifo_buf);
        }) - empty;
        println!("{size:>6} {copy:>10} {cow:>10} {one:>10}");
    }
}
