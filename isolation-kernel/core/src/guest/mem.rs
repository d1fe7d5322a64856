//! A guest's user memory map, and validation of the pointers a guest hands the kernel.
//!
//! As in Hubris (`umem.rs`), a pointer from a guest is an allegation: an address and length
//! taken from its registers ([`UserSlice`]). Before the kernel touches guest memory the
//! allegation is checked against the map of what the guest really has, and only a
//! [`ValidSlice`], which nothing but [`UserSlice::validate`] can make, stands for memory that
//! is known to be mapped with the needed access. The check holds as long as the map does not
//! change; the kernel validates and uses a slice within one hypercall, with the guest stopped.

use hypercall_abi::layout::{PAGE_SIZE, USER_LIMIT};

/// Most regions a guest map holds (a guest has a handful: boot info, image segments, heap,
/// stack, vNIC rings).
pub const MAX_REGIONS: usize = 32;

/// What a region allows, or what an access needs.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct Access {
    pub read: bool,
    pub write: bool,
    pub execute: bool,
}

impl Access {
    pub const READ: Access = Access { read: true, write: false, execute: false };
    pub const READ_WRITE: Access = Access { read: true, write: true, execute: false };
    pub const READ_EXECUTE: Access = Access { read: true, write: false, execute: true };

    /// Whether every permission in `need` is in `self`.
    pub const fn allows(self, need: Access) -> bool {
        (self.read || !need.read) && (self.write || !need.write) && (self.execute || !need.execute)
    }
}

impl core::fmt::Display for Access {
    /// `rwx` style, with `-` for a missing permission.
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        let flag = |on, c| if on { c } else { '-' };
        write!(f, "{}{}{}", flag(self.read, 'r'), flag(self.write, 'w'), flag(self.execute, 'x'))
    }
}

/// A page-aligned, half-open range `[start, end)` of guest memory.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct Region {
    pub start: u64,
    pub end: u64,
    pub access: Access,
}

impl Region {
    pub fn len(&self) -> u64 {
        self.end.saturating_sub(self.start)
    }

    pub fn is_empty(&self) -> bool {
        self.end <= self.start
    }

    pub fn contains(&self, addr: u64) -> bool {
        self.start <= addr && addr < self.end
    }
}

/// Why a region could not be added.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MapError {
    /// Start or end is not a multiple of the page size.
    Unaligned,
    /// `end <= start`.
    Empty,
    /// The region touches the null page or reaches the kernel half.
    OutsideUserHalf,
    /// The region overlaps one already in the map.
    Overlaps,
    /// The map already has [`MAX_REGIONS`] regions.
    Full,
}

impl core::fmt::Display for MapError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.write_str(match self {
            MapError::Unaligned => "region is not page-aligned",
            MapError::Empty => "region is empty",
            MapError::OutsideUserHalf => "region is outside the user half (or in the null page)",
            MapError::Overlaps => "region overlaps an existing region",
            MapError::Full => "guest memory map is full",
        })
    }
}

/// The regions a guest may access, sorted by address and disjoint.
#[derive(Clone, Debug)]
pub struct GuestMemoryMap {
    regions: [Region; MAX_REGIONS],
    len: usize,
}

impl Default for GuestMemoryMap {
    fn default() -> Self {
        Self::new()
    }
}

impl GuestMemoryMap {
    pub const fn new() -> Self {
        const EMPTY: Region = Region { start: 0, end: 0, access: Access { read: false, write: false, execute: false } };
        GuestMemoryMap { regions: [EMPTY; MAX_REGIONS], len: 0 }
    }

    /// Adds `[start, end)` with `access`. Adjacent regions are kept separate (they may differ
    /// in access); a slice may still span them.
    pub fn add(&mut self, start: u64, end: u64, access: Access) -> Result<(), MapError> {
        if !start.is_multiple_of(PAGE_SIZE) || !end.is_multiple_of(PAGE_SIZE) {
            return Err(MapError::Unaligned);
        }
        if end <= start {
            return Err(MapError::Empty);
        }
        if start < PAGE_SIZE || end > USER_LIMIT {
            return Err(MapError::OutsideUserHalf);
        }
        if self.regions().iter().any(|r| r.start < end && start < r.end) {
            return Err(MapError::Overlaps);
        }
        if self.len >= MAX_REGIONS {
            return Err(MapError::Full);
        }
        let at = self.regions().iter().take_while(|r| r.end <= start).count();
        // Shift the regions from `at` up by one (the unused entry at `len` comes round to `at`).
        let Some(tail) = self.regions.get_mut(at..=self.len) else { return Err(MapError::Full) };
        tail.rotate_right(1);
        if let Some(slot) = tail.first_mut() {
            *slot = Region { start, end, access };
        }
        // Below MAX_REGIONS (checked above), so this never saturates.
        self.len = self.len.saturating_add(1);
        Ok(())
    }

    /// The regions, sorted by address.
    pub fn regions(&self) -> &[Region] {
        self.regions.get(..self.len).unwrap_or(&[])
    }

    /// Bytes mapped in all regions.
    pub fn total_bytes(&self) -> u64 {
        self.regions().iter().map(Region::len).sum()
    }
}

/// An address and length as a guest passed them: not yet checked, not to be dereferenced.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct UserSlice {
    addr: u64,
    len: u64,
}

impl UserSlice {
    /// Any values are accepted here; checking is [`UserSlice::validate`]'s job.
    pub const fn new(addr: u64, len: u64) -> Self {
        UserSlice { addr, len }
    }

    pub const fn addr(&self) -> u64 {
        self.addr
    }

    pub const fn len(&self) -> u64 {
        self.len
    }

    pub const fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Checks that every byte is mapped in `map` with at least `need` access.
    pub fn validate(&self, map: &GuestMemoryMap, need: Access) -> Result<ValidSlice, BadPointer> {
        let fail = |reason| Err(BadPointer { addr: self.addr, len: self.len, reason });
        if self.len > 0 && self.addr < PAGE_SIZE {
            return fail(BadPointerReason::Null);
        }
        let Some(end) = self.addr.checked_add(self.len) else {
            return fail(BadPointerReason::WrapsAround);
        };
        if end > USER_LIMIT {
            return fail(BadPointerReason::KernelHalf);
        }
        // Walk the sorted regions from `addr`; each must start where the last one ended.
        let mut cursor = self.addr;
        for region in map.regions() {
            if cursor >= end {
                break;
            }
            if region.end <= cursor {
                continue;
            }
            if region.start > cursor {
                return fail(BadPointerReason::Unmapped);
            }
            if !region.access.allows(need) {
                return fail(BadPointerReason::NoPermission);
            }
            cursor = region.end;
        }
        if cursor < end {
            return fail(BadPointerReason::Unmapped);
        }
        Ok(ValidSlice { addr: self.addr, len: self.len })
    }
}

/// Guest memory checked to be mapped with the access it was validated for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ValidSlice {
    addr: u64,
    len: u64,
}

impl ValidSlice {
    pub const fn addr(&self) -> u64 {
        self.addr
    }

    pub const fn len(&self) -> u64 {
        self.len
    }

    pub const fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// One past the last byte (cannot overflow: validated slices lie below `USER_LIMIT`).
    pub const fn end(&self) -> u64 {
        self.addr.saturating_add(self.len)
    }
}

/// What is wrong with a guest pointer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BadPointerReason {
    /// A non-empty slice starting in the null page.
    Null,
    /// `addr + len` overflows.
    WrapsAround,
    /// The slice reaches past the user half.
    KernelHalf,
    /// Some byte is in no region.
    Unmapped,
    /// Every byte is mapped, but not all with the access needed.
    NoPermission,
}

/// A rejected guest pointer, with what the guest passed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BadPointer {
    pub addr: u64,
    pub len: u64,
    pub reason: BadPointerReason,
}

impl core::fmt::Display for BadPointer {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        let what = match self.reason {
            BadPointerReason::Null => "is null",
            BadPointerReason::WrapsAround => "wraps around the address space",
            BadPointerReason::KernelHalf => "reaches into the kernel half",
            BadPointerReason::Unmapped => "is not mapped",
            BadPointerReason::NoPermission => "is mapped without the access needed",
        };
        write!(f, "pointer {:#x} len {} {what}", self.addr, self.len)
    }
}

/// How many bytes from `addr` on (at most `max_len`) are mapped with `need`, without a gap:
/// for reading an instruction that may straddle the end of a mapping.
pub fn readable_prefix(map: &GuestMemoryMap, addr: u64, max_len: u64, need: Access) -> u64 {
    let end = addr.saturating_add(max_len).min(USER_LIMIT);
    let mut cursor = addr;
    for region in map.regions() {
        if cursor >= end {
            break;
        }
        if region.end <= cursor {
            continue;
        }
        if region.start > cursor || !region.access.allows(need) {
            break;
        }
        cursor = region.end;
    }
    cursor.min(end).saturating_sub(addr)
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing, clippy::arithmetic_side_effects)]
mod tests {
    use super::*;

    const P: u64 = PAGE_SIZE;
    const NONE: Access = Access { read: false, write: false, execute: false };
    const WRITE_ONLY: Access = Access { read: false, write: true, execute: false };
    const EXECUTE: Access = Access { read: false, write: false, execute: true };

    /// Text at 0x40_0000 (2 pages, r-x), data right after it (1 page, rw-), a hole of one
    /// page, then the heap (4 pages, rw-); a read-only page at the top of the user half.
    fn sample() -> GuestMemoryMap {
        let mut map = GuestMemoryMap::new();
        map.add(0x40_0000 + 2 * P, 0x40_0000 + 3 * P, Access::READ_WRITE).unwrap();
        map.add(0x40_0000, 0x40_0000 + 2 * P, Access::READ_EXECUTE).unwrap();
        map.add(0x40_0000 + 4 * P, 0x40_0000 + 8 * P, Access::READ_WRITE).unwrap();
        map.add(USER_LIMIT - P, USER_LIMIT, Access::READ).unwrap();
        map
    }

    fn check(map: &GuestMemoryMap, addr: u64, len: u64, need: Access) -> Result<ValidSlice, BadPointerReason> {
        UserSlice::new(addr, len).validate(map, need).map_err(|e| {
            assert_eq!((e.addr, e.len), (addr, len));
            e.reason
        })
    }

    #[test]
    fn access_allows() {
        assert!(Access::READ_WRITE.allows(Access::READ));
        assert!(Access::READ_WRITE.allows(Access::READ_WRITE));
        assert!(!Access::READ.allows(Access::READ_WRITE));
        assert!(!Access::READ_WRITE.allows(Access::READ_EXECUTE));
        assert!(Access::READ_EXECUTE.allows(EXECUTE));
        assert!(NONE.allows(NONE));
        assert!(!NONE.allows(Access::READ));
        assert!(WRITE_ONLY.allows(WRITE_ONLY) && !WRITE_ONLY.allows(Access::READ));
        assert_eq!(Access::READ_EXECUTE.to_string(), "r-x");
        assert_eq!(Access::READ_WRITE.to_string(), "rw-");
    }

    #[test]
    fn add_keeps_regions_sorted() {
        let map = sample();
        let starts: Vec<u64> = map.regions().iter().map(|r| r.start).collect();
        assert_eq!(starts, vec![0x40_0000, 0x40_2000, 0x40_4000, USER_LIMIT - P]);
        assert_eq!(map.regions()[0].access, Access::READ_EXECUTE);
        assert_eq!(map.total_bytes(), 8 * P);
        assert_eq!(GuestMemoryMap::new().total_bytes(), 0);
        assert!(GuestMemoryMap::default().regions().is_empty());
    }

    #[test]
    fn add_rejects_bad_regions() {
        let mut map = sample();
        let rw = Access::READ_WRITE;
        assert_eq!(map.add(0x1000_0001, 0x1000_2000, rw), Err(MapError::Unaligned));
        assert_eq!(map.add(0x1000_0000, 0x1000_2001, rw), Err(MapError::Unaligned));
        assert_eq!(map.add(0x1000_0000, 0x1000_0000, rw), Err(MapError::Empty));
        assert_eq!(map.add(0x1000_2000, 0x1000_0000, rw), Err(MapError::Empty));
        assert_eq!(map.add(0, P, rw), Err(MapError::OutsideUserHalf));
        assert_eq!(map.add(USER_LIMIT, USER_LIMIT + P, rw), Err(MapError::OutsideUserHalf));
        assert_eq!(map.add(USER_LIMIT - 2 * P, USER_LIMIT + P, rw), Err(MapError::OutsideUserHalf));
        assert_eq!(map.add(0xffff_8000_0000_0000, 0xffff_8000_0000_0000 + P, rw), Err(MapError::OutsideUserHalf));
        // Overlaps: same range, containing, contained, straddling either end.
        for (start, end) in [
            (0x40_0000, 0x40_2000),
            (0x3f_0000, 0x41_0000),
            (0x40_1000, 0x40_2000),
            (0x3f_f000, 0x40_1000),
            (0x40_2000, 0x40_4000), // data page + the hole
        ] {
            assert_eq!(map.add(start, end, rw), Err(MapError::Overlaps), "{start:#x}..{end:#x}");
        }
        // Nothing was changed by the failures; the hole can still be filled exactly.
        assert_eq!(map.regions().len(), 4);
        map.add(0x40_3000, 0x40_4000, rw).unwrap();
        assert_eq!(map.regions()[2], Region { start: 0x40_3000, end: 0x40_4000, access: rw });
        assert_eq!(map.add(P, 2 * P, rw), Ok(()));
        assert_eq!(map.regions()[0].start, P);
    }

    #[test]
    fn add_until_full() {
        let mut map = GuestMemoryMap::new();
        // Added in descending order to exercise insertion at the front.
        for i in (0..MAX_REGIONS as u64).rev() {
            map.add((i + 1) * 2 * P, (i + 1) * 2 * P + P, Access::READ).unwrap();
        }
        assert_eq!(map.add(0x100_0000, 0x100_1000, Access::READ), Err(MapError::Full));
        let regions = map.regions();
        assert_eq!(regions.len(), MAX_REGIONS);
        assert!(regions.windows(2).all(|w| w[0].end < w[1].start));
    }

    #[test]
    fn null_pointers() {
        let map = sample();
        assert_eq!(check(&map, 0, 16, Access::READ), Err(BadPointerReason::Null));
        assert_eq!(check(&map, P - 1, 1, Access::READ), Err(BadPointerReason::Null));
        assert_eq!(check(&map, 8, u64::MAX, Access::READ), Err(BadPointerReason::Null));
        // An empty slice at null is fine (nothing will be touched).
        assert_eq!(check(&map, 0, 0, Access::READ).unwrap().len(), 0);
        // The page after the null page is not null, just unmapped here.
        assert_eq!(check(&map, P, 1, Access::READ), Err(BadPointerReason::Unmapped));
    }

    #[test]
    fn wrap_around_and_kernel_half() {
        let map = sample();
        assert_eq!(check(&map, 0x40_0000, u64::MAX, Access::READ), Err(BadPointerReason::WrapsAround));
        assert_eq!(check(&map, u64::MAX, 2, Access::READ), Err(BadPointerReason::WrapsAround));
        assert_eq!(check(&map, 0xffff_8000_0000_0000, 8, Access::READ), Err(BadPointerReason::KernelHalf));
        assert_eq!(check(&map, 0xffff_ffff_8000_0000, 0, Access::READ), Err(BadPointerReason::KernelHalf));
        assert_eq!(check(&map, USER_LIMIT - 8, 9, Access::READ), Err(BadPointerReason::KernelHalf));
        assert_eq!(check(&map, USER_LIMIT - 8, 8, Access::READ).unwrap().end(), USER_LIMIT);
        assert_eq!(check(&map, USER_LIMIT, 1, Access::READ), Err(BadPointerReason::KernelHalf));
        // Empty at the very end of the user half: allowed, like a one-past-the-end pointer.
        assert!(check(&map, USER_LIMIT, 0, Access::READ).is_ok());
        assert_eq!(check(&map, USER_LIMIT + 1, 0, Access::READ), Err(BadPointerReason::KernelHalf));
    }

    #[test]
    fn empty_slices_anywhere_in_the_user_half() {
        let map = sample();
        for addr in [0, 1, P, 0x40_3000, 0x40_0000, 0x7fff_ffff_0000] {
            let valid = check(&map, addr, 0, Access::READ_WRITE).unwrap();
            assert_eq!((valid.addr(), valid.len(), valid.is_empty()), (addr, 0, true));
        }
    }

    #[test]
    fn edges_of_a_region() {
        let map = sample();
        let data_end = 0x40_3000;
        // The last byte of the data page is fine; one more byte runs into the hole.
        let valid = check(&map, data_end - 1, 1, Access::READ_WRITE).unwrap();
        assert_eq!((valid.addr(), valid.len(), valid.end()), (data_end - 1, 1, data_end));
        assert_eq!(check(&map, data_end - 1, 2, Access::READ_WRITE), Err(BadPointerReason::Unmapped));
        assert_eq!(check(&map, data_end, 1, Access::READ), Err(BadPointerReason::Unmapped));
        // The first byte of the text and one byte before it.
        assert!(check(&map, 0x40_0000, 1, Access::READ).is_ok());
        assert_eq!(check(&map, 0x3f_ffff, 1, Access::READ), Err(BadPointerReason::Unmapped));
        assert_eq!(check(&map, 0x3f_ffff, 2, Access::READ), Err(BadPointerReason::Unmapped));
        // The whole heap, and the whole heap plus one byte.
        assert!(check(&map, 0x40_4000, 4 * P, Access::READ_WRITE).is_ok());
        assert_eq!(check(&map, 0x40_4000, 4 * P + 1, Access::READ_WRITE), Err(BadPointerReason::Unmapped));
    }

    #[test]
    fn hole_between_two_regions() {
        let map = sample();
        // Starts in data, crosses the hole, ends in the heap.
        assert_eq!(check(&map, 0x40_2800, 0x2000, Access::READ), Err(BadPointerReason::Unmapped));
        // Entirely in the hole.
        assert_eq!(check(&map, 0x40_3100, 16, Access::READ), Err(BadPointerReason::Unmapped));
        // Far away from everything.
        assert_eq!(check(&map, 0x5000_0000, 16, Access::READ), Err(BadPointerReason::Unmapped));
        assert_eq!(check(&GuestMemoryMap::new(), 0x40_0000, 1, Access::READ), Err(BadPointerReason::Unmapped));
    }

    #[test]
    fn spanning_adjacent_regions() {
        let map = sample();
        // Text (r-x) and data (rw-) are adjacent: reading across them is fine...
        let valid = check(&map, 0x40_1ff0, 0x20, Access::READ).unwrap();
        assert_eq!((valid.addr(), valid.len()), (0x40_1ff0, 0x20));
        assert!(check(&map, 0x40_0000, 3 * P, Access::READ).is_ok());
        // ...writing is not, because the text part is read-only...
        assert_eq!(check(&map, 0x40_1ff0, 0x20, Access::READ_WRITE), Err(BadPointerReason::NoPermission));
        // ...and the data part may not be executed.
        assert_eq!(check(&map, 0x40_1ff0, 0x20, EXECUTE), Err(BadPointerReason::NoPermission));
        assert!(check(&map, 0x40_1ff0, 0x10, EXECUTE).is_ok());
        // Three adjacent regions, once the hole is filled.
        let mut map = sample();
        map.add(0x40_3000, 0x40_4000, Access::READ_WRITE).unwrap();
        assert!(check(&map, 0x40_2000, 6 * P, Access::READ_WRITE).is_ok());
        assert!(check(&map, 0x40_0000, 8 * P, Access::READ).is_ok());
    }

    #[test]
    fn permissions() {
        let map = sample();
        assert_eq!(check(&map, 0x40_0000, 8, Access::READ_WRITE), Err(BadPointerReason::NoPermission));
        assert_eq!(check(&map, 0x40_0000, 8, WRITE_ONLY), Err(BadPointerReason::NoPermission));
        assert_eq!(check(&map, USER_LIMIT - P, 8, WRITE_ONLY), Err(BadPointerReason::NoPermission));
        assert!(check(&map, 0x40_2000, 8, WRITE_ONLY).is_ok());
        assert!(check(&map, 0x40_0000, 8, Access::READ_EXECUTE).is_ok());
        // The first problem from the start of the slice is reported.
        assert_eq!(check(&map, 0x40_2ff0, 0x20, Access::READ_EXECUTE), Err(BadPointerReason::NoPermission));
        assert_eq!(check(&map, 0x40_1ff0, 0x2000, Access::READ_WRITE), Err(BadPointerReason::NoPermission));
    }

    #[test]
    fn readable_prefix_at_edges() {
        let map = sample();
        let r = Access::READ;
        // An instruction two bytes before the end of the data page: only two bytes are there.
        assert_eq!(readable_prefix(&map, 0x40_2ffe, 15, r), 2);
        assert_eq!(readable_prefix(&map, 0x40_2fff, 15, r), 1);
        assert_eq!(readable_prefix(&map, 0x40_3000, 15, r), 0);
        // Well inside, and across adjacent regions.
        assert_eq!(readable_prefix(&map, 0x40_1000, 15, r), 15);
        assert_eq!(readable_prefix(&map, 0x40_1ffe, 15, r), 15);
        // Across adjacent regions where the second lacks the access.
        assert_eq!(readable_prefix(&map, 0x40_1ffe, 15, Access::READ_EXECUTE), 2);
        assert_eq!(readable_prefix(&map, 0x40_2000, 15, Access::READ_EXECUTE), 0);
        // Null page, unmapped, kernel half, zero length, and the top of the address space.
        assert_eq!(readable_prefix(&map, 0, 15, r), 0);
        assert_eq!(readable_prefix(&map, 0x5000_0000, 15, r), 0);
        assert_eq!(readable_prefix(&map, 0xffff_8000_0000_0000, 15, r), 0);
        assert_eq!(readable_prefix(&map, u64::MAX - 3, 15, r), 0);
        assert_eq!(readable_prefix(&map, 0x40_1000, 0, r), 0);
        assert_eq!(readable_prefix(&map, USER_LIMIT - 4, 15, r), 4);
        assert_eq!(readable_prefix(&map, 0x40_0000, u64::MAX, r), 3 * P);
    }

    #[test]
    fn readable_prefix_agrees_with_validate() {
        let map = sample();
        let addrs = [0, 0x40_0000 - 3, 0x40_0000, 0x40_1ffa, 0x40_2ffa, 0x40_3ffa, 0x40_7ff8, USER_LIMIT - 10];
        for addr in addrs {
            for need in [Access::READ, Access::READ_WRITE, Access::READ_EXECUTE] {
                let n = readable_prefix(&map, addr, 15, need);
                assert!(n <= 15);
                if n > 0 {
                    assert!(check(&map, addr, n, need).is_ok(), "{addr:#x} {n}");
                }
                if n < 15 {
                    assert!(check(&map, addr, n + 1, need).is_err(), "{addr:#x} {n}");
                }
            }
        }
    }

    #[test]
    fn bad_pointer_display() {
        let map = sample();
        let e = UserSlice::new(0, 16).validate(&map, Access::READ).unwrap_err();
        assert_eq!(e.to_string(), "pointer 0x0 len 16 is null");
        let e = UserSlice::new(0x40_0000, 4).validate(&map, Access::READ_WRITE).unwrap_err();
        assert_eq!(e.to_string(), "pointer 0x400000 len 4 is mapped without the access needed");
        let e = UserSlice::new(0x40_3000, 1).validate(&map, Access::READ).unwrap_err();
        assert_eq!(e.to_string(), "pointer 0x403000 len 1 is not mapped");
        let e = UserSlice::new(u64::MAX, 1).validate(&map, Access::READ).unwrap_err();
        assert!(e.to_string().ends_with("wraps around the address space"));
        assert_eq!(MapError::Overlaps.to_string(), "region overlaps an existing region");
    }

    #[test]
    fn user_slice_accessors() {
        let s = UserSlice::new(0xdead_beef, 7);
        assert_eq!((s.addr(), s.len(), s.is_empty()), (0xdead_beef, 7, false));
        assert!(UserSlice::new(1, 0).is_empty());
    }
}
