//! Device drivers: typed wrappers over port I/O and MMIO.

pub mod debug_exit;
pub mod pci;
pub mod serial;
pub mod virtio;
pub mod virtio_net;
