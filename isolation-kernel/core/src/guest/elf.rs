//! Validating and describing a guest ELF image.
//!
//! Guest programs arrive in the initrd, so the file is untrusted input: every offset, size and
//! address is checked before the loader copies a byte or maps a page. What comes out is a short
//! list of loadable segments, each inside the guest's image area
//! ([`IMAGE_BASE`]..[`IMAGE_LIMIT`]), inside the file, and on pages no other segment touches,
//! plus an entry point that lies in executable memory.

use hypercall_abi::initrd::RefusalKind;
use hypercall_abi::layout::{IMAGE_BASE, IMAGE_LIMIT, PAGE_SIZE};

/// Most loadable segments a guest image may have (linkers emit three or four).
pub const MAX_SEGMENTS: usize = 16;

const EHDR_SIZE: usize = 64;
const PHDR_SIZE: usize = 56;
const ELFCLASS64: u8 = 2;
const ELFDATA2LSB: u8 = 1;
const ET_EXEC: u16 = 2;
const EM_X86_64: u16 = 62;
const PT_LOAD: u32 = 1;
const PF_X: u32 = 1;
const PF_W: u32 = 2;

/// One `PT_LOAD` segment: `mem_size` bytes at `vaddr`, the first `file_size` of them from the
/// file at `file_offset`, the rest zero.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct Segment {
    pub vaddr: u64,
    pub mem_size: u64,
    pub file_offset: u64,
    pub file_size: u64,
    pub writable: bool,
    pub executable: bool,
}

impl Segment {
    /// The page-aligned `[start, end)` the segment is mapped on (saturating at the top page
    /// for hand-made segments; parsed ones are far below it).
    pub fn page_range(&self) -> (u64, u64) {
        let mask = PAGE_SIZE - 1;
        let end = self.vaddr.saturating_add(self.mem_size).saturating_add(mask) & !mask;
        (self.vaddr & !mask, end)
    }
}

/// A validated guest image.
#[derive(Clone, Debug)]
pub struct ElfImage {
    pub entry: u64,
    segments: [Segment; MAX_SEGMENTS],
    count: usize,
}

impl ElfImage {
    /// The loadable segments, in program-header order.
    pub fn segments(&self) -> &[Segment] {
        self.segments.get(..self.count).unwrap_or(&[])
    }
}

/// Why a guest ELF file was rejected. `index` is the program header's index in the file.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ElfError {
    /// Shorter than the 64-byte ELF header.
    TooShort,
    BadMagic,
    Not64Bit,
    NotLittleEndian,
    /// `e_type` is not `ET_EXEC` (guests are linked at a fixed address, not position independent).
    NotExecutable,
    /// `e_machine` is not x86-64 (62); holds the value found.
    WrongMachine(u16),
    /// Program header entries of the wrong size, or a table outside the file.
    BadProgramHeaders,
    /// More than [`MAX_SEGMENTS`] loadable segments.
    TooManySegments,
    /// No loadable segment with memory in it.
    NoSegments,
    /// The segment's file bytes lie (partly) outside the file.
    SegmentOutOfFile {
        index: usize,
    },
    FileSizeExceedsMemSize {
        index: usize,
    },
    /// The segment is not inside `[IMAGE_BASE, IMAGE_LIMIT)`.
    SegmentOutsideImageArea {
        index: usize,
    },
    /// Two segments share a page.
    OverlappingSegments {
        first: usize,
        second: usize,
    },
    /// `vaddr` and `file_offset` differ modulo the page size, so the file cannot be mapped.
    MisalignedSegment {
        index: usize,
    },
    /// The entry point is not inside an executable segment.
    EntryNotExecutable(u64),
}

impl ElfError {
    /// The stable kind: what `expect = "refused:KIND"` names.
    pub fn kind(&self) -> RefusalKind {
        match self {
            ElfError::TooShort => RefusalKind::ElfTooShort,
            ElfError::BadMagic => RefusalKind::ElfBadMagic,
            ElfError::Not64Bit => RefusalKind::ElfNot64Bit,
            ElfError::NotLittleEndian => RefusalKind::ElfNotLittleEndian,
            ElfError::NotExecutable => RefusalKind::ElfNotExecutable,
            ElfError::WrongMachine(_) => RefusalKind::ElfWrongMachine,
            ElfError::BadProgramHeaders => RefusalKind::ElfBadProgramHeaders,
            ElfError::TooManySegments => RefusalKind::ElfTooManySegments,
            ElfError::NoSegments => RefusalKind::ElfNoSegments,
            ElfError::SegmentOutOfFile { .. } => RefusalKind::ElfSegmentOutOfFile,
            ElfError::FileSizeExceedsMemSize { .. } => RefusalKind::ElfFileSizeExceedsMemSize,
            ElfError::SegmentOutsideImageArea { .. } => RefusalKind::ElfSegmentOutsideImageArea,
            ElfError::OverlappingSegments { .. } => RefusalKind::ElfOverlappingSegments,
            ElfError::MisalignedSegment { .. } => RefusalKind::ElfMisalignedSegment,
            ElfError::EntryNotExecutable(_) => RefusalKind::ElfEntryNotExecutable,
        }
    }
}

impl core::fmt::Display for ElfError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match *self {
            ElfError::TooShort => write!(f, "file is shorter than the {EHDR_SIZE}-byte ELF header"),
            ElfError::BadMagic => f.write_str("not an ELF file (bad magic)"),
            ElfError::Not64Bit => f.write_str("not a 64-bit ELF file"),
            ElfError::NotLittleEndian => f.write_str("not a little-endian ELF file"),
            ElfError::NotExecutable => f.write_str("not a fixed-address executable (ET_EXEC)"),
            ElfError::WrongMachine(m) => write!(f, "machine type {m} is not x86-64 ({EM_X86_64})"),
            ElfError::BadProgramHeaders => f.write_str("program header table is malformed or outside the file"),
            ElfError::TooManySegments => {
                write!(f, "more than {MAX_SEGMENTS} loadable segments")
            }
            ElfError::NoSegments => f.write_str("no loadable segments"),
            ElfError::SegmentOutOfFile { index } => {
                write!(f, "segment {index} extends beyond the end of the file")
            }
            ElfError::FileSizeExceedsMemSize { index } => {
                write!(f, "segment {index} has more file bytes than memory bytes")
            }
            ElfError::SegmentOutsideImageArea { index } => {
                write!(f, "segment {index} lies outside the guest image area ")?;
                write!(f, "{IMAGE_BASE:#x}..{IMAGE_LIMIT:#x}")
            }
            ElfError::OverlappingSegments { first, second } => {
                write!(f, "segments {first} and {second} share a page")
            }
            ElfError::MisalignedSegment { index } => {
                write!(f, "segment {index} has address and file offset at different page offsets")
            }
            ElfError::EntryNotExecutable(entry) => {
                write!(f, "entry point {entry:#x} is not in an executable segment")
            }
        }
    }
}

/// Validates `bytes` as a guest executable and describes what to load.
pub fn parse(bytes: &[u8]) -> Result<ElfImage, ElfError> {
    let header = bytes.get(..EHDR_SIZE).ok_or(ElfError::TooShort)?;
    if header.get(..4) != Some(b"\x7fELF".as_slice()) {
        return Err(ElfError::BadMagic);
    }
    if header.get(4) != Some(&ELFCLASS64) {
        return Err(ElfError::Not64Bit);
    }
    if header.get(5) != Some(&ELFDATA2LSB) {
        return Err(ElfError::NotLittleEndian);
    }
    // Within the header every read below succeeds; `?` on them keeps the code panic-free.
    let short = ElfError::TooShort;
    if u16_at(header, 16).ok_or(short)? != ET_EXEC {
        return Err(ElfError::NotExecutable);
    }
    let machine = u16_at(header, 18).ok_or(short)?;
    if machine != EM_X86_64 {
        return Err(ElfError::WrongMachine(machine));
    }
    let entry = u64_at(header, 24).ok_or(short)?;
    let phoff = u64_at(header, 32).ok_or(short)?;
    let phentsize = u16_at(header, 54).ok_or(short)?;
    let phnum = u16_at(header, 56).ok_or(short)?;

    let table = program_headers(bytes, phoff, phentsize, phnum)?;
    let mut image = ElfImage { entry, segments: [Segment::default(); MAX_SEGMENTS], count: 0 };
    // Program-header index of each accepted segment, for error reports.
    let mut indices = [0usize; MAX_SEGMENTS];
    for (index, phdr) in table.chunks_exact(PHDR_SIZE).enumerate() {
        let field = |offset| u64_at(phdr, offset).ok_or(ElfError::BadProgramHeaders);
        let kind = u32_at(phdr, 0).ok_or(ElfError::BadProgramHeaders)?;
        let flags = u32_at(phdr, 4).ok_or(ElfError::BadProgramHeaders)?;
        let segment = Segment {
            file_offset: field(8)?,
            vaddr: field(16)?,
            file_size: field(32)?,
            mem_size: field(40)?,
            writable: flags & PF_W != 0,
            executable: flags & PF_X != 0,
        };
        if kind != PT_LOAD || segment.mem_size == 0 {
            continue;
        }
        check_segment(&segment, index, bytes.len())?;
        for (other, other_index) in image.segments().iter().zip(indices) {
            let (a_start, a_end) = other.page_range();
            let (b_start, b_end) = segment.page_range();
            if a_start < b_end && b_start < a_end {
                return Err(ElfError::OverlappingSegments { first: other_index, second: index });
            }
        }
        // After the overlap check, so a segment moved onto another is reported as an overlap.
        if segment.vaddr % PAGE_SIZE != segment.file_offset % PAGE_SIZE {
            return Err(ElfError::MisalignedSegment { index });
        }
        let slot = image.segments.get_mut(image.count).ok_or(ElfError::TooManySegments)?;
        *slot = segment;
        if let Some(slot) = indices.get_mut(image.count) {
            *slot = index;
        }
        // Below `segments.len()` (the slot above exists), so this never saturates.
        image.count = image.count.saturating_add(1);
    }
    if image.count == 0 {
        return Err(ElfError::NoSegments);
    }
    let entry_ok = image
        .segments()
        .iter()
        .any(|s| s.executable && entry.checked_sub(s.vaddr).is_some_and(|offset| offset < s.mem_size));
    if !entry_ok {
        return Err(ElfError::EntryNotExecutable(entry));
    }
    Ok(image)
}

/// The program header table as a byte slice of whole entries.
fn program_headers(bytes: &[u8], phoff: u64, phentsize: u16, phnum: u16) -> Result<&[u8], ElfError> {
    if phnum == 0 {
        return Err(ElfError::NoSegments);
    }
    if usize::from(phentsize) != PHDR_SIZE {
        return Err(ElfError::BadProgramHeaders);
    }
    let start = usize::try_from(phoff).map_err(|_| ElfError::BadProgramHeaders)?;
    let end = usize::from(phnum)
        .checked_mul(PHDR_SIZE)
        .and_then(|size| start.checked_add(size))
        .ok_or(ElfError::BadProgramHeaders)?;
    bytes.get(start..end).ok_or(ElfError::BadProgramHeaders)
}

/// Checks a loadable segment's sizes and bounds (overlap and alignment are the caller's).
fn check_segment(s: &Segment, index: usize, file_len: usize) -> Result<(), ElfError> {
    if s.file_size > s.mem_size {
        return Err(ElfError::FileSizeExceedsMemSize { index });
    }
    let in_file = s.file_offset.checked_add(s.file_size).is_some_and(|end| end <= file_len as u64);
    if !in_file {
        return Err(ElfError::SegmentOutOfFile { index });
    }
    let in_area = s.vaddr >= IMAGE_BASE && s.vaddr.checked_add(s.mem_size).is_some_and(|end| end <= IMAGE_LIMIT);
    if !in_area {
        return Err(ElfError::SegmentOutsideImageArea { index });
    }
    Ok(())
}

fn u16_at(bytes: &[u8], offset: usize) -> Option<u16> {
    let raw = bytes.get(offset..offset.checked_add(2)?)?;
    Some(u16::from_le_bytes(raw.try_into().ok()?))
}

fn u32_at(bytes: &[u8], offset: usize) -> Option<u32> {
    let raw = bytes.get(offset..offset.checked_add(4)?)?;
    Some(u32::from_le_bytes(raw.try_into().ok()?))
}

fn u64_at(bytes: &[u8], offset: usize) -> Option<u64> {
    let raw = bytes.get(offset..offset.checked_add(8)?)?;
    Some(u64::from_le_bytes(raw.try_into().ok()?))
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing, clippy::arithmetic_side_effects)]
mod tests {
    use super::*;

    const PT_NOTE: u32 = 4;
    const PT_GNU_STACK: u32 = 0x6474_e551;
    const R: u32 = 4;
    const RX: u32 = 4 | 1;
    const RW: u32 = 4 | 2;

    #[derive(Clone, Copy)]
    struct Phdr {
        kind: u32,
        flags: u32,
        offset: u64,
        vaddr: u64,
        filesz: u64,
        memsz: u64,
    }

    fn load(flags: u32, offset: u64, vaddr: u64, filesz: u64, memsz: u64) -> Phdr {
        Phdr { kind: PT_LOAD, flags, offset, vaddr, filesz, memsz }
    }

    /// A minimal ELF writer: header, program headers right after it, then `payload` bytes.
    struct Builder {
        class: u8,
        data: u8,
        kind: u16,
        machine: u16,
        entry: u64,
        phentsize: u16,
        phoff: Option<u64>,
        phnum: Option<u16>,
        phdrs: Vec<Phdr>,
        payload: usize,
    }

    impl Builder {
        fn new(entry: u64, phdrs: &[Phdr]) -> Builder {
            Builder {
                class: ELFCLASS64,
                data: ELFDATA2LSB,
                kind: ET_EXEC,
                machine: EM_X86_64,
                entry,
                phentsize: PHDR_SIZE as u16,
                phoff: None,
                phnum: None,
                phdrs: phdrs.to_vec(),
                payload: 0x3000,
            }
        }

        fn build(&self) -> Vec<u8> {
            let mut out = vec![0u8; EHDR_SIZE];
            out[..4].copy_from_slice(b"\x7fELF");
            out[4] = self.class;
            out[5] = self.data;
            out[6] = 1; // EI_VERSION
            out[16..18].copy_from_slice(&self.kind.to_le_bytes());
            out[18..20].copy_from_slice(&self.machine.to_le_bytes());
            out[20..24].copy_from_slice(&1u32.to_le_bytes());
            out[24..32].copy_from_slice(&self.entry.to_le_bytes());
            let phoff = self.phoff.unwrap_or(EHDR_SIZE as u64);
            out[32..40].copy_from_slice(&phoff.to_le_bytes());
            out[52..54].copy_from_slice(&(EHDR_SIZE as u16).to_le_bytes());
            out[54..56].copy_from_slice(&self.phentsize.to_le_bytes());
            let phnum = self.phnum.unwrap_or(self.phdrs.len() as u16);
            out[56..58].copy_from_slice(&phnum.to_le_bytes());
            for p in &self.phdrs {
                out.extend_from_slice(&p.kind.to_le_bytes());
                out.extend_from_slice(&p.flags.to_le_bytes());
                out.extend_from_slice(&p.offset.to_le_bytes());
                out.extend_from_slice(&p.vaddr.to_le_bytes());
                out.extend_from_slice(&p.vaddr.to_le_bytes()); // p_paddr
                out.extend_from_slice(&p.filesz.to_le_bytes());
                out.extend_from_slice(&p.memsz.to_le_bytes());
                out.extend_from_slice(&PAGE_SIZE.to_le_bytes()); // p_align
            }
            let len = out.len();
            out.extend((0..self.payload).map(|i| (i + len) as u8));
            out
        }
    }

    /// A typical small static executable: text (R X) on the first page (headers included) and
    /// data+bss (RW) after it, plus a PT_GNU_STACK that must be ignored.
    fn valid() -> Builder {
        let mut b = Builder::new(
            0x40_0100,
            &[
                load(RX, 0, 0x40_0000, 0x1000, 0x1000),
                load(RW, 0x1000, 0x40_1000, 0x800, 0x2400),
                Phdr { kind: PT_GNU_STACK, flags: RW, offset: 0, vaddr: 0, filesz: 0, memsz: 0 },
            ],
        );
        // The file ends exactly where the data segment's file bytes do.
        b.payload = 0x1800 - EHDR_SIZE - 3 * PHDR_SIZE;
        b
    }

    #[test]
    fn valid_image() {
        let image = parse(&valid().build()).unwrap();
        assert_eq!(image.entry, 0x40_0100);
        assert_eq!(
            image.segments(),
            &[
                Segment {
                    vaddr: 0x40_0000,
                    mem_size: 0x1000,
                    file_offset: 0,
                    file_size: 0x1000,
                    writable: false,
                    executable: true,
                },
                Segment {
                    vaddr: 0x40_1000,
                    mem_size: 0x2400,
                    file_offset: 0x1000,
                    file_size: 0x800,
                    writable: true,
                    executable: false,
                },
            ]
        );
        assert_eq!(image.segments()[0].page_range(), (0x40_0000, 0x40_1000));
        assert_eq!(image.segments()[1].page_range(), (0x40_1000, 0x40_4000));
    }

    #[test]
    fn page_range_rounds_out_and_saturates() {
        let s = Segment { vaddr: 0x40_0123, mem_size: 0x1000, ..Segment::default() };
        assert_eq!(s.page_range(), (0x40_0000, 0x40_2000));
        let s = Segment { vaddr: 0x40_1000, mem_size: 1, ..Segment::default() };
        assert_eq!(s.page_range(), (0x40_1000, 0x40_2000));
        let s = Segment { vaddr: u64::MAX - 5, mem_size: 100, ..Segment::default() };
        let (start, end) = s.page_range();
        assert_eq!(start, !(PAGE_SIZE - 1));
        assert!(end.is_multiple_of(PAGE_SIZE));
    }

    #[test]
    fn non_load_and_empty_segments_are_ignored() {
        let mut b = valid();
        b.phdrs.insert(
            0,
            Phdr { kind: PT_NOTE, flags: R, offset: 0x9999_9999, vaddr: 0xffff_8000_0000_0000, filesz: 8, memsz: 8 },
        );
        b.phdrs.push(load(RW, 0x5555_5555, 0x10, 0, 0)); // mem_size 0: skipped
        let image = parse(&b.build()).unwrap();
        assert_eq!(image.segments().len(), 2);
    }

    #[test]
    fn bss_only_segment_is_fine() {
        let mut b = valid();
        b.phdrs.push(load(RW, 0x1000, 0x40_6000, 0, 0x1_0000));
        let image = parse(&b.build()).unwrap();
        assert_eq!(image.segments().len(), 3);
        assert_eq!(image.segments()[2].page_range(), (0x40_6000, 0x41_6000));
    }

    #[test]
    fn every_truncation_is_an_error() {
        let file = valid().build();
        for len in 0..file.len() {
            let result = parse(&file[..len]);
            assert!(result.is_err(), "prefix of {len} bytes parsed");
            if len < EHDR_SIZE {
                assert_eq!(result.unwrap_err(), ElfError::TooShort);
            }
        }
        assert!(parse(&file).is_ok());
        // The program header table cut in the middle.
        assert_eq!(parse(&file[..EHDR_SIZE + PHDR_SIZE + 3]).unwrap_err(), ElfError::BadProgramHeaders);
        // Headers complete, segment data cut.
        assert_eq!(parse(&file[..0xfff]).unwrap_err(), ElfError::SegmentOutOfFile { index: 0 });
        assert_eq!(parse(&file[..0x1000]).unwrap_err(), ElfError::SegmentOutOfFile { index: 1 });
        assert_eq!(parse(&file[..0x1700]).unwrap_err(), ElfError::SegmentOutOfFile { index: 1 });
    }

    #[test]
    fn identification_errors() {
        let mut file = valid().build();
        file[1] = b'X';
        assert_eq!(parse(&file).unwrap_err(), ElfError::BadMagic);
        assert_eq!(parse(&[0u8; 64]).unwrap_err(), ElfError::BadMagic);

        let mut b = valid();
        b.class = 1;
        assert_eq!(parse(&b.build()).unwrap_err(), ElfError::Not64Bit);
        let mut b = valid();
        b.data = 2;
        assert_eq!(parse(&b.build()).unwrap_err(), ElfError::NotLittleEndian);
    }

    #[test]
    fn wrong_machine_and_type() {
        let mut b = valid();
        b.machine = 3; // EM_386
        assert_eq!(parse(&b.build()).unwrap_err(), ElfError::WrongMachine(3));
        let mut b = valid();
        b.kind = 3; // ET_DYN
        assert_eq!(parse(&b.build()).unwrap_err(), ElfError::NotExecutable);
        let mut b = valid();
        b.kind = 1; // ET_REL
        assert_eq!(parse(&b.build()).unwrap_err(), ElfError::NotExecutable);
    }

    #[test]
    fn bad_program_header_tables() {
        let mut b = valid();
        b.phentsize = 64;
        assert_eq!(parse(&b.build()).unwrap_err(), ElfError::BadProgramHeaders);
        let mut b = valid();
        b.phoff = Some(u64::MAX - 10);
        assert_eq!(parse(&b.build()).unwrap_err(), ElfError::BadProgramHeaders);
        let mut b = valid();
        b.phoff = Some(0x10_0000);
        assert_eq!(parse(&b.build()).unwrap_err(), ElfError::BadProgramHeaders);
        let mut b = valid();
        b.phnum = Some(u16::MAX);
        assert_eq!(parse(&b.build()).unwrap_err(), ElfError::BadProgramHeaders);
        let mut b = valid();
        b.phnum = Some(0);
        assert_eq!(parse(&b.build()).unwrap_err(), ElfError::NoSegments);
    }

    #[test]
    fn no_loadable_segments() {
        let b = Builder::new(
            0x40_0000,
            &[
                Phdr { kind: PT_GNU_STACK, flags: RW, offset: 0, vaddr: 0, filesz: 0, memsz: 0 },
                load(RX, 0, 0x40_0000, 0, 0),
            ],
        );
        assert_eq!(parse(&b.build()).unwrap_err(), ElfError::NoSegments);
    }

    #[test]
    fn too_many_segments() {
        let phdrs: Vec<Phdr> = (0..17).map(|i| load(RX, 0, 0x40_0000 + i * PAGE_SIZE, 0x10, 0x10)).collect();
        assert_eq!(parse(&Builder::new(0x40_0000, &phdrs).build()).unwrap_err(), ElfError::TooManySegments);
        let image = parse(&Builder::new(0x40_0000, &phdrs[..16]).build()).unwrap();
        assert_eq!(image.segments().len(), MAX_SEGMENTS);
        assert_eq!(image.segments()[15].vaddr, 0x40_f000);
    }

    #[test]
    fn overlapping_segments() {
        // A segment moved onto another is an overlap even if its offset no longer matches.
        let b =
            Builder::new(0x40_0000, &[load(RX, 0, 0x40_0000, 0x100, 0x100), load(RW, 0x120, 0x40_0000, 0x10, 0x10)]);
        assert_eq!(parse(&b.build()).unwrap_err(), ElfError::OverlappingSegments { first: 0, second: 1 });
        // Same page, disjoint bytes: still an overlap, since mapping is by page.
        let b =
            Builder::new(0x40_0000, &[load(RX, 0, 0x40_0000, 0x100, 0x100), load(RW, 0x200, 0x40_0200, 0x10, 0x10)]);
        assert_eq!(parse(&b.build()).unwrap_err(), ElfError::OverlappingSegments { first: 0, second: 1 });
        // Byte overlap, reported with program header indices (a PT_NOTE in between).
        let b = Builder::new(
            0x40_0000,
            &[
                load(RX, 0, 0x40_0000, 0x2000, 0x2000),
                Phdr { kind: PT_NOTE, flags: R, offset: 0, vaddr: 0, filesz: 0, memsz: 0 },
                load(RW, 0x1000, 0x40_1000, 0x10, 0x3000),
            ],
        );
        assert_eq!(parse(&b.build()).unwrap_err(), ElfError::OverlappingSegments { first: 0, second: 2 });
        // The later segment entirely below the earlier one's last page.
        let b = Builder::new(0x40_5000, &[load(RX, 0, 0x40_5000, 0x10, 0x10), load(RW, 0, 0x40_0000, 0x10, 0x8000)]);
        assert_eq!(parse(&b.build()).unwrap_err(), ElfError::OverlappingSegments { first: 0, second: 1 });
        // Adjacent pages are fine.
        let b =
            Builder::new(0x40_0000, &[load(RX, 0, 0x40_0000, 0x10, 0x1000), load(RW, 0x1000, 0x40_1000, 0x10, 0x10)]);
        assert!(parse(&b.build()).is_ok());
    }

    #[test]
    fn segments_outside_the_image_area() {
        let cases = [
            0xffff_8000_0000_0000, // kernel half
            0xffff_ffff_8000_0000, // where the kernel itself lives
            0,                     // null page
            IMAGE_BASE - PAGE_SIZE,
            IMAGE_LIMIT,
            IMAGE_LIMIT - 0x800, // starts inside, ends past the limit
        ];
        for vaddr in cases {
            let offset = vaddr % PAGE_SIZE;
            let b = Builder::new(0x40_0000, &[load(RX, offset, vaddr, 0x1000, 0x1000)]);
            assert_eq!(parse(&b.build()).unwrap_err(), ElfError::SegmentOutsideImageArea { index: 0 }, "{vaddr:#x}");
        }
        // vaddr + mem_size overflows.
        let b = Builder::new(0x40_0000, &[load(RX, 0, 0x40_0000, 0x10, u64::MAX - 0x1000)]);
        assert_eq!(parse(&b.build()).unwrap_err(), ElfError::SegmentOutsideImageArea { index: 0 });
        // A segment ending exactly at the limit is fine.
        let b = Builder::new(IMAGE_LIMIT - 0x1000, &[load(RX, 0, IMAGE_LIMIT - 0x1000, 0x10, 0x1000)]);
        assert!(parse(&b.build()).is_ok());
    }

    #[test]
    fn file_size_exceeds_mem_size() {
        let b = Builder::new(0x40_0000, &[load(RX, 0, 0x40_0000, 0x200, 0x100)]);
        assert_eq!(parse(&b.build()).unwrap_err(), ElfError::FileSizeExceedsMemSize { index: 0 });
    }

    #[test]
    fn segment_bytes_beyond_the_file() {
        // Offset beyond the file.
        let b = Builder::new(0x40_0000, &[load(RX, 0x10_0000, 0x40_0000, 0x10, 0x10)]);
        assert_eq!(parse(&b.build()).unwrap_err(), ElfError::SegmentOutOfFile { index: 0 });
        // Offset + size overflows.
        let b = Builder::new(0x40_0000, &[load(RX, u64::MAX - 4, 0x40_0000 + PAGE_SIZE - 5, 0x10, 0x10)]);
        assert_eq!(parse(&b.build()).unwrap_err(), ElfError::SegmentOutOfFile { index: 0 });
        // Ends exactly at the end of the file: fine.
        let mut b = Builder::new(0x40_0000, &[load(RX, 0, 0x40_0000, 0x1000, 0x1000)]);
        b.payload = 0x1000 - EHDR_SIZE - PHDR_SIZE;
        assert!(parse(&b.build()).is_ok());
        b.payload -= 1;
        assert_eq!(parse(&b.build()).unwrap_err(), ElfError::SegmentOutOfFile { index: 0 });
    }

    #[test]
    fn misaligned_segment() {
        let b = Builder::new(0x40_0000, &[load(RX, 0x100, 0x40_0000, 0x10, 0x10)]);
        assert_eq!(parse(&b.build()).unwrap_err(), ElfError::MisalignedSegment { index: 0 });
        // Same offset within the page: fine.
        let b = Builder::new(0x40_0100, &[load(RX, 0x100, 0x40_0100, 0x10, 0x10)]);
        assert!(parse(&b.build()).is_ok());
    }

    #[test]
    fn entry_must_be_executable() {
        let mut b = valid();
        b.entry = 0x40_1000; // the data segment
        assert_eq!(parse(&b.build()).unwrap_err(), ElfError::EntryNotExecutable(0x40_1000));
        b.entry = 0x40_0000 + 0x1000; // one past the text segment (= data)
        assert!(parse(&b.build()).is_err());
        b.entry = 0x40_0fff; // last byte of text
        assert!(parse(&b.build()).is_ok());
        b.entry = 0x3f_ffff;
        assert_eq!(parse(&b.build()).unwrap_err(), ElfError::EntryNotExecutable(0x3f_ffff));
        b.entry = 0;
        assert_eq!(parse(&b.build()).unwrap_err(), ElfError::EntryNotExecutable(0));
        b.entry = u64::MAX;
        assert_eq!(parse(&b.build()).unwrap_err(), ElfError::EntryNotExecutable(u64::MAX));
        // The rest of the text segment's last page, beyond mem_size, is not the segment.
        let b = Builder::new(0x40_0080, &[load(RX, 0, 0x40_0000, 0x80, 0x80)]);
        assert_eq!(parse(&b.build()).unwrap_err(), ElfError::EntryNotExecutable(0x40_0080));
    }

    #[test]
    fn hostile_bytes_never_panic() {
        // Corrupt every byte of the headers with a few values; each result is a value.
        let file = valid().build();
        let header_len = EHDR_SIZE + 3 * PHDR_SIZE;
        for index in 0..header_len {
            for value in [0x00, 0x01, 0x7f, 0x80, 0xff] {
                let mut bad = file.clone();
                bad[index] = value;
                let _ = parse(&bad);
            }
        }
        // A simple xorshift stream for random headers that pass the identification checks.
        let mut state = 0x1234_5678_9abc_def0u64;
        for round in 0..4000 {
            // Half the rounds keep the ELF header intact and scramble only the program headers.
            let first = if round % 2 == 0 { 24 } else { EHDR_SIZE };
            let mut bad = file.clone();
            for byte in bad[first..header_len].iter_mut() {
                state ^= state << 13;
                state ^= state >> 7;
                state ^= state << 17;
                *byte = state as u8;
            }
            if let Ok(image) = parse(&bad) {
                for s in image.segments() {
                    assert!(s.vaddr >= IMAGE_BASE && s.vaddr + s.mem_size <= IMAGE_LIMIT);
                    assert!(s.file_offset + s.file_size <= bad.len() as u64);
                }
            }
        }
    }

    #[test]
    fn errors_display() {
        assert_eq!(ElfError::WrongMachine(3).to_string(), "machine type 3 is not x86-64 (62)");
        assert_eq!(ElfError::OverlappingSegments { first: 1, second: 2 }.to_string(), "segments 1 and 2 share a page");
        assert_eq!(
            ElfError::EntryNotExecutable(0x1234).to_string(),
            "entry point 0x1234 is not in an executable segment"
        );
        assert!(ElfError::SegmentOutsideImageArea { index: 4 }
            .to_string()
            .contains(&format!("{IMAGE_BASE:#x}..{IMAGE_LIMIT:#x}")));
    }
}
