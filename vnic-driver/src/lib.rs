//! The guest side of the virtual NIC: [`smoltcp::phy::Device`] over the rings of
//! [`hypercall_abi::vnic`].
//!
//! The guest runtime turns the fixed guest addresses into references; this crate only sees a
//! `&VnicShared` and the two areas as byte slices, so it needs no unsafe code and its tests run
//! on the host against a fake kernel ([`testing`], behind the `testing` feature).
//!
//! Everything read from the shared page is treated as untrusted: indices that make no sense
//! are ignored, and an rx length larger than the buffer is clamped.

#![no_std]
#![forbid(unsafe_code)]

extern crate alloc;
#[cfg(test)]
extern crate std;

#[cfg(any(test, feature = "testing"))]
#[doc(hidden)]
pub mod testing;

use alloc::vec::Vec;
use core::sync::atomic::{fence, Ordering};
use hypercall_abi::vnic::{
    desc_flags, max_frame, ring_used, rx_buffer_addr_for, slot_size, tx_slot_addr_for, DescStatus, Offloads,
    VnicShared, DESC_STATUS_MASK, MTU, RX_RING_SIZE, RX_SLOTS, TX_HEADROOM, TX_RING_SIZE, TX_SLOTS,
};
use smoltcp::phy::{Checksum, ChecksumCapabilities, Device, DeviceCapabilities, Medium};
use smoltcp::time::Instant;

/// How the driver signals the kernel. A guest issues the virtual instructions
/// (`hypercall_abi::guest::vnic_tx_kick` / `vnic_rx_posted`); tests count.
pub trait Doorbell {
    /// Tx descriptors were produced and the kernel asked to be told (`needs_kick`).
    fn tx_kick(&mut self);
    /// Rx buffers were posted.
    fn rx_posted(&mut self);
    /// A serialised TSC read, for per-packet stage stamps (only used while the kernel has
    /// stamping on). The default, for hosts and tests, stamps nothing.
    fn clock() -> u64
    where
        Self: Sized,
    {
        0
    }
}

/// Why [`Vnic::new`] refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum VnicError {
    /// The tx area is not `TX_SLOTS * slot_size(mtu)` bytes (its actual length).
    TxAreaSize(usize),
    /// The rx area is not `RX_SLOTS * slot_size(mtu)` bytes (its actual length).
    RxAreaSize(usize),
    /// A ring holds more entries than its size: the shared page is not a vNIC's.
    BadRingIndices,
}

/// Driver counters, for diagnostics.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct VnicCounters {
    /// Frames put into the tx ring.
    pub tx_frames: u64,
    /// Doorbells rung for tx.
    pub tx_kicks: u64,
    /// Tx descriptors the kernel completed with a status other than `Done`.
    pub tx_rejected: u64,
    /// Frames smoltcp built that never reached the ring (too long, or ring full).
    pub tx_dropped: u64,
    /// The part of `tx_dropped` lost to a full ring (a tx token handed out with an rx token).
    pub tx_dropped_ring_full: u64,
    /// Frames handed to smoltcp.
    pub rx_frames: u64,
    /// Filled rx descriptors whose length exceeded the buffer (clamped).
    pub rx_len_clamped: u64,
    /// Filled rx descriptors whose status was not `Done` (skipped and reposted).
    pub rx_errors: u64,
    /// Checksum offload: frames sent with their L4 checksum left to the kernel, and frames
    /// received with it verified.
    pub tx_csum_offloaded: u64,
    pub rx_csum_verified: u64,
}

/// Rx buffers a fresh driver keeps posted: one. A frame that finds none is held by the kernel
/// and delivered when the guest next looks (an extra copy, no loss), and that doubles the
/// window, so a guest that only ever gets a frame at a time touches (and so costs) one rx
/// page, and a busy one soon posts its whole ring.
pub const RX_WINDOW_START: u32 = 1;

/// The virtual NIC, as a smoltcp device.
///
/// Split into an rx half and a tx half because smoltcp's `Device::receive` hands out an rx
/// token and a tx token at once, each borrowing the device mutably.
pub struct Vnic<'a, D: Doorbell> {
    shared: &'a VnicShared,
    /// Largest frame (MTU plus Ethernet header).
    max_frame: usize,
    tx: TxHalf<'a>,
    rx: RxHalf<'a>,
    doorbell: D,
    tx_kicks: u64,
    /// The kernel offers checksum offload ([`Offloads::CHECKSUM`], read once at start).
    checksum_offload: bool,
    /// The fake kernel's frames held for want of a posted buffer (the real kernel keeps them in
    /// its own memory; the fake has none of its own that outlives a [`Vnic::kernel_side`]).
    #[cfg(any(test, feature = "testing"))]
    fake_held: alloc::collections::VecDeque<Vec<u8>>,
}

struct TxHalf<'a> {
    shared: &'a VnicShared,
    area: &'a mut [u8],
    slot_size: usize,
    max_frame: usize,
    /// Stage stamps: the clock, when the app last sent, and the first index not yet stamped
    /// with its doorbell time.
    clock: fn() -> u64,
    send_stamp: u64,
    unkicked_from: u32,
    /// Our copy of `tx_producer` (the guest is its only writer).
    producer: u32,
    /// `tx_consumer` as of the last look at completed descriptors.
    completed: u32,
    /// The slot each ring position's descriptor points at, and the slots free now, most
    /// recently freed last: a sender reuses the slot it just got back, so a guest that sends
    /// one frame at a time touches one slot, not all of them (the kernel backs slots lazily).
    slot_of: [u8; TX_RING_SIZE as usize],
    free_slots: Vec<u8>,
    /// Descriptors were produced since the last flush.
    kick_pending: bool,
    /// Where frames that cannot go into the ring are built and dropped: smoltcp's
    /// `TxToken::consume` cannot fail, so it always needs a buffer.
    scratch: Vec<u8>,
    frames: u64,
    rejected: u64,
    dropped: u64,
    dropped_ring_full: u64,
    /// Checksum offload: UDP and TCP frames go with their L4 checksum left to the kernel.
    checksum_offload: bool,
    csum_offloaded: u64,
}

struct RxHalf<'a> {
    shared: &'a VnicShared,
    area: &'a mut [u8],
    slot_size: usize,
    /// Stage stamps: the clock, when the guest last resumed, and the last frame's stamps.
    clock: fn() -> u64,
    resume_stamp: u64,
    last_stamps: Option<[u64; 8]>,
    /// Next rx index to hand to smoltcp (or, while `unreleased`, the one last handed out).
    seen: u32,
    /// The buffer each ring position's descriptor points at, and the buffers not posted, most
    /// recently used last: a reposted buffer is the one just given back, so a guest receiving
    /// a frame at a time touches as many buffers as it posts, not all of them (the kernel backs
    /// buffers lazily, on the first delivery into each).
    buffer_of: [u8; RX_RING_SIZE as usize],
    free_buffers: Vec<u8>,
    /// How many buffers to keep posted: few while frames come one at a time, doubled (up to the
    /// ring) each time the kernel says frames found none (`rx_wanted` moved; it held them).
    window: u32,
    wanted_seen: u32,
    /// The frame at `seen` was handed to smoltcp and its buffer is not reposted yet: its bytes
    /// stay readable ([`Vnic::last_rx`]) until the next frame is looked for or the flush.
    unreleased: bool,
    /// Our copy of `rx_producer`.
    producer: u32,
    frames: u64,
    len_clamped: u64,
    errors: u64,
    csum_verified: u64,
}

impl<'a, D: Doorbell> Vnic<'a, D> {
    /// Takes over the vNIC: checks the areas, posts every rx buffer and rings `rx_posted` once.
    ///
    /// `tx_area` is the guest's whole tx area (at `layout::VNIC_TX_AREA_ADDR`), `rx_area` its
    /// rx area (at `layout::VNIC_RX_AREA_ADDR`); descriptors carry those guest addresses.
    pub fn new(
        shared: &'a VnicShared,
        tx_area: &'a mut [u8],
        rx_area: &'a mut [u8],
        doorbell: D,
    ) -> Result<Self, VnicError> {
        Self::with_mtu(shared, tx_area, rx_area, doorbell, MTU as u16)
    }

    /// [`Vnic::new`] for an MTU other than the standard one: slots are
    /// `hypercall_abi::vnic::slot_size(mtu)` bytes (jumbo frames take several pages).
    pub fn with_mtu(
        shared: &'a VnicShared,
        tx_area: &'a mut [u8],
        rx_area: &'a mut [u8],
        mut doorbell: D,
        mtu: u16,
    ) -> Result<Self, VnicError> {
        let slot = slot_size(u64::from(mtu)) as usize;
        let max_frame = max_frame(u64::from(mtu)) as usize;
        if tx_area.len() != TX_SLOTS as usize * slot {
            return Err(VnicError::TxAreaSize(tx_area.len()));
        }
        if rx_area.len() != RX_SLOTS as usize * slot {
            return Err(VnicError::RxAreaSize(rx_area.len()));
        }
        // Adopt the indices as found (zero on a fresh guest) rather than assume them.
        let tx_producer = shared.tx_producer.0.load(Ordering::Relaxed);
        let tx_consumer = shared.tx_consumer.0.load(Ordering::Acquire);
        let rx_producer = shared.rx_producer.0.load(Ordering::Relaxed);
        let rx_consumer = shared.rx_consumer.0.load(Ordering::Acquire);
        let checksum_offload = shared.offloads.0.load(Ordering::Acquire) & Offloads::CHECKSUM != 0;
        if ring_used(tx_producer, tx_consumer) > TX_RING_SIZE || ring_used(rx_producer, rx_consumer) > RX_RING_SIZE {
            return Err(VnicError::BadRingIndices);
        }
        let mut rx = RxHalf {
            shared,
            area: rx_area,
            slot_size: slot,
            clock: D::clock,
            resume_stamp: 0,
            last_stamps: None,
            seen: rx_consumer,
            buffer_of: [0; RX_RING_SIZE as usize],
            free_buffers: (0..RX_SLOTS as u8).rev().collect(),
            window: RX_WINDOW_START,
            wanted_seen: shared.rx_wanted.0.load(Ordering::Relaxed),
            unreleased: false,
            producer: rx_consumer,
            frames: 0,
            len_clamped: 0,
            errors: 0,
            csum_verified: 0,
        };
        // (Re)post the first window of buffers from the consumer on.
        rx.refill();
        doorbell.rx_posted();
        let tx = TxHalf {
            shared,
            area: tx_area,
            slot_size: slot,
            max_frame,
            clock: D::clock,
            send_stamp: 0,
            unkicked_from: tx_producer,
            producer: tx_producer,
            completed: tx_consumer,
            // Positions still in flight keep the slot of their index; the others are free.
            slot_of: core::array::from_fn(|position| (position as u64 % TX_SLOTS) as u8),
            free_slots: (0..TX_SLOTS as u8)
                .rev()
                .filter(|&slot| {
                    let in_flight = ring_used(tx_producer, tx_consumer);
                    (0..in_flight).all(|i| u64::from(tx_consumer.wrapping_add(i)) % TX_SLOTS != u64::from(slot))
                })
                .collect(),
            kick_pending: false,
            scratch: Vec::new(), // grown only if a frame ever misses the ring
            frames: 0,
            rejected: 0,
            dropped: 0,
            dropped_ring_full: 0,
            checksum_offload,
            csum_offloaded: 0,
        };
        Ok(Vnic {
            shared,
            max_frame,
            tx,
            rx,
            doorbell,
            tx_kicks: 0,
            checksum_offload,
            #[cfg(any(test, feature = "testing"))]
            fake_held: alloc::collections::VecDeque::new(),
        })
    }

    /// Rings the tx doorbell once if frames were produced since the last flush and the kernel
    /// wants a kick. Called once after each smoltcp poll: one kick per batch, not per frame.
    pub fn flush(&mut self) {
        if !self.flush_without_kick() {
            return;
        }
        self.tx.kick_pending = false;
        self.tx.stamp_doorbell();
        // Order the `tx_producer` store before the `needs_kick` load (a store-load pair needs a
        // full fence). With the kernel setting `needs_kick` and then re-reading `tx_producer`,
        // one of the two sides always sees the other's write, so no frame is left unkicked.
        fence(Ordering::SeqCst);
        if self.shared.needs_kick.0.load(Ordering::Acquire) != 0 {
            self.doorbell.tx_kick();
            self.tx_kicks += 1;
        }
        // Otherwise the kernel is draining the ring by itself.
    }

    /// As [`Self::flush`], but leaves the kick for later: returns whether frames wait for one.
    /// A guest about to idle need not kick at all: the kernel takes the tx ring when a guest
    /// idles ([`Self::handed_over_by_idle`]).
    pub fn flush_without_kick(&mut self) -> bool {
        self.rx.release();
        self.tx.reap();
        self.tx.kick_pending
    }

    /// The guest idles now: the kernel takes what the tx ring holds as a kick would, so no
    /// kick is owed for the frames produced so far.
    pub fn handed_over_by_idle(&mut self) {
        if core::mem::take(&mut self.tx.kick_pending) {
            self.tx.stamp_doorbell();
        }
    }

    /// Whether the kernel asked for per-packet stage stamps.
    pub fn stamps_enabled(&self) -> bool {
        self.shared.stamps_enabled.0.load(Ordering::Relaxed) != 0
    }

    /// The app is sending a datagram now (the start of the "guest stack" transmit stage): the
    /// stamp taken, 0 when stamping is off.
    pub fn note_send(&mut self) -> u64 {
        if self.stamps_enabled() {
            self.tx.send_stamp = (self.tx.clock)();
        }
        self.tx.send_stamp
    }

    /// The guest runs again after idling (the end of the "virtual interrupt" receive stage).
    pub fn note_resume(&mut self) {
        if self.stamps_enabled() {
            self.rx.resume_stamp = (self.rx.clock)();
        }
    }

    /// The stamps of the last frame taken: the kernel's six (trap entry, handler, popped,
    /// routed, copied, released), then the guest's resume and driver-done times.
    pub fn take_rx_stamps(&mut self) -> Option<[u64; 8]> {
        self.rx.last_stamps.take()
    }

    /// The clock the stamps use.
    pub fn clock(&self) -> u64 {
        (self.tx.clock)()
    }

    /// Takes and clears the virtual-interrupt bits ([`hypercall_abi::vi::VirtualInterrupts`]).
    pub fn take_virtual_interrupts(&self) -> u64 {
        self.shared.virq.0.swap(0, Ordering::AcqRel)
    }

    /// The next received frame, without taking it: the frame the next [`Device::receive`]
    /// hands out. The stack looks at it first to decide whether it can hold it now; until then
    /// it waits in the ring, where the kernel's counting is exact. Skips (and reposts) buffers
    /// the kernel filled with an error.
    pub fn peek_rx(&mut self) -> Option<&[u8]> {
        if !self.rx.ready() {
            return None;
        }
        Some(self.rx.frame())
    }

    /// The frame smoltcp was last handed, until its buffer is reposted (the next
    /// [`Self::peek_rx`], receive or [`Self::flush`]): for a second look at a frame the stack
    /// refused.
    pub fn last_rx(&self) -> Option<&[u8]> {
        self.rx.unreleased.then(|| self.rx.frame())
    }

    /// Whether a tx slot is free (a frame built now would reach the ring).
    pub fn tx_has_room(&mut self) -> bool {
        self.tx.has_free_slot()
    }

    /// Publishes the guest's counters in the shared page, for the kernel's `stats:` line.
    pub fn publish_counters(&self, values: &hypercall_abi::vnic::GuestCounterValues) {
        self.shared.guest_counters.publish(values);
    }

    /// Whether filled rx buffers wait, read from the ring itself (not from `virq`).
    pub fn rx_pending(&self) -> bool {
        // A frame taken but not yet released is not waiting any more.
        let seen = self.rx.seen.wrapping_add(u32::from(self.rx.unreleased));
        let consumer = self.shared.rx_consumer.0.load(Ordering::Acquire);
        let filled = ring_used(consumer, seen);
        filled != 0 && filled <= ring_used(self.rx.producer, seen)
    }

    /// The counters so far (`tx_rejected` as of the last `transmit` or `flush`).
    pub fn counters(&self) -> VnicCounters {
        VnicCounters {
            tx_frames: self.tx.frames,
            tx_kicks: self.tx_kicks,
            tx_rejected: self.tx.rejected,
            tx_dropped: self.tx.dropped,
            tx_dropped_ring_full: self.tx.dropped_ring_full,
            rx_frames: self.rx.frames,
            rx_len_clamped: self.rx.len_clamped,
            rx_errors: self.rx.errors,
            tx_csum_offloaded: self.tx.csum_offloaded,
            rx_csum_verified: self.rx.csum_verified,
        }
    }

    /// Whether the kernel verifies UDP and TCP checksums on receive and computes them on
    /// transmit (checksum offload): the stack then neither checks nor computes them.
    pub fn checksum_offload(&self) -> bool {
        self.checksum_offload
    }

    /// The kernel's view of this vNIC, for the fake kernel in tests: in a guest the kernel
    /// reaches the areas through its own mapping, which safe Rust cannot model otherwise.
    #[cfg(any(test, feature = "testing"))]
    #[doc(hidden)]
    pub fn kernel_side(&mut self) -> testing::KernelSide<'_> {
        let mut side = testing::KernelSide::new(self.shared, self.tx.area, self.rx.area, &mut self.fake_held);
        side.deliver_held();
        side
    }
}

impl TxHalf<'_> {
    /// Looks at descriptors the kernel completed since the last call (counting rejections)
    /// and returns `tx_consumer`. Must run before a slot's descriptor is rewritten.
    fn reap(&mut self) -> u32 {
        let consumer = self.shared.tx_consumer.0.load(Ordering::Acquire);
        let done = ring_used(consumer, self.completed);
        // A consumer past our producer is nonsense: ignore it (the ring then looks full).
        if done > ring_used(self.producer, self.completed) {
            return consumer;
        }
        for i in 0..done {
            let position = (self.completed.wrapping_add(i) % TX_RING_SIZE) as usize;
            let desc = &self.shared.tx[position];
            if desc.status.load(Ordering::Relaxed) & DESC_STATUS_MASK != DescStatus::Done as u32 {
                self.rejected += 1;
            }
            self.free_slots.push(self.slot_of[position]);
        }
        self.completed = consumer;
        consumer
    }

    /// Stamps the doorbell time into every slot produced since the last doorbell.
    fn stamp_doorbell(&mut self) {
        if self.shared.stamps_enabled.0.load(Ordering::Relaxed) != 0 {
            let now = (self.clock)();
            let mut index = self.unkicked_from;
            while index != self.producer {
                let slot = self.slot_of[(index % TX_RING_SIZE) as usize];
                let at = usize::from(slot) * self.slot_size + 16;
                self.area[at..at + 8].copy_from_slice(&now.to_le_bytes());
                index = index.wrapping_add(1);
            }
        }
        self.unkicked_from = self.producer;
    }

    /// A free ring position always has a free slot (as many slots as positions).
    fn has_free_slot(&mut self) -> bool {
        let consumer = self.reap();
        ring_used(self.producer, consumer) < TX_RING_SIZE && !self.free_slots.is_empty()
    }

    fn send<R, F: FnOnce(&mut [u8]) -> R>(&mut self, len: usize, f: F) -> R {
        let slot = if len <= self.max_frame && self.has_free_slot() { self.free_slots.pop() } else { None };
        let Some(slot) = slot else {
            self.dropped += 1;
            if len <= self.max_frame {
                self.dropped_ring_full += 1;
            }
            if self.scratch.len() < len {
                self.scratch.resize(len, 0);
            }
            return f(&mut self.scratch[..len]);
        };
        let index = self.producer;
        self.slot_of[(index % TX_RING_SIZE) as usize] = slot;
        let slot = u64::from(slot);
        let start = slot as usize * self.slot_size + TX_HEADROOM as usize;
        if self.shared.stamps_enabled.0.load(Ordering::Relaxed) != 0 {
            // Socket send and driver start, in the slot's headroom (the NIC never sees it).
            let now = (self.clock)();
            let send = if self.send_stamp != 0 { self.send_stamp } else { now };
            let stamps = slot as usize * self.slot_size;
            self.area[stamps..stamps + 8].copy_from_slice(&send.to_le_bytes());
            self.area[stamps + 8..stamps + 16].copy_from_slice(&now.to_le_bytes());
            self.send_stamp = 0;
        }
        let result = f(&mut self.area[start..start + len]);
        // smoltcp left the checksum of a UDP or TCP frame out (its capabilities say so): the
        // kernel fills it.
        let flags = if self.checksum_offload && carries_udp_or_tcp(&self.area[start..start + len]) {
            self.csum_offloaded += 1;
            desc_flags::TX_CSUM_NEEDED
        } else {
            0
        };
        let desc = &self.shared.tx[(index % TX_RING_SIZE) as usize];
        desc.addr.store(tx_slot_addr_for(slot, self.slot_size as u64) + TX_HEADROOM, Ordering::Relaxed);
        desc.len.store(len as u32, Ordering::Relaxed);
        desc.status.store(DescStatus::Pending as u32 | flags, Ordering::Relaxed);
        self.producer = index.wrapping_add(1);
        self.shared.tx_producer.0.store(self.producer, Ordering::Release);
        self.kick_pending = true;
        self.frames += 1;
        result
    }
}

impl RxHalf<'_> {
    /// Posts free buffers until `window` are posted and publishes them; the window first grows
    /// if the kernel found no buffer for some frame since the last look.
    fn refill(&mut self) {
        let wanted = self.shared.rx_wanted.0.load(Ordering::Relaxed);
        if wanted != self.wanted_seen {
            self.wanted_seen = wanted;
            self.window = self.window.saturating_mul(2).min(RX_RING_SIZE);
        }
        let mut posted = false;
        while ring_used(self.producer, self.seen) < self.window {
            let Some(buffer) = self.free_buffers.pop() else { break };
            let index = self.producer;
            let position = (index % RX_RING_SIZE) as usize;
            let desc = &self.shared.rx[position];
            desc.addr.store(rx_buffer_addr_for(u64::from(buffer), self.slot_size as u64), Ordering::Relaxed);
            desc.len.store(self.slot_size as u32, Ordering::Relaxed);
            desc.status.store(DescStatus::Pending as u32, Ordering::Relaxed);
            self.buffer_of[position] = buffer;
            self.producer = index.wrapping_add(1);
            posted = true;
        }
        if posted {
            self.shared.rx_producer.0.store(self.producer, Ordering::Release);
        }
    }

    /// Gives the buffer at `seen` back and moves on, reposting it (or another) at once.
    fn recycle(&mut self) {
        self.free_buffers.push(self.buffer_of[(self.seen % RX_RING_SIZE) as usize]);
        self.seen = self.seen.wrapping_add(1);
        self.refill();
    }

    /// Reposts the buffer of the frame last handed out, if not done yet.
    fn release(&mut self) {
        if core::mem::take(&mut self.unreleased) {
            self.recycle();
        }
    }

    /// Whether a filled buffer waits at `seen`; skips (and reposts) failed ones.
    fn ready(&mut self) -> bool {
        self.release();
        self.refill();
        loop {
            let consumer = self.shared.rx_consumer.0.load(Ordering::Acquire);
            let filled = ring_used(consumer, self.seen);
            // A consumer past our producer is nonsense: ignore it.
            if filled == 0 || filled > ring_used(self.producer, self.seen) {
                return false;
            }
            let desc = &self.shared.rx[(self.seen % RX_RING_SIZE) as usize];
            if desc.status.load(Ordering::Relaxed) & DESC_STATUS_MASK == DescStatus::Done as u32 {
                return true;
            }
            self.errors += 1;
            self.recycle();
        }
    }

    /// Start and length of the filled buffer at `seen` (a length beyond the buffer is clamped:
    /// `clamped` says so). Our own buffer for this index, whatever the descriptor's address says.
    fn filled(&self) -> (usize, usize, bool) {
        let desc = &self.shared.rx[(self.seen % RX_RING_SIZE) as usize];
        let len = desc.len.load(Ordering::Relaxed) as usize;
        let start = usize::from(self.buffer_of[(self.seen % RX_RING_SIZE) as usize]) * self.slot_size;
        (start, len.min(self.slot_size), len > self.slot_size)
    }

    /// The filled frame at `seen` (only after [`Self::ready`]).
    fn frame(&self) -> &[u8] {
        let (start, len, _) = self.filled();
        &self.area[start..start + len]
    }

    fn consume<R, F: FnOnce(&[u8]) -> R>(&mut self, f: F) -> R {
        let (start, len, clamped) = self.filled();
        if clamped {
            self.len_clamped += 1;
        }
        // The driver's part ends where smoltcp's processing of the frame (inside `f`) begins.
        let driver_done = (self.clock)();
        let result = f(&self.area[start..start + len]);
        if self.shared.stamps_enabled.0.load(Ordering::Relaxed) != 0 {
            let at = start + hypercall_abi::vnic::stamps::rx_stamps_offset(self.slot_size as u64) as usize;
            let mut stamps = [0u64; 8];
            for (i, stamp) in stamps.iter_mut().take(6).enumerate() {
                let bytes = &self.area[at + 8 * i..at + 8 * i + 8];
                *stamp = u64::from_le_bytes(bytes.try_into().expect("8 bytes"));
            }
            stamps[6] = self.resume_stamp;
            stamps[7] = driver_done;
            self.last_stamps = Some(stamps);
        }
        self.frames += 1;
        let status = self.shared.rx[(self.seen % RX_RING_SIZE) as usize].status.load(Ordering::Relaxed);
        if status & desc_flags::RX_CSUM_VERIFIED != 0 {
            self.csum_verified += 1;
        }
        self.unreleased = true;
        result
    }
}

/// Whether an Ethernet frame carries IPv4 with UDP or TCP (the frames whose checksum smoltcp
/// leaves out under checksum offload; it never fragments).
fn carries_udp_or_tcp(frame: &[u8]) -> bool {
    const IPV4: [u8; 2] = [0x08, 0x00];
    const TCP: u8 = 6;
    const UDP: u8 = 17;
    frame.get(12..14) == Some(&IPV4[..]) && matches!(frame.get(23), Some(&(TCP | UDP)))
}

/// smoltcp's checksum capabilities for a vNIC: with checksum offload the UDP and TCP checksums
/// are the kernel's (it computes them on transmit, and delivers only UDP and TCP frames it or
/// the NIC verified); IPv4 header and ICMP checksums stay the stack's (20 bytes, and frames
/// the kernel does not look into).
pub fn checksum_capabilities(offload: bool) -> ChecksumCapabilities {
    let mut caps = ChecksumCapabilities::default();
    if offload {
        caps.udp = Checksum::None;
        caps.tcp = Checksum::None;
    }
    caps
}

/// Hands smoltcp one received frame; the buffer is reposted once the next frame is looked for
/// (or at the flush).
pub struct VnicRxToken<'t, 'a> {
    rx: &'t mut RxHalf<'a>,
}

/// Lets smoltcp send one frame. Reserves nothing until consumed, so a dropped token never
/// leaks a slot.
pub struct VnicTxToken<'t, 'a> {
    tx: &'t mut TxHalf<'a>,
}

impl smoltcp::phy::RxToken for VnicRxToken<'_, '_> {
    fn consume<R, F: FnOnce(&[u8]) -> R>(self, f: F) -> R {
        self.rx.consume(f)
    }
}

impl smoltcp::phy::TxToken for VnicTxToken<'_, '_> {
    fn consume<R, F: FnOnce(&mut [u8]) -> R>(self, len: usize, f: F) -> R {
        self.tx.send(len, f)
    }
}

impl<'a, D: Doorbell> Device for Vnic<'a, D> {
    type RxToken<'t>
        = VnicRxToken<'t, 'a>
    where
        Self: 't;
    type TxToken<'t>
        = VnicTxToken<'t, 'a>
    where
        Self: 't;

    fn receive(&mut self, _timestamp: Instant) -> Option<(Self::RxToken<'_>, Self::TxToken<'_>)> {
        if !self.rx.ready() {
            return None;
        }
        // The tx token may find the ring full when consumed; it then drops its frame.
        Some((VnicRxToken { rx: &mut self.rx }, VnicTxToken { tx: &mut self.tx }))
    }

    fn transmit(&mut self, _timestamp: Instant) -> Option<Self::TxToken<'_>> {
        if !self.tx.has_free_slot() {
            return None;
        }
        Some(VnicTxToken { tx: &mut self.tx })
    }

    fn capabilities(&self) -> DeviceCapabilities {
        let mut caps = DeviceCapabilities::default();
        caps.medium = Medium::Ethernet;
        // smoltcp's Ethernet MTU counts the header, as max_frame does.
        caps.max_transmission_unit = self.max_frame;
        caps.max_burst_size = None;
        caps.checksum = checksum_capabilities(self.checksum_offload);
        caps
    }
}

#[cfg(test)]
mod tests;
