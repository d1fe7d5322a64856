//! The ring protocol from the kernel's side: what the kernel has taken from a guest's rings and
//! completed, and how many new descriptors a guest's producer index may offer.
//!
//! The guest writes its producer indices whenever it likes, to any value. The kernel never
//! trusts them: it keeps its own `taken` and `consumer` and checks every producer value against
//! them, never against what the guest last wrote. For the tx ring the window of legal producer
//! values is `[taken, consumer + RING_SIZE]` (all wrapping): behind `taken` the guest has moved
//! the index backwards over descriptors the kernel already holds; beyond `consumer + RING_SIZE`
//! it names descriptors it cannot have filled. Everything here is O(1) per call, never panics
//! and never overflows; `tests` checks every producer value at every state exhaustively.

use core::fmt;
use hypercall_abi::vnic::{RX_RING_SIZE, TX_RING_SIZE};

/// A producer index the kernel refuses. The guest's request is ignored and counted; nothing the
/// kernel holds changes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RingIndexError {
    /// The producer moved backwards, behind descriptors the kernel has already taken.
    Behind { producer: u32, taken: u32 },
    /// The producer is more than a ring ahead of the consumer.
    Beyond { producer: u32, consumer: u32 },
}

impl RingIndexError {
    /// A short, stable name for logs.
    pub fn kind(&self) -> &'static str {
        match self {
            Self::Behind { .. } => "behind",
            Self::Beyond { .. } => "beyond",
        }
    }
}

impl fmt::Display for RingIndexError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            Self::Behind { producer, taken } => {
                write!(f, "producer index {producer} moved back behind {taken}, which the kernel has taken")
            }
            Self::Beyond { producer, consumer } => {
                write!(f, "producer index {producer} is more than a ring ahead of consumer index {consumer}")
            }
        }
    }
}

/// New entries offered by `producer` to a ring of `size` whose consumer is `consumer` and of
/// which the kernel holds `held` entries (taken, not completed; `held <= size`).
fn offered(producer: u32, consumer: u32, held: u32, size: u32) -> Result<u32, RingIndexError> {
    let ahead = producer.wrapping_sub(consumer);
    // A producer wrapped more than half the index space behind the consumer went backwards;
    // anything else out of the window is too far ahead.
    if ahead > size {
        return Err(if ahead > u32::MAX / 2 {
            RingIndexError::Behind { producer, taken: consumer.wrapping_add(held) }
        } else {
            RingIndexError::Beyond { producer, consumer }
        });
    }
    ahead.checked_sub(held).ok_or(RingIndexError::Behind { producer, taken: consumer.wrapping_add(held) })
}

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

/// The entry of free-running index `index` in a ring of `size` entries (0 for an empty ring,
/// whose every lookup then fails).
pub fn position(index: u32, size: u32) -> usize {
    index.checked_rem(size).unwrap_or(0) as usize
}

impl TxRing {
    pub const fn new() -> Self {
        Self::starting_at(0)
    }

    /// An empty ring whose next index is `index` (tests and fuzzing start near the wrap).
    pub const fn starting_at(index: u32) -> Self {
        TxRing { taken: index, consumer: index, done: [false; TX_RING_SIZE as usize] }
    }

    /// Next ring index to take.
    pub fn taken(&self) -> u32 {
        self.taken
    }

    /// Every index below this one has completed (what the guest sees as `tx_consumer`).
    pub fn consumer(&self) -> u32 {
        self.consumer
    }

    /// Taken, not yet completed (at most the ring size).
    pub fn in_flight(&self) -> u32 {
        self.taken.wrapping_sub(self.consumer)
    }

    /// How many descriptors the guest's `producer` offers beyond those already taken: the ones
    /// to take now. Refuses a producer behind `taken` or more than a ring past the consumer.
    pub fn offered(&self, producer: u32) -> Result<u32, RingIndexError> {
        offered(producer, self.consumer, self.in_flight(), TX_RING_SIZE)
    }

    /// Takes the next index; `None` if a whole ring is already in flight.
    pub fn take(&mut self) -> Option<u32> {
        if self.in_flight() >= TX_RING_SIZE {
            return None;
        }
        let index = self.taken;
        if let Some(done) = self.done.get_mut(position(index, TX_RING_SIZE)) {
            *done = false;
        }
        self.taken = self.taken.wrapping_add(1);
        Some(index)
    }

    /// Marks `index` complete and advances the consumer over every completed index. Returns
    /// false (and changes nothing) for an index not in flight or already completed.
    pub fn complete(&mut self, index: u32) -> bool {
        if index.wrapping_sub(self.consumer) >= self.in_flight() {
            return false;
        }
        match self.done.get_mut(position(index, TX_RING_SIZE)) {
            Some(done) if !*done => *done = true,
            _ => return false,
        }
        while self.consumer != self.taken {
            match self.done.get_mut(position(self.consumer, TX_RING_SIZE)) {
                Some(done) if *done => *done = false,
                _ => break,
            }
            self.consumer = self.consumer.wrapping_add(1);
        }
        true
    }
}

/// The rx ring from the kernel's side: the kernel fills posted buffers in ring order and
/// completes each at once, so its only state is the consumer.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RxRing {
    consumer: u32,
}

impl RxRing {
    pub const fn new() -> Self {
        Self::starting_at(0)
    }

    /// An empty ring whose next index is `index`.
    pub const fn starting_at(index: u32) -> Self {
        RxRing { consumer: index }
    }

    /// Buffers filled (what the guest sees as `rx_consumer`).
    pub fn consumer(&self) -> u32 {
        self.consumer
    }

    /// Buffers the guest's `producer` has posted and the kernel has not filled yet.
    pub fn offered(&self, producer: u32) -> Result<u32, RingIndexError> {
        offered(producer, self.consumer, 0, RX_RING_SIZE)
    }

    /// The index of the next posted buffer, consumed now; `Ok(None)` when none is posted.
    pub fn take(&mut self, producer: u32) -> Result<Option<u32>, RingIndexError> {
        if self.offered(producer)? == 0 {
            return Ok(None);
        }
        let index = self.consumer;
        self.consumer = self.consumer.wrapping_add(1);
        Ok(Some(index))
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing, clippy::arithmetic_side_effects)]
mod tests {
    use super::*;
    use std::collections::BTreeSet;
    use std::vec::Vec;

    const SIZE: u32 = TX_RING_SIZE;

    /// Consumer positions to start from: zero, mid-range, and just before the 2^32 wrap (so the
    /// window of every test crosses it).
    const STARTS: [u32; 5] = [0, 7, 1 << 31, u32::MAX - 3, u32::MAX];

    /// Producer values relative to the consumer: every offset from a ring behind to two rings
    /// ahead, plus the far ends of the index space.
    fn producer_offsets() -> Vec<u32> {
        let mut offsets: Vec<u32> = (0..=3 * SIZE).map(|i| i.wrapping_sub(SIZE)).collect();
        offsets.extend([u32::MAX / 2, u32::MAX / 2 + 1, u32::MAX - SIZE, 1 << 31, u32::MAX]);
        offsets
    }

    /// A tx ring with `in_flight` taken descriptors, the ones whose bit is set in `done_mask`
    /// completed (out of order), starting at `start`. Returns the ring and the indices still
    /// in flight.
    fn ring_in_state(start: u32, in_flight: u32, done_mask: u64) -> (TxRing, BTreeSet<u32>) {
        let mut ring = TxRing::starting_at(start);
        let taken: Vec<u32> = (0..in_flight).map(|_| ring.take().expect("room")).collect();
        let mut held: BTreeSet<u32> = taken.iter().copied().collect();
        for (i, index) in taken.iter().enumerate() {
            if done_mask & (1 << i) != 0 {
                assert!(ring.complete(*index));
                held.remove(index);
            }
        }
        (ring, held)
    }

    /// What `offered` must say, computed the long way: the legal window is
    /// `[taken, consumer + SIZE]`, walked one index at a time.
    fn expected_offer(ring: &TxRing, producer: u32) -> Option<u32> {
        let mut index = ring.taken();
        for count in 0..=SIZE {
            if index == producer {
                return (ring.in_flight() + count <= SIZE).then_some(count);
            }
            index = index.wrapping_add(1);
        }
        None
    }

    /// The kernel's pull loop, as `pull_tx` runs it: take what is offered. Checks that it never
    /// takes more than the ring holds nor any index twice.
    fn pull(ring: &mut TxRing, producer: u32, held: &mut BTreeSet<u32>) -> Result<u32, RingIndexError> {
        let count = ring.offered(producer)?;
        for _ in 0..count {
            let index = ring.take().expect("an offered descriptor always fits the ring");
            assert!(held.insert(index), "index {index} taken twice");
        }
        assert!(ring.in_flight() <= SIZE);
        assert_eq!(ring.taken(), producer, "after a pull the kernel has taken up to the producer");
        Ok(count)
    }

    #[test]
    fn every_producer_at_every_state_tx() {
        // In-flight counts and completion patterns: none, all, alternating, the oldest only
        // (consumer stuck behind completions), and the newest only.
        let masks = |n: u32| {
            let all = if n == 64 { u64::MAX } else { (1u64 << n) - 1 };
            [0, all, 0x5555_5555_5555_5555 & all, all & !1, if n > 0 { 1 << (n - 1) } else { 0 }]
        };
        let mut cases = 0u64;
        for start in STARTS {
            for in_flight in 0..=SIZE {
                for mask in masks(in_flight) {
                    for offset in producer_offsets() {
                        let (mut ring, mut held) = ring_in_state(start, in_flight, mask);
                        let producer = ring.consumer().wrapping_add(offset);
                        let before = (ring.taken(), ring.consumer(), ring.in_flight());
                        let expected = expected_offer(&ring, producer);
                        match (pull(&mut ring, producer, &mut held), expected) {
                            (Ok(count), Some(expected)) => assert_eq!(count, expected),
                            (Err(_), None) => {
                                // A refused producer changes nothing.
                                assert_eq!((ring.taken(), ring.consumer(), ring.in_flight()), before);
                            }
                            (got, expected) => panic!(
                                "start {start} in flight {in_flight} mask {mask:#x} producer {producer}: \
                                 got {got:?}, expected {expected:?}"
                            ),
                        }
                        cases += 1;
                    }
                }
            }
        }
        assert!(cases > 10_000);
    }

    #[test]
    fn the_reported_crash_producer_back_to_the_consumer_is_refused() {
        // Four frames at the NIC (COW: taken, not completed); the guest sets its producer back
        // to the consumer it reads and kicks again.
        let (ring, _) = ring_in_state(0, 4, 0);
        assert_eq!(ring.offered(0), Err(RingIndexError::Behind { producer: 0, taken: 4 }));
        assert_eq!(ring.offered(2), Err(RingIndexError::Behind { producer: 2, taken: 4 }));
        assert_eq!(ring.offered(4), Ok(0));
        assert_eq!(ring.offered(SIZE), Ok(SIZE - 4));
        assert_eq!(ring.offered(SIZE + 1), Err(RingIndexError::Beyond { producer: SIZE + 1, consumer: 0 }));
        // The same around the wrap.
        let (ring, _) = ring_in_state(u32::MAX - 1, 4, 0);
        assert_eq!(ring.offered(u32::MAX - 1).map_err(|e| e.kind()), Err("behind"));
        assert_eq!(ring.offered(2), Ok(0));
        assert_eq!(ring.offered((u32::MAX - 1).wrapping_add(SIZE)), Ok(SIZE - 4));
    }

    #[test]
    fn completion_only_of_what_was_taken_once() {
        for start in STARTS {
            let (mut ring, held) = ring_in_state(start, 6, 0b000100);
            // Never taken: before the consumer, at or after `taken`, far away.
            for index in [start.wrapping_sub(1), start.wrapping_add(6), start.wrapping_add(SIZE), start ^ (1 << 31)] {
                assert!(!ring.complete(index), "{index} was never taken");
            }
            assert!(!ring.complete(start.wrapping_add(2)), "already completed");
            for index in held.iter().rev() {
                assert!(ring.complete(*index));
                assert!(!ring.complete(*index), "twice");
            }
            assert_eq!(ring.consumer(), ring.taken());
            assert_eq!(ring.in_flight(), 0);
        }
    }

    /// A random walk of guest and kernel actions against a model of what the kernel holds:
    /// producers anywhere, out-of-order and bogus completions, for both transmit paths (copy
    /// completes each descriptor as it is taken; COW when the NIC is done).
    #[test]
    fn random_walks_hold_the_invariants() {
        let mut seed = 0x9e37_79b9_7f4a_7c15u64;
        let mut next = move || {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed
        };
        for walk in 0..400 {
            let copy_mode = walk % 2 == 0;
            let start = STARTS[walk % STARTS.len()].wrapping_sub((next() % 64) as u32);
            let mut ring = TxRing::starting_at(start);
            let mut held = BTreeSet::new();
            let mut completed = 0u64;
            let mut taken_total = 0u64;
            for _ in 0..500 {
                let consumer_before = ring.consumer();
                match next() % 4 {
                    0 | 1 => {
                        // The guest writes a producer: near the window, or anything at all.
                        let producer = if next() % 4 == 0 {
                            next() as u32
                        } else {
                            ring.consumer().wrapping_add((next() % u64::from(3 * SIZE)) as u32).wrapping_sub(SIZE)
                        };
                        if let Ok(count) = pull(&mut ring, producer, &mut held) {
                            taken_total += u64::from(count);
                            if copy_mode {
                                for index in core::mem::take(&mut held) {
                                    assert!(ring.complete(index));
                                    completed += 1;
                                }
                            }
                        }
                    }
                    2 => {
                        // The NIC completes one packet in flight, any of them.
                        if !held.is_empty() {
                            let pick = (next() % held.len() as u64) as usize;
                            let index = *held.iter().nth(pick).unwrap();
                            held.remove(&index);
                            assert!(ring.complete(index));
                            completed += 1;
                        }
                    }
                    _ => {
                        // A completion the kernel did not take must change nothing.
                        let index = next() as u32;
                        if !held.contains(&index) {
                            let before = (ring.taken(), ring.consumer());
                            assert!(!ring.complete(index));
                            assert_eq!((ring.taken(), ring.consumer()), before);
                        }
                    }
                }
                assert!(ring.in_flight() <= SIZE);
                assert_eq!(taken_total - completed, held.len() as u64, "every taken index is held or completed once");
                // Every held index lies in the window [consumer, taken); the consumer stops at the
                // oldest held one, so completed ones the consumer has not passed lie behind it.
                for index in &held {
                    assert!(index.wrapping_sub(ring.consumer()) < ring.in_flight(), "held index outside the window");
                }
                assert_eq!(ring.in_flight() > 0, held.contains(&ring.consumer()));
                if copy_mode {
                    assert_eq!(ring.in_flight(), 0, "the copy path completes what it takes");
                }
                // The consumer only moves forward, by at most a ring.
                assert!(ring.consumer().wrapping_sub(consumer_before) <= SIZE);
            }
        }
    }

    #[test]
    fn rx_every_producer_at_every_consumer() {
        for start in STARTS {
            for offset in producer_offsets() {
                let mut ring = RxRing::starting_at(start);
                let producer = start.wrapping_add(offset);
                let expected = (offset <= RX_RING_SIZE).then_some(offset);
                assert_eq!(ring.offered(producer).ok(), expected, "start {start} producer {producer}");
                let mut filled = BTreeSet::new();
                while let Ok(Some(index)) = ring.take(producer) {
                    assert!(filled.insert(index), "buffer {index} filled twice");
                    assert!(filled.len() as u32 <= RX_RING_SIZE);
                }
                assert_eq!(filled.len() as u32, expected.unwrap_or(0));
                if expected.is_none() {
                    assert_eq!(ring.consumer(), start, "a refused producer changes nothing");
                    assert!(ring.take(producer).is_err());
                } else {
                    assert_eq!(ring.consumer(), producer);
                    assert_eq!(ring.take(producer), Ok(None));
                }
            }
        }
        // Backwards is named as such.
        assert_eq!(RxRing::starting_at(10).offered(9).map_err(|e| e.kind()), Err("behind"));
        assert_eq!(RxRing::starting_at(10).offered(10 + RX_RING_SIZE + 1).map_err(|e| e.kind()), Err("beyond"));
    }
}
