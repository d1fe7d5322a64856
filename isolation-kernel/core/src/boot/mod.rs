//! What the kernel learns at boot: PVH start info, the memory map, the command line, the ACPI
//! tables' power-off.

pub mod acpi;
pub mod cmdline;
pub mod memmap;
pub mod pvh;
