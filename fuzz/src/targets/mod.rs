//! The fuzz targets, one per hostile-input surface of the kernel's portable library.

pub mod cpio;
pub mod csum;
pub mod desc;
pub mod elf;
pub mod guest_mem;
pub mod http;
pub mod image_cfg;
pub mod memmap;
pub mod pvh;
pub mod ring;
pub mod vinstr;
pub mod virtio_pci;
pub mod vswitch;

use crate::engine::Target;

/// Every target, in the order `all` runs them.
pub const ALL: &[Target] = &[
    vinstr::TARGET,
    desc::TARGET,
    ring::TARGET,
    guest_mem::TARGET,
    cpio::TARGET,
    elf::TARGET,
    image_cfg::TARGET,
    pvh::TARGET,
    memmap::TARGET,
    vswitch::TARGET,
    virtio_pci::TARGET,
    http::TARGET,
    csum::TARGET,
];

pub fn find(name: &str) -> Option<&'static Target> {
    ALL.iter().find(|t| t.name == name)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::{fuzz, Limits};
    use crate::real::RealInputs;

    /// Outcomes each target must reach from its built-in seeds in a short run with a fixed
    /// seed: proof that it exercises acceptance and each kind of refusal, not one path only.
    /// (tag, value) as the target reports them; see each target's `features.note` calls.
    const REACHES: &[(&str, &[(&str, u64)])] = &[
        // StringIo, Other, hlt, Truncated, TooLong, `out dx, eax` alone (10 + 8 * len + width).
        ("vinstr", &[("result", 1), ("result", 2), ("result", 200), ("result", 301), ("result", 302), ("result", 22)]),
        // Accepted and every refusal, for tx; accepted, outside, crossing, too short for rx.
        (
            "desc",
            &[
                ("tx", 0),
                ("tx", 1),
                ("tx", 2),
                ("tx", 3),
                ("tx", 4),
                ("tx", 5),
                ("rx", 0),
                ("rx", 3),
                ("pending ok", 0),
            ],
        ),
        (
            "ring",
            &[
                ("tx offered", 0),
                ("tx offered", 4),
                ("tx offered", 100),
                ("tx offered", 101),
                ("tx garbage completion", 3),
                ("rx take", 1),
                ("rx take", 2),
                ("tx extra take", 0),
            ],
        ),
        (
            "guest_mem",
            &[
                ("add", 0),
                ("add", 4),
                ("validate", 0),
                ("validate", 1),
                ("validate", 3),
                ("validate", 4),
                ("validate", 5),
                ("prefix", 1),
            ],
        ),
        ("cpio", &[("error", 0), ("error", 1), ("error", 2), ("error", 3), ("error", 4), ("error", 5), ("entries", 3)]),
        ("elf", &[("segments", 2), ("error", 7), ("error", 10), ("error", 12), ("error", 13), ("error", 15)]),
        ("image_cfg", &[("record", 0), ("record", 1), ("error", 1), ("error", 2), ("error", 3), ("net", 1)]),
        (
            "pvh",
            &[
                ("cmdline ok", 1),
                ("cmdline error", 1),
                ("cmdline ignored words", 1),
                ("error", 2),
                ("error", 5),
                ("error", 6),
                ("error", 14),
            ],
        ),
        ("memmap", &[("too fragmented", 0), ("too fragmented", 1)]),
        ("vswitch", &[("add", 0), ("add", 4), ("deliver", 1), ("deliver", 6), ("deliver", 9), ("route", 812)]),
        // Accepted, not modern, missing, outside a BAR, bad region; MSI-X found and refused.
        (
            "virtio_pci",
            &[("layout", 0), ("layout", 1), ("layout", 2), ("layout", 4), ("layout", 5), ("msix", 1), ("msix", 3)],
        ),
        // Every refusal, every resource, both framed bodies, answers cut by the output budget.
        (
            "http",
            &[
                ("rejection", 0),
                ("rejection", 1),
                ("rejection", 2),
                ("resource", 0),
                ("resource", 1),
                ("resource", 2),
                ("resource", 3),
                ("body", 1),
                ("body", 2),
                ("status", 405),
                ("cut", 1),
            ],
        ),
        // UDP and TCP placed, and refusals: not IPv4, cut, fragments, other protocols, UDP
        // lengths; seeded for a NIC; device offsets in and outside the frame.
        (
            "csum",
            &[
                ("locate", 0),
                ("locate", 1),
                ("locate", 10),
                ("locate", 11),
                ("locate", 14),
                ("locate", 15),
                ("locate", 16),
                ("prepare", 1),
                ("complete", 0),
                ("complete", 1),
            ],
        ),
    ];

    #[test]
    fn every_target_passes_a_short_run_and_reaches_its_outcomes() {
        assert_eq!(REACHES.len(), ALL.len(), "every target has its expected outcomes");
        let limits = Limits { time: None, executions: Some(5_000), progress_every: None };
        for (name, outcomes) in REACHES {
            let target = find(name).expect("a target of that name");
            let report = fuzz(target, &RealInputs::default(), 1, &limits);
            assert!(report.failure.is_none(), "{name}: {:?}", report.failure);
            for &(tag, value) in *outcomes {
                assert!(report.features.contains(&(tag, value)), "{name} never reached {tag}={value}");
            }
        }
    }

    #[test]
    fn names_are_unique_and_described() {
        for (i, target) in ALL.iter().enumerate() {
            assert!(ALL[..i].iter().all(|t| t.name != target.name), "{} twice", target.name);
            assert!(!target.checks.is_empty() && target.max_len > 0);
            assert!(find(target.name).is_some());
        }
        assert!(find("all").is_none(), "`all` means every target");
    }
}
