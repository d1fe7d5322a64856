//! What the virtio-net driver asks of a device, whatever the transport: the features it
//! accepts and the header each frame carries with them.

use virtio_spec::{le128, net, FeatureBits};

/// `virtio_net_hdr` flags byte: the device (tx) or driver (rx) must finish the checksum from
/// `csum_start` to the end, into `csum_start + csum_offset`; and (rx) the checksum is valid.
const HDR_F_NEEDS_CSUM: u8 = net::HdrF::NEEDS_CSUM.bits();
const HDR_F_DATA_VALID: u8 = net::HdrF::DATA_VALID.bits();
/// Offsets of `csum_start` and `csum_offset` in `virtio_net_hdr` (after flags, gso_type,
/// hdr_len, gso_size).
const HDR_CSUM_START: usize = 6;
const HDR_CSUM_OFFSET: usize = 8;
const _: () = assert!(HDR_CSUM_OFFSET + 2 == 10);

/// The transport generation a device speaks.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Generation {
    /// virtio 0.9.5 (legacy PCI): 32 feature bits, no `FEATURES_OK` handshake.
    Legacy,
    /// virtio 1.x (modern PCI, MMIO version 2): `VIRTIO_F_VERSION_1` must be accepted.
    Modern,
}

/// Features agreed with the device, and what follows from them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Negotiated {
    /// The feature bits the driver writes back.
    pub features: u64,
    /// Bytes of `virtio_net_hdr` before every frame: 12 with `VIRTIO_F_VERSION_1` (which always
    /// has `num_buffers`), 10 for a legacy device without mergeable receive buffers.
    pub net_header_len: usize,
    /// `VIRTIO_NET_F_CSUM`: the device finishes checksums of frames sent with `NEEDS_CSUM`.
    pub tx_csum: bool,
    /// `VIRTIO_NET_F_GUEST_CSUM`: received frames may carry `NEEDS_CSUM` or `DATA_VALID`.
    pub rx_csum: bool,
}

/// Why the driver cannot drive a device.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FeatureError {
    /// The device has no MAC address of its own (`VIRTIO_NET_F_MAC`).
    NoMac,
    /// A modern transport whose device does not offer `VIRTIO_F_VERSION_1`.
    NotVersion1,
}

impl core::fmt::Display for FeatureError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            FeatureError::NoMac => write!(f, "device offers no MAC address (VIRTIO_NET_F_MAC)"),
            FeatureError::NotVersion1 => write!(f, "modern transport without VIRTIO_F_VERSION_1"),
        }
    }
}

/// `VIRTIO_F_ANY_LAYOUT`, a legacy-only bit that `virtio_spec` (virtio 1.x) does not name.
const LEGACY_F_ANY_LAYOUT: u64 = 1 << 27;
const LEGACY_NET_HEADER_LEN: usize = 10;
const MODERN_NET_HEADER_LEN: usize = 12;

fn flags(bits: u64) -> net::F {
    net::F::from_bits_retain(le128::from_ne(u128::from(bits)))
}

fn bits(flags: net::F) -> u64 {
    // Every feature the driver takes is among the first 64.
    (flags.bits().to_ne() & u128::from(u64::MAX)) as u64
}

/// The features the driver accepts from `offered`: the MAC, and `VERSION_1` on a modern
/// transport (any-layout on a legacy one, which the two-descriptor transmit chain relies on
/// only where offered); with `checksum_offload`, the checksum offloads `CSUM` and
/// `GUEST_CSUM` where offered. Nothing else: no segmentation offloads, no mergeable buffers,
/// no event index.
pub fn negotiate_net(offered: u64, generation: Generation, checksum_offload: bool) -> Result<Negotiated, FeatureError> {
    let offered = flags(offered);
    if !offered.contains(net::F::MAC) {
        return Err(FeatureError::NoMac);
    }
    let mut wanted = match generation {
        Generation::Legacy => net::F::MAC | flags(LEGACY_F_ANY_LAYOUT),
        Generation::Modern if offered.contains(net::F::VERSION_1) => net::F::MAC | net::F::VERSION_1,
        Generation::Modern => return Err(FeatureError::NotVersion1),
    };
    if checksum_offload {
        wanted |= net::F::CSUM | net::F::GUEST_CSUM;
    }
    let accepted = offered & wanted;
    debug_assert!(accepted.requirements_satisfied());
    let net_header_len = match generation {
        Generation::Legacy => LEGACY_NET_HEADER_LEN,
        Generation::Modern => MODERN_NET_HEADER_LEN,
    };
    Ok(Negotiated {
        features: bits(accepted),
        net_header_len,
        tx_csum: accepted.contains(net::F::CSUM),
        rx_csum: accepted.contains(net::F::GUEST_CSUM),
    })
}

/// The checksum part of a transmitted frame's `virtio_net_hdr` (the first 10 bytes; the rest
/// stays zero): `NEEDS_CSUM` with `(csum_start, csum_offset)`, or nothing.
pub fn tx_header(needs_csum: Option<(u16, u16)>) -> [u8; 10] {
    match needs_csum {
        None => [0; 10],
        Some((start, offset)) => {
            let ([start_low, start_high], [offset_low, offset_high]) = (start.to_le_bytes(), offset.to_le_bytes());
            [HDR_F_NEEDS_CSUM, 0, 0, 0, 0, 0, start_low, start_high, offset_low, offset_high]
        }
    }
}

/// What a received frame's `virtio_net_hdr` says of its checksum.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RxChecksum {
    /// Nothing: the checksum is as it came.
    Unknown,
    /// `DATA_VALID`: the device checked it.
    Valid,
    /// `NEEDS_CSUM`: the frame is good but its checksum is partial (the field holds the pseudo
    /// header's sum); the sum runs from `start` to the end, into `start + offset`. The offsets
    /// are the device's: checked against the frame before use.
    Partial { start: usize, offset: usize },
}

/// Reads the checksum flags of a received frame's header (a header too short says nothing).
pub fn rx_checksum(header: &[u8]) -> RxChecksum {
    let field = |at: usize| match header.get(at..at.saturating_add(2)) {
        Some(&[low, high]) => Some(usize::from(u16::from_le_bytes([low, high]))),
        _ => None,
    };
    match header.first() {
        Some(flags) if flags & HDR_F_NEEDS_CSUM != 0 => match (field(HDR_CSUM_START), field(HDR_CSUM_OFFSET)) {
            (Some(start), Some(offset)) => RxChecksum::Partial { start, offset },
            _ => RxChecksum::Unknown,
        },
        Some(flags) if flags & HDR_F_DATA_VALID != 0 => RxChecksum::Valid,
        _ => RxChecksum::Unknown,
    }
}

/// The longest `virtio_net_hdr` any transport puts before a frame (buffers are sized for it).
pub const MAX_NET_HEADER_LEN: usize = MODERN_NET_HEADER_LEN;

#[cfg(test)]
mod tests {
    use super::*;

    const MAC: u64 = 1 << 5;
    const MRG_RXBUF: u64 = 1 << 15;
    const ANY_LAYOUT: u64 = 1 << 27;
    const EVENT_IDX: u64 = 1 << 29;
    const VERSION_1: u64 = 1 << 32;
    const ACCESS_PLATFORM: u64 = 1 << 33;

    const CSUM: u64 = 1 << 0;
    const GUEST_CSUM: u64 = 1 << 1;
    const GUEST_TSO4: u64 = 1 << 7;
    const HOST_TSO4: u64 = 1 << 11;

    fn plain(features: u64, net_header_len: usize) -> Negotiated {
        Negotiated { features, net_header_len, tx_csum: false, rx_csum: false }
    }

    #[test]
    fn legacy_takes_mac_and_any_layout_only() {
        let offered = MAC | MRG_RXBUF | ANY_LAYOUT | EVENT_IDX | 0xff;
        let n = negotiate_net(offered, Generation::Legacy, false).unwrap();
        assert_eq!(n, plain(MAC | ANY_LAYOUT, 10));
        assert_eq!(negotiate_net(MAC, Generation::Legacy, false).unwrap().features, MAC);
    }

    #[test]
    fn modern_needs_version_1_and_takes_nothing_else() {
        let offered = MAC | MRG_RXBUF | EVENT_IDX | VERSION_1 | ACCESS_PLATFORM | CSUM | GUEST_CSUM;
        let n = negotiate_net(offered, Generation::Modern, false).unwrap();
        assert_eq!(n, plain(MAC | VERSION_1, 12));
        assert_eq!(negotiate_net(MAC, Generation::Modern, false), Err(FeatureError::NotVersion1));
    }

    #[test]
    fn checksum_offloads_are_taken_when_asked_and_offered_on_every_generation() {
        let offered = MAC | CSUM | GUEST_CSUM | GUEST_TSO4 | HOST_TSO4 | ANY_LAYOUT | VERSION_1;
        for (generation, base, len) in
            [(Generation::Legacy, MAC | ANY_LAYOUT, 10), (Generation::Modern, MAC | VERSION_1, 12)]
        {
            let n = negotiate_net(offered, generation, true).unwrap();
            assert_eq!(
                n,
                Negotiated { features: base | CSUM | GUEST_CSUM, net_header_len: len, tx_csum: true, rx_csum: true }
            );
            // Only what is offered: a device without them (QEMU's user network) gives neither.
            let n = negotiate_net(offered & !(CSUM | GUEST_CSUM), generation, true).unwrap();
            assert_eq!(n, plain(base, len));
            let n = negotiate_net(offered & !GUEST_CSUM, generation, true).unwrap();
            assert!(n.tx_csum && !n.rx_csum);
        }
    }

    #[test]
    fn a_device_without_a_mac_is_refused() {
        assert_eq!(negotiate_net(VERSION_1, Generation::Modern, true), Err(FeatureError::NoMac));
        assert_eq!(negotiate_net(ANY_LAYOUT, Generation::Legacy, false), Err(FeatureError::NoMac));
    }

    #[test]
    fn checksum_headers_round_trip() {
        assert_eq!(tx_header(None), [0; 10]);
        let header = tx_header(Some((34, 6)));
        assert_eq!(header, [1, 0, 0, 0, 0, 0, 34, 0, 6, 0]);
        assert_eq!(rx_checksum(&header), RxChecksum::Partial { start: 34, offset: 6 });
        assert_eq!(rx_checksum(&[2, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0]), RxChecksum::Valid);
        assert_eq!(rx_checksum(&[0; 12]), RxChecksum::Unknown);
        assert_eq!(rx_checksum(&[]), RxChecksum::Unknown);
        assert_eq!(rx_checksum(&[1, 0, 0]), RxChecksum::Unknown, "a cut header");
        // NEEDS_CSUM wins over DATA_VALID, as the offsets must be honoured.
        assert_eq!(
            rx_checksum(&[3, 0, 0, 0, 0, 0, 0xff, 0xff, 0xff, 0xff]),
            RxChecksum::Partial { start: 65535, offset: 65535 }
        );
    }
}
