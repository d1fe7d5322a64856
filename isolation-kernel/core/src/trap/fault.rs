//! Why a guest was stopped: one typed cause, formatted only when it is reported (Hubris's
//! `FaultInfo` in spirit). [`GuestFault::kind`] is its stable [`StopKind`], the name images'
//! `expect = "stopped:KIND"` lines and the tests match; the text is for people.

use super::exceptions::{exception_name, PageFault};
use super::vinstr::{DecodeError, Privileged};
use crate::guest::mem::BadPointer;
use core::fmt;
use hypercall_abi::initrd::StopKind;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum GuestFault {
    /// A virtual-instruction port reached with an immediate-port `out` (only `out dx` is one).
    ViNotDxForm {
        port: u16,
    },
    /// `out` to a port outside the virtual-instruction range.
    PortOutsideRange {
        port: u16,
    },
    /// `in` from any port.
    PortRead {
        port: u16,
    },
    /// `ins`/`outs`.
    StringIo,
    Privileged(Privileged),
    /// Any other `#GP`, with the CPU's error code.
    GeneralProtection {
        error_code: u64,
    },
    /// A `#GP` whose instruction could not be read.
    InstructionUnreadable(DecodeError),
    /// A floating-point or SIMD instruction the guest may not use (the cause text).
    FloatingPoint(&'static str),
    /// Any other CPU exception, by vector.
    Exception {
        vector: u64,
    },
    PageFault(PageFault),
    CpuBudget {
        ms: u64,
    },
    /// A pointer a virtual instruction was given (its name) that is not the guest's.
    BadPointer {
        call: &'static str,
        bad: BadPointer,
    },
    /// A write to an in-flight tx slot that could not get its copy-on-write copy.
    CowCopyNoMemory {
        slot: usize,
    },
    /// The first touch of a lazily backed page (stack, heap) found no frame for it.
    NoMemoryForPage {
        address: u64,
    },
}

impl GuestFault {
    /// The stable kind: what `expect = "stopped:KIND"` names and the kernel's end line prints.
    pub fn kind(&self) -> StopKind {
        match self {
            Self::ViNotDxForm { .. } => StopKind::ViNotDxForm,
            Self::PortOutsideRange { .. } => StopKind::PortOutsideRange,
            Self::PortRead { .. } => StopKind::PortRead,
            Self::StringIo => StopKind::StringIo,
            Self::Privileged(_) => StopKind::PrivilegedInstruction,
            Self::GeneralProtection { .. } => StopKind::GeneralProtection,
            Self::InstructionUnreadable(_) => StopKind::InstructionUnreadable,
            Self::FloatingPoint(_) => StopKind::FloatingPoint,
            Self::Exception { .. } => StopKind::Exception,
            Self::PageFault(_) => StopKind::PageFault,
            Self::CpuBudget { .. } => StopKind::CpuBudget,
            Self::BadPointer { .. } => StopKind::BadPointer,
            Self::CowCopyNoMemory { .. } => StopKind::CowCopyNoMemory,
            Self::NoMemoryForPage { .. } => StopKind::NoMemoryForPage,
        }
    }
}

impl fmt::Display for GuestFault {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            Self::ViNotDxForm { port } => write!(f, "virtual instruction on port {port:#x} must use the `out dx` form"),
            Self::PortOutsideRange { port } => write!(f, "out to port {port:#x} outside the virtual-instruction range"),
            Self::PortRead { port } => write!(f, "in from port {port:#x}: guests may not read ports"),
            Self::StringIo => f.write_str("string port I/O (ins/outs) is not permitted"),
            Self::Privileged(p) => write!(f, "privileged instruction {}", p.mnemonic()),
            Self::GeneralProtection { error_code } => write!(f, "general protection fault (error {error_code:#x})"),
            Self::InstructionUnreadable(e) => write!(f, "general protection fault; instruction unreadable: {e}"),
            Self::FloatingPoint(cause) => f.write_str(cause),
            Self::Exception { vector } => {
                let (mnemonic, name) = exception_name(vector).unwrap_or(("?", "reserved exception"));
                write!(f, "{name} ({mnemonic})")
            }
            Self::PageFault(fault) => fault.fmt(f),
            Self::CpuBudget { ms } => write!(f, "cpu budget of {ms} ms exceeded"),
            Self::BadPointer { call, bad } => write!(f, "bad pointer in {call}: {bad}"),
            Self::CowCopyNoMemory { slot } => write!(f, "no memory for a copy-on-write copy of tx slot {slot}"),
            Self::NoMemoryForPage { address } => write!(f, "no memory to back the page at {address:#x}"),
        }
    }
}

#[cfg(test)]
mod tests {
    extern crate std;
    use super::*;
    use std::string::ToString;

    #[test]
    fn texts_and_kinds() {
        assert_eq!(GuestFault::Exception { vector: 0 }.to_string(), "divide error (#DE)");
        assert_eq!(GuestFault::CpuBudget { ms: 50 }.to_string(), "cpu budget of 50 ms exceeded");
        assert_eq!(
            GuestFault::PortOutsideRange { port: 0x80 }.to_string(),
            "out to port 0x80 outside the virtual-instruction range"
        );
        assert_eq!(GuestFault::StringIo.kind(), StopKind::StringIo);
        assert_eq!(GuestFault::CpuBudget { ms: 50 }.kind().as_str(), "cpu_budget");
    }
}
