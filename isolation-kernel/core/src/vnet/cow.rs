//! Bookkeeping of the copy-on-write transmit path: which tx slots are write-protected, how many
//! packets are in flight on each physical frame (the tx ring's order is [`super::ring`]'s).
//!
//! The kernel binary applies the decisions (page-table changes, TLB flushes, page copies); this
//! module only counts, so every case can be tested on the host. Costs are O(1) per packet,
//! except that a frame orphaned by a COW fault is found by a scan of the (tiny) orphan list.

use alloc::vec::Vec;

/// One tx slot: the frame the guest's page maps now (`None` until the slot is first touched:
/// the kernel backs slots lazily), packets in flight on it, and whether the guest's mapping of
/// it is read-only.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Slot {
    frame: Option<u64>,
    in_flight: u32,
    read_only: bool,
}

/// What the kernel must do to protect a slot for a new packet.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Protect {
    /// Clear the writable bit of the guest's mapping (and flush it before the guest runs).
    WriteProtect,
    /// Already read-only (another packet in flight on the same page): nothing to do.
    AlreadyProtected,
}

/// What the kernel must do when a packet's frame is done with.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Release {
    /// Still in flight for another packet: nothing.
    StillInFlight,
    /// Nothing in flight on the guest's current frame any more: make its mapping writable again.
    /// No flush is needed: a stale read-only TLB entry only causes a spurious fault.
    RestoreWrite { slot: usize },
    /// Nothing in flight on the guest's current frame any more, which was never protected (the
    /// split path [`CowSlots::hold`]s slots): nothing to do.
    Idle,
    /// The last packet on a frame the guest no longer maps (it took a COW copy): free it.
    FreeFrame(u64),
    /// The frame is not known here (a kernel bug or a stale completion): nothing.
    Unknown,
}

/// What the kernel must do about a guest's write fault on a tx slot.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WriteFault {
    /// Packets are in flight on the page: give the guest a private copy of `old` (mapped
    /// writable), and leave `old` to the NIC; call [`CowSlots::replace`] with the new frame.
    Copy { old: u64 },
    /// Nothing is in flight: the mapping was (or is now to be) writable and the fault came from
    /// a stale TLB entry; make it writable if needed and resume, no copy.
    Spurious,
}

/// COW state of a guest's tx slots, plus frames orphaned by COW copies.
#[derive(Clone, Debug)]
pub struct CowSlots {
    slots: Vec<Slot>,
    /// Frames the guest no longer maps, with their packets still in flight.
    orphans: Vec<(u64, u32)>,
}

impl CowSlots {
    /// Kernel heap bytes these records hold.
    pub fn heap_bytes(&self) -> usize {
        let slots = self.slots.capacity().saturating_mul(core::mem::size_of::<Slot>());
        slots.saturating_add(self.orphans.capacity().saturating_mul(core::mem::size_of::<(u64, u32)>()))
    }

    /// Slots backed by `frames`, all writable, nothing in flight.
    pub fn new(frames: &[u64]) -> Self {
        CowSlots {
            slots: frames.iter().map(|&frame| Slot { frame: Some(frame), in_flight: 0, read_only: false }).collect(),
            orphans: Vec::new(),
        }
    }

    /// `count` slots, none backed yet ([`CowSlots::back`] when first touched).
    pub fn unbacked(count: usize) -> Self {
        CowSlots {
            slots: alloc::vec![Slot { frame: None, in_flight: 0, read_only: false }; count],
            orphans: Vec::new(),
        }
    }

    /// Slot `slot` is now backed by `frame` (writable, nothing in flight). False, and nothing
    /// changes, if there is no such slot or it is backed already.
    pub fn back(&mut self, slot: usize, frame: u64) -> bool {
        match self.slots.get_mut(slot) {
            Some(s) if s.frame.is_none() => {
                s.frame = Some(frame);
                true
            }
            _ => false,
        }
    }

    /// The frame slot `slot` maps now (`None` if there is no such slot or it is not backed).
    pub fn frame(&self, slot: usize) -> Option<u64> {
        self.slots.get(slot).and_then(|s| s.frame)
    }

    pub fn is_read_only(&self, slot: usize) -> bool {
        self.slots.get(slot).is_some_and(|s| s.read_only)
    }

    /// A packet in `slot` is about to be handed on without a copy: count it and protect the page.
    /// `None` for a slot that does not exist (or, impossibly, a count that would overflow).
    pub fn protect(&mut self, slot: usize) -> Option<Protect> {
        let s = self.slots.get_mut(slot).filter(|s| s.frame.is_some())?;
        s.in_flight = s.in_flight.checked_add(1)?;
        Some(if s.read_only {
            Protect::AlreadyProtected
        } else {
            s.read_only = true;
            Protect::WriteProtect
        })
    }

    /// A packet in `slot` is about to be handed on without a copy and without protecting the
    /// page (the split path: the NIC reads only payload there): count it, so the frame outlives
    /// its guest while in flight. False for a slot that does not exist (or, impossibly, a
    /// count that would overflow).
    pub fn hold(&mut self, slot: usize) -> bool {
        let Some(s) = self.slots.get_mut(slot).filter(|s| s.frame.is_some()) else { return false };
        match s.in_flight.checked_add(1) {
            Some(count) => {
                s.in_flight = count;
                true
            }
            None => false,
        }
    }

    /// A packet on `frame` (taken from `slot`) is done with.
    pub fn release(&mut self, slot: usize, frame: u64) -> Release {
        if let Some(s) = self.slots.get_mut(slot).filter(|s| s.frame == Some(frame) && s.in_flight > 0) {
            s.in_flight = s.in_flight.saturating_sub(1);
            if s.in_flight > 0 {
                return Release::StillInFlight;
            }
            if !core::mem::replace(&mut s.read_only, false) {
                return Release::Idle;
            }
            return Release::RestoreWrite { slot };
        }
        let Some(index) = self.orphans.iter().position(|&(f, _)| f == frame) else { return Release::Unknown };
        let Some((_, count)) = self.orphans.get_mut(index) else { return Release::Unknown };
        *count = count.saturating_sub(1);
        if *count > 0 {
            return Release::StillInFlight;
        }
        self.orphans.swap_remove(index);
        Release::FreeFrame(frame)
    }

    /// The guest wrote to `slot`'s page and faulted. Changes nothing for a copy until
    /// [`CowSlots::replace`] says the copy was made (it may fail for lack of memory).
    pub fn write_fault(&mut self, slot: usize) -> Option<WriteFault> {
        let s = self.slots.get_mut(slot)?;
        let old = s.frame?;
        if s.in_flight == 0 {
            s.read_only = false;
            return Some(WriteFault::Spurious);
        }
        Some(WriteFault::Copy { old })
    }

    /// After a [`WriteFault::Copy`]: the slot now maps `new_frame`, writable, nothing in flight;
    /// its old frame becomes an orphan, freed after its last packet.
    pub fn replace(&mut self, slot: usize, new_frame: u64) {
        if let Some(s) = self.slots.get_mut(slot) {
            if let (Some(frame), true) = (s.frame, s.in_flight > 0) {
                self.orphans.push((frame, s.in_flight));
            }
            *s = Slot { frame: Some(new_frame), in_flight: 0, read_only: false };
        }
    }

    /// Every frame with packets in flight (the guest's current ones and orphans), with counts:
    /// what must outlive the guest if it ends now. Each frame appears once.
    pub fn frames_in_flight(&self) -> Vec<(u64, u32)> {
        let mut frames: Vec<(u64, u32)> =
            self.slots.iter().filter(|s| s.in_flight > 0).filter_map(|s| Some((s.frame?, s.in_flight))).collect();
        frames.extend_from_slice(&self.orphans);
        frames
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing, clippy::arithmetic_side_effects)]
mod tests {
    use super::*;

    fn slots() -> CowSlots {
        CowSlots::new(&[0x1000, 0x2000, 0x3000])
    }

    #[test]
    fn unbacked_slots_are_backed_once_and_refused_until_then() {
        let mut c = CowSlots::unbacked(2);
        assert_eq!(c.frame(0), None);
        assert_eq!(c.protect(0), None, "a slot never touched cannot carry a packet");
        assert_eq!(c.write_fault(0), None);
        assert!(c.back(0, 0x5000));
        assert!(!c.back(0, 0x6000), "backed twice");
        assert!(!c.back(2, 0x6000), "no such slot");
        assert_eq!(c.frame(0), Some(0x5000));
        assert_eq!(c.protect(0), Some(Protect::WriteProtect));
        assert_eq!(c.frames_in_flight(), vec![(0x5000, 1)]);
        assert_eq!(c.release(0, 0x5000), Release::RestoreWrite { slot: 0 });
        assert_eq!(c.frames_in_flight(), vec![]);
    }

    #[test]
    fn protect_then_complete_restores_write() {
        let mut c = slots();
        assert_eq!(c.protect(0), Some(Protect::WriteProtect));
        assert!(c.is_read_only(0));
        assert_eq!(c.release(0, 0x1000), Release::RestoreWrite { slot: 0 });
        assert!(!c.is_read_only(0));
        assert_eq!(c.frames_in_flight(), vec![]);
    }

    #[test]
    fn two_packets_in_flight_on_one_page() {
        let mut c = slots();
        assert_eq!(c.protect(1), Some(Protect::WriteProtect));
        assert_eq!(c.protect(1), Some(Protect::AlreadyProtected));
        assert_eq!(c.frames_in_flight(), vec![(0x2000, 2)]);
        assert_eq!(c.release(1, 0x2000), Release::StillInFlight);
        assert!(c.is_read_only(1), "still protected while one packet is in flight");
        assert_eq!(c.release(1, 0x2000), Release::RestoreWrite { slot: 1 });
        assert_eq!(c.release(1, 0x2000), Release::Unknown, "a third release is a bug, not a free");
    }

    #[test]
    fn fault_during_flight_copies_and_orphans_the_old_frame() {
        let mut c = slots();
        c.protect(2);
        c.protect(2);
        assert_eq!(c.write_fault(2), Some(WriteFault::Copy { old: 0x3000 }));
        c.replace(2, 0x9000);
        assert_eq!(c.frame(2), Some(0x9000));
        assert!(!c.is_read_only(2));
        assert_eq!(c.frames_in_flight(), vec![(0x3000, 2)]);
        // The NIC finishes with the old frame: freed after its last packet, the new one untouched.
        assert_eq!(c.release(2, 0x3000), Release::StillInFlight);
        assert_eq!(c.release(2, 0x3000), Release::FreeFrame(0x3000));
        assert_eq!(c.frames_in_flight(), vec![]);
        // New packets on the new frame work as usual.
        assert_eq!(c.protect(2), Some(Protect::WriteProtect));
        assert_eq!(c.release(2, 0x9000), Release::RestoreWrite { slot: 2 });
    }

    #[test]
    fn held_slots_stay_writable_and_count_their_packets() {
        let mut c = slots();
        assert!(c.hold(0));
        assert!(c.hold(0));
        assert!(!c.is_read_only(0), "holding never protects");
        assert_eq!(c.frames_in_flight(), vec![(0x1000, 2)]);
        assert_eq!(c.release(0, 0x1000), Release::StillInFlight);
        assert_eq!(c.release(0, 0x1000), Release::Idle, "nothing to restore");
        assert_eq!(c.release(0, 0x1000), Release::Unknown);
        assert!(!c.hold(3), "no such slot");
        assert!(!CowSlots::unbacked(1).hold(0), "a slot never touched cannot carry a packet");
    }

    #[test]
    fn fault_with_nothing_in_flight_is_spurious() {
        let mut c = slots();
        c.protect(0);
        c.release(0, 0x1000);
        assert_eq!(c.write_fault(0), Some(WriteFault::Spurious));
        assert_eq!(c.write_fault(7), None, "not a tx slot");
    }

    #[test]
    fn a_copy_that_fails_leaves_the_frame_in_flight_once() {
        let mut c = slots();
        c.protect(1);
        assert_eq!(c.write_fault(1), Some(WriteFault::Copy { old: 0x2000 }));
        // No memory for the copy: the guest is stopped; its frames in flight are listed once.
        assert_eq!(c.frames_in_flight(), vec![(0x2000, 1)]);
        // A second fault and then a successful copy orphan the frame once.
        assert_eq!(c.write_fault(1), Some(WriteFault::Copy { old: 0x2000 }));
        c.replace(1, 0x8000);
        assert_eq!(c.frames_in_flight(), vec![(0x2000, 1)]);
        assert_eq!(c.release(1, 0x2000), Release::FreeFrame(0x2000));
        assert_eq!(c.release(1, 0x2000), Release::Unknown);
    }
}
