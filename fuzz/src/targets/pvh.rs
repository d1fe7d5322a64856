//! `pvh::parse_start_info` and `read_cmdline`, then `cmdline::parse` and `usable_memory` on
//! what they return: the kernel's first look at what the loader hands it.
//!
//! Input: a little-endian u64 physical base address, then the bytes of physical memory there;
//! the start-info structure sits at the base, and every pointer in it (module list, memory
//! map, command line) is free to point anywhere, including past the memory or around 2^64. A
//! reference reader written here must reach the same verdict and error; an accepted structure
//! holds exactly the entries in memory, the command line ends at its first NUL within the
//! limit, and the memory map goes on through the `memmap` target's checks.

use crate::engine::{Target, Verdict};
use crate::features::Features;
use crate::targets::memmap::check_usable;
use crate::{check, check_eq};
use kernel_core::boot::cmdline::{self, CmdlineError};
use kernel_core::boot::memmap::{MemoryKind, RawRegion};
use kernel_core::boot::pvh::{
    parse_start_info, read_cmdline, Module, PhysRead, StartInfoError, Unreadable, MAX_CMDLINE_LEN, MAX_MEMMAP_ENTRIES,
    MAX_MODULES, MEMMAP_ENTRY_SIZE, MODLIST_ENTRY_SIZE, START_INFO_MAGIC, START_INFO_SIZE,
};

pub const TARGET: Target = Target {
    name: "pvh",
    checks: "start-info verdict and error equal a reference reader; modules, memory map and command line are \
             exactly what memory holds; command line parse errors quote the line; memory map as in `memmap`",
    max_len: 8 * 1024,
    dictionary: &[
        &START_INFO_MAGIC.to_le_bytes(),
        &[1, 0, 0, 0],
        b"log=info ",
        b"shutdown_after=300 ",
        b"tx=cow",
        b"stamps=on",
        b"test_fault=panic",
        b"\0",
    ],
    seeds,
    run,
};

/// Where the kernel starts taking RAM (as in `kernel.rs`).
const LOW_MEMORY_LIMIT: u64 = 1 << 20;

/// Physical memory: `bytes` visible at `base`, nothing elsewhere.
struct Memory<'a> {
    base: u64,
    bytes: &'a [u8],
}

impl Memory<'_> {
    /// The bytes at `[phys, phys + len)`; like the kernel's reader, nothing whose end does not
    /// fit in a u64 (the blob may run past 2^64, but no address does).
    fn slice(&self, phys: u64, len: usize) -> Option<&[u8]> {
        phys.checked_add(len as u64)?;
        let start = usize::try_from(phys.checked_sub(self.base)?).ok()?;
        self.bytes.get(start..start.checked_add(len)?)
    }
}

impl PhysRead for Memory<'_> {
    fn read(&self, phys: u64, buf: &mut [u8]) -> Result<(), Unreadable> {
        buf.copy_from_slice(self.slice(phys, buf.len()).ok_or(Unreadable)?);
        Ok(())
    }
}

/// QEMU's start info for a 128 MiB machine with an initrd: header, module list, E820 map,
/// command line, at `base`.
pub fn qemu_like(base: u64, cmdline: &[u8]) -> Vec<u8> {
    let (modlist, memmap, cmdline_at) = (0x100u64, 0x200u64, 0x800u64);
    let e820: [(u64, u64, u32); 6] = [
        (0, 0x9fc00, 1),
        (0x9fc00, 0x400, 2),
        (0xf0000, 0x10000, 2),
        (0x10_0000, 0x7ee_0000, 1),
        (0x7fe_0000, 0x2_0000, 2),
        (0xfffc_0000, 0x4_0000, 2),
    ];
    let mut memory = vec![0u8; cmdline_at as usize + cmdline.len() + 1];
    let mut put = |at: u64, bytes: &[u8]| memory[at as usize..at as usize + bytes.len()].copy_from_slice(bytes);
    put(0, &START_INFO_MAGIC.to_le_bytes());
    put(4, &1u32.to_le_bytes());
    put(12, &1u32.to_le_bytes());
    put(16, &(base + modlist).to_le_bytes());
    put(24, &(base + cmdline_at).to_le_bytes());
    put(40, &(base + memmap).to_le_bytes());
    put(48, &(e820.len() as u32).to_le_bytes());
    put(modlist, &0x7b0_0000u64.to_le_bytes());
    put(modlist + 8, &0x30_0000u64.to_le_bytes());
    for (i, (start, size, kind)) in e820.into_iter().enumerate() {
        let at = memmap + (i * MEMMAP_ENTRY_SIZE) as u64;
        put(at, &start.to_le_bytes());
        put(at + 8, &size.to_le_bytes());
        put(at + 16, &kind.to_le_bytes());
    }
    put(cmdline_at, cmdline);
    let mut input = base.to_le_bytes().to_vec();
    input.extend_from_slice(&memory);
    input
}

fn seeds(_: &crate::real::RealInputs) -> Vec<Vec<u8>> {
    vec![
        qemu_like(0x1000, b"log=info shutdown_after=300 tx=cow"),
        qemu_like(0x7000, b"tx=copy stamps=on test_fault=page_fault"),
        qemu_like(u64::MAX - 0x900, b"log=trace"),
        qemu_like(0, &[b'x'; 4200]),
    ]
}

fn error_kind(error: &StartInfoError) -> u64 {
    match error {
        StartInfoError::Unreadable { what, .. } => {
            let places = ["start-info header", "start-info structure", "module list", "memory map", "command line"];
            10 + places.iter().position(|p| p == what).unwrap_or(places.len()) as u64
        }
        StartInfoError::BadMagic(_) => 2,
        StartInfoError::NoMemoryMap { .. } => 3,
        StartInfoError::TooManyMemmapEntries(_) => 4,
        StartInfoError::TooManyModules(_) => 5,
        StartInfoError::BadCmdline => 6,
    }
}

fn u32_at(bytes: &[u8], at: usize) -> u32 {
    u32::from_le_bytes(bytes[at..at + 4].try_into().unwrap())
}

fn u64_at(bytes: &[u8], at: usize) -> u64 {
    u64::from_le_bytes(bytes[at..at + 8].try_into().unwrap())
}

/// What the reference reader finds: modules, memory map, command line (address, length with
/// its NUL).
type Expected = (Vec<Module>, Vec<RawRegion>, Option<(u64, usize)>);

fn reference(memory: &Memory, phys: u64) -> Result<Expected, StartInfoError> {
    let unreadable = |what, phys| StartInfoError::Unreadable { what, phys };
    let head = memory.slice(phys, 8).ok_or(unreadable("start-info header", phys))?;
    if u32_at(head, 0) != START_INFO_MAGIC {
        return Err(StartInfoError::BadMagic(u32_at(head, 0)));
    }
    if u32_at(head, 4) == 0 {
        return Err(StartInfoError::NoMemoryMap { version: 0 });
    }
    let header = memory.slice(phys, START_INFO_SIZE).ok_or(unreadable("start-info structure", phys))?;
    let (modules, modlist) = (u32_at(header, 12), u64_at(header, 16));
    let (cmdline, memmap, entries) = (u64_at(header, 24), u64_at(header, 40), u32_at(header, 48));
    if modules as usize > MAX_MODULES {
        return Err(StartInfoError::TooManyModules(modules));
    }
    // Entry `i` of a table: its bytes, or which error reading it gives.
    let entry = |base: u64, i: usize, size: usize, what| {
        let at = u128::from(base) + (i * size) as u128;
        let at = u64::try_from(at).map_err(|_| unreadable(what, base))?;
        memory.slice(at, size).ok_or(unreadable(what, at))
    };
    let mut found_modules = Vec::new();
    for i in 0..modules as usize {
        let bytes = entry(modlist, i, MODLIST_ENTRY_SIZE, "module list")?;
        found_modules.push(Module { phys: u64_at(bytes, 0), size: u64_at(bytes, 8) });
    }
    if entries as usize > MAX_MEMMAP_ENTRIES {
        return Err(StartInfoError::TooManyMemmapEntries(entries));
    }
    let mut map = Vec::new();
    for i in 0..entries as usize {
        let bytes = entry(memmap, i, MEMMAP_ENTRY_SIZE, "memory map")?;
        let kind = MemoryKind::from_e820(u32_at(bytes, 16));
        map.push(RawRegion { start: u64_at(bytes, 0), size: u64_at(bytes, 8), kind });
    }
    let cmdline = if cmdline == 0 {
        None
    } else {
        // Byte by byte: the first NUL within the limit ends it; an unreadable byte before that
        // is an error at that byte; no NUL within the limit (or the address space) is bad.
        let mut length = None;
        for i in 0..=MAX_CMDLINE_LEN as u64 {
            let at = cmdline.checked_add(i).ok_or(StartInfoError::BadCmdline)?;
            match memory.slice(at, 1) {
                None => return Err(unreadable("command line", at)),
                Some([0]) => {
                    length = Some(i as usize + 1);
                    break;
                }
                Some(_) => {}
            }
        }
        Some((cmdline, length.ok_or(StartInfoError::BadCmdline)?))
    };
    Ok((found_modules, map, cmdline))
}

fn run(input: &[u8], features: &mut Features) -> Verdict {
    let (base, bytes) = input.split_at(input.len().min(8));
    let mut raw = [0u8; 8];
    raw[..base.len()].copy_from_slice(base);
    let memory = Memory { base: u64::from_le_bytes(raw), bytes };
    let phys = memory.base;
    let got = parse_start_info(&memory, phys);
    let expected = reference(&memory, phys);
    match &got {
        Ok(info) => {
            features.note_count("memmap", info.memory_map().len() as u64);
            features.note("modules", info.modules().len() as u64);
            features.note("cmdline", info.cmdline_phys.is_some() as u64);
        }
        Err(error) => {
            features.note("error", error_kind(error));
            let _ = error.to_string();
        }
    }
    check_eq!(
        got.as_ref().map(|i| (i.modules().to_vec(), i.memory_map().to_vec(), i.cmdline_phys)).map_err(|e| *e),
        expected.clone(),
        "start info vs reference"
    );
    let Ok(info) = got else {
        return Ok(());
    };
    check!(info.version >= 1, "version {}", info.version);
    check!(info.module_count <= MAX_MODULES && info.memmap_len <= MAX_MEMMAP_ENTRIES, "counts");
    if let Some((at, len)) = info.cmdline_phys {
        check!((1..=MAX_CMDLINE_LEN + 1).contains(&len), "command line length {len}");
        let Some(in_memory) = memory.slice(at, len) else {
            return Err(format!("command line {at:#x}+{len} is not in memory"));
        };
        let mut buf = [0u8; MAX_CMDLINE_LEN + 1];
        let read = read_cmdline(&memory, (at, len), &mut buf);
        let text = &in_memory[..len - 1];
        features.note("cmdline utf8", read.is_ok() as u64);
        match read {
            Ok(line) => {
                check_eq!(line.as_bytes(), text, "command line text");
                check_cmdline(line, features)?;
            }
            Err(error) => {
                check_eq!(error, StartInfoError::BadCmdline, "read_cmdline error");
                check!(std::str::from_utf8(text).is_err(), "UTF-8 command line refused");
            }
        }
    }
    check_usable(info.memory_map(), LOW_MEMORY_LIMIT, features)
}

/// Errors quote a word of the line; accepted lines take the last value of each key.
fn check_cmdline(line: &str, features: &mut Features) -> Verdict {
    let words: Vec<&str> = line.split_ascii_whitespace().collect();
    match cmdline::parse(line) {
        Ok(args) => {
            features.note("cmdline ok", 1);
            // Every word is the kernel's or listed as ignored, never both.
            let ignored: Vec<&str> = cmdline::unknown_words(line).collect();
            features.note("cmdline ignored words", ignored.len().min(3) as u64);
            let last = |key: &str| words.iter().rev().find_map(|w| w.strip_prefix(key)?.strip_prefix('='));
            let want_cow = last("tx") == Some("cow");
            check_eq!(args.tx_mode == cmdline::TxMode::Cow, want_cow, "tx mode of {line:?}");
            check_eq!(args.stamps, last("stamps") == Some("on"), "stamps of {line:?}");
            let secs = last("shutdown_after").map(|v| v.parse::<u64>().ok());
            check_eq!(args.shutdown_after_secs.map(Some), secs, "shutdown_after of {line:?}");
            // Each virtio-mmio word is one device (a malformed one, or a ninth, fails the parse).
            let mmio_words = words.iter().filter(|w| w.starts_with("virtio_mmio.device=")).count();
            check_eq!(args.mmio_devices().count(), mmio_words, "virtio-mmio devices of {line:?}");
        }
        Err(error) => {
            let _ = error.to_string();
            let CmdlineError::BadValue { key, value, .. } = error;
            features.note("cmdline error", 1);
            let word = format!("{key}={value}");
            check!(words.contains(&word.as_str()), "error quotes {word:?}, no word of {line:?}");
        }
    }
    Ok(())
}
