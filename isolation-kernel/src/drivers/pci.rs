//! PCI configuration space through the legacy port-I/O mechanism (0xcf8/0xcfc), which QEMU's
//! `pc` machine provides, and MSI-X set-up. What configuration space says (BARs, capabilities,
//! the MSI-X table's place) is decoded by `kernel_core::drivers::pci` from a snapshot.

use crate::arch::cpu::{inl, outl};
use kernel_core::drivers::pci::{Bar, ConfigSpace, MsixTable, BAR_COUNT, CONFIG_SPACE_BYTES};
use kernel_core::mm::frame_alloc::FrameAllocator;

const CONFIG_ADDRESS: u16 = 0xcf8;
const CONFIG_DATA: u16 = 0xcfc;
const COMMAND: u8 = 0x04;
const COMMAND_IO: u16 = 1 << 0;
const COMMAND_MEMORY: u16 = 1 << 1;
const COMMAND_BUS_MASTER: u16 = 1 << 2;

/// A PCI function on bus 0..255.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PciAddress {
    pub bus: u8,
    pub device: u8,
    pub function: u8,
}

impl core::fmt::Display for PciAddress {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        write!(f, "{:02x}:{:02x}.{}", self.bus, self.device, self.function)
    }
}

impl PciAddress {
    fn config_address(&self, offset: u8) -> u32 {
        0x8000_0000
            | (u32::from(self.bus) << 16)
            | (u32::from(self.device) << 11)
            | (u32::from(self.function) << 8)
            | u32::from(offset & 0xfc)
    }

    pub fn read32(&self, offset: u8) -> u32 {
        // SAFETY: the configuration mechanism's two ports; selecting an address and reading
        // the data port has no effect beyond the read (no PCI register here is read-sensitive).
        unsafe {
            outl(CONFIG_ADDRESS, self.config_address(offset));
            inl(CONFIG_DATA)
        }
    }

    pub fn write32(&self, offset: u8, value: u32) {
        // SAFETY: as in `read32`; callers write only registers whose effect they intend.
        unsafe {
            outl(CONFIG_ADDRESS, self.config_address(offset));
            outl(CONFIG_DATA, value);
        }
    }

    pub fn read16(&self, offset: u8) -> u16 {
        (self.read32(offset) >> ((offset & 2) * 8)) as u16
    }

    pub fn write16(&self, offset: u8, value: u16) {
        let shift = (offset & 2) * 8;
        let old = self.read32(offset);
        let new = (old & !(0xffff << shift)) | (u32::from(value) << shift);
        self.write32(offset, new);
    }

    pub fn vendor_device(&self) -> (u16, u16) {
        let id = self.read32(0);
        (id as u16, (id >> 16) as u16)
    }

    /// Base address register `index` (0..5) as its raw value.
    pub fn bar(&self, index: u8) -> u32 {
        self.read32(0x10 + 4 * index)
    }

    pub fn set_bar(&self, index: u8, value: u32) {
        self.write32(0x10 + 4 * index, value);
    }

    /// Size of a 32-bit BAR, found by the usual write-all-ones probe.
    pub fn bar_size(&self, index: u8) -> u32 {
        let old = self.bar(index);
        self.set_bar(index, u32::MAX);
        let probe = self.bar(index);
        self.set_bar(index, old);
        let mask = if old & 1 == 1 { probe & !0x3 } else { probe & !0xf };
        (!mask).wrapping_add(1)
    }

    /// Enables I/O space, memory space and bus mastering (DMA).
    pub fn enable(&self) {
        let command = self.read16(COMMAND);
        self.write16(COMMAND, command | COMMAND_IO | COMMAND_MEMORY | COMMAND_BUS_MASTER);
    }

    /// Runs `f` with the function's I/O and memory decoding off, so that sizing a BAR (all
    /// ones written to it for a moment) never places the device over something else.
    fn with_decoding_off<R>(&self, f: impl FnOnce() -> R) -> R {
        let command = self.read16(COMMAND);
        self.write16(COMMAND, command & !(COMMAND_IO | COMMAND_MEMORY));
        let result = f();
        self.write16(COMMAND, command);
        result
    }

    /// A snapshot of the whole (conventional) configuration space.
    pub fn config_space(&self) -> ConfigSpace {
        let mut dwords = [0u32; CONFIG_SPACE_BYTES / 4];
        for (index, dword) in dwords.iter_mut().enumerate() {
            *dword = self.read32((4 * index) as u8);
        }
        ConfigSpace::from_dwords(&dwords)
    }

    /// What a BAR register reads back after all ones are written (its size mask); the value is
    /// restored; the caller turns decoding off first.
    fn probe_bar(&self, index: u8) -> u32 {
        let old = self.bar(index);
        self.set_bar(index, u32::MAX);
        let probe = self.bar(index);
        self.set_bar(index, old);
        probe
    }

    /// The function's BARs, decoded (a 64-bit BAR fills its two slots: the second is `None`).
    pub fn bars(&self) -> [Bar; BAR_COUNT] {
        self.with_decoding_off(|| self.probe_bars())
    }

    fn probe_bars(&self) -> [Bar; BAR_COUNT] {
        let mut bars = [Bar::None; BAR_COUNT];
        let mut index = 0u8;
        while usize::from(index) < BAR_COUNT {
            let raw = self.bar(index);
            let wide = Bar::is_wide(raw) && usize::from(index) + 1 < BAR_COUNT;
            let (raw_high, probe_high) = if wide { (self.bar(index + 1), self.probe_bar(index + 1)) } else { (0, 0) };
            bars[usize::from(index)] = Bar::decode(raw, raw_high, self.probe_bar(index), probe_high);
            index += if wide { 2 } else { 1 };
        }
        bars
    }

    /// Points the first `count` entries of the MSI-X `table` at `vector` on the local APIC
    /// `apic_id` (fixed delivery, physical destination, edge), unmasked, and turns MSI-X on.
    /// Returns how many entries were programmed.
    pub fn enable_msix(
        &self,
        table: &MsixTable,
        count: u16,
        vector: u8,
        apic_id: u32,
        frames: &mut FrameAllocator<'static>,
    ) -> u16 {
        let count = count.min(table.entries);
        let entries = crate::mm::paging::map_mmio(table.phys, u64::from(count) * 16, frames).as_mut_ptr::<u32>();
        for index in 0..usize::from(count) {
            // SAFETY: entry `index` (< `table.entries`) of this device's MSI-X table, which
            // `kernel_core` found inside the device's memory BAR and `map_mmio` mapped uncached.
            unsafe {
                let entry = entries.add(4 * index);
                entry.write_volatile(MSI_ADDRESS_BASE | (apic_id << 12));
                entry.add(1).write_volatile(0);
                entry.add(2).write_volatile(u32::from(vector));
                entry.add(3).write_volatile(0);
            }
        }
        let control = self.read16(table.capability + 2);
        self.write16(table.capability + 2, (control | MSIX_ENABLE) & !MSIX_FUNCTION_MASK);
        count
    }
}

/// MSI message address: the local APIC's window; the destination APIC id goes in bits 12..19.
const MSI_ADDRESS_BASE: u32 = 0xfee0_0000;
const MSIX_ENABLE: u16 = 0x8000;
const MSIX_FUNCTION_MASK: u16 = 0x4000;

/// Where BARs the firmware left unassigned are placed (qboot assigns none): I/O from 0xc000,
/// memory in the PCI hole below the IOAPIC, from 0xe000_0000 (the machine has less than
/// 3.5 GiB of RAM below 4 GiB there).
static NEXT_IO: spin::Mutex<(u32, u32)> = spin::Mutex::new((0xc000, 0xe000_0000));

impl PciAddress {
    /// Gives every unassigned BAR of this function an address of its own.
    pub fn assign_bars(&self) {
        self.with_decoding_off(|| self.assign_unassigned_bars());
    }

    fn assign_unassigned_bars(&self) {
        let mut index = 0;
        while index < 6 {
            let raw = self.bar(index);
            let is_io = raw & 1 == 1;
            let is_64 = !is_io && (raw >> 1) & 0x3 == 2;
            let size = self.bar_size(index);
            let assigned = if is_io { raw & !0x3 } else { raw & !0xf };
            if size != 0 && size != 1 && assigned == 0 {
                let mut next = NEXT_IO.lock();
                let cursor = if is_io { &mut next.0 } else { &mut next.1 };
                let base = cursor.next_multiple_of(size.max(16));
                *cursor = base + size;
                self.set_bar(index, base | (raw & if is_io { 0x3 } else { 0xf }));
                if is_64 {
                    self.set_bar(index + 1, 0);
                }
                log::debug!(
                    "pci {self}: BAR{index} -> {base:#x} ({size:#x} bytes, {})",
                    if is_io { "I/O" } else { "memory" }
                );
            }
            index += if is_64 { 2 } else { 1 };
        }
    }
}

/// Every function on bus 0 with the given vendor and device id.
pub fn find_devices(vendor: u16, device: u16) -> impl Iterator<Item = PciAddress> {
    (0..32u8).flat_map(move |dev| {
        let functions = {
            let first = PciAddress { bus: 0, device: dev, function: 0 };
            let multi = first.vendor_device().0 != 0xffff && (first.read32(0x0c) >> 16) & 0x80 != 0;
            if multi {
                8
            } else {
                1
            }
        };
        (0..functions)
            .map(move |function| PciAddress { bus: 0, device: dev, function })
            .filter(move |a| a.vendor_device() == (vendor, device))
    })
}
