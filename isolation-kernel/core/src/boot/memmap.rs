//! Turning the loader's memory map into a clean list of usable physical memory.
//!
//! E820-style maps may be unsorted, overlapping, unaligned and may wrap around the top of the
//! address space. The rule applied here is the conservative one: a byte is usable only if some
//! entry says "usable" and no entry says anything else; usable ranges are shrunk to whole
//! pages ([`PAGE_SIZE`]). Storage is fixed-size because this runs before the kernel has a heap.

use hypercall_abi::layout::PAGE_SIZE;

/// Most disjoint ranges a [`RegionSet`] holds. Real maps have a dozen.
pub const MAX_REGIONS: usize = 128;

/// What an E820 entry says about its range.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum MemoryKind {
    /// RAM the kernel may use (E820 type 1).
    Usable,
    /// Anything else (reserved, ACPI tables, ACPI NVS, bad memory, unknown types).
    #[default]
    Reserved,
    /// ACPI tables (E820 type 3): reclaimable later, reserved for now.
    AcpiReclaimable,
}

impl MemoryKind {
    pub fn from_e820(kind: u32) -> MemoryKind {
        match kind {
            1 => MemoryKind::Usable,
            3 => MemoryKind::AcpiReclaimable,
            _ => MemoryKind::Reserved,
        }
    }
}

/// One entry of the loader's memory map, as given.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct RawRegion {
    pub start: u64,
    pub size: u64,
    pub kind: MemoryKind,
}

impl RawRegion {
    /// `[start, end)`, with the end clamped to the top of the address space if it wraps.
    fn bounds(&self) -> (u64, u64) {
        (self.start, self.start.saturating_add(self.size))
    }
}

/// A half-open physical range `[start, end)`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct Range {
    pub start: u64,
    pub end: u64,
}

impl Range {
    pub fn len(&self) -> u64 {
        self.end.saturating_sub(self.start)
    }

    pub fn is_empty(&self) -> bool {
        self.end <= self.start
    }
}

/// The set was asked to hold more than [`MAX_REGIONS`] disjoint ranges.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TooFragmented;

/// A sorted set of disjoint, non-adjacent ranges.
#[derive(Clone, Debug)]
pub struct RegionSet {
    ranges: [Range; MAX_REGIONS],
    /// How many entries of `ranges` are in use (at most [`MAX_REGIONS`]).
    len: usize,
}

impl Default for RegionSet {
    fn default() -> Self {
        Self::new()
    }
}

impl RegionSet {
    pub const fn new() -> Self {
        RegionSet { ranges: [Range { start: 0, end: 0 }; MAX_REGIONS], len: 0 }
    }

    pub fn ranges(&self) -> &[Range] {
        self.ranges.get(..self.len).unwrap_or(&[])
    }

    /// Total bytes in the set.
    pub fn total(&self) -> u64 {
        self.ranges().iter().map(Range::len).sum()
    }

    /// Puts `range` at `at`, moving the ranges from `at` up by one; refused when the set is full.
    fn insert_at(&mut self, at: usize, range: Range) -> Result<(), TooFragmented> {
        // `at..=len` exists only while `len < MAX_REGIONS`; its last entry is unused.
        let tail = self.ranges.get_mut(at..=self.len).ok_or(TooFragmented)?;
        tail.rotate_right(1);
        if let Some(slot) = tail.first_mut() {
            *slot = range;
        }
        self.len = self.len.checked_add(1).ok_or(TooFragmented)?;
        Ok(())
    }

    /// Removes `count` ranges from `at`, moving those after them down.
    fn remove_at(&mut self, at: usize, count: usize) {
        if let Some(tail) = self.ranges.get_mut(at..self.len) {
            let count = count.min(tail.len());
            tail.rotate_left(count);
            // `count` is at most the tail's length, so at most `len`.
            self.len = self.len.saturating_sub(count);
        }
    }

    /// Overwrites the range at `index` (in use).
    fn set(&mut self, index: usize, range: Range) {
        if let Some(slot) = self.ranges.get_mut(..self.len).and_then(|used| used.get_mut(index)) {
            *slot = range;
        }
    }

    /// Adds `[start, end)`, merging with any range it overlaps or touches.
    pub fn insert(&mut self, start: u64, end: u64) -> Result<(), TooFragmented> {
        if end <= start {
            return Ok(());
        }
        let (mut start, mut end) = (start, end);
        // Ranges strictly before the new one, and those it overlaps or touches.
        let first = self.ranges().iter().take_while(|r| r.end < start).count();
        let mut last = first;
        while let Some(r) = self.ranges().get(last).copied().filter(|r| r.start <= end) {
            start = start.min(r.start);
            end = end.max(r.end);
            // `last` indexes a range in use: below `len`.
            last = last.saturating_add(1);
        }
        // Replace ranges[first..last] with the one merged range.
        match last.saturating_sub(first).checked_sub(1) {
            None => self.insert_at(first, Range { start, end }),
            Some(extra) => {
                self.set(first, Range { start, end });
                self.remove_at(first.saturating_add(1), extra);
                Ok(())
            }
        }
    }

    /// Removes `[start, end)` from the set, splitting a range if needed.
    pub fn remove(&mut self, start: u64, end: u64) -> Result<(), TooFragmented> {
        if end <= start {
            return Ok(());
        }
        // `index` stays below `len`, and `len` below MAX_REGIONS: the additions never saturate.
        let mut index = 0usize;
        while let Some(r) = self.ranges().get(index).copied() {
            if r.end <= start || r.start >= end {
                index = index.saturating_add(1);
                continue;
            }
            let left = Range { start: r.start, end: start.max(r.start) };
            let right = Range { start: end.min(r.end), end: r.end };
            match (left.is_empty(), right.is_empty()) {
                (true, true) => self.remove_at(index, 1),
                (false, true) => {
                    self.set(index, left);
                    index = index.saturating_add(1);
                }
                (true, false) => {
                    self.set(index, right);
                    index = index.saturating_add(1);
                }
                (false, false) => {
                    if self.len == MAX_REGIONS {
                        return Err(TooFragmented);
                    }
                    self.set(index, left);
                    self.insert_at(index.saturating_add(1), right)?;
                    index = index.saturating_add(2);
                }
            }
        }
        Ok(())
    }

    /// Shrinks every range inward to whole frames and drops those left empty.
    pub fn align_to_frames(&mut self) {
        let mut kept = 0usize;
        for index in 0..self.len {
            let Some(r) = self.ranges.get(index).copied() else { break };
            let start = r.start.checked_next_multiple_of(PAGE_SIZE).unwrap_or(u64::MAX);
            // The remainder is at most `end`: never saturates.
            let end = r.end.saturating_sub(r.end % PAGE_SIZE);
            if start < end {
                if let Some(slot) = self.ranges.get_mut(kept) {
                    *slot = Range { start, end };
                }
                // `kept` <= `index` < `len`.
                kept = kept.saturating_add(1);
            }
        }
        self.len = kept;
    }

    /// Whether `[start, end)` lies entirely inside one range of the set.
    pub fn contains(&self, start: u64, end: u64) -> bool {
        self.ranges().iter().any(|r| r.start <= start && end <= r.end)
    }
}

/// The usable RAM described by `map`: usable entries minus every non-usable entry, in whole
/// frames. Physical addresses below `low_limit` (the legacy BIOS area) are left out too.
pub fn usable_memory(map: &[RawRegion], low_limit: u64) -> Result<RegionSet, TooFragmented> {
    let mut usable = RegionSet::new();
    for entry in map.iter().filter(|e| e.kind == MemoryKind::Usable) {
        let (start, end) = entry.bounds();
        usable.insert(start, end)?;
    }
    for entry in map.iter().filter(|e| e.kind != MemoryKind::Usable) {
        let (start, end) = entry.bounds();
        usable.remove(start, end)?;
    }
    usable.remove(0, low_limit)?;
    usable.align_to_frames();
    Ok(usable)
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing, clippy::arithmetic_side_effects)]
mod tests {
    use super::*;

    fn usable(start: u64, size: u64) -> RawRegion {
        RawRegion { start, size, kind: MemoryKind::Usable }
    }
    fn reserved(start: u64, size: u64) -> RawRegion {
        RawRegion { start, size, kind: MemoryKind::Reserved }
    }
    fn ranges(set: &RegionSet) -> Vec<(u64, u64)> {
        set.ranges().iter().map(|r| (r.start, r.end)).collect()
    }

    #[test]
    fn qemu_pc_map_keeps_ram_above_one_mib() {
        let map = [
            usable(0, 0x9fc00),
            reserved(0x9fc00, 0x400),
            reserved(0xf0000, 0x10000),
            usable(0x100000, 0x7ee0000),
            reserved(0x7fe0000, 0x20000),
            reserved(0xfffc0000, 0x40000),
        ];
        let set = usable_memory(&map, 0x100000).unwrap();
        assert_eq!(ranges(&set), vec![(0x100000, 0x7fe0000)]);
        assert_eq!(set.total(), 0x7ee0000);
    }

    #[test]
    fn unsorted_and_overlapping_usable_entries_merge() {
        let map = [usable(0x300000, 0x100000), usable(0x100000, 0x180000), usable(0x250000, 0x100000)];
        let set = usable_memory(&map, 0).unwrap();
        assert_eq!(ranges(&set), vec![(0x100000, 0x400000)]);
    }

    #[test]
    fn reserved_wins_over_usable_wherever_they_overlap() {
        // The reserved entry comes first and sits inside the usable one: it must still be cut out.
        let map = [reserved(0x200000, 0x1000), usable(0x100000, 0x200000)];
        let set = usable_memory(&map, 0).unwrap();
        assert_eq!(ranges(&set), vec![(0x100000, 0x200000), (0x201000, 0x300000)]);
        assert!(!set.contains(0x200000, 0x201000));
        assert!(set.contains(0x201000, 0x202000));
    }

    #[test]
    fn unaligned_edges_shrink_inward_and_slivers_vanish() {
        let map = [usable(0x100123, 0x2000), usable(0x200000, 0x800)];
        let set = usable_memory(&map, 0).unwrap();
        assert_eq!(ranges(&set), vec![(0x101000, 0x102000)]);
    }

    #[test]
    fn entries_that_wrap_around_are_clamped_and_empty_ones_ignored() {
        let map = [usable(u64::MAX - 0x1fff, 0x10000), usable(0x100000, 0), reserved(0x5000, 0)];
        let set = usable_memory(&map, 0).unwrap();
        assert_eq!(ranges(&set), vec![(u64::MAX - 0x1fff, u64::MAX - 0xfff)]);
    }

    #[test]
    fn too_many_fragments_is_an_error() {
        let mut set = RegionSet::new();
        for i in 0..MAX_REGIONS as u64 {
            set.insert(i * 0x10000, i * 0x10000 + 0x1000).unwrap();
        }
        assert_eq!(set.insert(u64::MAX - 0x1000, u64::MAX), Err(TooFragmented));
        // Touching an existing range merges and needs no new slot.
        set.insert(0x1000, 0x2000).unwrap();
        assert_eq!(set.remove(0x10400, 0x10800), Err(TooFragmented));
    }

    #[test]
    fn remove_splits_trims_and_deletes() {
        let mut set = RegionSet::new();
        set.insert(0, 0x10000).unwrap();
        set.insert(0x20000, 0x30000).unwrap();
        set.remove(0x1000, 0x2000).unwrap();
        assert_eq!(ranges(&set), vec![(0, 0x1000), (0x2000, 0x10000), (0x20000, 0x30000)]);
        set.remove(0x8000, 0x28000).unwrap();
        assert_eq!(ranges(&set), vec![(0, 0x1000), (0x2000, 0x8000), (0x28000, 0x30000)]);
        set.remove(0, u64::MAX).unwrap();
        assert!(set.ranges().is_empty());
    }

    /// Random inserts and removes against a model of one flag per unit: the set always covers
    /// exactly the model's units, sorted, disjoint and not touching, and refuses only when full.
    #[test]
    fn random_inserts_and_removes_match_a_model() {
        const UNITS: usize = 600;
        let mut seed = 0x2545_f491_4f6c_dd1d_u64;
        let mut next = |bound: u64| {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed % bound
        };
        for _ in 0..20 {
            let mut set = RegionSet::new();
            let mut model = [false; UNITS];
            for _ in 0..300 {
                let start = next(UNITS as u64);
                let end = (start + next(12)).min(UNITS as u64);
                let before = set.clone();
                let insert = next(3) != 0;
                let result = if insert { set.insert(start, end) } else { set.remove(start, end) };
                if result.is_err() {
                    assert_eq!(set.ranges().len(), MAX_REGIONS);
                    if insert {
                        assert_eq!(set.ranges(), before.ranges(), "a refused insert changes nothing");
                    }
                    set = before;
                    continue;
                }
                for unit in start..end {
                    model[unit as usize] = insert;
                }
                let covered: Vec<bool> =
                    (0..UNITS as u64).map(|u| set.ranges().iter().any(|r| r.start <= u && u < r.end)).collect();
                assert_eq!(covered, model.to_vec());
                assert!(set.ranges().windows(2).all(|w| w[0].end < w[1].start));
                assert!(set.ranges().iter().all(|r| r.start < r.end));
            }
        }
    }
}
