//! Driving the vNIC rings by hand, without smoltcp or the vnic driver: for the test guests that
//! must write exactly what they choose into the shared page (hostile indices and descriptors,
//! rewrites of frames in flight). Everything here is the guest's own memory; the kernel must
//! cope with whatever ends up in it.

use core::sync::atomic::Ordering::{AcqRel, Acquire, Release};
use hypercall_abi::layout::{VNIC_RX_AREA_ADDR, VNIC_SHARED_ADDR, VNIC_TX_AREA_ADDR};
use hypercall_abi::vnic::{slot_size, DescStatus, NetConfig, VnicShared, RX_RING_SIZE, TX_HEADROOM, TX_RING_SIZE};

/// QEMU user network's host (slirp) MAC: frames to it leave through the physical NIC.
pub const SLIRP_MAC: [u8; 6] = [0x52, 0x55, 0x0a, 0x00, 0x02, 0x02];
/// A local experimental EtherType (IEEE 802): slirp ignores such frames, guests read them raw.
pub const ETHERTYPE_TEST: u16 = 0x88b5;
/// The shortest Ethernet frame without its checksum.
pub const MIN_WIRE_FRAME: usize = 60;

/// The rings of this guest's vNIC.
pub struct RawNic {
    pub shared: &'static VnicShared,
    pub config: NetConfig,
    /// Bytes of each tx slot and rx buffer for this guest's MTU.
    pub slot_size: u64,
}

impl RawNic {
    /// The rings of the guest's vNIC; `None` without one. The app must not also open smoltcp.
    pub fn open(config: Option<NetConfig>) -> Option<RawNic> {
        let config = config?;
        // SAFETY: the kernel maps the shared page at this address for every guest with a NIC,
        // for its whole life; every field is an atomic, so shared references are sound.
        let shared = unsafe { &*(VNIC_SHARED_ADDR as *const VnicShared) };
        Some(RawNic { shared, config, slot_size: slot_size(u64::from(config.mtu)) })
    }

    /// Guest address of the frame in tx slot `slot` (after the headroom).
    pub fn tx_frame_addr(&self, slot: u32) -> u64 {
        VNIC_TX_AREA_ADDR + u64::from(slot % TX_RING_SIZE) * self.slot_size + TX_HEADROOM
    }

    /// Guest address of rx buffer `slot`.
    pub fn rx_buffer_addr(&self, slot: u32) -> u64 {
        VNIC_RX_AREA_ADDR + u64::from(slot % RX_RING_SIZE) * self.slot_size
    }

    /// Copies `frame` into tx slot `slot`.
    pub fn write_tx_slot(&self, slot: u32, frame: &[u8]) {
        assert!(frame.len() as u64 <= self.slot_size - TX_HEADROOM, "frame larger than a slot");
        // SAFETY: the tx area is mapped read-write for this guest and the frame fits the slot.
        unsafe { core::ptr::copy_nonoverlapping(frame.as_ptr(), self.tx_frame_addr(slot) as *mut u8, frame.len()) };
    }

    pub fn tx_producer(&self) -> u32 {
        self.shared.tx_producer.0.load(Acquire)
    }

    pub fn tx_consumer(&self) -> u32 {
        self.shared.tx_consumer.0.load(Acquire)
    }

    pub fn set_tx_producer(&self, value: u32) {
        self.shared.tx_producer.0.store(value, Release);
    }

    /// Fills the tx descriptor of ring index `index` (without moving the producer).
    pub fn write_tx_desc(&self, index: u32, addr: u64, len: u32) {
        let desc = &self.shared.tx[(index % TX_RING_SIZE) as usize];
        desc.addr.store(addr, Release);
        desc.len.store(len, Release);
        desc.status.store(DescStatus::Pending as u32, Release);
    }

    pub fn tx_status(&self, index: u32) -> Option<DescStatus> {
        DescStatus::from_u32(self.shared.tx[(index % TX_RING_SIZE) as usize].status.load(Acquire))
    }

    /// Writes `frame` into the slot of the next producer index, fills its descriptor and
    /// publishes it (no kick). Returns the index.
    pub fn post_tx(&self, frame: &[u8]) -> u32 {
        let index = self.tx_producer();
        self.write_tx_slot(index, frame);
        self.write_tx_desc(index, self.tx_frame_addr(index), frame.len() as u32);
        self.set_tx_producer(index.wrapping_add(1));
        index
    }

    /// Idles until `tx_consumer` reaches `index` or `timeout_ticks` pass; true if it did. The
    /// kernel raises "tx done" when it completes descriptors, which ends the idle.
    pub fn wait_tx_consumer(&self, index: u32, timeout_ticks: u64) -> bool {
        let deadline = crate::time::ticks() + timeout_ticks;
        // Asks the kernel to wake us on a completion (it does not otherwise, unless the ring is full).
        self.shared.tx_done_wanted.0.store(1, Release);
        let reached = loop {
            // Cleared before looking, so a completion after the look ends the idle at once.
            self.shared.virq.0.swap(0, AcqRel);
            if index.wrapping_sub(self.tx_consumer()) as i32 <= 0 {
                break true;
            }
            if crate::time::ticks() > deadline {
                break false;
            }
            crate::vi::idle_until(deadline);
        };
        self.shared.tx_done_wanted.0.store(0, Release);
        reached
    }

    pub fn rx_producer(&self) -> u32 {
        self.shared.rx_producer.0.load(Acquire)
    }

    pub fn rx_consumer(&self) -> u32 {
        self.shared.rx_consumer.0.load(Acquire)
    }

    pub fn set_rx_producer(&self, value: u32) {
        self.shared.rx_producer.0.store(value, Release);
    }

    /// Fills the rx descriptor of ring index `index` (without moving the producer).
    pub fn write_rx_desc(&self, index: u32, addr: u64, capacity: u32) {
        let desc = &self.shared.rx[(index % RX_RING_SIZE) as usize];
        desc.addr.store(addr, Release);
        desc.len.store(capacity, Release);
        desc.status.store(DescStatus::Pending as u32, Release);
    }

    /// Posts the whole rx buffer of ring index `index` (its own slot) and moves the producer past it.
    pub fn post_rx(&self, index: u32) {
        self.write_rx_desc(index, self.rx_buffer_addr(index), self.slot_size as u32);
        self.set_rx_producer(index.wrapping_add(1));
    }

    /// Status, address and length of the rx descriptor of ring index `index`.
    pub fn rx_desc(&self, index: u32) -> (Option<DescStatus>, u64, u32) {
        let desc = &self.shared.rx[(index % RX_RING_SIZE) as usize];
        (DescStatus::from_u32(desc.status.load(Acquire)), desc.addr.load(Acquire), desc.len.load(Acquire))
    }

    /// The `len` bytes at guest address `addr` of the rx area (a filled buffer).
    pub fn rx_bytes(&self, addr: u64, len: u32) -> Option<&'static [u8]> {
        let area_end = VNIC_RX_AREA_ADDR + u64::from(RX_RING_SIZE) * self.slot_size;
        let end = addr.checked_add(u64::from(len))?;
        if addr < VNIC_RX_AREA_ADDR || end > area_end {
            return None;
        }
        // SAFETY: inside the rx area, mapped for this guest (checked above); the kernel wrote
        // the buffer before it advanced rx_consumer and does not touch it again until reposted.
        Some(unsafe { core::slice::from_raw_parts(addr as *const u8, len as usize) })
    }
}

/// An Ethernet frame of at least [`MIN_WIRE_FRAME`] bytes: `dst`, `src`, `ethertype`, `payload`.
pub fn ethernet_frame(dst: [u8; 6], src: [u8; 6], ethertype: u16, payload: &[u8], out: &mut [u8]) -> usize {
    let len = (14 + payload.len()).max(MIN_WIRE_FRAME);
    out[..len].fill(0);
    out[0..6].copy_from_slice(&dst);
    out[6..12].copy_from_slice(&src);
    out[12..14].copy_from_slice(&ethertype.to_be_bytes());
    out[14..14 + payload.len()].copy_from_slice(payload);
    len
}
