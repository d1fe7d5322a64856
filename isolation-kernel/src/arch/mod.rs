//! Hardware access for x86_64, in small typed wrappers. Every `unsafe` block in the kernel that
//! touches the CPU or a device lives under `arch/` or `drivers/`.

pub mod boot;
pub mod cpu;
pub mod gdt;
pub mod idt;
pub mod lapic;
pub mod pic;
pub mod trap;
pub mod tsc;
pub mod user_state;
