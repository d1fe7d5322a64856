//! Copy-on-write transmit: a zero-copy packet's slot is write-protected while the NIC or the
//! vswitch holds it; a guest write to it is a fault resolved here (restore or copy), and a
//! packet done with releases its slot. Slots of guests that ended with packets in flight wait
//! as zombies for their last packet.

use super::{free_run, page_addrs_of, run_bytes, GuestNic, NetCtx, Network, WriteFaultVerdict};
use crate::guest::space::{copy_into_run, AddressSpace};
use core::sync::atomic::Ordering;
use hypercall_abi::layout::VNIC_TX_AREA_ADDR;
use hypercall_abi::vi::VirtualInterrupts;
use hypercall_abi::vnic::{DescStatus, TX_RING_SIZE, TX_SLOTS};
use kernel_core::boot::cmdline::TxMode;
use kernel_core::guest::sched::GuestId;
use kernel_core::trap::fault::GuestFault;
use kernel_core::vnet::cow::{Release, WriteFault};
use kernel_core::vnet::{ring, GuestFrameRef};

/// The slot run of a guest that ended while packets on it were in flight.
pub(super) struct Zombie {
    /// Base of the run, and its length in pages.
    base: u64,
    pages: u64,
    /// Packets still in flight on it: it is freed after the last.
    packets: u32,
}

impl Network {
    /// Guest `id` ends: frames with packets still in flight must outlive its address space.
    pub fn orphan_in_flight(&mut self, nic: &GuestNic, space: &mut AddressSpace) {
        for (base, count) in nic.cow.frames_in_flight() {
            for page in page_addrs_of(base, nic.slot_pages) {
                space.disown(page);
            }
            self.zombies.push(Zombie { base, pages: nic.slot_pages, packets: count });
        }
    }

    /// A zero-copy packet on `frame`, of a guest that has ended, is done with: the frame is
    /// freed after its last packet (and counted, so that a leak shows as a shortfall).
    fn release_zombie(&mut self, frame: u64) {
        let Some(index) = self.zombies.iter().position(|zombie| zombie.base == frame) else { return };
        let Some(zombie) = self.zombies.get_mut(index) else { return };
        zombie.packets = zombie.packets.saturating_sub(1);
        if zombie.packets == 0 {
            let Zombie { base, pages, .. } = self.zombies.swap_remove(index);
            free_run(base, pages);
            self.counters.zombies_freed = self.counters.zombies_freed.saturating_add(1);
        }
    }
}

impl NetCtx<'_> {
    /// A zero-copy packet of guest `id` is done with (sent, delivered or dropped): complete its
    /// descriptor and release its page. The guest is woken (and "tx done" raised) only if it
    /// waits for a completion (`tx_done_wanted`) or its ring was full (it may wait for a free
    /// slot): waking it for every completion cost an echo a second wake-up, ~2,100
    /// instructions (`bench dispatch`).
    pub(super) fn complete_cow(&mut self, id: GuestId, r: GuestFrameRef, status: DescStatus) {
        let Some(nic) = self.nics.get_mut(id).and_then(Option::as_mut) else {
            // The guest has ended: its frame waits among the zombies for its last packet.
            self.net.release_zombie(r.frame);
            return;
        };
        let shared = nic.shared();
        let wake = nic.tx_ring_full() || shared.tx_done_wanted.0.load(Ordering::Acquire) != 0;
        if let Some(desc) = shared.tx.get(ring::position(r.ring_index, TX_RING_SIZE)) {
            desc.status.store(status as u32, Ordering::Relaxed);
        }
        nic.ring.complete(r.ring_index);
        match nic.cow.release(usize::from(r.slot), r.frame) {
            // No flush: a stale read-only TLB entry costs at most a spurious fault.
            Release::RestoreWrite { slot } => nic.set_slot_writable(slot, true),
            Release::FreeFrame(base) => free_run(base, nic.slot_pages),
            Release::StillInFlight | Release::Idle | Release::Unknown => {}
        }
        shared.tx_consumer.0.store(nic.ring.consumer(), Ordering::Release);
        if wake {
            shared.virq.0.fetch_or(VirtualInterrupts::TX_DONE, Ordering::AcqRel);
            self.sched.wake(id);
        }
    }

    /// Handles a write fault by guest `id` at `addr`: resolved (a COW copy or a stale TLB
    /// entry), not a copy-on-write fault at all (an ordinary page fault), or a stop.
    pub fn write_fault(&mut self, id: GuestId, addr: u64) -> WriteFaultVerdict {
        let Some(nic) = self.nics.get_mut(id).and_then(Option::as_mut) else {
            return WriteFaultVerdict::NotCopyOnWrite;
        };
        let slot = addr
            .checked_sub(VNIC_TX_AREA_ADDR)
            .and_then(|offset| offset.checked_div(nic.slot_size))
            .filter(|&slot| slot < TX_SLOTS && self.net.mode == TxMode::Cow)
            .and_then(|slot| usize::try_from(slot).ok());
        let Some(slot) = slot else { return WriteFaultVerdict::NotCopyOnWrite };
        let (slot_addr, run, pages) = (nic.slot_addr(slot as u64), nic.slot_size, nic.slot_pages);
        let page_addrs = page_addrs_of(slot_addr, pages);
        let Some(space) = self.guests.get_mut(id).and_then(|g| g.space.as_mut()) else {
            return WriteFaultVerdict::NotCopyOnWrite;
        };
        match nic.cow.write_fault(slot) {
            Some(WriteFault::Spurious) => {
                nic.set_slot_writable(slot, true);
                self.net.counters.cow_spurious = self.net.counters.cow_spurious.saturating_add(1);
                WriteFaultVerdict::Resolved
            }
            Some(WriteFault::Copy { old }) => {
                // The whole slot is copied, so it stays one contiguous run for the NIC.
                let copied = crate::mm::phys::with_frames(|frames| {
                    let new = frames.allocate_contiguous(pages, 1)?;
                    copy_into_run(new, run, 0, run_bytes(old, run, 0, run));
                    for (virt, phys) in page_addrs.clone().zip(page_addrs_of(new, pages)) {
                        if space.remap_writable(frames, virt, phys).is_err() {
                            // Cannot happen (the slot's pages were mapped when the NIC was
                            // built); the guest is stopped and the copy freed with its space.
                            page_addrs_of(new, pages).for_each(|frame| space.own(frame));
                            return None;
                        }
                    }
                    Some(new)
                });
                let Some(new) = copied else {
                    return WriteFaultVerdict::Stop(GuestFault::CowCopyNoMemory { slot });
                };
                // Every page of the slot now maps the copy. A read-only TLB entry of another
                // page of a multi-page slot would still point at the old run, which is freed
                // once the NIC is done with it: drop them all now (the faulting address space
                // is the active one).
                for virt in page_addrs {
                    x86_64::instructions::tlb::flush(x86_64::VirtAddr::new(virt));
                    self.net.counters.tlb_flushes = self.net.counters.tlb_flushes.saturating_add(1);
                }
                // The old run now belongs to the packets in flight; freed after the last.
                for (old_page, new_page) in page_addrs_of(old, pages).zip(page_addrs_of(new, pages)) {
                    space.disown(old_page);
                    space.own(new_page);
                }
                nic.cow.replace(slot, new);
                self.net.counters.cow_faults = self.net.counters.cow_faults.saturating_add(1);
                WriteFaultVerdict::Resolved
            }
            None => WriteFaultVerdict::NotCopyOnWrite,
        }
    }
}
