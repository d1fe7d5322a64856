//! The virtio-mmio transport (version 2, virtio 1.x): one register window per device, announced
//! on the command line (`virtio_mmio.device=SIZE@BASE:IRQ`) as Firecracker and QEMU's `microvm`
//! do, and one interrupt line per device through the I/O APIC, level-triggered and
//! acknowledged through the device's `InterruptACK` register.

use super::{InterruptTarget, QueueAddresses, Transport};
use crate::arch::ioapic::{self, IoApic};
use crate::mm::paging::map_mmio;
use core::ptr::NonNull;
use hypercall_abi::layout::PAGE_SIZE as PAGE;
use kernel_core::boot::cmdline::{MmioDevice, MMIO_REGISTER_BYTES};
use kernel_core::drivers::virtio::Generation;
use kernel_core::drivers::virtio_mmio::{identify_net, MmioError};
use kernel_core::mm::frame_alloc::FrameAllocator;
use virtio_spec::mmio::{DeviceRegisters, DeviceRegistersVolatileFieldAccess, DeviceRegistersVolatileWideFieldAccess};
use virtio_spec::{le16, le32, le64, DeviceStatus};
use volatile::VolatilePtr;
use x86_64::VirtAddr;

pub struct Mmio {
    device: MmioDevice,
    registers: VirtAddr,
    /// Bytes mapped at `registers` (the registers and the start of the configuration).
    mapped: u64,
    /// The line reaches the kernel through the I/O APIC (else the driver polls).
    line_routed: bool,
}

impl Mmio {
    /// The transport of the announced `device`, if it is a modern virtio-mmio network card; its
    /// line is routed to `interrupt` where the I/O APIC has it.
    pub fn new(
        device: MmioDevice,
        interrupt: InterruptTarget,
        frames: &mut FrameAllocator<'static>,
    ) -> Result<Mmio, MmioError> {
        // The configuration the driver reads (the MAC) is in the first page of any window.
        let mapped = device.size.min(PAGE);
        let registers = map_mmio(device.base, mapped, frames);
        let mut mmio = Mmio { device, registers, mapped, line_routed: false };
        let regs = mmio.registers();
        identify_net(
            regs.magic_value().read().to_ne(),
            regs.version().read().to_ne(),
            u32::from(u8::from(regs.device_id().read())),
        )?;
        mmio.line_routed = match IoApic::at(ioapic::DEFAULT_BASE, frames) {
            Some(apic) => match apic.route_level(device.irq, interrupt.vector, interrupt.apic_id) {
                Ok(()) => true,
                Err(e) => {
                    log::warn!(
                        "virtio-mmio at {:#x}: IRQ {}: {e} ({} inputs); polling",
                        device.base,
                        device.irq,
                        apic.pins()
                    );
                    false
                }
            },
            None => {
                log::warn!("virtio-mmio at {:#x}: no I/O APIC at {:#x}; polling", device.base, ioapic::DEFAULT_BASE);
                false
            }
        };
        Ok(mmio)
    }

    fn registers(&self) -> VolatilePtr<'_, DeviceRegisters> {
        // SAFETY: `registers` maps the device's register window (uncached, at least the 0x100
        // bytes of `DeviceRegisters`: the command line parser refuses smaller windows); nothing
        // else in the kernel refers to it, and the mapping lives as long as the kernel.
        unsafe { VolatilePtr::new(NonNull::new_unchecked(self.registers.as_mut_ptr::<DeviceRegisters>())) }
    }
}

impl Transport for Mmio {
    fn describe(&self) -> alloc::string::String {
        alloc::format!("virtio-mmio at {:#x}", self.device.base)
    }
    fn generation(&self) -> Generation {
        Generation::Modern
    }
    fn reset(&mut self) {
        let regs = self.registers();
        regs.status().write(DeviceStatus::empty());
        super::wait_for_reset(|| regs.status().read());
    }
    fn status(&self) -> DeviceStatus {
        self.registers().status().read()
    }
    fn set_status(&mut self, status: DeviceStatus) {
        self.registers().status().write(status);
    }
    fn device_features(&mut self) -> u64 {
        let regs = self.registers();
        super::read_features(
            |half| regs.device_features_sel().write(le32::from_ne(half)),
            || regs.device_features().read().to_ne(),
        )
    }
    fn set_driver_features(&mut self, features: u64) {
        let regs = self.registers();
        super::write_features(
            features,
            |half| regs.driver_features_sel().write(le32::from_ne(half)),
            |bits| regs.driver_features().write(le32::from_ne(bits)),
        );
    }
    fn max_queue_size(&mut self, queue: u16) -> u16 {
        let regs = self.registers();
        regs.queue_sel().write(le16::from_ne(queue));
        regs.queue_size_max().read().to_ne()
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
        _frames: &mut FrameAllocator<'static>,
    ) -> Result<bool, &'static str> {
        let regs = self.registers();
        regs.queue_sel().write(le16::from_ne(queue));
        super::check_queue_size(size, regs.queue_size_max().read().to_ne())?;
        regs.queue_size().write(le16::from_ne(size));
        regs.queue_desc().write(le64::from_ne(addresses.descriptors));
        regs.queue_driver().write(le64::from_ne(addresses.available));
        regs.queue_device().write(le64::from_ne(addresses.used));
        regs.queue_ready().write(true);
        // One line serves every queue: it reaches the kernel if it was routed.
        Ok(msix_entry.is_some() && self.line_routed)
    }
    fn notify(&mut self, queue: u16) {
        self.registers().queue_notify().write(le32::from_ne(u32::from(queue)));
    }
    fn device_config_u8(&self, offset: u16) -> u8 {
        let at = MMIO_REGISTER_BYTES + u64::from(offset);
        if at >= self.mapped {
            return 0;
        }
        // SAFETY: a byte of the device configuration, inside the mapped window (checked above).
        unsafe { (self.registers + at).as_ptr::<u8>().read_volatile() }
    }
    fn config_generation(&self) -> u8 {
        self.registers().config_generation().read().to_ne() as u8
    }
    fn interrupt_entries(&self) -> u16 {
        u16::from(self.line_routed)
    }
    fn interrupt_name(&self) -> alloc::string::String {
        alloc::format!("IOAPIC GSI {}", self.device.irq)
    }
    fn acknowledge_interrupt(&mut self) {
        let regs = self.registers();
        let pending = regs.interrupt_status().read();
        if !pending.is_empty() {
            regs.interrupt_ack().write(pending);
        }
    }
}
