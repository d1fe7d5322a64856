//! Turning the loader's memory map into a clean list of usable physical memory.
//!
//! E820-style maps may be unsorted, overlapping, unaligned and may wrap around the top of the
//! address space. The rule applied here is the conservative one: a byte is usable only if some
//! entry says "usable" and no entry says anything else; usable ranges are shrunk to whole 4 KiB
//! frames. Storage is fixed-size because this runs before the kernel has a heap.

/// Size of a physical frame.
pub const FRAME_SIZE: u64 = 4096;
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
        self.end - self.start
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
        &self.ranges[..self.len]
    }

    /// Total bytes in the set.
    pub fn total(&self) -> u64 {
        self.ranges().iter().map(Range::len).sum()
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
        while last < self.len && self.ranges[last].start <= end {
            start = start.min(self.ranges[last].start);
            end = end.max(self.ranges[last].end);
            last += 1;
        }
        let merged = last - first;
        if merged == 0 && self.len == MAX_REGIONS {
            return Err(TooFragmented);
        }
        // Replace ranges[first..last] with the one merged range.
        let new_len = self.len + 1 - merged;
        self.ranges.copy_within(last..self.len, first + 1);
        self.ranges[first] = Range { start, end };
        self.len = new_len;
        Ok(())
    }

    /// Removes `[start, end)` from the set, splitting a range if needed.
    pub fn remove(&mut self, start: u64, end: u64) -> Result<(), TooFragmented> {
        if end <= start {
            return Ok(());
        }
        let mut index = 0;
        while index < self.len {
            let r = self.ranges[index];
            if r.end <= start || r.start >= end {
                index += 1;
                continue;
            }
            let left = Range { start: r.start, end: start.max(r.start) };
            let right = Range { start: end.min(r.end), end: r.end };
            match (left.is_empty(), right.is_empty()) {
                (true, true) => {
                    self.ranges.copy_within(index + 1..self.len, index);
                    self.len -= 1;
                }
                (false, true) => {
                    self.ranges[index] = left;
                    index += 1;
                }
                (true, false) => {
                    self.ranges[index] = right;
                    index += 1;
                }
                (false, false) => {
                    if self.len == MAX_REGIONS {
                        return Err(TooFragmented);
                    }
                    self.ranges.copy_within(index + 1..self.len, index + 2);
                    self.ranges[index] = left;
                    self.ranges[index + 1] = right;
                    self.len += 1;
                    index += 2;
                }
            }
        }
        Ok(())
    }

    /// Shrinks every range inward to whole frames and drops those left empty.
    pub fn align_to_frames(&mut self) {
        let mut kept = 0;
        for index in 0..self.len {
            let r = self.ranges[index];
            let start = r.start.checked_next_multiple_of(FRAME_SIZE).unwrap_or(u64::MAX);
            let end = r.end - r.end % FRAME_SIZE;
            if start < end {
                self.ranges[kept] = Range { start, end };
                kept += 1;
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
}
