//! `elf::parse`: validating a guest's ELF file.
//!
//! Input: a little-endian u32 file length, then the file's first bytes; the rest of the file
//! is zeros (the parser reads headers only, so a real multi-megabyte guest ELF becomes a few
//! hundred input bytes plus its length, and mutations of the length test the bounds checks).
//! A reference validator written here must reach the same verdict and error; an accepted image
//! has 1 to 16 segments, exactly the file's non-empty PT_LOAD headers in order, each inside the
//! file and the image area, file size within memory size, no two on a common page, address and
//! offset congruent modulo the page size, and an entry point in an executable segment.

use crate::engine::{Target, Verdict};
use crate::features::Features;
use crate::real::RealInputs;
use crate::{check, check_eq};
use hypercall_abi::layout::{IMAGE_BASE, IMAGE_LIMIT, PAGE_SIZE};
use kernel_core::guest::elf::{parse, ElfError, Segment, MAX_SEGMENTS};
use std::cell::RefCell;

pub const TARGET: Target = Target {
    name: "elf",
    checks: "verdict and error equal a reference validator; segments are the file's PT_LOADs, inside the \
             file and the image area, on disjoint pages, congruent, filesz <= memsz; entry executable",
    max_len: 4 + PREFIX_MAX,
    dictionary: &[
        b"\x7fELF\x02\x01\x01",
        &[2, 0, 0x3e, 0],
        &[1, 0, 0, 0, 5, 0, 0, 0],
        &[1, 0, 0, 0, 6, 0, 0, 0],
        &[0, 0, 0x40, 0, 0, 0, 0, 0],
        &[0, 0, 0, 0x10, 0, 0, 0, 0],
        &[0x38, 0],
        &[0x40, 0, 0, 0, 0, 0, 0, 0],
    ],
    seeds,
    run,
};

/// Longest file prefix an input carries.
const PREFIX_MAX: usize = 8 * 1024;
/// Longest file an input describes (real guest ELF files are a few MiB with symbols).
const FILE_MAX: usize = 8 << 20;

const PT_LOAD: u32 = 1;
const PHDR_SIZE: usize = 56;

thread_local! {
    /// Zeros the file prefix is copied into; cleared again after each execution.
    static FILE: RefCell<Vec<u8>> = RefCell::new(vec![0; FILE_MAX]);
}

/// A minimal ELF: header, `phdrs` (type, flags, offset, vaddr, filesz, memsz) right after it.
pub fn build(entry: u64, phdrs: &[(u32, u32, u64, u64, u64, u64)], file_len: usize) -> Vec<u8> {
    let mut out = vec![0u8; 64];
    out[..7].copy_from_slice(b"\x7fELF\x02\x01\x01");
    out[16..18].copy_from_slice(&2u16.to_le_bytes());
    out[18..20].copy_from_slice(&62u16.to_le_bytes());
    out[24..32].copy_from_slice(&entry.to_le_bytes());
    out[32..40].copy_from_slice(&64u64.to_le_bytes());
    out[54..56].copy_from_slice(&(PHDR_SIZE as u16).to_le_bytes());
    out[56..58].copy_from_slice(&(phdrs.len() as u16).to_le_bytes());
    for &(kind, flags, offset, vaddr, filesz, memsz) in phdrs {
        for (value, width) in [(u64::from(kind), 4), (u64::from(flags), 4), (offset, 8), (vaddr, 8), (vaddr, 8)] {
            out.extend_from_slice(&value.to_le_bytes()[..width]);
        }
        for value in [filesz, memsz, PAGE_SIZE] {
            out.extend_from_slice(&value.to_le_bytes());
        }
    }
    let mut input = (file_len as u32).to_le_bytes().to_vec();
    input.extend_from_slice(&out);
    input
}

fn seeds(real: &RealInputs) -> Vec<Vec<u8>> {
    let (text, data) = (IMAGE_BASE, IMAGE_BASE + 0x2000);
    let mut seeds = vec![
        build(text + 0x10, &[(PT_LOAD, 5, 0, text, 0x1000, 0x1000), (PT_LOAD, 6, 0x1000, data, 0x800, 0x3000)], 0x2000),
        build(text, &[(PT_LOAD, 5, 0x1000, text, 0x200, 0x200), (4, 4, 0x100, 0, 0x20, 0x20)], 0x1200),
        build(text, &[(PT_LOAD, 7, 0, text, 0, 0x1000); 3], 0x1000),
    ];
    for elf in &real.elfs {
        let mut input = (elf.len().min(FILE_MAX) as u32).to_le_bytes().to_vec();
        input.extend_from_slice(&elf[..elf.len().min(PREFIX_MAX)]);
        seeds.push(input);
    }
    seeds
}

fn run(input: &[u8], features: &mut Features) -> Verdict {
    let (length, prefix) = input.split_at(input.len().min(4));
    let mut raw = [0u8; 4];
    raw[..length.len()].copy_from_slice(length);
    let file_len = (u32::from_le_bytes(raw) as usize).min(FILE_MAX);
    if file_len <= prefix.len() {
        return check_file(&prefix[..file_len], features);
    }
    FILE.with(|file| {
        let mut file = file.borrow_mut();
        file[..prefix.len()].copy_from_slice(prefix);
        let verdict = check_file(&file[..file_len], features);
        file[..prefix.len()].fill(0);
        verdict
    })
}

fn u16_at(bytes: &[u8], at: usize) -> u16 {
    u16::from_le_bytes([bytes[at], bytes[at + 1]])
}

fn u32_at(bytes: &[u8], at: usize) -> u32 {
    u32::from_le_bytes(bytes[at..at + 4].try_into().unwrap())
}

fn u64_at(bytes: &[u8], at: usize) -> u64 {
    u64::from_le_bytes(bytes[at..at + 8].try_into().unwrap())
}

fn pages(s: &Segment) -> (u128, u128) {
    let start = u128::from(s.vaddr) / u128::from(PAGE_SIZE);
    let end = (u128::from(s.vaddr) + u128::from(s.mem_size)).div_ceil(u128::from(PAGE_SIZE));
    (start, end)
}

/// The validator as the module documents it, in 128-bit arithmetic.
fn reference(file: &[u8]) -> Result<(u64, Vec<Segment>), ElfError> {
    if file.len() < 64 {
        return Err(ElfError::TooShort);
    }
    if &file[..4] != b"\x7fELF" {
        return Err(ElfError::BadMagic);
    }
    if file[4] != 2 {
        return Err(ElfError::Not64Bit);
    }
    if file[5] != 1 {
        return Err(ElfError::NotLittleEndian);
    }
    if u16_at(file, 16) != 2 {
        return Err(ElfError::NotExecutable);
    }
    if u16_at(file, 18) != 62 {
        return Err(ElfError::WrongMachine(u16_at(file, 18)));
    }
    let (entry, phoff, phentsize, phnum) = (u64_at(file, 24), u64_at(file, 32), u16_at(file, 54), u16_at(file, 56));
    if phnum == 0 {
        return Err(ElfError::NoSegments);
    }
    let table_end = u128::from(phoff) + u128::from(phnum) * PHDR_SIZE as u128;
    if usize::from(phentsize) != PHDR_SIZE || table_end > file.len() as u128 {
        return Err(ElfError::BadProgramHeaders);
    }
    let mut segments: Vec<(usize, Segment)> = Vec::new();
    for index in 0..usize::from(phnum) {
        let at = phoff as usize + index * PHDR_SIZE;
        let flags = u32_at(file, at + 4);
        let s = Segment {
            file_offset: u64_at(file, at + 8),
            vaddr: u64_at(file, at + 16),
            file_size: u64_at(file, at + 32),
            mem_size: u64_at(file, at + 40),
            writable: flags & 2 != 0,
            executable: flags & 1 != 0,
        };
        if u32_at(file, at) != PT_LOAD || s.mem_size == 0 {
            continue;
        }
        if s.file_size > s.mem_size {
            return Err(ElfError::FileSizeExceedsMemSize { index });
        }
        if u128::from(s.file_offset) + u128::from(s.file_size) > file.len() as u128 {
            return Err(ElfError::SegmentOutOfFile { index });
        }
        if s.vaddr < IMAGE_BASE || u128::from(s.vaddr) + u128::from(s.mem_size) > u128::from(IMAGE_LIMIT) {
            return Err(ElfError::SegmentOutsideImageArea { index });
        }
        if let Some((first, _)) = segments.iter().find(|(_, other)| {
            let ((a0, a1), (b0, b1)) = (pages(other), pages(&s));
            a0 < b1 && b0 < a1
        }) {
            return Err(ElfError::OverlappingSegments { first: *first, second: index });
        }
        if s.vaddr % PAGE_SIZE != s.file_offset % PAGE_SIZE {
            return Err(ElfError::MisalignedSegment { index });
        }
        if segments.len() == MAX_SEGMENTS {
            return Err(ElfError::TooManySegments);
        }
        segments.push((index, s));
    }
    if segments.is_empty() {
        return Err(ElfError::NoSegments);
    }
    let in_exec = segments
        .iter()
        .any(|(_, s)| s.executable && u128::from(entry) >= u128::from(s.vaddr) && entry - s.vaddr < s.mem_size);
    if !in_exec {
        return Err(ElfError::EntryNotExecutable(entry));
    }
    Ok((entry, segments.into_iter().map(|(_, s)| s).collect()))
}

fn error_kind(error: &ElfError) -> u64 {
    match error {
        ElfError::TooShort => 1,
        ElfError::BadMagic => 2,
        ElfError::Not64Bit => 3,
        ElfError::NotLittleEndian => 4,
        ElfError::NotExecutable => 5,
        ElfError::WrongMachine(_) => 6,
        ElfError::BadProgramHeaders => 7,
        ElfError::TooManySegments => 8,
        ElfError::NoSegments => 9,
        ElfError::SegmentOutOfFile { .. } => 10,
        ElfError::FileSizeExceedsMemSize { .. } => 11,
        ElfError::SegmentOutsideImageArea { .. } => 12,
        ElfError::OverlappingSegments { .. } => 13,
        ElfError::MisalignedSegment { .. } => 14,
        ElfError::EntryNotExecutable(_) => 15,
    }
}

fn check_file(file: &[u8], features: &mut Features) -> Verdict {
    let got = parse(file);
    let expected = reference(file);
    match &got {
        Ok(image) => features.note_count("segments", image.segments().len() as u64),
        Err(error) => {
            features.note("error", error_kind(error));
            let _ = error.to_string();
        }
    }
    check_eq!(
        got.as_ref().map(|image| (image.entry, image.segments().to_vec())),
        expected.as_ref().map(|(entry, segments)| (*entry, segments.clone())),
        "parse vs reference"
    );
    let Ok(image) = got else {
        return Ok(());
    };
    let segments = image.segments();
    check!((1..=MAX_SEGMENTS).contains(&segments.len()), "{} segments", segments.len());
    for (i, s) in segments.iter().enumerate() {
        check!(s.mem_size > 0 && s.file_size <= s.mem_size, "segment {i} sizes {s:x?}");
        check!(
            s.file_offset.checked_add(s.file_size).is_some_and(|end| end <= file.len() as u64),
            "segment {i} past the file"
        );
        check!(s.vaddr >= IMAGE_BASE && s.vaddr + s.mem_size <= IMAGE_LIMIT, "segment {i} outside the image area");
        check!(s.vaddr % PAGE_SIZE == s.file_offset % PAGE_SIZE, "segment {i} not congruent");
        let (start, end) = s.page_range();
        check!(
            start % PAGE_SIZE == 0 && end % PAGE_SIZE == 0 && start <= s.vaddr && s.vaddr + s.mem_size <= end,
            "segment {i} pages"
        );
        for (j, other) in segments[..i].iter().enumerate() {
            let (other_start, other_end) = other.page_range();
            check!(end <= other_start || other_end <= start, "segments {j} and {i} share a page");
        }
    }
    let entry = image.entry;
    check!(
        segments.iter().any(|s| s.executable && entry >= s.vaddr && entry < s.vaddr + s.mem_size),
        "entry {entry:#x} in no executable segment"
    );
    Ok(())
}
