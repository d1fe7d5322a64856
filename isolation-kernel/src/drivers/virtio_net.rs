//! The physical NIC: a virtio-net device over whichever transport the machine offers
//! (`drivers/virtio`: legacy or modern virtio-pci, virtio-mmio), with receive interrupts by
//! MSI-X or an I/O APIC line where the device has them and polling on the timer where not. The queues and the
//! packet code here are the same for every transport.
//!
//! Written here rather than taken from the `virtio-drivers` crate: that crate has no port-I/O
//! PCI configuration access and no MSI-X, and the COW transmit path needs to hand the device
//! arbitrary guest frames by physical address, which is direct with our own descriptor table.
//!
//! Each queue has one fixed buffer per packet, whole pages holding a header and the largest
//! frame (several pages for jumbo frames; buffers never come from a general allocator on the
//! packet path).
//! Every transmit is a chain: the packet slot's virtio-net header (all zero, or `NEEDS_CSUM`
//! with the offsets the kernel derived when the device finishes the checksum), then the frame,
//! either copied into the packet's buffer (the copy path, Denali's copy 2) or, on the COW path,
//! the guest's own write-protected frame by physical address; on the split path the frame is
//! two descriptors, the kernel's copy of its headers (in the packet's buffer) and the payload in
//! the guest's slot by physical address. Receive hands the frame to a closure and re-posts the
//! buffer.

use super::pci::PciAddress;
use super::virtio::{legacy_pci, mmio, modern_pci, InterruptTarget, QueueAddresses, Transport};
use crate::mm::phys::phys_to_virt;
use alloc::boxed::Box;
use alloc::vec::Vec;
use core::sync::atomic::{fence, Ordering};
use hypercall_abi::layout::PAGE_SIZE as PAGE;
use kernel_core::boot::cmdline::{MmioDevice, MAX_MMIO_DEVICES};
use kernel_core::drivers::virtio::{negotiate_net, rx_checksum, tx_header, Generation, RxChecksum, MAX_NET_HEADER_LEN};
use kernel_core::drivers::virtio_pci::{modern_layout, LayoutError};
use kernel_core::mm::frame_alloc::FrameAllocator;
use kernel_core::vnet::{CsumRequest, GuestFrameRef};
use virtio_spec::DeviceStatus;

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
pub const DEVICE_NET_TRANSITIONAL: u16 = 0x1000;
/// Modern-only virtio-net PCI device id (0x1040 + device type 1).
pub const DEVICE_NET_MODERN: u16 = 0x1041;

const DESC_F_NEXT: u16 = 1;
const DESC_F_WRITE: u16 = 2;
const USED_F_NO_NOTIFY: u16 = 1;
const AVAIL_F_NO_INTERRUPT: u16 = 1;

const RX_QUEUE: u16 = 0;
const TX_QUEUE: u16 = 1;
/// Buffers per queue (at most the device's queue size).
const MAX_BUFFERS: u16 = 128;
/// Frames handed to the device and not yet sent, at most. A frame waits behind everything in
/// the device's queue, whoever sent it: the network scheduler's fair order reaches the wire
/// only if that queue is short (so a flooding guest cannot fill it ahead of a neighbour's
/// frame). Measured with `cargo xtask bench isolation` and `bench echo`.
const TX_IN_FLIGHT_MAX: usize = 16;
/// Queue entries where the transport lets the driver choose.
const QUEUE_SIZE: u16 = 2 * MAX_BUFFERS;
/// Descriptors reserved per packet slot: the virtio-net header and the frame in at most two
/// pieces (headers and payload, on the split path).
const DESCS_PER_PACKET: u16 = 3;
/// Interrupt entries: 0 for the receive queue, 1 for transmit completions (MSI-X; a line
/// interrupt is entry 0 for both).
const RX_MSIX_ENTRY: u16 = 0;
const TX_MSIX_ENTRY: u16 = 1;
/// Times the MAC is read again while the device changes its configuration under the reader.
const CONFIG_READ_TRIES: usize = 16;

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
    /// Offsets of the available and used rings, and the bytes of the whole queue: the legacy
    /// layout, which every transport accepts.
    fn layout(size: u16) -> (u64, u64, u64) {
        let (avail, used) = legacy_pci::legacy_layout(size);
        let total = (used + 6 + 8 * u64::from(size)).next_multiple_of(PAGE);
        (avail, used, total)
    }

    fn addresses(&self) -> QueueAddresses {
        QueueAddresses {
            descriptors: self.phys,
            available: self.phys + self.avail_offset,
            used: self.phys + self.used_offset,
        }
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

    /// Asks the device to interrupt when it uses a buffer of this queue, or not to (a hint the
    /// device may ignore; the driver looks at the used ring again after turning them on).
    fn set_interrupts(&mut self, on: bool) {
        // SAFETY: the avail ring's flags word lies inside this queue's pages.
        unsafe { self.ptr::<u16>(self.avail_offset).write_volatile(if on { 0 } else { AVAIL_F_NO_INTERRUPT }) };
        fence(Ordering::SeqCst); // the flag before the used ring is read again
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

/// Bytes between the packet slots' headers in the header page.
const TX_HEADER_STRIDE: u64 = 16;
const _: () = assert!(MAX_BUFFERS as u64 * TX_HEADER_STRIDE <= PAGE && MAX_NET_HEADER_LEN as u64 <= TX_HEADER_STRIDE);

/// Each transmitted packet is a chain of descriptors `3k` (the header: slot `k`'s in one header
/// page), `3k + 1` (the frame: a driver buffer for copied frames, the guest's own frame for
/// zero-copy ones, the copied headers on the split path) and, on the split path, `3k + 2` (the
/// payload in the guest's slot); `k` indexes the packet slot.
pub struct VirtioNet {
    transport: Box<dyn Transport>,
    mac: [u8; 6],
    rx: Virtqueue,
    tx: Virtqueue,
    rx_buffers: Vec<u64>,
    tx_buffers: Vec<u64>,
    tx_free: Vec<u16>,
    /// Per packet slot: the guest frame a zero-copy packet is sent from.
    tx_cookies: Vec<Option<TxCookie>>,
    header_page: u64,
    /// Bytes of `virtio_net_hdr` before each frame (10 legacy, 12 modern).
    net_header_len: usize,
    /// Checksum offloads agreed: the device finishes `NEEDS_CSUM` checksums on transmit
    /// (`VIRTIO_NET_F_CSUM`), and marks received frames (`VIRTIO_NET_F_GUEST_CSUM`).
    pub tx_csum: bool,
    pub rx_csum: bool,
    tx_unnotified: bool,
    /// Zero-copy packets in flight: their guests wait for the completion, so it interrupts.
    zero_copy_in_flight: usize,
    /// A frame found no packet slot: the completion that frees one interrupts.
    tx_waiting_for_slot: bool,
    /// Whether transmit completions interrupt now. Copied frames need no completion: their
    /// slots are taken back when the next frame needs one, so an echo takes no interrupt for its
    /// reply (one that delivered nothing cost ~520 instructions per echo).
    tx_interrupts: bool,
    pub counters: NicCounters,
    /// Receive interrupts arrive (by MSI-X or a line; else the kernel polls on its timer).
    pub interrupts: bool,
    /// Transmit completions have an interrupt (their own MSI-X vector, or the line both queues
    /// share); else the kernel polls for them on its timer while someone waits for one.
    tx_vector: bool,
    /// Bytes of each rx and tx buffer: enough for the largest frame any guest may send or
    /// receive (several pages, contiguous, with jumbo frames).
    buffer_bytes: u64,
}

/// A frame copied into a free packet slot's driver buffer and not queued yet (see
/// [`VirtioNet::copy_unqueued`]); consumed by queueing or releasing it.
#[must_use = "a copied frame holds a packet slot until it is queued or released"]
pub struct CopiedFrame {
    slot: u16,
    /// Physical address of the copy (the slot's driver buffer) and its length.
    pub phys: u64,
    pub len: u32,
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
    fn setup_queue(
        &mut self,
        index: u16,
        frames: &mut FrameAllocator<'static>,
        msix_entry: Option<u16>,
    ) -> Result<(Virtqueue, bool), &'static str> {
        let max = self.transport.max_queue_size(index);
        let size = if self.transport.queue_size_is_fixed() { max } else { max.min(QUEUE_SIZE) };
        if size == 0 || !size.is_power_of_two() {
            return Err("virtqueue size is zero or not a power of two");
        }
        let (avail_offset, used_offset, total) = Virtqueue::layout(size);
        let phys = frames.allocate_contiguous(total / PAGE, 1).ok_or("no memory for a virtqueue")?;
        // SAFETY: fresh frames for the queue, in the direct map; zeroed before the device sees them.
        unsafe { core::ptr::write_bytes(phys_to_virt(phys).as_mut_ptr::<u8>(), 0, total as usize) };
        let queue = Virtqueue { index, size, phys, avail_offset, used_offset, next_avail: 0, last_used: 0 };
        let vector_taken = self.transport.enable_queue(index, size, queue.addresses(), msix_entry, frames)?;
        Ok((queue, vector_taken))
    }

    /// The device's MAC address, read until the configuration is the same before and after.
    fn read_mac(&self) -> [u8; 6] {
        let mut mac = [0; 6];
        for _ in 0..CONFIG_READ_TRIES {
            let before = self.transport.config_generation();
            for (offset, byte) in (0u16..).zip(mac.iter_mut()) {
                *byte = self.transport.device_config_u8(offset);
            }
            if self.transport.config_generation() == before {
                break;
            }
        }
        mac
    }

    /// Initializes the device behind `transport` (virtio 1.2, 3.1.1): reset, features, receive
    /// interrupts through MSI-X entry 0 (transmit completions through entry 1) where the
    /// transport has them, every rx buffer posted.
    pub fn init(
        transport: Box<dyn Transport>,
        frames: &mut FrameAllocator<'static>,
        buffer_pages: u64,
    ) -> Result<VirtioNet, &'static str> {
        let interrupt_entries = transport.interrupt_entries();
        let mut nic = VirtioNet {
            transport,
            mac: [0; 6],
            rx: Virtqueue { index: 0, size: 1, phys: 0, avail_offset: 0, used_offset: 0, next_avail: 0, last_used: 0 },
            tx: Virtqueue { index: 1, size: 1, phys: 0, avail_offset: 0, used_offset: 0, next_avail: 0, last_used: 0 },
            rx_buffers: Vec::new(),
            tx_buffers: Vec::new(),
            tx_free: Vec::new(),
            tx_cookies: Vec::new(),
            header_page: 0,
            net_header_len: MAX_NET_HEADER_LEN,
            tx_csum: false,
            rx_csum: false,
            tx_unnotified: false,
            zero_copy_in_flight: 0,
            tx_waiting_for_slot: false,
            tx_interrupts: true,
            counters: NicCounters::default(),
            interrupts: false,
            tx_vector: false,
            buffer_bytes: buffer_pages * PAGE,
        };
        let t = &mut nic.transport;
        t.reset();
        t.set_status(DeviceStatus::ACKNOWLEDGE);
        t.set_status(DeviceStatus::ACKNOWLEDGE | DeviceStatus::DRIVER);
        let generation = t.generation();
        let negotiated = match negotiate_net(t.device_features(), generation, crate::vnet::checksum_offload()) {
            Ok(n) => n,
            Err(e) => {
                t.set_status(DeviceStatus::FAILED);
                log::error!("nic: {e}");
                return Err("feature negotiation failed");
            }
        };
        t.set_driver_features(negotiated.features);
        nic.net_header_len = negotiated.net_header_len;
        (nic.tx_csum, nic.rx_csum) = (negotiated.tx_csum, negotiated.rx_csum);
        let mut status = DeviceStatus::ACKNOWLEDGE | DeviceStatus::DRIVER;
        if generation == Generation::Modern {
            status |= DeviceStatus::FEATURES_OK;
            t.set_status(status);
            if !t.status().contains(DeviceStatus::FEATURES_OK) {
                t.set_status(DeviceStatus::FAILED);
                return Err("the device refused the features (FEATURES_OK did not stick)");
            }
        }
        nic.mac = nic.read_mac();

        let rx_entry = (interrupt_entries > RX_MSIX_ENTRY).then_some(RX_MSIX_ENTRY);
        let tx_entry = (interrupt_entries > TX_MSIX_ENTRY).then_some(TX_MSIX_ENTRY);
        let (rx, rx_vector_taken) = nic.setup_queue(RX_QUEUE, frames, rx_entry)?;
        let (tx, tx_vector_taken) = nic.setup_queue(TX_QUEUE, frames, tx_entry)?;
        (nic.rx, nic.tx) = (rx, tx);
        nic.interrupts = rx_vector_taken;
        nic.tx_vector = tx_vector_taken;
        if rx_entry.is_some() && !rx_vector_taken {
            log::warn!("virtio-net refused the interrupt vector for its rx queue; polling only");
        }
        let rx_count = MAX_BUFFERS.min(nic.rx.size);
        for id in 0..rx_count {
            let phys = frames.allocate_contiguous(buffer_pages, 1).ok_or("no memory for rx buffers")?;
            nic.rx_buffers.push(phys);
            nic.rx.write_desc(id, phys, nic.buffer_bytes as u32, DESC_F_WRITE, 0);
            nic.rx.push_avail(id);
        }
        let header_page = frames.allocate().ok_or("no memory for the tx header page")?;
        // SAFETY: a fresh frame; the device only reads each slot's first `net_header_len` bytes.
        unsafe { core::ptr::write_bytes(phys_to_virt(header_page).as_mut_ptr::<u8>(), 0, PAGE as usize) };
        nic.header_page = header_page;
        let tx_count = MAX_BUFFERS.min(nic.tx.size / DESCS_PER_PACKET);
        for k in 0..tx_count {
            nic.tx_buffers.push(frames.allocate_contiguous(buffer_pages, 1).ok_or("no memory for tx buffers")?);
            nic.tx_cookies.push(None);
            nic.tx_free.push(tx_count - 1 - k);
        }
        nic.update_tx_interrupts();
        nic.transport.set_status(status | DeviceStatus::DRIVER_OK);
        nic.transport.notify(RX_QUEUE);
        Ok(nic)
    }

    /// What the device is and how it is reached, for the log.
    pub fn describe(&self) -> alloc::string::String {
        self.transport.describe()
    }

    pub fn mac(&self) -> [u8; 6] {
        self.mac
    }

    /// Takes back the packet slots the device has sent, handing zero-copy cookies to `done`.
    pub fn reclaim_tx(&mut self, mut done: impl FnMut(TxCookie)) {
        let mut reclaimed = false;
        while let Some((id, _)) = self.tx.pop_used() {
            let k = usize::from(id / DESCS_PER_PACKET);
            if id % DESCS_PER_PACKET != 0 || k >= self.tx_buffers.len() {
                continue;
            }
            if let Some(cookie) = self.tx_cookies[k].take() {
                self.zero_copy_in_flight = self.zero_copy_in_flight.saturating_sub(1);
                done(cookie);
            }
            self.tx_free.push(k as u16);
            reclaimed = true;
        }
        if reclaimed {
            // Whoever waited for a slot is served by the caller (the network's serve pass).
            self.tx_waiting_for_slot = false;
            self.update_tx_interrupts();
        }
    }

    /// Transmit completions interrupt only while someone waits for one (see `tx_interrupts`).
    fn update_tx_interrupts(&mut self) {
        let wanted = self.zero_copy_in_flight > 0 || self.tx_waiting_for_slot;
        if wanted != self.tx_interrupts {
            self.tx_interrupts = wanted;
            self.tx.set_interrupts(wanted);
        }
    }

    /// Frames handed to the device and not taken back yet.
    fn tx_in_flight(&self) -> usize {
        self.tx_buffers.len().saturating_sub(self.tx_free.len())
    }

    /// Someone waits for a transmit completion (a zero-copy packet in flight, a frame waiting
    /// for a slot) and completions have no interrupt: the kernel must look again on its timer.
    pub fn completions_unsignalled(&self) -> bool {
        !self.tx_vector && (self.zero_copy_in_flight > 0 || self.tx_waiting_for_slot)
    }

    /// A free packet slot, if the device has room (completions are taken back first).
    fn free_slot(&mut self, mut done: impl FnMut(TxCookie)) -> Option<u16> {
        if self.tx_in_flight() >= TX_IN_FLIGHT_MAX {
            self.reclaim_tx(&mut done);
        }
        if self.tx_in_flight() >= TX_IN_FLIGHT_MAX {
            // Ask for the completion that frees a slot, then look once more: one that landed
            // before the request would raise no interrupt.
            self.tx_waiting_for_slot = true;
            self.update_tx_interrupts();
            self.reclaim_tx(&mut done);
        }
        let slot = if self.tx_in_flight() < TX_IN_FLIGHT_MAX { self.tx_free.pop() } else { None };
        if slot.is_none() {
            self.counters.tx_queue_full += 1;
        }
        slot
    }

    /// Queues the chain header + `len` bytes at physical `data` (+ `rest`, a second piece) in
    /// packet slot `k`; the header asks the device to finish the checksum `csum` describes, if
    /// any (only when it agreed to).
    fn queue_chain(&mut self, k: u16, data: u64, len: u32, csum: Option<CsumRequest>, rest: Option<(u64, u32)>) {
        let header = DESCS_PER_PACKET * k;
        let header_phys = self.header_page + u64::from(k) * TX_HEADER_STRIDE;
        let fields = tx_header(csum.filter(|_| self.tx_csum).map(|c| (c.start, c.offset)));
        // SAFETY: slot `k`'s header lies in the driver's header page (k < MAX_BUFFERS, asserted
        // to fit), which the device reads only while the slot is in flight, and slot `k` is not.
        unsafe {
            core::ptr::copy_nonoverlapping(fields.as_ptr(), phys_to_virt(header_phys).as_mut_ptr::<u8>(), fields.len())
        };
        self.tx.write_desc(header, header_phys, self.net_header_len as u32, DESC_F_NEXT, header + 1);
        match rest {
            None => self.tx.write_desc(header + 1, data, len, 0, 0),
            Some((rest, rest_len)) => {
                self.tx.write_desc(header + 1, data, len, DESC_F_NEXT, header + 2);
                self.tx.write_desc(header + 2, rest, rest_len, 0, 0);
            }
        }
        self.tx.push_avail(header);
        self.tx_unnotified = true;
        self.counters.tx_frames += 1;
    }

    /// Copies `frame` into a driver buffer (Denali's copy 2) and queues it (the device is
    /// notified by [`VirtioNet::flush`]), asking the device to finish its checksum `csum` (the
    /// caller passes one only if [`Self::tx_csum`]).
    pub fn transmit(
        &mut self,
        frame: &[u8],
        csum: Option<CsumRequest>,
        done: impl FnMut(TxCookie),
    ) -> Result<(), TransmitError> {
        let (k, buffer) = self.copy_into_free_slot(frame, done)?;
        self.queue_chain(k, buffer, frame.len() as u32, csum, None);
        Ok(())
    }

    /// A free packet slot with `bytes` copied into its driver buffer: the slot and the buffer's
    /// physical address.
    fn copy_into_free_slot(&mut self, bytes: &[u8], done: impl FnMut(TxCookie)) -> Result<(u16, u64), TransmitError> {
        if bytes.len() as u64 > self.buffer_bytes {
            return Err(TransmitError::TooLong);
        }
        let k = self.free_slot(done).ok_or(TransmitError::QueueFull)?;
        let buffer = self.tx_buffers[usize::from(k)];
        // SAFETY: the buffer is this driver's run for slot `k`, not in flight (the slot was
        // free); the bytes fit in it (checked above).
        unsafe { core::ptr::copy_nonoverlapping(bytes.as_ptr(), phys_to_virt(buffer).as_mut_ptr::<u8>(), bytes.len()) };
        Ok((k, buffer))
    }

    /// A free packet slot with `frame` copied into its driver buffer, not queued: the caller
    /// checks and routes this copy (the only one), then queues it ([`Self::queue_copied`]) or
    /// gives the slot back ([`Self::release_copied`]).
    pub fn copy_unqueued(&mut self, frame: &[u8], done: impl FnMut(TxCookie)) -> Result<CopiedFrame, TransmitError> {
        let (slot, phys) = self.copy_into_free_slot(frame, done)?;
        Ok(CopiedFrame { slot, phys, len: frame.len() as u32 })
    }

    /// Queues a frame [`Self::copy_unqueued`] copied, asking the device to finish its checksum
    /// `csum` (passed only if [`Self::tx_csum`]).
    pub fn queue_copied(&mut self, copied: CopiedFrame, csum: Option<CsumRequest>) {
        self.queue_chain(copied.slot, copied.phys, copied.len, csum, None);
    }

    /// The size of a packet slot's driver buffer.
    pub fn buffer_bytes(&self) -> u64 {
        self.buffer_bytes
    }

    /// Gives back the slot of a frame [`Self::copy_unqueued`] copied and the caller refused.
    pub fn release_copied(&mut self, copied: CopiedFrame) {
        self.tx_free.push(copied.slot);
    }

    /// Slot `k` now carries a zero-copy packet: `cookie` comes back when the device is done, and
    /// its completion interrupts (see `tx_interrupts`).
    fn hold_zero_copy(&mut self, k: u16, cookie: TxCookie) {
        self.tx_cookies[usize::from(k)] = Some(cookie);
        self.zero_copy_in_flight = self.zero_copy_in_flight.saturating_add(1);
        self.update_tx_interrupts();
    }

    /// Queues `len` bytes at physical address `data` without copying them: the caller keeps the
    /// memory unchanged (write-protected) until `cookie` comes back through a `done` closure.
    pub fn transmit_zero_copy(
        &mut self,
        data: u64,
        len: u32,
        cookie: TxCookie,
        csum: Option<CsumRequest>,
        done: impl FnMut(TxCookie),
    ) -> Result<(), TxCookie> {
        let Some(k) = self.free_slot(done) else { return Err(cookie) };
        self.hold_zero_copy(k, cookie);
        self.queue_chain(k, data, len, csum, None);
        Ok(())
    }

    /// Queues a frame in two pieces: `headers`, copied into a driver buffer, then `len` bytes
    /// at physical address `payload`, not copied. The caller keeps that memory allocated until
    /// `cookie` comes back through a `done` closure (its bytes may change meanwhile: they are
    /// the sender's own payload).
    pub fn transmit_split(
        &mut self,
        headers: &[u8],
        payload: u64,
        len: u32,
        cookie: TxCookie,
        csum: Option<CsumRequest>,
        done: impl FnMut(TxCookie),
    ) -> Result<(), TransmitError> {
        let (k, buffer) = self.copy_into_free_slot(headers, done)?;
        self.hold_zero_copy(k, cookie);
        self.queue_chain(k, buffer, headers.len() as u32, csum, Some((payload, len)));
        Ok(())
    }

    /// Notifies the device of queued frames (once per batch), unless it asked not to be.
    pub fn flush(&mut self) {
        if self.tx_unnotified {
            self.tx_unnotified = false;
            if self.tx.device_wants_notify() {
                self.counters.notifies += 1;
                self.transport.notify(self.tx.index);
            }
        }
    }

    /// Hands every received frame to `deliver` with what its header says of its checksum
    /// (always [`RxChecksum::Unknown`] unless `GUEST_CSUM` was agreed), then re-posts its
    /// buffer, calling `released` with `deliver`'s result once the frame's buffer is back with
    /// the device (for stage stamps). Returns the count.
    pub fn receive_with<R>(
        &mut self,
        mut deliver: impl FnMut(&[u8], RxChecksum) -> R,
        mut released: impl FnMut(R),
    ) -> usize {
        // Before the used ring is read: a frame that arrives after it interrupts again.
        self.transport.acknowledge_interrupt();
        let mut count = 0;
        while let Some((id, len)) = self.rx.pop_used() {
            let Some(&buffer) = self.rx_buffers.get(usize::from(id)) else { continue };
            let len = (len as usize).min(self.buffer_bytes as usize);
            if len > self.net_header_len {
                // SAFETY: the device finished writing this buffer (it is in the used ring) and
                // will not touch it until it is re-posted below; `len` is clamped to the buffer.
                let (header, frame) = unsafe {
                    core::slice::from_raw_parts(phys_to_virt(buffer).as_ptr::<u8>(), len).split_at(self.net_header_len)
                };
                let checksum = if self.rx_csum { rx_checksum(header) } else { RxChecksum::Unknown };
                let result = deliver(frame, checksum);
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
            self.transport.notify(self.rx.index);
        }
        count
    }
}

fn on_off(on: bool) -> &'static str {
    if on {
        "on"
    } else {
        "off"
    }
}

/// The transport for the virtio-net function at `pci`: modern where the device has the
/// virtio 1.x capabilities, legacy (I/O BAR0) where it has none.
fn pci_transport(
    pci: PciAddress,
    interrupt: InterruptTarget,
    frames: &mut FrameAllocator<'static>,
) -> Result<Box<dyn Transport>, &'static str> {
    pci.assign_bars();
    let config = pci.config_space();
    let bars = pci.bars();
    match modern_layout(&config, &bars) {
        Ok(layout) => Ok(Box::new(modern_pci::ModernPci::new(pci, &config, &bars, layout, interrupt, frames))),
        Err(LayoutError::NotModern) => {
            Ok(Box::new(legacy_pci::LegacyPci::new(pci, &config, &bars, interrupt, frames)?))
        }
        Err(e) => {
            log::error!("nic: virtio-net at {pci}: {e}");
            Err("unusable virtio-pci capabilities")
        }
    }
}

/// Interrupts taken on the NIC's vector (MSI-X message or I/O APIC line), for `stats:`.
static INTERRUPTS: core::sync::atomic::AtomicU64 = core::sync::atomic::AtomicU64::new(0);

/// Counts one interrupt on the NIC's vector (the trap path calls it).
pub fn count_interrupt() {
    INTERRUPTS.fetch_add(1, Ordering::Relaxed);
}

/// Interrupts taken on the NIC's vector so far.
pub fn interrupts() -> u64 {
    INTERRUPTS.load(Ordering::Relaxed)
}

/// The NIC has no interrupt that reaches the kernel: the timer polls it, also while every guest
/// idles.
static POLLED: core::sync::atomic::AtomicBool = core::sync::atomic::AtomicBool::new(false);

/// Whether the NIC must be polled on the timer (it has no working interrupt).
pub fn polled() -> bool {
    POLLED.load(Ordering::Relaxed)
}

/// The virtio-mmio devices the command line announced (`virtio_mmio.device`), set at boot.
static MMIO_DEVICES: spin::Mutex<[Option<MmioDevice>; MAX_MMIO_DEVICES]> = spin::Mutex::new([None; MAX_MMIO_DEVICES]);

/// Records the virtio-mmio devices the command line announced, for [`probe`].
pub fn announce_mmio_devices(devices: [Option<MmioDevice>; MAX_MMIO_DEVICES]) {
    *MMIO_DEVICES.lock() = devices;
}

/// The first announced virtio-mmio device that is a network card, as a transport.
fn mmio_transport(interrupt: InterruptTarget, frames: &mut FrameAllocator<'static>) -> Option<Box<dyn Transport>> {
    let devices = *MMIO_DEVICES.lock();
    devices.into_iter().flatten().find_map(|device| match mmio::Mmio::new(device, interrupt, frames) {
        Ok(transport) => Some(Box::new(transport) as Box<dyn Transport>),
        Err(e) => {
            log::info!("virtio-mmio at {:#x}: {e}", device.base);
            None
        }
    })
}

/// Finds and starts the physical NIC, if the machine has one: the first virtio-mmio network
/// card the command line announced, else a virtio-net PCI device (modern or legacy).
/// `max_frame` sizes its buffers: the largest frame any guest may send or receive.
pub fn probe(max_frame: u64) -> Option<VirtioNet> {
    use crate::drivers::pci;
    use crate::mm::phys;
    let interrupt = InterruptTarget {
        vector: crate::arch::vectors::NIC_VECTOR,
        apic_id: crate::arch::clock::apic_id(),
        entries: 2,
    };
    let buffer_pages = (max_frame + MAX_NET_HEADER_LEN as u64).div_ceil(PAGE);
    let result = phys::with_frames(|frames| {
        let transport = match mmio_transport(interrupt, frames) {
            Some(transport) => transport,
            None => {
                let address = pci::find_devices(VENDOR_VIRTIO, DEVICE_NET_MODERN)
                    .chain(pci::find_devices(VENDOR_VIRTIO, DEVICE_NET_TRANSITIONAL))
                    .next()
                    .ok_or(None)?;
                pci_transport(address, interrupt, frames).map_err(|e| Some((alloc::format!("at {address}"), e)))?
            }
        };
        let name = transport.describe();
        VirtioNet::init(transport, frames, buffer_pages).map_err(|e| Some((name, e)))
    });
    match result {
        Ok(nic) => {
            POLLED.store(!nic.interrupts, Ordering::Relaxed);
            let m = nic.mac();
            log::info!("nic: checksum offload: tx {} rx {}", on_off(nic.tx_csum), on_off(nic.rx_csum));
            log::info!(
                "nic: virtio-net ({}), MAC {:02x}:{:02x}:{:02x}:{:02x}:{:02x}:{:02x}, {}, {}-byte header",
                nic.describe(),
                m[0],
                m[1],
                m[2],
                m[3],
                m[4],
                m[5],
                if nic.interrupts {
                    alloc::format!("{} receive interrupts", nic.transport.interrupt_name())
                } else {
                    "polled on the timer".into()
                },
                nic.net_header_len,
            );
            Some(nic)
        }
        Err(None) => None,
        Err(Some((name, e))) => {
            log::error!("nic: virtio-net {name} unusable: {e}");
            None
        }
    }
}
