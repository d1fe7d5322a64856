//! `vnet::csum`: where a guest's (or the wire's) frame has its UDP or TCP checksum, and the
//! checksums the kernel fills, seeds, verifies and completes for checksum offload.
//!
//! The input is a frame: mostly a well-formed Ethernet/IPv4/UDP or TCP frame whose header
//! bytes are then overwritten from the input (lengths, header length, fragment bits, protocol),
//! sometimes raw bytes. A placed checksum must lie inside the frame and inside its L4 data;
//! what `fill` writes must verify and equal a 16-bit reference sum over the pseudo header and
//! the L4 bytes; seeding then completing at the placed offsets gives the same frame when the
//! data runs to the frame's end; `complete` at offsets from the input never writes outside.

use crate::check;
use crate::engine::{Target, Verdict};
use crate::features::Features;
use crate::source::Source;
use kernel_core::vnet::csum::{
    complete, fill, fill_in_pieces, locate, locate_in_prefix, prepare_tx, seed, verify, TxChecksum, Unplaceable, L4,
};

pub const TARGET: Target = Target {
    name: "csum",
    checks: "placed checksums lie in the frame and its L4 data; fill verifies and equals a 16-bit reference, \
             in one piece or two (the split path); seed then complete verifies; device offsets outside the frame \
             are refused",
    max_len: 2048,
    dictionary: &[],
    seeds,
    run,
};

fn seeds(_: &crate::real::RealInputs) -> Vec<Vec<u8>> {
    vec![vec![0; 16], vec![1, 17, 0, 0, 0, 0, 0, 0, 40], vec![1, 6, 1, 2, 3, 4, 5, 6, 200], (0..=255).collect()]
}

/// An Ethernet/IPv4 frame with `options` option words, `protocol` and `l4_len` L4 bytes from
/// `source`, its lengths consistent.
fn frame(source: &mut Source, protocol: u8, options: usize, l4_len: usize) -> Vec<u8> {
    let header = 20 + 4 * options;
    let mut frame = vec![0u8; 14 + header + l4_len];
    frame[12..14].copy_from_slice(&[0x08, 0x00]);
    frame[14] = 0x40 | (header / 4) as u8;
    frame[16..18].copy_from_slice(&((header + l4_len) as u16).to_be_bytes());
    frame[23] = protocol;
    // The UDP length first (the input may run out in the bytes below, which then read 0):
    // the datagram's, or one near it (shorter is allowed, longer is not).
    let udp_len = match source.below(3) {
        1 => source.u32_near(&[0, 7, 8, (l4_len as u32).saturating_sub(1), l4_len as u32 + 1, 65_535]) as u16,
        _ => l4_len as u16,
    };
    for byte in frame[26..34].iter_mut() {
        *byte = source.u8();
    }
    let start = 14 + header;
    for byte in frame[start..].iter_mut() {
        *byte = source.u8();
    }
    if protocol == 17 && l4_len >= 8 {
        frame[start + 4..start + 6].copy_from_slice(&udp_len.to_be_bytes());
    }
    frame
}

/// RFC 1071 by the book: big-endian words, folded, complemented.
fn reference(data: &[u8]) -> u16 {
    let mut sum: u64 = 0;
    for pair in data.chunks(2) {
        sum += u64::from(u16::from_be_bytes([pair[0], *pair.get(1).unwrap_or(&0)]));
    }
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

fn run(input: &[u8], features: &mut Features) -> Verdict {
    let mut source = Source::new(input);
    let frame = match source.below(4) {
        0 => source.rest().to_vec(),
        _ => {
            let protocol = source.pick(&[17, 6, 17, 6, 1, 47]);
            let options = source.pick(&[0, 0, 1, 10]);
            let l4_len = source.u16() as usize % 1600;
            let mut frame = frame(&mut source, protocol, options, l4_len);
            // Overwrite a few header bytes: lengths, header length, fragments, protocol.
            for _ in 0..source.below(4) {
                let at = source.pick(&[12, 13, 14, 16, 17, 20, 21, 23, 38, 39, 42, 43]);
                let value = source.u8();
                if let Some(byte) = frame.get_mut(at) {
                    *byte = value;
                }
            }
            // Sometimes cut it, sometimes pad it.
            // (An exhausted input reads 0: leave the frame whole then.)
            match source.below(4) {
                1 => frame.truncate(source.u16() as usize % (frame.len() + 1)),
                2 => frame.extend(std::iter::repeat_n(0xee, source.below(16))),
                _ => {}
            }
            frame
        }
    };
    let placed = locate(&frame);
    features.note(
        "locate",
        match placed {
            Ok(spot) => spot.protocol as u64,
            Err(Unplaceable::NotIpv4) => 10,
            Err(Unplaceable::Truncated) => 11,
            Err(Unplaceable::BadHeaderLength) => 12,
            Err(Unplaceable::BadTotalLength) => 13,
            Err(Unplaceable::Fragment) => 14,
            Err(Unplaceable::Protocol(_)) => 15,
            Err(Unplaceable::BadUdpLength) => 16,
            Err(Unplaceable::BadOffsets) => 17,
        },
    );
    if let Ok(spot) = placed {
        check!(
            spot.start < spot.end && spot.field + 2 <= spot.end && spot.end <= frame.len() && spot.field >= spot.start,
            "placed outside the frame: {spot:?} in {} bytes",
            frame.len()
        );
        let mut filled = frame.clone();
        fill(&mut filled, &spot);
        check!(verify(&filled, &spot), "a filled checksum does not verify: {spot:?}");
        let protocol = if spot.protocol == L4::Udp { 17 } else { 6 };
        let l4_len = spot.end - spot.start;
        let mut message = filled[26..34].to_vec();
        message.extend_from_slice(&[0, protocol]);
        message.extend_from_slice(&(l4_len as u16).to_be_bytes());
        let mut l4 = filled[spot.start..spot.end].to_vec();
        l4[spot.field - spot.start..spot.field - spot.start + 2].fill(0);
        message.extend_from_slice(&l4);
        let want = match reference(&message) {
            0 if spot.protocol == L4::Udp => 0xffff,
            sum => sum,
        };
        let got = u16::from_be_bytes([filled[spot.field], filled[spot.field + 1]]);
        check!(got == want, "filled {got:#06x}, the reference says {want:#06x}");
        check!(
            filled[..spot.field] == frame[..spot.field] && filled[spot.field + 2..] == frame[spot.field + 2..],
            "fill wrote outside its field"
        );
        if spot.end == frame.len() {
            let mut seeded = frame.clone();
            seed(&mut seeded, &spot);
            complete(&mut seeded, spot.start, spot.field - spot.start).map_err(|e| format!("complete: {e}"))?;
            // Equal as checksums: one's complement has two zeros, and a completed UDP sum is
            // not mapped from 0 to 0xffff.
            check!(verify(&seeded, &spot), "seed then complete does not verify: {spot:?}");
        }
        // In two pieces (the split path): headers up to any point after the field, the rest.
        let at = spot.field + 2 + source.below(frame.len() - spot.field - 1);
        let (mut headers, payload) = (frame[..at].to_vec(), &frame[at..]);
        check!(locate_in_prefix(&headers, frame.len()) == Ok(spot), "placed differently in two pieces at {at}");
        fill_in_pieces(&mut headers, payload, &spot);
        check!([&headers[..], payload].concat() == filled, "filled differently in two pieces at {at}");
        features.note("pieces odd", (at % 2) as u64);
        let mut prepared = frame.clone();
        let outcome = prepare_tx(&mut prepared, source.bool());
        features.note("prepare", matches!(outcome, Ok(TxChecksum::Owed(_))) as u64);
        check!(outcome.is_ok(), "prepare_tx refused what locate placed");
    }
    // Device offsets, anything.
    let (start, offset) = (source.u16() as usize, source.u16() as usize);
    let mut completed = frame.clone();
    let result = complete(&mut completed, start, offset);
    let inside = start + offset + 2 <= frame.len();
    features.note("complete", u64::from(result.is_ok()));
    check!(result.is_ok() == inside, "complete({start}, {offset}) on {} bytes: {result:?}", frame.len());
    if result.is_ok() {
        check!(
            completed[..start + offset] == frame[..start + offset]
                && completed[start + offset + 2..] == frame[start + offset + 2..],
            "complete wrote outside its field"
        );
    }
    Ok(())
}
