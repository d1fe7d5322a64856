//! The interrupt vectors the kernel programs its devices with (CPU exceptions are 0 to 31).
//! `trap.rs` decodes them.

/// The LAPIC timer.
pub const TIMER_VECTOR: u8 = 32;
/// The LAPIC's spurious-interrupt vector.
pub const SPURIOUS_VECTOR: u8 = 0xff;
/// MSI-X vector of the physical NIC's receive queue.
pub const NIC_VECTOR: u8 = 0x30;
