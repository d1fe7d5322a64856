//! Device drivers: typed wrappers over port I/O and MMIO.

pub mod pci;
pub mod power_off;
pub mod serial;
pub mod virtio;
pub mod virtio_net;
