//! The legacy (virtio 0.9.5, "transitional") PCI transport: registers in I/O BAR0, 32 feature
//! bits, queues given by page frame number in the fixed legacy layout. QEMU's `pc` machine with
//! `disable-modern=on`.

use super::{QueueAddresses, Transport};
use crate::arch::cpu::{inb, inl, inw, outb, outl, outw};
use crate::drivers::pci::PciAddress;
use hypercall_abi::layout::PAGE_SIZE as PAGE;
use kernel_core::drivers::pci::{Bar, ConfigSpace, BAR_COUNT};
use kernel_core::drivers::virtio::Generation;
use kernel_core::mm::frame_alloc::FrameAllocator;
use virtio_spec::DeviceStatus;

// Register offsets in the I/O BAR.
const REG_DEVICE_FEATURES: u16 = 0x00;
const REG_GUEST_FEATURES: u16 = 0x04;
const REG_QUEUE_PFN: u16 = 0x08;
const REG_QUEUE_SIZE: u16 = 0x0c;
const REG_QUEUE_SELECT: u16 = 0x0e;
const REG_QUEUE_NOTIFY: u16 = 0x10;
const REG_STATUS: u16 = 0x12;
const REG_MSIX_CONFIG_VECTOR: u16 = 0x14;
const REG_MSIX_QUEUE_VECTOR: u16 = 0x16;
/// Device-specific configuration: at 0x14 without MSI-X, 0x18 with it.
const DEVICE_CONFIG: u16 = 0x14;
const DEVICE_CONFIG_MSIX: u16 = 0x18;
pub const NO_VECTOR: u16 = 0xffff;

pub struct LegacyPci {
    pci: PciAddress,
    io: u16,
    msix_entries: u16,
}

impl LegacyPci {
    /// The transport of the device at `pci`, whose I/O BAR0 holds the registers; MSI-X entries
    /// (up to `wanted`) interrupt on `vector` at the local APIC `apic_id`.
    pub fn new(
        pci: PciAddress,
        config: &ConfigSpace,
        bars: &[Bar; BAR_COUNT],
        interrupt: super::InterruptTarget,
        frames: &mut FrameAllocator<'static>,
    ) -> Result<LegacyPci, &'static str> {
        let Bar::Io { base, .. } = bars[0] else {
            return Err("BAR0 is not an assigned I/O BAR (a legacy device needs one: disable-modern=on)");
        };
        let io = u16::try_from(base).map_err(|_| "I/O BAR0 lies beyond the 64 KiB port space")?;
        pci.enable();
        let msix_entries = super::enable_msix(pci, config, bars, interrupt, frames);
        Ok(LegacyPci { pci, io, msix_entries })
    }

    fn set_reg8(&self, offset: u16, value: u8) {
        // SAFETY: a register of this device's I/O BAR; the driver writes only registers whose
        // effect it intends.
        unsafe { outb(self.io + offset, value) }
    }
    fn reg8(&self, offset: u16) -> u8 {
        // SAFETY: a register of this device's I/O BAR (offsets from the legacy layout); none is
        // read-sensitive except the ISR, which this transport does not read.
        unsafe { inb(self.io + offset) }
    }
    fn reg16(&self, offset: u16) -> u16 {
        // SAFETY: as in `reg8`.
        unsafe { inw(self.io + offset) }
    }
    fn set_reg16(&self, offset: u16, value: u16) {
        // SAFETY: as in `set_reg8`.
        unsafe { outw(self.io + offset, value) }
    }
    fn reg32(&self, offset: u16) -> u32 {
        // SAFETY: as in `reg8`.
        unsafe { inl(self.io + offset) }
    }
    fn set_reg32(&self, offset: u16, value: u32) {
        // SAFETY: as in `set_reg8`.
        unsafe { outl(self.io + offset, value) }
    }
}

/// The legacy layout of a queue of `size` entries: available ring right after the descriptors,
/// used ring at the next page boundary. Returns the offsets of both.
pub fn legacy_layout(size: u16) -> (u64, u64) {
    let size = u64::from(size);
    let available = 16 * size;
    (available, (available + 6 + 2 * size).next_multiple_of(PAGE))
}

impl Transport for LegacyPci {
    fn describe(&self) -> alloc::string::String {
        alloc::format!("legacy virtio-pci at {}", self.pci)
    }
    fn generation(&self) -> Generation {
        Generation::Legacy
    }
    fn reset(&mut self) {
        self.set_reg8(REG_STATUS, 0);
        if self.msix_entries > 0 {
            self.set_reg16(REG_MSIX_CONFIG_VECTOR, NO_VECTOR);
        }
    }
    fn status(&self) -> DeviceStatus {
        DeviceStatus::from_bits_retain(self.reg8(REG_STATUS))
    }
    fn set_status(&mut self, status: DeviceStatus) {
        self.set_reg8(REG_STATUS, status.bits());
    }
    fn device_features(&mut self) -> u64 {
        u64::from(self.reg32(REG_DEVICE_FEATURES))
    }
    fn set_driver_features(&mut self, features: u64) {
        self.set_reg32(REG_GUEST_FEATURES, features as u32);
    }
    fn max_queue_size(&mut self, queue: u16) -> u16 {
        self.set_reg16(REG_QUEUE_SELECT, queue);
        self.reg16(REG_QUEUE_SIZE)
    }
    fn queue_size_is_fixed(&self) -> bool {
        true
    }
    fn enable_queue(
        &mut self,
        queue: u16,
        size: u16,
        addresses: QueueAddresses,
        msix_entry: Option<u16>,
        _frames: &mut FrameAllocator<'static>,
    ) -> Result<bool, &'static str> {
        let (available, used) = legacy_layout(size);
        if !addresses.descriptors.is_multiple_of(PAGE)
            || addresses.available != addresses.descriptors + available
            || addresses.used != addresses.descriptors + used
        {
            return Err("a legacy virtqueue must be in the legacy layout");
        }
        let pfn = u32::try_from(addresses.descriptors / PAGE).map_err(|_| "virtqueue above 16 TiB")?;
        self.set_reg16(REG_QUEUE_SELECT, queue);
        if self.reg16(REG_QUEUE_SIZE) != size {
            return Err("a legacy virtqueue has the device's size");
        }
        let mut vector_taken = false;
        if let (Some(entry), true) = (msix_entry, self.msix_entries > 0) {
            self.set_reg16(REG_MSIX_QUEUE_VECTOR, entry);
            vector_taken = self.reg16(REG_MSIX_QUEUE_VECTOR) == entry;
        }
        self.set_reg32(REG_QUEUE_PFN, pfn);
        Ok(vector_taken)
    }
    fn notify(&mut self, queue: u16) {
        self.set_reg16(REG_QUEUE_NOTIFY, queue);
    }
    fn device_config_u8(&self, offset: u16) -> u8 {
        let base = if self.msix_entries > 0 { DEVICE_CONFIG_MSIX } else { DEVICE_CONFIG };
        self.reg8(base + offset)
    }
    fn config_generation(&self) -> u8 {
        0
    }
    fn interrupt_entries(&self) -> u16 {
        self.msix_entries
    }
    fn interrupt_name(&self) -> alloc::string::String {
        "MSI-X".into()
    }
}
