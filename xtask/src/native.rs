//! `cargo xtask bench native`: the packet path's stages that run on the host, in real TSC ticks
//! (on these machines the TSC runs at the nominal clock, so ticks ~ cycles): smoltcp with our
//! vnic-driver over in-memory rings (the guest stack and guest driver stages, both directions),
//! and the kernel's portable logic (descriptor validation, FIFO, network scheduler, vswitch
//! lookup, the copy path's work against the COW bookkeeping). The privileged steps (traps, PTE
//! writes through the direct map, `invlpg`, the NIC) do not run natively here.

use anyhow::Result;
use hypercall_abi::vnic::{max_frame, slot_size, tx_slot_addr_for, NetConfig, MTU, TX_HEADROOM};
use kernel_core::vnet::cow::CowSlots;
use kernel_core::vnet::TxRing;
use kernel_core::vnet::{validate_tx, BufId, NetScheduler, Packet, PacketPool, Route, Source, TxFifo, Vswitch};
use netstack::{Instant, Ipv4Address, NetStack, Platform};
use smoltcp::phy::{Device, RxToken, TxToken};
use std::arch::x86_64::_rdtsc;
use std::hint::black_box;
use vnic_driver::testing::{CountingDoorbell, GuestMemory};

const SAMPLES: usize = 2_000;
/// Operations per timed sample for the cheap ones (the TSC advances in ~26-tick steps here).
const BATCH: u64 = 64;

/// A clock that never moves: the stages measured here do not depend on time.
#[derive(Clone)]
struct StillClock;

impl Platform for StillClock {
    fn now(&self) -> Instant {
        Instant::from_millis(1)
    }

    fn idle_until(&mut self, _deadline: Option<Instant>) {}
}

fn ticks() -> u64 {
    // SAFETY: `rdtsc` has no preconditions on x86_64.
    unsafe { _rdtsc() }
}

/// One benchmark result: median and spread of ticks per operation.
#[derive(serde::Serialize)]
pub struct NativeRow {
    pub name: &'static str,
    pub size: usize,
    pub median: u64,
    pub p10: u64,
    pub p90: u64,
}

fn summarize(name: &'static str, size: usize, mut samples: Vec<u64>) -> NativeRow {
    samples.sort_unstable();
    let at = |q: usize| samples[(samples.len() - 1) * q / 100];
    NativeRow { name, size, median: at(50), p10: at(10), p90: at(90) }
}

/// Times `op` in batches; `prepare` runs untimed before each operation.
fn time_batched(mut prepare: impl FnMut(), mut op: impl FnMut()) -> Vec<u64> {
    (0..SAMPLES)
        .map(|_| {
            let mut total = 0;
            for _ in 0..BATCH {
                prepare();
                let start = ticks();
                op();
                total += ticks() - start;
            }
            total / BATCH
        })
        .collect()
}

const MAC_A: [u8; 6] = [0x02, 0x49, 0x4b, 0, 0, 1];
const MAC_B: [u8; 6] = [0x02, 0x49, 0x4b, 0, 0, 2];
const IP_A: [u8; 4] = [10, 0, 2, 16];
const IP_B: [u8; 4] = [10, 0, 2, 17];

fn config(mac: [u8; 6], ip: [u8; 4]) -> NetConfig {
    NetConfig { mac, ipv4: ip, prefix_len: 24, gateway: [10, 0, 2, 2], mtu: 1500 }
}

fn guest_rows(size: usize, rows: &mut Vec<NativeRow>) {
    // Two stacks on fake-kernel rings, introduced to each other (ARP) by a warm-up exchange:
    // A sends to B and B to A, frames moved by hand. B's UDP frame is kept for replaying to A.
    let (mut mem_a, mut mem_b) = (GuestMemory::default(), GuestMemory::default());
    let mut a = NetStack::new(config(MAC_A, IP_A), mem_a.vnic(CountingDoorbell::default()), StillClock);
    let mut b = NetStack::new(config(MAC_B, IP_B), mem_b.vnic(CountingDoorbell::default()), StillClock);
    let socket = a.udp_bind(7).expect("bind");
    let b_socket = b.udp_bind(5000).expect("bind");
    let payload = vec![0xa5u8; size];
    let (to_b, to_a) = ((Ipv4Address::from(IP_B), 5000), (Ipv4Address::from(IP_A), 7));
    a.udp_send(socket, &payload, to_b).expect("send");
    b.udp_send(b_socket, &payload, to_a).expect("send");
    let mut frame = None;
    let mut sink = vec![0u8; 2048];
    for _ in 0..10 {
        a.poll();
        b.poll();
        for f in b.device_mut().kernel_side().take_tx() {
            if f.len() > 42 && f[12..14] == [0x08, 0x00] {
                frame = Some(f.clone());
            }
            a.device_mut().kernel_side().deliver(&f);
        }
        for f in a.device_mut().kernel_side().take_tx() {
            b.device_mut().kernel_side().deliver(&f);
        }
    }
    while a.udp_recv(socket, &mut sink).is_some() {}
    let frame = frame.expect("B sent its datagram");

    // Guest stack and driver, tx: udp_send + poll (smoltcp builds the frame, the driver queues
    // it and rings once).
    let stack = std::cell::RefCell::new(a);
    let samples = time_batched(
        || {
            stack.borrow_mut().device_mut().kernel_side().take_tx();
        },
        || {
            let mut stack = stack.borrow_mut();
            stack.udp_send(socket, &payload, to_b).expect("send");
            stack.poll();
        },
    );
    rows.push(summarize("guest_stack_and_driver_tx", size, samples));

    // Guest stack and driver, rx: a frame in a posted buffer -> poll -> udp_recv returns it.
    let samples = time_batched(
        || {
            stack.borrow_mut().device_mut().kernel_side().deliver(&frame);
        },
        || {
            let mut stack = stack.borrow_mut();
            stack.poll();
            black_box(stack.udp_recv(socket, &mut sink));
        },
    );
    rows.push(summarize("guest_stack_and_driver_rx", size, samples));
    drop(b);

    // Guest driver alone: smoltcp's Device interface on the vnic.
    let mut mem = GuestMemory::default();
    let mut vnic = mem.vnic(CountingDoorbell::default());
    let cell = std::cell::RefCell::new(&mut vnic);
    let len = frame.len();
    let samples = time_batched(
        || {
            cell.borrow_mut().kernel_side().take_tx();
        },
        || {
            let mut vnic = cell.borrow_mut();
            let token = vnic.transmit(smoltcp::time::Instant::ZERO).expect("free slot");
            token.consume(len, |buf| buf.copy_from_slice(&frame));
            vnic.flush();
        },
    );
    rows.push(summarize("guest_driver_tx", size, samples));
    let samples = time_batched(
        || {
            cell.borrow_mut().kernel_side().deliver(&frame);
        },
        || {
            let mut vnic = cell.borrow_mut();
            let (rx, _tx) = vnic.receive(smoltcp::time::Instant::ZERO).expect("a frame");
            rx.consume(|buf| black_box(buf.len()));
        },
    );
    rows.push(summarize("guest_driver_rx", size, samples));
}

fn kernel_rows(size: usize, rows: &mut Vec<NativeRow>) {
    let mut vswitch = Vswitch::new();
    vswitch.add_port(0, MAC_A, IP_A).expect("port");
    vswitch.add_port(1, MAC_B, IP_B).expect("port");
    let mut frame = vec![0u8; size.max(60)];
    frame[..6].copy_from_slice(&MAC_B);
    frame[6..12].copy_from_slice(&MAC_A);
    let addr = tx_slot_addr_for(3, slot_size(MTU)) + TX_HEADROOM;
    let len = frame.len() as u32;
    let nothing = || {};
    rows.push(summarize(
        "kernel_validate_descriptor",
        size,
        time_batched(nothing, || {
            black_box(validate_tx(black_box(addr), black_box(len), max_frame(MTU), slot_size(MTU))).ok();
        }),
    ));
    rows.push(summarize(
        "kernel_vswitch_route",
        size,
        time_batched(nothing, || {
            black_box(matches!(vswitch.route(black_box(&frame), Source::Guest(0)), Route::Guest(1)));
        }),
    ));
    let mut fifos = vec![TxFifo::new(64), TxFifo::new(64)];
    let mut sched = NetScheduler::new(2, 8);
    rows.push(summarize(
        "kernel_fifo_and_network_scheduler",
        size,
        time_batched(nothing, || {
            fifos[0].push(Packet::pooled(BufId(1), len)).expect("room");
            sched.mark_ready(0);
            sched.serve(&mut fifos, |_, p| {
                black_box(p);
                Ok(())
            });
        }),
    ));
    // The copy path's own work: a pool buffer, copy 1, the source check on it, copy 2.
    let mut pool = PacketPool::new(512);
    let (guest_slot, mut kernel_buf, mut nic_buf) = (frame.clone(), vec![0u8; 9216], vec![0u8; 9216]);
    rows.push(summarize(
        "kernel_copy_path_work",
        size,
        time_batched(nothing, || {
            let buf = pool.alloc().expect("buffer");
            kernel_buf[..guest_slot.len()].copy_from_slice(&guest_slot);
            black_box(vswitch.source_is(0, &kernel_buf[..guest_slot.len()]));
            nic_buf[..guest_slot.len()].copy_from_slice(&kernel_buf[..guest_slot.len()]);
            black_box(&nic_buf);
            pool.release(buf).expect("release");
        }),
    ));
    // The COW path's bookkeeping (the PTE writes and invlpg are privileged: not here).
    let (mut slots, mut ring) = (CowSlots::new(&[0x1000, 0x2000]), TxRing::new());
    rows.push(summarize(
        "kernel_cow_path_work",
        size,
        time_batched(nothing, || {
            let index = ring.take().expect("room");
            black_box(slots.protect(0));
            black_box(vswitch.source_is(0, &guest_slot));
            black_box(slots.release(0, 0x1000));
            ring.complete(index);
        }),
    ));
}

/// `target/bench/native.json`.
#[derive(serde::Serialize)]
struct NativeReport {
    unit: &'static str,
    cpu: String,
    results: Vec<NativeRow>,
}

/// Runs every native benchmark and writes `target/bench/native.json`.
pub fn run() -> Result<std::path::PathBuf> {
    let mut rows = vec![summarize("timer_overhead_empty_op", 0, time_batched(|| {}, || {}))];
    for size in [100usize, 1400] {
        guest_rows(size, &mut rows);
        kernel_rows(size, &mut rows);
    }
    println!("host-native stages, TSC ticks per operation (median of {SAMPLES} samples of {BATCH});");
    println!("each includes the timer overhead of the first row:");
    println!("{:<36} {:>5} {:>8} {:>8} {:>8}", "stage", "size", "median", "p10", "p90");
    for r in &rows {
        println!("{:<36} {:>5} {:>8} {:>8} {:>8}", r.name, r.size, r.median, r.p10, r.p90);
    }
    let report = NativeReport { unit: "tsc_ticks", cpu: crate::bench::host_cpu(), results: rows };
    let path = crate::bench::write_json("native.json", &report)?;
    println!("wrote {}", path.display());
    Ok(path)
}
