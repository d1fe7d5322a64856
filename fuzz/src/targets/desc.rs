//! `vnet::desc`: validation of tx and rx descriptors and of ring indices a guest writes.
//!
//! Each input is a sequence of checks with addresses, lengths, frame limits and slot sizes drawn
//! near the boundaries (area starts and ends, slot edges, the headroom, u32/u64 extremes). A
//! reference model written here in 128-bit arithmetic (so it cannot overflow) must give the
//! same verdict, error kind included; an accepted frame or buffer must lie inside one slot of
//! its own area, after the headroom for tx, with its length within bounds; with a slot size
//! the kernel really uses, inside the area the guest has mapped.

use crate::engine::{Target, Verdict};
use crate::features::Features;
use crate::source::Source;
use crate::{check, check_eq};
use hypercall_abi::layout::{IMAGE_BASE, VNIC_RX_AREA_ADDR, VNIC_TX_AREA_ADDR};
use hypercall_abi::vnic::{
    max_frame, slot_size, MAX_MTU, MIN_FRAME, MIN_MTU, MTU, RX_RING_SIZE, RX_SLOTS, TX_HEADROOM, TX_RING_SIZE, TX_SLOTS,
};
use kernel_core::vnet::{pending, validate_rx, validate_tx, BadDescriptor, BadIndex, RxBuffer, TxFrame};

pub const TARGET: Target = Target {
    name: "desc",
    checks: "tx/rx descriptor verdicts equal a 128-bit reference model; accepted frames lie in one slot of \
             their area, after the headroom, length within bounds; pending() agrees with wrapping distance",
    max_len: 512,
    dictionary: &[],
    seeds,
    run,
};

fn seeds(_: &crate::real::RealInputs) -> Vec<Vec<u8>> {
    // Op 0 (tx), standard slot, slot-0 address after the headroom, a 60-byte frame; then the
    // same for rx; then an index check.
    vec![vec![0, 0, 0, 0, 0, 0, 0, 1, 0, 0, 0, 0, 2, 0, 0], vec![0; 64], (0..=255).collect()]
}

/// A slot size and whether the kernel can use it: the kernel's own (one per MTU it accepts), or
/// odd ones no caller passes today (0, 1, not a page multiple, huge), to show that the
/// arithmetic stays safe for any value.
fn slot_size_choice(source: &mut Source) -> (u64, bool) {
    match source.below(8) {
        0..=2 => (slot_size(MTU), true),
        3 => (slot_size(MAX_MTU), true),
        4 => {
            let mtu = MIN_MTU + source.u16() as u64 % (MAX_MTU - MIN_MTU + 1);
            (slot_size(mtu), true)
        }
        5 => (slot_size(MIN_MTU), true),
        _ => (source.u64_near(&[0, 1, 64, 4095, 4097, 1 << 32, u64::MAX / 32, u64::MAX]), false),
    }
}

fn address(source: &mut Source, slot_size: u64) -> u64 {
    let base = source.pick(&[VNIC_TX_AREA_ADDR, VNIC_RX_AREA_ADDR, 0, u64::MAX, IMAGE_BASE]);
    let slot = u64::from(source.u32_near(&[0, 1, 31, 32, 33]));
    let offset = source.u64_near(&[
        0,
        TX_HEADROOM,
        slot_size,
        slot_size.wrapping_sub(14),
        slot_size.wrapping_sub(max_frame(MTU)),
    ]);
    match source.below(4) {
        0 => source.u64(),
        _ => base.wrapping_add(slot.wrapping_mul(slot_size)).wrapping_add(offset),
    }
}

fn run(input: &[u8], features: &mut Features) -> Verdict {
    let mut source = Source::new(input);
    while !source.is_empty() {
        match source.below(3) {
            0 => {
                let (size, real_size) = slot_size_choice(&mut source);
                let addr = address(&mut source, size);
                let len = source.u32_near(&[0, 13, 14, 60, 1514, 1515, 4032, 9014, u32::MAX]);
                let max = match source.below(3) {
                    0 => max_frame(MTU),
                    1 => max_frame(MAX_MTU),
                    _ => source.u64_near(&[0, MIN_FRAME, max_frame(MTU), u64::MAX]),
                };
                check_tx(addr, len, max, size, real_size, features)?;
            }
            1 => {
                let (size, real_size) = slot_size_choice(&mut source);
                let addr = address(&mut source, size);
                let capacity = source.u32_near(&[0, 13, 14, 2048, 4096, 12288, u32::MAX]);
                check_rx(addr, capacity, size, real_size, features)?;
            }
            _ => {
                let consumer = source.u32_near(&[0, 1, u32::MAX, 1 << 31]);
                let producer = consumer.wrapping_add(source.u32_near(&[0, 1, 31, 32, 33, u32::MAX]));
                let ring = source.pick(&[TX_RING_SIZE, RX_RING_SIZE, 0, u32::MAX]);
                let distance = producer.wrapping_sub(consumer);
                let expected = if distance <= ring { Ok(distance) } else { Err(BadIndex { producer, consumer }) };
                let got = pending(producer, consumer, ring);
                features.note("pending ok", u64::from(got.is_ok()));
                check_eq!(got, expected, "pending({producer}, {consumer}, {ring})");
                if let Err(bad) = got {
                    let _ = bad.to_string();
                }
            }
        }
    }
    Ok(())
}

/// Where `addr` falls in an area of `slots` slots at `base`: `Some((slot, offset))` or outside.
fn reference_locate(addr: u64, base: u64, slots: u64, slot_size: u64) -> Option<(u64, u64)> {
    let (addr, base, size) = (u128::from(addr), u128::from(base), u128::from(slot_size));
    // An area whose size does not fit in a u64 holds nothing (only a nonsensical slot size
    // makes one; the kernel's are at most 3 pages).
    if u128::from(slots) * size > u128::from(u64::MAX) {
        return None;
    }
    let end = base + u128::from(slots) * size;
    if addr < base || addr >= end {
        return None;
    }
    // Here size > 0, since the area is not empty.
    Some((((addr - base) / size) as u64, ((addr - base) % size) as u64))
}

fn reference_tx(addr: u64, len: u32, max: u64, size: u64) -> Result<TxFrame, BadDescriptor> {
    let len = u64::from(len);
    let (slot, offset) =
        reference_locate(addr, VNIC_TX_AREA_ADDR, TX_SLOTS, size).ok_or(BadDescriptor::OutsideArea { addr })?;
    if len < MIN_FRAME {
        Err(BadDescriptor::TooShort { len })
    } else if len > max {
        Err(BadDescriptor::TooLong { len })
    } else if offset < TX_HEADROOM {
        Err(BadDescriptor::InHeadroom { addr })
    } else if u128::from(offset) + u128::from(len) > u128::from(size) {
        Err(BadDescriptor::CrossesSlot { addr, len })
    } else {
        Ok(TxFrame { slot, offset, len })
    }
}

fn reference_rx(addr: u64, capacity: u32, size: u64) -> Result<RxBuffer, BadDescriptor> {
    let capacity = u64::from(capacity);
    let (slot, offset) =
        reference_locate(addr, VNIC_RX_AREA_ADDR, RX_SLOTS, size).ok_or(BadDescriptor::OutsideArea { addr })?;
    if capacity < MIN_FRAME {
        Err(BadDescriptor::TooShort { len: capacity })
    } else if u128::from(offset) + u128::from(capacity) > u128::from(size) {
        Err(BadDescriptor::CrossesSlot { addr, len: capacity })
    } else {
        Ok(RxBuffer { slot, offset, capacity })
    }
}

/// 0 for accepted, else the error variant; plus 10 when the slot size is one the kernel uses.
fn note(features: &mut Features, tag: &'static str, result: Result<(), BadDescriptor>, real_size: bool) {
    let kind = match result {
        Ok(()) => 0,
        Err(BadDescriptor::OutsideArea { .. }) => 1,
        Err(BadDescriptor::InHeadroom { .. }) => 2,
        Err(BadDescriptor::CrossesSlot { .. }) => 3,
        Err(BadDescriptor::TooShort { .. }) => 4,
        Err(BadDescriptor::TooLong { .. }) => 5,
    };
    features.note(tag, kind + 10 * u64::from(real_size));
}

fn check_tx(addr: u64, len: u32, max: u64, size: u64, real_size: bool, features: &mut Features) -> Verdict {
    let got = validate_tx(addr, len, max, size);
    note(features, "tx", got.map(|_| ()), real_size);
    check_eq!(got, reference_tx(addr, len, max, size), "validate_tx({addr:#x}, {len}, {max}, {size})");
    if let Ok(frame) = got {
        let slot_start = u128::from(VNIC_TX_AREA_ADDR) + u128::from(frame.slot) * u128::from(size);
        let (start, end) = (u128::from(addr), u128::from(addr) + u128::from(frame.len));
        check!(frame.slot < TX_SLOTS, "tx slot {} of {TX_SLOTS}", frame.slot);
        check!(start == slot_start + u128::from(frame.offset), "tx offset does not locate the address");
        check!(start >= slot_start + u128::from(TX_HEADROOM), "tx frame in the headroom");
        check!(end <= slot_start + u128::from(size), "tx frame crosses its slot");
        check!(frame.len >= MIN_FRAME && frame.len <= max && frame.len == u64::from(len), "tx length {}", frame.len);
        if real_size {
            check!(end <= u128::from(VNIC_RX_AREA_ADDR), "tx frame reaches the rx area");
        }
    } else if let Err(error) = got {
        let _ = error.to_string();
    }
    Ok(())
}

fn check_rx(addr: u64, capacity: u32, size: u64, real_size: bool, features: &mut Features) -> Verdict {
    let got = validate_rx(addr, capacity, size);
    note(features, "rx", got.map(|_| ()), real_size);
    check_eq!(got, reference_rx(addr, capacity, size), "validate_rx({addr:#x}, {capacity}, {size})");
    if let Ok(buffer) = got {
        let slot_start = u128::from(VNIC_RX_AREA_ADDR) + u128::from(buffer.slot) * u128::from(size);
        let (start, end) = (u128::from(addr), u128::from(addr) + u128::from(buffer.capacity));
        check!(buffer.slot < RX_SLOTS, "rx slot {} of {RX_SLOTS}", buffer.slot);
        check!(start == slot_start + u128::from(buffer.offset), "rx offset does not locate the address");
        check!(end <= slot_start + u128::from(size), "rx buffer crosses its slot");
        check!(buffer.capacity >= MIN_FRAME && buffer.capacity == u64::from(capacity), "rx capacity");
        if real_size {
            check!(end <= u128::from(IMAGE_BASE), "rx buffer reaches the image area");
        }
    }
    Ok(())
}
