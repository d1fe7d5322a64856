//! The virtual NIC: pages a guest shares with the kernel, and how packets cross them.
//!
//! Every guest with a network interface has, at fixed addresses ([`crate::layout`]):
//! - the **shared page** at `VNIC_SHARED_ADDR` (read-write for the guest): a [`VnicShared`] with
//!   the ring indices (each on a cache line of its own, written by one side only), the
//!   "needs kick" flag, the virtual-interrupt word, and the tx and rx descriptor rings;
//! - the **tx area** at `VNIC_TX_AREA_ADDR`: [`TX_SLOTS`] slots of 4 KiB, one packet per slot,
//!   the frame starting [`TX_HEADROOM`] bytes into its slot (room for the NIC's virtio-net
//!   header, so that the COW path can hand the page to the NIC unchanged);
//! - the **rx area** at `VNIC_RX_AREA_ADDR`: [`RX_SLOTS`] receive buffers of 4 KiB.
//!
//! **Transmit.** The guest writes a frame into a free tx slot, fills descriptor
//! `tx[tx_producer % TX_RING_SIZE]` (`addr` of the frame, `len`, `status` = [`DescStatus::Pending`])
//! and increments `tx_producer` (release). If `needs_kick` is non-zero it then issues
//! [`crate::vi::Vi::VnicTxKick`] (one kick per batch). The kernel validates each descriptor in
//! `[tx_consumer, tx_producer)`, takes the packet, writes the descriptor's final status and
//! advances `tx_consumer`; a slot is free again once `tx_consumer` has passed its descriptor.
//! A descriptor the kernel rejects gets a `Rejected*` status; the guest keeps running.
//! While the kernel cannot take more (its queue for this guest is full) it clears
//! `needs_kick` and comes back to the ring by itself; it sets it again once the ring is empty.
//!
//! **Receive.** The guest posts empty buffers: descriptor `rx[rx_producer % RX_RING_SIZE]`
//! with `addr` and `len` = capacity, then increments `rx_producer` (and may issue
//! [`crate::vi::Vi::VnicRxPosted`]). The kernel copies each arriving frame into the next posted
//! buffer, sets `len` to the frame length and `status` to [`DescStatus::Done`], advances
//! `rx_consumer`, sets [`crate::vi::VirtualInterrupts::RX`] in `virq` and wakes the guest.
//! With no buffer posted the frame is dropped and counted.
//!
//! Indices are free-running `u32`s; the slot of index `i` is `i % RING_SIZE`, and a ring holds
//! `producer - consumer` (wrapping) entries, never more than its size.

use core::sync::atomic::{AtomicU32, AtomicU64};

/// Descriptors per ring (a power of two).
pub const TX_RING_SIZE: u32 = 32;
pub const RX_RING_SIZE: u32 = 32;
/// Tx slots and rx buffers: one per descriptor.
pub const TX_SLOTS: u64 = TX_RING_SIZE as u64;
pub const RX_SLOTS: u64 = RX_RING_SIZE as u64;
/// Size of a tx slot or rx buffer.
pub const SLOT_SIZE: u64 = 4096;
/// Bytes at the start of each tx slot left for the NIC's header; the frame follows.
pub const TX_HEADROOM: u64 = 64;
/// Largest IP packet (the Ethernet MTU) a guest may send.
pub const MTU: u64 = 1500;
/// Ethernet header length.
pub const ETHERNET_HEADER: u64 = 14;
/// Largest frame a descriptor may carry: MTU plus the Ethernet header.
pub const MAX_FRAME: u64 = MTU + ETHERNET_HEADER;
/// Smallest frame a descriptor may carry: an Ethernet header.
pub const MIN_FRAME: u64 = ETHERNET_HEADER;
/// Largest MTU an image may set (jumbo frames, for guest-to-guest traffic and the tap network).
pub const MAX_MTU: u64 = 9000;
/// Smallest MTU an image may set (IPv4's minimum datagram size).
pub const MIN_MTU: u64 = 576;
const PAGE: u64 = 4096;

/// Largest frame for an MTU: the MTU plus the Ethernet header.
pub const fn max_frame(mtu: u64) -> u64 {
    mtu + ETHERNET_HEADER
}

/// Size of each tx slot and rx buffer for an MTU: whole pages holding the headroom and the
/// largest frame (one page at the standard MTU, three for jumbo frames). A slot's pages are
/// physically contiguous, so a frame is one piece for the NIC.
pub const fn slot_size(mtu: u64) -> u64 {
    (TX_HEADROOM + max_frame(mtu)).next_multiple_of(PAGE)
}

/// What became of a descriptor.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u32)]
pub enum DescStatus {
    /// Written by the guest, not yet processed.
    Pending = 0,
    /// Sent (tx) or filled (rx).
    Done = 1,
    /// The descriptor's address or length was not acceptable.
    RejectedBadDescriptor = 2,
    /// The frame's source MAC was not the guest's own.
    RejectedSpoofedSource = 3,
}

impl DescStatus {
    pub fn from_u32(value: u32) -> Option<DescStatus> {
        [Self::Pending, Self::Done, Self::RejectedBadDescriptor, Self::RejectedSpoofedSource]
            .into_iter()
            .find(|s| *s as u32 == value)
    }
}

/// One ring entry. Fields are atomics so both sides may hold a shared reference to the page;
/// ordering comes from the index updates (release by the writer, acquire by the reader).
#[repr(C)]
#[derive(Debug, Default)]
pub struct Desc {
    /// Guest address of the frame (tx) or of the empty buffer (rx).
    pub addr: AtomicU64,
    /// Frame length (tx; rx once filled) or buffer capacity (rx, when posted).
    pub len: AtomicU32,
    /// A [`DescStatus`].
    pub status: AtomicU32,
}

/// A value alone on its 64-byte cache line, so the two sides never write the same line.
#[repr(C, align(64))]
#[derive(Debug, Default)]
pub struct CacheLine<T>(pub T);

/// The shared page. Offsets are part of the ABI (checked below).
#[repr(C)]
#[derive(Debug, Default)]
pub struct VnicShared {
    /// Written by the guest: descriptors produced into the tx ring.
    pub tx_producer: CacheLine<AtomicU32>,
    /// Written by the kernel: tx descriptors processed.
    pub tx_consumer: CacheLine<AtomicU32>,
    /// Written by the guest: rx buffers posted.
    pub rx_producer: CacheLine<AtomicU32>,
    /// Written by the kernel: rx buffers filled.
    pub rx_consumer: CacheLine<AtomicU32>,
    /// Written by the kernel: non-zero when the guest must kick after producing tx descriptors.
    pub needs_kick: CacheLine<AtomicU32>,
    /// Virtual-interrupt bits ([`crate::vi::VirtualInterrupts`]): the kernel sets, the guest clears.
    pub virq: CacheLine<AtomicU64>,
    /// Written by the kernel: non-zero when per-packet stage stamps are on (see [`stamps`]).
    pub stamps_enabled: CacheLine<AtomicU32>,
    _reserved: [CacheLine<u64>; 9],
    pub tx: [Desc; TX_RING_SIZE as usize],
    _reserved_tx: [Desc; 64 - TX_RING_SIZE as usize],
    pub rx: [Desc; RX_RING_SIZE as usize],
}

/// Offsets of the shared page's parts.
pub const TX_PRODUCER_OFFSET: usize = 0;
pub const TX_CONSUMER_OFFSET: usize = 64;
pub const RX_PRODUCER_OFFSET: usize = 128;
pub const RX_CONSUMER_OFFSET: usize = 192;
pub const NEEDS_KICK_OFFSET: usize = 256;
pub const VIRQ_OFFSET: usize = 320;
pub const STAMPS_ENABLED_OFFSET: usize = 384;
pub const TX_RING_OFFSET: usize = 1024;
pub const RX_RING_OFFSET: usize = 2048;

const _: () = {
    assert!(core::mem::offset_of!(VnicShared, tx_producer) == TX_PRODUCER_OFFSET);
    assert!(core::mem::offset_of!(VnicShared, tx_consumer) == TX_CONSUMER_OFFSET);
    assert!(core::mem::offset_of!(VnicShared, rx_producer) == RX_PRODUCER_OFFSET);
    assert!(core::mem::offset_of!(VnicShared, rx_consumer) == RX_CONSUMER_OFFSET);
    assert!(core::mem::offset_of!(VnicShared, needs_kick) == NEEDS_KICK_OFFSET);
    assert!(core::mem::offset_of!(VnicShared, virq) == VIRQ_OFFSET);
    assert!(core::mem::offset_of!(VnicShared, stamps_enabled) == STAMPS_ENABLED_OFFSET);
    assert!(core::mem::offset_of!(VnicShared, tx) == TX_RING_OFFSET);
    assert!(core::mem::offset_of!(VnicShared, rx) == RX_RING_OFFSET);
    assert!(core::mem::size_of::<Desc>() == 16);
    assert!(core::mem::size_of::<VnicShared>() <= 4096);
    assert!(TX_RING_SIZE.is_power_of_two() && RX_RING_SIZE.is_power_of_two());
    assert!(TX_HEADROOM + MAX_FRAME <= SLOT_SIZE);
    assert!(slot_size(MTU) == SLOT_SIZE);
};

/// Guest address of tx slot `slot` (standard MTU; see [`tx_slot_addr_for`] for others).
pub const fn tx_slot_addr(slot: u64) -> u64 {
    tx_slot_addr_for(slot, SLOT_SIZE)
}

/// Guest address of rx buffer `slot` (standard MTU; see [`rx_buffer_addr_for`] for others).
pub const fn rx_buffer_addr(slot: u64) -> u64 {
    rx_buffer_addr_for(slot, SLOT_SIZE)
}

/// Guest address of tx slot `slot` when slots are `slot_size` bytes ([`slot_size`]).
pub const fn tx_slot_addr_for(slot: u64, slot_size: u64) -> u64 {
    crate::layout::VNIC_TX_AREA_ADDR + slot * slot_size
}

/// Guest address of rx buffer `slot` when buffers are `slot_size` bytes.
pub const fn rx_buffer_addr_for(slot: u64, slot_size: u64) -> u64 {
    crate::layout::VNIC_RX_AREA_ADDR + slot * slot_size
}

/// Entries in a ring with these free-running indices (the producer may have wrapped).
pub const fn ring_used(producer: u32, consumer: u32) -> u32 {
    producer.wrapping_sub(consumer)
}

pub mod stamps {
    //! Per-packet stage stamps (serialised TSC reads), on only when the kernel runs with
    //! `stamps=on` and says so in `stamps_enabled`. Guest and kernel stamps meet in memory the
    //! packet already uses, so each packet's stages are joined exactly:
    //! - transmit: the guest writes [`TX_STAMPS`] u64s at the start of the tx slot (in the
    //!   headroom, which the NIC never sees): socket send, driver start, doorbell. The kernel
    //!   reads them with the descriptor and adds its own.
    //! - receive: the kernel writes [`RX_STAMPS`] u64s at [`rx_stamps_offset`] of the rx buffer
    //!   (after any frame): trap entry, handler start, frame taken from the NIC, routed, copied
    //!   into the guest, NIC buffer released. The guest adds its own.

    /// u64 stamps the guest leaves in a tx slot's headroom.
    pub const TX_STAMPS: usize = 3;
    /// u64 stamps the kernel leaves at the end of an rx buffer.
    pub const RX_STAMPS: usize = 6;
    /// Offset of the kernel's rx stamps in an rx buffer of `slot_size` bytes.
    pub const fn rx_stamps_offset(slot_size: u64) -> u64 {
        slot_size - 64
    }
    /// Stage names, in order, for each direction.
    pub const TX_STAGES: [&str; 7] =
        ["guest_stack", "guest_driver", "trap_entry", "vnic_work", "fifo_and_scheduler", "physical_driver", "notify"];
    pub const RX_STAGES: [&str; 8] = [
        "interrupt_entry",
        "physical_driver",
        "vswitch",
        "copy_into_guest",
        "buffer_release",
        "virtual_interrupt_to_guest_run",
        "guest_driver",
        "guest_stack",
    ];
    /// The datagram that makes a stamping `udp-echo` print its receive stages.
    pub const REPORT_REQUEST: &[u8] = b"ik-dispatch-report";

    /// Sorts `values` and returns their (median, 10th, 90th percentile); zeros when empty.
    pub fn quantiles(values: &mut [u32]) -> (u32, u32, u32) {
        values.sort_unstable();
        let at = |q: usize| values.get((values.len().max(1) - 1) * q / 100).copied().unwrap_or(0);
        (at(50), at(10), at(90))
    }

    /// The stage part of a `dispatch:` report line (the format `cargo xtask bench dispatch`
    /// reads): ` name=median/p10/p90` per stage, then ` total=median` of the per-packet sums.
    /// `scratch` needs room for one value per sample.
    pub fn write_stages<const N: usize>(
        out: &mut impl core::fmt::Write,
        names: &[&str; N],
        samples: &[[u32; N]],
        scratch: &mut [u32],
    ) -> core::fmt::Result {
        let scratch = &mut scratch[..samples.len()];
        for (stage, name) in names.iter().enumerate() {
            for (value, sample) in scratch.iter_mut().zip(samples) {
                *value = sample[stage];
            }
            let (median, p10, p90) = quantiles(scratch);
            write!(out, " {name}={median}/{p10}/{p90}")?;
        }
        for (value, sample) in scratch.iter_mut().zip(samples) {
            *value = sample.iter().sum();
        }
        write!(out, " total={}", quantiles(scratch).0)
    }

    #[cfg(test)]
    mod tests {
        extern crate std;
        use super::*;
        use std::string::String;

        #[test]
        fn stage_lines_carry_quantiles_and_the_median_total() {
            let samples = [[1, 10], [2, 20], [3, 30]];
            let mut line = String::new();
            write_stages(&mut line, &["a", "b"], &samples, &mut [0; 3]).unwrap();
            assert_eq!(line, " a=2/1/2 b=20/10/20 total=22");
            assert_eq!(quantiles(&mut []), (0, 0, 0));
        }
    }
}

/// Network configuration of a guest, carried in its boot-info page.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct NetConfig {
    pub mac: [u8; 6],
    pub ipv4: [u8; 4],
    pub prefix_len: u8,
    pub gateway: [u8; 4],
    pub mtu: u16,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ring_arithmetic_wraps() {
        assert_eq!(ring_used(5, 3), 2);
        assert_eq!(ring_used(2, u32::MAX - 1), 4);
        assert_eq!(ring_used(7, 7), 0);
    }

    #[test]
    fn status_round_trips() {
        for s in [
            DescStatus::Pending,
            DescStatus::Done,
            DescStatus::RejectedBadDescriptor,
            DescStatus::RejectedSpoofedSource,
        ] {
            assert_eq!(DescStatus::from_u32(s as u32), Some(s));
        }
        assert_eq!(DescStatus::from_u32(99), None);
    }

    #[test]
    fn slots_lie_in_their_areas() {
        use crate::layout::*;
        assert_eq!(tx_slot_addr(0), VNIC_TX_AREA_ADDR);
        const { assert!(VNIC_SHARED_ADDR + SLOT_SIZE <= VNIC_TX_AREA_ADDR) };
        const { assert!(tx_slot_addr(TX_SLOTS) <= VNIC_RX_AREA_ADDR) };
        const { assert!(rx_buffer_addr(RX_SLOTS) <= IMAGE_BASE) };
        // Jumbo slots fit their areas too.
        const { assert!(tx_slot_addr_for(TX_SLOTS, slot_size(MAX_MTU)) <= VNIC_RX_AREA_ADDR) };
        const { assert!(rx_buffer_addr_for(RX_SLOTS, slot_size(MAX_MTU)) <= IMAGE_BASE) };
        assert_eq!(slot_size(MTU), SLOT_SIZE);
        assert_eq!(slot_size(MAX_MTU), 3 * 4096);
    }
}
