//! Validation of the ring indices and descriptors a guest writes into its vNIC shared page.
//!
//! Everything in the shared page is the guest's to scribble on, so every index and descriptor
//! is an allegation, checked here before the kernel reads or writes the memory it names. A
//! descriptor that passes becomes a [`TxFrame`] or [`RxBuffer`]: a slot number and an offset and
//! length within that slot, which the kernel can turn into memory it knows is the guest's vNIC
//! area (the tx and rx areas are mapped for every guest with a vNIC, at fixed addresses).
//! All arithmetic is checked: no guest value can overflow, wrap or panic.

use core::fmt;
use hypercall_abi::layout::{VNIC_RX_AREA_ADDR, VNIC_TX_AREA_ADDR};
use hypercall_abi::vnic::{ring_used, MIN_FRAME, RX_SLOTS, TX_HEADROOM, TX_SLOTS};

/// The guest's producer index is further ahead of the consumer index than the ring holds:
/// it wrote an index that names entries it cannot have filled (or moved it backwards).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BadIndex {
    pub producer: u32,
    pub consumer: u32,
}

impl fmt::Display for BadIndex {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "producer index {} is {} entries ahead of consumer index {}, more than the ring holds",
            self.producer,
            ring_used(self.producer, self.consumer),
            self.consumer
        )
    }
}

/// Entries waiting in `[consumer, producer)` of a ring of `ring_size` entries. The indices are
/// free-running, so the difference is taken with wrapping arithmetic; a difference larger than
/// the ring can only come from a guest writing a bogus producer index.
pub fn pending(producer: u32, consumer: u32, ring_size: u32) -> Result<u32, BadIndex> {
    let used = ring_used(producer, consumer);
    if used > ring_size {
        Err(BadIndex { producer, consumer })
    } else {
        Ok(used)
    }
}

/// A tx descriptor that passed validation: the frame lies in tx slot `slot`, starting `offset`
/// bytes into it, and is `len` bytes long (`offset + len` is at most the slot size).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TxFrame {
    pub slot: u64,
    /// Offset of the frame within its slot (at least [`TX_HEADROOM`]).
    pub offset: u64,
    pub len: u64,
}

/// An rx descriptor that passed validation: an empty buffer of `capacity` bytes in rx slot
/// `slot`, starting `offset` bytes into it (`offset + capacity` is at most the slot size).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RxBuffer {
    pub slot: u64,
    pub offset: u64,
    pub capacity: u64,
}

/// Why a descriptor was rejected. The guest gets `DescStatus::RejectedBadDescriptor` and keeps
/// running; the kernel counts and logs the reason.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BadDescriptor {
    /// The address is not in the descriptor's area (the tx area for tx, the rx area for rx).
    OutsideArea { addr: u64 },
    /// A tx frame starts in its slot's headroom, which is reserved for the NIC's header.
    InHeadroom { addr: u64 },
    /// The frame or buffer runs past the end of its slot.
    CrossesSlot { addr: u64, len: u64 },
    /// Shorter than an Ethernet header.
    TooShort { len: u64 },
    /// Longer than the largest frame the interface carries.
    TooLong { len: u64 },
}

impl BadDescriptor {
    /// A short, stable name for counters and logs.
    pub fn kind(&self) -> &'static str {
        match self {
            Self::OutsideArea { .. } => "outside_area",
            Self::InHeadroom { .. } => "in_headroom",
            Self::CrossesSlot { .. } => "crosses_slot",
            Self::TooShort { .. } => "too_short",
            Self::TooLong { .. } => "too_long",
        }
    }
}

impl fmt::Display for BadDescriptor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            Self::OutsideArea { addr } => {
                write!(f, "address {addr:#x} is outside the descriptor's vNIC area")
            }
            Self::InHeadroom { addr } => {
                write!(f, "address {addr:#x} is in the slot's {TX_HEADROOM}-byte headroom")
            }
            Self::CrossesSlot { addr, len } => {
                write!(f, "{len} bytes at {addr:#x} cross the end of their slot")
            }
            Self::TooShort { len } => write!(f, "length {len} is shorter than {MIN_FRAME} bytes"),
            Self::TooLong { len } => write!(f, "length {len} is longer than the largest frame"),
        }
    }
}

/// Slot and offset of `addr` within the area of `slots` slots of `slot_size` bytes at `base`.
fn locate(addr: u64, base: u64, slots: u64, slot_size: u64) -> Option<(u64, u64)> {
    let within = addr.checked_sub(base)?;
    let size = slots.checked_mul(slot_size)?;
    (within < size).then_some((within.checked_div(slot_size)?, within.checked_rem(slot_size)?))
}

/// Checks a tx descriptor: the frame must lie in one tx slot of `slot_size` bytes
/// (`hypercall_abi::vnic::slot_size` of the guest's MTU), after its headroom, and be between
/// [`MIN_FRAME`] and `max_frame` bytes long.
pub fn validate_tx(addr: u64, len: u32, max_frame: u64, slot_size: u64) -> Result<TxFrame, BadDescriptor> {
    let len = u64::from(len);
    let (slot, offset) =
        locate(addr, VNIC_TX_AREA_ADDR, TX_SLOTS, slot_size).ok_or(BadDescriptor::OutsideArea { addr })?;
    if len < MIN_FRAME {
        return Err(BadDescriptor::TooShort { len });
    }
    if len > max_frame {
        return Err(BadDescriptor::TooLong { len });
    }
    if offset < TX_HEADROOM {
        return Err(BadDescriptor::InHeadroom { addr });
    }
    match offset.checked_add(len) {
        Some(end) if end <= slot_size => Ok(TxFrame { slot, offset, len }),
        _ => Err(BadDescriptor::CrossesSlot { addr, len }),
    }
}

/// Checks an rx descriptor: the buffer must lie in one rx slot of `slot_size` bytes and hold at
/// least an Ethernet header ([`MIN_FRAME`]). A buffer smaller than an arriving frame is the
/// guest's loss, decided when a frame arrives, not here.
pub fn validate_rx(addr: u64, capacity: u32, slot_size: u64) -> Result<RxBuffer, BadDescriptor> {
    let capacity = u64::from(capacity);
    let (slot, offset) =
        locate(addr, VNIC_RX_AREA_ADDR, RX_SLOTS, slot_size).ok_or(BadDescriptor::OutsideArea { addr })?;
    if capacity < MIN_FRAME {
        return Err(BadDescriptor::TooShort { len: capacity });
    }
    match offset.checked_add(capacity) {
        Some(end) if end <= slot_size => Ok(RxBuffer { slot, offset, capacity }),
        _ => Err(BadDescriptor::CrossesSlot { addr, len: capacity }),
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing, clippy::arithmetic_side_effects)]
mod tests {
    use super::*;
    use alloc::string::ToString;

    #[test]
    fn jumbo_slots_hold_jumbo_frames_and_nothing_more() {
        use hypercall_abi::vnic::MAX_MTU;
        let (size, max) = (slot_size(MAX_MTU), max_frame(MAX_MTU));
        let slot5 = tx_slot_addr_for(5, size) + TX_HEADROOM;
        assert_eq!(validate_tx(slot5, max as u32, max, size), Ok(TxFrame { slot: 5, offset: TX_HEADROOM, len: max }));
        assert_eq!(validate_tx(slot5, max as u32 + 1, max, size), Err(BadDescriptor::TooLong { len: max + 1 }));
        // Standard-MTU slots refuse the same frame: it crosses a one-page slot.
        assert!(validate_tx(slot5, 5000, max, slot_size(MTU)).is_err());
        let last = tx_slot_addr_for(TX_SLOTS, size);
        assert_eq!(validate_tx(last, 100, max, size), Err(BadDescriptor::OutsideArea { addr: last }));
        let rx = rx_buffer_addr_for(31, size);
        assert_eq!(validate_rx(rx, size as u32, size), Ok(RxBuffer { slot: 31, offset: 0, capacity: size }));
        assert!(validate_rx(rx + 8, size as u32, size).is_err());
    }
    use hypercall_abi::vnic::{
        max_frame, rx_buffer_addr_for, slot_size, tx_slot_addr_for, MTU, RX_RING_SIZE, TX_RING_SIZE,
    };

    /// The standard-MTU sizes most tests use.
    const STANDARD_SLOT: u64 = slot_size(MTU);
    const STANDARD_MAX_FRAME: u64 = max_frame(MTU);

    fn standard_tx(addr: u64, len: u32, max_frame: u64) -> Result<TxFrame, BadDescriptor> {
        validate_tx(addr, len, max_frame, STANDARD_SLOT)
    }

    fn standard_rx(addr: u64, capacity: u32) -> Result<RxBuffer, BadDescriptor> {
        validate_rx(addr, capacity, STANDARD_SLOT)
    }

    fn standard_tx_slot(slot: u64) -> u64 {
        tx_slot_addr_for(slot, STANDARD_SLOT)
    }

    fn standard_rx_buffer(slot: u64) -> u64 {
        rx_buffer_addr_for(slot, STANDARD_SLOT)
    }

    const TX_END: u64 = VNIC_TX_AREA_ADDR + TX_SLOTS * STANDARD_SLOT;
    const RX_END: u64 = VNIC_RX_AREA_ADDR + RX_SLOTS * STANDARD_SLOT;
    /// A well-formed frame address: slot 0, just past the headroom.
    const GOOD_TX: u64 = VNIC_TX_AREA_ADDR + TX_HEADROOM;

    fn tx(addr: u64, len: u32) -> Result<TxFrame, BadDescriptor> {
        standard_tx(addr, len, STANDARD_MAX_FRAME)
    }

    #[test]
    fn a_zero_slot_size_refuses_everything_without_dividing_by_zero() {
        // Found by `cargo xtask fuzz desc`: the division once ran before the bounds check.
        assert_eq!(validate_tx(GOOD_TX, 60, STANDARD_MAX_FRAME, 0), Err(BadDescriptor::OutsideArea { addr: GOOD_TX }));
        let rx = VNIC_RX_AREA_ADDR;
        assert_eq!(validate_rx(rx, 60, 0), Err(BadDescriptor::OutsideArea { addr: rx }));
    }

    #[test]
    fn pending_counts_entries_between_consumer_and_producer() {
        assert_eq!(pending(0, 0, TX_RING_SIZE), Ok(0));
        assert_eq!(pending(5, 3, TX_RING_SIZE), Ok(2));
        assert_eq!(pending(32, 0, TX_RING_SIZE), Ok(32));
        assert_eq!(pending(1000 + 32, 1000, TX_RING_SIZE), Ok(32));
    }

    #[test]
    fn pending_handles_producer_wrapped_past_u32_max() {
        assert_eq!(pending(3, u32::MAX - 1, TX_RING_SIZE), Ok(5));
        assert_eq!(pending(0, u32::MAX, TX_RING_SIZE), Ok(1));
        assert_eq!(pending(31 - 1, u32::MAX, RX_RING_SIZE), Ok(31));
        assert_eq!(pending(u32::MAX, u32::MAX, RX_RING_SIZE), Ok(0));
    }

    #[test]
    fn producer_beyond_the_ring_is_refused() {
        assert_eq!(pending(33, 0, TX_RING_SIZE), Err(BadIndex { producer: 33, consumer: 0 }));
        assert_eq!(pending(u32::MAX, 0, TX_RING_SIZE), Err(BadIndex { producer: u32::MAX, consumer: 0 }));
        // Wrapped and one too many.
        assert_eq!(pending(32, u32::MAX, TX_RING_SIZE), Err(BadIndex { producer: 32, consumer: u32::MAX }));
        // A producer moved behind the consumer looks like almost 2^32 entries.
        assert_eq!(pending(4, 5, TX_RING_SIZE), Err(BadIndex { producer: 4, consumer: 5 }));
        let text = BadIndex { producer: 40, consumer: 2 }.to_string();
        assert!(text.contains("40") && text.contains("38 entries") && text.contains('2'), "{text}");
    }

    #[test]
    fn good_tx_frames_are_located() {
        assert_eq!(tx(GOOD_TX, 60), Ok(TxFrame { slot: 0, offset: TX_HEADROOM, len: 60 }));
        assert_eq!(tx(GOOD_TX, MIN_FRAME as u32), Ok(TxFrame { slot: 0, offset: 64, len: 14 }));
        assert_eq!(
            tx(GOOD_TX, STANDARD_MAX_FRAME as u32),
            Ok(TxFrame { slot: 0, offset: 64, len: STANDARD_MAX_FRAME })
        );
        let last = standard_tx_slot(TX_SLOTS - 1) + TX_HEADROOM;
        assert_eq!(tx(last, 1514), Ok(TxFrame { slot: TX_SLOTS - 1, offset: 64, len: 1514 }));
        // A frame may sit anywhere after the headroom, up to the very end of its slot.
        let at_end = standard_tx_slot(7) + STANDARD_SLOT - 100;
        assert_eq!(tx(at_end, 100), Ok(TxFrame { slot: 7, offset: STANDARD_SLOT - 100, len: 100 }));
        assert_eq!(tx(TX_END - 14, 14), Ok(TxFrame { slot: TX_SLOTS - 1, offset: STANDARD_SLOT - 14, len: 14 }));
    }

    #[test]
    fn tx_addresses_outside_the_tx_area_are_refused() {
        for addr in [
            0,
            0xffff_8000_0000_0000,
            VNIC_TX_AREA_ADDR - 1,
            VNIC_TX_AREA_ADDR - STANDARD_SLOT + TX_HEADROOM,
            TX_END,
            TX_END + TX_HEADROOM,
            VNIC_RX_AREA_ADDR + TX_HEADROOM,
            u64::MAX,
            u64::MAX - 10,
        ] {
            assert_eq!(tx(addr, 60), Err(BadDescriptor::OutsideArea { addr }), "{addr:#x}");
        }
    }

    #[test]
    fn tx_frame_in_headroom_is_refused() {
        for addr in [VNIC_TX_AREA_ADDR, GOOD_TX - 1, standard_tx_slot(5), standard_tx_slot(TX_SLOTS - 1) + 63] {
            assert_eq!(tx(addr, 60), Err(BadDescriptor::InHeadroom { addr }), "{addr:#x}");
        }
    }

    #[test]
    fn tx_frame_crossing_into_the_next_slot_is_refused() {
        let addr = standard_tx_slot(3) + STANDARD_SLOT - 100;
        assert_eq!(tx(addr, 101), Err(BadDescriptor::CrossesSlot { addr, len: 101 }));
        // The last slot: crossing would leave the area.
        let addr = TX_END - 14;
        assert_eq!(tx(addr, 15), Err(BadDescriptor::CrossesSlot { addr, len: 15 }));
        // With a jumbo maximum the length check passes and the slot check catches it.
        let len = (STANDARD_SLOT - TX_HEADROOM + 1) as u32;
        assert_eq!(
            standard_tx(GOOD_TX, len, 9000),
            Err(BadDescriptor::CrossesSlot { addr: GOOD_TX, len: u64::from(len) })
        );
        assert_eq!(
            standard_tx(GOOD_TX, len - 1, 9000),
            Ok(TxFrame { slot: 0, offset: TX_HEADROOM, len: STANDARD_SLOT - TX_HEADROOM })
        );
    }

    #[test]
    fn tx_lengths_out_of_range_are_refused() {
        assert_eq!(tx(GOOD_TX, 0), Err(BadDescriptor::TooShort { len: 0 }));
        assert_eq!(tx(GOOD_TX, 13), Err(BadDescriptor::TooShort { len: 13 }));
        let over = STANDARD_MAX_FRAME as u32 + 1;
        assert_eq!(tx(GOOD_TX, over), Err(BadDescriptor::TooLong { len: STANDARD_MAX_FRAME + 1 }));
        assert_eq!(tx(GOOD_TX, u32::MAX), Err(BadDescriptor::TooLong { len: u64::from(u32::MAX) }));
        // A larger maximum admits a larger frame.
        assert!(standard_tx(GOOD_TX, over, 2048).is_ok());
        // A maximum below the minimum refuses everything, without panicking.
        assert_eq!(standard_tx(GOOD_TX, 14, 0), Err(BadDescriptor::TooLong { len: 14 }));
    }

    #[test]
    fn tx_address_plus_length_overflow_is_refused() {
        for addr in [u64::MAX, u64::MAX - 13, u64::MAX - u64::from(u32::MAX) + 1] {
            assert_eq!(tx(addr, u32::MAX), Err(BadDescriptor::OutsideArea { addr }));
            assert_eq!(standard_rx(addr, u32::MAX), Err(BadDescriptor::OutsideArea { addr }));
        }
    }

    #[test]
    fn good_rx_buffers_are_located() {
        let full = STANDARD_SLOT as u32;
        assert_eq!(standard_rx(VNIC_RX_AREA_ADDR, full), Ok(RxBuffer { slot: 0, offset: 0, capacity: STANDARD_SLOT }));
        assert_eq!(standard_rx(VNIC_RX_AREA_ADDR, 14), Ok(RxBuffer { slot: 0, offset: 0, capacity: 14 }));
        let last = standard_rx_buffer(RX_SLOTS - 1);
        assert_eq!(standard_rx(last, full), Ok(RxBuffer { slot: RX_SLOTS - 1, offset: 0, capacity: STANDARD_SLOT }));
        assert_eq!(standard_rx(last + 2048, 2048), Ok(RxBuffer { slot: RX_SLOTS - 1, offset: 2048, capacity: 2048 }));
    }

    #[test]
    fn bad_rx_buffers_are_refused() {
        for addr in [0, 0xffff_8000_0000_0000, VNIC_RX_AREA_ADDR - 1, RX_END, GOOD_TX, u64::MAX] {
            assert_eq!(standard_rx(addr, 2048), Err(BadDescriptor::OutsideArea { addr }), "{addr:#x}");
        }
        assert_eq!(standard_rx(VNIC_RX_AREA_ADDR, 0), Err(BadDescriptor::TooShort { len: 0 }));
        assert_eq!(standard_rx(VNIC_RX_AREA_ADDR, 13), Err(BadDescriptor::TooShort { len: 13 }));
        let addr = standard_rx_buffer(2) + 1;
        assert_eq!(standard_rx(addr, 4096), Err(BadDescriptor::CrossesSlot { addr, len: 4096 }));
        assert_eq!(standard_rx(RX_END - 14, 15), Err(BadDescriptor::CrossesSlot { addr: RX_END - 14, len: 15 }));
        assert_eq!(
            standard_rx(VNIC_RX_AREA_ADDR, u32::MAX),
            Err(BadDescriptor::CrossesSlot { addr: VNIC_RX_AREA_ADDR, len: u64::from(u32::MAX) })
        );
    }

    #[test]
    fn errors_have_kinds_and_messages() {
        let cases = [
            (BadDescriptor::OutsideArea { addr: 0x1234 }, "outside_area", "0x1234"),
            (BadDescriptor::InHeadroom { addr: 0x22_0010 }, "in_headroom", "0x220010"),
            (BadDescriptor::CrossesSlot { addr: 0x22_0f00, len: 512 }, "crosses_slot", "512 bytes at 0x220f00"),
            (BadDescriptor::TooShort { len: 13 }, "too_short", "length 13"),
            (BadDescriptor::TooLong { len: 1515 }, "too_long", "length 1515"),
        ];
        let mut kinds: alloc::vec::Vec<&str> = cases.iter().map(|(e, _, _)| e.kind()).collect();
        kinds.sort_unstable();
        kinds.dedup();
        assert_eq!(kinds.len(), cases.len());
        for (error, kind, fragment) in cases {
            assert_eq!(error.kind(), kind);
            let text = error.to_string();
            assert!(text.contains(fragment), "{text:?} lacks {fragment:?}");
        }
        assert!(BadDescriptor::OutsideArea { addr: 0 }.to_string().contains("outside"));
    }
}
