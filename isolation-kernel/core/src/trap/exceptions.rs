//! Names of the x86 exception vectors, for fault reports.

use crate::boot::cmdline::FpuPolicy;
use crate::trap::vinstr::{fpu_use, FpuUse};

/// Vectors 0..=31 with the mnemonic and a short description; reserved vectors are `None`.
pub fn exception_name(vector: u64) -> Option<(&'static str, &'static str)> {
    Some(match vector {
        0 => ("#DE", "divide error"),
        1 => ("#DB", "debug"),
        2 => ("NMI", "non-maskable interrupt"),
        3 => ("#BP", "breakpoint"),
        4 => ("#OF", "overflow"),
        5 => ("#BR", "bound range exceeded"),
        6 => ("#UD", "invalid opcode"),
        7 => ("#NM", "device not available"),
        8 => ("#DF", "double fault"),
        9 => ("CSO", "coprocessor segment overrun"),
        10 => ("#TS", "invalid TSS"),
        11 => ("#NP", "segment not present"),
        12 => ("#SS", "stack-segment fault"),
        13 => ("#GP", "general protection fault"),
        14 => ("#PF", "page fault"),
        16 => ("#MF", "x87 floating-point error"),
        17 => ("#AC", "alignment check"),
        18 => ("#MC", "machine check"),
        19 => ("#XM", "SIMD floating-point exception"),
        20 => ("#VE", "virtualization exception"),
        21 => ("#CP", "control protection exception"),
        28 => ("#HV", "hypervisor injection exception"),
        29 => ("#VC", "VMM communication exception"),
        30 => ("#SX", "security exception"),
        _ => return None,
    })
}

/// Whether the CPU pushes an error code for this vector (the trap stubs push a zero otherwise,
/// so every frame has the same shape).
pub const fn pushes_error_code(vector: u64) -> bool {
    matches!(vector, 8 | 10..=14 | 17 | 21 | 29 | 30)
}

/// Stop cause of a guest that used the x87/MMX/SSE unit under `fpu=fault`.
pub const FPU_FAULT_CAUSE: &str = "floating-point/SIMD instruction (x87/MMX/SSE is not available to guests)";
/// Stop cause of a guest that used AVX or XSAVE (under either policy): no guest has that state.
pub const AVX_CAUSE: &str = "SIMD instruction beyond SSE (AVX/XSAVE state is not available to guests)";

/// The stop cause of a guest's `#NM` (7) or `#UD` (6) when a floating-point or SIMD instruction
/// raised it, from the bytes at its RIP; `None` when the vector's own name says it better.
pub fn fpu_stop_cause(vector: u64, instruction: &[u8], policy: FpuPolicy) -> Option<&'static str> {
    let off = policy == FpuPolicy::Fault;
    match (vector, fpu_use(instruction)) {
        (6 | 7, Some(FpuUse::Avx)) => Some(AVX_CAUSE),
        // With CR0.EM set, every #NM is an x87 instruction (or fxsave) meeting the switched-off
        // unit, even where the bytes cannot be read back.
        (7, _) if off => Some(FPU_FAULT_CAUSE),
        (6, Some(_)) if off => Some(FPU_FAULT_CAUSE),
        _ => None,
    }
}

/// A page fault described for a log line, from the error code the CPU pushed and CR2.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PageFault {
    pub error_code: u64,
    pub address: u64,
}

impl core::fmt::Display for PageFault {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        use hypercall_abi::layout::{PAGE_SIZE, USER_LIMIT};
        let e = self.error_code;
        let access = if e & 0x10 != 0 {
            "instruction fetch"
        } else if e & 0x2 != 0 {
            "write"
        } else {
            "read"
        };
        let what = if e & 0x1 == 0 { "not mapped" } else { "protection violation" };
        let area = if self.address >= USER_LIMIT {
            ", kernel half"
        } else if self.address < PAGE_SIZE {
            ", null page"
        } else {
            ""
        };
        write!(f, "page fault: {access} at {:#x} ({what}{area})", self.address)
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing, clippy::arithmetic_side_effects)]
mod tests {
    use super::*;

    #[test]
    fn page_faults_say_what_and_where() {
        let null = PageFault { error_code: 0x6, address: 0 };
        assert_eq!(null.to_string(), "page fault: write at 0x0 (not mapped, null page)");
        let kernel = PageFault { error_code: 0x7, address: 0xffff_8000_0010_0000 };
        assert_eq!(kernel.to_string(), "page fault: write at 0xffff800000100000 (protection violation, kernel half)");
        let fetch = PageFault { error_code: 0x15, address: 0x1000_0000 };
        assert_eq!(fetch.to_string(), "page fault: instruction fetch at 0x10000000 (protection violation)");
    }

    #[test]
    fn floating_point_traps_are_named_by_policy() {
        const FNINIT: &[u8] = &[0xDB, 0xE3];
        const MOVQ_MM0_RAX: &[u8] = &[0x48, 0x0F, 0x6E, 0xC0];
        const MOVQ_XMM0_RAX: &[u8] = &[0x66, 0x48, 0x0F, 0x6E, 0xC0];
        const VADDPS: &[u8] = &[0xC5, 0xF8, 0x58, 0xC0];
        const UD2: &[u8] = &[0x0F, 0x0B];
        let fault = FpuPolicy::Fault;
        assert_eq!(fpu_stop_cause(7, FNINIT, fault), Some(FPU_FAULT_CAUSE));
        assert_eq!(fpu_stop_cause(7, &[], fault), Some(FPU_FAULT_CAUSE));
        assert_eq!(fpu_stop_cause(6, MOVQ_MM0_RAX, fault), Some(FPU_FAULT_CAUSE));
        assert_eq!(fpu_stop_cause(6, MOVQ_XMM0_RAX, fault), Some(FPU_FAULT_CAUSE));
        assert_eq!(fpu_stop_cause(6, VADDPS, fault), Some(AVX_CAUSE));
        assert_eq!(fpu_stop_cause(6, UD2, fault), None);
        assert_eq!(fpu_stop_cause(13, FNINIT, fault), None);
        let save = FpuPolicy::Save;
        assert_eq!(fpu_stop_cause(6, VADDPS, save), Some(AVX_CAUSE));
        assert_eq!(fpu_stop_cause(6, MOVQ_XMM0_RAX, save), None, "an SSE #UD under save is the CPU's");
        assert_eq!(fpu_stop_cause(7, FNINIT, save), None);
        assert_eq!(fpu_stop_cause(6, UD2, save), None);
    }

    #[test]
    fn named_vectors_and_error_codes() {
        assert_eq!(exception_name(14), Some(("#PF", "page fault")));
        assert_eq!(exception_name(15), None);
        assert_eq!(exception_name(32), None);
        let with_code: Vec<u64> = (0..256).filter(|&v| pushes_error_code(v)).collect();
        assert_eq!(with_code, vec![8, 10, 11, 12, 13, 14, 17, 21, 29, 30]);
        assert!(with_code.iter().all(|&v| exception_name(v).is_some()));
    }
}
