//! What the virtio-net driver asks of a device, whatever the transport: the features it
//! accepts and the header each frame carries with them.

use virtio_spec::{le128, net, FeatureBits};

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
/// only where offered). Nothing else: no offloads, no mergeable buffers, no event index.
pub fn negotiate_net(offered: u64, generation: Generation) -> Result<Negotiated, FeatureError> {
    let offered = flags(offered);
    if !offered.contains(net::F::MAC) {
        return Err(FeatureError::NoMac);
    }
    let wanted = match generation {
        Generation::Legacy => net::F::MAC | flags(LEGACY_F_ANY_LAYOUT),
        Generation::Modern if offered.contains(net::F::VERSION_1) => net::F::MAC | net::F::VERSION_1,
        Generation::Modern => return Err(FeatureError::NotVersion1),
    };
    let accepted = offered & wanted;
    debug_assert!(accepted.requirements_satisfied());
    let net_header_len = match generation {
        Generation::Legacy => LEGACY_NET_HEADER_LEN,
        Generation::Modern => MODERN_NET_HEADER_LEN,
    };
    Ok(Negotiated { features: bits(accepted), net_header_len })
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

    #[test]
    fn legacy_takes_mac_and_any_layout_only() {
        let offered = MAC | MRG_RXBUF | ANY_LAYOUT | EVENT_IDX | 0xff;
        let n = negotiate_net(offered, Generation::Legacy).unwrap();
        assert_eq!(n, Negotiated { features: MAC | ANY_LAYOUT, net_header_len: 10 });
        assert_eq!(negotiate_net(MAC, Generation::Legacy).unwrap().features, MAC);
    }

    #[test]
    fn modern_needs_version_1_and_takes_nothing_else() {
        let offered = MAC | MRG_RXBUF | EVENT_IDX | VERSION_1 | ACCESS_PLATFORM;
        let n = negotiate_net(offered, Generation::Modern).unwrap();
        assert_eq!(n, Negotiated { features: MAC | VERSION_1, net_header_len: 12 });
        assert_eq!(negotiate_net(MAC, Generation::Modern), Err(FeatureError::NotVersion1));
    }

    #[test]
    fn a_device_without_a_mac_is_refused() {
        assert_eq!(negotiate_net(VERSION_1, Generation::Modern), Err(FeatureError::NoMac));
        assert_eq!(negotiate_net(ANY_LAYOUT, Generation::Legacy), Err(FeatureError::NoMac));
    }
}
