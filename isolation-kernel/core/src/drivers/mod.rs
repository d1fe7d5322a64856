//! What the device drivers learn from devices, checked: PCI configuration space (BARs,
//! capabilities, MSI-X), the modern virtio-pci structures, virtio-mmio identification, virtio
//! feature negotiation.

pub mod pci;
pub mod virtio;
pub mod virtio_mmio;
pub mod virtio_pci;
