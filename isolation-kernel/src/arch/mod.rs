//! Hardware access for x86_64, in small typed wrappers: every instruction that reads or changes
//! the CPU's own state (control registers including CR3, MSRs, descriptor tables, port I/O, the
//! TSC, the local APIC) is issued here, and devices are driven under `drivers/`. Wrappers whose
//! safety depends on the caller (`cpu::load_pml4`, `trap::enter_frame`, `lapic::LocalApic::enable`)
//! are `unsafe fn`s; their callers give the proof. Elsewhere `unsafe` is about memory: page
//! tables and RAM through the direct map (`mm/`, `guest/space.rs`, `vnet/`) and the
//! boot-time initrd and bitmap slices in `kernel.rs`; the one exception is `kernel.rs`'s
//! deliberate test faults (`ud2`, a write to an unmapped page).

pub mod boot;
pub mod clock;
pub mod cpu;
pub mod gdt;
pub mod idt;
pub mod ioapic;
pub mod lapic;
pub mod pic;
pub mod trap;
pub mod tsc;
pub mod user_state;
pub mod vectors;
