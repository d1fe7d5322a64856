//! `ring-hostile`: attacks its own vNIC rings the way a hostile guest would, with frames in
//! flight, and reports what it saw, so a test can compare the kernel's counters with it. It
//! drives the rings by hand (no smoltcp). The role is the first argument:
//!
//! - `tx-ring rounds=N pause_ms=M spoof-as=MAC`: each round posts 4 frames to the physical NIC
//!   (slirp's MAC, a test EtherType slirp ignores) and kicks; then, while they may still be at
//!   the NIC (under COW they complete only when the NIC is done), moves `tx_producer` back to the
//!   consumer, to the middle of the in-flight window, one behind the consumer (around the 2^32
//!   wrap on the first round), a ring and more beyond, half the index space away and to
//!   `u32::MAX`, kicking after each. Then it restores the producer, waits for the frames, sends
//!   two frames with a foreign source MAC (an unused one and `spoof-as`) and one good frame.
//! - `rx-ring feeder=MAC`: a guest whose frames come from `rx-feeder` (guest to guest, so each
//!   arrives within the feeder's kick). It moves `rx_producer` backwards, beyond the ring and
//!   around the wrap while the feeder sends to it, then posts bad rx descriptors (outside the rx
//!   area, a kernel address, zero and huge lengths, crossing the buffer's end, in the tx area,
//!   unaligned) and has frames delivered into them. Frames sent while the index was bad and
//!   not received after it was restored were dropped by the kernel: it counts them exactly by
//!   asking the feeder how many it sent.
//! - `rx-feeder target=MAC`: answers `rx-ring` (ping, send N frames, report how many); never ends.
//! - `exit-in-flight frames=N`: posts N frames to the NIC, kicks and, if any is still in flight,
//!   exits at once with their number as its exit code (else it tries another batch), so the
//!   kernel must clean up frames the NIC still holds. Exit 0: never in flight (copy).
//!
//! `tx-ring` and `rx-ring` end with one line `hostile-report role=ROLE key=value ...` and exit 0
//! only if the kernel behaved as expected throughout.

#![no_std]
#![no_main]

use core::sync::atomic::Ordering::AcqRel;
use guest_os::rawnic::{ethernet_frame, RawNic, ETHERTYPE_TEST, SLIRP_MAC};
use guest_os::time::{ticks, tsc_hz};
use guest_os::{println, vi, Env};
use hypercall_abi::layout::VNIC_TX_AREA_ADDR;
use hypercall_abi::vnic::{DescStatus, RX_RING_SIZE, TX_HEADROOM, TX_RING_SIZE};

/// A MAC no guest has: the first spoof attempt.
const UNUSED_MAC: [u8; 6] = [0x02, 0x49, 0x4b, 0xee, 0xee, 0xee];

fn parse_mac(text: &str) -> Option<[u8; 6]> {
    let mut mac = [0u8; 6];
    let mut parts = text.split(':');
    for byte in &mut mac {
        *byte = u8::from_str_radix(parts.next()?, 16).ok()?;
    }
    parts.next().is_none().then_some(mac)
}

fn ms(n: u64) -> u64 {
    tsc_hz() / 1000 * n
}

/// Idles until `deadline`, whatever virtual interrupts come.
fn sleep_until(nic: &RawNic, deadline: u64) {
    while ticks() < deadline {
        nic.shared.virq.0.swap(0, AcqRel);
        vi::idle_until(deadline);
    }
}

// ---- the rx-ring / rx-feeder protocol: raw frames of the test EtherType ----

const MAGIC: [u8; 4] = *b"IKRH";

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Op {
    Ping = 1,
    Pong = 2,
    /// Send `value` data frames.
    Go = 3,
    Data = 4,
    /// How many data frames of this phase did you send?
    Query = 5,
    /// `value` data frames of this phase were sent.
    Report = 6,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Msg {
    op: Op,
    phase: u8,
    value: u32,
}

impl Msg {
    fn encode(self) -> [u8; 12] {
        let mut p = [0u8; 12];
        p[..4].copy_from_slice(&MAGIC);
        p[4] = self.op as u8;
        p[5] = self.phase;
        p[8..12].copy_from_slice(&self.value.to_le_bytes());
        p
    }

    /// The message in `frame`, if it is one of ours from `from`.
    fn decode(frame: &[u8], from: [u8; 6]) -> Option<Msg> {
        if frame.len() < 26 || frame[6..12] != from || frame[12..14] != ETHERTYPE_TEST.to_be_bytes() {
            return None;
        }
        let p = &frame[14..26];
        if p[..4] != MAGIC {
            return None;
        }
        let op =
            [Op::Ping, Op::Pong, Op::Go, Op::Data, Op::Query, Op::Report].into_iter().find(|o| *o as u8 == p[4])?;
        Some(Msg { op, phase: p[5], value: u32::from_le_bytes([p[8], p[9], p[10], p[11]]) })
    }
}

/// Sends `msgs` to `dst` in one kick (guest to guest: each completes within it).
fn send(nic: &RawNic, dst: [u8; 6], msgs: &[Msg]) -> bool {
    if !nic.wait_tx_consumer(nic.tx_producer().wrapping_sub(TX_RING_SIZE - msgs.len() as u32), tsc_hz()) {
        return false;
    }
    let mut frame = [0u8; 64];
    for msg in msgs {
        let len = ethernet_frame(dst, nic.config.mac, ETHERTYPE_TEST, &msg.encode(), &mut frame);
        nic.post_tx(&frame[..len]);
    }
    vi::vnic_tx_kick() == msgs.len() as i64
}

/// What became of one posted rx buffer.
struct Received {
    index: u32,
    status: Option<DescStatus>,
    /// The message in it, if it was filled with one.
    msg: Option<Msg>,
}

/// The rx ring read in order: every buffer is reposted as soon as it has been read, so the
/// producer stays a whole ring ahead of `next`.
struct RxCursor {
    next: u32,
}

impl RxCursor {
    fn start(nic: &RawNic) -> RxCursor {
        let next = nic.rx_consumer();
        for index in next..next + RX_RING_SIZE {
            nic.post_rx(index);
        }
        vi::vnic_rx_posted();
        RxCursor { next }
    }

    /// The producer value that posts every buffer.
    fn full_producer(&self) -> u32 {
        self.next.wrapping_add(RX_RING_SIZE)
    }

    fn poll(&mut self, nic: &RawNic, from: [u8; 6]) -> Option<Received> {
        if nic.rx_consumer() == self.next {
            return None;
        }
        let index = self.next;
        let (status, addr, len) = nic.rx_desc(index);
        let msg = match status {
            Some(DescStatus::Done) => nic.rx_bytes(addr, len).and_then(|frame| Msg::decode(frame, from)),
            _ => None,
        };
        self.next = index.wrapping_add(1);
        nic.post_rx(index.wrapping_add(RX_RING_SIZE));
        Some(Received { index, status, msg })
    }

    /// Waits up to `timeout` ticks for the next buffer.
    fn wait(&mut self, nic: &RawNic, from: [u8; 6], timeout: u64) -> Option<Received> {
        let deadline = ticks() + timeout;
        loop {
            nic.shared.virq.0.swap(0, AcqRel);
            if let Some(received) = self.poll(nic, from) {
                return Some(received);
            }
            if ticks() > deadline {
                return None;
            }
            vi::idle_until(deadline);
        }
    }
}

// ---- tx-ring ----

fn tx_ring(env: &Env, nic: &RawNic) -> i32 {
    let rounds: u32 = env.arg("rounds").and_then(|n| n.parse().ok()).unwrap_or(10);
    let pause = ms(env.arg("pause_ms").and_then(|n| n.parse().ok()).unwrap_or(20));
    let Some(spoof_as) = env.arg("spoof-as").and_then(parse_mac) else {
        println!("tx-ring: need spoof-as=MAC (another guest's)");
        return 2;
    };
    let mac = nic.config.mac;
    let mut frame = [0u8; 1014];
    let mut payload = [0u8; 1000];
    let (mut in_flight_rounds, mut index_rejected, mut spoof_rejected, mut sent, mut failures) = (0, 0, 0, 0, 0);
    let mut fail = |what: core::fmt::Arguments<'_>| {
        failures += 1;
        println!("tx-ring: WRONG: {what}");
    };
    for round in 0..rounds {
        let start = nic.tx_producer();
        for k in 0..4u32 {
            payload[..8].copy_from_slice(&(u64::from(round) << 32 | u64::from(k)).to_le_bytes());
            let len = ethernet_frame(SLIRP_MAC, mac, ETHERTYPE_TEST, &payload, &mut frame);
            nic.post_tx(&frame[..len]);
        }
        let produced = start.wrapping_add(4);
        let taken = vi::vnic_tx_kick();
        let consumer = nic.tx_consumer();
        if taken != 4 {
            fail(format_args!("round {round}: the kernel took {taken} of 4 good frames"));
        }
        let in_flight = produced.wrapping_sub(consumer);
        in_flight_rounds += u32::from(in_flight > 0);
        let attacks = [
            ("back to the consumer", Some(consumer)),
            ("to the middle of the in-flight window", (in_flight >= 2).then(|| consumer.wrapping_add(in_flight / 2))),
            ("one behind the consumer", Some(consumer.wrapping_sub(1))),
            ("one beyond a ring ahead", Some(produced.wrapping_add(TX_RING_SIZE + 1))),
            ("1000 ahead", Some(produced.wrapping_add(1000))),
            ("half the index space away", Some(produced.wrapping_add(0x8000_0000))),
            ("u32::MAX", Some(u32::MAX)),
        ];
        for (what, value) in attacks {
            let Some(value) = value else { continue };
            nic.set_tx_producer(value);
            // The kernel holds [consumer, produced); the only legal producers are `produced`
            // and up to a ring past the consumer. Everything else must be refused (and counted).
            let refused = value.wrapping_sub(produced) > TX_RING_SIZE;
            index_rejected += u32::from(refused);
            let got = vi::vnic_tx_kick();
            let after = nic.tx_consumer();
            if got != 0 || after.wrapping_sub(consumer) > in_flight {
                fail(format_args!("round {round}: producer {what} ({value}): kernel took {got}, consumer {after}"));
            }
        }
        nic.set_tx_producer(produced);
        let got = vi::vnic_tx_kick();
        if got != 0 {
            fail(format_args!("round {round}: the restored producer made the kernel take {got}"));
        }
        if !nic.wait_tx_consumer(produced, tsc_hz()) {
            fail(format_args!("round {round}: the 4 frames never completed"));
        }
        for index in start..produced {
            if nic.tx_status(index) != Some(DescStatus::Done) {
                fail(format_args!("round {round}: frame {index} ended {:?}", nic.tx_status(index)));
            }
        }
        sent += 4;
        for source in [UNUSED_MAC, spoof_as] {
            let len = ethernet_frame(SLIRP_MAC, source, ETHERTYPE_TEST, &payload, &mut frame);
            let index = nic.post_tx(&frame[..len]);
            let got = vi::vnic_tx_kick();
            nic.wait_tx_consumer(index.wrapping_add(1), tsc_hz());
            match nic.tx_status(index) {
                Some(DescStatus::RejectedSpoofedSource) if got == 1 => spoof_rejected += 1,
                status => fail(format_args!("round {round}: spoofed source {source:02x?}: took {got}, {status:?}")),
            }
        }
        let len = ethernet_frame(SLIRP_MAC, mac, ETHERTYPE_TEST, &payload, &mut frame);
        let index = nic.post_tx(&frame[..len]);
        let got = vi::vnic_tx_kick();
        if got != 1
            || !nic.wait_tx_consumer(index.wrapping_add(1), tsc_hz())
            || nic.tx_status(index) != Some(DescStatus::Done)
        {
            fail(format_args!("round {round}: a good frame after the attack: took {got}, {:?}", nic.tx_status(index)));
        }
        sent += 1;
        sleep_until(nic, ticks() + pause);
    }
    println!(
        "hostile-report role=tx-ring rounds={rounds} in_flight_rounds={in_flight_rounds} \
         index_rejected={index_rejected} spoof_rejected={spoof_rejected} sent={sent} failures={failures}"
    );
    i32::from(failures > 0)
}

// ---- rx-ring ----

fn rx_ring(env: &Env, nic: &RawNic) -> i32 {
    let Some(feeder) = env.arg("feeder").and_then(parse_mac) else {
        println!("rx-ring: need feeder=MAC");
        return 2;
    };
    let mut rx = RxCursor::start(nic);
    let mut failures = 0u32;
    let mut fail = |what: core::fmt::Arguments<'_>| {
        failures += 1;
        println!("rx-ring: WRONG: {what}");
    };
    // The feeder may not have posted its buffers yet: ping until it answers.
    let deadline = ticks() + tsc_hz() * 5;
    let mut answered = false;
    while !answered && ticks() < deadline {
        send(nic, feeder, &[Msg { op: Op::Ping, phase: 0, value: 0 }]);
        while let Some(r) = rx.wait(nic, feeder, ms(20)) {
            answered |= r.msg.is_some_and(|m| m.op == Op::Pong);
        }
    }
    if !answered {
        println!("rx-ring: the feeder never answered");
        return 3;
    }
    let mut phase = 0u8;
    let (mut index_dropped, mut late, mut desc_rejected, mut small_rejected, mut data_received) = (0, 0, 0, 0, 0u32);
    let bad_indices = [
        ("one behind the consumer", 1u32.wrapping_neg(), false),
        ("16 behind the consumer", 16u32.wrapping_neg(), false),
        ("one beyond a ring ahead", RX_RING_SIZE + 1, false),
        ("1000 ahead", 1000, false),
        ("half the index space away", 0x8000_0000, false),
        ("0xfffffff0", 0xffff_fff0, true),
    ];
    for (what, offset, absolute) in bad_indices {
        phase += 1;
        while rx.poll(nic, feeder).is_some() {}
        let consumer = rx.next;
        let bad = if absolute { offset } else { consumer.wrapping_add(offset) };
        nic.set_rx_producer(bad);
        if !send(nic, feeder, &[Msg { op: Op::Go, phase, value: 4 }]) {
            fail(format_args!("phase {phase}: could not send to the feeder"));
        }
        sleep_until(nic, ticks() + ms(20));
        if nic.rx_consumer() != consumer {
            fail(format_args!("rx producer {what} ({bad}): the kernel filled buffers up to {}", nic.rx_consumer()));
        }
        nic.set_rx_producer(rx.full_producer());
        let (sent, received) = query(nic, &mut rx, feeder, phase, &mut fail);
        let arrived =
            received.iter().filter(|r| r.msg.is_some_and(|m| m.op == Op::Data && m.phase == phase)).count() as u32;
        late += arrived;
        index_dropped += sent.saturating_sub(arrived);
    }
    // Bad descriptors where the next frames land: each bad one must be refused (status), and the
    // frame meant for it is dropped; the unaligned one is the kernel's choice.
    phase += 1;
    while rx.poll(nic, feeder).is_some() {}
    let first = rx.next;
    let slot = nic.slot_size;
    let buffer = |k: u32| nic.rx_buffer_addr(first.wrapping_add(k));
    // The last case is a valid buffer too small for the frames (60 bytes): refused when the
    // frame arrives, counted apart (`drops_rx_buffer_small`); it must stay last (see below).
    let bad = [
        ("outside its memory", 0x1000, 2048, true),
        ("a kernel address", 0xffff_8000_0000_0000, 2048, true),
        ("zero length", buffer(2), 0, true),
        ("huge length", buffer(3), u32::MAX, true),
        ("crossing the buffer's end", buffer(4) + slot - 32, 2048, true),
        ("in the tx area", VNIC_TX_AREA_ADDR + TX_HEADROOM, 2048, true),
        ("unaligned", buffer(6) + 7, 2000, false),
        ("smaller than the frame", buffer(7), 20, true),
    ];
    let too_small = bad.len() - 1;
    for (k, &(_, addr, capacity, _)) in bad.iter().enumerate() {
        nic.write_rx_desc(first.wrapping_add(k as u32), addr, capacity);
    }
    if !send(nic, feeder, &[Msg { op: Op::Go, phase, value: bad.len() as u32 + 1 }]) {
        fail(format_args!("phase {phase}: could not send to the feeder"));
    }
    let (sent, received) = query(nic, &mut rx, feeder, phase, &mut fail);
    for Received { index, status, msg } in received {
        let case = bad.get(index.wrapping_sub(first) as usize);
        let is_data = msg.is_some_and(|m| m.op == Op::Data && m.phase == phase);
        match (status, case) {
            (Some(DescStatus::RejectedBadDescriptor), Some(_)) if index.wrapping_sub(first) as usize == too_small => {
                small_rejected += 1
            }
            (Some(DescStatus::RejectedBadDescriptor), Some(_)) => desc_rejected += 1,
            (Some(DescStatus::Done), Some((what, _, _, true))) => {
                fail(format_args!("rx descriptor {what} was filled"));
            }
            (Some(DescStatus::Done), _) if is_data => data_received += 1,
            (Some(DescStatus::Done), _) => {}
            (status, _) => fail(format_args!("rx index {index}: status {status:?}")),
        }
    }
    if data_received + desc_rejected + small_rejected != sent {
        fail(format_args!("{sent} frames sent, {data_received} received, {desc_rejected} + {small_rejected} refused"));
    }
    println!(
        "hostile-report role=rx-ring index_phases={} index_dropped={index_dropped} late={late} \
         desc_rejected={desc_rejected} small_rejected={small_rejected} data_received={data_received} \
         failures={failures}",
        bad_indices.len()
    );
    i32::from(failures > 0)
}

/// Asks the feeder how many frames of `phase` it sent and reads every frame up to its report:
/// (frames sent, every buffer read before the report).
fn query(
    nic: &RawNic,
    rx: &mut RxCursor,
    feeder: [u8; 6],
    phase: u8,
    fail: &mut impl FnMut(core::fmt::Arguments<'_>),
) -> (u32, alloc::vec::Vec<Received>) {
    let mut received = alloc::vec::Vec::new();
    if !send(nic, feeder, &[Msg { op: Op::Query, phase, value: 0 }]) {
        fail(format_args!("phase {phase}: could not query the feeder"));
        return (0, received);
    }
    while let Some(r) = rx.wait(nic, feeder, tsc_hz() * 2) {
        if let Some(Msg { op: Op::Report, phase: p, value }) = r.msg {
            if p == phase {
                return (value, received);
            }
        }
        received.push(r);
    }
    fail(format_args!("phase {phase}: no report from the feeder"));
    (0, received)
}

// ---- rx-feeder ----

fn rx_feeder(env: &Env, nic: &RawNic) -> i32 {
    let Some(target) = env.arg("target").and_then(parse_mac) else {
        println!("rx-feeder: need target=MAC");
        return 2;
    };
    let mut rx = RxCursor::start(nic);
    let mut sent = [0u32; 256];
    println!("rx-feeder ready");
    loop {
        nic.shared.virq.0.swap(0, AcqRel);
        while let Some(r) = rx.poll(nic, target) {
            let Some(msg) = r.msg else { continue };
            let phase = msg.phase;
            match msg.op {
                Op::Ping => {
                    send(nic, target, &[Msg { op: Op::Pong, phase, value: 0 }]);
                }
                Op::Go => {
                    let count = msg.value.min(16);
                    let data = [Msg { op: Op::Data, phase, value: 0 }; 16];
                    if send(nic, target, &data[..count as usize]) {
                        sent[usize::from(phase)] += count;
                    }
                }
                Op::Query => {
                    send(nic, target, &[Msg { op: Op::Report, phase, value: sent[usize::from(phase)] }]);
                }
                Op::Pong | Op::Data | Op::Report => {}
            }
        }
        vi::idle();
    }
}

// ---- exit-in-flight ----

/// Batches `exit-in-flight` posts before it gives up finding its frames in flight (under copy
/// they never are; under COW, with the NIC holding frames a while, the first batch is).
const EXIT_ATTEMPTS: u32 = 4;

fn exit_in_flight(env: &Env, nic: &RawNic) -> i32 {
    let frames: u32 = env.arg("frames").and_then(|n| n.parse().ok()).unwrap_or(8).min(TX_RING_SIZE);
    println!("exit-in-flight: posting {frames} frames to the NIC and exiting at once if any is still in flight");
    let mut frame = [0u8; 1514];
    let payload = [0x5au8; 1500];
    let len = ethernet_frame(SLIRP_MAC, nic.config.mac, ETHERTYPE_TEST, &payload, &mut frame);
    let consumer = &nic.shared.tx_consumer.0 as *const _ as *const u32;
    for _ in 0..EXIT_ATTEMPTS {
        for _ in 0..frames {
            nic.post_tx(&frame[..len]);
        }
        let produced = nic.tx_producer();
        // The kick (`rax`: descriptors taken), the in-flight count from the consumer the kernel
        // publishes, then `exit` with that count if every frame was taken and some are not
        // completed (else the null instruction, and another batch): straight-line code
        // (conditional moves, no branch), which the CPU emulator runs as one block, so no
        // interrupt (no NIC completion) comes between the reading and the exit. The exit code is
        // exactly what was in flight when the kernel ended this guest.
        // SAFETY: virtual instructions only (the kernel changes nothing but `rax`); `r8` points at the shared page's consumer.
        unsafe {
            core::arch::asm!(
                "out dx, eax",
                "mov edi, esi",
                "sub edi, dword ptr [r8]",
                "mov edx, r9d",
                "cmovnz edx, ecx",
                "cmp eax, r10d",
                "cmovne edx, r9d",
                "xor eax, eax",
                "out dx, eax",
                inout("edx") u32::from(hypercall_abi::vi::Vi::VnicTxKick.port()) => _,
                in("ecx") u32::from(hypercall_abi::vi::Vi::Exit.port()),
                in("r9d") u32::from(hypercall_abi::vi::Vi::Null.port()),
                in("r10d") frames,
                in("esi") produced,
                in("r8") consumer,
                inout("eax") 0u32 => _,
                out("edi") _,
                options(nostack),
            )
        }
        if !nic.wait_tx_consumer(produced, tsc_hz()) {
            println!("exit-in-flight: WRONG: frames never completed");
            return 99;
        }
    }
    0
}

fn main(env: &Env) -> i32 {
    let Some(nic) = RawNic::open(env.net) else {
        println!("ring-hostile needs a virtual NIC (net = true)");
        return 98;
    };
    match env.args().next().unwrap_or("") {
        "tx-ring" => tx_ring(env, &nic),
        "rx-ring" => rx_ring(env, &nic),
        "rx-feeder" => rx_feeder(env, &nic),
        "exit-in-flight" => exit_in_flight(env, &nic),
        other => {
            println!("ring-hostile: unknown role `{other}`");
            98
        }
    }
}

extern crate alloc;
guest_os::entry!(main);
