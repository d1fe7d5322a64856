//! A PCI function's configuration space as the kernel read it (one 256-byte snapshot, taken
//! through port I/O by the driver), and what it says: base address registers, the capability
//! list, MSI-X. A device is not a guest, but its answers still pass through checked arithmetic
//! and bounded loops, so a confused device (or VMM) fails the probe instead of the kernel.

/// Bytes of the conventional configuration space (the part the 0xcf8/0xcfc mechanism reaches).
pub const CONFIG_SPACE_BYTES: usize = 256;
/// Offset of the first base address register.
pub const BAR0_OFFSET: u8 = 0x10;
/// Base address registers of a type-0 (endpoint) header.
pub const BAR_COUNT: usize = 6;

const STATUS_OFFSET: usize = 0x06;
const STATUS_HAS_CAPABILITIES: u16 = 1 << 4;
const CAPABILITIES_POINTER: usize = 0x34;
/// Capabilities live after the 64-byte standard header.
const FIRST_CAPABILITY_OFFSET: u8 = 0x40;
/// More capabilities than fit in the space (each is at least 4 bytes) means a cycle.
const MAX_CAPABILITIES: usize = (CONFIG_SPACE_BYTES - FIRST_CAPABILITY_OFFSET as usize) / 4;
pub const CAPABILITY_VENDOR: u8 = 0x09;
pub const CAPABILITY_MSIX: u8 = 0x11;
const MSIX_ENTRY_BYTES: u64 = 16;

const BAR_IS_IO: u32 = 1;
const BAR_TYPE_MASK: u32 = 0x6;
const BAR_TYPE_64: u32 = 0x4;
const BAR_IO_FLAGS: u32 = 0x3;
const BAR_MEMORY_FLAGS: u32 = 0xf;

/// A snapshot of a function's configuration space.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ConfigSpace(pub [u8; CONFIG_SPACE_BYTES]);

impl ConfigSpace {
    /// Builds the snapshot from the 64 dwords the configuration mechanism reads.
    pub fn from_dwords(dwords: &[u32; CONFIG_SPACE_BYTES / 4]) -> ConfigSpace {
        let mut bytes = [0; CONFIG_SPACE_BYTES];
        for (chunk, dword) in bytes.chunks_exact_mut(4).zip(dwords) {
            chunk.copy_from_slice(&dword.to_le_bytes());
        }
        ConfigSpace(bytes)
    }

    pub fn u8(&self, offset: usize) -> Option<u8> {
        self.0.get(offset).copied()
    }

    pub fn u16(&self, offset: usize) -> Option<u16> {
        Some(u16::from_le_bytes(self.0.get(offset..offset.checked_add(2)?)?.try_into().ok()?))
    }

    pub fn u32(&self, offset: usize) -> Option<u32> {
        Some(u32::from_le_bytes(self.0.get(offset..offset.checked_add(4)?)?.try_into().ok()?))
    }

    /// The capability list as `(id, offset)`, in the device's order. A pointer into the
    /// standard header or past the space ends the walk, and so does a cycle (the walk never
    /// takes more steps than capabilities fit in the space).
    pub fn capabilities(&self) -> impl Iterator<Item = (u8, u8)> + '_ {
        let has_list = self.u16(STATUS_OFFSET).is_some_and(|s| s & STATUS_HAS_CAPABILITIES != 0);
        let first = if has_list { self.u8(CAPABILITIES_POINTER).map(|p| p & 0xfc) } else { None };
        let mut next = first;
        core::iter::from_fn(move || {
            let offset = next.filter(|&o| o >= FIRST_CAPABILITY_OFFSET)?;
            let id = self.u8(usize::from(offset))?;
            next = self.u8(usize::from(offset).checked_add(1)?).map(|p| p & 0xfc);
            Some((id, offset))
        })
        .take(MAX_CAPABILITIES)
    }

    /// The offset of the first capability with `id`.
    pub fn find_capability(&self, id: u8) -> Option<u8> {
        self.capabilities().find(|&(found, _)| found == id).map(|(_, offset)| offset)
    }
}

/// A base address register as the kernel found it (after assigning any the firmware left empty).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum Bar {
    /// Unimplemented, or the upper half of a 64-bit BAR.
    #[default]
    None,
    Io {
        base: u32,
        size: u32,
    },
    Memory {
        base: u64,
        size: u64,
        /// Takes two registers (this one and the next).
        wide: bool,
    },
}

impl Bar {
    /// Whether register `raw` is the lower half of a 64-bit memory BAR.
    pub fn is_wide(raw: u32) -> bool {
        raw & BAR_IS_IO == 0 && raw & BAR_TYPE_MASK == BAR_TYPE_64
    }

    /// Whether register `raw` decodes I/O space.
    pub fn is_io(raw: u32) -> bool {
        raw & BAR_IS_IO != 0
    }

    /// The address bits of register `raw` (its flag bits cleared).
    pub fn address_bits(raw: u32) -> u32 {
        raw & !if Self::is_io(raw) { BAR_IO_FLAGS } else { BAR_MEMORY_FLAGS }
    }

    /// The flag bits of register `raw`, to keep when an address is written.
    pub fn flag_bits(raw: u32) -> u32 {
        raw & if Self::is_io(raw) { BAR_IO_FLAGS } else { BAR_MEMORY_FLAGS }
    }

    /// Decodes one BAR from its register (`raw`, with `raw_high` the next register for a 64-bit
    /// BAR) and what the registers read back after all ones were written (`probe`,
    /// `probe_high`). A BAR with no address (unassigned) or no size decodes as `None`.
    pub fn decode(raw: u32, raw_high: u32, probe: u32, probe_high: u32) -> Bar {
        if Self::is_io(raw) {
            let mask = probe & !BAR_IO_FLAGS & 0xffff;
            let size = (!mask & 0xffff).wrapping_add(1);
            let base = Self::address_bits(raw);
            return if mask == 0 || base == 0 { Bar::None } else { Bar::Io { base, size } };
        }
        let wide = Self::is_wide(raw);
        let low_mask = probe & !BAR_MEMORY_FLAGS;
        // A 32-bit BAR's size bits are all in its one register: the upper ones read as set.
        let (high, probe_high) =
            if wide { (raw_high, probe_high) } else { (0, if low_mask == 0 { 0 } else { u32::MAX }) };
        let mask = u64::from(probe_high) << 32 | u64::from(low_mask);
        let base = u64::from(high) << 32 | u64::from(Self::address_bits(raw));
        if mask == 0 || base == 0 {
            return Bar::None;
        }
        Bar::Memory { base, size: (!mask).wrapping_add(1), wide }
    }

    /// The physical address of `[offset, offset + len)` of this memory BAR, if the range lies
    /// inside it and the BAR inside the address space.
    pub fn memory_range(&self, offset: u64, len: u64) -> Option<u64> {
        match *self {
            Bar::Memory { base, size, .. } if offset.checked_add(len)? <= size && base.checked_add(size).is_some() => {
                base.checked_add(offset)
            }
            _ => None,
        }
    }
}

/// Where a device's MSI-X table lies.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MsixTable {
    /// The capability's offset (its message control word enables MSI-X).
    pub capability: u8,
    /// Physical address of entry 0.
    pub phys: u64,
    pub entries: u16,
}

/// Why a device's MSI-X capability cannot be used.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MsixError {
    /// The capability is cut off by the end of configuration space.
    Truncated,
    /// The table is in a BAR that is not an assigned memory BAR, or runs past its end.
    TableOutsideBar { bar: u8 },
}

impl core::fmt::Display for MsixError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            MsixError::Truncated => write!(f, "the MSI-X capability runs past configuration space"),
            MsixError::TableOutsideBar { bar } => write!(f, "the MSI-X table is not inside memory BAR{bar}"),
        }
    }
}

impl ConfigSpace {
    /// The MSI-X table, if the function has the capability.
    pub fn msix_table(&self, bars: &[Bar; BAR_COUNT]) -> Option<Result<MsixTable, MsixError>> {
        let capability = self.find_capability(CAPABILITY_MSIX)?;
        let at = usize::from(capability);
        let fields = at.checked_add(2).and_then(|c| Some((self.u16(c)?, self.u32(c.checked_add(2)?)?)));
        let Some((control, table)) = fields else { return Some(Err(MsixError::Truncated)) };
        let entries = (control & 0x7ff).wrapping_add(1);
        let bar = (table & 0x7) as u8;
        let offset = u64::from(table & !0x7);
        let phys = bars
            .get(usize::from(bar))
            .and_then(|b| b.memory_range(offset, u64::from(entries).checked_mul(MSIX_ENTRY_BYTES)?));
        Some(phys.map(|phys| MsixTable { capability, phys, entries }).ok_or(MsixError::TableOutsideBar { bar }))
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// A configuration space with the given capabilities `(id, body)` chained from 0x40.
    pub(crate) fn config_with(caps: &[(u8, &[u8])]) -> ConfigSpace {
        let mut space = [0u8; CONFIG_SPACE_BYTES];
        space[STATUS_OFFSET] = STATUS_HAS_CAPABILITIES as u8;
        let mut at = 0x40usize;
        space[CAPABILITIES_POINTER] = at as u8;
        for (i, (id, body)) in caps.iter().enumerate() {
            let len = (2 + body.len()).next_multiple_of(4);
            space[at] = *id;
            space[at + 1] = if i + 1 == caps.len() { 0 } else { (at + len) as u8 };
            space[at + 2..at + 2 + body.len()].copy_from_slice(body);
            at += len;
        }
        ConfigSpace(space)
    }

    #[test]
    fn capability_walk_follows_the_list_and_stops_on_cycles_and_bad_pointers() {
        let space = config_with(&[(0x05, &[0; 2]), (CAPABILITY_VENDOR, &[0; 14]), (CAPABILITY_MSIX, &[0; 10])]);
        let caps: Vec<_> = space.capabilities().collect();
        assert_eq!(caps, [(0x05, 0x40), (CAPABILITY_VENDOR, 0x44), (CAPABILITY_MSIX, 0x54)]);
        assert_eq!(space.find_capability(CAPABILITY_MSIX), Some(0x54));
        assert_eq!(space.find_capability(0x10), None);

        let mut cycle = space;
        cycle.0[0x55] = 0x40; // the last points back at the first
        assert_eq!(cycle.capabilities().count(), MAX_CAPABILITIES);
        let mut into_header = space;
        into_header.0[0x41] = 0x10;
        assert_eq!(into_header.capabilities().count(), 1);
        let mut no_list = space;
        no_list.0[STATUS_OFFSET] = 0;
        assert_eq!(no_list.capabilities().count(), 0);
        let mut at_end = ConfigSpace([0xff; CONFIG_SPACE_BYTES]);
        at_end.0[CAPABILITIES_POINTER] = 0xfc;
        assert!(at_end.capabilities().all(|(_, o)| o == 0xfc));
    }

    #[test]
    fn dwords_become_little_endian_bytes() {
        let mut dwords = [0u32; 64];
        dwords[0] = 0x1041_1af4;
        let space = ConfigSpace::from_dwords(&dwords);
        assert_eq!(space.u16(0), Some(0x1af4));
        assert_eq!(space.u16(2), Some(0x1041));
        assert_eq!(space.u32(0), Some(0x1041_1af4));
        assert_eq!(space.u32(253), None);
    }

    #[test]
    fn bars_decode_io_32_and_64_bit_memory() {
        assert_eq!(Bar::decode(0xc001, 0, 0xffff_ffe1, 0), Bar::Io { base: 0xc000, size: 0x20 });
        assert_eq!(
            Bar::decode(0xe000_0000, 0, 0xffff_f000, 0),
            Bar::Memory { base: 0xe000_0000, size: 0x1000, wide: false }
        );
        // A 64-bit prefetchable BAR of 16 KiB above 4 GiB.
        assert_eq!(
            Bar::decode(0x0000_400c, 0x1, 0xffff_c00c, 0xffff_ffff),
            Bar::Memory { base: 0x1_0000_4000, size: 0x4000, wide: true }
        );
        assert_eq!(Bar::decode(0, 0, 0xffff_f000, 0), Bar::None, "unassigned");
        assert_eq!(Bar::decode(0xe000_0000, 0, 0, 0), Bar::None, "unimplemented");
        let bar = Bar::Memory { base: 0xe000_0000, size: 0x4000, wide: true };
        assert_eq!(bar.memory_range(0x3000, 0x1000), Some(0xe000_3000));
        assert_eq!(bar.memory_range(0x3000, 0x1001), None);
        assert_eq!(bar.memory_range(u64::MAX, 2), None);
        assert_eq!(Bar::Io { base: 0xc000, size: 0x20 }.memory_range(0, 1), None);
        // A BAR that runs past the end of the address space holds nothing (found by fuzzing).
        let wraps = Bar::Memory { base: 0xffff_ffff_ffff_f001, size: u64::MAX, wide: true };
        assert_eq!(wraps.memory_range(0xff8, 16), None);
    }

    #[test]
    fn msix_table_must_lie_in_its_memory_bar() {
        let mut bars = [Bar::None; BAR_COUNT];
        bars[1] = Bar::Memory { base: 0xe000_1000, size: 0x1000, wide: false };
        // Message control: 3 entries (N - 1 = 2); table in BAR1 at offset 0x800.
        let body = [2, 0, 0x01, 0x08, 0, 0, 0x01, 0x0c, 0, 0];
        let space = config_with(&[(CAPABILITY_MSIX, &body)]);
        assert_eq!(space.msix_table(&bars), Some(Ok(MsixTable { capability: 0x40, phys: 0xe000_1800, entries: 3 })));
        let mut too_many = body;
        too_many[0] = 0xff; // 256 entries of 16 bytes do not fit after 0x800
        let space = config_with(&[(CAPABILITY_MSIX, &too_many)]);
        assert_eq!(space.msix_table(&bars), Some(Err(MsixError::TableOutsideBar { bar: 1 })));
        let mut in_io = body;
        in_io[2] = 0x00; // BAR0: not a memory BAR
        let space = config_with(&[(CAPABILITY_MSIX, &in_io)]);
        assert_eq!(space.msix_table(&bars), Some(Err(MsixError::TableOutsideBar { bar: 0 })));
        assert_eq!(config_with(&[(0x05, &[0; 2])]).msix_table(&bars), None);
    }
}
