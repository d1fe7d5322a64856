//! The I/O APIC: turns a device's interrupt line (a global system interrupt, GSI) into a
//! vector at a local APIC. Only what virtio-mmio needs: route one line, level-triggered.
//!
//! Where it is: the one I/O APIC of QEMU's `microvm` (with `acpi=off`) and of Firecracker sits
//! at the architectural default address, serving GSIs 0 to 23; the kernel reads no ACPI or MP
//! table to find others.

use crate::mm::paging::map_mmio;
use kernel_core::mm::frame_alloc::FrameAllocator;
use x86_64::VirtAddr;

/// The architectural default address of the first I/O APIC.
pub const DEFAULT_BASE: u64 = 0xfec0_0000;
const REGISTER_SELECT: u64 = 0x00;
const REGISTER_WINDOW: u64 = 0x10;
const WINDOW_BYTES: u64 = 0x20;
const REG_VERSION: u32 = 0x01;
const REG_REDIRECTION_BASE: u32 = 0x10;
/// Redirection entry: level-triggered (bit 15); fixed delivery, physical destination, active
/// high and unmasked are all zero bits.
const ENTRY_LEVEL_TRIGGERED: u32 = 1 << 15;
const ENTRY_MASKED: u32 = 1 << 16;
/// What a read returns where no device answers.
const NOTHING: u32 = u32::MAX;

pub struct IoApic {
    registers: VirtAddr,
    /// Inputs (redirection entries) it has.
    pins: u32,
}

impl IoApic {
    /// The I/O APIC at physical `base`, if one answers there.
    pub fn at(base: u64, frames: &mut FrameAllocator<'static>) -> Option<IoApic> {
        let mut apic = IoApic { registers: map_mmio(base, WINDOW_BYTES, frames), pins: 0 };
        let version = apic.read(REG_VERSION);
        if version == NOTHING {
            return None;
        }
        apic.pins = ((version >> 16) & 0xff) + 1;
        Some(apic)
    }

    fn read(&self, register: u32) -> u32 {
        // SAFETY: the select and window registers of the I/O APIC that `registers` maps
        // (uncached); selecting then reading a register has no other effect.
        unsafe {
            (self.registers + REGISTER_SELECT).as_mut_ptr::<u32>().write_volatile(register);
            (self.registers + REGISTER_WINDOW).as_ptr::<u32>().read_volatile()
        }
    }

    fn write(&self, register: u32, value: u32) {
        // SAFETY: as in `read`; the callers write only redirection entries they own.
        unsafe {
            (self.registers + REGISTER_SELECT).as_mut_ptr::<u32>().write_volatile(register);
            (self.registers + REGISTER_WINDOW).as_mut_ptr::<u32>().write_volatile(value);
        }
    }

    pub fn pins(&self) -> u32 {
        self.pins
    }

    /// Delivers input `pin` as `vector` to the local APIC `apic_id`, level-triggered active
    /// high: the line stays asserted until the device is acknowledged, and the local APIC's EOI
    /// (broadcast to the I/O APIC) re-delivers it if it still is.
    pub fn route_level(&self, pin: u32, vector: u8, apic_id: u32) -> Result<(), &'static str> {
        if pin >= self.pins {
            return Err("the interrupt line is beyond the I/O APIC's inputs");
        }
        let entry = REG_REDIRECTION_BASE + 2 * pin;
        self.write(entry, ENTRY_MASKED);
        self.write(entry + 1, apic_id << 24);
        self.write(entry, ENTRY_LEVEL_TRIGGERED | u32::from(vector));
        Ok(())
    }
}
