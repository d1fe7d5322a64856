//! Parsing of the PVH boot protocol's `hvm_start_info` structure.
//!
//! QEMU enters the kernel's PVH entry point with `%ebx` holding the physical address of the
//! start-info structure (Xen's `arch-x86/hvm/start_info.h`). Everything it points to (command
//! line, module list, memory map) is found by physical address, so this parser reads through a
//! [`PhysRead`] implementation: the kernel's direct map at boot, a byte vector in tests. Every
//! field from the loader is treated as untrusted: a read outside what the reader can reach, a
//! wrong magic or an oversized table is an error, never a panic.

use crate::boot::memmap::{MemoryKind, RawRegion};

/// `hvm_start_info.magic`: "xEn3" with the high bit of the first byte set.
pub const START_INFO_MAGIC: u32 = 0x336e_c578;
/// Size of `hvm_start_info` in version 1 (the version that added the memory map).
pub const START_INFO_SIZE: usize = 56;
/// Size of one `hvm_modlist_entry`.
pub const MODLIST_ENTRY_SIZE: usize = 32;
/// Size of one `hvm_memmap_table_entry`.
pub const MEMMAP_ENTRY_SIZE: usize = 24;
/// Most memory-map entries the kernel accepts (E820 tables are far smaller in practice).
pub const MAX_MEMMAP_ENTRIES: usize = 128;
/// Most boot modules the kernel accepts.
pub const MAX_MODULES: usize = 8;
/// Longest command line the kernel reads, in bytes, without its terminating NUL.
pub const MAX_CMDLINE_LEN: usize = 4096;

/// Read access to physical memory, as far as the implementation can reach it.
pub trait PhysRead {
    /// Fills `buf` from physical address `phys`; `Err` if any byte lies outside readable memory.
    fn read(&self, phys: u64, buf: &mut [u8]) -> Result<(), Unreadable>;
}

/// A read that fell outside what a [`PhysRead`] can reach.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Unreadable;

/// Why the start-info structure was rejected.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StartInfoError {
    /// A structure the loader pointed at could not be read (`what` names it).
    Unreadable { what: &'static str, phys: u64 },
    /// The magic number is wrong: this is not a PVH start-info structure.
    BadMagic(u32),
    /// Version 0 has no memory map, and the kernel needs one.
    NoMemoryMap { version: u32 },
    /// More memory-map entries than [`MAX_MEMMAP_ENTRIES`].
    TooManyMemmapEntries(u32),
    /// More modules than [`MAX_MODULES`].
    TooManyModules(u32),
    /// The command line has no NUL within [`MAX_CMDLINE_LEN`] bytes, or is not UTF-8.
    BadCmdline,
}

impl core::fmt::Display for StartInfoError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            Self::Unreadable { what, phys } => write!(f, "cannot read the {what} at {phys:#x}"),
            Self::BadMagic(m) => write!(f, "bad start-info magic {m:#x} (want {START_INFO_MAGIC:#x})"),
            Self::NoMemoryMap { version } => {
                write!(f, "start-info version {version} carries no memory map")
            }
            Self::TooManyMemmapEntries(n) => {
                write!(f, "{n} memory-map entries (at most {MAX_MEMMAP_ENTRIES})")
            }
            Self::TooManyModules(n) => write!(f, "{n} boot modules (at most {MAX_MODULES})"),
            Self::BadCmdline => write!(f, "command line is unterminated or not UTF-8"),
        }
    }
}

/// One boot module (QEMU's `-initrd`), by physical location.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct Module {
    pub phys: u64,
    pub size: u64,
}

/// What the kernel keeps of the start-info structure.
#[derive(Clone, Debug)]
pub struct StartInfo {
    pub version: u32,
    /// Physical address and length (with the NUL) of the command line, if there is one.
    pub cmdline_phys: Option<(u64, usize)>,
    pub modules: [Module; MAX_MODULES],
    pub module_count: usize,
    pub rsdp_phys: u64,
    pub memmap: [RawRegion; MAX_MEMMAP_ENTRIES],
    pub memmap_len: usize,
}

impl StartInfo {
    /// The memory map as the loader gave it (unsorted, possibly overlapping).
    pub fn memory_map(&self) -> &[RawRegion] {
        self.memmap.get(..self.memmap_len).unwrap_or(&self.memmap)
    }

    /// The boot modules, in the loader's order.
    pub fn modules(&self) -> &[Module] {
        self.modules.get(..self.module_count).unwrap_or(&self.modules)
    }
}

/// The little-endian word at `offset` (every caller passes an offset inside its fixed-size
/// buffer; beyond it, the word reads as 0).
fn u32_at(bytes: &[u8], offset: usize) -> u32 {
    u32::from_le_bytes(bytes.get(offset..).and_then(<[u8]>::first_chunk).copied().unwrap_or_default())
}

/// As [`u32_at`], 64 bits.
fn u64_at(bytes: &[u8], offset: usize) -> u64 {
    u64::from_le_bytes(bytes.get(offset..).and_then(<[u8]>::first_chunk).copied().unwrap_or_default())
}

fn read_exact(mem: &impl PhysRead, phys: u64, buf: &mut [u8], what: &'static str) -> Result<(), StartInfoError> {
    mem.read(phys, buf).map_err(|Unreadable| StartInfoError::Unreadable { what, phys })
}

/// Element `index` of a table of `entry_size`-byte entries at `base`, without wrapping around.
fn entry_address(base: u64, index: usize, entry_size: usize, what: &'static str) -> Result<u64, StartInfoError> {
    (index as u64)
        .checked_mul(entry_size as u64)
        .and_then(|offset| base.checked_add(offset))
        .ok_or(StartInfoError::Unreadable { what, phys: base })
}

/// Parses the start-info structure at physical address `phys`.
pub fn parse_start_info(mem: &impl PhysRead, phys: u64) -> Result<StartInfo, StartInfoError> {
    let mut header = [0u8; START_INFO_SIZE];
    read_exact(mem, phys, &mut header[..8], "start-info header")?;
    let magic = u32_at(&header, 0);
    if magic != START_INFO_MAGIC {
        return Err(StartInfoError::BadMagic(magic));
    }
    let version = u32_at(&header, 4);
    if version < 1 {
        return Err(StartInfoError::NoMemoryMap { version });
    }
    read_exact(mem, phys, &mut header, "start-info structure")?;

    let nr_modules = u32_at(&header, 12);
    let modlist_phys = u64_at(&header, 16);
    let cmdline_phys = u64_at(&header, 24);
    let rsdp_phys = u64_at(&header, 32);
    let memmap_phys = u64_at(&header, 40);
    let memmap_entries = u32_at(&header, 48);

    let mut info = StartInfo {
        version,
        cmdline_phys: None,
        modules: [Module::default(); MAX_MODULES],
        module_count: 0,
        rsdp_phys,
        memmap: [RawRegion::default(); MAX_MEMMAP_ENTRIES],
        memmap_len: 0,
    };

    if nr_modules as usize > MAX_MODULES {
        return Err(StartInfoError::TooManyModules(nr_modules));
    }
    for (index, slot) in info.modules.iter_mut().take(nr_modules as usize).enumerate() {
        let mut entry = [0u8; MODLIST_ENTRY_SIZE];
        let at = entry_address(modlist_phys, index, MODLIST_ENTRY_SIZE, "module list")?;
        read_exact(mem, at, &mut entry, "module list")?;
        *slot = Module { phys: u64_at(&entry, 0), size: u64_at(&entry, 8) };
    }
    info.module_count = nr_modules as usize;

    if memmap_entries as usize > MAX_MEMMAP_ENTRIES {
        return Err(StartInfoError::TooManyMemmapEntries(memmap_entries));
    }
    for (index, slot) in info.memmap.iter_mut().take(memmap_entries as usize).enumerate() {
        let mut entry = [0u8; MEMMAP_ENTRY_SIZE];
        let at = entry_address(memmap_phys, index, MEMMAP_ENTRY_SIZE, "memory map")?;
        read_exact(mem, at, &mut entry, "memory map")?;
        *slot = RawRegion {
            start: u64_at(&entry, 0),
            size: u64_at(&entry, 8),
            kind: MemoryKind::from_e820(u32_at(&entry, 16)),
        };
    }
    info.memmap_len = memmap_entries as usize;

    if cmdline_phys != 0 {
        let len = cmdline_length(mem, cmdline_phys)?;
        info.cmdline_phys = Some((cmdline_phys, len));
    }
    Ok(info)
}

/// Length of the NUL-terminated command line at `phys`, including the NUL.
fn cmdline_length(mem: &impl PhysRead, phys: u64) -> Result<usize, StartInfoError> {
    let mut chunk = [0u8; 64];
    let mut scanned = 0usize;
    while scanned <= MAX_CMDLINE_LEN {
        let at = phys.checked_add(scanned as u64).ok_or(StartInfoError::BadCmdline)?;
        // Read byte-wise near the end of readable memory; chunk-wise otherwise.
        let step = if mem.read(at, &mut chunk).is_ok() {
            chunk.len()
        } else {
            read_exact(mem, at, &mut chunk[..1], "command line")?;
            1
        };
        if let Some(nul) = chunk.get(..step).unwrap_or(&chunk).iter().position(|&b| b == 0) {
            let len = scanned.checked_add(nul).filter(|&len| len <= MAX_CMDLINE_LEN);
            return len.and_then(|len| len.checked_add(1)).ok_or(StartInfoError::BadCmdline);
        }
        scanned = scanned.checked_add(step).ok_or(StartInfoError::BadCmdline)?;
    }
    Err(StartInfoError::BadCmdline)
}

/// Reads the command line found by [`parse_start_info`] into `buf` and returns it as text.
pub fn read_cmdline<'b>(
    mem: &impl PhysRead,
    cmdline: (u64, usize),
    buf: &'b mut [u8; MAX_CMDLINE_LEN + 1],
) -> Result<&'b str, StartInfoError> {
    let (phys, len_with_nul) = cmdline;
    let text = buf.get_mut(..len_with_nul).ok_or(StartInfoError::BadCmdline)?;
    read_exact(mem, phys, text, "command line")?;
    let without_nul = len_with_nul.checked_sub(1).and_then(|len| text.get(..len)).ok_or(StartInfoError::BadCmdline)?;
    core::str::from_utf8(without_nul).map_err(|_| StartInfoError::BadCmdline)
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing, clippy::arithmetic_side_effects)]
mod tests {
    use super::*;

    /// Physical memory for tests: `bytes` visible at `base`.
    struct FakeMemory {
        base: u64,
        bytes: Vec<u8>,
    }

    impl PhysRead for FakeMemory {
        fn read(&self, phys: u64, buf: &mut [u8]) -> Result<(), Unreadable> {
            let start = phys.checked_sub(self.base).ok_or(Unreadable)? as usize;
            let end = start.checked_add(buf.len()).ok_or(Unreadable)?;
            buf.copy_from_slice(self.bytes.get(start..end).ok_or(Unreadable)?);
            Ok(())
        }
    }

    const BASE: u64 = 0x1000;
    const MODLIST: usize = 0x100;
    const MEMMAP: usize = 0x200;
    const CMDLINE: usize = 0x800;

    fn put32(bytes: &mut [u8], at: usize, v: u32) {
        bytes[at..at + 4].copy_from_slice(&v.to_le_bytes());
    }
    fn put64(bytes: &mut [u8], at: usize, v: u64) {
        bytes[at..at + 8].copy_from_slice(&v.to_le_bytes());
    }

    /// A start-info structure at BASE as QEMU builds it: two modules, a memory map, a cmdline.
    fn crafted(memmap: &[(u64, u64, u32)], cmdline: &[u8]) -> FakeMemory {
        let mut bytes = vec![0u8; 0x1000];
        put32(&mut bytes, 0, START_INFO_MAGIC);
        put32(&mut bytes, 4, 1);
        put32(&mut bytes, 12, 1);
        put64(&mut bytes, 16, BASE + MODLIST as u64);
        put64(&mut bytes, 24, BASE + CMDLINE as u64);
        put64(&mut bytes, 40, BASE + MEMMAP as u64);
        put32(&mut bytes, 48, memmap.len() as u32);
        put64(&mut bytes, MODLIST, 0x80_0000);
        put64(&mut bytes, MODLIST + 8, 0x1234);
        for (i, &(start, size, kind)) in memmap.iter().enumerate() {
            let at = MEMMAP + i * MEMMAP_ENTRY_SIZE;
            put64(&mut bytes, at, start);
            put64(&mut bytes, at + 8, size);
            put32(&mut bytes, at + 16, kind);
        }
        bytes[CMDLINE..CMDLINE + cmdline.len()].copy_from_slice(cmdline);
        FakeMemory { base: BASE, bytes }
    }

    #[test]
    fn parses_what_qemu_provides() {
        let mem = crafted(&[(0, 0x9fc00, 1), (0x100000, 0x7ff0000, 1), (0xfeffc000, 0x4000, 2)], b"log=debug\0");
        let info = parse_start_info(&mem, BASE).unwrap();
        assert_eq!(info.version, 1);
        assert_eq!(info.modules(), &[Module { phys: 0x80_0000, size: 0x1234 }]);
        assert_eq!(info.memory_map().len(), 3);
        assert_eq!(info.memory_map()[1], RawRegion { start: 0x100000, size: 0x7ff0000, kind: MemoryKind::Usable });
        assert_eq!(info.memory_map()[2].kind, MemoryKind::Reserved);
        let mut buf = [0u8; MAX_CMDLINE_LEN + 1];
        assert_eq!(read_cmdline(&mem, info.cmdline_phys.unwrap(), &mut buf).unwrap(), "log=debug");
    }

    #[test]
    fn rejects_wrong_magic_and_version_zero() {
        let mut mem = crafted(&[], b"\0");
        put32(&mut mem.bytes, 0, 0xdead_beef);
        assert_eq!(parse_start_info(&mem, BASE).unwrap_err(), StartInfoError::BadMagic(0xdead_beef));
        let mut mem = crafted(&[], b"\0");
        put32(&mut mem.bytes, 4, 0);
        assert_eq!(parse_start_info(&mem, BASE).unwrap_err(), StartInfoError::NoMemoryMap { version: 0 });
    }

    #[test]
    fn truncated_structures_are_errors_not_panics() {
        // The header itself runs past the end of readable memory.
        let mem = FakeMemory {
            base: BASE,
            bytes: {
                let mut b = vec![0u8; 20];
                put32(&mut b, 0, START_INFO_MAGIC);
                put32(&mut b, 4, 1);
                b
            },
        };
        assert!(matches!(
            parse_start_info(&mem, BASE),
            Err(StartInfoError::Unreadable { what: "start-info structure", .. })
        ));

        // The memory map claims more entries than memory holds: the second runs off the end.
        let mut mem = crafted(&[(0, 0x1000, 1)], b"\0");
        put64(&mut mem.bytes, 40, BASE + 0x1000 - MEMMAP_ENTRY_SIZE as u64);
        put32(&mut mem.bytes, 48, 2);
        assert!(matches!(parse_start_info(&mem, BASE), Err(StartInfoError::Unreadable { what: "memory map", .. })));

        // An absurd entry count is refused before anything is read.
        put32(&mut mem.bytes, 48, 100_000);
        assert_eq!(parse_start_info(&mem, BASE).unwrap_err(), StartInfoError::TooManyMemmapEntries(100_000));

        // A memory map pointer near the top of the address space must not wrap around.
        let mut mem = crafted(&[(0, 0x1000, 1)], b"\0");
        put64(&mut mem.bytes, 40, u64::MAX - 8);
        put32(&mut mem.bytes, 48, 2);
        assert!(matches!(parse_start_info(&mem, BASE), Err(StartInfoError::Unreadable { .. })));

        // A module list outside memory.
        let mut mem = crafted(&[], b"\0");
        put64(&mut mem.bytes, 16, 0xdead_0000);
        assert!(matches!(parse_start_info(&mem, BASE), Err(StartInfoError::Unreadable { what: "module list", .. })));
        put32(&mut mem.bytes, 12, 9);
        assert_eq!(parse_start_info(&mem, BASE).unwrap_err(), StartInfoError::TooManyModules(9));
    }

    #[test]
    fn command_line_must_be_terminated_and_utf8() {
        // No NUL before the end of readable memory.
        let mut mem = crafted(&[], b"");
        for b in &mut mem.bytes[CMDLINE..] {
            *b = b'a';
        }
        assert!(matches!(parse_start_info(&mem, BASE), Err(StartInfoError::Unreadable { what: "command line", .. })));

        // Not UTF-8.
        let mem = crafted(&[], b"log=\xff\xfe\0");
        let info = parse_start_info(&mem, BASE).unwrap();
        let mut buf = [0u8; MAX_CMDLINE_LEN + 1];
        assert_eq!(read_cmdline(&mem, info.cmdline_phys.unwrap(), &mut buf), Err(StartInfoError::BadCmdline));

        // Longer than the kernel accepts.
        let mut mem = crafted(&[], b"");
        mem.bytes.resize(CMDLINE + MAX_CMDLINE_LEN + 200, 0);
        let last = mem.bytes.len() - 1;
        mem.bytes[CMDLINE..last].fill(b'x');
        assert_eq!(parse_start_info(&mem, BASE).unwrap_err(), StartInfoError::BadCmdline);

        // A missing command line (pointer 0) is simply absent.
        let mut mem = crafted(&[], b"\0");
        put64(&mut mem.bytes, 24, 0);
        assert!(parse_start_info(&mem, BASE).unwrap().cmdline_phys.is_none());
    }
}
