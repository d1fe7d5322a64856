//! UDP and TCP checksums over IPv4 for checksum offload (`hypercall_abi::vnic::desc_flags`):
//! where the checksum of a frame goes, read from its headers, and the Internet checksum
//! (RFC 1071) to fill, seed for the NIC, verify or complete it.
//!
//! The frame is a guest's (or the wire's) bytes: [`locate`] checks every header field it uses
//! against the frame's length and refuses what it cannot place, by name. Nothing here trusts an
//! offset it did not derive (the NIC's `csum_start`/`csum_offset` in [`complete`] are checked
//! against the frame too).
//!
//! Sums are kept in "little-endian word" form: the frame is summed as little-endian `u64`s with
//! end-around carry, which by RFC 1071's byte-order independence is the byte-swapped sum of its
//! big-endian 16-bit words; a folded value written back with `to_le_bytes` is in network order.

use core::fmt;

/// An L4 checksum the kernel still owes a frame (checksum offload): the field, `offset` bytes
/// after `start`, holds the pseudo header's sum, and the sum runs from `start` to the frame's
/// end (virtio-net's `NEEDS_CSUM`). Made only from offsets the kernel derived from the frame's
/// headers ([`prepare_tx`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CsumRequest {
    pub start: u16,
    pub offset: u16,
}

use super::wire::{
    ETHERNET_HEADER, IPV4_FRAGMENT_OFFSET as FRAGMENT_OFFSET, IPV4_MIN_HEADER, IPV4_MORE_FRAGMENTS as MORE_FRAGMENTS,
    PROTOCOL_TCP, PROTOCOL_UDP, TCP_MIN_HEADER, UDP_HEADER,
};
const ETHERTYPE_IPV4: [u8; 2] = super::wire::ETHERTYPE_IPV4.to_be_bytes();
/// Offset of the checksum field in a UDP and a TCP header.
const UDP_CHECKSUM_AT: usize = 6;
const TCP_CHECKSUM_AT: usize = 16;

/// The transport protocols whose checksum the kernel places.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum L4 {
    Udp,
    Tcp,
}

/// Where a frame's L4 checksum goes: the L4 header starts at `start` and its data ends at `end`
/// (both frame offsets, `start < end <= frame.len()`), the checksum field is at `field`
/// (`field + 2 <= end`), and `pseudo` is the pseudo header's partial sum.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct L4Spot {
    pub protocol: L4,
    pub start: usize,
    pub field: usize,
    pub end: usize,
    pseudo: u64,
}

impl L4Spot {
    /// The checksum field's offset from the L4 header (virtio-net's `csum_offset`).
    pub fn field_offset(&self) -> usize {
        self.field.saturating_sub(self.start)
    }
}

/// Why a frame's L4 checksum cannot be placed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Unplaceable {
    /// Not an IPv4 frame (another EtherType, or another IP version).
    NotIpv4,
    /// Shorter than its headers say (Ethernet, IPv4 header, or the L4 header).
    Truncated,
    /// An IPv4 header length below 20 bytes.
    BadHeaderLength,
    /// An IPv4 total length shorter than its header or longer than the frame.
    BadTotalLength,
    /// A fragment: its checksum covers data in other frames.
    Fragment,
    /// Neither UDP nor TCP.
    Protocol(u8),
    /// A UDP length below its header or beyond the IP payload.
    BadUdpLength,
    /// Device-given offsets (`csum_start`, `csum_offset`) outside the frame.
    BadOffsets,
}

impl Unplaceable {
    /// A short, stable name for logs.
    pub fn kind(&self) -> &'static str {
        match self {
            Self::NotIpv4 => "not_ipv4",
            Self::Truncated => "truncated",
            Self::BadHeaderLength => "bad_header_length",
            Self::BadTotalLength => "bad_total_length",
            Self::Fragment => "fragment",
            Self::Protocol(_) => "not_udp_or_tcp",
            Self::BadUdpLength => "bad_udp_length",
            Self::BadOffsets => "bad_offsets",
        }
    }
}

impl fmt::Display for Unplaceable {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Protocol(p) => write!(f, "IP protocol {p} is neither UDP nor TCP"),
            other => write!(f, "no L4 checksum to place: {}", other.kind()),
        }
    }
}

fn be16(frame: &[u8], at: usize) -> Option<u16> {
    Some(u16::from_be_bytes([*frame.get(at)?, *frame.get(at.checked_add(1)?)?]))
}

/// Where the UDP or TCP checksum of an Ethernet/IPv4 `frame` goes (IPv4 options allowed;
/// fragments, other protocols and lengths beyond the frame refused). For UDP the data ends where
/// the UDP length says; for TCP where the IPv4 total length does (Ethernet padding after it is
/// not summed).
#[inline(always)]
pub fn locate(frame: &[u8]) -> Result<L4Spot, Unplaceable> {
    locate_in_prefix(frame, frame.len())
}

/// [`locate`] for a frame of `frame_len` bytes of which only `prefix`, its first bytes, is read
/// (the split path's copy of the headers; the payload stays in the guest's slot): the headers
/// read and the checksum field must lie in the prefix (else `Truncated`), the L4 data within
/// `frame_len`.
#[inline(always)]
pub fn locate_in_prefix(prefix: &[u8], frame_len: usize) -> Result<L4Spot, Unplaceable> {
    let frame = prefix;
    let frame_len = frame_len.max(prefix.len());
    const HEAD: usize = ETHERNET_HEADER + IPV4_MIN_HEADER;
    // The Ethernet header and the fixed part of the IPv4 header, read at fixed offsets.
    let head: &[u8; HEAD] = match frame.get(..HEAD).and_then(|head| head.try_into().ok()) {
        Some(head) => head,
        None if frame.get(12..ETHERNET_HEADER).is_some_and(|t| t != ETHERTYPE_IPV4) => {
            return Err(Unplaceable::NotIpv4)
        }
        None => return Err(Unplaceable::Truncated),
    };
    let (_, ip) = head.split_at(12);
    let [t0, t1, version_ihl, _, total_high, total_low, _, _, fragment_high, fragment_low, _, protocol_number, ..] =
        *ip
    else {
        return Err(Unplaceable::Truncated);
    };
    if [t0, t1] != ETHERTYPE_IPV4 || version_ihl >> 4 != 4 {
        return Err(Unplaceable::NotIpv4);
    }
    let header = usize::from(version_ihl & 0x0f) * 4;
    if header < IPV4_MIN_HEADER {
        return Err(Unplaceable::BadHeaderLength);
    }
    let ip_len = frame_len.saturating_sub(ETHERNET_HEADER);
    if ip_len < header {
        return Err(Unplaceable::Truncated);
    }
    let total = usize::from(u16::from_be_bytes([total_high, total_low]));
    if total < header || total > ip_len {
        return Err(Unplaceable::BadTotalLength);
    }
    if u16::from_be_bytes([fragment_high, fragment_low]) & (MORE_FRAGMENTS | FRAGMENT_OFFSET) != 0 {
        return Err(Unplaceable::Fragment);
    }
    let start = ETHERNET_HEADER.checked_add(header).ok_or(Unplaceable::Truncated)?;
    let payload = total.checked_sub(header).ok_or(Unplaceable::BadTotalLength)?;
    let (protocol, l4_len, field_at) = match protocol_number {
        PROTOCOL_UDP => {
            if payload < UDP_HEADER {
                return Err(Unplaceable::Truncated);
            }
            let udp_len = usize::from(
                be16(frame, start.checked_add(4).ok_or(Unplaceable::Truncated)?).ok_or(Unplaceable::Truncated)?,
            );
            if !(UDP_HEADER..=payload).contains(&udp_len) {
                return Err(Unplaceable::BadUdpLength);
            }
            (L4::Udp, udp_len, UDP_CHECKSUM_AT)
        }
        PROTOCOL_TCP => {
            if payload < TCP_MIN_HEADER {
                return Err(Unplaceable::Truncated);
            }
            (L4::Tcp, payload, TCP_CHECKSUM_AT)
        }
        other => return Err(Unplaceable::Protocol(other)),
    };
    let end = start.checked_add(l4_len).ok_or(Unplaceable::Truncated)?;
    let field = start.checked_add(field_at).ok_or(Unplaceable::Truncated)?;
    // `end <= 14 + total <= frame_len` and `field + 2 <= start + 8 <= end`, as checked above;
    // checked again so that no later slice can be out of range whatever the arithmetic; and the
    // field must be in the bytes at hand.
    if end > frame_len || field.checked_add(2).is_none_or(|f| f > end || f > frame.len()) {
        return Err(Unplaceable::Truncated);
    }
    let addresses = head.get(ETHERNET_HEADER + 12..).unwrap_or_default();
    // The pseudo header: source and destination address, zero and protocol, L4 length, each as
    // a big-endian word; in little-endian word form the last two are byte-swapped.
    let l4_len_word = u16::try_from(l4_len).map_err(|_| Unplaceable::BadTotalLength)?;
    let mut pseudo = partial(addresses, 0);
    pseudo = add(pseudo, u64::from(u16::from(protocol_number).swap_bytes()));
    pseudo = add(pseudo, u64::from(l4_len_word.swap_bytes()));
    Ok(L4Spot { protocol, start, field, end, pseudo })
}

/// `acc + value` with the carry added back in (one's-complement addition).
#[inline(always)]
fn add(acc: u64, value: u64) -> u64 {
    let (sum, carry) = acc.overflowing_add(value);
    // Cannot wrap: after a carry `sum <= 2^64 - 2`.
    sum.wrapping_add(u64::from(carry))
}

/// The last 0-7 bytes as a little-endian word, zero-padded (an odd last byte is the high byte
/// of its 16-bit word), without a call to `memcpy`.
#[inline(always)]
fn tail(bytes: &[u8]) -> u64 {
    let (mut value, mut shift, mut rest) = (0u64, 0u32, bytes);
    if let Some((four, after)) = rest.split_first_chunk::<4>() {
        value = u64::from(u32::from_le_bytes(*four));
        (shift, rest) = (32, after);
    }
    if let Some((two, after)) = rest.split_first_chunk::<2>() {
        value |= u64::from(u16::from_le_bytes(*two)) << shift;
        shift = shift.wrapping_add(16);
        rest = after;
    }
    if let Some(&last) = rest.first() {
        value |= u64::from(last).checked_shl(shift).unwrap_or(0);
    }
    value
}

/// Adds `data` (starting at an even offset of the summed message) to the partial sum `acc`.
#[inline]
pub fn partial(data: &[u8], acc: u64) -> u64 {
    let mut acc = acc;
    // Eight words a turn, chained through the carry flag: one add-with-carry per word, and
    // the carry folded in once per 64 bytes (two instructions per word without the chain).
    let (blocks, rest) = data.as_chunks::<64>();
    for block in blocks {
        acc = add_block(acc, block);
    }
    // The last 0-7 words one by one: a carry chain through a loop of unknown length costs more.
    let (words, rest) = rest.as_chunks::<8>();
    for word in words {
        acc = add(acc, u64::from_le_bytes(*word));
    }
    add(acc, tail(rest))
}

/// `acc` plus the eight little-endian words of `block`, one's-complement: on x86-64 one chain
/// of add-with-carry, the carry folded in at the end.
#[cfg(target_arch = "x86_64")]
#[inline(always)]
fn add_block(acc: u64, block: &[u8; 64]) -> u64 {
    use core::arch::x86_64::_addcarry_u64;
    let (words, _) = block.as_chunks::<8>();
    let (mut sum, mut carry) = (acc, 0u8);
    for word in words {
        carry = _addcarry_u64(carry, sum, u64::from_le_bytes(*word), &mut sum);
    }
    add(sum, u64::from(carry))
}

/// `acc` plus the eight little-endian words of `block`, one's-complement.
#[cfg(not(target_arch = "x86_64"))]
#[inline(always)]
fn add_block(acc: u64, block: &[u8; 64]) -> u64 {
    let (words, _) = block.as_chunks::<8>();
    words.iter().fold(acc, |acc, word| add(acc, u64::from_le_bytes(*word)))
}

/// The partial sum of `first` then `second`, one message from an even offset: a `second` that
/// starts at an odd offset has its bytes in the other halves of their words, so its sum is
/// byte-swapped (RFC 1071's byte-order independence).
#[inline]
pub fn partial_of_two(first: &[u8], second: &[u8], acc: u64) -> u64 {
    let acc = partial(first, acc);
    if second.is_empty() {
        return acc;
    }
    let rest = partial(second, 0);
    if first.len() % 2 == 1 {
        add(acc, u64::from(fold(rest).swap_bytes()))
    } else {
        add(acc, rest)
    }
}

/// The bytes `[from, to)` of the frame `headers ++ payload`, as the part in each piece.
fn pieces<'f>(headers: &'f [u8], payload: &'f [u8], from: usize, to: usize) -> (&'f [u8], &'f [u8]) {
    let split = headers.len();
    let first = headers.get(from.min(split)..to.min(split)).unwrap_or_default();
    let second =
        payload.get(from.saturating_sub(split)..to.saturating_sub(split).min(payload.len())).unwrap_or_default();
    (first, second)
}

/// Folds a partial sum to 16 bits (little-endian word form).
#[inline]
pub fn fold(acc: u64) -> u16 {
    let acc = add(acc & 0xffff_ffff, acc >> 32);
    let acc = add(acc & 0xffff, acc >> 16);
    let acc = add(acc & 0xffff, acc >> 16);
    (add(acc & 0xffff, acc >> 16) & 0xffff) as u16
}

#[inline(always)]
fn write_field(frame: &mut [u8], at: usize, value: u16) {
    if let Some(field) = frame.get_mut(at..at.saturating_add(2)) {
        field.copy_from_slice(&value.to_le_bytes());
    }
}

#[inline(always)]
fn read_field(frame: &[u8], at: usize) -> u16 {
    match frame.get(at..at.saturating_add(2)) {
        Some(&[low, high]) => u16::from_le_bytes([low, high]),
        _ => 0,
    }
}

/// Computes the L4 checksum of `frame` (located by [`locate`]) and writes it in.
#[inline]
pub fn fill(frame: &mut [u8], spot: &L4Spot) {
    fill_in_pieces(frame, &[], spot);
}

/// [`fill`] for the frame `headers ++ payload` (located by [`locate_in_prefix`] in `headers`):
/// the checksum, written into `headers`, covers the L4 data in both.
#[inline]
pub fn fill_in_pieces(headers: &mut [u8], payload: &[u8], spot: &L4Spot) {
    write_field(headers, spot.field, 0);
    let (first, second) = pieces(headers, payload, spot.start, spot.end);
    let checksum = !fold(partial_of_two(first, second, spot.pseudo));
    // A computed UDP checksum of zero is sent as all ones (zero means "none").
    let checksum = if checksum == 0 && spot.protocol == L4::Udp { 0xffff } else { checksum };
    write_field(headers, spot.field, checksum);
}

/// Writes the pseudo header's folded sum into the checksum field: what a NIC asked to finish
/// the checksum (virtio-net `NEEDS_CSUM`, from `spot.start` to the frame's end) expects there.
#[inline]
pub fn seed(frame: &mut [u8], spot: &L4Spot) {
    write_field(frame, spot.field, fold(spot.pseudo));
}

/// Whether the L4 checksum of `frame` (located by [`locate`]) holds; a UDP checksum of zero
/// ("none", as IPv4 allows) holds.
#[inline]
pub fn verify(frame: &[u8], spot: &L4Spot) -> bool {
    let stored = read_field(frame, spot.field);
    if stored == 0 && spot.protocol == L4::Udp {
        return true;
    }
    let data = frame.get(spot.start..spot.end).unwrap_or_default();
    fold(partial(data, spot.pseudo)) == 0xffff
}

/// What the doorbell did with a frame whose guest left its L4 checksum to the kernel.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TxChecksum {
    /// Seeded: the sum over `[start, frame end)` is still owed (to the NIC, or to the kernel
    /// once the frame's route is known).
    Owed(CsumRequest),
    /// Computed and written now: no NIC may finish it, or the L4 data ends before the frame
    /// does (a NIC that sums to the end would sum the padding too).
    Filled,
}

/// The doorbell's part of checksum offload for a frame the guest flagged: places the checksum
/// from the frame's own headers, and seeds it if a NIC may finish it (`nic_may_finish`), else
/// fills it now ([`TxChecksum::Filled`]: one pass, wherever the frame goes). The frame must be
/// the kernel's copy, or a page the guest cannot write while in flight.
#[inline]
pub fn prepare_tx(frame: &mut [u8], nic_may_finish: bool) -> Result<TxChecksum, Unplaceable> {
    prepare_tx_in_pieces(frame, &[], nic_may_finish)
}

/// [`prepare_tx`] for the frame `headers ++ payload` (the split path: `headers` is the
/// kernel's copy, where the checksum is written; `payload` the guest's slot, only read, and
/// only when the kernel fills the checksum itself).
#[inline]
pub fn prepare_tx_in_pieces(
    headers: &mut [u8],
    payload: &[u8],
    nic_may_finish: bool,
) -> Result<TxChecksum, Unplaceable> {
    let frame_len = headers.len().saturating_add(payload.len());
    let spot = locate_in_prefix(headers, frame_len)?;
    let request = match (u16::try_from(spot.start), u16::try_from(spot.field_offset())) {
        (Ok(start), Ok(offset)) if nic_may_finish && spot.end == frame_len => Some(CsumRequest { start, offset }),
        _ => None,
    };
    match request {
        Some(request) => {
            seed(headers, &spot);
            Ok(TxChecksum::Owed(request))
        }
        None => {
            fill_in_pieces(headers, payload, &spot);
            Ok(TxChecksum::Filled)
        }
    }
}

/// Finishes a checksum [`prepare_tx`] left owed (the kernel's copy of the frame, on its way to
/// another guest or to a NIC without checksum offload).
pub fn finish_tx(frame: &mut [u8], request: CsumRequest) -> Result<(), Unplaceable> {
    complete(frame, usize::from(request.start), usize::from(request.offset))
}

/// [`finish_tx`] for the frame `headers ++ payload`; the field must lie in `headers`.
pub fn finish_tx_in_pieces(headers: &mut [u8], payload: &[u8], request: CsumRequest) -> Result<(), Unplaceable> {
    complete_in_pieces(headers, payload, usize::from(request.start), usize::from(request.offset))
}

/// Finishes a checksum a device left partial (virtio-net `NEEDS_CSUM`): the one's-complement
/// sum from `start` to the end of `frame`, complemented, into the field `offset` bytes after
/// `start` (which holds the pseudo header's sum). Offsets outside the frame are refused.
pub fn complete(frame: &mut [u8], start: usize, offset: usize) -> Result<(), Unplaceable> {
    complete_in_pieces(frame, &[], start, offset)
}

/// [`complete`] for the frame `headers ++ payload`; the field must lie in `headers`.
pub fn complete_in_pieces(headers: &mut [u8], payload: &[u8], start: usize, offset: usize) -> Result<(), Unplaceable> {
    let field = start.checked_add(offset).ok_or(Unplaceable::BadOffsets)?;
    if field.checked_add(2).is_none_or(|end| end > headers.len()) {
        return Err(Unplaceable::BadOffsets);
    }
    let (first, second) = pieces(headers, payload, start, headers.len().saturating_add(payload.len()));
    let checksum = !fold(partial_of_two(first, second, 0));
    write_field(headers, field, checksum);
    Ok(())
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing, clippy::arithmetic_side_effects)]
mod tests {
    use super::*;
    use alloc::vec;
    use alloc::vec::Vec;

    /// RFC 1071's reference: the sum of big-endian 16-bit words, folded, complemented.
    fn reference(data: &[u8]) -> u16 {
        let mut sum: u32 = 0;
        for pair in data.chunks(2) {
            let word = u16::from_be_bytes([pair[0], *pair.get(1).unwrap_or(&0)]);
            sum += u32::from(word);
        }
        while sum > 0xffff {
            sum = (sum & 0xffff) + (sum >> 16);
        }
        !(sum as u16)
    }

    /// The checksum of `data` as a big-endian value.
    fn checksum_of(data: &[u8]) -> u16 {
        (!fold(partial(data, 0))).swap_bytes()
    }

    #[test]
    fn rfc_1071_example() {
        // RFC 1071 section 3: these bytes sum to 0xddf2 (big-endian words).
        let data = [0x00, 0x01, 0xf2, 0x03, 0xf4, 0xf5, 0xf6, 0xf7];
        assert_eq!(reference(&data), !0xddf2);
        assert_eq!(checksum_of(&data), !0xddf2);
    }

    #[test]
    fn the_fast_sum_agrees_with_the_reference_at_every_length_and_value() {
        let mut state = 0x9e37_79b9_7f4a_7c15_u64;
        for len in 0..300 {
            for _ in 0..8 {
                let data: Vec<u8> = (0..len)
                    .map(|_| {
                        state ^= state << 13;
                        state ^= state >> 7;
                        state ^= state << 17;
                        state as u8
                    })
                    .collect();
                assert_eq!(checksum_of(&data), reference(&data), "len {len}");
            }
            assert_eq!(checksum_of(&vec![0xff; len]), reference(&vec![0xff; len]), "all ones, len {len}");
        }
    }

    /// Builds an Ethernet/IPv4 frame: `options` words of IPv4 options, `protocol`, L4 bytes.
    fn ipv4_frame(protocol: u8, options: usize, l4: &[u8]) -> Vec<u8> {
        let header = 20 + 4 * options;
        let mut frame = vec![0u8; 14 + header + l4.len()];
        frame[0..6].copy_from_slice(&[2, 0, 0, 0, 0, 1]);
        frame[6..12].copy_from_slice(&[2, 0, 0, 0, 0, 2]);
        frame[12..14].copy_from_slice(&ETHERTYPE_IPV4);
        let ip = &mut frame[14..];
        ip[0] = 0x40 | (header / 4) as u8;
        ip[2..4].copy_from_slice(&((header + l4.len()) as u16).to_be_bytes());
        ip[6] = 0x40; // don't fragment
        ip[8] = 64;
        ip[9] = protocol;
        ip[12..16].copy_from_slice(&[10, 0, 2, 15]);
        ip[16..20].copy_from_slice(&[10, 0, 2, 2]);
        for option in 0..options {
            ip[20 + 4 * option] = 1; // no-operation
        }
        ip[header..].copy_from_slice(l4);
        frame
    }

    fn udp(payload: &[u8]) -> Vec<u8> {
        let mut l4 = vec![0u8; 8];
        l4[0..2].copy_from_slice(&5000u16.to_be_bytes());
        l4[2..4].copy_from_slice(&7u16.to_be_bytes());
        l4[4..6].copy_from_slice(&((8 + payload.len()) as u16).to_be_bytes());
        l4.extend_from_slice(payload);
        l4
    }

    fn tcp(payload: &[u8]) -> Vec<u8> {
        let mut l4 = vec![0u8; 20];
        l4[0..2].copy_from_slice(&80u16.to_be_bytes());
        l4[2..4].copy_from_slice(&40000u16.to_be_bytes());
        l4[12] = 5 << 4;
        l4[13] = 0x18; // PSH ACK
        l4.extend_from_slice(payload);
        l4
    }

    /// The checksum by the textbook: pseudo header and L4 bytes as big-endian words.
    fn textbook(frame: &[u8], protocol: u8, l4_start: usize, l4_len: usize, field: usize) -> u16 {
        let mut message = Vec::new();
        message.extend_from_slice(&frame[26..34]);
        message.extend_from_slice(&[0, protocol]);
        message.extend_from_slice(&(l4_len as u16).to_be_bytes());
        let mut l4 = frame[l4_start..l4_start + l4_len].to_vec();
        l4[field - l4_start..field - l4_start + 2].fill(0);
        message.extend_from_slice(&l4);
        let sum = reference(&message);
        if sum == 0 && protocol == PROTOCOL_UDP {
            0xffff
        } else {
            sum
        }
    }

    fn stored(frame: &[u8], field: usize) -> u16 {
        u16::from_be_bytes([frame[field], frame[field + 1]])
    }

    #[test]
    fn a_known_udp_datagram() {
        // 10.0.2.15:5000 -> 10.0.2.2:7, "hello": checksum worked by hand from RFC 768's
        // pseudo header (0x0a00 + 0x020f + 0x0a00 + 0x0202 + 0x0011 + 0x000d, then the header
        // 0x1388 + 0x0007 + 0x000d, then "he" "ll" "o\0").
        let mut frame = ipv4_frame(PROTOCOL_UDP, 0, &udp(b"hello"));
        let spot = locate(&frame).unwrap();
        assert_eq!((spot.protocol, spot.start, spot.field, spot.end), (L4::Udp, 34, 40, 47));
        fill(&mut frame, &spot);
        let words: u32 =
            [0x0a00, 0x020f, 0x0a00, 0x0202, 0x0011, 0x000d, 0x1388, 0x0007, 0x000d, 0x6865, 0x6c6c, 0x6f00]
                .iter()
                .sum();
        let folded = (words & 0xffff) + (words >> 16);
        assert_eq!(stored(&frame, 40), !(folded as u16));
        assert!(verify(&frame, &spot));
        frame[46] ^= 1;
        assert!(!verify(&frame, &spot), "a flipped payload bit is caught");
    }

    #[test]
    fn udp_and_tcp_with_and_without_options_at_many_sizes() {
        for protocol in [PROTOCOL_UDP, PROTOCOL_TCP] {
            for options in [0, 1, 10] {
                for size in [0, 1, 2, 7, 100, 1371, 1400, 1472, 8972] {
                    let payload: Vec<u8> = (0..size).map(|i| (i * 7 + size) as u8).collect();
                    let l4 = if protocol == PROTOCOL_UDP { udp(&payload) } else { tcp(&payload) };
                    let mut frame = ipv4_frame(protocol, options, &l4);
                    let spot = locate(&frame).unwrap();
                    let start = 14 + 20 + 4 * options;
                    let at = if protocol == PROTOCOL_UDP { 6 } else { 16 };
                    assert_eq!((spot.start, spot.field, spot.end), (start, start + at, frame.len()));
                    assert_eq!(spot.field_offset(), at);
                    // Whatever the field held before is ignored.
                    frame[spot.field] = 0xab;
                    fill(&mut frame, &spot);
                    assert_eq!(stored(&frame, spot.field), textbook(&frame, protocol, start, l4.len(), spot.field));
                    assert!(verify(&frame, &spot), "{protocol} {options} {size}");
                    let last = frame.len() - 1;
                    frame[last] = frame[last].wrapping_add(1);
                    assert!(!verify(&frame, &spot), "{protocol} {options} {size}");
                }
            }
        }
    }

    #[test]
    fn a_seeded_field_finished_by_a_nic_gives_the_same_checksum() {
        for l4 in [udp(&[0x5a; 1400]), tcp(b"GET / HTTP/1.1\r\n\r\n")] {
            let protocol = if l4.len() > 1000 { PROTOCOL_UDP } else { PROTOCOL_TCP };
            let mut filled = ipv4_frame(protocol, 0, &l4);
            let spot = locate(&filled).unwrap();
            fill(&mut filled, &spot);
            let mut seeded = ipv4_frame(protocol, 0, &l4);
            seed(&mut seeded, &spot);
            // The NIC sums from csum_start to the end and stores the complement at csum_offset.
            complete(&mut seeded, spot.start, spot.field_offset()).unwrap();
            assert_eq!(seeded, filled);
        }
    }

    #[test]
    fn a_zero_udp_checksum_means_none_and_a_computed_zero_is_sent_as_ones() {
        let frame = ipv4_frame(PROTOCOL_UDP, 0, &udp(b"abc"));
        let spot = locate(&frame).unwrap();
        assert_eq!(stored(&frame, spot.field), 0);
        assert!(verify(&frame, &spot), "no checksum");
        // Find a payload whose checksum computes to zero: adjust two bytes until it does.
        let mut frame = ipv4_frame(PROTOCOL_UDP, 0, &udp(&[0, 0]));
        let spot = locate(&frame).unwrap();
        fill(&mut frame, &spot);
        let sum = stored(&frame, spot.field);
        // Adding `sum` to the data makes the complement of the new total zero... i.e. 0xffff.
        frame[42..44].copy_from_slice(&sum.to_be_bytes());
        fill(&mut frame, &spot);
        assert_eq!(stored(&frame, spot.field), 0xffff);
        assert!(verify(&frame, &spot));
    }

    #[test]
    fn udp_data_ends_at_the_udp_length_and_padding_is_not_summed() {
        // Ethernet padding after the IP packet: not part of the checksum.
        let mut frame = ipv4_frame(PROTOCOL_UDP, 0, &udp(b"x"));
        frame.extend_from_slice(&[0xee; 13]);
        let spot = locate(&frame).unwrap();
        assert_eq!(spot.end, 14 + 20 + 9);
        fill(&mut frame, &spot);
        assert_eq!(stored(&frame, spot.field), textbook(&frame, PROTOCOL_UDP, 34, 9, 40));
        // A UDP length shorter than the IP payload: only the UDP length is summed.
        let mut frame = ipv4_frame(PROTOCOL_UDP, 0, &udp(b"hello world"));
        frame[38..40].copy_from_slice(&10u16.to_be_bytes());
        let spot = locate(&frame).unwrap();
        assert_eq!(spot.end, 34 + 10);
        fill(&mut frame, &spot);
        assert_eq!(stored(&frame, spot.field), textbook(&frame, PROTOCOL_UDP, 34, 10, 40));
    }

    #[test]
    fn hostile_frames_are_refused_by_name() {
        let good = ipv4_frame(PROTOCOL_UDP, 0, &udp(b"hello"));
        assert!(locate(&good).is_ok());
        let with = |edit: &dyn Fn(&mut Vec<u8>)| {
            let mut frame = good.clone();
            edit(&mut frame);
            locate(&frame)
        };
        assert_eq!(locate(&[]), Err(Unplaceable::Truncated));
        assert_eq!(locate(&good[..13]), Err(Unplaceable::Truncated));
        assert_eq!(locate(&good[..14]), Err(Unplaceable::Truncated), "no IPv4 header at all");
        // A short frame of another type is not IPv4, whatever its length.
        let mut short_arp = good[..20].to_vec();
        short_arp[12..14].copy_from_slice(&[0x08, 0x06]);
        assert_eq!(locate(&short_arp), Err(Unplaceable::NotIpv4));
        assert_eq!(locate(&good[..33]), Err(Unplaceable::Truncated), "a cut IPv4 header");
        assert_eq!(with(&|f| f[12..14].copy_from_slice(&[0x86, 0xdd])), Err(Unplaceable::NotIpv4));
        assert_eq!(with(&|f| f[12..14].copy_from_slice(&[0x08, 0x06])), Err(Unplaceable::NotIpv4));
        assert_eq!(with(&|f| f[14] = 0x65), Err(Unplaceable::NotIpv4), "version 6");
        for ihl in 0..5u8 {
            assert_eq!(with(&|f| f[14] = 0x40 | ihl), Err(Unplaceable::BadHeaderLength), "ihl {ihl}");
        }
        assert_eq!(with(&|f| f[14] = 0x4f), Err(Unplaceable::Truncated), "a 60-byte header in a short frame");
        assert_eq!(with(&|f| f[16..18].copy_from_slice(&19u16.to_be_bytes())), Err(Unplaceable::BadTotalLength));
        assert_eq!(with(&|f| f[16..18].copy_from_slice(&34u16.to_be_bytes())), Err(Unplaceable::BadTotalLength));
        assert_eq!(with(&|f| f[16..18].copy_from_slice(&u16::MAX.to_be_bytes())), Err(Unplaceable::BadTotalLength));
        assert_eq!(with(&|f| f[20] = 0x20), Err(Unplaceable::Fragment), "more fragments");
        assert_eq!(with(&|f| f[20..22].copy_from_slice(&[0x40, 0x01])), Err(Unplaceable::Fragment), "an offset");
        assert_eq!(with(&|f| f[23] = 1), Err(Unplaceable::Protocol(1)), "ICMP");
        assert_eq!(with(&|f| f[23] = 47), Err(Unplaceable::Protocol(47)), "GRE");
        for udp_len in [0u16, 7, 14, 1000, u16::MAX] {
            assert_eq!(
                with(&|f| f[38..40].copy_from_slice(&udp_len.to_be_bytes())),
                Err(Unplaceable::BadUdpLength),
                "udp length {udp_len}"
            );
        }
        // A total length that leaves no room for the UDP header.
        assert_eq!(with(&|f| f[16..18].copy_from_slice(&27u16.to_be_bytes())), Err(Unplaceable::Truncated));
        // TCP shorter than its minimum header.
        let short_tcp = ipv4_frame(PROTOCOL_TCP, 0, &[0u8; 19]);
        assert_eq!(locate(&short_tcp), Err(Unplaceable::Truncated));
        // Options claimed that run into the L4 header: the UDP header then is cut.
        let mut options = good.clone();
        options[14] = 0x47;
        assert_eq!(locate(&options), Err(Unplaceable::Truncated));
        assert!(Unplaceable::Protocol(1).to_string().contains("protocol 1"));
        assert!(Unplaceable::Fragment.to_string().contains("fragment"));
    }

    #[test]
    fn every_cut_and_every_byte_value_of_a_frame_is_safe() {
        // Nothing panics and nothing placed lies outside the frame, whatever the bytes.
        let frame = ipv4_frame(PROTOCOL_TCP, 1, &tcp(&[7; 40]));
        for cut in 0..=frame.len() {
            let frame = &frame[..cut];
            if let Ok(spot) = locate(frame) {
                assert!(spot.start < spot.end && spot.field + 2 <= spot.end && spot.end <= frame.len());
            }
        }
        for at in 0..40 {
            for value in 0..=255u8 {
                let mut frame = frame.clone();
                frame[at] = value;
                if let Ok(spot) = locate(&frame) {
                    assert!(spot.field + 2 <= spot.end && spot.end <= frame.len());
                    let mut copy = frame.clone();
                    fill(&mut copy, &spot);
                    assert!(verify(&copy, &spot));
                }
            }
        }
    }

    #[test]
    fn the_doorbell_seeds_and_the_route_finishes() {
        let l4 = udp(&[0x33; 1400]);
        let mut expected = ipv4_frame(PROTOCOL_UDP, 2, &l4);
        let spot = locate(&expected).unwrap();
        fill(&mut expected, &spot);
        let mut frame = ipv4_frame(PROTOCOL_UDP, 2, &l4);
        let owed = prepare_tx(&mut frame, true).unwrap();
        assert_eq!(owed, TxChecksum::Owed(CsumRequest { start: 42, offset: 6 }));
        let TxChecksum::Owed(request) = owed else { unreachable!() };
        finish_tx(&mut frame, request).unwrap();
        assert_eq!(frame, expected);
        // Padding after the datagram: filled at once, the NIC would sum the padding.
        let mut padded = ipv4_frame(PROTOCOL_TCP, 0, &tcp(b"x"));
        padded.extend_from_slice(&[0; 5]);
        assert_eq!(prepare_tx(&mut padded, true), Ok(TxChecksum::Filled));
        // No NIC to finish it: filled at once.
        let mut frame = ipv4_frame(PROTOCOL_UDP, 2, &l4);
        assert_eq!(prepare_tx(&mut frame, false), Ok(TxChecksum::Filled));
        assert_eq!(frame, expected);
        let spot = locate(&padded).unwrap();
        assert!(verify(&padded, &spot));
        // What cannot be placed is refused, the frame untouched.
        let mut icmp = ipv4_frame(1, 0, &[8, 0, 0, 0, 0, 0, 0, 0]);
        let before = icmp.clone();
        assert_eq!(prepare_tx(&mut icmp, true), Err(Unplaceable::Protocol(1)));
        assert_eq!(icmp, before);
    }

    #[test]
    fn two_pieces_sum_as_one_at_every_split_odd_or_even() {
        let data: Vec<u8> = (0..301u32).map(|i| (i * 37 + 11) as u8).collect();
        for at in 0..=data.len() {
            let (first, second) = data.split_at(at);
            assert_eq!(fold(partial_of_two(first, second, 0)), fold(partial(&data, 0)), "split at {at}");
        }
    }

    /// The split path: headers in the kernel's copy, payload in the guest's slot. Placing,
    /// filling, seeding and finishing in two pieces give the frame the one-piece functions give.
    #[test]
    fn a_frame_in_two_pieces_gets_the_checksum_of_the_whole() {
        for (protocol, l4) in [(PROTOCOL_UDP, udp(&[0x42; 1400])), (PROTOCOL_TCP, tcp(&[0x17; 3001]))] {
            let whole = ipv4_frame(protocol, 1, &l4);
            let spot = locate(&whole).unwrap();
            let mut filled = whole.clone();
            fill(&mut filled, &spot);
            // Every split that keeps the checksum field (and UDP's length) in the headers.
            for at in [spot.field + 2, spot.field + 3, spot.start + 20, 134, whole.len() - 1, whole.len()] {
                let (mut headers, payload) = (whole[..at].to_vec(), whole[at..].to_vec());
                assert_eq!(locate_in_prefix(&headers, whole.len()), Ok(spot), "split at {at}");
                assert_eq!(prepare_tx_in_pieces(&mut headers, &payload, false), Ok(TxChecksum::Filled));
                assert_eq!([&headers[..], &payload[..]].concat(), filled, "filled, split at {at}");
                let mut headers = whole[..at].to_vec();
                let owed = prepare_tx_in_pieces(&mut headers, &payload, true).unwrap();
                let TxChecksum::Owed(request) = owed else { panic!("owed to the NIC: {owed:?}") };
                finish_tx_in_pieces(&mut headers, &payload, request).unwrap();
                let finished = [&headers[..], &payload[..]].concat();
                assert!(verify(&finished, &spot), "seeded and finished, split at {at}");
            }
            // The field beyond the headers at hand: not placed.
            assert_eq!(locate_in_prefix(&whole[..spot.field + 1], whole.len()), Err(Unplaceable::Truncated));
            // A frame length below what the headers claim.
            assert_eq!(locate_in_prefix(&whole[..60], 59), Err(Unplaceable::BadTotalLength));
            let mut headers = whole[..60].to_vec();
            assert_eq!(complete_in_pieces(&mut headers, &whole[60..], 34, 60), Err(Unplaceable::BadOffsets));
        }
    }

    #[test]
    fn device_offsets_beyond_the_frame_are_refused() {
        let mut frame = ipv4_frame(PROTOCOL_UDP, 0, &udp(b"hi"));
        let len = frame.len();
        assert_eq!(complete(&mut frame, len, 0), Err(Unplaceable::BadOffsets));
        assert_eq!(complete(&mut frame, len - 1, 0), Err(Unplaceable::BadOffsets));
        assert_eq!(complete(&mut frame, 34, len), Err(Unplaceable::BadOffsets));
        assert_eq!(complete(&mut frame, usize::MAX, 6), Err(Unplaceable::BadOffsets));
        assert_eq!(complete(&mut frame, 34, usize::MAX), Err(Unplaceable::BadOffsets));
        assert_eq!(complete(&mut frame, len - 2, 0), Ok(()), "a field in the last two bytes");
    }
}
