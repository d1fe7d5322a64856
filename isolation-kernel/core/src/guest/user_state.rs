//! The parts of a guest's register state that the trap frame does not hold, but that a ring-3
//! program can change and a neighbour could read: the x87/MMX/SSE registers (an FXSAVE area,
//! under `fpu=save`) and the data segment selectors DS, ES, FS and GS. The kernel keeps one copy
//! per guest and switches them with the guest (`arch::user_state` in the binary); this module
//! holds what can be checked on the host.

/// Bytes of the area `fxsave64`/`fxrstor64` write and read (it must be 16-byte aligned).
pub const FXSAVE_AREA_BYTES: usize = 512;
/// The x87 control word after `fninit`: every exception masked, 64-bit precision, round to
/// nearest.
pub const INITIAL_FCW: u16 = 0x037f;
/// MXCSR after reset: every SIMD exception masked, round to nearest.
pub const INITIAL_MXCSR: u32 = 0x1f80;
/// Offsets of the control word and MXCSR in an FXSAVE area.
const FCW_OFFSET: usize = 0;
const MXCSR_OFFSET: usize = 24;

/// The FXSAVE image of a fresh guest: the state `fninit` leaves (empty register stack, no
/// exception pending, zero instruction and data pointers), MXCSR at its reset value, and every
/// MMX/XMM register zero. Nothing in it comes from another guest or from the kernel.
pub const INITIAL_FXSAVE_AREA: [u8; FXSAVE_AREA_BYTES] = {
    let mut area = [0u8; FXSAVE_AREA_BYTES];
    let fcw = INITIAL_FCW.to_le_bytes();
    area[FCW_OFFSET] = fcw[0];
    area[FCW_OFFSET + 1] = fcw[1];
    let mxcsr = INITIAL_MXCSR.to_le_bytes();
    area[MXCSR_OFFSET] = mxcsr[0];
    area[MXCSR_OFFSET + 1] = mxcsr[1];
    area[MXCSR_OFFSET + 2] = mxcsr[2];
    area[MXCSR_OFFSET + 3] = mxcsr[3];
    area
};

/// The data segment selectors of a guest, in the order DS, ES, FS, GS.
pub type Selectors = [u16; 4];

/// The selectors every guest starts with: null. (They are what `iretq` leaves when the kernel's
/// own data selector was loaded: the CPU nulls a selector whose DPL is below the new CPL.)
pub const INITIAL_SELECTORS: Selectors = [0; 4];

/// Whether `selector` is one ring 3 can have loaded (null, or the user data or user code segment,
/// with any RPL), so that the kernel may load it again on the guest's behalf without faulting.
/// Anything else cannot come from a guest; the kernel loads null instead.
pub fn loadable_user_selector(selector: u16, user_data: u16, user_code: u16) -> bool {
    // The low two bits are the RPL: the CPU accepts any RPL for these DPL-3 segments.
    let index = selector & !3;
    index == 0 || index == user_data & !3 || index == user_code & !3
}

/// `selectors` with every entry that [`loadable_user_selector`] refuses replaced by null.
pub fn sanitized_selectors(selectors: Selectors, user_data: u16, user_code: u16) -> Selectors {
    selectors.map(|s| if loadable_user_selector(s, user_data, user_code) { s } else { 0 })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_fresh_area_is_the_fninit_state_with_default_mxcsr() {
        let area = INITIAL_FXSAVE_AREA;
        assert_eq!(u16::from_le_bytes([area[0], area[1]]), 0x037f);
        assert_eq!(u32::from_le_bytes([area[24], area[25], area[26], area[27]]), 0x1f80);
        // Status word, tag word, opcode, pointers, registers: all zero.
        let nonzero: Vec<usize> = (0..FXSAVE_AREA_BYTES).filter(|&i| area[i] != 0).collect();
        assert_eq!(nonzero, [0, 1, 24, 25]);
    }

    #[test]
    fn only_user_selectors_are_reloaded() {
        let (data, code) = (0x1b, 0x23);
        for selector in [0, 1, 2, 3, 0x18, 0x1b, 0x20, 0x23] {
            assert!(loadable_user_selector(selector, data, code), "{selector:#x}");
        }
        // The kernel's code and data, the TSS, and an index past the GDT.
        for selector in [0x08, 0x10, 0x28, 0x2b, 0x30, 0xfff8] {
            assert!(!loadable_user_selector(selector, data, code), "{selector:#x}");
        }
        assert_eq!(sanitized_selectors([0x1b, 0x10, 0x23, 0x3], data, code), [0x1b, 0, 0x23, 0x3]);
    }
}
