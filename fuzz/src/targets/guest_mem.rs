//! `guest_mem`: a guest's memory map and validation of the pointers it passes the kernel.
//!
//! Each input builds a map with a few `add`s (page-aligned or not, overlapping or not, near the
//! null page and the top of the user half), then asks `validate` and `readable_prefix` about
//! ranges near the regions' edges. A model kept here (an unsorted list of regions; a pointer
//! is checked byte range by byte range with a "which region holds this address" lookup) must
//! give the same answer, reason included. The map must stay sorted and disjoint; an accepted
//! slice lies entirely in regions that allow the access; `readable_prefix` agrees with
//! `validate` (the prefix validates, one byte more does not).

use crate::engine::{Target, Verdict};
use crate::features::Features;
use crate::source::Source;
use crate::{check, check_eq};
use hypercall_abi::layout::{PAGE_SIZE, USER_LIMIT};
use kernel_core::guest::mem::{
    readable_prefix, Access, BadPointer, BadPointerReason, GuestMemoryMap, MapError, Region, UserSlice, ValidSlice,
    MAX_REGIONS,
};

pub const TARGET: Target = Target {
    name: "guest_mem",
    checks: "map stays sorted and disjoint and add() errors match a model; validate() verdicts and reasons \
             match a region-by-region model; readable_prefix() agrees with the model and with validate()",
    max_len: 1024,
    dictionary: &[],
    seeds,
    run,
};

fn seeds(_: &crate::real::RealInputs) -> Vec<Vec<u8>> {
    vec![vec![3, 0, 0, 2, 0, 4, 1, 1, 0, 5, 2, 0, 0, 0, 0, 0, 7, 0, 0, 0, 0], vec![9; 128], (0..=255u8).rev().collect()]
}

/// Bases regions and pointers are placed around: low memory (with the null page), the vNIC
/// and image areas, the heap, the stack top, and the end of the user half.
const BASES: [u64; 6] = [0, 0x20_0000, 0x40_0000, 0x1000_0000, 0x7fff_0000, USER_LIMIT - 64 * PAGE_SIZE];

fn access(source: &mut Source) -> Access {
    let bits = source.u8();
    Access { read: bits & 1 != 0, write: bits & 2 != 0, execute: bits & 4 != 0 }
}

/// A page-ish address: a base, a page count and a small offset (often 0), or anything.
fn address(source: &mut Source) -> u64 {
    match source.below(8) {
        0 => source.u64_near(&[0, 1, PAGE_SIZE, USER_LIMIT, USER_LIMIT - 1, u64::MAX]),
        selector => {
            let base = source.pick(&BASES);
            let pages = u64::from(source.u8() % 72);
            let offset = if selector < 5 { 0 } else { source.u64_near(&[0, 1, PAGE_SIZE - 1, PAGE_SIZE + 1]) };
            base.wrapping_add(pages * PAGE_SIZE).wrapping_add(offset)
        }
    }
}

fn length(source: &mut Source) -> u64 {
    match source.below(4) {
        0 => source.u64_near(&[0, 1, u64::MAX, USER_LIMIT, 1 << 63]),
        _ => u64::from(source.u8() % 20) * PAGE_SIZE + source.u64_near(&[0, 1, PAGE_SIZE - 1]) % PAGE_SIZE,
    }
}

/// The model's map: regions in insertion order.
#[derive(Default)]
struct Model {
    regions: Vec<Region>,
}

impl Model {
    fn add(&mut self, start: u64, end: u64, access: Access) -> Result<(), MapError> {
        if !start.is_multiple_of(PAGE_SIZE) || !end.is_multiple_of(PAGE_SIZE) {
            return Err(MapError::Unaligned);
        }
        if end <= start {
            return Err(MapError::Empty);
        }
        if start < PAGE_SIZE || end > USER_LIMIT {
            return Err(MapError::OutsideUserHalf);
        }
        if self.regions.iter().any(|r| start.max(r.start) < end.min(r.end)) {
            return Err(MapError::Overlaps);
        }
        if self.regions.len() == MAX_REGIONS {
            return Err(MapError::Full);
        }
        self.regions.push(Region { start, end, access });
        Ok(())
    }

    fn holding(&self, addr: u64) -> Option<&Region> {
        self.regions.iter().find(|r| r.start <= addr && addr < r.end)
    }

    /// The first problem in `[addr, end)`, walking region by region; `None` if all is mapped
    /// with `need`.
    fn first_problem(&self, addr: u64, end: u64, need: Access) -> Option<BadPointerReason> {
        let mut at = addr;
        while at < end {
            match self.holding(at) {
                None => return Some(BadPointerReason::Unmapped),
                Some(r) if !r.access.allows(need) => return Some(BadPointerReason::NoPermission),
                Some(r) => at = r.end,
            }
        }
        None
    }

    fn validate(&self, addr: u64, len: u64, need: Access) -> Result<(), BadPointerReason> {
        if len > 0 && addr < PAGE_SIZE {
            return Err(BadPointerReason::Null);
        }
        let end = u128::from(addr) + u128::from(len);
        if end > u128::from(u64::MAX) {
            return Err(BadPointerReason::WrapsAround);
        }
        if end > u128::from(USER_LIMIT) {
            return Err(BadPointerReason::KernelHalf);
        }
        self.first_problem(addr, end as u64, need).map_or(Ok(()), Err)
    }

    fn readable_prefix(&self, addr: u64, max_len: u64, need: Access) -> u64 {
        let end = (u128::from(addr) + u128::from(max_len)).min(u128::from(USER_LIMIT)) as u64;
        let mut at = addr;
        while at < end {
            match self.holding(at) {
                Some(r) if r.access.allows(need) => at = r.end,
                _ => break,
            }
        }
        at.min(end).saturating_sub(addr)
    }
}

fn run(input: &[u8], features: &mut Features) -> Verdict {
    let mut source = Source::new(input);
    let mut map = GuestMemoryMap::new();
    let mut model = Model::default();
    let adds = source.below(MAX_REGIONS + 3);
    for _ in 0..adds {
        let start = address(&mut source);
        let end = if source.below(4) == 0 { address(&mut source) } else { start.wrapping_add(length(&mut source)) };
        let access = access(&mut source);
        let got = map.add(start, end, access);
        features.note("add", got.map_or_else(|e| 1 + e as u64, |()| 0));
        check_eq!(got, model.add(start, end, access), "add({start:#x}, {end:#x})");
        if let Err(e) = got {
            let _ = e.to_string();
        }
    }
    let regions = map.regions();
    features.note_count("regions", regions.len() as u64);
    check_eq!(regions.len(), model.regions.len(), "region count");
    check!(regions.windows(2).all(|w| w[0].end <= w[1].start), "regions not sorted and disjoint: {regions:x?}");
    let mut expected = model.regions.clone();
    expected.sort_by_key(|r| r.start);
    check_eq!(regions, expected.as_slice(), "regions");
    check_eq!(map.total_bytes(), expected.iter().map(|r| r.end - r.start).sum::<u64>(), "total bytes");

    while !source.is_empty() {
        let addr = address(&mut source);
        let len = length(&mut source);
        let need = access(&mut source);
        let got = UserSlice::new(addr, len).validate(&map, need);
        let outcome = got.map_or_else(|e| 1 + e.reason as u64, |_| 0);
        let need_bits = u64::from(need.read) | u64::from(need.write) << 1 | u64::from(need.execute) << 2;
        features.note("validate", outcome);
        features.note("validate with access", outcome * 8 + need_bits);
        check_eq!(
            got.map(|_| ()).map_err(|e| e.reason),
            model.validate(addr, len, need),
            "validate({addr:#x}, {len:#x}, {need})"
        );
        match got {
            Ok(slice) => check_valid(&map, slice, addr, len, need, features)?,
            Err(BadPointer { addr: a, len: l, reason }) => {
                check!((a, l) == (addr, len), "error names {a:#x}+{l} for {addr:#x}+{len}");
                let _ = BadPointer { addr, len, reason }.to_string();
            }
        }
        let prefix = readable_prefix(&map, addr, len, need);
        check_eq!(prefix, model.readable_prefix(addr, len, need), "readable_prefix({addr:#x}, {len:#x}, {need})");
        check!(prefix <= len, "prefix {prefix} longer than asked {len}");
        features.note(
            "prefix",
            if prefix == 0 {
                0
            } else if prefix < len {
                1
            } else {
                2
            },
        );
        if prefix > 0 {
            check!(UserSlice::new(addr, prefix).validate(&map, need).is_ok(), "the readable prefix does not validate");
        }
        let one_more = prefix.checked_add(1).filter(|&n| n <= len);
        if let Some(n) = one_more.filter(|&n| addr.checked_add(n).is_some_and(|end| end <= USER_LIMIT)) {
            check!(
                UserSlice::new(addr, n).validate(&map, need).is_err(),
                "one byte past the readable prefix validates"
            );
        }
    }
    Ok(())
}

/// An accepted slice: every byte in a region that allows `need`.
fn check_valid(
    map: &GuestMemoryMap,
    slice: ValidSlice,
    addr: u64,
    len: u64,
    need: Access,
    features: &mut Features,
) -> Verdict {
    check!((slice.addr(), slice.len()) == (addr, len), "valid slice changed its range");
    check_eq!(slice.end(), addr + len, "slice end");
    check!(slice.end() <= USER_LIMIT, "slice ends in the kernel half");
    let (mut covered, mut spanned) = (0u64, 0u64);
    for r in map.regions() {
        let (start, end) = (r.start.max(addr), r.end.min(slice.end()));
        if start < end {
            check!(r.access.allows(need), "slice overlaps region {r:x?} without {need}");
            covered += end - start;
            spanned += 1;
        }
    }
    check_eq!(covered, len, "bytes of the slice covered by regions");
    features.note_count("regions spanned", spanned);
    Ok(())
}
