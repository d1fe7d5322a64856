//! The physical NIC: a legacy (virtio 0.9.5, "transitional") virtio-net PCI device, driven
//! through its I/O-port registers, with receive interrupts by MSI-X through the local APIC.
//!
//! Written here rather than taken from the `virtio-drivers` crate: that crate has no port-I/O
//! PCI configuration access and no MSI-X, and the COW transmit path needs to hand the device
//! arbitrary guest frames by physical address, which is direct with our own descriptor table.
//!
//! Each queue has one fixed buffer per packet, whole pages holding a header and the largest
//! frame (several pages for jumbo frames; buffers never come from a general allocator on the
//! packet path).
//! Every transmit is a two-descriptor chain: the shared all-zero virtio-net header, then the
//! frame, either copied into the packet's buffer (the copy path, Denali's copy 2) or, on the COW
//! path, the guest's own write-protected frame by physical address. Receive hands the frame to
//! a closure and re-posts the buffer.

use super::pci::PciAddress;
use crate::arch::cpu::{inb, inl, inw, outb, outl, outw};
use crate::mm::phys::phys_to_virt;
use alloc::vec::Vec;
use core::sync::atomic::{fence, Ordering};
use hypercall_abi::layout::PAGE_SIZE as PAGE;
use kernel_core::mm::frame_alloc::FrameAllocator;
use kernel_core::vnet::GuestFrameRef;

/// What a zero-copy transmit hands back when the device is done: the guest and its frame.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TxCookie {
    /// The guest that sent the frame.
    pub guest: usize,
    /// Where the frame lies in the guest's tx slot, and its ring position.
    pub frame: GuestFrameRef,
}

pub const VENDOR_VIRTIO: u16 = 0x1af4;
/// Transitional (legacy-capable) virtio-net PCI device id.
pub const DEVICE_NET_LEGACY: u16 = 0x1000;

// Legacy register offsets in the I/O BAR.
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
const DEVICE_CONFIG_MSIX: u16 = 0x18;

const STATUS_ACKNOWLEDGE: u8 = 1;
const STATUS_DRIVER: u8 = 2;
const STATUS_DRIVER_OK: u8 = 4;
const STATUS_FAILED: u8 = 0x80;

const FEATURE_MAC: u32 = 1 << 5;
const FEATURE_ANY_LAYOUT: u32 = 1 << 27;
const NO_VECTOR: u16 = 0xffff;

const DESC_F_NEXT: u16 = 1;
const DESC_F_WRITE: u16 = 2;
const USED_F_NO_NOTIFY: u16 = 1;

/// Legacy virtio-net header (no mergeable rx buffers): 10 bytes, all zero for plain frames.
pub const NET_HEADER_LEN: usize = 10;
const RX_QUEUE: u16 = 0;
const TX_QUEUE: u16 = 1;
/// Buffers per queue (at most the device's queue size).
const MAX_BUFFERS: u16 = 128;
/// Frames handed to the device and not yet sent, at most. A frame waits behind everything in
/// the device's queue, whoever sent it: the network scheduler's fair order reaches the wire
/// only if that queue is short (so a flooding guest cannot fill it ahead of a neighbour's
/// frame). Measured with `cargo xtask bench isolation` and `bench echo`.
const TX_IN_FLIGHT_MAX: usize = 16;

/// A split virtqueue in legacy layout, in physically contiguous pages.
struct Virtqueue {
    index: u16,
    size: u16,
    phys: u64,
    avail_offset: u64,
    used_offset: u64,
    next_avail: u16,
    last_used: u16,
}

impl Virtqueue {
    fn layout(size: u16) -> (u64, u64, u64) {
        let size = u64::from(size);
        let avail = 16 * size;
        let used = (avail + 6 + 2 * size).next_multiple_of(PAGE);
        let total = (used + 6 + 8 * size).next_multiple_of(PAGE);
        (avail, used, total)
    }

    fn ptr<T>(&self, offset: u64) -> *mut T {
        phys_to_virt(self.phys + offset).as_mut_ptr::<T>()
    }

    fn write_desc(&mut self, id: u16, addr: u64, len: u32, flags: u16, next: u16) {
        let base = u64::from(id % self.size) * 16;
        // SAFETY: the descriptor table lies inside this queue's pages (id < size), which the
        // kernel allocated for the device and maps in the direct map.
        unsafe {
            self.ptr::<u64>(base).write_volatile(addr);
            self.ptr::<u32>(base + 8).write_volatile(len);
            self.ptr::<u16>(base + 12).write_volatile(flags);
            self.ptr::<u16>(base + 14).write_volatile(next);
        }
    }

    /// Makes descriptor `id` available to the device.
    fn push_avail(&mut self, id: u16) {
        let slot = u64::from(self.next_avail % self.size);
        // SAFETY: the avail ring (flags, idx, ring[size]) lies inside this queue's pages.
        unsafe {
            self.ptr::<u16>(self.avail_offset + 4 + 2 * slot).write_volatile(id);
            fence(Ordering::SeqCst); // the ring entry before the index the device reads
            self.next_avail = self.next_avail.wrapping_add(1);
            self.ptr::<u16>(self.avail_offset + 2).write_volatile(self.next_avail);
        }
    }

    /// The next descriptor the device has finished with, and the bytes it wrote.
    fn pop_used(&mut self) -> Option<(u16, u32)> {
        // SAFETY: the used ring (flags, idx, ring[size] of {id, len}) lies in this queue's pages.
        unsafe {
            let device_idx = self.ptr::<u16>(self.used_offset + 2).read_volatile();
            if device_idx == self.last_used {
                return None;
            }
            fence(Ordering::SeqCst); // the index before the entry it covers
            let slot = u64::from(self.last_used % self.size);
            let id = self.ptr::<u32>(self.used_offset + 4 + 8 * slot).read_volatile();
            let len = self.ptr::<u32>(self.used_offset + 8 + 8 * slot).read_volatile();
            self.last_used = self.last_used.wrapping_add(1);
            Some((id as u16, len))
        }
    }

    fn device_wants_notify(&self) -> bool {
        fence(Ordering::SeqCst);
        // SAFETY: the used ring's flags word lies in this queue's pages.
        unsafe { self.ptr::<u16>(self.used_offset).read_volatile() & USED_F_NO_NOTIFY == 0 }
    }
}

#[derive(Default, Clone, Copy, Debug)]
pub struct NicCounters {
    pub tx_frames: u64,
    pub tx_queue_full: u64,
    pub rx_frames: u64,
    pub rx_malformed: u64,
    pub notifies: u64,
}

/// Each transmitted packet is a chain of two descriptors, `2k` (the header, from one shared
/// zeroed page) and `2k + 1` (the frame: a driver buffer for copied frames, the guest's own
/// frame for zero-copy ones); `k` indexes the packet slot.
pub struct VirtioNet {
    io: u16,
    mac: [u8; 6],
    rx: Virtqueue,
    tx: Virtqueue,
    rx_buffers: Vec<u64>,
    tx_buffers: Vec<u64>,
    tx_free: Vec<u16>,
    /// Per packet slot: the guest frame a zero-copy packet is sent from.
    tx_cookies: Vec<Option<TxCookie>>,
    header_page: u64,
    tx_unnotified: bool,
    pub counters: NicCounters,
    pub msix: bool,
    tx_vector: u16,
    /// Bytes of each rx and tx buffer: enough for the largest frame any guest may send or
    /// receive (several pages, contiguous, with jumbo frames).
    buffer_bytes: u64,
}

/// Why [`VirtioNet::transmit`] did not queue a frame.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TransmitError {
    /// The device holds its most frames in flight: try again after it hands some back.
    QueueFull,
    /// Longer than the driver's buffers (sized for the largest MTU, so only a kernel bug).
    TooLong,
}

impl VirtioNet {
    fn set_reg8(&self, offset: u16, value: u8) {
        // SAFETY: a register of this device's I/O BAR; the driver writes only registers whose
        // effect it intends.
        unsafe { outb(self.io + offset, value) }
    }
    fn reg16(&self, offset: u16) -> u16 {
        // SAFETY: a register of this device's I/O BAR (offsets from the legacy layout).
        unsafe { inw(self.io + offset) }
    }
    fn set_reg16(&self, offset: u16, value: u16) {
        // SAFETY: as in `set_reg8`.
        unsafe { outw(self.io + offset, value) }
    }
    fn reg32(&self, offset: u16) -> u32 {
        // SAFETY: as in `reg16`.
        unsafe { inl(self.io + offset) }
    }
    fn set_reg32(&self, offset: u16, value: u32) {
        // SAFETY: as in `set_reg8`.
        unsafe { outl(self.io + offset, value) }
    }

    fn setup_queue(
        &mut self,
        index: u16,
        frames: &mut FrameAllocator<'static>,
        vector: u16,
    ) -> Result<Virtqueue, &'static str> {
        self.set_reg16(REG_QUEUE_SELECT, index);
        let size = self.reg16(REG_QUEUE_SIZE);
        if size == 0 || !size.is_power_of_two() {
            return Err("virtqueue size is zero or not a power of two");
        }
        let (avail_offset, used_offset, total) = Virtqueue::layout(size);
        let phys = frames.allocate_contiguous(total / PAGE, 1).ok_or("no memory for a virtqueue")?;
        // SAFETY: fresh frames for the queue, in the direct map; zeroed before the device sees them.
        unsafe { core::ptr::write_bytes(phys_to_virt(phys).as_mut_ptr::<u8>(), 0, total as usize) };
        if self.msix {
            self.set_reg16(REG_MSIX_QUEUE_VECTOR, vector);
        }
        self.set_reg32(REG_QUEUE_PFN, (phys / PAGE) as u32);
        Ok(Virtqueue { index, size, phys, avail_offset, used_offset, next_avail: 0, last_used: 0 })
    }

    /// Resets and configures the device at `pci`: receive interrupts on `rx_vector` through
    /// MSI-X table entry 0 (whose page `map_table` maps), every rx buffer posted.
    pub fn init(
        pci: PciAddress,
        frames: &mut FrameAllocator<'static>,
        map_table: impl FnOnce(u64, &mut FrameAllocator<'static>) -> x86_64::VirtAddr,
        rx_vector: u8,
        apic_id: u32,
        buffer_pages: u64,
    ) -> Result<VirtioNet, &'static str> {
        pci.assign_bars();
        let bar0 = pci.bar(0);
        if bar0 & 1 == 0 || bar0 & !0x3 == 0 {
            return Err("BAR0 is not an assigned I/O BAR (legacy virtio needed: disable-modern=on)");
        }
        pci.enable();
        let io = (bar0 & !0x3) as u16;
        let msix = pci.msix();
        let mut nic = VirtioNet {
            io,
            mac: [0; 6],
            rx: Virtqueue { index: 0, size: 1, phys: 0, avail_offset: 0, used_offset: 0, next_avail: 0, last_used: 0 },
            tx: Virtqueue { index: 1, size: 1, phys: 0, avail_offset: 0, used_offset: 0, next_avail: 0, last_used: 0 },
            rx_buffers: Vec::new(),
            tx_buffers: Vec::new(),
            tx_free: Vec::new(),
            tx_cookies: Vec::new(),
            header_page: 0,
            tx_unnotified: false,
            counters: NicCounters::default(),
            msix: false,
            tx_vector: NO_VECTOR,
            buffer_bytes: buffer_pages * PAGE,
        };
        nic.set_reg8(REG_STATUS, 0); // reset
        nic.set_reg8(REG_STATUS, STATUS_ACKNOWLEDGE);
        nic.set_reg8(REG_STATUS, STATUS_ACKNOWLEDGE | STATUS_DRIVER);
        let offered = nic.reg32(REG_DEVICE_FEATURES);
        if offered & FEATURE_MAC == 0 {
            nic.set_reg8(REG_STATUS, STATUS_FAILED);
            return Err("device offers no MAC address");
        }
        nic.set_reg32(REG_GUEST_FEATURES, offered & (FEATURE_MAC | FEATURE_ANY_LAYOUT));

        if let Some((cap, bir, table_offset, entries)) = msix {
            let bar = pci.bar(bir);
            if bar & 1 == 0 && bar & !0xf != 0 && entries >= 1 {
                let table_phys = u64::from(bar & !0xf) + u64::from(table_offset);
                let page = map_table(table_phys - table_phys % PAGE, frames);
                let entry = (page + table_phys % PAGE).as_mut_ptr::<u32>();
                // Entries 0 (rx) and 1 (tx completions): message address (the local APIC, physical
                // destination), data (the vector, fixed delivery, edge), then unmask.
                // SAFETY: MSI-X table entries of this device, mapped uncached by `map_table`.
                unsafe {
                    for index in 0..usize::from(entries.min(2)) {
                        let entry = entry.add(4 * index);
                        entry.write_volatile(0xfee0_0000 | (apic_id << 12));
                        entry.add(1).write_volatile(0);
                        entry.add(2).write_volatile(u32::from(rx_vector));
                        entry.add(3).write_volatile(0);
                    }
                }
                nic.tx_vector = if entries >= 2 { 1 } else { NO_VECTOR };
                pci.enable_msix(cap);
                nic.msix = true;
                nic.set_reg16(REG_MSIX_CONFIG_VECTOR, NO_VECTOR);
            }
        }
        let device_config = if nic.msix { DEVICE_CONFIG_MSIX } else { REG_MSIX_CONFIG_VECTOR };
        for (i, byte) in nic.mac.iter_mut().enumerate() {
            // SAFETY: the MAC bytes of the device-specific configuration.
            *byte = unsafe { inb(io + device_config + i as u16) };
        }

        nic.rx = nic.setup_queue(RX_QUEUE, frames, 0)?;
        let tx_vector = nic.tx_vector;
        nic.tx = nic.setup_queue(TX_QUEUE, frames, tx_vector)?;
        if nic.msix {
            nic.set_reg16(REG_QUEUE_SELECT, RX_QUEUE);
            if nic.reg16(REG_MSIX_QUEUE_VECTOR) != 0 {
                log::warn!("virtio-net refused the MSI-X vector for its rx queue; polling only");
                nic.msix = false;
            }
        }
        let rx_count = MAX_BUFFERS.min(nic.rx.size);
        for id in 0..rx_count {
            let phys = frames.allocate_contiguous(buffer_pages, 1).ok_or("no memory for rx buffers")?;
            nic.rx_buffers.push(phys);
            nic.rx.write_desc(id, phys, nic.buffer_bytes as u32, DESC_F_WRITE, 0);
            nic.rx.push_avail(id);
        }
        let header_page = frames.allocate().ok_or("no memory for the tx header page")?;
        // SAFETY: a fresh frame; the device only ever reads its first NET_HEADER_LEN bytes.
        unsafe { core::ptr::write_bytes(phys_to_virt(header_page).as_mut_ptr::<u8>(), 0, PAGE as usize) };
        nic.header_page = header_page;
        let tx_count = MAX_BUFFERS.min(nic.tx.size / 2);
        for k in 0..tx_count {
            nic.tx_buffers.push(frames.allocate_contiguous(buffer_pages, 1).ok_or("no memory for tx buffers")?);
            nic.tx_cookies.push(None);
            nic.tx_free.push(tx_count - 1 - k);
        }
        nic.set_reg8(REG_STATUS, STATUS_ACKNOWLEDGE | STATUS_DRIVER | STATUS_DRIVER_OK);
        nic.set_reg16(REG_QUEUE_NOTIFY, RX_QUEUE);
        Ok(nic)
    }

    pub fn mac(&self) -> [u8; 6] {
        self.mac
    }

    /// Takes back the packet slots the device has sent, handing zero-copy cookies to `done`.
    pub fn reclaim_tx(&mut self, mut done: impl FnMut(TxCookie)) {
        while let Some((id, _)) = self.tx.pop_used() {
            let k = usize::from(id / 2);
            if id % 2 != 0 || k >= self.tx_buffers.len() {
                continue;
            }
            if let Some(cookie) = self.tx_cookies[k].take() {
                done(cookie);
            }
            self.tx_free.push(k as u16);
        }
    }

    /// Frames handed to the device and not taken back yet.
    fn tx_in_flight(&self) -> usize {
        self.tx_buffers.len().saturating_sub(self.tx_free.len())
    }

    /// A free packet slot, if the device has room (completions are taken back first).
    fn free_slot(&mut self, done: impl FnMut(TxCookie)) -> Option<u16> {
        if self.tx_in_flight() >= TX_IN_FLIGHT_MAX {
            self.reclaim_tx(done);
        }
        let slot = if self.tx_in_flight() < TX_IN_FLIGHT_MAX { self.tx_free.pop() } else { None };
        if slot.is_none() {
            self.counters.tx_queue_full += 1;
        }
        slot
    }

    /// Queues the chain header + `len` bytes at physical `data` in packet slot `k`.
    fn queue_chain(&mut self, k: u16, data: u64, len: u32) {
        let header = 2 * k;
        self.tx.write_desc(header, self.header_page, NET_HEADER_LEN as u32, DESC_F_NEXT, header + 1);
        self.tx.write_desc(header + 1, data, len, 0, 0);
        self.tx.push_avail(header);
        self.tx_unnotified = true;
        self.counters.tx_frames += 1;
    }

    /// Copies `frame` into a driver buffer (Denali's copy 2) and queues it (the device is
    /// notified by [`VirtioNet::flush`]).
    pub fn transmit(&mut self, frame: &[u8], done: impl FnMut(TxCookie)) -> Result<(), TransmitError> {
        if frame.len() as u64 > self.buffer_bytes {
            return Err(TransmitError::TooLong);
        }
        let k = self.free_slot(done).ok_or(TransmitError::QueueFull)?;
        let buffer = self.tx_buffers[usize::from(k)];
        // SAFETY: the buffer is this driver's run for slot `k`, not in flight (the slot was
        // free); the frame fits in it (checked above).
        unsafe { core::ptr::copy_nonoverlapping(frame.as_ptr(), phys_to_virt(buffer).as_mut_ptr::<u8>(), frame.len()) };
        self.queue_chain(k, buffer, frame.len() as u32);
        Ok(())
    }

    /// Queues `len` bytes at physical address `data` without copying them: the caller keeps the
    /// memory unchanged (write-protected) until `cookie` comes back through a `done` closure.
    pub fn transmit_zero_copy(
        &mut self,
        data: u64,
        len: u32,
        cookie: TxCookie,
        done: impl FnMut(TxCookie),
    ) -> Result<(), TxCookie> {
        let Some(k) = self.free_slot(done) else { return Err(cookie) };
        self.tx_cookies[usize::from(k)] = Some(cookie);
        self.queue_chain(k, data, len);
        Ok(())
    }

    /// Notifies the device of queued frames (once per batch), unless it asked not to be.
    pub fn flush(&mut self) {
        if self.tx_unnotified {
            self.tx_unnotified = false;
            if self.tx.device_wants_notify() {
                self.counters.notifies += 1;
                self.set_reg16(REG_QUEUE_NOTIFY, self.tx.index);
            }
        }
    }

    /// Hands every received frame to `deliver`, then re-posts its buffer, calling `released`
    /// with `deliver`'s result once the frame's buffer is back with the device (for stage
    /// stamps). Returns the count.
    pub fn receive_with<R>(&mut self, mut deliver: impl FnMut(&[u8]) -> R, mut released: impl FnMut(R)) -> usize {
        let mut count = 0;
        while let Some((id, len)) = self.rx.pop_used() {
            let Some(&buffer) = self.rx_buffers.get(usize::from(id)) else { continue };
            let len = (len as usize).min(self.buffer_bytes as usize);
            if len > NET_HEADER_LEN {
                // SAFETY: the device finished writing this buffer (it is in the used ring) and
                // will not touch it until it is re-posted below; `len` is clamped to the buffer.
                let frame = unsafe {
                    core::slice::from_raw_parts(
                        phys_to_virt(buffer).as_ptr::<u8>().add(NET_HEADER_LEN),
                        len - NET_HEADER_LEN,
                    )
                };
                let result = deliver(frame);
                self.counters.rx_frames += 1;
                count += 1;
                self.rx.write_desc(id, buffer, self.buffer_bytes as u32, DESC_F_WRITE, 0);
                self.rx.push_avail(id);
                released(result);
            } else {
                self.counters.rx_malformed += 1;
                self.rx.write_desc(id, buffer, self.buffer_bytes as u32, DESC_F_WRITE, 0);
                self.rx.push_avail(id);
            }
        }
        if count > 0 && self.rx.device_wants_notify() {
            self.set_reg16(REG_QUEUE_NOTIFY, self.rx.index);
        }
        count
    }
}

/// Finds and starts the physical NIC (a legacy virtio-net PCI device), if the machine has one.
/// `max_frame` sizes its buffers: the largest frame any guest may send or receive.
pub fn probe(max_frame: u64) -> Option<VirtioNet> {
    use crate::drivers::{pci, virtio_net};
    use crate::mm::{paging, phys};
    let address = pci::find_devices(virtio_net::VENDOR_VIRTIO, virtio_net::DEVICE_NET_LEGACY).next()?;
    let apic_id = crate::arch::clock::apic_id();
    let result = phys::with_frames(|frames| {
        let buffer_pages = (max_frame + virtio_net::NET_HEADER_LEN as u64).div_ceil(hypercall_abi::layout::PAGE_SIZE);
        virtio_net::VirtioNet::init(
            address,
            frames,
            |phys, frames| paging::map_mmio_page(1, phys, frames),
            crate::arch::vectors::NIC_VECTOR,
            apic_id,
            buffer_pages,
        )
    });
    match result {
        Ok(nic) => {
            let m = nic.mac();
            log::info!(
                "nic: virtio-net at {address}, MAC {:02x}:{:02x}:{:02x}:{:02x}:{:02x}:{:02x}, {}",
                m[0],
                m[1],
                m[2],
                m[3],
                m[4],
                m[5],
                if nic.msix { "MSI-X receive interrupts" } else { "polled on the timer" }
            );
            Some(nic)
        }
        Err(e) => {
            log::error!("nic: virtio-net at {address} unusable: {e}");
            None
        }
    }
}
