//! What the kernel learns at boot: PVH start info, the memory map, the command line.

pub mod cmdline;
pub mod memmap;
pub mod pvh;
