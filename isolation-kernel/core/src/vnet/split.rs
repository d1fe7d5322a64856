//! The split transmit path's one decision: where a frame divides into the headers the kernel
//! copies and checks, and the payload the NIC reads in place from the guest's tx slot.
//!
//! The kernel first copies the frame's first [`HEADER_PREFIX`] bytes (or the whole frame, if
//! shorter) into its own buffer; [`split_point`] then reads only that copy, never guest memory,
//! so a guest rewriting its slot meanwhile cannot change where the frame splits nor anything
//! the kernel checked. A header the copy shows to be malformed (a bad IPv4 header length, a
//! TCP data offset below 20, a layer cut short) is not parsed further: its bytes count as
//! payload, which only the sender's own packet depends on.

/// Bytes copied from the front of every frame before it is split: the longest headers the
/// kernel may read, Ethernet (14) + IPv4 with options (60) + TCP with options (60). A frame no
/// longer than this is copied whole.
pub const HEADER_PREFIX: usize = 14 + 60 + 60;

/// Frames up to this many bytes go out on the split path as on the copy path (copied into a
/// kernel buffer, completed at once, copied again into the NIC's buffer): for them two copies
/// cost less than the header copy, the three-piece chain and the completion deferred until the
/// NIC is done, with the interrupt that completion takes (the copy path takes none: its NIC
/// slots are taken back when needed). Per UDP echo of 1400 bytes (`cargo xtask bench dispatch`,
/// whole machine, stamps off) split costs 4,366 kernel instructions and copy 3,911, the
/// completion's interrupt 733 of them; with the literature's 0.093 cycles per byte copied and
/// the copy path's growth of ~0.44 per frame byte (`--tx-paths`) they meet near 1,900 bytes;
/// from the transmit stages plus that interrupt, near 2,500. The larger bound is taken: at the
/// standard MTU split sends as copy does, and it splits jumbo frames.
pub const COPY_WHOLE_MAX: u64 = 2560;
// A frame the split path splits is longer than its header copy.
const _: () = assert!(COPY_WHOLE_MAX >= HEADER_PREFIX as u64);

use super::wire::{
    ARP_IPV4, ETHERNET_HEADER as ETHERNET, ETHERTYPE_ARP, ETHERTYPE_IPV4, ETHERTYPE_IPV6, IPV4_FRAGMENT_OFFSET,
    IPV4_MIN_HEADER as IPV4_MIN, IPV6_HEADER as IPV6_FIXED, PROTOCOL_TCP as PROTO_TCP, PROTOCOL_UDP as PROTO_UDP,
    TCP_MIN_HEADER as TCP_MIN, UDP_HEADER as UDP,
};

/// How a frame goes out on the split path.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Split {
    /// The kernel's copy holds the whole frame: it is sent from the copy, as on the copy path.
    Whole,
    /// The first `header` bytes (the kernel's copy) are sent, then the rest from the guest's
    /// slot; `ETHERNET <= header < frame length`.
    At { header: usize },
}

/// Where a frame of `frame_len` bytes splits, from `prefix`, the kernel's copy of its first
/// `min(frame_len, HEADER_PREFIX)` bytes. `Whole` when the copy holds the whole frame (or,
/// for a caller's mistake, a frame shorter than its copy or an Ethernet header).
pub fn split_point(prefix: &[u8], frame_len: u64) -> Split {
    let copied = prefix.len();
    if frame_len <= copied as u64 || copied < ETHERNET {
        return Split::Whole;
    }
    Split::At { header: header_len(prefix) }
}

/// Bytes of `bytes` taken by the headers the kernel reads: Ethernet, then ARP, IPv4 or IPv6,
/// then a UDP or TCP header, each counted only if it is whole and well formed in `bytes`.
/// Always between `min(ETHERNET, len)` and `bytes.len()`.
pub fn header_len(bytes: &[u8]) -> usize {
    let Some(ethertype) = be16(bytes, 12) else { return bytes.len() };
    let network = match ethertype {
        ETHERTYPE_ARP => Some((ARP_IPV4, None)),
        ETHERTYPE_IPV4 => ipv4(bytes),
        ETHERTYPE_IPV6 => ipv6(bytes),
        _ => None,
    };
    // Each layer counts only if it is whole in `bytes`.
    let within = |len: usize| Some(len).filter(|&len| len <= bytes.len());
    let Some((end, transport)) =
        network.and_then(|(len, transport)| Some((within(ETHERNET.checked_add(len)?)?, transport)))
    else {
        return ETHERNET;
    };
    let transport_len = match transport {
        Some(PROTO_UDP) => Some(UDP),
        Some(PROTO_TCP) => {
            let offset = bytes.get(end.saturating_add(12)).map(|&b| usize::from(b >> 4));
            offset.and_then(|words| words.checked_mul(4)).filter(|&len| len >= TCP_MIN)
        }
        _ => None,
    };
    transport_len.and_then(|len| within(end.checked_add(len)?)).unwrap_or(end)
}

/// An IPv4 header at [`ETHERNET`]: its length and, unless it is a later fragment, its protocol.
fn ipv4(bytes: &[u8]) -> Option<(usize, Option<u8>)> {
    let first = *bytes.get(ETHERNET)?;
    let len = usize::from(first & 0x0f).checked_mul(4)?;
    if first >> 4 != 4 || len < IPV4_MIN {
        return None;
    }
    let fragment_offset = be16(bytes, ETHERNET.checked_add(6)?)? & IPV4_FRAGMENT_OFFSET;
    let protocol = *bytes.get(ETHERNET.checked_add(9)?)?;
    Some((len, (fragment_offset == 0).then_some(protocol)))
}

/// An IPv6 header at [`ETHERNET`]: its fixed length and its next header (extension headers
/// are not followed: they and what comes after them count as payload).
fn ipv6(bytes: &[u8]) -> Option<(usize, Option<u8>)> {
    let first = *bytes.get(ETHERNET)?;
    if first >> 4 != 6 {
        return None;
    }
    Some((IPV6_FIXED, Some(*bytes.get(ETHERNET.checked_add(6)?)?)))
}

fn be16(bytes: &[u8], at: usize) -> Option<u16> {
    let pair = bytes.get(at..at.checked_add(2)?)?;
    Some(u16::from_be_bytes([*pair.first()?, *pair.get(1)?]))
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing, clippy::arithmetic_side_effects)]
mod tests {
    use super::*;
    use alloc::vec;
    use alloc::vec::Vec;

    fn ethernet(ethertype: u16) -> Vec<u8> {
        let mut frame = vec![0xff; 6];
        frame.extend_from_slice(&[0x02, 0, 0, 0, 0, 1]);
        frame.extend_from_slice(&ethertype.to_be_bytes());
        frame
    }

    /// Ethernet + IPv4 (`ihl` words, protocol, fragment word) + `l4` bytes of transport header
    /// + `payload` bytes.
    fn ipv4_frame(ihl: u8, protocol: u8, fragment: u16, l4: &[u8], payload: usize) -> Vec<u8> {
        let mut frame = ethernet(ETHERTYPE_IPV4);
        let mut ip = vec![0u8; usize::from(ihl.max(5)) * 4]; // a hostile `ihl` below 5 still has 20 bytes after it
        ip[0] = 0x40 | ihl;
        ip[6..8].copy_from_slice(&fragment.to_be_bytes());
        ip[9] = protocol;
        frame.extend_from_slice(&ip);
        frame.extend_from_slice(l4);
        frame.extend(core::iter::repeat_n(0xab, payload));
        frame
    }

    fn tcp_header(data_offset_words: u8) -> Vec<u8> {
        let mut tcp = vec![0u8; usize::from(data_offset_words.max(5)) * 4];
        tcp[12] = data_offset_words << 4;
        tcp
    }

    /// The kernel's view: copy the prefix, then split.
    fn split(frame: &[u8]) -> Split {
        let copied = &frame[..frame.len().min(HEADER_PREFIX)];
        split_point(copied, frame.len() as u64)
    }

    #[test]
    fn udp_and_tcp_over_ipv4_split_after_the_transport_header() {
        assert_eq!(split(&ipv4_frame(5, PROTO_UDP, 0, &[0; 8], 1358)), Split::At { header: 42 });
        assert_eq!(split(&ipv4_frame(5, PROTO_TCP, 0, &tcp_header(5), 1400)), Split::At { header: 54 });
        // Options on both: 14 + 60 + 60, the longest, exactly the prefix.
        let longest = ipv4_frame(15, PROTO_TCP, 0, &tcp_header(15), 1000);
        assert_eq!(split(&longest), Split::At { header: HEADER_PREFIX });
        // Jumbo.
        assert_eq!(split(&ipv4_frame(5, PROTO_UDP, 0, &[0; 8], 8958)), Split::At { header: 42 });
    }

    #[test]
    fn ipv6_arp_and_other_ethertypes() {
        let mut v6 = ethernet(ETHERTYPE_IPV6);
        let mut ip = vec![0u8; 40];
        ip[0] = 0x60;
        ip[6] = PROTO_UDP;
        v6.extend_from_slice(&ip);
        v6.extend_from_slice(&[0; 8]);
        v6.extend(core::iter::repeat_n(0, 500));
        assert_eq!(split(&v6), Split::At { header: 14 + 40 + 8 });
        // An extension header (hop-by-hop, 0) is not followed.
        v6[14 + 6] = 0;
        assert_eq!(split(&v6), Split::At { header: 14 + 40 });
        let mut arp = ethernet(ETHERTYPE_ARP);
        arp.extend(core::iter::repeat_n(0, 28 + 200));
        assert_eq!(split(&arp), Split::At { header: 42 });
        let mut other = ethernet(0x88b5);
        other.extend(core::iter::repeat_n(0, 300));
        assert_eq!(split(&other), Split::At { header: 14 });
    }

    #[test]
    fn frames_no_longer_than_the_prefix_go_whole() {
        assert_eq!(split(&ipv4_frame(5, PROTO_UDP, 0, &[0; 8], 22)), Split::Whole); // 64 bytes
        assert_eq!(split(&ipv4_frame(5, PROTO_UDP, 0, &[0; 8], HEADER_PREFIX - 42)), Split::Whole);
        assert_eq!(split(&ipv4_frame(5, PROTO_UDP, 0, &[0; 8], HEADER_PREFIX - 41)), Split::At { header: 42 });
        assert_eq!(split_point(&[0; 10], 10), Split::Whole);
        // A copy shorter than an Ethernet header, or a frame shorter than its copy: the
        // caller's mistake, never a split that leaves the kernel's copy.
        assert_eq!(split_point(&[0; 10], 1000), Split::Whole);
        assert_eq!(split_point(&[0; 100], 50), Split::Whole);
    }

    #[test]
    fn malformed_layers_count_as_payload() {
        // IPv4 header length below 20 bytes, or a version that is not 4: Ethernet only.
        for ihl in 0..5 {
            assert_eq!(split(&ipv4_frame(ihl, PROTO_UDP, 0, &[0; 8], 300)), Split::At { header: 14 }, "ihl {ihl}");
        }
        let mut wrong_version = ipv4_frame(5, PROTO_UDP, 0, &[0; 8], 300);
        wrong_version[14] = 0x65;
        assert_eq!(split(&wrong_version), Split::At { header: 14 });
        // TCP data offset below 20 bytes: the IP header only.
        for words in 0..5 {
            let mut frame = ipv4_frame(5, PROTO_TCP, 0, &tcp_header(5), 300);
            frame[34 + 12] = words << 4;
            assert_eq!(split(&frame), Split::At { header: 34 }, "data offset {words}");
        }
        // A later fragment carries no transport header; the first does.
        assert_eq!(split(&ipv4_frame(5, PROTO_UDP, 0x0001, &[0; 8], 300)), Split::At { header: 34 });
        assert_eq!(split(&ipv4_frame(5, PROTO_UDP, 0x2000, &[0; 8], 300)), Split::At { header: 42 });
        // An unknown protocol: the IP header.
        assert_eq!(split(&ipv4_frame(5, 1, 0, &[0; 8], 300)), Split::At { header: 34 });
    }

    #[test]
    fn header_len_never_leaves_its_bytes() {
        // Every length of a few real and hostile prefixes: the result is within the bytes and
        // covers at least the Ethernet header when there is one.
        let frames = [
            ipv4_frame(15, PROTO_TCP, 0, &tcp_header(15), 50),
            ipv4_frame(5, PROTO_UDP, 0, &[0; 8], 50),
            ipv4_frame(15, PROTO_TCP, 0, &tcp_header(5), 0),
        ];
        for frame in &frames {
            for len in 0..=frame.len() {
                let got = header_len(&frame[..len]);
                assert!(got <= len && got >= len.min(ETHERNET), "len {len}: {got}");
            }
        }
    }

    #[test]
    fn hostile_prefixes_never_panic_and_stay_inside() {
        // Pseudo-random bytes with every ethertype and version nibble the parser looks at.
        let mut seed: u32 = 0x1234_5678;
        let mut next = || {
            seed ^= seed << 13;
            seed ^= seed >> 17;
            seed ^= seed << 5;
            seed
        };
        let ethertypes = [ETHERTYPE_IPV4, ETHERTYPE_IPV6, ETHERTYPE_ARP, 0, 0xffff];
        for round in 0..20_000u32 {
            let len = (next() as usize) % (HEADER_PREFIX + 1);
            let mut bytes: Vec<u8> = (0..len).map(|_| next() as u8).collect();
            if len >= 14 {
                let ethertype = ethertypes[round as usize % ethertypes.len()];
                bytes[12..14].copy_from_slice(&ethertype.to_be_bytes());
            }
            let got = header_len(&bytes);
            assert!(got <= len && got >= len.min(ETHERNET));
            let frame_len = u64::from(next() % 10_000);
            match split_point(&bytes, frame_len) {
                Split::Whole => assert!(frame_len <= len as u64 || len < ETHERNET),
                Split::At { header } => assert!(header >= ETHERNET && header <= len && (header as u64) < frame_len),
            }
        }
    }
}
