//! Receive: the physical NIC's frames through the vswitch, and delivery (copy into the rx
//! buffer the guest posted, virtual interrupt, wake) for frames from the NIC or another guest.

use super::{count_drop, GuestNic, NetCtx, Network};
use crate::guest::space::copy_into_run;
use crate::guest::space::LazyFault;
use crate::guest::Guest;
use core::sync::atomic::Ordering;
use hypercall_abi::vi::VirtualInterrupts;
use hypercall_abi::vnic::{DescStatus, RX_RING_SIZE};
use kernel_core::guest::sched::{GuestId, Scheduler};
use kernel_core::vnet::{ring, validate_rx, DropReason, NetCounters, Route, Source};

impl NetCtx<'_> {
    /// The physical NIC's receive path: every frame to the guest the vswitch names.
    pub fn receive_from_nic(&mut self) -> usize {
        let stamps = self.net.stamps;
        let (entry, handler) = (crate::arch::trap::entry_tsc(), stamps.now());
        self.reclaim_nic();
        let NetCtx { net, nics, sched, guests } = self;
        let Network { nic, vswitch, counters, .. } = &mut **net;
        let Some(nic) = nic.as_mut() else { return 0 };
        nic.receive_with(
            |frame| {
                let popped = stamps.now();
                let route = vswitch.route(frame, Source::Uplink);
                let routed = stamps.now();
                match route {
                    Route::Guest(dst) => deliver(nics, guests, sched, counters, dst, frame)
                        .map(|area| (area, popped, routed, stamps.now())),
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
                if let (true, Some(((run, size), popped, routed, copied))) = (stamps.on(), delivered) {
                    let values = [entry, handler, popped, routed, copied, stamps.now()];
                    let mut bytes = [0u8; 48];
                    for (chunk, value) in bytes.chunks_mut(8).zip(values) {
                        chunk.copy_from_slice(&value.to_le_bytes());
                    }
                    copy_into_run(run, size, hypercall_abi::vnic::stamps::rx_stamps_offset(size), &bytes);
                }
            },
        )
    }
}

/// Copies `frame` into the next rx buffer guest `dst` posted, raises its rx virtual interrupt
/// and wakes it. A frame longer than the guest's MTU allows, or with no buffer to go into, is
/// dropped and counted; a buffer the guest described badly is consumed, marked rejected and
/// counted.
/// Returns the rx buffer (run base and size) the frame went into, for the receive stamps.
pub(super) fn deliver(
    nics: &mut [Option<GuestNic>],
    guests: &mut [Guest],
    sched: &mut Scheduler,
    counters: &mut NetCounters,
    dst: GuestId,
    frame: &[u8],
) -> Option<(u64, u64)> {
    let Some(nic) = nics.get_mut(dst).and_then(Option::as_mut) else {
        counters.drops_unknown_mac = counters.drops_unknown_mac.saturating_add(1);
        return None;
    };
    let frame_len = frame.len() as u64;
    if frame_len > nic.max_frame {
        counters.drops_oversize = counters.drops_oversize.saturating_add(1);
        return None;
    }
    let shared = nic.shared();
    let index = match nic.rx.take(shared.rx_producer.0.load(Ordering::Acquire)) {
        Ok(Some(index)) => index,
        Ok(None) => {
            counters.drops_no_buffer = counters.drops_no_buffer.saturating_add(1);
            return None;
        }
        Err(_) => {
            counters.bad_ring_indices = counters.bad_ring_indices.saturating_add(1);
            counters.drops_bad_rx_ring = counters.drops_bad_rx_ring.saturating_add(1);
            return None;
        }
    };
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
            DescStatus::Done
        }
        Some(_) => {
            // A valid buffer, but smaller than this frame (the guest posted less than its MTU).
            counters.drops_rx_buffer_small = counters.drops_rx_buffer_small.saturating_add(1);
            DescStatus::RejectedBadDescriptor
        }
        None if no_memory => {
            // The guest's buffer is fine; the kernel had no frame for it. Returned unused.
            counters.drops_no_memory = counters.drops_no_memory.saturating_add(1);
            DescStatus::RejectedBadDescriptor
        }
        None => {
            counters.drops_bad_desc = counters.drops_bad_desc.saturating_add(1);
            DescStatus::RejectedBadDescriptor
        }
    };
    desc.status.store(status as u32, Ordering::Relaxed);
    shared.rx_consumer.0.store(nic.rx.consumer(), Ordering::Release);
    shared.virq.0.fetch_or(VirtualInterrupts::RX, Ordering::AcqRel);
    sched.wake(dst);
    delivered
}
