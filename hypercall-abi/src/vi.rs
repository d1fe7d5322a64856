//! Virtual instructions: how a guest asks the isolation kernel for something.
//!
//! A guest runs in ring 3 and the TSS I/O bitmap denies it every port, so an `out` traps into
//! the kernel as `#GP`. The kernel decodes the faulting instruction; if it is an `out` (any
//! width, `dx` form) to a port in [`PORT_BASE`]`..`[`PORT_BASE`]` + `[`PORT_COUNT`], it is a
//! virtual instruction: the kernel reads the arguments from the saved registers, does the work,
//! writes the result to `rax`, advances `rip` past the instruction and resumes the guest.
//! Every register other than `rax` is preserved.
//!
//! Calling convention: `dx` = port (which instruction), `rdi` = first argument, `rsi` = second,
//! `r10` = third. `eax` (the value "written" to the port) is ignored. The result in `rax` is a
//! signed 64-bit value: `>= 0` success, `< 0` one of the [`Error`] codes.
//!
//! Misuse that is a bug or an attack rather than a recoverable condition stops the guest (in the
//! style of Hubris, where a bad slice faults the task): a pointer outside the guest's own
//! memory, an `in` from any port, an `out` to a port outside the range, the immediate-port forms
//! (`out imm8, al`), string I/O (`outs`). The kernel logs
//! `guest <id> <name> stopped: <cause> at rip <hex>` and the other guests carry on.
//!
//! | port | instruction | arguments | result | errors / misuse |
//! | --- | --- | --- | --- | --- |
//! | `0xe00` | [`Vi::ConsoleWrite`] | `rdi` = address, `rsi` = length (at most [`MAX_CONSOLE_WRITE`]) | bytes written | length too large: [`Error::BadLength`]; bytes outside the guest's readable memory: guest stopped |
//! | `0xe01` | [`Vi::Exit`] | `rdi` = exit code (low 32 bits, signed) | does not return | none |
//! | `0xe02` | [`Vi::Yield`] | none | 0 | none |
//! | `0xe03` | [`Vi::IdleUntil`] | `rdi` = TSC deadline ([`NO_DEADLINE`] for none) | pending [`VirtualInterrupts`] bits, 0 if woken by the deadline | a deadline already passed returns at once |
//! | `0xe04` | [`Vi::Null`] | none | 0 | none (exists to measure the trap round trip) |
//! | `0xe05` | [`Vi::VnicTxKick`] | none | number of tx descriptors taken | guest without a vNIC: [`Error::Unsupported`]; bad descriptors are rejected one by one (status in the descriptor, counted, logged once), never stop the guest |
//! | `0xe06` | [`Vi::VnicRxPosted`] | none | number of rx buffers posted and not yet filled | guest without a vNIC: [`Error::Unsupported`] |
//!
//! The guest is not scheduled while idle: it resumes only when the deadline passes or a virtual
//! interrupt is raised for it.

/// First port of the virtual-instruction range. Nothing in QEMU's `pc` machine decodes these
/// ports, and guests never reach a device anyway: every port traps.
pub const PORT_BASE: u16 = 0x0e00;
/// Number of ports reserved for virtual instructions (room for the vNIC doorbells to come).
pub const PORT_COUNT: u16 = 0x20;

/// Longest console write, in bytes.
pub const MAX_CONSOLE_WRITE: u64 = 4096;
/// `IdleUntil` deadline meaning "until a virtual interrupt".
pub const NO_DEADLINE: u64 = u64::MAX;

/// The virtual instructions, by port.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u16)]
pub enum Vi {
    ConsoleWrite = PORT_BASE,
    Exit = PORT_BASE + 1,
    Yield = PORT_BASE + 2,
    IdleUntil = PORT_BASE + 3,
    Null = PORT_BASE + 4,
    VnicTxKick = PORT_BASE + 5,
    VnicRxPosted = PORT_BASE + 6,
}

impl Vi {
    pub const ALL: [Vi; 7] =
        [Vi::ConsoleWrite, Vi::Exit, Vi::Yield, Vi::IdleUntil, Vi::Null, Vi::VnicTxKick, Vi::VnicRxPosted];

    pub const fn port(self) -> u16 {
        self as u16
    }

    /// The instruction at `port`; `None` for ports outside the range or not (yet) assigned.
    pub fn from_port(port: u16) -> Option<Vi> {
        Self::ALL.into_iter().find(|vi| vi.port() == port)
    }

    pub const fn name(self) -> &'static str {
        match self {
            Vi::ConsoleWrite => "console_write",
            Vi::Exit => "exit",
            Vi::Yield => "yield",
            Vi::IdleUntil => "idle_until",
            Vi::Null => "null",
            Vi::VnicTxKick => "vnic_tx_kick",
            Vi::VnicRxPosted => "vnic_rx_posted",
        }
    }
}

/// Whether `port` lies in the virtual-instruction range.
pub const fn is_vi_port(port: u16) -> bool {
    port >= PORT_BASE && port < PORT_BASE + PORT_COUNT
}

/// Error results, returned in `rax` as negative numbers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(i64)]
pub enum Error {
    /// A length argument is larger than the instruction allows.
    BadLength = -2,
    /// A port in the range that no instruction uses yet.
    Unsupported = -3,
    /// The kernel has no memory for it now (its heap is short); nothing was done.
    NoMemory = -4,
}

impl Error {
    pub const fn code(self) -> i64 {
        self as i64
    }

    pub fn from_code(code: i64) -> Option<Error> {
        [Error::BadLength, Error::Unsupported, Error::NoMemory].into_iter().find(|e| e.code() == code)
    }
}

/// Bits of the virtual-interrupt word and of `IdleUntil`'s result.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct VirtualInterrupts(pub u64);

impl VirtualInterrupts {
    /// The idle deadline passed (never set in `IdleUntil`'s result: that returns 0 instead).
    pub const TIMER: u64 = 1 << 0;
    /// Frames were delivered into posted rx buffers.
    pub const RX: u64 = 1 << 1;
    /// Tx descriptors were completed.
    pub const TX_DONE: u64 = 1 << 2;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_instruction_is_in_the_range_and_round_trips() {
        for vi in Vi::ALL {
            assert!(is_vi_port(vi.port()));
            assert_eq!(Vi::from_port(vi.port()), Some(vi));
        }
        assert_eq!(Vi::from_port(PORT_BASE + PORT_COUNT - 1), None);
        assert!(!is_vi_port(PORT_BASE - 1));
        assert!(!is_vi_port(PORT_BASE + PORT_COUNT));
        assert!(!is_vi_port(crate::host::DEBUG_EXIT_PORT));
    }

    #[test]
    fn errors_are_negative_and_round_trip() {
        for e in [Error::BadLength, Error::Unsupported] {
            assert!(e.code() < 0);
            assert_eq!(Error::from_code(e.code()), Some(e));
        }
    }
}
