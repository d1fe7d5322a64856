//! The fuzz targets, one per hostile-input surface of the kernel's portable library.

pub mod cpio;
pub mod desc;
pub mod elf;
pub mod guest_mem;
pub mod image_cfg;
pub mod memmap;
pub mod pvh;
pub mod ring;
pub mod vinstr;
pub mod vswitch;

use crate::engine::Target;

/// Every target, in the order `all` runs them.
pub const ALL: &[Target] = &[
    vinstr::TARGET,
    desc::TARGET,
    ring::TARGET,
    guest_mem::TARGET,
    cpio::TARGET,
    elf::TARGET,
    image_cfg::TARGET,
    pvh::TARGET,
    memmap::TARGET,
    vswitch::TARGET,
];

pub fn find(name: &str) -> Option<&'static Target> {
    ALL.iter().find(|t| t.name == name)
}
