//! A guest's bounded transmit FIFO: packets the kernel has copied out of the guest's tx ring
//! and that wait for the network scheduler. The bound is what stops one guest from holding all
//! of the kernel's packet buffers; when its FIFO is full the kernel stops taking from its ring.

use super::csum::TxChecksum;
use super::pool::BufId;
use alloc::collections::VecDeque;

/// Where a queued frame's bytes are.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PacketData {
    /// Copied into a kernel buffer (the copy path): the frame starts the buffer.
    Pool(BufId),
    /// Still in the guest's write-protected tx slot (the COW path).
    GuestFrame(GuestFrameRef),
    /// Split in two (the split path): the headers copied into a kernel buffer, the payload
    /// still in the guest's (unprotected) tx slot.
    Split(SplitFrame),
}

/// A frame on the split path: its first `header_len` bytes copied into the start of pool
/// buffer `header` (what the kernel checked and sends), the rest read in place from the guest's
/// slot (`guest` locates the frame's first byte, as for the COW path).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SplitFrame {
    pub guest: GuestFrameRef,
    pub header: BufId,
    pub header_len: u16,
}

/// A frame left in a guest's page: physical frame, offset of the frame in it, the tx slot and
/// the ring position it came from (to complete it when sent).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct GuestFrameRef {
    pub frame: u64,
    pub offset: u32,
    pub slot: u16,
    pub ring_index: u32,
}

/// A frame waiting to be sent: `len` bytes at `data`, its stage-stamp record, if any, and the
/// checksum still to be finished, if any.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Packet {
    pub data: PacketData,
    pub len: u32,
    /// Index of the packet's stamp record while stamping is on, else [`NO_STAMP`].
    pub stamp: u32,
    /// What the doorbell did for a guest that left the L4 checksum to the kernel.
    pub csum: Option<TxChecksum>,
}

/// [`Packet::stamp`] when stamping is off.
pub const NO_STAMP: u32 = u32::MAX;

impl Packet {
    /// A frame copied into pool buffer `buf`.
    pub const fn pooled(buf: BufId, len: u32) -> Packet {
        Packet { data: PacketData::Pool(buf), len, stamp: NO_STAMP, csum: None }
    }

    /// The pool buffer, for a copied frame (the whole frame) or a split one (its headers).
    pub fn pool_buf(&self) -> Option<BufId> {
        match self.data {
            PacketData::Pool(buf) | PacketData::Split(SplitFrame { header: buf, .. }) => Some(buf),
            PacketData::GuestFrame(_) => None,
        }
    }
}

/// A FIFO of at most `capacity` packets. Its storage grows as packets arrive (an idle guest's
/// FIFO holds none: with thousands of guests, reserving 64 packets each would cost more kernel
/// heap than everything else a guest needs); [`TxFifo::make_room`] grows it fallibly before a
/// packet is taken, so pushing after it never allocates and never fails.
#[derive(Debug)]
pub struct TxFifo {
    queue: VecDeque<Packet>,
    capacity: usize,
}

impl TxFifo {
    pub fn new(capacity: usize) -> Self {
        Self { queue: VecDeque::new(), capacity }
    }

    /// Whether one more packet fits: under the limit, and storage for it reserved (false if
    /// the storage must grow and `may_grow` says no, or the kernel heap could not grow it: the
    /// packet then waits where it is, as for a full FIFO). `may_grow` is asked only when the
    /// storage is full.
    pub fn make_room(&mut self, may_grow: impl FnOnce() -> bool) -> bool {
        if self.is_full() {
            return false;
        }
        self.queue.len() < self.queue.capacity() || (may_grow() && self.queue.try_reserve(1).is_ok())
    }

    /// Appends a packet, or gives it back when the FIFO is full.
    pub fn push(&mut self, packet: Packet) -> Result<(), Packet> {
        if self.is_full() {
            return Err(packet);
        }
        self.queue.push_back(packet);
        Ok(())
    }

    /// Puts a packet back at the head, for one just popped that the NIC would not take, so the
    /// guest's packets keep their order. Gives it back when the FIFO is full.
    pub fn push_front(&mut self, packet: Packet) -> Result<(), Packet> {
        if self.is_full() {
            return Err(packet);
        }
        self.queue.push_front(packet);
        Ok(())
    }

    /// The oldest packet.
    pub fn pop(&mut self) -> Option<Packet> {
        self.queue.pop_front()
    }

    pub fn len(&self) -> usize {
        self.queue.len()
    }

    pub fn capacity(&self) -> usize {
        self.capacity
    }

    pub fn is_full(&self) -> bool {
        self.queue.len() >= self.capacity
    }

    pub fn is_empty(&self) -> bool {
        self.queue.is_empty()
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing, clippy::arithmetic_side_effects)]
mod tests {
    use super::*;

    fn packet(n: u32) -> Packet {
        Packet::pooled(BufId(n), 60 + n)
    }

    #[test]
    fn storage_grows_with_use_and_room_is_made_before_a_push() {
        let mut fifo = TxFifo::new(3);
        assert_eq!(fifo.queue.capacity(), 0, "an idle guest's FIFO holds no storage");
        for i in 0..3 {
            assert!(fifo.make_room(|| true));
            fifo.push(Packet::pooled(BufId(i), 60)).unwrap();
        }
        assert!(!fifo.make_room(|| true), "at the limit");
        assert!(fifo.push(Packet::pooled(BufId(9), 60)).is_err());
        // Storage full and growth refused: no room, although under the limit.
        let mut fifo = TxFifo::new(3);
        assert!(!fifo.make_room(|| false));
        assert!(fifo.make_room(|| true));
        fifo.push(Packet::pooled(BufId(0), 60)).unwrap();
        // Room already reserved: growth is not asked for.
        if fifo.queue.len() < fifo.queue.capacity() {
            assert!(fifo.make_room(|| panic!("asked to grow with room reserved")));
        }
    }

    #[test]
    fn first_in_first_out_until_full() {
        let mut fifo = TxFifo::new(3);
        assert!(fifo.is_empty() && !fifo.is_full());
        assert_eq!(fifo.capacity(), 3);
        for n in 0..3 {
            assert_eq!(fifo.push(packet(n)), Ok(()));
        }
        assert!(fifo.is_full());
        assert_eq!(fifo.len(), 3);
        assert_eq!(fifo.push(packet(9)), Err(packet(9)));
        assert_eq!(fifo.push_front(packet(9)), Err(packet(9)));
        assert_eq!(fifo.len(), 3);
        assert_eq!(fifo.pop(), Some(packet(0)));
        assert!(!fifo.is_full());
        assert_eq!(fifo.push(packet(3)), Ok(()));
        assert_eq!([fifo.pop(), fifo.pop(), fifo.pop()], [Some(packet(1)), Some(packet(2)), Some(packet(3))]);
        assert_eq!(fifo.pop(), None);
        assert!(fifo.is_empty());
    }

    #[test]
    fn push_front_restores_the_head() {
        let mut fifo = TxFifo::new(4);
        for n in 0..4 {
            fifo.push(packet(n)).unwrap();
        }
        let head = fifo.pop().unwrap();
        assert_eq!(fifo.push_front(head), Ok(()));
        let order: alloc::vec::Vec<u32> = core::iter::from_fn(|| fifo.pop()).map(|p| p.pool_buf().unwrap().0).collect();
        assert_eq!(order, [0, 1, 2, 3]);
    }

    #[test]
    fn storage_grows_once_then_is_reused() {
        let mut fifo = TxFifo::new(64);
        let mut grown = 0;
        for round in 0..10 {
            while fifo.make_room(|| true) {
                fifo.push(packet(round)).unwrap();
            }
            assert_eq!(fifo.len(), 64);
            if round == 0 {
                grown = fifo.queue.capacity();
            }
            while fifo.pop().is_some() {}
        }
        // Filling it again allocates nothing more.
        assert_eq!(fifo.queue.capacity(), grown);
    }

    #[test]
    fn zero_capacity_fifo_takes_nothing() {
        let mut fifo = TxFifo::new(0);
        assert!(fifo.is_full() && fifo.is_empty());
        assert_eq!(fifo.push(packet(1)), Err(packet(1)));
        assert_eq!(fifo.pop(), None);
    }
}
