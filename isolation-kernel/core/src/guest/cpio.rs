//! Reading the initrd, a cpio archive in the "newc" format (magic `070701`).
//!
//! `cargo xtask build` writes the archive, but the kernel still treats it as untrusted bytes:
//! every size is checked against what is there, and a malformed archive is an error value
//! with the offset where it went wrong. Entries borrow from the archive; nothing is copied.
//!
//! Layout of each entry: a 110-byte ASCII header (the magic, then 13 fields of 8 hex digits),
//! the NUL-terminated name padded so that header and name end on a 4-byte boundary, then the
//! file data padded to a 4-byte boundary. The archive ends with an entry named `TRAILER!!!`.

/// Magic at the start of every "newc" header.
pub const MAGIC: &[u8; 6] = b"070701";
/// Size of an entry header.
pub const HEADER_SIZE: usize = 110;
/// Name of the entry that ends the archive.
pub const TRAILER: &str = "TRAILER!!!";

/// Field indices within the header, after the magic.
const FIELD_MODE: usize = 1;
const FIELD_FILESIZE: usize = 6;
const FIELD_NAMESIZE: usize = 11;
/// `S_IFMT` and `S_IFREG` of the mode field.
const MODE_TYPE_MASK: u32 = 0o170_000;
const MODE_REGULAR: u32 = 0o100_000;

/// One archive member.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Entry<'a> {
    pub name: &'a str,
    pub data: &'a [u8],
    /// Type and permission bits, as `st_mode`.
    pub mode: u32,
}

impl Entry<'_> {
    /// Whether this is a regular file (not a directory, link or device).
    pub fn is_file(&self) -> bool {
        self.mode & MODE_TYPE_MASK == MODE_REGULAR
    }
}

/// Why the archive could not be read; `offset` is where the bad entry starts, from the
/// start of the archive.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CpioError {
    /// The entry does not start with `070701`.
    BadMagic { offset: usize },
    /// A header field is not 8 hex digits.
    BadHeader { offset: usize },
    /// The archive ends inside this entry (header, name, data or padding).
    Truncated { offset: usize },
    /// The name is empty, not NUL-terminated, contains a NUL, or is not UTF-8.
    BadName { offset: usize },
    /// The archive ends between entries without a `TRAILER!!!` entry.
    MissingTrailer,
}

impl core::fmt::Display for CpioError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match *self {
            CpioError::BadMagic { offset } => {
                write!(f, "cpio entry at offset {offset:#x} lacks the newc magic 070701")
            }
            CpioError::BadHeader { offset } => {
                write!(f, "cpio header at offset {offset:#x} has a field that is not hex")
            }
            CpioError::Truncated { offset } => {
                write!(f, "cpio archive ends inside the entry at offset {offset:#x}")
            }
            CpioError::BadName { offset } => {
                write!(f, "cpio entry at offset {offset:#x} has a malformed name")
            }
            CpioError::MissingTrailer => write!(f, "cpio archive has no {TRAILER} entry"),
        }
    }
}

/// A newc archive in memory.
#[derive(Clone, Copy, Debug)]
pub struct Archive<'a> {
    bytes: &'a [u8],
}

impl<'a> Archive<'a> {
    /// Wraps the bytes; nothing is checked until the entries are read.
    pub fn new(bytes: &'a [u8]) -> Self {
        Archive { bytes }
    }

    /// The entries in archive order, without the trailer. Yields at most one error, then ends.
    pub fn entries(&self) -> Entries<'a> {
        Entries { bytes: self.bytes, offset: 0, done: false }
    }

    /// The first entry called `name`. `Ok(None)` only if the whole archive, trailer included,
    /// is well-formed and has no such entry.
    pub fn find(&self, name: &str) -> Result<Option<Entry<'a>>, CpioError> {
        for entry in self.entries() {
            let entry = entry?;
            if entry.name == name {
                return Ok(Some(entry));
            }
        }
        Ok(None)
    }
}

/// Iterator over an [`Archive`]'s entries.
#[derive(Clone, Debug)]
pub struct Entries<'a> {
    bytes: &'a [u8],
    offset: usize,
    done: bool,
}

impl<'a> Iterator for Entries<'a> {
    type Item = Result<Entry<'a>, CpioError>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.done {
            return None;
        }
        if self.offset >= self.bytes.len() {
            self.done = true;
            return Some(Err(CpioError::MissingTrailer));
        }
        match read_entry(self.bytes, self.offset) {
            Ok((entry, next)) => {
                if entry.name == TRAILER {
                    self.done = true;
                    return None;
                }
                self.offset = next;
                Some(Ok(entry))
            }
            Err(error) => {
                self.done = true;
                Some(Err(error))
            }
        }
    }
}

impl core::iter::FusedIterator for Entries<'_> {}

/// Reads the entry at `offset`; returns it and the offset of the next one.
fn read_entry(bytes: &[u8], offset: usize) -> Result<(Entry<'_>, usize), CpioError> {
    let truncated = CpioError::Truncated { offset };
    let rest = bytes.get(offset..).ok_or(truncated)?;
    // Report a wrong magic even when the header is also cut short.
    let magic_len = rest.len().min(MAGIC.len());
    if rest.get(..magic_len) != MAGIC.get(..magic_len) {
        return Err(CpioError::BadMagic { offset });
    }
    let header = rest.get(..HEADER_SIZE).ok_or(truncated)?;
    let field = |index: usize| -> Result<u32, CpioError> {
        let start = index.checked_mul(8).and_then(|at| at.checked_add(MAGIC.len())).ok_or(truncated)?;
        let digits = header.get(start..start.checked_add(8).ok_or(truncated)?).ok_or(truncated)?;
        parse_hex(digits).ok_or(CpioError::BadHeader { offset })
    };
    // Check every field, even those we do not use, so a corrupt header is noticed.
    for index in 0..13 {
        field(index)?;
    }
    let mode = field(FIELD_MODE)?;
    let file_size = usize::try_from(field(FIELD_FILESIZE)?).map_err(|_| truncated)?;
    let name_size = usize::try_from(field(FIELD_NAMESIZE)?).map_err(|_| truncated)?;

    let name_start = offset.checked_add(HEADER_SIZE).ok_or(truncated)?;
    let name_end = name_start.checked_add(name_size).ok_or(truncated)?;
    let data_start = align4(name_end).ok_or(truncated)?;
    let data_end = data_start.checked_add(file_size).ok_or(truncated)?;
    let next = align4(data_end).ok_or(truncated)?;

    let name_bytes = bytes.get(name_start..name_end).ok_or(truncated)?;
    let name = match name_bytes.split_last() {
        Some((0, name)) if !name.is_empty() && !name.contains(&0) => {
            core::str::from_utf8(name).map_err(|_| CpioError::BadName { offset })?
        }
        _ => return Err(CpioError::BadName { offset }),
    };
    // The name padding must be there (`get` fails if `data_start` is past the end, even for
    // empty data); the data padding too, except after the trailer.
    let data = bytes.get(data_start..data_end).ok_or(truncated)?;
    if name != TRAILER && next > bytes.len() {
        return Err(truncated);
    }
    Ok((Entry { name, data, mode }, next))
}

/// Rounds up to a multiple of 4 (`None` on overflow).
fn align4(value: usize) -> Option<usize> {
    Some(value.checked_add(3)? & !3)
}

/// Eight ASCII hex digits (either case) as a number.
fn parse_hex(digits: &[u8]) -> Option<u32> {
    if digits.len() != 8 {
        return None;
    }
    digits.iter().try_fold(0u32, |value, &digit| {
        let nibble = char::from(digit).to_digit(16)?;
        Some(value << 4 | nibble)
    })
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing, clippy::arithmetic_side_effects)]
mod tests {
    use super::*;

    const FILE_MODE: u32 = 0o100_644;
    const DIR_MODE: u32 = 0o040_755;

    /// A newc writer, as `cargo xtask build` produces: `files` then the trailer.
    fn write_archive(files: &[(&str, u32, &[u8])]) -> Vec<u8> {
        let mut out = Vec::new();
        for (ino, (name, mode, data)) in files.iter().enumerate() {
            write_entry(&mut out, ino as u32 + 1, name.as_bytes(), *mode, data);
        }
        write_entry(&mut out, 0, TRAILER.as_bytes(), 0, &[]);
        out
    }

    fn write_entry(out: &mut Vec<u8>, ino: u32, name: &[u8], mode: u32, data: &[u8]) {
        let fields = [ino, mode, 0, 0, 1, 0, data.len() as u32, 0, 0, 0, 0, name.len() as u32 + 1, 0];
        out.extend_from_slice(MAGIC);
        for value in fields {
            out.extend_from_slice(format!("{value:08X}").as_bytes());
        }
        out.extend_from_slice(name);
        out.push(0);
        while !out.len().is_multiple_of(4) {
            out.push(0);
        }
        out.extend_from_slice(data);
        while !out.len().is_multiple_of(4) {
            out.push(0);
        }
    }

    fn collect(archive: &[u8]) -> Result<Vec<Entry<'_>>, CpioError> {
        Archive::new(archive).entries().collect()
    }

    #[test]
    fn round_trip() {
        let big: Vec<u8> = (0..1000u32).map(|i| (i * 7) as u8).collect();
        // Name lengths 1..=8 give every name-padding case (110 + len + 1 mod 4); data lengths
        // 0..=3 and more give every data-padding case.
        let files: Vec<(String, u32, Vec<u8>)> = vec![
            ("a".into(), FILE_MODE, b"x".to_vec()),
            ("bb".into(), FILE_MODE, b"yy".to_vec()),
            ("ccc".into(), FILE_MODE, b"zzz".to_vec()),
            ("dddd".into(), FILE_MODE, b"wwww".to_vec()),
            ("bin".into(), DIR_MODE, Vec::new()),
            ("empty".into(), FILE_MODE, Vec::new()),
            ("image.cfg".into(), FILE_MODE, b"image\tname=hello\n".to_vec()),
            ("bin/hello".into(), 0o100_755, big.clone()),
            ("eeeeeee".into(), FILE_MODE, vec![1, 2, 3, 4, 5]),
            ("ffffffff".into(), FILE_MODE, vec![9; 6]),
            ("ünïcödé".into(), FILE_MODE, vec![7; 7]),
        ];
        let refs: Vec<(&str, u32, &[u8])> = files.iter().map(|(n, m, d)| (n.as_str(), *m, d.as_slice())).collect();
        let archive = write_archive(&refs);
        assert_eq!(archive.len() % 4, 0);
        let entries = collect(&archive).unwrap();
        assert_eq!(entries.len(), files.len());
        for (entry, (name, mode, data)) in entries.iter().zip(&files) {
            assert_eq!(entry.name, name);
            assert_eq!(entry.mode, *mode);
            assert_eq!(entry.data, data.as_slice());
        }
        assert!(!entries[4].is_file());
        assert!(entries[5].is_file());

        let a = Archive::new(&archive);
        assert_eq!(a.find("bin/hello").unwrap().unwrap().data, big.as_slice());
        assert_eq!(a.find("empty").unwrap().unwrap().data, b"");
        assert_eq!(a.find("image.cfg").unwrap().unwrap().data, b"image\tname=hello\n");
        assert_eq!(a.find("bin/nope").unwrap(), None);
        assert_eq!(a.find("").unwrap(), None);
        assert_eq!(a.find(TRAILER).unwrap(), None);
    }

    #[test]
    fn empty_archive_with_trailer() {
        let archive = write_archive(&[]);
        assert_eq!(archive.len(), 124);
        assert_eq!(collect(&archive).unwrap(), vec![]);
        assert_eq!(Archive::new(&archive).find("x"), Ok(None));
    }

    #[test]
    fn anything_after_the_trailer_is_ignored() {
        let mut archive = write_archive(&[("a", FILE_MODE, b"1")]);
        archive.resize(512, 0); // cpio(1) pads to a block
        archive.extend_from_slice(b"garbage");
        assert_eq!(collect(&archive).unwrap().len(), 1);
    }

    #[test]
    fn lowercase_hex_is_accepted() {
        let mut archive = write_archive(&[("a", FILE_MODE, &[0xab; 0x1c])]);
        let size_field = 6 + FIELD_FILESIZE * 8;
        assert_eq!(&archive[size_field..size_field + 8], b"0000001C");
        archive[size_field + 7] = b'c';
        assert_eq!(collect(&archive).unwrap()[0].data, &[0xab; 0x1c]);
    }

    #[test]
    fn every_truncation_is_an_error() {
        let archive = write_archive(&[
            ("a", FILE_MODE, b"hello"),
            ("empty", FILE_MODE, b""),
            ("bin/x", FILE_MODE, &[1, 2, 3, 4, 5, 6, 7, 8]),
        ]);
        for len in 0..archive.len() {
            let bytes = &archive[..len];
            let result = collect(bytes);
            assert!(result.is_err(), "prefix of {len} bytes accepted");
            assert!(Archive::new(bytes).find("nope").is_err(), "find in {len} bytes");
        }
        assert_eq!(collect(&archive[..0]), Err(CpioError::MissingTrailer));
        assert_eq!(collect(&archive[..50]), Err(CpioError::Truncated { offset: 0 }));
        // Cut inside the first entry's data and inside its padding.
        assert_eq!(collect(&archive[..114]), Err(CpioError::Truncated { offset: 0 }));
        assert_eq!(collect(&archive[..118]), Err(CpioError::Truncated { offset: 0 }));
        // Cut at an entry boundary: no trailer.
        assert_eq!(collect(&archive[..120]), Err(CpioError::MissingTrailer));
        assert_eq!(collect(&archive[..123]), Err(CpioError::Truncated { offset: 120 }));
    }

    #[test]
    fn find_stops_at_the_first_match_but_reports_errors_before_it() {
        let archive = write_archive(&[("a", FILE_MODE, b"1"), ("b", FILE_MODE, b"2")]);
        let cut = &archive[..archive.len() - 10]; // inside the trailer
        assert_eq!(Archive::new(cut).find("a").unwrap().unwrap().data, b"1");
        assert_eq!(Archive::new(cut).find("b").unwrap().unwrap().data, b"2");
        assert!(Archive::new(cut).find("c").is_err());
        // The first of two same-named entries wins.
        let dup = write_archive(&[("a", FILE_MODE, b"1"), ("a", FILE_MODE, b"2")]);
        assert_eq!(Archive::new(&dup).find("a").unwrap().unwrap().data, b"1");
    }

    #[test]
    fn bad_magic() {
        let mut archive = write_archive(&[("a", FILE_MODE, b"1")]);
        archive[5] = b'2'; // 070702 is newc with checksums, not what we write
        assert_eq!(collect(&archive), Err(CpioError::BadMagic { offset: 0 }));
        let mut archive = write_archive(&[("a", FILE_MODE, b"1")]);
        archive[116] = b'X'; // second entry's magic
        assert_eq!(collect(&archive), Err(CpioError::BadMagic { offset: 116 }));
        assert_eq!(collect(b"07"), Err(CpioError::Truncated { offset: 0 }));
        assert_eq!(collect(b"17"), Err(CpioError::BadMagic { offset: 0 }));
        assert_eq!(collect(&[0xff; 200]), Err(CpioError::BadMagic { offset: 0 }));
    }

    #[test]
    fn non_hex_fields() {
        for field in 0..13 {
            for bad in [b'g', b' ', b'-', b'+', 0xff] {
                let mut archive = write_archive(&[("a", FILE_MODE, b"1")]);
                archive[6 + field * 8 + 3] = bad;
                assert_eq!(collect(&archive), Err(CpioError::BadHeader { offset: 0 }), "{field}");
            }
        }
    }

    #[test]
    fn missing_trailer() {
        let mut archive = Vec::new();
        write_entry(&mut archive, 1, b"a", FILE_MODE, b"1");
        write_entry(&mut archive, 2, b"b", FILE_MODE, b"");
        let mut entries = Archive::new(&archive).entries();
        assert_eq!(entries.next().unwrap().unwrap().name, "a");
        assert_eq!(entries.next().unwrap().unwrap().name, "b");
        assert_eq!(entries.next(), Some(Err(CpioError::MissingTrailer)));
        assert_eq!(entries.next(), None);
        assert_eq!(entries.next(), None);
        assert_eq!(Archive::new(&archive).find("c"), Err(CpioError::MissingTrailer));
        assert_eq!(Archive::new(&archive).find("b").unwrap().unwrap().name, "b");
        // A trailer-like name that is not exactly the trailer does not end the archive.
        let mut archive = Vec::new();
        write_entry(&mut archive, 1, b"TRAILER!!", 0, b"");
        assert_eq!(collect(&archive), Err(CpioError::MissingTrailer));
    }

    #[test]
    fn bad_names() {
        let namesize = 6 + FIELD_NAMESIZE * 8;
        // No NUL at the end of the name (namesize says 2, name is "ab").
        let mut archive = Vec::new();
        write_entry(&mut archive, 1, b"ab", FILE_MODE, b"");
        archive.truncate(110);
        archive.extend_from_slice(b"ab\0\0");
        archive[namesize..namesize + 8].copy_from_slice(b"00000002");
        write_entry(&mut archive, 0, TRAILER.as_bytes(), 0, &[]);
        assert_eq!(collect(&archive), Err(CpioError::BadName { offset: 0 }));
        // Empty name, and namesize 0.
        let mut archive = write_archive(&[("", FILE_MODE, b"")]);
        assert_eq!(collect(&archive), Err(CpioError::BadName { offset: 0 }));
        archive[namesize..namesize + 8].copy_from_slice(b"00000000");
        assert_eq!(collect(&archive), Err(CpioError::BadName { offset: 0 }));
        // A NUL inside the name, and a name that is not UTF-8.
        let archive = write_archive(&[("a\0b", FILE_MODE, b"")]);
        assert_eq!(collect(&archive), Err(CpioError::BadName { offset: 0 }));
        let mut archive = Vec::new();
        write_entry(&mut archive, 1, &[b'a', 0xff, 0xfe], FILE_MODE, b"");
        write_entry(&mut archive, 0, TRAILER.as_bytes(), 0, &[]);
        assert_eq!(collect(&archive), Err(CpioError::BadName { offset: 0 }));
    }

    #[test]
    fn huge_sizes_are_truncation_not_panics() {
        for (field, value) in
            [(FIELD_FILESIZE, b"FFFFFFFF"), (FIELD_NAMESIZE, b"FFFFFFFF"), (FIELD_FILESIZE, b"7FFFFFFF")]
        {
            let mut archive = write_archive(&[("a", FILE_MODE, b"1")]);
            let at = 6 + field * 8;
            archive[at..at + 8].copy_from_slice(value);
            assert_eq!(collect(&archive), Err(CpioError::Truncated { offset: 0 }));
        }
    }

    #[test]
    fn hostile_bytes_never_panic() {
        let archive = write_archive(&[("a", FILE_MODE, b"hello"), ("bin/x", FILE_MODE, b"12345678")]);
        for index in 0..archive.len() {
            for value in [b'0', b'F', b'g', 0, 0xff] {
                let mut bad = archive.clone();
                bad[index] = value;
                let _ = collect(&bad);
                let _ = Archive::new(&bad).find("bin/x");
            }
        }
    }

    #[test]
    fn errors_display() {
        assert_eq!(
            CpioError::BadMagic { offset: 0x74 }.to_string(),
            "cpio entry at offset 0x74 lacks the newc magic 070701"
        );
        assert_eq!(CpioError::MissingTrailer.to_string(), "cpio archive has no TRAILER!!! entry");
        assert!(CpioError::Truncated { offset: 8 }.to_string().contains("0x8"));
    }
}
