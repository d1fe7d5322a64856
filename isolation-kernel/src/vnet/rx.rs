//! Receive: the physical NIC's frames through the vswitch, and delivery (copy into the rx
//! buffer the guest posted, virtual interrupt, wake) for frames from the NIC or another guest.

use super::{count_drop, run_bytes, GuestNic, HeldFrame, NetCtx, Network, PoolMemory};
use super::{POOL_KEPT_FOR_TX_DIVISOR, RX_HOLD_LIMIT};
use crate::guest::space::copy_into_run;
use crate::guest::space::LazyFault;
use crate::guest::Guest;
use core::sync::atomic::Ordering;
use hypercall_abi::vi::VirtualInterrupts;
use hypercall_abi::vnic::{desc_flags, DescStatus, RX_RING_SIZE};
use kernel_core::drivers::virtio::RxChecksum;
use kernel_core::guest::sched::{GuestId, Scheduler, WakeKind};
use kernel_core::vnet::csum::{self, Unplaceable};
use kernel_core::vnet::{ring, validate_rx, DropReason, NetCounters, Route, Source};

/// What is known of a frame's L4 checksum when it is delivered (checksum offload: see
/// `hypercall_abi::vnic::desc_flags`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum RxCheck {
    /// Offload is off: the frame goes as it is, and the guest checks its checksums.
    Off,
    /// Offload is on and nothing is known: the kernel verifies a UDP or TCP frame first.
    Verify,
    /// Offload is on and the checksum is vouched for: by the NIC, or the kernel computed it.
    Vouched,
}

impl RxCheck {
    /// What the physical NIC's header says, with offload `on`.
    fn from_nic(on: bool, checksum: RxChecksum, counters: &mut NetCounters) -> RxCheck {
        match (on, checksum) {
            (false, _) => RxCheck::Off,
            (true, RxChecksum::Unknown) => RxCheck::Verify,
            (true, RxChecksum::Valid | RxChecksum::Partial { .. }) => {
                counters.csum_nic_verified = counters.csum_nic_verified.saturating_add(1);
                RxCheck::Vouched
            }
        }
    }
}

/// Whether `frame` goes to its guest flagged verified (`Some(true)`), unflagged (`Some(false)`:
/// offload off, or neither UDP nor TCP over IPv4), or not at all (`None`: a UDP or TCP frame
/// whose checksum fails or cannot be verified, counted as `drops_bad_checksum`).
fn checked(frame: &[u8], check: RxCheck, counters: &mut NetCounters) -> Option<bool> {
    match check {
        RxCheck::Off => Some(false),
        RxCheck::Vouched => Some(true),
        RxCheck::Verify => match csum::locate(frame) {
            Ok(spot) if csum::verify(frame, &spot) => {
                counters.csum_verified = counters.csum_verified.saturating_add(1);
                Some(true)
            }
            Err(Unplaceable::NotIpv4 | Unplaceable::Protocol(_)) => Some(false),
            _ => {
                counters.drops_bad_checksum = counters.drops_bad_checksum.saturating_add(1);
                None
            }
        },
    }
}

impl NetCtx<'_> {
    /// The physical NIC's receive path: every frame to the guest the vswitch names.
    pub fn receive_from_nic(&mut self) -> usize {
        let stamps = self.net.stamps;
        let (entry, handler) = (crate::arch::trap::entry_tsc(), stamps.now());
        self.reclaim_nic();
        let NetCtx { net, nics, sched, guests } = self;
        let Network { nic, vswitch, counters, pool, pool_frames, pool_buffer_bytes, timeline, csum_offload, .. } =
            &mut **net;
        let csum_offload = *csum_offload;
        let mut pool = PoolMemory { pool, frames: pool_frames, buffer_bytes: *pool_buffer_bytes };
        let Some(nic) = nic.as_mut() else { return 0 };
        // Guests woken by frames from outside the machine are boosted (see the scheduler).
        sched.set_wake_kind(WakeKind::Input);
        let received = nic.receive_with(
            |frame, checksum| {
                let popped = stamps.now();
                let route = vswitch.route(frame, Source::Uplink);
                let routed = stamps.now();
                match route {
                    Route::Guest(dst) => {
                        let check = RxCheck::from_nic(csum_offload, checksum, counters);
                        deliver(nics, guests, sched, counters, &mut pool, dst, frame, check)
                    }
                    .map(|area| (area, popped, routed, stamps.now(), frame.len())),
                    Route::Uplink => {
                        count_drop(counters, DropReason::UnknownMac);
                        None
                    }
                    Route::Drop(reason) => {
                        count_drop(counters, reason);
                        None
                    }
                }
            },
            |delivered| {
                // The receive stamps go at the end of the guest's rx buffer, once the NIC's
                // buffer is released; the guest adds its own when it takes the frame.
                if let (true, Some(((run, size), popped, routed, copied, len))) = (stamps.on(), delivered) {
                    let values = [entry, handler, popped, routed, copied, stamps.now()];
                    timeline.staged_receive(len as u32);
                    let mut bytes = [0u8; 48];
                    for (chunk, value) in bytes.chunks_mut(8).zip(values) {
                        chunk.copy_from_slice(&value.to_le_bytes());
                    }
                    copy_into_run(run, size, hypercall_abi::vnic::stamps::rx_stamps_offset(size), &bytes);
                }
            },
        );
        sched.set_wake_kind(WakeKind::Internal);
        received
    }
}

impl NetCtx<'_> {
    /// Delivers the frames held for guest `id` into the rx buffers it has posted since, oldest
    /// first. Called whenever the guest traps in a way that may follow a repost (it idles, kicks
    /// or says it posted), so a guest that keeps few buffers posted gets its frames without a
    /// trap of its own for each.
    pub fn deliver_held(&mut self, id: GuestId) {
        let NetCtx { net, nics, sched, guests } = self;
        let Network { counters, pool, pool_frames, pool_buffer_bytes, .. } = &mut **net;
        loop {
            let Some(nic) = nics.get_mut(id).and_then(Option::as_mut) else { return };
            let Some(&HeldFrame { buf, len, verified }) = nic.held.front() else { return };
            let Some(index) = take_posted(nic, counters) else { return };
            nic.held.pop_front();
            counters.rx_held_now = counters.rx_held_now.saturating_sub(1);
            if let Some(&base) = pool_frames.get(buf.0 as usize) {
                let frame = run_bytes(base, *pool_buffer_bytes, 0, u64::from(len).min(*pool_buffer_bytes));
                fill(nics, guests, sched, counters, id, index, frame, verified);
            }
            let _ = pool.release(buf);
        }
    }
}

/// The index of the next rx buffer `nic`'s guest posted, taken now; `None` when none is posted
/// or its producer index is nonsense (counted as such).
fn take_posted(nic: &mut GuestNic, counters: &mut NetCounters) -> Option<u32> {
    match nic.rx.take(nic.shared().rx_producer.0.load(Ordering::Acquire)) {
        Ok(index) => index,
        Err(_) => {
            counters.bad_ring_indices = counters.bad_ring_indices.saturating_add(1);
            None
        }
    }
}

/// Copies `frame` into the next rx buffer guest `dst` posted, raises its rx virtual interrupt
/// and wakes it. A frame that finds no buffer posted (or older frames still held) is held for
/// the guest in a pool buffer and the guest told (`rx_wanted`) to post more; a frame longer
/// than the guest's MTU allows, or that can be neither delivered nor held, is dropped and
/// counted; a buffer the guest described badly is consumed, marked rejected and counted. With
/// checksum offload, a UDP or TCP frame goes only with its checksum verified (`check`).
/// Returns the rx buffer (run base and size) the frame went into, for the receive stamps.
#[allow(clippy::too_many_arguments)]
pub(super) fn deliver(
    nics: &mut [Option<GuestNic>],
    guests: &mut [Guest],
    sched: &mut Scheduler,
    counters: &mut NetCounters,
    pool: &mut PoolMemory<'_>,
    dst: GuestId,
    frame: &[u8],
    check: RxCheck,
) -> Option<(u64, u64)> {
    let Some(nic) = nics.get_mut(dst).and_then(Option::as_mut) else {
        counters.drops_unknown_mac = counters.drops_unknown_mac.saturating_add(1);
        return None;
    };
    if frame.len() as u64 > nic.max_frame {
        counters.drops_oversize = counters.drops_oversize.saturating_add(1);
        return None;
    }
    let verified = checked(frame, check, counters)?;
    // Frames held before this one go first.
    let taken =
        if nic.held.is_empty() { nic.rx.take(nic.shared().rx_producer.0.load(Ordering::Acquire)) } else { Ok(None) };
    let index = match taken {
        Ok(Some(index)) => index,
        Ok(None) => {
            hold(nic, counters, pool, frame, verified);
            // Woken, so that it looks again (and so reposts) if it was idle.
            sched.wake(dst);
            return None;
        }
        Err(_) => {
            counters.bad_ring_indices = counters.bad_ring_indices.saturating_add(1);
            counters.drops_bad_rx_ring = counters.drops_bad_rx_ring.saturating_add(1);
            return None;
        }
    };
    fill(nics, guests, sched, counters, dst, index, frame, verified)
}

/// Holds `frame` for `nic`'s guest in a pool buffer (or drops it, counted, when it already
/// holds a ring's worth, the pool is down to what transmit keeps, or the kernel heap is short),
/// and moves `rx_wanted` so the guest posts more buffers.
fn hold(nic: &mut GuestNic, counters: &mut NetCounters, pool: &mut PoolMemory<'_>, frame: &[u8], verified: bool) {
    let shared = nic.shared();
    shared.rx_wanted.0.fetch_add(1, Ordering::Relaxed);
    let pool_has_room = pool.pool.available() > pool.pool.capacity() / POOL_KEPT_FOR_TX_DIVISOR;
    let queue_has_room = nic.held.len() < RX_HOLD_LIMIT
        && (nic.held.len() < nic.held.capacity()
            || (crate::mm::heap::room_for_guest_growth() && nic.held.try_reserve(1).is_ok()));
    let buf = (pool_has_room && queue_has_room).then(|| pool.pool.alloc()).flatten();
    let Some((buf, &base)) = buf.and_then(|buf| Some((buf, pool.frames.get(buf.0 as usize)?))) else {
        counters.drops_no_buffer = counters.drops_no_buffer.saturating_add(1);
        return;
    };
    if frame.len() as u64 > pool.buffer_bytes {
        // Cannot happen: pool buffers fit the largest MTU any guest has.
        let _ = pool.pool.release(buf);
        counters.drops_oversize = counters.drops_oversize.saturating_add(1);
        return;
    }
    copy_into_run(base, pool.buffer_bytes, 0, frame);
    nic.held.push_back(HeldFrame { buf, len: frame.len() as u32, verified });
    counters.rx_held = counters.rx_held.saturating_add(1);
    counters.rx_held_now = counters.rx_held_now.saturating_add(1);
}

/// Copies `frame` into the rx buffer at ring index `index` (taken) of guest `dst`, sets the
/// descriptor's status (with the checksum-verified flag if `verified`), publishes the consumer,
/// raises the rx virtual interrupt and wakes it.
#[allow(clippy::too_many_arguments)]
fn fill(
    nics: &mut [Option<GuestNic>],
    guests: &mut [Guest],
    sched: &mut Scheduler,
    counters: &mut NetCounters,
    dst: GuestId,
    index: u32,
    frame: &[u8],
    verified: bool,
) -> Option<(u64, u64)> {
    let nic = nics.get_mut(dst).and_then(Option::as_mut)?;
    let frame_len = frame.len() as u64;
    let shared = nic.shared();
    let desc = shared.rx.get(ring::position(index, RX_RING_SIZE))?;
    // Read each field once: the guest may change them behind our back.
    let (addr, capacity) = (desc.addr.load(Ordering::Relaxed), desc.len.load(Ordering::Relaxed));
    let mut delivered = None;
    let validated = validate_rx(addr, capacity, nic.slot_size).ok();
    // A buffer the guest never touched is backed now, as its first touch would have.
    let mut no_memory = false;
    let buffer = validated.and_then(|buffer| {
        let slot = usize::try_from(buffer.slot).ok()?;
        if nic.rx_frames.get(slot)?.is_none() {
            let space = guests.get_mut(dst).and_then(|guest| guest.space.as_mut())?;
            no_memory = super::back_slot(nic, space, addr) == LazyFault::OutOfMemory;
        }
        Some((buffer, (*nic.rx_frames.get(slot)?)?))
    });
    let flags = if verified { desc_flags::RX_CSUM_VERIFIED } else { 0 };
    let status = match buffer {
        Some((buffer, run))
            if buffer.offset.checked_add(frame_len).is_some_and(|end| end <= nic.slot_size)
                && frame_len <= buffer.capacity =>
        {
            copy_into_run(run, nic.slot_size, buffer.offset, frame);
            // Room for the receive stamps after the frame (they are written only when on).
            if buffer.offset.saturating_add(frame_len) <= hypercall_abi::vnic::stamps::rx_stamps_offset(nic.slot_size) {
                delivered = Some((run, nic.slot_size));
            }
            desc.len.store(frame.len() as u32, Ordering::Relaxed);
            counters.rx_copies = counters.rx_copies.saturating_add(1);
            counters.rx_packets = counters.rx_packets.saturating_add(1);
            counters.rx_bytes = counters.rx_bytes.saturating_add(frame_len);
            DescStatus::Done as u32 | flags
        }
        Some(_) => {
            // A valid buffer, but smaller than this frame (the guest posted less than its MTU).
            counters.drops_rx_buffer_small = counters.drops_rx_buffer_small.saturating_add(1);
            DescStatus::RejectedBadDescriptor as u32
        }
        None if no_memory => {
            // The guest's buffer is fine; the kernel had no frame for it. Returned unused.
            counters.drops_no_memory = counters.drops_no_memory.saturating_add(1);
            DescStatus::RejectedBadDescriptor as u32
        }
        None => {
            counters.drops_bad_desc = counters.drops_bad_desc.saturating_add(1);
            DescStatus::RejectedBadDescriptor as u32
        }
    };
    desc.status.store(status, Ordering::Relaxed);
    shared.rx_consumer.0.store(nic.rx.consumer(), Ordering::Release);
    shared.virq.0.fetch_or(VirtualInterrupts::RX, Ordering::AcqRel);
    sched.wake(dst);
    delivered
}
