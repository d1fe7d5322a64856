//! Guests whose tx ring holds frames the kernel could not take yet, and what each waits for.
//!
//! The kernel stops taking from a guest's ring when the guest's FIFO is full or (copy path)
//! every packet buffer is in use, and tells the guest not to ring again: the kernel itself
//! takes the rest when there is room. Which guests it looks at then must not depend on how
//! many are waiting, or one flood would make every doorbell cost O(n):
//! - a guest waiting for room in its own FIFO is taken again only after the network scheduler
//!   sent a packet of its FIFO ([`TxBacklog::sent_from`]);
//! - guests waiting for a packet buffer are taken again in the order they began to wait, and
//!   only while buffers are free ([`TxBacklog::next_to_pull`]).
//!
//! - a guest whose rate limit holds its next frame back is taken again at the time its tokens
//!   are there ([`TxBacklog::next_due`]), from a deadline heap.
//!
//! So each doorbell or poll visits only guests something happened to. All three queues are
//! [`IdQueue`]s (O(1) per operation, each guest at most once); the deadlines are a
//! [`DeadlineHeap`] (O(log n) to set, O(1) to find that none is due).

use crate::guest::deadlines::DeadlineHeap;
use crate::guest::queue::IdQueue;

/// What a backlogged guest waits for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Wait {
    /// Room in its own FIFO (it is full).
    FifoRoom,
    /// A free packet buffer (all are in use).
    Buffer,
    /// Its rate limit's tokens, which will be there at this TSC time.
    Tokens(u64),
}

#[derive(Debug, Default)]
pub struct TxBacklog {
    fifo_room: IdQueue,
    buffer: IdQueue,
    /// Guests whose FIFO made room since they began to wait: taken again first.
    room_made: IdQueue,
    /// Guests held back by their rate limit, by when their tokens are there.
    tokens: DeadlineHeap,
}

impl TxBacklog {
    pub fn new() -> Self {
        Self::default()
    }

    /// Reserves room for `additional` more guests now, fallibly (false: the heap is short), so
    /// that registering them later does not grow storage.
    pub fn try_reserve(&mut self, additional: usize) -> bool {
        self.fifo_room.try_reserve(additional)
            && self.buffer.try_reserve(additional)
            && self.room_made.try_reserve(additional)
            && self.tokens.try_reserve(additional)
    }

    /// Registers the next guest id (the number registered so far) and returns it.
    pub fn register(&mut self) -> usize {
        let id = self.fifo_room.register();
        self.buffer.register();
        self.room_made.register();
        self.tokens.register();
        id
    }

    /// Guest `id` waits for `what` (and for nothing else: a guest waits for one thing at a time).
    pub fn wait(&mut self, id: usize, what: Wait) {
        self.forget(id);
        match what {
            Wait::FifoRoom => self.fifo_room.push_back(id),
            Wait::Buffer => self.buffer.push_back(id),
            Wait::Tokens(at) => self.tokens.set(id, at),
        };
    }

    /// Guest `id` waits for nothing any more (it ended, or its ring was taken).
    pub fn forget(&mut self, id: usize) {
        // Every kick ends here: with nobody waiting (the usual case) there is nothing to look up.
        if self.is_empty() {
            return;
        }
        self.fifo_room.remove(id);
        self.buffer.remove(id);
        self.room_made.remove(id);
        self.tokens.remove(id);
    }

    /// The network scheduler sent a packet from guest `id`'s FIFO: if it waited for room there,
    /// it is to be taken again.
    pub fn sent_from(&mut self, id: usize) {
        if self.fifo_room.remove(id) {
            self.room_made.push_back(id);
        }
    }

    /// Whether [`Self::next_to_pull`] may find a guest: one whose FIFO sent, or one waiting for
    /// a buffer.
    pub fn may_pull(&self) -> bool {
        !self.room_made.is_empty() || !self.buffer.is_empty()
    }

    /// The next guest to take frames from: one whose FIFO made room, else (if `buffers_free`)
    /// the one that has waited longest for a buffer. It no longer waits; taking from it again
    /// puts it back if it must.
    pub fn next_to_pull(&mut self, buffers_free: bool) -> Option<usize> {
        self.room_made.pop_front().or_else(|| if buffers_free { self.buffer.pop_front() } else { None })
    }

    /// A guest whose tokens are there at `now`, to take frames from again (it no longer waits).
    pub fn next_due(&mut self, now: u64) -> Option<usize> {
        self.tokens.pop_expired(now).map(|(_, id)| id)
    }

    /// The earliest time a guest's tokens are there, if any guest waits for them.
    pub fn next_deadline(&self) -> Option<u64> {
        self.tokens.peek().map(|(at, _)| at)
    }

    /// Whether guest `id` waits for anything.
    pub fn is_waiting(&self, id: usize) -> bool {
        self.fifo_room.contains(id)
            || self.buffer.contains(id)
            || self.room_made.contains(id)
            || self.tokens.deadline_of(id).is_some()
    }

    /// Guests waiting.
    pub fn len(&self) -> usize {
        self.fifo_room
            .len()
            .saturating_add(self.buffer.len())
            .saturating_add(self.room_made.len())
            .saturating_add(self.tokens.len())
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Queue entries visited so far (the backlog's work, for tests).
    pub fn work(&self) -> u64 {
        self.fifo_room
            .visits()
            .saturating_add(self.buffer.visits())
            .saturating_add(self.room_made.visits())
            .saturating_add(self.tokens.visits())
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing, clippy::arithmetic_side_effects)]
mod tests {
    use super::*;

    fn backlog(guests: usize) -> TxBacklog {
        let mut b = TxBacklog::new();
        for want in 0..guests {
            assert_eq!(b.register(), want);
        }
        b
    }

    #[test]
    fn a_full_fifo_is_pulled_only_after_it_sent() {
        let mut b = backlog(3);
        b.wait(1, Wait::FifoRoom);
        assert!(b.is_waiting(1));
        assert_eq!(b.next_to_pull(true), None, "nothing left its FIFO yet");
        b.sent_from(0); // another guest's packet changes nothing for guest 1
        assert_eq!(b.next_to_pull(true), None);
        b.sent_from(1);
        b.sent_from(1);
        assert_eq!(b.next_to_pull(false), Some(1), "room in its own FIFO needs no buffer");
        assert_eq!(b.next_to_pull(true), None);
        assert!(b.is_empty());
    }

    #[test]
    fn buffer_waiters_in_order_and_only_while_buffers_are_free() {
        let mut b = backlog(4);
        for id in [2, 0, 3] {
            b.wait(id, Wait::Buffer);
        }
        assert_eq!(b.next_to_pull(false), None);
        assert_eq!(b.next_to_pull(true), Some(2));
        b.wait(2, Wait::Buffer); // still none for it: back of the line
        assert_eq!([b.next_to_pull(true), b.next_to_pull(true), b.next_to_pull(true)], [Some(0), Some(3), Some(2)]);
        assert_eq!(b.len(), 0);
    }

    #[test]
    fn a_guest_waits_for_one_thing_and_is_forgotten_when_it_ends() {
        let mut b = backlog(2);
        b.wait(0, Wait::Buffer);
        b.wait(0, Wait::FifoRoom);
        assert_eq!(b.len(), 1);
        assert_eq!(b.next_to_pull(true), None, "it waits for FIFO room now");
        b.forget(0);
        b.sent_from(0);
        assert_eq!(b.next_to_pull(true), None);
        b.wait(9, Wait::Buffer); // unknown: ignored
        assert!(b.is_empty());
    }

    #[test]
    fn rate_limited_guests_are_due_at_their_deadlines_in_order() {
        let mut b = backlog(4);
        b.wait(2, Wait::Tokens(300));
        b.wait(0, Wait::Tokens(100));
        b.wait(3, Wait::Tokens(200));
        assert!(b.is_waiting(2));
        assert_eq!(b.len(), 3);
        assert_eq!(b.next_deadline(), Some(100));
        assert_eq!(b.next_due(99), None);
        assert_eq!(b.next_to_pull(true), None, "tokens are not buffers");
        assert_eq!([b.next_due(250), b.next_due(250), b.next_due(250)], [Some(0), Some(3), None]);
        // Waiting for something else, or ending, takes the deadline away.
        b.wait(2, Wait::FifoRoom);
        assert_eq!(b.next_due(u64::MAX), None);
        b.wait(1, Wait::Tokens(5));
        b.forget(1);
        assert_eq!((b.next_due(u64::MAX), b.next_deadline()), (None, None));
        // A later deadline replaces the earlier one.
        b.wait(3, Wait::Tokens(10));
        b.wait(3, Wait::Tokens(20));
        assert_eq!((b.next_due(15), b.next_due(20)), (None, Some(3)));
    }

    #[test]
    fn ten_thousand_rate_limited_guests_cost_a_logarithm_and_nothing_when_none_is_due() {
        let work = |guests: usize| {
            let mut b = backlog(guests);
            (1..guests).for_each(|id| b.wait(id, Wait::Tokens(1_000_000 + id as u64)));
            let idle = b.work();
            for round in 0..100 {
                assert_eq!(b.next_due(round), None);
            }
            assert_eq!(b.work(), idle, "finding that nobody is due visits nothing");
            let before = b.work();
            for round in 0..100 {
                b.wait(0, Wait::Tokens(round));
                assert_eq!(b.next_due(round), Some(0));
            }
            b.work() - before
        };
        let (few, many) = (work(3), work(10_000));
        // Setting and taking a deadline: a few sifts through log2(10,000) = 14 levels each.
        assert!(many <= few + 100 * 4 * 14, "{few} with 3 guests, {many} with 10,000");
    }

    #[test]
    fn ten_thousand_backlogged_guests_cost_nothing_to_a_doorbell_that_concerns_one() {
        // Every guest but one waits for FIFO room and nothing leaves their FIFOs; one guest's
        // packets flow. The work per round is the same with 3 waiting guests as with 10,000.
        let work = |guests: usize| {
            let mut b = backlog(guests);
            (1..guests).for_each(|id| b.wait(id, Wait::FifoRoom));
            let before = b.work();
            for _ in 0..100 {
                b.wait(0, Wait::FifoRoom);
                b.sent_from(0);
                assert_eq!(b.next_to_pull(false), Some(0));
                assert_eq!(b.next_to_pull(false), None);
            }
            b.work() - before
        };
        assert_eq!(work(3), work(10_000));
    }
}
