//! virtio transports: how the one virtio-net driver (`drivers/virtio_net.rs`) reaches a device's
//! status, features, queues, notifications and configuration, whatever bus it sits on. The
//! queues and packets are the driver's; a transport only moves these few values.

pub mod legacy_pci;
pub mod mmio;
pub mod modern_pci;

use crate::drivers::pci::PciAddress;
use kernel_core::drivers::pci::{Bar, ConfigSpace, BAR_COUNT};
use kernel_core::drivers::virtio::Generation;
use kernel_core::mm::frame_alloc::FrameAllocator;
use virtio_spec::DeviceStatus;

/// Polls of the device status after a reset before giving up waiting for it to read 0.
const RESET_POLLS: u32 = 1_000_000;

/// Waits (bounded) for a device being reset to read status 0, as the spec asks of a modern
/// device: `status` reads its device status register.
fn wait_for_reset(status: impl Fn() -> DeviceStatus) {
    for _ in 0..RESET_POLLS {
        if status().is_empty() {
            break;
        }
        core::hint::spin_loop();
    }
}

/// The 64 feature bits of a modern device, read as two halves: `select` writes the half's
/// number to the select register, `read` reads the feature register.
fn read_features(select: impl Fn(u32), read: impl Fn() -> u32) -> u64 {
    (0..2u32).fold(0, |features, half| {
        select(half);
        features | u64::from(read()) << (32 * half)
    })
}

/// Writes the driver's 64 feature bits as two halves (see [`read_features`]).
fn write_features(features: u64, select: impl Fn(u32), write: impl Fn(u32)) {
    for half in 0..2u32 {
        select(half);
        write((features >> (32 * half)) as u32);
    }
}

/// Refuses a queue size the device cannot take: zero, above its largest, or not a power of two.
fn check_queue_size(size: u16, max: u16) -> Result<(), &'static str> {
    if size == 0 || size > max || !size.is_power_of_two() {
        return Err("virtqueue size is not a power of two up to the device's");
    }
    Ok(())
}

/// Where a device's interrupts go: `vector` at the local APIC `apic_id`, through at most
/// `entries` MSI-X table entries (one per queue that interrupts).
#[derive(Clone, Copy, Debug)]
pub struct InterruptTarget {
    pub vector: u8,
    pub apic_id: u32,
    pub entries: u16,
}

/// Turns on MSI-X for a PCI transport, if the device has a usable table; returns the entries
/// programmed (0: the driver polls).
fn enable_msix(
    pci: PciAddress,
    config: &ConfigSpace,
    bars: &[Bar; BAR_COUNT],
    target: InterruptTarget,
    frames: &mut FrameAllocator<'static>,
) -> u16 {
    match config.msix_table(bars) {
        Some(Ok(table)) => pci.enable_msix(&table, target.entries, target.vector, target.apic_id, frames),
        Some(Err(e)) => {
            log::warn!("virtio at {pci}: {e}; polling only");
            0
        }
        None => 0,
    }
}

/// Physical addresses of a split virtqueue's three parts.
#[derive(Clone, Copy, Debug)]
pub struct QueueAddresses {
    pub descriptors: u64,
    pub available: u64,
    pub used: u64,
}

/// A virtio transport.
pub trait Transport: Send {
    /// What it is, for the log (`legacy virtio-pci at 00:03.0`).
    fn describe(&self) -> alloc::string::String;
    fn generation(&self) -> Generation;
    /// Resets the device (status 0) and waits until it reads back as reset.
    fn reset(&mut self);
    fn status(&self) -> DeviceStatus;
    fn set_status(&mut self, status: DeviceStatus);
    /// The feature bits the device offers (the first 64).
    fn device_features(&mut self) -> u64;
    fn set_driver_features(&mut self, features: u64);
    /// The largest size queue `queue` may have; 0 if it does not exist.
    fn max_queue_size(&mut self, queue: u16) -> u16;
    /// Whether the driver may give a queue fewer entries than [`Transport::max_queue_size`]
    /// (legacy PCI may not).
    fn queue_size_is_fixed(&self) -> bool;
    /// Hands the device queue `queue` of `size` entries at `addresses`, interrupting through
    /// interrupt entry `msix_entry` if given (`frames` for mapping its notification
    /// register). Returns whether the device took the entry.
    fn enable_queue(
        &mut self,
        queue: u16,
        size: u16,
        addresses: QueueAddresses,
        msix_entry: Option<u16>,
        frames: &mut FrameAllocator<'static>,
    ) -> Result<bool, &'static str>;
    /// Tells the device that queue `queue` has new available buffers.
    fn notify(&mut self, queue: u16);
    /// A byte of the device-specific configuration.
    fn device_config_u8(&self, offset: u16) -> u8;
    /// Changes whenever the device configuration changes (a multi-byte read is consistent when
    /// it is the same before and after); constant on transports without it.
    fn config_generation(&self) -> u8;
    /// Interrupt sources programmed to reach the kernel: MSI-X table entries (entry `i` given
    /// to one queue), or 1 for a line every queue shares; 0: none, the driver polls.
    fn interrupt_entries(&self) -> u16;
    /// How its interrupts arrive, for the log (`MSI-X`, `IOAPIC GSI 12`).
    fn interrupt_name(&self) -> alloc::string::String;
    /// Acknowledges the device's interrupt, if it holds a line asserted until it is (MSI-X
    /// messages need nothing).
    fn acknowledge_interrupt(&mut self) {}
}
