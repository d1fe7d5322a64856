//! A first-in first-out queue of guest ids in which each id is at most once: a doubly linked
//! list threaded through one link per registered guest. Adding at the back, taking from the
//! front, removing any id from the middle and asking whether an id is queued are each O(1),
//! never a scan, and never allocate (storage grows only when a guest is registered). The run
//! queue, the network scheduler's rotation and the transmit backlog are such queues, so that
//! none of them costs anything per idle guest.
//!
//! Ids come from the kernel (guest table positions), but every operation takes any `usize`: an
//! id that was never registered is refused (`false`/`None`), never a panic.

use alloc::vec::Vec;

/// "No neighbour" in a link, and the id no guest can have (ids are stored as `u32`).
const END: u32 = u32::MAX;

/// Ids a queue can hold: `0..MAX_IDS` (a guest table is far smaller).
pub const MAX_IDS: usize = END as usize;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Link {
    prev: u32,
    next: u32,
    queued: bool,
}

const UNQUEUED: Link = Link { prev: END, next: END, queued: false };

#[derive(Debug)]
pub struct IdQueue {
    /// One link per registered id.
    links: Vec<Link>,
    head: u32,
    tail: u32,
    len: usize,
    /// Links read or written so far: the queue's work, for tests that show it stays constant
    /// per operation however many ids are registered.
    visits: u64,
}

impl Default for IdQueue {
    fn default() -> Self {
        Self::new()
    }
}

impl IdQueue {
    pub const fn new() -> Self {
        IdQueue { links: Vec::new(), head: END, tail: END, len: 0, visits: 0 }
    }

    /// A queue with ids `0..count` registered (capped at [`MAX_IDS`]), none queued.
    pub fn with_ids(count: usize) -> Self {
        let mut queue = Self::new();
        queue.links.resize(count.min(MAX_IDS), UNQUEUED);
        queue
    }

    /// Registers the next id (the number of ids registered so far) and returns it, not queued.
    /// Beyond [`MAX_IDS`] nothing is registered and the returned id is refused by every
    /// operation.
    pub fn register(&mut self) -> usize {
        let id = self.links.len();
        if id < MAX_IDS {
            self.links.push(UNQUEUED);
        }
        id
    }

    /// Ids registered.
    pub fn ids(&self) -> usize {
        self.links.len()
    }

    /// Ids queued.
    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Links read or written since the queue was made.
    pub fn visits(&self) -> u64 {
        self.visits
    }

    /// The registered id as a link index.
    fn key(&self, id: usize) -> Option<u32> {
        u32::try_from(id).ok().filter(|&key| key != END && id < self.links.len())
    }

    fn link(&mut self, key: u32) -> Option<&mut Link> {
        self.visits = self.visits.saturating_add(1);
        self.links.get_mut(key as usize)
    }

    pub fn contains(&self, id: usize) -> bool {
        self.links.get(id).is_some_and(|link| link.queued)
    }

    /// The id at the front, if any.
    pub fn front(&self) -> Option<usize> {
        (self.head != END).then_some(self.head as usize)
    }

    /// Queues `id` at the back. False (and nothing changes) if it is queued already or was
    /// never registered.
    pub fn push_back(&mut self, id: usize) -> bool {
        let Some(key) = self.key(id) else { return false };
        let tail = self.tail;
        match self.link(key) {
            Some(link) if !link.queued => *link = Link { prev: tail, next: END, queued: true },
            _ => return false,
        }
        match self.link(tail) {
            Some(last) => last.next = key,
            None => self.head = key,
        }
        self.tail = key;
        self.len = self.len.saturating_add(1);
        true
    }

    /// Takes the id at the front.
    pub fn pop_front(&mut self) -> Option<usize> {
        let id = self.front()?;
        self.remove(id).then_some(id)
    }

    /// Takes `id` out of the queue wherever it is. False if it was not queued.
    pub fn remove(&mut self, id: usize) -> bool {
        let Some(key) = self.key(id) else { return false };
        let Link { prev, next, queued } = match self.link(key) {
            Some(link) => core::mem::replace(link, UNQUEUED),
            None => return false,
        };
        if !queued {
            return false;
        }
        match self.link(prev) {
            Some(before) => before.next = next,
            None => self.head = next,
        }
        match self.link(next) {
            Some(after) => after.prev = prev,
            None => self.tail = prev,
        }
        self.len = self.len.saturating_sub(1);
        true
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing, clippy::arithmetic_side_effects)]
mod tests {
    use super::*;

    fn drain(queue: &mut IdQueue) -> Vec<usize> {
        core::iter::from_fn(|| queue.pop_front()).collect()
    }

    #[test]
    fn first_in_first_out_each_id_once() {
        let mut q = IdQueue::with_ids(5);
        assert!(q.is_empty() && q.front().is_none());
        for id in [3, 1, 4] {
            assert!(q.push_back(id));
        }
        assert!(!q.push_back(1), "queued already");
        assert_eq!((q.len(), q.front()), (3, Some(3)));
        assert!(q.contains(4) && !q.contains(0));
        assert_eq!(drain(&mut q), [3, 1, 4]);
        assert!(q.is_empty() && !q.contains(3));
        assert!(q.push_back(1), "queued again once taken");
        assert_eq!(drain(&mut q), [1]);
    }

    #[test]
    fn removal_from_anywhere_keeps_the_order_of_the_rest() {
        for victim in 0..5 {
            let mut q = IdQueue::with_ids(5);
            (0..5).for_each(|id| assert!(q.push_back(id)));
            assert!(q.remove(victim));
            assert!(!q.remove(victim), "removed twice");
            assert!(q.push_back(victim), "re-queued at the back");
            let want: Vec<usize> = (0..5).filter(|&id| id != victim).chain([victim]).collect();
            assert_eq!(drain(&mut q), want, "victim {victim}");
        }
    }

    #[test]
    fn unknown_ids_are_refused_without_panicking() {
        let mut q = IdQueue::with_ids(2);
        for id in [2, usize::MAX, END as usize, MAX_IDS] {
            assert!(!q.push_back(id) && !q.remove(id) && !q.contains(id), "{id}");
        }
        assert_eq!(q.register(), 2);
        assert!(q.push_back(2));
        assert_eq!((q.ids(), q.len()), (3, 1));
    }

    #[test]
    fn work_per_operation_does_not_grow_with_the_ids_registered() {
        let work = |ids: usize| {
            let mut q = IdQueue::with_ids(ids);
            for id in (0..ids).step_by(ids / 4) {
                q.push_back(id);
            }
            let before = q.visits();
            // Push, remove from the middle, pop, membership: one round.
            q.push_back(ids - 1);
            q.remove(ids / 2);
            q.pop_front();
            assert!(q.contains(ids - 1));
            q.visits() - before
        };
        assert_eq!(work(8), work(10_000));
        assert!(work(10_000) <= 8, "{}", work(10_000));
    }

    #[test]
    fn matches_a_model_under_a_random_sequence_of_operations() {
        let mut q = IdQueue::with_ids(16);
        let mut model: alloc::collections::VecDeque<usize> = Default::default();
        let mut seed: u64 = 0x9e37_79b9_7f4a_7c15;
        for _ in 0..20_000 {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            let id = (seed >> 8) as usize % 18; // 16 and 17 are unregistered
            match seed % 3 {
                0 => {
                    let pushed = q.push_back(id);
                    assert_eq!(pushed, id < 16 && !model.contains(&id));
                    if pushed {
                        model.push_back(id);
                    }
                }
                1 => {
                    let removed = q.remove(id);
                    assert_eq!(removed, model.contains(&id));
                    model.retain(|&m| m != id);
                }
                _ => assert_eq!(q.pop_front(), model.pop_front()),
            }
            assert_eq!(q.len(), model.len());
            assert_eq!(q.front(), model.front().copied());
        }
    }
}
