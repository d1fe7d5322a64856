//! Device drivers: typed wrappers over port I/O and MMIO.

pub mod debug_exit;
pub mod serial;
