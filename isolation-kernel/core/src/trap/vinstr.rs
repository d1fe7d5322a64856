//! Decoding the instruction at a guest's RIP after a #GP from ring 3.
//!
//! Guests signal the kernel with port I/O (virtual instructions), and the TSS I/O bitmap turns
//! every `in`/`out` from ring 3 into a #GP. The handler reads the bytes at RIP and asks this
//! module what they are: a port access to emulate (with its length, to step over it), or a
//! privileged instruction to name in the guest's stop cause. The bytes come from guest memory,
//! so they are hostile: any input gives a value, never a panic. Only what a ring-3 #GP can
//! come from is decoded; everything else is [`GpInstruction::Other`].

/// The architectural limit: a longer instruction raises #GP itself.
pub const MAX_INSTRUCTION_LEN: usize = 15;

/// Which way a port access moves data.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Direction {
    /// Port to register (`in`).
    In,
    /// Register to port (`out`).
    Out,
}

/// Where the port number comes from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PortOperand {
    /// An 8-bit immediate in the instruction.
    Imm(u8),
    /// The `dx` register.
    Dx,
}

/// A non-string `in`/`out` instruction, as the kernel emulates it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PortIo {
    pub direction: Direction,
    /// Access size in bytes: 1, 2 or 4 (`al`, `ax`, `eax`).
    pub width: u8,
    pub port: PortOperand,
    /// Total instruction length including prefixes: how far to advance RIP.
    pub len: usize,
}

/// A privileged instruction that faults in ring 3 (reported, never emulated).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Privileged {
    Hlt,
    Cli,
    Sti,
    Wrmsr,
    Rdmsr,
    MovToCr,
    MovFromCr,
    MovToDr,
    MovFromDr,
    Lgdt,
    Lidt,
    Lldt,
    Ltr,
    Lmsw,
    Invlpg,
    Invd,
    Wbinvd,
    Clts,
}

impl Privileged {
    /// Assembler-style name for stop causes and logs.
    pub fn mnemonic(self) -> &'static str {
        match self {
            Privileged::Hlt => "hlt",
            Privileged::Cli => "cli",
            Privileged::Sti => "sti",
            Privileged::Wrmsr => "wrmsr",
            Privileged::Rdmsr => "rdmsr",
            Privileged::MovToCr => "mov to cr",
            Privileged::MovFromCr => "mov from cr",
            Privileged::MovToDr => "mov to dr",
            Privileged::MovFromDr => "mov from dr",
            Privileged::Lgdt => "lgdt",
            Privileged::Lidt => "lidt",
            Privileged::Lldt => "lldt",
            Privileged::Ltr => "ltr",
            Privileged::Lmsw => "lmsw",
            Privileged::Invlpg => "invlpg",
            Privileged::Invd => "invd",
            Privileged::Wbinvd => "wbinvd",
            Privileged::Clts => "clts",
        }
    }
}

/// What the faulting instruction is, as far as the #GP handler cares.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum GpInstruction {
    /// `in`/`out` with an immediate or `dx` port: a virtual instruction to emulate.
    PortIo(PortIo),
    /// `ins`/`outs` (6C..6F): not part of the ABI, so the guest is stopped.
    StringIo,
    Privileged(Privileged),
    /// Anything else (a bad segment load, a non-canonical address, ...).
    Other,
}

/// Why the bytes at RIP could not be decoded.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DecodeError {
    /// No bytes were readable at RIP.
    Empty,
    /// The bytes ended before the instruction did (it straddles the end of the guest's mapping).
    Truncated,
    /// The instruction would be longer than [`MAX_INSTRUCTION_LEN`] bytes.
    TooLong,
}

impl core::fmt::Display for DecodeError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            DecodeError::Empty => f.write_str("no instruction bytes are readable"),
            DecodeError::Truncated => f.write_str("instruction runs past the readable bytes"),
            DecodeError::TooLong => {
                write!(f, "instruction is longer than {MAX_INSTRUCTION_LEN} bytes")
            }
        }
    }
}

/// Decodes the instruction at the start of `bytes` (what is readable at RIP, at most 15 bytes
/// matter; fewer when the guest's mapping ends).
pub fn decode_gp(bytes: &[u8]) -> Result<GpInstruction, DecodeError> {
    if bytes.is_empty() {
        return Err(DecodeError::Empty);
    }
    let bytes = bytes.get(..MAX_INSTRUCTION_LEN).unwrap_or(bytes);
    let Prefixed { index, operand_size, opcode } = skip_prefixes(bytes)?;
    let wide = if operand_size { 2 } else { 4 };
    let port_io = |direction, width, port, len| Ok(GpInstruction::PortIo(PortIo { direction, width, port, len }));
    // Indices stay below MAX_INSTRUCTION_LEN + 2 (`byte_at` refuses any beyond the limit), so
    // the additions here and in `decode_0f` never saturate.
    let after = index.saturating_add(1);
    match opcode {
        0xE4..=0xE7 => {
            let imm = byte_at(bytes, after)?;
            let direction = if opcode & 2 == 0 { Direction::In } else { Direction::Out };
            let width = if opcode & 1 == 0 { 1 } else { wide };
            port_io(direction, width, PortOperand::Imm(imm), after.saturating_add(1))
        }
        0xEC..=0xEF => {
            let direction = if opcode & 2 == 0 { Direction::In } else { Direction::Out };
            let width = if opcode & 1 == 0 { 1 } else { wide };
            port_io(direction, width, PortOperand::Dx, after)
        }
        0x6C..=0x6F => Ok(GpInstruction::StringIo),
        0xF4 => Ok(GpInstruction::Privileged(Privileged::Hlt)),
        0xFA => Ok(GpInstruction::Privileged(Privileged::Cli)),
        0xFB => Ok(GpInstruction::Privileged(Privileged::Sti)),
        0x0F => decode_0f(bytes, after),
        _ => Ok(GpInstruction::Other),
    }
}

/// The prefixes of an instruction skipped: where its opcode byte sits and what it is.
struct Prefixed {
    index: usize,
    /// Whether an operand-size prefix (66) was among the prefixes.
    operand_size: bool,
    opcode: u8,
}

/// Skips legacy prefixes in any order, and REX. A REX that is not directly before the opcode is
/// ignored by the CPU, so skipping it wherever it appears gives the same meaning; REX never
/// changes what is decoded here (REX.W does not widen port I/O beyond 32 bits).
#[inline(always)]
fn skip_prefixes(bytes: &[u8]) -> Result<Prefixed, DecodeError> {
    let mut operand_size = false;
    for (index, &byte) in bytes.iter().enumerate().take(MAX_INSTRUCTION_LEN) {
        match byte {
            0x66 => operand_size = true,
            0x67 | 0xF0 | 0xF2 | 0xF3 | 0x2E | 0x36 | 0x3E | 0x26 | 0x64 | 0x65 => {}
            0x40..=0x4F => {}
            opcode => return Ok(Prefixed { index, operand_size, opcode }),
        }
    }
    Err(if bytes.len() >= MAX_INSTRUCTION_LEN { DecodeError::TooLong } else { DecodeError::Truncated })
}

/// The floating-point or SIMD unit an instruction needs: how the kernel names a guest's `#NM`
/// or `#UD` (see [`fpu_use`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FpuUse {
    /// x87: the escape opcodes D8..DF, and `fwait`.
    X87,
    /// MMX or SSE: the SIMD opcodes of the 0F map (and its 0F 38 / 0F 3A extensions), `emms`,
    /// 3DNow!, and `fxsave`/`fxrstor`/`ldmxcsr`/`stmxcsr`.
    MmxSse,
    /// AVX and later (VEX or EVEX encoded) and `xsave`/`xrstor`: state beyond what FXSAVE holds,
    /// which no guest is given.
    Avx,
}

/// Which floating-point or SIMD unit the instruction at the start of `bytes` uses, if any.
/// Only names a trap's cause, so undecodable bytes are simply `None`.
pub fn fpu_use(bytes: &[u8]) -> Option<FpuUse> {
    let Prefixed { index, opcode, .. } = skip_prefixes(bytes).ok()?;
    let next = |skip: usize| index.checked_add(skip).and_then(|at| bytes.get(at)).copied();
    match opcode {
        0xD8..=0xDF | 0x9B => Some(FpuUse::X87),
        // In 64-bit mode C4/C5 are always VEX and 62 always EVEX (LES, LDS and BOUND are gone).
        0xC4 | 0xC5 | 0x62 => Some(FpuUse::Avx),
        0x0F => match next(1)? {
            0x0E | 0x0F | 0x10..=0x17 | 0x28..=0x2F | 0x50..=0x7F | 0xC2 | 0xC4..=0xC6 | 0xD0..=0xFE => {
                Some(FpuUse::MmxSse)
            }
            // 0F 38 F0.. and 0F 3A F0.. are integer instructions (movbe, crc32, adcx, ...).
            0x38 | 0x3A => (next(2)? < 0xF0).then_some(FpuUse::MmxSse),
            // 0F AE: memory forms /0../3 are fxsave, fxrstor, ldmxcsr, stmxcsr; /4 and /5 are
            // xsave and xrstor; register forms are fences and fs/gs-base instructions.
            0xAE => {
                let modrm = next(2)?;
                match (modrm >> 6, (modrm >> 3) & 7) {
                    (3, _) => None,
                    (_, 0..=3) => Some(FpuUse::MmxSse),
                    (_, 4 | 5) => Some(FpuUse::Avx),
                    _ => None,
                }
            }
            _ => None,
        },
        _ => None,
    }
}

/// The two-byte opcodes; `index` is where the byte after 0F sits.
fn decode_0f(bytes: &[u8], index: usize) -> Result<GpInstruction, DecodeError> {
    let privileged = |p| Ok(GpInstruction::Privileged(p));
    match byte_at(bytes, index)? {
        0x00 => match modrm(bytes, index.saturating_add(1))? {
            (_, 2, _) => privileged(Privileged::Lldt),
            (_, 3, _) => privileged(Privileged::Ltr),
            _ => Ok(GpInstruction::Other),
        },
        0x01 => match modrm(bytes, index.saturating_add(1))? {
            (mode, 2, _) if mode != 3 => privileged(Privileged::Lgdt),
            (mode, 3, _) if mode != 3 => privileged(Privileged::Lidt),
            (_, 6, _) => privileged(Privileged::Lmsw),
            (mode, 7, _) if mode != 3 => privileged(Privileged::Invlpg),
            _ => Ok(GpInstruction::Other),
        },
        0x06 => privileged(Privileged::Clts),
        0x08 => privileged(Privileged::Invd),
        0x09 => privileged(Privileged::Wbinvd),
        0x20 => privileged(Privileged::MovFromCr),
        0x21 => privileged(Privileged::MovFromDr),
        0x22 => privileged(Privileged::MovToCr),
        0x23 => privileged(Privileged::MovToDr),
        0x30 => privileged(Privileged::Wrmsr),
        0x32 => privileged(Privileged::Rdmsr),
        _ => Ok(GpInstruction::Other),
    }
}

/// The ModRM byte at `index`, split into (mod, reg, rm).
fn modrm(bytes: &[u8], index: usize) -> Result<(u8, u8, u8), DecodeError> {
    let byte = byte_at(bytes, index)?;
    Ok((byte >> 6, (byte >> 3) & 7, byte & 7))
}

/// The byte at `index`, or why the instruction cannot have it.
fn byte_at(bytes: &[u8], index: usize) -> Result<u8, DecodeError> {
    if index >= MAX_INSTRUCTION_LEN {
        return Err(DecodeError::TooLong);
    }
    bytes.get(index).copied().ok_or(DecodeError::Truncated)
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing, clippy::arithmetic_side_effects)]
mod tests {
    use super::*;

    fn io(direction: Direction, width: u8, port: PortOperand, len: usize) -> GpInstruction {
        GpInstruction::PortIo(PortIo { direction, width, port, len })
    }

    fn privileged(p: Privileged) -> Result<GpInstruction, DecodeError> {
        Ok(GpInstruction::Privileged(p))
    }

    #[test]
    fn every_port_io_form() {
        use Direction::{In, Out};
        use PortOperand::{Dx, Imm};
        let cases: [(&[u8], GpInstruction); 8] = [
            (&[0xE4, 0x60], io(In, 1, Imm(0x60), 2)),
            (&[0xE5, 0x71], io(In, 4, Imm(0x71), 2)),
            (&[0xE6, 0xF4], io(Out, 1, Imm(0xF4), 2)),
            (&[0xE7, 0x00], io(Out, 4, Imm(0x00), 2)),
            (&[0xEC], io(In, 1, Dx, 1)),
            (&[0xED], io(In, 4, Dx, 1)),
            (&[0xEE], io(Out, 1, Dx, 1)),
            (&[0xEF], io(Out, 4, Dx, 1)),
        ];
        for (bytes, want) in cases {
            assert_eq!(decode_gp(bytes), Ok(want), "{bytes:02x?}");
        }
    }

    #[test]
    fn operand_size_prefix_gives_16_bits_only_for_wide_forms() {
        use Direction::{In, Out};
        use PortOperand::{Dx, Imm};
        let cases: [(&[u8], GpInstruction); 8] = [
            (&[0x66, 0xE4, 0x10], io(In, 1, Imm(0x10), 3)),
            (&[0x66, 0xE5, 0x10], io(In, 2, Imm(0x10), 3)),
            (&[0x66, 0xE6, 0x10], io(Out, 1, Imm(0x10), 3)),
            (&[0x66, 0xE7, 0x10], io(Out, 2, Imm(0x10), 3)),
            (&[0x66, 0xEC], io(In, 1, Dx, 2)),
            (&[0x66, 0xED], io(In, 2, Dx, 2)),
            (&[0x66, 0xEE], io(Out, 1, Dx, 2)),
            (&[0x66, 0xEF], io(Out, 2, Dx, 2)),
        ];
        for (bytes, want) in cases {
            assert_eq!(decode_gp(bytes), Ok(want), "{bytes:02x?}");
        }
        // A repeated prefix is still 16 bits.
        assert_eq!(decode_gp(&[0x66, 0x66, 0xEF]), Ok(io(Out, 2, Dx, 3)));
    }

    #[test]
    fn rex_does_not_widen_and_counts_in_length() {
        use Direction::{In, Out};
        use PortOperand::{Dx, Imm};
        assert_eq!(decode_gp(&[0x48, 0xEF]), Ok(io(Out, 4, Dx, 2)));
        assert_eq!(decode_gp(&[0x48, 0xE5, 0x20]), Ok(io(In, 4, Imm(0x20), 3)));
        assert_eq!(decode_gp(&[0x66, 0x48, 0xED]), Ok(io(In, 2, Dx, 3)));
        assert_eq!(decode_gp(&[0x41, 0xEE]), Ok(io(Out, 1, Dx, 2)));
        // A REX followed by a legacy prefix is ignored by the CPU but is still a byte to skip.
        assert_eq!(decode_gp(&[0x48, 0x66, 0xED]), Ok(io(In, 2, Dx, 3)));
    }

    #[test]
    fn segment_and_other_prefixes_are_skipped() {
        use Direction::{In, Out};
        use PortOperand::{Dx, Imm};
        for prefix in [0x2E, 0x36, 0x3E, 0x26, 0x64, 0x65, 0x67, 0xF2, 0xF3, 0xF0] {
            assert_eq!(decode_gp(&[prefix, 0xEE]), Ok(io(Out, 1, Dx, 2)), "{prefix:#x}");
            assert_eq!(decode_gp(&[prefix, 0xE5, 7]), Ok(io(In, 4, Imm(7), 3)), "{prefix:#x}");
        }
        assert_eq!(decode_gp(&[0x64, 0x66, 0x67, 0x48, 0xE7, 0x99]), Ok(io(Out, 2, Imm(0x99), 6)));
    }

    #[test]
    fn trailing_bytes_after_the_instruction_are_ignored() {
        let bytes = [0xE6, 0x80, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF];
        assert_eq!(decode_gp(&bytes), Ok(io(Direction::Out, 1, PortOperand::Imm(0x80), 2)));
        // More than 15 bytes offered: only the first 15 matter.
        let mut long = [0x90u8; 40];
        long[0] = 0xEC;
        assert_eq!(decode_gp(&long), Ok(io(Direction::In, 1, PortOperand::Dx, 1)));
    }

    #[test]
    fn string_io_is_separate() {
        for opcode in 0x6C..=0x6F {
            assert_eq!(decode_gp(&[opcode]), Ok(GpInstruction::StringIo));
            assert_eq!(decode_gp(&[0xF3, 0x66, opcode]), Ok(GpInstruction::StringIo));
        }
    }

    #[test]
    fn privileged_instructions() {
        let cases: [(&[u8], Privileged); 21] = [
            (&[0xF4], Privileged::Hlt),
            (&[0xFA], Privileged::Cli),
            (&[0xFB], Privileged::Sti),
            (&[0x0F, 0x30], Privileged::Wrmsr),
            (&[0x0F, 0x32], Privileged::Rdmsr),
            (&[0x0F, 0x22, 0xD8], Privileged::MovToCr),       // mov cr3, rax
            (&[0x44, 0x0F, 0x22, 0xC0], Privileged::MovToCr), // mov cr8, rax
            (&[0x0F, 0x20, 0xC0], Privileged::MovFromCr),     // mov rax, cr0
            (&[0x0F, 0x23, 0xC0], Privileged::MovToDr),
            (&[0x0F, 0x21, 0xC0], Privileged::MovFromDr),
            (&[0x0F, 0x01, 0x38], Privileged::Invlpg),       // invlpg [rax]
            (&[0x0F, 0x01, 0x7D, 0x08], Privileged::Invlpg), // invlpg [rbp+8]
            (&[0x0F, 0x01, 0x10], Privileged::Lgdt),         // lgdt [rax]
            (&[0x0F, 0x01, 0x18], Privileged::Lidt),         // lidt [rax]
            (&[0x0F, 0x01, 0xF0], Privileged::Lmsw),         // lmsw ax
            (&[0x0F, 0x00, 0xD0], Privileged::Lldt),         // lldt ax
            (&[0x0F, 0x00, 0xD8], Privileged::Ltr),          // ltr ax
            (&[0x0F, 0x08], Privileged::Invd),
            (&[0x0F, 0x09], Privileged::Wbinvd),
            (&[0x0F, 0x06], Privileged::Clts),
            (&[0x2E, 0x0F, 0x01, 0x3C, 0x24], Privileged::Invlpg), // cs invlpg [rsp]
        ];
        for (bytes, want) in cases {
            assert_eq!(decode_gp(bytes), privileged(want), "{bytes:02x?}");
        }
    }

    #[test]
    fn register_forms_of_0f01_are_not_descriptor_loads() {
        // 0F 01 D0 is xgetbv, D8 is vmrun, F8 is swapgs, F9 is rdtscp: mod == 11.
        for modrm in [0xD0, 0xD8, 0xF8, 0xF9, 0xC1] {
            assert_eq!(decode_gp(&[0x0F, 0x01, modrm]), Ok(GpInstruction::Other), "{modrm:#x}");
        }
        // sgdt [rax] (/0) and sidt [rax] (/1) are not privileged.
        assert_eq!(decode_gp(&[0x0F, 0x01, 0x00]), Ok(GpInstruction::Other));
        assert_eq!(decode_gp(&[0x0F, 0x01, 0x08]), Ok(GpInstruction::Other));
        // sldt ax (0F 00 /0).
        assert_eq!(decode_gp(&[0x0F, 0x00, 0xC0]), Ok(GpInstruction::Other));
    }

    #[test]
    fn mnemonics() {
        assert_eq!(Privileged::Hlt.mnemonic(), "hlt");
        assert_eq!(Privileged::Cli.mnemonic(), "cli");
        assert_eq!(Privileged::Wrmsr.mnemonic(), "wrmsr");
        assert_eq!(Privileged::MovToCr.mnemonic(), "mov to cr");
        assert_eq!(Privileged::MovFromCr.mnemonic(), "mov from cr");
        assert_eq!(Privileged::Invlpg.mnemonic(), "invlpg");
        assert_eq!(Privileged::Clts.mnemonic(), "clts");
    }

    #[test]
    fn garbage_is_other() {
        let cases: [&[u8]; 8] = [
            &[0x90],
            &[0xFF, 0xFF],
            &[0x00, 0x00],
            &[0xCC],
            &[0x8E, 0xD8],             // mov ds, ax
            &[0x0F, 0x0B],             // ud2
            &[0x0F, 0x31],             // rdtsc
            &[0xC4, 0xE2, 0x79, 0x18], // a VEX instruction
        ];
        for bytes in cases {
            assert_eq!(decode_gp(bytes), Ok(GpInstruction::Other), "{bytes:02x?}");
        }
    }

    #[test]
    fn truncated() {
        let cases: [&[u8]; 12] = [
            &[0x66],
            &[0x48],
            &[0x2E, 0x66, 0x48],
            &[0xE4],
            &[0xE5],
            &[0xE6],
            &[0x66, 0xE7],
            &[0x0F],
            &[0x66, 0x0F],
            &[0x0F, 0x01],
            &[0x0F, 0x00],
            &[0xF3, 0x0F, 0x01],
        ];
        for bytes in cases {
            assert_eq!(decode_gp(bytes), Err(DecodeError::Truncated), "{bytes:02x?}");
        }
    }

    #[test]
    fn too_long() {
        assert_eq!(decode_gp(&[0x66; 15]), Err(DecodeError::TooLong));
        assert_eq!(decode_gp(&[0x2E; 40]), Err(DecodeError::TooLong));
        // 14 prefixes + opcode is 15 bytes: fine.
        let mut bytes = [0x3E; 15];
        bytes[14] = 0xEC;
        assert_eq!(decode_gp(&bytes), Ok(io(Direction::In, 1, PortOperand::Dx, 15)));
        // 14 prefixes + opcode + immediate would be 16 bytes, even if more bytes are readable.
        let mut bytes = [0x3E; 16];
        bytes[14] = 0xE6;
        assert_eq!(decode_gp(&bytes), Err(DecodeError::TooLong));
        assert_eq!(decode_gp(&bytes[..15]), Err(DecodeError::TooLong));
        let mut bytes = [0x64; 15];
        bytes[14] = 0x0F;
        assert_eq!(decode_gp(&bytes), Err(DecodeError::TooLong));
    }

    #[test]
    fn empty() {
        assert_eq!(decode_gp(&[]), Err(DecodeError::Empty));
    }

    #[test]
    fn no_input_panics() {
        // Every one- and two-byte input, and every 3-byte input after each prefix-like byte.
        for a in 0..=255u8 {
            let _ = decode_gp(&[a]);
            for b in 0..=255u8 {
                let _ = decode_gp(&[a, b]);
                let _ = decode_gp(&[0x66, a, b]);
                let _ = decode_gp(&[0x0F, a, b]);
            }
        }
        // Port I/O results always have a sane width and a length within the input and limit.
        for a in 0..=255u8 {
            for b in 0..=255u8 {
                let bytes = [0x66, a, b, 0xEF, 0x12];
                if let Ok(GpInstruction::PortIo(p)) = decode_gp(&bytes) {
                    assert!(matches!(p.width, 1 | 2 | 4));
                    assert!(p.len <= bytes.len() && p.len <= MAX_INSTRUCTION_LEN);
                }
            }
        }
    }

    #[test]
    fn floating_point_and_simd_instructions_are_named() {
        use FpuUse::{Avx, MmxSse, X87};
        let cases: [(&[u8], Option<FpuUse>); 30] = [
            (&[0xDB, 0xE3], Some(X87)),                            // fninit
            (&[0xDF, 0x28], Some(X87)),                            // fild qword [rax]
            (&[0xDF, 0x38], Some(X87)),                            // fistp qword [rax]
            (&[0xD9, 0x28], Some(X87)),                            // fldcw [rax]
            (&[0x9B], Some(X87)),                                  // fwait
            (&[0x48, 0x0F, 0x6E, 0xC0], Some(MmxSse)),             // movq mm0, rax
            (&[0x48, 0x0F, 0x7E, 0xC0], Some(MmxSse)),             // movq rax, mm0
            (&[0x0F, 0x77], Some(MmxSse)),                         // emms
            (&[0x66, 0x48, 0x0F, 0x6E, 0xC0], Some(MmxSse)),       // movq xmm0, rax
            (&[0x66, 0x4C, 0x0F, 0x6E, 0xF8], Some(MmxSse)),       // movq xmm15, rax
            (&[0x0F, 0x28, 0xC1], Some(MmxSse)),                   // movaps xmm0, xmm1
            (&[0xF2, 0x0F, 0x58, 0xC1], Some(MmxSse)),             // addsd xmm0, xmm1
            (&[0x66, 0x0F, 0xEF, 0xC0], Some(MmxSse)),             // pxor xmm0, xmm0
            (&[0x66, 0x0F, 0x38, 0x00, 0xC1], Some(MmxSse)),       // pshufb xmm0, xmm1
            (&[0x66, 0x0F, 0x3A, 0x22, 0xC0, 0x01], Some(MmxSse)), // pinsrd xmm0, eax, 1
            (&[0x0F, 0xAE, 0x00], Some(MmxSse)),                   // fxsave [rax]
            (&[0x48, 0x0F, 0xAE, 0x08], Some(MmxSse)),             // fxrstor64 [rax]
            (&[0x0F, 0xAE, 0x10], Some(MmxSse)),                   // ldmxcsr [rax]
            (&[0x0F, 0xAE, 0x20], Some(Avx)),                      // xsave [rax]
            (&[0xC5, 0xF8, 0x58, 0xC0], Some(Avx)),                // vaddps xmm0, xmm0, xmm0
            (&[0x62, 0xF1, 0x7C, 0x48, 0x58, 0xC0], Some(Avx)),    // vaddps zmm0, zmm0, zmm0
            (&[0x0F, 0x0B], None),                                 // ud2
            (&[0x0F, 0xAE, 0xE8], None),                           // lfence
            (&[0xF3, 0x48, 0x0F, 0xAE, 0xD0], None),               // wrfsbase rax
            (&[0x0F, 0x31], None),                                 // rdtsc
            (&[0xF2, 0x0F, 0x38, 0xF1, 0xC0], None),               // crc32 eax, eax
            (&[0x8E, 0xD8], None),                                 // mov ds, ax
            (&[0x90], None),
            (&[0x66, 0x0F], None), // truncated
            (&[], None),
        ];
        for (bytes, want) in cases {
            assert_eq!(fpu_use(bytes), want, "{bytes:02x?}");
        }
        assert_eq!(fpu_use(&[0x66; 20]), None);
    }

    #[test]
    fn errors_display() {
        assert_eq!(DecodeError::Empty.to_string(), "no instruction bytes are readable");
        assert!(DecodeError::TooLong.to_string().contains("15"));
        assert!(DecodeError::Truncated.to_string().contains("past"));
    }
}
