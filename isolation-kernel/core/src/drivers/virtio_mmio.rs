//! What a virtio-mmio register window says it is (virtio 1.2, 4.2.2): the magic value, the
//! transport version and the device type, checked before the driver touches anything else.

/// "virt", little-endian.
pub const MAGIC: u32 = 0x7472_6976;
/// The modern (virtio 1.x) register layout; 1 is the legacy one.
pub const VERSION_MODERN: u32 = 2;
const VERSION_LEGACY: u32 = 1;
/// virtio device type 1: a network card.
pub const DEVICE_ID_NET: u32 = 1;

/// Why a virtio-mmio window cannot be driven as a network card.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MmioError {
    /// No virtio-mmio device answers there.
    NoDevice {
        magic: u32,
    },
    /// A legacy (version 1) transport, whose queue layout this driver does not speak; QEMU
    /// offers version 2 with `-global virtio-mmio.force-legacy=false`.
    Legacy,
    UnknownVersion(u32),
    /// A transport with nothing behind it (device id 0), or another kind of device.
    NotNet {
        device_id: u32,
    },
}

impl core::fmt::Display for MmioError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            MmioError::NoDevice { magic } => write!(f, "no virtio-mmio device (magic {magic:#x})"),
            MmioError::Legacy => {
                write!(f, "a legacy (version 1) virtio-mmio device (QEMU: -global virtio-mmio.force-legacy=false)")
            }
            MmioError::UnknownVersion(v) => write!(f, "virtio-mmio version {v}, not 2"),
            MmioError::NotNet { device_id: 0 } => write!(f, "an empty virtio-mmio transport"),
            MmioError::NotNet { device_id } => write!(f, "virtio device type {device_id}, not a network card"),
        }
    }
}

/// Checks the first three registers of a window for a modern virtio-mmio network card.
pub fn identify_net(magic: u32, version: u32, device_id: u32) -> Result<(), MmioError> {
    match (magic, version, device_id) {
        (MAGIC, VERSION_MODERN, DEVICE_ID_NET) => Ok(()),
        (MAGIC, VERSION_MODERN, device_id) => Err(MmioError::NotNet { device_id }),
        (MAGIC, VERSION_LEGACY, _) => Err(MmioError::Legacy),
        (MAGIC, version, _) => Err(MmioError::UnknownVersion(version)),
        (magic, _, _) => Err(MmioError::NoDevice { magic }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_a_modern_network_card_is_taken() {
        assert_eq!(identify_net(MAGIC, 2, 1), Ok(()));
        assert_eq!(identify_net(MAGIC, 2, 2), Err(MmioError::NotNet { device_id: 2 }));
        assert_eq!(identify_net(MAGIC, 2, 0), Err(MmioError::NotNet { device_id: 0 }));
        assert_eq!(identify_net(MAGIC, 1, 1), Err(MmioError::Legacy));
        assert_eq!(identify_net(MAGIC, 3, 1), Err(MmioError::UnknownVersion(3)));
        assert_eq!(identify_net(0xffff_ffff, 2, 1), Err(MmioError::NoDevice { magic: 0xffff_ffff }));
        assert!(MmioError::Legacy.to_string().contains("force-legacy=false"));
    }
}
