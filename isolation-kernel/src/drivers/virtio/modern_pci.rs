//! The modern (virtio 1.x) PCI transport: the common configuration, notification and device
//! configuration structures in memory BARs, found through vendor capabilities
//! (`kernel_core::drivers::virtio_pci` works out where), 64 feature bits with the
//! `FEATURES_OK` handshake, queues given as three 64-bit addresses, MSI-X. QEMU's
//! `virtio-net-pci,disable-legacy=on`, cloud-hypervisor, Firecracker with `--enable-pci`.
//!
//! The ISR status structure is found and checked but not mapped: the kernel takes the device's
//! interrupts by MSI-X (which never needs it) or polls.

use super::{QueueAddresses, Transport};
use crate::drivers::pci::PciAddress;
use crate::mm::paging::map_mmio;
use alloc::vec::Vec;
use core::ptr::NonNull;
use hypercall_abi::layout::PAGE_SIZE as PAGE;
use kernel_core::drivers::pci::{Bar, ConfigSpace, BAR_COUNT};
use kernel_core::drivers::virtio::Generation;
use kernel_core::drivers::virtio_pci::ModernLayout;
use kernel_core::mm::frame_alloc::FrameAllocator;
use virtio_spec::pci::{CommonCfg, CommonCfgVolatileFieldAccess, CommonCfgVolatileWideFieldAccess};
use virtio_spec::{le16, le32, le64, DeviceStatus};
use volatile::VolatilePtr;
use x86_64::VirtAddr;

const NO_VECTOR: u16 = 0xffff;

pub struct ModernPci {
    pci: PciAddress,
    common: VirtAddr,
    device: VirtAddr,
    /// Bytes of device configuration mapped at `device`.
    device_len: u64,
    layout: ModernLayout,
    /// Each enabled queue's notification address.
    notify: Vec<(u16, VirtAddr)>,
    msix_entries: u16,
}

impl ModernPci {
    /// The transport of the device at `pci`, whose structures `layout` locates; maps them and
    /// turns on MSI-X (entries to `interrupt`).
    pub fn new(
        pci: PciAddress,
        config: &ConfigSpace,
        bars: &[Bar; BAR_COUNT],
        layout: ModernLayout,
        interrupt: super::InterruptTarget,
        frames: &mut FrameAllocator<'static>,
    ) -> ModernPci {
        pci.enable();
        // Devices never use more than a page of either (virtio 1.2, 4.1.4.1: a driver may
        // limit its mapping to 4 KiB); the fields used are inside (checked by `modern_layout`).
        let common = map_mmio(layout.common.phys, layout.common.len.min(PAGE), frames);
        let device_len = layout.device.len.min(PAGE);
        let device = map_mmio(layout.device.phys, device_len, frames);
        let msix_entries = super::enable_msix(pci, config, bars, interrupt, frames);
        ModernPci { pci, common, device, device_len, layout, notify: Vec::new(), msix_entries }
    }

    fn common(&self) -> VolatilePtr<'_, CommonCfg> {
        // SAFETY: `common` maps the device's common configuration structure (uncached), which
        // holds at least the fields this driver touches (`modern_layout` checked its length);
        // nothing else in the kernel refers to it, and the mapping lives as long as the kernel.
        unsafe { VolatilePtr::new(NonNull::new_unchecked(self.common.as_mut_ptr::<CommonCfg>())) }
    }
}

impl Transport for ModernPci {
    fn describe(&self) -> alloc::string::String {
        alloc::format!("modern virtio-pci at {}", self.pci)
    }
    fn generation(&self) -> Generation {
        Generation::Modern
    }
    fn reset(&mut self) {
        let common = self.common();
        common.device_status().write(DeviceStatus::empty());
        super::wait_for_reset(|| common.device_status().read());
        common.config_msix_vector().write(le16::from_ne(NO_VECTOR));
    }
    fn status(&self) -> DeviceStatus {
        self.common().device_status().read()
    }
    fn set_status(&mut self, status: DeviceStatus) {
        self.common().device_status().write(status);
    }
    fn device_features(&mut self) -> u64 {
        let common = self.common();
        super::read_features(
            |half| common.device_feature_select().write(le32::from_ne(half)),
            || common.device_feature().read().to_ne(),
        )
    }
    fn set_driver_features(&mut self, features: u64) {
        let common = self.common();
        super::write_features(
            features,
            |half| common.driver_feature_select().write(le32::from_ne(half)),
            |bits| common.driver_feature().write(le32::from_ne(bits)),
        );
    }
    fn max_queue_size(&mut self, queue: u16) -> u16 {
        let common = self.common();
        common.queue_select().write(le16::from_ne(queue));
        common.queue_size().read().to_ne()
    }
    fn queue_size_is_fixed(&self) -> bool {
        false
    }
    fn enable_queue(
        &mut self,
        queue: u16,
        size: u16,
        addresses: QueueAddresses,
        msix_entry: Option<u16>,
        frames: &mut FrameAllocator<'static>,
    ) -> Result<bool, &'static str> {
        let common = self.common();
        common.queue_select().write(le16::from_ne(queue));
        super::check_queue_size(size, common.queue_size().read().to_ne())?;
        let notify_off = common.queue_notify_off().read().to_ne();
        let notify_phys = self.layout.notify_address(notify_off).ok_or("queue notification beyond its structure")?;
        common.queue_size().write(le16::from_ne(size));
        let mut vector_taken = false;
        if let (Some(entry), true) = (msix_entry, self.msix_entries > 0) {
            common.queue_msix_vector().write(le16::from_ne(entry));
            vector_taken = common.queue_msix_vector().read().to_ne() == entry;
        }
        common.queue_desc().write(le64::from_ne(addresses.descriptors));
        common.queue_driver().write(le64::from_ne(addresses.available));
        common.queue_device().write(le64::from_ne(addresses.used));
        common.queue_enable().write(le16::from_ne(1));
        // The notification page is mapped once per queue (queues may share it: aliases of
        // device registers are harmless).
        self.notify.push((queue, map_mmio(notify_phys, 2, frames)));
        Ok(vector_taken)
    }
    fn notify(&mut self, queue: u16) {
        if let Some(&(_, address)) = self.notify.iter().find(|(q, _)| *q == queue) {
            // SAFETY: the notification address of an enabled queue of this device, inside its
            // notification structure (checked by `notify_address`), mapped uncached; a 16-bit
            // write of the queue index is the notification (virtio 1.2, 4.1.5.2).
            unsafe { address.as_mut_ptr::<u16>().write_volatile(queue) }
        }
    }
    fn device_config_u8(&self, offset: u16) -> u8 {
        if u64::from(offset) >= self.device_len {
            return 0;
        }
        // SAFETY: a byte inside the mapped part of the device configuration structure.
        unsafe { (self.device + u64::from(offset)).as_ptr::<u8>().read_volatile() }
    }
    fn config_generation(&self) -> u8 {
        self.common().config_generation().read()
    }
    fn interrupt_entries(&self) -> u16 {
        self.msix_entries
    }
    fn interrupt_name(&self) -> alloc::string::String {
        "MSI-X".into()
    }
}
