//! Bookkeeping of the copy-on-write transmit path: which tx slots are write-protected, how many
//! packets are in flight on each physical frame, and in what order the tx ring completes.
//!
//! The kernel binary applies the decisions (page-table changes, TLB flushes, page copies); this
//! module only counts, so every case can be tested on the host. Costs are O(1) per packet,
//! except that a frame orphaned by a COW fault is found by a scan of the (tiny) orphan list.

use alloc::vec::Vec;
use hypercall_abi::vnic::TX_RING_SIZE;

/// The tx ring from the kernel's side: descriptors are *taken* (validated and queued) in ring
/// order but may *complete* out of order (a frame to another guest completes at once, one to the
/// NIC when the NIC is done). The consumer index the guest sees only passes completed
/// descriptors, so the guest never reuses a slot whose packet is still in flight.
#[derive(Clone, Debug)]
pub struct TxRing {
    taken: u32,
    consumer: u32,
    done: [bool; TX_RING_SIZE as usize],
}

impl Default for TxRing {
    fn default() -> Self {
        Self::new()
    }
}

impl TxRing {
    pub const fn new() -> Self {
        TxRing { taken: 0, consumer: 0, done: [false; TX_RING_SIZE as usize] }
    }

    /// Next ring index to take.
    pub fn taken(&self) -> u32 {
        self.taken
    }

    /// Every index below this one has completed (what the guest sees as `tx_consumer`).
    pub fn consumer(&self) -> u32 {
        self.consumer
    }

    /// Taken, not yet completed.
    pub fn in_flight(&self) -> u32 {
        self.taken.wrapping_sub(self.consumer)
    }

    /// Takes the next index; `None` if a whole ring is already in flight.
    pub fn take(&mut self) -> Option<u32> {
        if self.in_flight() >= TX_RING_SIZE {
            return None;
        }
        let index = self.taken;
        self.done[(index % TX_RING_SIZE) as usize] = false;
        self.taken = self.taken.wrapping_add(1);
        Some(index)
    }

    /// Marks `index` complete and advances the consumer over every completed index. Returns
    /// false (and changes nothing) for an index not in flight or already completed.
    pub fn complete(&mut self, index: u32) -> bool {
        let offset = index.wrapping_sub(self.consumer);
        let slot = (index % TX_RING_SIZE) as usize;
        if offset >= self.in_flight() || self.done[slot] {
            return false;
        }
        self.done[slot] = true;
        while self.consumer != self.taken && self.done[(self.consumer % TX_RING_SIZE) as usize] {
            self.done[(self.consumer % TX_RING_SIZE) as usize] = false;
            self.consumer = self.consumer.wrapping_add(1);
        }
        true
    }
}

/// One tx slot: the frame the guest's page maps now, packets in flight on it, and whether the
/// guest's mapping of it is read-only.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Slot {
    frame: u64,
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
    /// Slots backed by `frames`, all writable, nothing in flight.
    pub fn new(frames: &[u64]) -> Self {
        CowSlots {
            slots: frames.iter().map(|&frame| Slot { frame, in_flight: 0, read_only: false }).collect(),
            orphans: Vec::new(),
        }
    }

    /// The frame slot `slot` maps now.
    pub fn frame(&self, slot: usize) -> Option<u64> {
        self.slots.get(slot).map(|s| s.frame)
    }

    pub fn is_read_only(&self, slot: usize) -> bool {
        self.slots.get(slot).is_some_and(|s| s.read_only)
    }

    /// A packet in `slot` is about to be handed on without a copy: count it and protect the page.
    pub fn protect(&mut self, slot: usize) -> Option<Protect> {
        let s = self.slots.get_mut(slot)?;
        s.in_flight += 1;
        Some(if s.read_only {
            Protect::AlreadyProtected
        } else {
            s.read_only = true;
            Protect::WriteProtect
        })
    }

    /// A packet on `frame` (taken from `slot`) is done with.
    pub fn release(&mut self, slot: usize, frame: u64) -> Release {
        if let Some(s) = self.slots.get_mut(slot).filter(|s| s.frame == frame && s.in_flight > 0) {
            s.in_flight -= 1;
            if s.in_flight > 0 {
                return Release::StillInFlight;
            }
            s.read_only = false;
            return Release::RestoreWrite { slot };
        }
        match self.orphans.iter().position(|&(f, _)| f == frame) {
            Some(index) => {
                self.orphans[index].1 -= 1;
                if self.orphans[index].1 == 0 {
                    self.orphans.swap_remove(index);
                    Release::FreeFrame(frame)
                } else {
                    Release::StillInFlight
                }
            }
            None => Release::Unknown,
        }
    }

    /// The guest wrote to `slot`'s page and faulted.
    pub fn write_fault(&mut self, slot: usize) -> Option<WriteFault> {
        let s = self.slots.get_mut(slot)?;
        if s.in_flight == 0 {
            s.read_only = false;
            return Some(WriteFault::Spurious);
        }
        self.orphans.push((s.frame, s.in_flight));
        Some(WriteFault::Copy { old: s.frame })
    }

    /// After a [`WriteFault::Copy`]: the slot now maps `new_frame`, writable, nothing in flight.
    pub fn replace(&mut self, slot: usize, new_frame: u64) {
        if let Some(s) = self.slots.get_mut(slot) {
            *s = Slot { frame: new_frame, in_flight: 0, read_only: false };
        }
    }

    /// Every frame with packets in flight (the guest's current ones and orphans), with counts:
    /// what must outlive the guest if it ends now.
    pub fn frames_in_flight(&self) -> Vec<(u64, u32)> {
        let mut frames: Vec<(u64, u32)> =
            self.slots.iter().filter(|s| s.in_flight > 0).map(|s| (s.frame, s.in_flight)).collect();
        frames.extend_from_slice(&self.orphans);
        frames
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn slots() -> CowSlots {
        CowSlots::new(&[0x1000, 0x2000, 0x3000])
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
    fn fault_with_nothing_in_flight_is_spurious() {
        let mut c = slots();
        c.protect(0);
        c.release(0, 0x1000);
        assert_eq!(c.write_fault(0), Some(WriteFault::Spurious));
        assert_eq!(c.write_fault(7), None, "not a tx slot");
    }

    #[test]
    fn completion_out_of_order_advances_the_consumer_in_order() {
        let mut r = TxRing::new();
        let (a, b, c) = (r.take().unwrap(), r.take().unwrap(), r.take().unwrap());
        assert_eq!(r.in_flight(), 3);
        assert!(r.complete(b));
        assert_eq!(r.consumer(), 0, "a is still in flight");
        assert!(!r.complete(b), "twice");
        assert!(r.complete(a));
        assert_eq!(r.consumer(), 2);
        assert!(r.complete(c));
        assert_eq!(r.consumer(), 3);
        assert!(!r.complete(7), "never taken");
    }

    #[test]
    fn ring_is_bounded_and_wraps() {
        let mut r = TxRing { taken: u32::MAX - 3, consumer: u32::MAX - 3, done: [false; TX_RING_SIZE as usize] };
        let taken: Vec<u32> = (0..TX_RING_SIZE).map(|_| r.take().unwrap()).collect();
        assert_eq!(r.take(), None, "a whole ring in flight");
        for index in taken.iter().rev() {
            assert!(r.complete(*index));
        }
        assert_eq!(r.consumer(), r.taken());
        assert_eq!(r.in_flight(), 0);
    }
}
