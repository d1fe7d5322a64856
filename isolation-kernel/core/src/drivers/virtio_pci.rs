//! The modern (virtio 1.x) PCI transport's structures: common configuration, notifications,
//! ISR status and device configuration, each announced by a vendor capability naming a BAR, an
//! offset and a length (virtio 1.2, 4.1.4). Where each lies is worked out here from a snapshot of
//! configuration space and the BARs; the driver maps and touches them.

use super::pci::{Bar, ConfigSpace, BAR_COUNT, CAPABILITY_VENDOR};
use virtio_spec::pci::CapCfgType;

/// `struct virtio_pci_cap`'s fields, as offsets from the capability.
const CAP_LEN: usize = 2;
const CAP_CFG_TYPE: usize = 3;
const CAP_BAR: usize = 4;
const CAP_OFFSET: usize = 8;
const CAP_LENGTH: usize = 12;
/// `struct virtio_pci_notify_cap`'s multiplier follows the common part.
const NOTIFY_CAP_MULTIPLIER: usize = 16;
const CAP_BYTES: u8 = 16;
const NOTIFY_CAP_BYTES: u8 = 20;

/// Bytes of the common configuration the driver uses: through `queue_device` (offset 0x30, 8
/// bytes); later fields exist only with features the driver does not take.
pub const COMMON_CONFIG_USED_BYTES: u64 = 0x38;
/// A notification is a 16-bit write.
const NOTIFY_BYTES: u64 = 2;

/// One structure's place in physical memory.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Region {
    pub phys: u64,
    pub len: u64,
}

/// Where the four structures of a modern virtio-pci device lie.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ModernLayout {
    pub common: Region,
    pub notify: Region,
    /// Bytes between the notification addresses of consecutive `queue_notify_off` values.
    pub notify_multiplier: u32,
    pub isr: Region,
    pub device: Region,
}

/// Why a device's capabilities do not describe a usable modern transport.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LayoutError {
    /// No common-configuration capability: not a modern device (perhaps legacy only).
    NotModern,
    /// A required structure has no capability the driver can use.
    Missing(&'static str),
    /// The capability is shorter than its structure's fields.
    ShortCapability(&'static str),
    /// The structure is not inside an assigned memory BAR (an I/O BAR, a missing BAR, or past
    /// the BAR's end).
    OutsideBar { what: &'static str, bar: u8 },
    /// The structure is shorter than the fields the driver uses, or misaligned.
    BadRegion(&'static str),
}

impl core::fmt::Display for LayoutError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            LayoutError::NotModern => write!(f, "no virtio common-configuration capability (not a modern device)"),
            LayoutError::Missing(what) => write!(f, "no usable {what} capability"),
            LayoutError::ShortCapability(what) => write!(f, "the {what} capability is truncated"),
            LayoutError::OutsideBar { what, bar } => write!(f, "the {what} structure is not inside memory BAR{bar}"),
            LayoutError::BadRegion(what) => write!(f, "the {what} structure is too short or misaligned"),
        }
    }
}

/// What a structure must satisfy: its name, the bytes the driver uses, its alignment.
struct Requirement {
    what: &'static str,
    min_len: u64,
    align: u64,
}

const COMMON: Requirement = Requirement { what: "common configuration", min_len: COMMON_CONFIG_USED_BYTES, align: 4 };
const NOTIFY: Requirement = Requirement { what: "notification", min_len: NOTIFY_BYTES, align: 2 };
const ISR: Requirement = Requirement { what: "ISR status", min_len: 1, align: 1 };
/// virtio-net's configuration: the MAC address (6 bytes) is all the driver reads.
const DEVICE: Requirement = Requirement { what: "device configuration", min_len: 6, align: 4 };

/// One vendor capability, read from configuration space.
struct VirtioCap {
    cfg_type: CapCfgType,
    bar: u8,
    offset: u32,
    length: u32,
    /// Bytes the capability says it has (`cap_len`).
    cap_len: u8,
    at: usize,
}

fn read_cap(config: &ConfigSpace, at: u8) -> Option<VirtioCap> {
    let at = usize::from(at);
    let field = |offset: usize| at.checked_add(offset);
    Some(VirtioCap {
        cap_len: config.u8(field(CAP_LEN)?)?,
        cfg_type: CapCfgType::from(config.u8(field(CAP_CFG_TYPE)?)?),
        bar: config.u8(field(CAP_BAR)?)?,
        offset: config.u32(field(CAP_OFFSET)?)?,
        length: config.u32(field(CAP_LENGTH)?)?,
        at,
    })
}

impl VirtioCap {
    /// The structure's region, if it meets `need` and lies inside its BAR.
    fn region(&self, bars: &[Bar; BAR_COUNT], need: &Requirement) -> Result<Region, LayoutError> {
        if self.cap_len < CAP_BYTES {
            return Err(LayoutError::ShortCapability(need.what));
        }
        let (offset, len) = (u64::from(self.offset), u64::from(self.length));
        if len < need.min_len || !offset.is_multiple_of(need.align) {
            return Err(LayoutError::BadRegion(need.what));
        }
        let outside = LayoutError::OutsideBar { what: need.what, bar: self.bar };
        let bar = bars.get(usize::from(self.bar)).ok_or(outside)?;
        let phys = bar.memory_range(offset, len).ok_or(outside)?;
        Ok(Region { phys, len })
    }
}

/// Finds the modern transport's structures. Of several capabilities of one type, the first
/// usable one counts (the device lists them in its order of preference); a structure whose only
/// capabilities are unusable is reported with the first one's fault.
pub fn modern_layout(config: &ConfigSpace, bars: &[Bar; BAR_COUNT]) -> Result<ModernLayout, LayoutError> {
    let caps =
        || config.capabilities().filter(|&(id, _)| id == CAPABILITY_VENDOR).filter_map(|(_, at)| read_cap(config, at));
    if !caps().any(|c| c.cfg_type == CapCfgType::Common) {
        return Err(LayoutError::NotModern);
    }
    let find = |cfg_type: CapCfgType, need: &Requirement| -> Result<(Region, VirtioCap), LayoutError> {
        let mut first_error = None;
        for cap in caps().filter(|c| c.cfg_type == cfg_type) {
            match cap.region(bars, need) {
                Ok(region) => return Ok((region, cap)),
                Err(e) => first_error = first_error.or(Some(e)),
            }
        }
        Err(first_error.unwrap_or(LayoutError::Missing(need.what)))
    };
    let (common, _) = find(CapCfgType::Common, &COMMON)?;
    let (notify, notify_cap) = find(CapCfgType::Notify, &NOTIFY)?;
    if notify_cap.cap_len < NOTIFY_CAP_BYTES {
        return Err(LayoutError::ShortCapability(NOTIFY.what));
    }
    let notify_multiplier = notify_cap
        .at
        .checked_add(NOTIFY_CAP_MULTIPLIER)
        .and_then(|at| config.u32(at))
        .ok_or(LayoutError::ShortCapability(NOTIFY.what))?;
    let (isr, _) = find(CapCfgType::Isr, &ISR)?;
    let (device, _) = find(CapCfgType::Device, &DEVICE)?;
    Ok(ModernLayout { common, notify, notify_multiplier, isr, device })
}

impl ModernLayout {
    /// Physical address to write to notify the queue whose `queue_notify_off` the device gave,
    /// if it lies inside the notification structure.
    pub fn notify_address(&self, queue_notify_off: u16) -> Option<u64> {
        let offset = u64::from(queue_notify_off).checked_mul(u64::from(self.notify_multiplier))?;
        if offset.checked_add(NOTIFY_BYTES)? > self.notify.len {
            return None;
        }
        self.notify.phys.checked_add(offset)
    }
}

#[cfg(test)]
mod tests {
    use super::super::pci::tests::config_with;
    use super::*;

    /// The body of a `virtio_pci_cap` (after id and next): cap_len, cfg_type, bar, id,
    /// padding, offset, length, then `extra` (the notify multiplier).
    fn cap(cfg_type: u8, bar: u8, offset: u32, length: u32, extra: &[u8]) -> Vec<u8> {
        let mut body = vec![(16 + extra.len()) as u8, cfg_type, bar, 0, 0, 0];
        body.extend_from_slice(&offset.to_le_bytes());
        body.extend_from_slice(&length.to_le_bytes());
        body.extend_from_slice(extra);
        body
    }

    /// QEMU 7.2's virtio-net-pci with disable-legacy=on: MSI-X in BAR1, the four structures in
    /// 64-bit BAR4, 4 KiB apart (common, ISR, device, notify with multiplier 4).
    fn qemu_like() -> (ConfigSpace, [Bar; BAR_COUNT]) {
        let caps = [
            cap(1, 4, 0x0000, 0x1000, &[]),
            cap(3, 4, 0x1000, 0x1000, &[]),
            cap(4, 4, 0x2000, 0x1000, &[]),
            cap(2, 4, 0x3000, 0x1000, &4u32.to_le_bytes()),
            cap(5, 0, 0, 0, &[0; 4]),
        ];
        let list: Vec<(u8, &[u8])> = caps.iter().map(|c| (CAPABILITY_VENDOR, c.as_slice())).collect();
        let mut bars = [Bar::None; BAR_COUNT];
        bars[1] = Bar::Memory { base: 0xe000_0000, size: 0x1000, wide: false };
        bars[4] = Bar::Memory { base: 0xe000_4000, size: 0x4000, wide: true };
        (config_with(&list), bars)
    }

    #[test]
    fn qemu_layout_is_found() {
        let (config, bars) = qemu_like();
        let layout = modern_layout(&config, &bars).unwrap();
        assert_eq!(layout.common, Region { phys: 0xe000_4000, len: 0x1000 });
        assert_eq!(layout.isr, Region { phys: 0xe000_5000, len: 0x1000 });
        assert_eq!(layout.device, Region { phys: 0xe000_6000, len: 0x1000 });
        assert_eq!(layout.notify, Region { phys: 0xe000_7000, len: 0x1000 });
        assert_eq!(layout.notify_multiplier, 4);
        assert_eq!(layout.notify_address(0), Some(0xe000_7000));
        assert_eq!(layout.notify_address(1), Some(0xe000_7004));
        assert_eq!(layout.notify_address(1023), Some(0xe000_7ffc));
        assert_eq!(layout.notify_address(1024), None, "past the notification structure");
        let huge = ModernLayout { notify_multiplier: u32::MAX, ..layout };
        assert_eq!(huge.notify_address(u16::MAX), None);
    }

    #[test]
    fn legacy_devices_are_not_modern() {
        let (_, bars) = qemu_like();
        assert_eq!(modern_layout(&config_with(&[(0x11, &[0; 10])]), &bars), Err(LayoutError::NotModern));
    }

    #[test]
    fn structures_outside_memory_bars_or_short_are_refused() {
        let (_, mut bars) = qemu_like();
        let with = |common: Vec<u8>| {
            let caps = [
                common,
                cap(3, 4, 0x1000, 4, &[]),
                cap(4, 4, 0x2000, 8, &[]),
                cap(2, 4, 0x3000, 4, &2u32.to_le_bytes()),
            ];
            let list: Vec<(u8, &[u8])> = caps.iter().map(|c| (CAPABILITY_VENDOR, c.as_slice())).collect();
            config_with(&list)
        };
        assert_eq!(
            modern_layout(&with(cap(1, 4, 0x3f00, 0x200, &[])), &bars),
            Err(LayoutError::OutsideBar { what: "common configuration", bar: 4 })
        );
        assert_eq!(
            modern_layout(&with(cap(1, 7, 0, 0x100, &[])), &bars),
            Err(LayoutError::OutsideBar { what: "common configuration", bar: 7 })
        );
        assert_eq!(
            modern_layout(&with(cap(1, 4, 0, 0x20, &[])), &bars),
            Err(LayoutError::BadRegion("common configuration"))
        );
        assert_eq!(
            modern_layout(&with(cap(1, 4, 2, 0x100, &[])), &bars),
            Err(LayoutError::BadRegion("common configuration"))
        );
        let ok = modern_layout(&with(cap(1, 4, 0, 0x38, &[])), &bars).unwrap();
        assert_eq!(ok.notify_address(1), Some(0xe000_7002));
        assert_eq!(ok.notify_address(2), None, "a 4-byte notification structure holds two queues");
        bars[4] = Bar::Io { base: 0xc000, size: 0x4000 };
        assert!(matches!(modern_layout(&with(cap(1, 4, 0, 0x38, &[])), &bars), Err(LayoutError::OutsideBar { .. })));
    }

    #[test]
    fn the_first_usable_capability_of_a_type_wins_and_missing_ones_are_named() {
        let (_, bars) = qemu_like();
        // Two notification capabilities: one in (unassigned) BAR2, then a usable one.
        let caps = [
            cap(1, 4, 0, 0x1000, &[]),
            cap(2, 2, 0, 0x1000, &4u32.to_le_bytes()),
            cap(2, 4, 0x3000, 0x1000, &4u32.to_le_bytes()),
            cap(3, 4, 0x1000, 0x1000, &[]),
        ];
        let list: Vec<(u8, &[u8])> = caps.iter().map(|c| (CAPABILITY_VENDOR, c.as_slice())).collect();
        assert_eq!(modern_layout(&config_with(&list), &bars), Err(LayoutError::Missing("device configuration")));
        let mut caps = caps.to_vec();
        caps.push(cap(4, 4, 0x2000, 0x1000, &[]));
        let list: Vec<(u8, &[u8])> = caps.iter().map(|c| (CAPABILITY_VENDOR, c.as_slice())).collect();
        assert_eq!(modern_layout(&config_with(&list), &bars).unwrap().notify.phys, 0xe000_7000);
        // A notification capability too short to hold its multiplier.
        let short = [cap(1, 4, 0, 0x1000, &[]), cap(2, 4, 0x3000, 0x1000, &[])];
        let list: Vec<(u8, &[u8])> = short.iter().map(|c| (CAPABILITY_VENDOR, c.as_slice())).collect();
        assert_eq!(modern_layout(&config_with(&list), &bars), Err(LayoutError::ShortCapability("notification")));
    }
}
