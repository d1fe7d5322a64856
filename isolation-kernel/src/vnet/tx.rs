//! Transmit: the doorbell (validate each descriptor, copy 1 into a pool buffer or write-protect
//! the slot, source-MAC check, queue in the guest's FIFO), the network scheduler's hand-off to
//! the vswitch and the physical NIC, and the NIC's transmit completions.

use super::rx::{deliver, RxCheck};
use super::stamps::PendingNotify;
use super::{count_drop, page_addrs_of, run_bytes, run_bytes_mut, GuestNic, NetCtx, Network, PoolMemory};
use crate::drivers::virtio_net::{TransmitError, TxCookie};
use crate::guest::space::copy_into_run;
use core::sync::atomic::Ordering;
use hypercall_abi::vi::VirtualInterrupts;
use hypercall_abi::vnic::{desc_flags, Desc, DescStatus, VnicShared, TX_RING_SIZE};
use kernel_core::boot::cmdline::TxMode;
use kernel_core::guest::sched::GuestId;
use kernel_core::vnet::cow::{Protect, Release};
use kernel_core::vnet::csum::{self, TxChecksum, Unplaceable};
use kernel_core::vnet::split::{split_point, Split, COPY_WHOLE_MAX, HEADER_PREFIX};
use kernel_core::vnet::vswitch::is_group;
use kernel_core::vnet::{
    ring, validate_tx, GuestFrameRef, Packet, PacketData, Route, Source, SplitFrame, Wait, NO_STAMP,
};

impl NetCtx<'_> {
    /// The doorbell of guest `id`: takes what its tx ring holds, then runs the network
    /// scheduler. Returns the number of descriptors taken.
    pub fn tx_kick(&mut self, id: GuestId) -> u64 {
        let taken = self.pull_tx(id);
        self.serve();
        taken
    }

    /// Validates the guest's pending tx descriptors and queues their frames in its FIFO: copied
    /// into a pool buffer (copy path, copy 1), left in the write-protected slot (COW path), or
    /// headers copied and payload left in the slot (split path).
    fn pull_tx(&mut self, id: GuestId) -> u64 {
        let Some(nic) = self.nics.get_mut(id).and_then(Option::as_mut) else { return 0 };
        let name = self.guests.get(id).map_or("?", |g| g.name.as_str()); // for the one log line per misbehaving guest
        let net = &mut *self.net;
        let shared = nic.shared();
        // The producer is read once and checked against the kernel's own ring state: behind what
        // the kernel has taken (moved backwards) or more than a ring past the consumer, it is
        // refused whole and nothing is taken.
        let producer = shared.tx_producer.0.load(Ordering::Acquire);
        let count = match nic.ring.offered(producer) {
            Ok(count) => count,
            Err(bad) => {
                net.counters.bad_ring_indices = net.counters.bad_ring_indices.saturating_add(1);
                nic.log_once(id, name, format_args!("tx ring: {bad}; ignored"));
                return 0;
            }
        };
        let mut taken: u64 = 0;
        let mut waits_for = None;
        for _ in 0..count {
            match take_tx(net, nic, id, name, shared) {
                Taken::Yes => taken = taken.saturating_add(1),
                Taken::Backlogged(what) => {
                    waits_for = Some(what);
                    break;
                }
            }
        }
        shared.tx_consumer.0.store(nic.ring.consumer(), Ordering::Release);
        shared.needs_kick.0.store(u32::from(waits_for.is_none()), Ordering::Release);
        if taken > 0 {
            shared.virq.0.fetch_or(VirtualInterrupts::TX_DONE, Ordering::AcqRel);
            // Room in its ring: a guest waiting for a free slot may go on.
            self.sched.wake(id);
        }
        match waits_for {
            Some(what) => net.backlog.wait(id, what),
            None => net.backlog.forget(id),
        }
        // Frames cut through to the NIC: one notify for the kick's batch.
        if let Some(uplink) = net.nic.as_mut() {
            uplink.flush();
        }
        net.finish_tx_records();
        taken
    }

    /// Runs the network scheduler: FIFOs to the vswitch, and from there to other guests or the
    /// physical NIC; then takes more from backlogged guests for whom room was made (only those:
    /// see `kernel_core::vnet::backlog`).
    pub fn serve(&mut self) {
        // Completions gathered while the scheduler holds the network borrowed; the vector is the
        // network's own, reused, so the packet path does not allocate.
        self.take_from_rate_limited();
        // Nothing queued and nobody waiting to be taken: nothing to do (the NIC's interrupt
        // runs this after every receive; an echo's reply was sent by its kick).
        if self.net.sched.ready_count() == 0 && !self.net.backlog.may_pull() && self.net.finished.is_empty() {
            return;
        }
        let mut finished = core::mem::take(&mut self.net.finished);
        for _ in 0..2 {
            {
                let NetCtx { net, nics, sched, guests } = self;
                let Network {
                    nic,
                    vswitch,
                    sched: net_sched,
                    fifos,
                    pool,
                    pool_frames,
                    pool_buffer_bytes,
                    counters,
                    stamps,
                    pending_notify,
                    backlog,
                    csum_offload,
                    ..
                } = &mut **net;
                let (stamps, csum_offload) = (*stamps, *csum_offload);
                net_sched.serve(fifos, |src, packet| {
                    // Room in its FIFO: a guest waiting for it is taken again below (if the NIC
                    // refuses this packet after all, that take finds the FIFO full and it waits on).
                    backlog.sent_from(src);
                    let len = u64::from(packet.len);
                    // `frame` is what the vswitch routes on: the whole frame, or for a split one
                    // the kernel's copy of its headers (all the vswitch reads).
                    let (mut frame, guest_frame, split) = match packet.data {
                        PacketData::Pool(buf) => {
                            let Some(&base) = pool_frames.get(buf.0 as usize) else {
                                return Ok(()); // not a pool buffer: cannot happen
                            };
                            (run_bytes_mut(base, *pool_buffer_bytes, 0, len), None, None)
                        }
                        PacketData::GuestFrame(r) => {
                            let Some(Some(owner)) = nics.get(src) else {
                                finished.push((TxCookie { guest: src, frame: r }, DescStatus::Done)); // its guest has ended
                                return Ok(());
                            };
                            // The slot is write-protected while in flight: only the kernel writes it.
                            (run_bytes_mut(r.frame, owner.slot_size, u64::from(r.offset), len), Some(r), None)
                        }
                        PacketData::Split(s) => {
                            let owner = nics.get(src).and_then(Option::as_ref);
                            let (Some(owner), Some(&base)) = (owner, pool_frames.get(s.header.0 as usize)) else {
                                let _ = pool.release(s.header);
                                finished.push((TxCookie { guest: src, frame: s.guest }, DescStatus::Done)); // its guest has ended
                                return Ok(());
                            };
                            let headers = run_bytes_mut(base, *pool_buffer_bytes, 0, u64::from(s.header_len));
                            (headers, None, Some((s, base, owner.slot_size)))
                        }
                    };
                    let route = vswitch.route(frame, Source::Guest(src));
                    // A split frame's payload, still in its guest's slot: read only by the NIC, or
                    // copied behind the headers for another guest (delivery copies it once more).
                    let mut payload: &[u8] = &[];
                    if let Some((s, base, slot_size)) = split {
                        let header = u64::from(s.header_len);
                        let at = u64::from(s.guest.offset).saturating_add(header);
                        let rest = run_bytes(s.guest.frame, slot_size, at, len.saturating_sub(header));
                        if let Route::Guest(_) = route {
                            copy_into_run(base, *pool_buffer_bytes, header, rest);
                            counters.tx_copies = counters.tx_copies.saturating_add(1);
                            counters.tx_bytes_copied = counters.tx_bytes_copied.saturating_add(rest.len() as u64);
                            frame = run_bytes_mut(base, *pool_buffer_bytes, 0, len);
                        } else {
                            payload = rest;
                        }
                    }
                    // A checksum the guest left to us: the NIC finishes it if it is going there
                    // and can, else we do now, and another guest gets it vouched for.
                    let nic_finishes = route == Route::Uplink && nic.as_ref().is_some_and(|n| n.tx_csum);
                    let mut check = if csum_offload { RxCheck::Verify } else { RxCheck::Off };
                    let nic_csum = match packet.csum {
                        // Filled at the doorbell (no NIC could finish it): vouched for.
                        Some(TxChecksum::Filled) => {
                            check = RxCheck::Vouched;
                            None
                        }
                        Some(TxChecksum::Owed(request)) if nic_finishes => {
                            counters.csum_to_nic = counters.csum_to_nic.saturating_add(1);
                            Some(request)
                        }
                        Some(TxChecksum::Owed(request)) => {
                            // Cannot fail (placed at the doorbell in this very frame); if it
                            // did, the frame would go unvouched, and be verified on delivery.
                            if csum::finish_tx_in_pieces(frame, payload, request).is_ok() {
                                counters.csum_filled = counters.csum_filled.saturating_add(1);
                                check = RxCheck::Vouched;
                            }
                            None
                        }
                        None => None,
                    };
                    let frame = &*frame;
                    match route {
                        Route::Guest(dst) => {
                            let mut pool = PoolMemory { pool, frames: pool_frames, buffer_bytes: *pool_buffer_bytes };
                            deliver(nics, guests, sched, counters, &mut pool, dst, frame, check);
                        }
                        Route::Uplink => match (nic.as_mut(), guest_frame, split) {
                            (Some(nic), None, Some((s, _, _))) => {
                                // The NIC reads the headers from the kernel's copy (copied again
                                // into its buffer, freeing the pool buffer now) and the payload
                                // from the guest's slot, one contiguous run (`back_slot`).
                                let header = u64::from(s.header_len);
                                let at = s.guest.frame.wrapping_add(u64::from(s.guest.offset)).wrapping_add(header);
                                let handed = stamps.now();
                                let queued = nic.transmit_split(
                                    frame,
                                    at,
                                    packet.len.saturating_sub(u32::from(s.header_len)),
                                    TxCookie { guest: src, frame: s.guest },
                                    nic_csum,
                                    |cookie| finished.push((cookie, DescStatus::Done)),
                                );
                                match queued {
                                    Ok(()) => {}
                                    Err(TransmitError::QueueFull) => return Err(packet),
                                    Err(TransmitError::TooLong) => {
                                        // Headers of at most HEADER_PREFIX bytes: cannot happen.
                                        counters.drops_oversize = counters.drops_oversize.saturating_add(1);
                                        let _ = pool.release(s.header);
                                        finished.push((TxCookie { guest: src, frame: s.guest }, DescStatus::Done));
                                        return Ok(());
                                    }
                                }
                                let _ = pool.release(s.header);
                                counters.split_header_bytes = counters.split_header_bytes.saturating_add(header);
                                PendingNotify::record(pending_notify, &packet, handed, stamps.now());
                                return Ok(()); // completes when the NIC is done with the payload
                            }
                            (Some(nic), None, None) => {
                                let handed = stamps.now();
                                match nic.transmit(frame, nic_csum, |cookie| finished.push((cookie, DescStatus::Done)))
                                {
                                    Ok(()) => {}
                                    // Every NIC slot is in flight: retry later.
                                    Err(TransmitError::QueueFull) => return Err(packet),
                                    Err(TransmitError::TooLong) => {
                                        counters.drops_oversize = counters.drops_oversize.saturating_add(1);
                                        if let PacketData::Pool(buf) = packet.data {
                                            let _ = pool.release(buf);
                                        }
                                        return Ok(());
                                    }
                                }
                                PendingNotify::record(pending_notify, &packet, handed, stamps.now());
                                counters.tx_copies = counters.tx_copies.saturating_add(1); // copy 2, into the NIC's DMA buffer
                                counters.tx_bytes_copied = counters.tx_bytes_copied.saturating_add(len);
                            }
                            (Some(nic), Some(r), _) => {
                                let data = r.frame.wrapping_add(u64::from(r.offset)); // inside the slot's run
                                let handed = stamps.now();
                                let queued = nic.transmit_zero_copy(
                                    data,
                                    packet.len,
                                    TxCookie { guest: src, frame: r },
                                    nic_csum,
                                    |cookie| finished.push((cookie, DescStatus::Done)),
                                );
                                if queued.is_err() {
                                    return Err(packet);
                                }
                                PendingNotify::record(pending_notify, &packet, handed, stamps.now());
                                return Ok(()); // completes when the NIC is done with the page
                            }
                            (None, _, _) => counters.drops_unknown_mac = counters.drops_unknown_mac.saturating_add(1),
                        },
                        Route::Drop(reason) => count_drop(counters, reason),
                    }
                    match (packet.data, guest_frame) {
                        (PacketData::Pool(buf), _) => {
                            let _ = pool.release(buf);
                        }
                        (PacketData::Split(s), _) => {
                            let _ = pool.release(s.header);
                            finished.push((TxCookie { guest: src, frame: s.guest }, DescStatus::Done));
                        }
                        (_, Some(r)) => finished.push((TxCookie { guest: src, frame: r }, DescStatus::Done)),
                        _ => {}
                    }
                    Ok(())
                });
                if let Some(nic) = nic.as_mut() {
                    nic.flush();
                }
            }
            self.net.finish_tx_records();
            for (TxCookie { guest, frame: r }, status) in finished.drain(..) {
                self.complete_cow(guest, r, status);
            }
            // Guests that can go on: those whose FIFO sent since they began to wait, then, while
            // packet buffers are free, those waiting for one; each at most once per round.
            let mut pulled = false;
            for _ in 0..self.net.backlog.len() {
                let buffers_free = self.net.pool.available() > 0;
                let Some(id) = self.net.backlog.next_to_pull(buffers_free) else { break };
                self.pull_tx(id);
                pulled = true;
            }
            if !pulled {
                break;
            }
        }
        self.net.finished = finished;
    }

    /// Takes frames again from guests whose rate limit held them back and whose tokens are
    /// there now (only those: a deadline heap, nothing per guest that waits).
    fn take_from_rate_limited(&mut self) {
        let Some(first) = self.net.backlog.next_deadline() else { return };
        let now = crate::arch::cpu::rdtsc();
        if first > now {
            return;
        }
        while let Some(id) = self.net.backlog.next_due(now) {
            self.pull_tx(id);
        }
    }

    /// Takes back what the NIC has sent, completing zero-copy packets.
    pub(super) fn reclaim_nic(&mut self) {
        let mut finished = core::mem::take(&mut self.net.finished);
        if let Some(nic) = self.net.nic.as_mut() {
            nic.reclaim_tx(|cookie| finished.push((cookie, DescStatus::Done)));
        }
        if finished.is_empty() {
            self.net.finished = finished;
            return;
        }
        // With stamping on, the completion work per packet is timed for the transmit figures.
        let stamps = self.net.stamps;
        let start = stamps.now();
        let count = finished.len() as u64;
        for (TxCookie { guest, frame: r }, status) in finished.drain(..) {
            self.complete_cow(guest, r, status);
        }
        self.net.finished = finished;
        let samples = &mut self.net.completion_samples;
        if stamps.on() && samples.len() < samples.capacity() {
            let ticks = stamps.now().saturating_sub(start);
            samples.push(ticks.checked_div(count).unwrap_or(0) as u32);
        }
    }
}

/// A pool buffer (and the physical address of its run) for the kernel's copy of the next frame,
/// and that frame's ring index, taken; `None` (nothing taken) if either is missing.
fn take_into_pool_buffer(net: &mut Network, nic: &mut GuestNic) -> Option<(kernel_core::vnet::BufId, u64, u32)> {
    let buf = net.pool.alloc()?;
    // The ring index last: once taken, the frame is the kernel's to finish.
    let taken = net.pool_frames.get(buf.0 as usize).copied().and_then(|run| Some((run, nic.ring.take()?)));
    match taken {
        Some((kernel_copy, index)) => Some((buf, kernel_copy, index)),
        None => {
            let _ = net.pool.release(buf);
            None
        }
    }
}

/// The split path's cut-through for a short frame bound for the NIC while nothing is queued:
/// copied once, into a NIC buffer, checked there (source MAC, checksum) and queued. What is
/// checked is what is sent, as on the copy path. `None` (nothing taken, the ring untouched):
/// not for the NIC (a guest, a group address), the NIC has no free slot, or the guest changed
/// the destination while it was copied; the frame then takes the ordinary path.
#[allow(clippy::too_many_arguments)] // the doorbell's state for one descriptor, inlined
#[inline(always)]
fn cut_through(
    net: &mut Network,
    nic: &mut GuestNic,
    id: GuestId,
    name: &str,
    desc: &Desc,
    page: u64,
    offset: u64,
    len: u64,
    csum_needed: bool,
) -> Option<Taken> {
    let bytes = run_bytes(page, nic.slot_size, offset, len);
    // The guest's bytes only say whether to try; the route is its copy's.
    let destination = *bytes.first_chunk::<6>()?;
    if is_group(&destination) || net.vswitch.guest_by_mac(&destination).is_some() {
        return None;
    }
    let Network { nic: uplink, finished, .. } = net;
    let uplink = uplink.as_mut()?;
    let copied = uplink.copy_unqueued(bytes, |cookie| finished.push((cookie, DescStatus::Done))).ok()?;
    let copy = run_bytes_mut(copied.phys, uplink.buffer_bytes(), 0, len);
    let index = match nic.ring.take() {
        Some(index) if copy.first_chunk::<6>() == Some(&destination) => index,
        _ => {
            uplink.release_copied(copied);
            return None;
        }
    };
    net.counters.tx_copies = net.counters.tx_copies.saturating_add(1);
    net.counters.tx_bytes_copied = net.counters.tx_bytes_copied.saturating_add(len);
    let checked = match net.vswitch.source_is(id, copy) {
        true => tx_checksum(net, csum_needed, copy, &[]),
        false => Err(Refused::Spoofed),
    };
    // Before the NIC is borrowed again (a no-op unless stamping).
    let stamp = if checked.is_ok() { net.start_tx_record(page, nic.slot_size) } else { NO_STAMP };
    let status = match (checked, net.nic.as_mut()) {
        (Ok(csum), Some(uplink)) => {
            let nic_csum = match csum {
                Some(TxChecksum::Owed(request)) => {
                    net.counters.csum_to_nic = net.counters.csum_to_nic.saturating_add(1);
                    Some(request)
                }
                Some(TxChecksum::Filled) | None => None,
            };
            let handed = net.stamps.now();
            uplink.queue_copied(copied, nic_csum);
            PendingNotify::record_stamp(&mut net.pending_notify, stamp, len as u32, handed, net.stamps.now());
            nic.tx.sent(len);
            let c = &mut net.counters;
            c.tx_cut_through = c.tx_cut_through.saturating_add(1);
            c.tx_packets = c.tx_packets.saturating_add(1);
            c.tx_bytes = c.tx_bytes.saturating_add(len);
            DescStatus::Done
        }
        (Err(why), Some(uplink)) => {
            uplink.release_copied(copied);
            refuse(net, nic, id, name, why)
        }
        (_, None) => DescStatus::Done, // the NIC was there a moment ago: cannot happen
    };
    desc.status.store(status as u32, Ordering::Relaxed);
    nic.ring.complete(index);
    Some(Taken::Yes)
}

/// Whether [`take_tx`] took the next descriptor.
enum Taken {
    /// Taken: queued, or rejected with a status the guest sees.
    Yes,
    /// Not taken: the guest's FIFO or the kernel's buffers are full; it stays in the ring until
    /// what the guest waits for is there.
    Backlogged(Wait),
}

/// Takes the next descriptor of guest `id`'s tx ring (which [`TxRing::offered`] said is there):
/// validates it, and queues its frame or completes it with a rejection.
// Inlined into the doorbell, with the helpers it calls in other files of vnet/ (run_bytes,
// set_slot_writable, start_tx_record): out of line, the doorbell's vNIC work costs ~60
// instructions more per packet (`bench dispatch`).
#[inline(always)]
fn take_tx(net: &mut Network, nic: &mut GuestNic, id: GuestId, name: &str, shared: &VnicShared) -> Taken {
    // (Cases that cannot happen wait for a buffer: they are retried whenever buffers are free.)
    let Some(desc) = shared.tx.get(ring::position(nic.ring.taken(), TX_RING_SIZE)) else {
        return Taken::Backlogged(Wait::Buffer);
    };
    // Read each field once: the guest may change them behind our back.
    let (addr, len) = (desc.addr.load(Ordering::Relaxed), desc.len.load(Ordering::Relaxed));
    let csum_needed = desc.status.load(Ordering::Relaxed) & desc_flags::TX_CSUM_NEEDED != 0;
    let validated = validate_tx(addr, len, nic.max_frame, nic.slot_size);
    // The slot's current frame (a validated slot always has one).
    let located = validated.ok().and_then(|frame| {
        let slot = usize::try_from(frame.slot).ok()?;
        Some((frame, slot, nic.cow.frame(slot)?))
    });
    let Some((frame, slot, page)) = located else {
        if let Err(bad) = validated {
            nic.log_once(id, name, format_args!("rejected tx descriptor: {bad}"));
        }
        let Some(index) = nic.ring.take() else { return Taken::Backlogged(Wait::Buffer) };
        net.counters.drops_bad_desc = net.counters.drops_bad_desc.saturating_add(1);
        desc.status.store(DescStatus::RejectedBadDescriptor as u32, Ordering::Relaxed);
        nic.ring.complete(index);
        return Taken::Yes;
    };
    let Some(fifo) = net.fifos.get_mut(id) else { return Taken::Backlogged(Wait::FifoRoom) };
    let fifo_empty = fifo.is_empty();
    if !fifo.make_room(crate::mm::heap::room_for_guest_growth) {
        if !fifo.is_empty() {
            return Taken::Backlogged(Wait::FifoRoom); // room comes as it sends
        }
        // An empty FIFO that cannot grow (the kernel heap is short): nothing would ever make
        // room, and waiting would leave the guest stuck for good. The frame is dropped, counted.
        let Some(index) = nic.ring.take() else { return Taken::Backlogged(Wait::Buffer) };
        net.counters.drops_no_memory = net.counters.drops_no_memory.saturating_add(1);
        desc.status.store(DescStatus::DroppedNoMemory as u32, Ordering::Relaxed);
        nic.ring.complete(index);
        return Taken::Yes;
    }
    // Its rate limit: without tokens the frame stays in the ring until they are there.
    if let Err(held) = nic.tx.admit(frame.len, nic.ring.taken(), crate::arch::cpu::rdtsc) {
        if held.first {
            net.counters.tx_held_back = net.counters.tx_held_back.saturating_add(1);
        }
        return Taken::Backlogged(Wait::Tokens(held.until));
    }
    // `frame.len <= max_frame <= 9014` and `frame.offset < slot_size`, so both fit a u32.
    let (frame_len, frame_offset) = (frame.len as u32, frame.offset as u32);
    // The split path sends frames up to COPY_WHOLE_MAX bytes as the copy path does: for them two
    // copies cost less than its header copy, chain and deferred completion (`bench dispatch`).
    let copy_whole = match net.mode {
        TxMode::Copy => true,
        TxMode::Split => frame.len <= COPY_WHOLE_MAX,
        TxMode::Cow => false,
    };
    // Nothing queued anywhere (this guest's FIFO empty, no guest in the network scheduler's
    // rotation): a frame for the NIC goes straight there, copied once, as the scheduler would
    // send it at once anyway.
    if copy_whole && net.mode == TxMode::Split && fifo_empty && net.sched.ready_count() == 0 {
        if let Some(taken) = cut_through(net, nic, id, name, desc, page, frame.offset, frame.len, csum_needed) {
            return taken;
        }
    }
    match net.mode {
        _ if copy_whole => {
            let Some((buf, kernel_copy, index)) = take_into_pool_buffer(net, nic) else {
                return Taken::Backlogged(Wait::Buffer);
            };
            let bytes = run_bytes(page, nic.slot_size, frame.offset, frame.len);
            copy_into_run(kernel_copy, net.pool_buffer_bytes, 0, bytes); // copy 1
            net.counters.tx_copies = net.counters.tx_copies.saturating_add(1);
            net.counters.tx_bytes_copied = net.counters.tx_bytes_copied.saturating_add(frame.len);
            // The checks run on the kernel's copy: what is checked is what is sent.
            let checked = match net.vswitch.source_is(id, run_bytes(kernel_copy, net.pool_buffer_bytes, 0, frame.len)) {
                true => {
                    tx_checksum(net, csum_needed, run_bytes_mut(kernel_copy, net.pool_buffer_bytes, 0, frame.len), &[])
                }
                false => Err(Refused::Spoofed),
            };
            let status = match checked {
                Ok(csum) => {
                    let stamp = net.start_tx_record(page, nic.slot_size);
                    net.queue(id, Packet { stamp, csum, ..Packet::pooled(buf, frame_len) });
                    net.sched.mark_ready(id);
                    nic.tx.sent(frame.len);
                    net.counters.tx_packets = net.counters.tx_packets.saturating_add(1);
                    net.counters.tx_bytes = net.counters.tx_bytes.saturating_add(frame.len);
                    DescStatus::Done
                }
                Err(why) => {
                    let _ = net.pool.release(buf);
                    refuse(net, nic, id, name, why)
                }
            };
            desc.status.store(status as u32, Ordering::Relaxed);
            nic.ring.complete(index);
        }
        TxMode::Cow => {
            let Some(index) = nic.ring.take() else { return Taken::Backlogged(Wait::Buffer) };
            // Protect first, check after: the guest cannot change what was checked.
            if nic.cow.protect(slot) == Some(Protect::WriteProtect) {
                nic.set_slot_writable(slot, false);
                let base = nic.slot_addr(frame.slot);
                nic.pending_flush.extend(page_addrs_of(base, nic.slot_pages));
                net.counters.cow_protects = net.counters.cow_protects.saturating_add(1);
            }
            // Protected: the kernel's writes into the slot are the last before the NIC reads it.
            let checked = match net.vswitch.source_is(id, run_bytes(page, nic.slot_size, frame.offset, frame.len)) {
                true => tx_checksum(net, csum_needed, run_bytes_mut(page, nic.slot_size, frame.offset, frame.len), &[]),
                false => Err(Refused::Spoofed),
            };
            match checked {
                Ok(csum) => {
                    // Slot numbers are below TX_SLOTS (32).
                    let reference =
                        GuestFrameRef { frame: page, offset: frame_offset, slot: slot as u16, ring_index: index };
                    let stamp = net.start_tx_record(page, nic.slot_size);
                    net.queue(id, Packet { data: PacketData::GuestFrame(reference), len: frame_len, stamp, csum });
                    net.sched.mark_ready(id);
                    nic.tx.sent(frame.len);
                    net.counters.tx_packets = net.counters.tx_packets.saturating_add(1);
                    net.counters.tx_bytes = net.counters.tx_bytes.saturating_add(frame.len);
                }
                Err(why) => {
                    let status = refuse(net, nic, id, name, why);
                    desc.status.store(status as u32, Ordering::Relaxed);
                    nic.ring.complete(index);
                    if let Release::RestoreWrite { .. } = nic.cow.release(slot, page) {
                        nic.set_slot_writable(slot, true);
                    }
                }
            }
        }
        // The split path (under copy every frame was copied whole above).
        TxMode::Split | TxMode::Copy => {
            let Some((buf, kernel_copy, index)) = take_into_pool_buffer(net, nic) else {
                return Taken::Backlogged(Wait::Buffer);
            };
            // Only the front of the frame is copied, once: every header the kernel reads (the
            // whole of a short frame). What is checked, and where the frame splits, come from
            // this copy alone; the guest's slot is read again only for a checksum the kernel
            // fills, and by the NIC (the payload).
            let prefix = frame.len.min(HEADER_PREFIX as u64);
            copy_into_run(kernel_copy, net.pool_buffer_bytes, 0, run_bytes(page, nic.slot_size, frame.offset, prefix));
            let headers = run_bytes(kernel_copy, net.pool_buffer_bytes, 0, prefix);
            let split = split_point(headers, frame.len);
            let rest =
                run_bytes(page, nic.slot_size, frame.offset.saturating_add(prefix), frame.len.saturating_sub(prefix));
            let checked = match net.vswitch.source_is(id, headers) {
                true => {
                    tx_checksum(net, csum_needed, run_bytes_mut(kernel_copy, net.pool_buffer_bytes, 0, prefix), rest)
                }
                false => Err(Refused::Spoofed),
            };
            let csum = match checked {
                Ok(csum) => csum,
                Err(why) => {
                    let _ = net.pool.release(buf);
                    let status = refuse(net, nic, id, name, why);
                    desc.status.store(status as u32, Ordering::Relaxed);
                    nic.ring.complete(index);
                    return Taken::Yes;
                }
            };
            let stamp = net.start_tx_record(page, nic.slot_size);
            match split {
                // Held: the slot's frames outlive the guest while the NIC may read them.
                Split::At { header } if nic.cow.hold(slot) => {
                    let guest =
                        GuestFrameRef { frame: page, offset: frame_offset, slot: slot as u16, ring_index: index };
                    // A checksum placed in the copy is sent from the copy: all of it goes.
                    let header = if csum.is_some() { prefix as usize } else { header };
                    // `header <= HEADER_PREFIX` (134): fits a u16.
                    let data = SplitFrame { guest, header: buf, header_len: header as u16 };
                    net.queue(id, Packet { data: PacketData::Split(data), len: frame_len, stamp, csum });
                    net.counters.split_frames = net.counters.split_frames.saturating_add(1);
                    net.counters.split_header_bytes = net.counters.split_header_bytes.saturating_add(prefix);
                    // The descriptor completes when the NIC is done with the payload.
                }
                split => {
                    // Copied whole (a frame no longer than its header copy; or, should holding
                    // fail, the rest copied now): from here on the copy path's packet,
                    // completed at once.
                    if split != Split::Whole {
                        copy_into_run(kernel_copy, net.pool_buffer_bytes, prefix, rest);
                    }
                    net.queue(id, Packet { stamp, csum, ..Packet::pooled(buf, frame_len) });
                    net.counters.tx_copies = net.counters.tx_copies.saturating_add(1);
                    net.counters.tx_bytes_copied = net.counters.tx_bytes_copied.saturating_add(frame.len);
                    desc.status.store(DescStatus::Done as u32, Ordering::Relaxed);
                    nic.ring.complete(index);
                }
            }
            net.sched.mark_ready(id);
            nic.tx.sent(frame.len);
            net.counters.tx_packets = net.counters.tx_packets.saturating_add(1);
            net.counters.tx_bytes = net.counters.tx_bytes.saturating_add(frame.len);
        }
    }
    Taken::Yes
}

/// Why the doorbell refused a frame after its descriptor passed.
#[derive(Clone, Copy, Debug)]
enum Refused {
    /// Its source MAC is not its guest's.
    Spoofed,
    /// Its guest left it a checksum the kernel cannot place (`None`: offload is off).
    Checksum(Option<Unplaceable>),
}

/// The doorbell's part of checksum offload for a frame (the kernel's copy, or a protected
/// slot; on the split path the kernel's copy of its first bytes, `frame`, then `payload` in the
/// guest's slot, only read) whose guest set [`desc_flags::TX_CSUM_NEEDED`]: the checksum placed
/// from the frame's headers and seeded (owed to the NIC or to the route), or filled now.
/// Refused, and counted (`drops_csum_request`), when offload is off or the frame has no
/// checksum to place.
#[inline(always)]
fn tx_checksum(
    net: &mut Network,
    needed: bool,
    frame: &mut [u8],
    payload: &[u8],
) -> Result<Option<TxChecksum>, Refused> {
    if !needed {
        return Ok(None);
    }
    // Seeded only if a NIC may finish it; else filled now, in one pass, wherever it goes.
    let nic_may_finish = net.nic.as_ref().is_some_and(|nic| nic.tx_csum);
    let prepared = if net.csum_offload {
        csum::prepare_tx_in_pieces(frame, payload, nic_may_finish).map_err(Some)
    } else {
        Err(None)
    };
    match prepared {
        Ok(owed @ TxChecksum::Owed(_)) => Ok(Some(owed)),
        Ok(TxChecksum::Filled) => {
            net.counters.csum_filled = net.counters.csum_filled.saturating_add(1);
            Ok(Some(TxChecksum::Filled))
        }
        Err(why) => {
            net.counters.drops_csum_request = net.counters.drops_csum_request.saturating_add(1);
            Err(Refused::Checksum(why))
        }
    }
}

/// The status of a refused frame; spoofing is counted here (checksum refusals were counted
/// where found), and the first refusal of a guest's checksum request logged.
#[cold]
fn refuse(net: &mut Network, nic: &mut GuestNic, id: GuestId, name: &str, why: Refused) -> DescStatus {
    match why {
        Refused::Spoofed => {
            net.counters.drops_spoof = net.counters.drops_spoof.saturating_add(1);
            DescStatus::RejectedSpoofedSource
        }
        Refused::Checksum(why) => {
            match why {
                Some(why) => nic.log_once(id, name, format_args!("tx checksum request refused: {why}")),
                None => nic.log_once(id, name, format_args!("tx checksum request refused: checksum offload is off")),
            }
            DescStatus::RejectedChecksumRequest
        }
    }
}
