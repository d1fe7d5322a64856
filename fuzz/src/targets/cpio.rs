//! `cpio`: reading the initrd (newc archives).
//!
//! A reference reader written here (128-bit offsets, the error order the module documents)
//! must find the same entries at the same places and fail with the same error at the same
//! offset. Every entry's name and data are slices of the archive itself, in order and
//! non-overlapping, data 4-byte aligned after its name; at most one error ends the iteration;
//! `find` returns the first entry of a name, or `Ok(None)` only for a well-formed archive.

use crate::engine::{Target, Verdict};
use crate::features::Features;
use crate::real::RealInputs;
use crate::{check, check_eq};
use kernel_core::guest::cpio::{Archive, CpioError, HEADER_SIZE, MAGIC, TRAILER};

pub const TARGET: Target = Target {
    name: "cpio",
    checks: "entries and errors (with offsets) equal a reference newc reader; names and data are in-order, \
             non-overlapping slices of the archive; one error at most, then the end; find() is consistent",
    max_len: 16 * 1024,
    dictionary: &[
        b"070701",
        b"TRAILER!!!\0",
        b"00000000",
        b"FFFFFFFF",
        b"ffffffff",
        b"0000000B",
        b"000081A4",
        b"000041ED",
        b"image.cfg\0",
        b"bin/",
        b"\0\0\0",
    ],
    seeds,
    run,
};

/// A newc writer, as `cargo xtask build` writes the initrd.
pub fn write_archive(files: &[(&[u8], u32, &[u8])], trailer: bool) -> Vec<u8> {
    let mut out = Vec::new();
    let mut add = |name: &[u8], mode: u32, data: &[u8], inode: u32| {
        let fields = [inode, mode, 0, 0, 1, 0, data.len() as u32, 0, 0, 0, 0, name.len() as u32 + 1, 0];
        out.extend_from_slice(MAGIC);
        for field in fields {
            out.extend_from_slice(format!("{field:08x}").as_bytes());
        }
        out.extend_from_slice(name);
        out.push(0);
        out.resize(out.len().next_multiple_of(4), 0);
        out.extend_from_slice(data);
        out.resize(out.len().next_multiple_of(4), 0);
    };
    for (inode, (name, mode, data)) in files.iter().enumerate() {
        add(name, *mode, data, inode as u32 + 1);
    }
    if trailer {
        add(TRAILER.as_bytes(), 0, &[], 0);
    }
    out
}

fn seeds(real: &RealInputs) -> Vec<Vec<u8>> {
    let config: &[u8] = b"image\tname=hello\nguest\tname=hello-0\tapp=hello\theap_kib=64\targs=\n";
    let elf_head: &[u8] = b"\x7fELF\x02\x01\x01\0\0\0\0\0\0\0\0\0\x02\0\x3e\0";
    let mut seeds = vec![
        write_archive(
            &[(b"image.cfg", 0o100644, config), (b"bin", 0o40755, b""), (b"bin/hello", 0o100755, elf_head)],
            true,
        ),
        write_archive(&[(b"a", 0o100644, b"x")], true),
        write_archive(&[(b"a", 0o100644, b"xyz"), (b"a", 0o100644, b"second")], false),
        write_archive(&[], true),
    ];
    // Real initrds, with file data cut to a few hundred bytes (the reader never looks inside
    // a file, and whole guest ELF files would make each execution copy megabytes).
    for initrd in &real.initrds {
        let entries: Vec<_> = Archive::new(initrd).entries().flatten().collect();
        let files: Vec<(&[u8], u32, &[u8])> =
            entries.iter().map(|e| (e.name.as_bytes(), e.mode, &e.data[..e.data.len().min(300)])).collect();
        let shrunk = write_archive(&files, true);
        if !seeds.contains(&shrunk) {
            seeds.push(shrunk);
        }
    }
    seeds
}

/// One entry as the reference reader finds it: byte ranges within the archive.
#[derive(Debug, PartialEq, Eq)]
struct Found {
    name: (usize, usize),
    data: (usize, usize),
    mode: u32,
}

fn hex_field(header: &[u8], index: usize) -> Option<u32> {
    let digits = &header[6 + 8 * index..6 + 8 * index + 8];
    let text = std::str::from_utf8(digits).ok()?;
    // from_str_radix accepts a leading '+', which newc does not.
    if !text.bytes().all(|b| b.is_ascii_hexdigit()) {
        return None;
    }
    u32::from_str_radix(text, 16).ok()
}

fn round4(value: u128) -> u128 {
    value.div_ceil(4) * 4
}

/// Reads the whole archive the way the module documents it.
fn reference(bytes: &[u8]) -> (Vec<Found>, Option<CpioError>) {
    let len = bytes.len() as u128;
    let mut found = Vec::new();
    let mut offset = 0usize;
    loop {
        if offset >= bytes.len() {
            return (found, Some(CpioError::MissingTrailer));
        }
        let rest = &bytes[offset..];
        let magic_len = rest.len().min(6);
        if rest[..magic_len] != MAGIC[..magic_len] {
            return (found, Some(CpioError::BadMagic { offset }));
        }
        let truncated = Some(CpioError::Truncated { offset });
        if rest.len() < HEADER_SIZE {
            return (found, truncated);
        }
        let header = &rest[..HEADER_SIZE];
        let Some(fields) = (0..13).map(|i| hex_field(header, i)).collect::<Option<Vec<u32>>>() else {
            return (found, Some(CpioError::BadHeader { offset }));
        };
        let (mode, file_size, name_size) = (fields[1], u128::from(fields[6]), u128::from(fields[11]));
        let name_start = offset as u128 + HEADER_SIZE as u128;
        let name_end = name_start + name_size;
        let data_start = round4(name_end);
        let data_end = data_start + file_size;
        let next = round4(data_end);
        if name_end > len {
            return (found, truncated);
        }
        let name_bytes = &bytes[name_start as usize..name_end as usize];
        let name_ok = name_bytes.len() >= 2
            && name_bytes.last() == Some(&0)
            && !name_bytes[..name_bytes.len() - 1].contains(&0)
            && std::str::from_utf8(&name_bytes[..name_bytes.len() - 1]).is_ok();
        if !name_ok {
            return (found, Some(CpioError::BadName { offset }));
        }
        if data_end > len {
            return (found, truncated);
        }
        let is_trailer = &name_bytes[..name_bytes.len() - 1] == TRAILER.as_bytes();
        if is_trailer {
            return (found, None);
        }
        if next > len {
            return (found, truncated);
        }
        found.push(Found {
            name: (name_start as usize, name_end as usize - 1),
            data: (data_start as usize, data_end as usize),
            mode,
        });
        offset = next as usize;
    }
}

/// Where `part` lies in `whole`, if it is a slice of it.
fn range_in(whole: &[u8], part: &[u8]) -> Option<(usize, usize)> {
    let start = (part.as_ptr() as usize).checked_sub(whole.as_ptr() as usize)?;
    (start + part.len() <= whole.len()).then_some((start, start + part.len()))
}

fn run(bytes: &[u8], features: &mut Features) -> Verdict {
    let archive = Archive::new(bytes);
    let mut entries = Vec::new();
    let mut error = None;
    let mut iterator = archive.entries();
    for item in iterator.by_ref() {
        check!(error.is_none(), "an item after the error {error:?}");
        match item {
            Ok(entry) => entries.push(entry),
            Err(e) => error = Some(e),
        }
    }
    check!(iterator.next().is_none(), "the iterator yields after its end");
    features.note_count("entries", entries.len() as u64);
    features.note("error", error.as_ref().map_or(0, error_kind));

    let (expected, expected_error) = reference(bytes);
    check_eq!(error, expected_error, "error");
    check_eq!(entries.len(), expected.len(), "entry count");
    let mut previous_end = 0;
    for (entry, want) in entries.iter().zip(&expected) {
        let name = range_in(bytes, entry.name.as_bytes());
        let data = range_in(bytes, entry.data);
        check_eq!(name, Some(want.name), "name {:?} location", entry.name);
        check_eq!(data, Some(want.data), "data of {:?} location", entry.name);
        check_eq!(entry.mode, want.mode, "mode of {:?}", entry.name);
        check!(want.name.0 >= previous_end + HEADER_SIZE, "entry {:?} overlaps the one before", entry.name);
        check!(want.data.0 % 4 == 0 && want.data.0 > want.name.1, "data of {:?} misplaced", entry.name);
        check!(!entry.name.is_empty() && !entry.name.contains('\0') && entry.name != TRAILER, "name {:?}", entry.name);
        check_eq!(entry.is_file(), entry.mode & 0o170000 == 0o100000, "is_file of mode {:o}", entry.mode);
        previous_end = want.data.1;
    }

    // find(): the first entry of each name; a missing name only in a well-formed archive.
    for entry in entries.iter().take(4) {
        let first = entries.iter().find(|e| e.name == entry.name).copied();
        check_eq!(archive.find(entry.name), Ok(first), "find({:?})", entry.name);
    }
    let missing = archive.find("no such file\u{1}");
    match error {
        None => check_eq!(missing, Ok(None), "find of a missing name in a good archive"),
        Some(e) => {
            check_eq!(missing, Err(e), "find of a missing name in a bad archive");
            let _ = e.to_string();
        }
    }
    Ok(())
}

/// A small number per error variant, for feature reporting.
fn error_kind(error: &CpioError) -> u64 {
    match error {
        CpioError::BadMagic { .. } => 1,
        CpioError::BadHeader { .. } => 2,
        CpioError::Truncated { .. } => 3,
        CpioError::BadName { .. } => 4,
        CpioError::MissingTrailer => 5,
    }
}
