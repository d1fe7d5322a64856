//! `vinstr::decode_gp`: the instruction bytes at a guest's RIP after a #GP.
//!
//! The first input byte chooses a mode:
//! - even: the rest is raw bytes at RIP. A reference decoder written here for the port I/O
//!   forms must agree with the kernel's; any decoded length lies within the bytes given and
//!   15; bytes after a decoded instruction, or beyond 15, never change the result; a cut-short
//!   port instruction is `Truncated`.
//! - odd: an encoder builds a port instruction (`in`/`out`, immediate or `dx` port, 8/16/32
//!   bits) behind random legacy and REX prefixes, followed by junk; the decoder must give back
//!   exactly what was encoded, or `TooLong` if it exceeds 15 bytes.

use crate::engine::{Target, Verdict};
use crate::features::Features;
use crate::source::Source;
use crate::{check, check_eq};
use kernel_core::trap::vinstr::{
    decode_gp, DecodeError, Direction, GpInstruction, PortIo, PortOperand, MAX_INSTRUCTION_LEN,
};

pub const TARGET: Target = Target {
    name: "vinstr",
    checks: "decoded length <= bytes given and <= 15; port I/O agrees with a reference decoder; encoded \
             in/out with random prefixes round-trips; trailing bytes never change the result",
    max_len: 40,
    dictionary: &[&[0x66], &[0x48], &[0xEF], &[0xE6], &[0x0F, 0x01], &[0x0F, 0x22], &[0xF3, 0x66]],
    seeds,
    run,
};

/// Legacy prefixes and REX, as the CPU accepts them before an opcode in 64-bit mode.
const PREFIXES: [u8; 27] = [
    0x66, 0x67, 0xF0, 0xF2, 0xF3, 0x2E, 0x36, 0x3E, 0x26, 0x64, 0x65, 0x40, 0x41, 0x42, 0x43, 0x44, 0x45, 0x46, 0x47,
    0x48, 0x49, 0x4A, 0x4B, 0x4C, 0x4D, 0x4E, 0x4F,
];
const PORT_OPCODES: [u8; 8] = [0xE4, 0xE5, 0xE6, 0xE7, 0xEC, 0xED, 0xEE, 0xEF];

fn seeds(_: &crate::real::RealInputs) -> Vec<Vec<u8>> {
    let raw = |bytes: &[u8]| [&[0u8][..], bytes].concat();
    vec![
        raw(&[0xEF]),                          // out dx, eax: the virtual instruction
        raw(&[0x66, 0xEF, 0x90]),              // out dx, ax
        raw(&[0xE6, 0xF4]),                    // out 0xf4, al
        raw(&[0xF4]),                          // hlt
        raw(&[0x0F, 0x01, 0x38]),              // invlpg [rax]
        raw(&[0x0F, 0x22, 0xD8]),              // mov cr3, rax
        raw(&[0xF3, 0x6E]),                    // rep outsb
        raw(&[0x3E; 14]),                      // prefixes up to the limit
        vec![1, 3, 0, 5, 2, 0x12, 0xAB, 0xCD], // encoder mode
    ]
}

fn run(input: &[u8], features: &mut Features) -> Verdict {
    let Some((&mode, rest)) = input.split_first() else {
        return Ok(());
    };
    if mode & 1 == 0 {
        raw_bytes(rest, features)
    } else {
        encoded(rest, features)
    }
}

fn note_result(features: &mut Features, result: &Result<GpInstruction, DecodeError>) {
    let kind = match result {
        Ok(GpInstruction::PortIo(p)) => 10 + p.len as u64 * 8 + u64::from(p.width),
        Ok(GpInstruction::StringIo) => 1,
        Ok(GpInstruction::Privileged(p)) => 200 + *p as u64,
        Ok(GpInstruction::Other) => 2,
        Err(e) => 300 + *e as u64,
    };
    features.note("result", kind);
}

/// What the reference decoder makes of the bytes, for port I/O only: `None` when the first
/// non-prefix byte is no port opcode (then the kernel's answer is not a `PortIo`).
fn reference_port_io(bytes: &[u8]) -> Option<Result<PortIo, DecodeError>> {
    let mut operand_size_16 = false;
    for (index, &byte) in bytes.iter().enumerate().take(MAX_INSTRUCTION_LEN) {
        if PREFIXES.contains(&byte) {
            operand_size_16 |= byte == 0x66;
            continue;
        }
        if !PORT_OPCODES.contains(&byte) {
            return None;
        }
        let direction = if byte & 0b10 == 0 { Direction::In } else { Direction::Out };
        let width = match (byte & 1, operand_size_16) {
            (0, _) => 1,
            (_, true) => 2,
            (_, false) => 4,
        };
        let len = if byte < 0xEC { index + 2 } else { index + 1 };
        if len > MAX_INSTRUCTION_LEN {
            return Some(Err(DecodeError::TooLong));
        }
        let port = if byte < 0xEC {
            match bytes.get(index + 1) {
                Some(&imm) => PortOperand::Imm(imm),
                None => return Some(Err(DecodeError::Truncated)),
            }
        } else {
            PortOperand::Dx
        };
        return Some(Ok(PortIo { direction, width, port, len }));
    }
    // Only prefixes: too long if they fill the 15 bytes, else the instruction is cut short.
    if bytes.len() >= MAX_INSTRUCTION_LEN {
        Some(Err(DecodeError::TooLong))
    } else if bytes.is_empty() {
        Some(Err(DecodeError::Empty))
    } else {
        Some(Err(DecodeError::Truncated))
    }
}

fn raw_bytes(bytes: &[u8], features: &mut Features) -> Verdict {
    let result = decode_gp(bytes);
    note_result(features, &result);
    check_eq!(result == Err(DecodeError::Empty), bytes.is_empty(), "Empty exactly for no bytes");
    // Only the first 15 bytes matter.
    if bytes.len() > MAX_INSTRUCTION_LEN {
        check_eq!(decode_gp(&bytes[..MAX_INSTRUCTION_LEN]), result, "bytes past 15 changed the result");
    }
    match reference_port_io(bytes) {
        Some(Ok(expected)) => check_eq!(result, Ok(GpInstruction::PortIo(expected)), "port I/O vs reference"),
        Some(Err(error)) => check_eq!(result, Err(error), "prefix-only or cut-short port I/O vs reference"),
        None => check!(!matches!(result, Ok(GpInstruction::PortIo(_))), "decoded port I/O from a non-port opcode"),
    }
    if let Ok(GpInstruction::PortIo(io)) = result {
        check!(
            io.len >= 1 && io.len <= bytes.len() && io.len <= MAX_INSTRUCTION_LEN,
            "length {} of {}",
            io.len,
            bytes.len()
        );
        check!(matches!(io.width, 1 | 2 | 4), "width {}", io.width);
        // The instruction alone decodes the same, and every proper prefix of it is cut short.
        check_eq!(decode_gp(&bytes[..io.len]), result, "the instruction alone");
        for cut in 1..io.len {
            check_eq!(decode_gp(&bytes[..cut]), Err(DecodeError::Truncated), "instruction cut to {cut} bytes");
        }
    }
    // A decoded instruction does not change when more bytes follow (within the 15).
    if let Ok(decoded) = result {
        let mut longer = bytes.to_vec();
        longer.extend_from_slice(&[0xEF, 0x0F, 0x01]);
        check_eq!(decode_gp(&longer), Ok(decoded), "more bytes after a decoded instruction");
    }
    Ok(())
}

fn encoded(input: &[u8], features: &mut Features) -> Verdict {
    let mut source = Source::new(input);
    let prefix_count = source.below(17);
    let mut bytes: Vec<u8> = (0..prefix_count).map(|_| source.pick(&PREFIXES)).collect();
    let opcode = source.pick(&PORT_OPCODES);
    bytes.push(opcode);
    let immediate = opcode < 0xEC;
    let imm = source.u8();
    if immediate {
        bytes.push(imm);
    }
    let len = bytes.len();
    bytes.extend_from_slice(source.rest());
    let result = decode_gp(&bytes);
    note_result(features, &result);
    features.note("encoded prefixes", prefix_count as u64);
    if len > MAX_INSTRUCTION_LEN {
        check_eq!(result, Err(DecodeError::TooLong), "{len}-byte instruction");
        return Ok(());
    }
    let width = match (opcode & 1, bytes[..prefix_count].contains(&0x66)) {
        (0, _) => 1,
        (_, true) => 2,
        (_, false) => 4,
    };
    let expected = PortIo {
        direction: if opcode & 2 == 0 { Direction::In } else { Direction::Out },
        width,
        port: if immediate { PortOperand::Imm(imm) } else { PortOperand::Dx },
        len,
    };
    check_eq!(result, Ok(GpInstruction::PortIo(expected)), "encoded {:02x?}", &bytes[..len]);
    Ok(())
}
