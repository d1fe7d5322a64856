//! `memmap::usable_memory`: turning the loader's E820 map into usable frames.
//!
//! Entries are drawn around the addresses of QEMU's real map (640 KiB, the BIOS hole, 1 MiB,
//! the top of RAM, the 4 GiB boundary, the top of the address space), overlapping, unaligned
//! and wrapping. The rule the module promises is checked point by point: the frame holding
//! each probed address is in the result exactly when every byte of it is at or above the low
//! limit, covered by a usable entry and touched by no other entry. The result must be sorted,
//! disjoint, non-adjacent and frame-aligned, and `TooFragmented` must come exactly when a set
//! built step by step here (a different algorithm: sort and sweep) outgrows the fixed storage.

use crate::engine::{Target, Verdict};
use crate::features::Features;
use crate::source::Source;
use crate::{check, check_eq};
use hypercall_abi::layout::PAGE_SIZE;
use kernel_core::boot::memmap::{usable_memory, MemoryKind, RawRegion, MAX_REGIONS};

pub const TARGET: Target = Target {
    name: "memmap",
    checks: "usable frames are exactly those fully covered by usable entries, untouched by others and above \
             the low limit; result sorted, disjoint, non-adjacent, aligned; TooFragmented exactly when due",
    max_len: 2048,
    dictionary: &[],
    seeds,
    run,
};

/// Boundaries of QEMU's real memory map and of the address space.
const NEAR: [u64; 12] = [
    0,
    0x9fc00,
    0xa0000,
    0xf0000,
    0x10_0000,
    0x7fe_0000,
    0x800_0000,
    0xfffc_0000,
    1 << 32,
    u64::MAX - PAGE_SIZE,
    u64::MAX,
    1 << 63,
];

/// Most entries an input makes (QEMU's maps have about six; the PVH parser takes 128).
const MAX_ENTRIES: usize = 400;

fn seeds(_: &crate::real::RealInputs) -> Vec<Vec<u8>> {
    vec![vec![0, 1, 1, 0, 2, 3, 0, 2, 4, 4, 5, 0, 5, 7, 6, 0], (0..=255).collect(), vec![7; 300]]
}

fn run(input: &[u8], features: &mut Features) -> Verdict {
    let mut source = Source::new(input);
    let low_limit = source.u64_near(&[0, 0x10_0000, PAGE_SIZE, 1]);
    let mut map = Vec::new();
    if source.below(4) == 0 {
        // A fragmented map: many one-frame usable entries two frames apart, then reserved
        // entries cutting some of them in two, enough to outgrow the module's fixed storage.
        let (count, cuts, base) =
            (usize::from(source.u8()).min(160), usize::from(source.u8() % 64), source.u64_near(&NEAR));
        for i in 0..count as u64 {
            map.push(RawRegion {
                start: base.wrapping_add(i * 2 * PAGE_SIZE),
                size: PAGE_SIZE,
                kind: MemoryKind::Usable,
            });
        }
        for i in 0..cuts as u64 {
            let start = base.wrapping_add(i * 2 * PAGE_SIZE + 0x800);
            map.push(RawRegion { start, size: 0x10, kind: MemoryKind::Reserved });
        }
    }
    while !source.is_empty() && map.len() < MAX_ENTRIES {
        let start = source.u64_near(&NEAR).wrapping_add(u64::from(source.u8()) * PAGE_SIZE);
        let size = match source.below(4) {
            0 => source.u64_near(&[0, 1, u64::MAX, 1 << 63]),
            _ => u64::from(source.u16()) * PAGE_SIZE / 16 + u64::from(source.u8() % 3) * 0x800,
        };
        let kind = match source.below(5) {
            0 | 1 => MemoryKind::Usable,
            2 => MemoryKind::AcpiReclaimable,
            _ => MemoryKind::from_e820(source.u32()),
        };
        map.push(RawRegion { start, size, kind });
    }
    check_usable(&map, low_limit, features)
}

/// Bounds of an entry: `[start, start + size)`, the end clamped to the top of the address space.
fn bounds(entry: &RawRegion) -> (u64, u64) {
    (entry.start, entry.start.saturating_add(entry.size))
}

/// A set of bytes as sorted, disjoint, non-adjacent ranges, rebuilt on every change: an insert
/// splits the list around the new range and merges what it overlaps or touches; a removal
/// maps every range to what is left of it on each side.
#[derive(Default)]
struct SweepSet {
    ranges: Vec<(u64, u64)>,
}

impl SweepSet {
    fn insert(&mut self, start: u64, end: u64) {
        if start >= end {
            return;
        }
        let before = self.ranges.iter().filter(|r| r.1 < start).count();
        let after = self.ranges.iter().filter(|r| r.0 > end).count();
        let touched = &self.ranges[before..self.ranges.len() - after];
        let merged = touched.iter().fold((start, end), |(s, e), r| (s.min(r.0), e.max(r.1)));
        let tail = self.ranges.split_off(self.ranges.len() - after);
        self.ranges.truncate(before);
        self.ranges.push(merged);
        self.ranges.extend(tail);
    }

    fn remove(&mut self, start: u64, end: u64) {
        if start >= end {
            return;
        }
        let pieces = self.ranges.iter().flat_map(|&(s, e)| [(s, e.min(start)), (s.max(end), e)]);
        self.ranges = pieces.filter(|(s, e)| s < e).collect();
    }
}

/// Checks `usable_memory(map, low_limit)` against the rule and the step-by-step model.
pub fn check_usable(map: &[RawRegion], low_limit: u64, features: &mut Features) -> Verdict {
    let got = usable_memory(map, low_limit);
    // The same steps as the module (inserts, then removals, then the low limit), counting how
    // many ranges the set holds after each.
    let mut model = SweepSet::default();
    let mut most = 0;
    for entry in map.iter().filter(|e| e.kind == MemoryKind::Usable) {
        let (start, end) = bounds(entry);
        model.insert(start, end);
        most = most.max(model.ranges.len());
    }
    for entry in map.iter().filter(|e| e.kind != MemoryKind::Usable) {
        let (start, end) = bounds(entry);
        model.remove(start, end);
        most = most.max(model.ranges.len());
    }
    model.remove(0, low_limit);
    most = most.max(model.ranges.len());
    features.note_count("most ranges", most as u64);
    features.note("too fragmented", u64::from(got.is_err()));
    let Ok(set) = got else {
        check!(most > MAX_REGIONS, "TooFragmented with at most {most} ranges at any step");
        return Ok(());
    };
    check!(most <= MAX_REGIONS, "{most} ranges at some step, but no TooFragmented");
    let ranges = set.ranges();
    features.note_count("ranges", ranges.len() as u64);
    for r in ranges {
        check!(r.start < r.end, "empty range {r:x?}");
        check!(r.start % PAGE_SIZE == 0 && r.end % PAGE_SIZE == 0, "unaligned range {r:x?}");
        check!(r.start >= low_limit, "range {r:x?} below the low limit {low_limit:#x}");
    }
    check!(ranges.windows(2).all(|w| w[0].end < w[1].start), "ranges not sorted, disjoint and apart: {ranges:x?}");
    let expected: Vec<(u64, u64)> = model
        .ranges
        .iter()
        .filter_map(|&(s, e)| {
            let start = s.checked_next_multiple_of(PAGE_SIZE)?;
            let end = e - e % PAGE_SIZE;
            (start < end).then_some((start, end))
        })
        .collect();
    let got_pairs: Vec<(u64, u64)> = ranges.iter().map(|r| (r.start, r.end)).collect();
    check_eq!(got_pairs, expected, "usable ranges vs the sweep model");
    check_eq!(set.total(), expected.iter().map(|(s, e)| e - s).sum::<u64>(), "total");

    // The rule itself, at every entry edge and the low limit (and a byte each side).
    let mut probes: Vec<u64> = vec![low_limit, 0, u64::MAX];
    for entry in map.iter().take(16) {
        let (start, end) = bounds(entry);
        for edge in [start, end] {
            probes.extend([edge.wrapping_sub(1), edge, edge.wrapping_add(1)]);
        }
    }
    for probe in probes {
        let frame = probe - probe % PAGE_SIZE;
        let in_result = frame.checked_add(PAGE_SIZE).is_some_and(|end| set.contains(frame, end));
        if in_result != frame_usable(map, low_limit, frame) {
            let near: Vec<_> = map.iter().filter(|e| touches(e, u128::from(frame), u128::from(frame) + 4096)).collect();
            return Err(format!(
                "frame {frame:#x} in the result: {in_result}, by the rule: {}; low limit {low_limit:#x}, \
                 entries touching it: {near:x?}; result {ranges:x?}",
                !in_result
            ));
        }
    }
    Ok(())
}

/// Whether an entry has a byte in `[start, end)`.
fn touches(entry: &RawRegion, start: u128, end: u128) -> bool {
    let (s, t) = bounds(entry);
    s < t && u128::from(s) < end && start < u128::from(t)
}

/// Whether every byte of the frame at `frame` is usable by the module's rule.
fn frame_usable(map: &[RawRegion], low_limit: u64, frame: u64) -> bool {
    let (start, end) = (u128::from(frame), u128::from(frame) + u128::from(PAGE_SIZE));
    if start < u128::from(low_limit) {
        return false;
    }
    let touches = |e: &RawRegion| touches(e, start, end);
    if map.iter().any(|e| e.kind != MemoryKind::Usable && touches(e)) {
        return false;
    }
    // Covered by the union of usable entries: sweep their pieces inside the frame.
    let mut pieces: Vec<(u128, u128)> = map
        .iter()
        .filter(|e| e.kind == MemoryKind::Usable && touches(e))
        .map(|e| {
            let (s, t) = bounds(e);
            (u128::from(s).max(start), u128::from(t).min(end))
        })
        .collect();
    pieces.sort_unstable();
    let mut covered_to = start;
    for (s, t) in pieces {
        if s > covered_to {
            return false;
        }
        covered_to = covered_to.max(t);
    }
    covered_to >= end
}
