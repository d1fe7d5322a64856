//! `virtio_pci::modern_layout` and `ConfigSpace::msix_table`: a device's configuration space
//! and BARs, as the kernel reads them, turned into the places the driver maps and writes.
//!
//! Configuration spaces are built from capability lists around QEMU's real one (vendor
//! capabilities of every type, offsets and lengths at the edges of their BARs, multipliers that
//! overflow, lists that loop or point into the header) or taken raw. Whatever is accepted must
//! lie inside an assigned memory BAR, hold the fields the driver touches, and every notification
//! address the layout gives must lie inside the notification structure.

use crate::engine::{Target, Verdict};
use crate::features::Features;
use crate::source::Source;
use crate::{check, check_eq};
use kernel_core::drivers::pci::{Bar, ConfigSpace, MsixError, BAR_COUNT, CAPABILITY_MSIX, CAPABILITY_VENDOR};
use kernel_core::drivers::virtio_pci::{modern_layout, LayoutError, Region, COMMON_CONFIG_USED_BYTES};

pub const TARGET: Target = Target {
    name: "virtio_pci",
    checks: "accepted structures and MSI-X tables lie inside an assigned memory BAR and hold the fields used; \
             every notification address lies inside the notification structure; no input panics",
    max_len: 512,
    dictionary: &[],
    seeds,
    run,
};

const OFFSETS: [u32; 6] = [0, 0x1000, 0x2000, 0x3000, 0x3ffe, u32::MAX];
const LENGTHS: [u32; 6] = [0, 2, 0x38, 0x1000, 0x4000, u32::MAX];
const BASES: [u64; 4] = [0xe000_0000, 0x1_0000_0000, u64::MAX - 0xfff, 0];
const SIZES: [u64; 4] = [0x1000, 0x4000, 1 << 40, u64::MAX];

fn seeds(_: &crate::real::RealInputs) -> Vec<Vec<u8>> {
    // Structured, 5 capabilities: QEMU's common (BAR4 +0), ISR (+0x1000), device (+0x2000) and
    // notification (+0x3000, multiplier 4) structures, then MSI-X (3 entries in BAR1); the
    // BARs as QEMU's. Raw: all zeros (no capability list).
    let qemu = vec![
        1, 4, //
        1, 0, 0, 0, 0, 3, 2, //
        1, 2, 0, 0, 1, 3, 2, //
        1, 3, 0, 0, 2, 3, 2, //
        1, 1, 0, 1, 3, 3, 0, 2, //
        0, 1, 0, 2, //
        0,
    ];
    vec![qemu, vec![0; 300]]
}

/// The BARs: BAR1 and BAR4 memory (QEMU's places) unless the input says otherwise.
fn bars(source: &mut Source<'_>) -> [Bar; BAR_COUNT] {
    let mut bars = [Bar::None; BAR_COUNT];
    bars[1] = Bar::Memory { base: 0xe000_0000, size: 0x1000, wide: false };
    bars[4] = Bar::Memory { base: 0xe000_4000, size: 0x4000, wide: true };
    for _ in 0..source.below(3) {
        let index = source.below(BAR_COUNT);
        bars[index] = match source.below(3) {
            0 => Bar::None,
            1 => Bar::Io { base: 0xc000, size: 0x40 },
            _ => Bar::Memory { base: source.u64_near(&BASES), size: source.u64_near(&SIZES), wide: source.bool() },
        };
    }
    bars
}

/// A configuration space with capabilities chained from 0x40, each 4-byte aligned.
fn structured(source: &mut Source<'_>) -> ConfigSpace {
    let mut space = [0u8; 256];
    space[0x06] = 0x10;
    space[0x34] = 0x40;
    let mut at = 0x40usize;
    let count = 1 + source.below(8);
    for i in 0..count {
        let (id, body) = match source.below(6) {
            0 => {
                // MSI-X: control (entries - 1), table offset/BIR, PBA.
                let entries = source.u32_near(&[0, 2, 0x7ff]) as u16;
                let table = source.u32_near(&[0x0001, 0x0801, 0x0ff9, 0x0004]);
                let mut body = entries.to_le_bytes().to_vec();
                body.extend_from_slice(&table.to_le_bytes());
                body.extend_from_slice(&[0; 4]);
                (CAPABILITY_MSIX, body)
            }
            _ => {
                let cfg_type = source.pick(&[1u8, 2, 3, 4, 5, 9, 0]);
                let bar = source.pick(&[4u8, 1, 0, 2, 6, 0xff]);
                let notify = cfg_type == 2 && source.below(4) != 0;
                let cap_len = if notify { 20 } else { source.pick(&[16u8, 20, 12, 0]) };
                let mut body = vec![cap_len, cfg_type, bar, 0, 0, 0];
                body.extend_from_slice(&source.u32_near(&OFFSETS).to_le_bytes());
                body.extend_from_slice(&source.u32_near(&LENGTHS).to_le_bytes());
                if notify {
                    body.extend_from_slice(&source.u32_near(&[4, 2, 0, u32::MAX]).to_le_bytes());
                }
                (CAPABILITY_VENDOR, body)
            }
        };
        let len = (2 + body.len()).next_multiple_of(4);
        if at + len > space.len() {
            break;
        }
        space[at] = id;
        let next = if i + 1 == count { 0 } else { at + len };
        // Now and then a pointer back (a cycle) or into the header.
        space[at + 1] = match source.below(16) {
            0 => 0x40,
            1 => 0x10,
            _ => next as u8,
        };
        space[at + 2..at + 2 + body.len()].copy_from_slice(&body);
        at += len;
    }
    ConfigSpace(space)
}

/// `region` lies inside one of the memory BARs.
fn inside_a_bar(region: Region, bars: &[Bar; BAR_COUNT]) -> bool {
    let end = region.phys.checked_add(region.len);
    bars.iter().any(|bar| match *bar {
        Bar::Memory { base, size, .. } => {
            region.phys >= base && end.zip(base.checked_add(size)).is_some_and(|(end, bar_end)| end <= bar_end)
        }
        _ => false,
    })
}

fn run(input: &[u8], features: &mut Features) -> Verdict {
    let mut source = Source::new(input);
    let config = match source.below(2) {
        0 => {
            let mut raw = [0u8; 256];
            let bytes = source.bytes(256);
            raw[..bytes.len()].copy_from_slice(bytes);
            ConfigSpace(raw)
        }
        _ => structured(&mut source),
    };
    let bars = bars(&mut source);
    check!(config.capabilities().count() <= 48, "capability walk bounded");
    match modern_layout(&config, &bars) {
        Ok(layout) => {
            features.note("layout", 0);
            for (name, region) in
                [("common", layout.common), ("notify", layout.notify), ("isr", layout.isr), ("device", layout.device)]
            {
                check!(inside_a_bar(region, &bars), "{name} {region:?} outside every memory BAR {bars:?}");
            }
            check!(layout.common.len >= COMMON_CONFIG_USED_BYTES, "common configuration too short: {layout:?}");
            check!(layout.device.len >= 6 && layout.notify.len >= 2 && layout.isr.len >= 1, "short region {layout:?}");
            for queue in [0u16, 1, 2, 1023, 1024, u16::MAX] {
                if let Some(address) = layout.notify_address(queue) {
                    let offset = address.checked_sub(layout.notify.phys);
                    let inside = offset.and_then(|o| o.checked_add(2)).is_some_and(|end| end <= layout.notify.len)
                        && offset == Some(u64::from(queue) * u64::from(layout.notify_multiplier));
                    check!(inside, "queue {queue}: notification at {address:#x} outside {:?}", layout.notify);
                }
            }
        }
        Err(error) => {
            let _ = error.to_string();
            features.note(
                "layout",
                match error {
                    LayoutError::NotModern => 1,
                    LayoutError::Missing(_) => 2,
                    LayoutError::ShortCapability(_) => 3,
                    LayoutError::OutsideBar { .. } => 4,
                    LayoutError::BadRegion(_) => 5,
                },
            );
        }
    }
    match config.msix_table(&bars) {
        None => {
            check_eq!(config.find_capability(CAPABILITY_MSIX), None, "an MSI-X capability was missed");
            features.note("msix", 0);
        }
        Some(Ok(table)) => {
            features.note("msix", 1);
            let region = Region { phys: table.phys, len: u64::from(table.entries) * 16 };
            check!(table.entries >= 1 && inside_a_bar(region, &bars), "MSI-X table {table:?} outside {bars:?}");
        }
        Some(Err(MsixError::Truncated)) => features.note("msix", 2),
        Some(Err(MsixError::TableOutsideBar { .. })) => features.note("msix", 3),
    }
    Ok(())
}
