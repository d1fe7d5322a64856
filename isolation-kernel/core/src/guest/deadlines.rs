//! Idle guests' deadlines: a binary min-heap with at most one entry per guest, indexed by guest
//! so an entry can be moved or removed where it lies. Setting, moving or removing a deadline is
//! O(log n) in the guests holding one; the earliest is read in O(1). Memory is bounded by the
//! number of guests, whatever they do: a guest that idles, is woken early and idles again
//! moves its one entry instead of leaving a stale one behind for each sleep.
//!
//! Deadlines come from guests (any `u64`); ids from the kernel, but any `usize` is taken: an id
//! never registered is refused, never a panic.

use alloc::vec::Vec;

/// "Not in the heap", in [`DeadlineHeap::position`].
const ABSENT: u32 = u32::MAX;

/// Ids the heap can hold: `0..MAX_IDS`.
pub const MAX_IDS: usize = ABSENT as usize;

#[derive(Debug, Default)]
pub struct DeadlineHeap {
    /// `(deadline, id)`, a min-heap in that order (equal deadlines: the lower id first).
    heap: Vec<(u64, u32)>,
    /// Each registered id's index in `heap`, or [`ABSENT`].
    position: Vec<u32>,
    /// Entries compared or moved so far (the heap's work, for tests).
    visits: u64,
}

impl DeadlineHeap {
    pub const fn new() -> Self {
        DeadlineHeap { heap: Vec::new(), position: Vec::new(), visits: 0 }
    }

    /// Registers the next id (the number registered so far) and returns it, without a
    /// deadline. Storage for its entry is reserved now, so setting a deadline never allocates.
    /// Beyond [`MAX_IDS`] nothing is registered and the id is refused by every operation.
    pub fn register(&mut self) -> usize {
        let id = self.position.len();
        if id < MAX_IDS {
            self.position.push(ABSENT);
            self.heap.reserve(self.position.len().saturating_sub(self.heap.len()));
        }
        id
    }

    /// Deadlines held.
    pub fn len(&self) -> usize {
        self.heap.len()
    }

    pub fn is_empty(&self) -> bool {
        self.heap.is_empty()
    }

    /// Entries compared or moved since the heap was made.
    pub fn visits(&self) -> u64 {
        self.visits
    }

    /// The earliest deadline and its guest.
    pub fn peek(&self) -> Option<(u64, usize)> {
        self.heap.first().map(|&(deadline, id)| (deadline, id as usize))
    }

    /// The deadline `id` holds, if any.
    pub fn deadline_of(&self, id: usize) -> Option<u64> {
        let index = *self.position.get(id)?;
        self.heap.get(index as usize).map(|&(deadline, _)| deadline)
    }

    /// Gives `id` the deadline `deadline`, replacing the one it held. False if `id` was never
    /// registered.
    pub fn set(&mut self, id: usize, deadline: u64) -> bool {
        let Some((key, index)) = self.lookup(id) else { return false };
        match index {
            Some(index) => {
                if let Some(entry) = self.heap.get_mut(index) {
                    entry.0 = deadline;
                }
                self.sift_up(index);
                self.sift_down(index);
            }
            None => {
                let index = self.heap.len();
                self.heap.push((deadline, key));
                self.place(index);
                self.sift_up(index);
            }
        }
        true
    }

    /// Takes `id`'s deadline away. False if it held none.
    pub fn remove(&mut self, id: usize) -> bool {
        let Some((_, Some(index))) = self.lookup(id) else { return false };
        self.take(index).is_some()
    }

    /// Takes the earliest deadline if it is at or before `now`.
    pub fn pop_expired(&mut self, now: u64) -> Option<(u64, usize)> {
        let (deadline, _) = self.peek().filter(|&(deadline, _)| deadline <= now)?;
        self.take(0).map(|id| (deadline, id))
    }

    /// The id as stored, and where its entry is (if it has one); `None` if never registered.
    fn lookup(&self, id: usize) -> Option<(u32, Option<usize>)> {
        let key = u32::try_from(id).ok().filter(|&key| key != ABSENT)?;
        let index = *self.position.get(id)?;
        Some((key, (index != ABSENT).then_some(index as usize)))
    }

    /// Removes the entry at `index` and returns its id.
    fn take(&mut self, index: usize) -> Option<usize> {
        let last = self.heap.len().checked_sub(1)?;
        if index > last {
            return None;
        }
        self.heap.swap(index, last);
        let (_, id) = self.heap.pop()?;
        if let Some(position) = self.position.get_mut(id as usize) {
            *position = ABSENT;
        }
        if index < last {
            self.place(index);
            self.sift_up(index);
            self.sift_down(index);
        }
        Some(id as usize)
    }

    /// Records where the entry at `index` now is.
    fn place(&mut self, index: usize) {
        self.visits = self.visits.saturating_add(1);
        if let (Some(&(_, id)), Ok(stored)) = (self.heap.get(index), u32::try_from(index)) {
            if let Some(position) = self.position.get_mut(id as usize) {
                *position = stored;
            }
        }
    }

    /// Swaps two entries (both in the heap) and records where they went.
    fn swap(&mut self, a: usize, b: usize) {
        if a < self.heap.len() && b < self.heap.len() {
            self.heap.swap(a, b);
            self.place(a);
            self.place(b);
        }
    }

    fn sift_up(&mut self, mut index: usize) {
        while let Some(parent) = index.checked_sub(1).map(|i| i / 2) {
            match (self.heap.get(index), self.heap.get(parent)) {
                (Some(child), Some(above)) if child < above => {}
                _ => break,
            }
            self.swap(index, parent);
            index = parent;
        }
    }

    fn sift_down(&mut self, mut index: usize) {
        while let Some(&entry) = self.heap.get(index) {
            let left = index.checked_mul(2).and_then(|i| i.checked_add(1));
            let right = left.and_then(|i| i.checked_add(1));
            let mut smallest = (index, entry);
            for child in [left, right].into_iter().flatten() {
                if let Some(&candidate) = self.heap.get(child) {
                    if candidate < smallest.1 {
                        smallest = (child, candidate);
                    }
                }
            }
            if smallest.0 == index {
                break;
            }
            self.swap(index, smallest.0);
            index = smallest.0;
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing, clippy::arithmetic_side_effects)]
mod tests {
    use super::*;

    fn heap_with(ids: usize) -> DeadlineHeap {
        let mut heap = DeadlineHeap::new();
        for want in 0..ids {
            assert_eq!(heap.register(), want);
        }
        heap
    }

    /// Every entry is no earlier than its parent, and every position points at its entry.
    fn check_invariants(heap: &DeadlineHeap) {
        for (index, &(_, id)) in heap.heap.iter().enumerate() {
            if index > 0 {
                assert!(heap.heap[(index - 1) / 2] <= heap.heap[index]);
            }
            assert_eq!(heap.position[id as usize] as usize, index);
        }
        let placed = heap.position.iter().filter(|&&p| p != ABSENT).count();
        assert_eq!(placed, heap.heap.len());
    }

    #[test]
    fn earliest_first_and_one_entry_per_guest() {
        let mut heap = heap_with(4);
        assert!(heap.set(0, 50) && heap.set(1, 10) && heap.set(2, 30));
        assert!(heap.set(0, 5), "moved, not added");
        assert_eq!(heap.len(), 3);
        assert_eq!(heap.deadline_of(0), Some(5));
        assert_eq!(heap.pop_expired(4), None, "nothing due yet");
        assert_eq!(heap.pop_expired(100), Some((5, 0)));
        assert_eq!(heap.pop_expired(100), Some((10, 1)));
        assert!(heap.remove(2));
        assert!(!heap.remove(2) && !heap.remove(3), "no deadline held");
        assert!(heap.is_empty() && heap.peek().is_none());
    }

    #[test]
    fn equal_deadlines_in_id_order_and_any_u64() {
        let mut heap = heap_with(3);
        heap.set(2, u64::MAX);
        heap.set(1, u64::MAX);
        heap.set(0, 0);
        assert_eq!(heap.pop_expired(u64::MAX), Some((0, 0)));
        assert_eq!(heap.pop_expired(u64::MAX), Some((u64::MAX, 1)));
        assert_eq!(heap.pop_expired(u64::MAX), Some((u64::MAX, 2)));
    }

    #[test]
    fn unknown_ids_are_refused() {
        let mut heap = heap_with(1);
        for id in [1, usize::MAX, MAX_IDS] {
            assert!(!heap.set(id, 1) && !heap.remove(id) && heap.deadline_of(id).is_none());
        }
        assert!(heap.is_empty());
    }

    #[test]
    fn matches_a_model_under_a_random_sequence_of_operations() {
        let ids = 40;
        let mut heap = heap_with(ids);
        let mut model: alloc::collections::BTreeMap<usize, u64> = Default::default();
        let mut seed: u64 = 0x2545_f491_4f6c_dd1d;
        for step in 0..30_000u64 {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            let id = (seed >> 16) as usize % ids;
            let deadline = (seed >> 40) % 1000;
            match seed % 4 {
                0 | 1 => {
                    heap.set(id, deadline);
                    model.insert(id, deadline);
                }
                2 => assert_eq!(heap.remove(id), model.remove(&id).is_some()),
                _ => {
                    let now = step % 1000;
                    let want = model.iter().map(|(&i, &d)| (d, i)).min().filter(|&(d, _)| d <= now);
                    assert_eq!(heap.pop_expired(now), want);
                    if let Some((_, i)) = want {
                        model.remove(&i);
                    }
                }
            }
            assert_eq!(heap.len(), model.len());
            if step % 97 == 0 {
                check_invariants(&heap);
            }
        }
    }

    #[test]
    fn work_grows_with_the_logarithm_of_the_sleepers() {
        for n in [16usize, 1_024, 16_384] {
            let mut heap = heap_with(n + 1);
            for id in 0..n {
                heap.set(id, 1_000_000 + id as u64);
            }
            let before = heap.visits();
            heap.set(n, 1); // the new earliest: sifts to the top
            heap.pop_expired(1);
            let work = heap.visits() - before;
            let log2 = n.ilog2() as u64;
            assert!(work <= 4 * (log2 + 1), "{n} sleepers: {work} visits");
        }
    }
}
