//! The kernel command line: `key=value` words separated by spaces (keys in
//! [`hypercall_abi::cmdline`]). VMMs add words of their own (Firecracker `console=ttyS0
//! reboot=k panic=1 pci=off`, cloud-hypervisor `console=hvc0`), so a word that is not one of
//! the kernel's keys is ignored, and [`unknown_words`] lists them for the kernel to log once.
//! A malformed value of one of the kernel's own keys still fails the boot, naming the key.

use hypercall_abi::cmdline as keys;
use log::LevelFilter;

/// A fault the kernel triggers on purpose, to test that faults are reported (test images only).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TestFault {
    /// Write to an unmapped kernel address: `#PF`, vector 14.
    PageFault,
    /// Execute `ud2`: `#UD`, vector 6.
    InvalidOpcode,
    /// A Rust `panic!`.
    Panic,
}

/// Shared with the harness, which writes the value this module parses.
pub use hypercall_abi::cmdline::TxMode;

/// What the x87/MMX/SSE unit is to guests (`fpu=` on the command line).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum FpuPolicy {
    /// The unit is off (`CR0.EM`, no `CR4.OSFXSR`): any x87, MMX or SSE instruction traps and
    /// the guest is stopped. Guests are built soft-float, so none needs it; nothing to switch.
    #[default]
    Fault,
    /// Each guest has its own x87/MMX/SSE registers (an FXSAVE area), saved and restored on
    /// every switch between guests.
    Save,
}

impl FpuPolicy {
    /// The command-line spelling.
    pub fn name(self) -> &'static str {
        let [fault, save] = keys::FPU_POLICIES;
        match self {
            FpuPolicy::Fault => fault,
            FpuPolicy::Save => save,
        }
    }
}

/// A virtio-mmio device announced on the command line (`virtio_mmio.device=SIZE@BASE:IRQ`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MmioDevice {
    /// Physical address of its registers.
    pub base: u64,
    /// Bytes of its register window (the registers, 0x100 bytes, then its configuration).
    pub size: u64,
    /// Its interrupt line: a global system interrupt (IOAPIC input).
    pub irq: u32,
}

/// virtio-mmio devices the command line may announce (QEMU's `microvm` has 8 transports).
pub const MAX_MMIO_DEVICES: usize = 8;
/// Bytes of the virtio-mmio registers before the device configuration.
pub const MMIO_REGISTER_BYTES: u64 = 0x100;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct KernelArgs {
    pub log_level: LevelFilter,
    pub shutdown_after_secs: Option<u64>,
    pub test_fault: Option<TestFault>,
    pub tx_mode: TxMode,
    /// Per-packet stage stamps (benchmarks only).
    pub stamps: bool,
    /// Checksum offload through the vNICs and on the physical NIC (`csum=on|off`).
    pub csum_offload: bool,
    /// A line of each guest's own counters after every `stats:` line (`stats=per-guest`).
    pub stats_per_guest: bool,
    pub fpu: FpuPolicy,
    /// virtio-mmio devices, in the order announced (each `virtio_mmio.device` word adds one).
    pub virtio_mmio: [Option<MmioDevice>; MAX_MMIO_DEVICES],
}

impl Default for KernelArgs {
    fn default() -> Self {
        KernelArgs {
            log_level: LevelFilter::Info,
            shutdown_after_secs: None,
            test_fault: None,
            tx_mode: TxMode::Split,
            stamps: false,
            csum_offload: keys::CSUM_DEFAULT,
            stats_per_guest: false,
            fpu: FpuPolicy::Fault,
            virtio_mmio: [None; MAX_MMIO_DEVICES],
        }
    }
}

impl KernelArgs {
    /// The virtio-mmio devices announced.
    pub fn mmio_devices(&self) -> impl Iterator<Item = MmioDevice> + '_ {
        self.virtio_mmio.iter().flatten().copied()
    }
}

/// A number as Linux's `simple_strtoull(s, 0)` reads it where VMMs write one: `0x` hex or
/// decimal.
fn parse_number(text: &str) -> Option<u64> {
    match text.strip_prefix("0x").or_else(|| text.strip_prefix("0X")) {
        Some(hex) => u64::from_str_radix(hex, 16).ok(),
        None => text.parse().ok(),
    }
}

/// A size as Linux's `memparse` reads it: a number with an optional `K`, `M` or `G` suffix.
fn parse_size(text: &str) -> Option<u64> {
    let (digits, shift) = match text.as_bytes().last()? {
        b'K' | b'k' => (text.get(..text.len().checked_sub(1)?)?, 10),
        b'M' | b'm' => (text.get(..text.len().checked_sub(1)?)?, 20),
        b'G' | b'g' => (text.get(..text.len().checked_sub(1)?)?, 30),
        _ => (text, 0),
    };
    parse_number(digits)?.checked_mul(1 << shift)
}

/// One `virtio_mmio.device` value: `SIZE@BASE:IRQ[:ID]` (the platform-device id, which the
/// kernel has no use for, may follow). The window must hold the registers and not wrap.
pub fn parse_mmio_device(value: &str) -> Option<MmioDevice> {
    let (size, rest) = value.split_once('@')?;
    let mut fields = rest.split(':');
    let (base, irq, id) = (fields.next()?, fields.next()?, fields.next());
    if fields.next().is_some() || id.is_some_and(|id| id.parse::<u32>().is_err()) {
        return None;
    }
    let device = MmioDevice { base: parse_number(base)?, size: parse_size(size)?, irq: irq.parse().ok()? };
    let fits = device.size >= MMIO_REGISTER_BYTES && device.base.checked_add(device.size).is_some();
    (fits && device.base.is_multiple_of(4)).then_some(device)
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CmdlineError<'a> {
    BadValue { key: &'a str, value: &'a str, expected: &'static str },
}

impl core::fmt::Display for CmdlineError<'_> {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            Self::BadValue { key, value, expected } => {
                write!(f, "bad value `{value}` for `{key}`: expected {expected}")
            }
        }
    }
}

/// Whether `key` is one of the kernel's own keys.
fn is_kernel_key(key: &str) -> bool {
    [
        keys::LOG,
        keys::SHUTDOWN_AFTER,
        keys::TEST_FAULT,
        keys::TX,
        keys::STAMPS,
        keys::CSUM,
        keys::STATS,
        keys::FPU,
        keys::VIRTIO_MMIO_DEVICE,
    ]
    .contains(&key)
}

/// The words of `cmdline` the kernel ignores: not `key=value`, or a key it does not have.
pub fn unknown_words(cmdline: &str) -> impl Iterator<Item = &str> {
    cmdline.split_ascii_whitespace().filter(|word| word.split_once('=').is_none_or(|(key, _)| !is_kernel_key(key)))
}

/// The kernel's settings from `cmdline`; words that are not its keys are skipped (see
/// [`unknown_words`]); the last value of a key counts, except `virtio_mmio.device`, of which
/// each word adds a device.
pub fn parse(cmdline: &str) -> Result<KernelArgs, CmdlineError<'_>> {
    let mut args = KernelArgs::default();
    for word in cmdline.split_ascii_whitespace() {
        let Some((key, value)) = word.split_once('=').filter(|(key, _)| is_kernel_key(key)) else { continue };
        match key {
            keys::LOG => {
                args.log_level = value.parse().map_err(|_| CmdlineError::BadValue {
                    key,
                    value,
                    expected: "off, error, warn, info, debug or trace",
                })?;
            }
            keys::SHUTDOWN_AFTER => {
                let secs: u64 = value
                    .parse()
                    .ok()
                    .filter(|&s| s > 0 && s <= 86_400 * 365)
                    .ok_or(CmdlineError::BadValue { key, value, expected: "whole seconds, 1 or more" })?;
                args.shutdown_after_secs = Some(secs);
            }
            keys::TEST_FAULT => {
                let [page_fault, invalid_opcode, panic] = keys::TEST_FAULT_KINDS;
                args.test_fault = Some(match value {
                    v if v == page_fault => TestFault::PageFault,
                    v if v == invalid_opcode => TestFault::InvalidOpcode,
                    v if v == panic => TestFault::Panic,
                    _ => {
                        return Err(CmdlineError::BadValue {
                            key,
                            value,
                            expected: "page_fault, invalid_opcode or panic",
                        })
                    }
                });
            }
            keys::TX => {
                args.tx_mode = TxMode::from_name(value).ok_or(CmdlineError::BadValue {
                    key,
                    value,
                    expected: "copy, cow or split",
                })?;
            }
            keys::STAMPS => {
                args.stamps = match value {
                    "on" => true,
                    "off" => false,
                    _ => return Err(CmdlineError::BadValue { key, value, expected: "on or off" }),
                };
            }
            keys::CSUM => {
                args.csum_offload = match value {
                    "on" => true,
                    "off" => false,
                    _ => return Err(CmdlineError::BadValue { key, value, expected: "on or off" }),
                };
            }
            keys::STATS => {
                let [totals, per_guest] = keys::STATS_KINDS;
                args.stats_per_guest = match value {
                    v if v == per_guest => true,
                    v if v == totals => false,
                    _ => return Err(CmdlineError::BadValue { key, value, expected: "totals or per-guest" }),
                };
            }
            keys::FPU => {
                let [fault, save] = keys::FPU_POLICIES;
                args.fpu = match value {
                    v if v == fault => FpuPolicy::Fault,
                    v if v == save => FpuPolicy::Save,
                    _ => return Err(CmdlineError::BadValue { key, value, expected: "fault or save" }),
                };
            }
            keys::VIRTIO_MMIO_DEVICE => {
                let device = parse_mmio_device(value).ok_or(CmdlineError::BadValue {
                    key,
                    value,
                    expected: "SIZE@BASE:IRQ[:ID] (as 4K@0xc0001000:5), a window of at least 256 bytes",
                })?;
                let free = args.virtio_mmio.iter_mut().find(|slot| slot.is_none()).ok_or(CmdlineError::BadValue {
                    key,
                    value,
                    expected: "at most 8 virtio-mmio devices",
                })?;
                *free = Some(device);
            }
            // `is_kernel_key` let only the keys above through.
            _ => {}
        }
    }
    Ok(args)
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing, clippy::arithmetic_side_effects)]
mod tests {
    use super::*;

    #[test]
    fn empty_gives_defaults() {
        assert_eq!(parse("").unwrap(), KernelArgs::default());
        assert_eq!(parse("   ").unwrap(), KernelArgs::default());
    }

    #[test]
    fn every_option_parses() {
        let args = parse(" log=debug  shutdown_after=3 test_fault=page_fault ").unwrap();
        assert_eq!(args.log_level, LevelFilter::Debug);
        assert_eq!(args.shutdown_after_secs, Some(3));
        assert_eq!(args.test_fault, Some(TestFault::PageFault));
        assert_eq!(parse("test_fault=invalid_opcode").unwrap().test_fault, Some(TestFault::InvalidOpcode));
        assert_eq!(parse("test_fault=panic").unwrap().test_fault, Some(TestFault::Panic));
        assert_eq!(parse("tx=cow").unwrap().tx_mode, TxMode::Cow);
        assert_eq!(parse("tx=split").unwrap().tx_mode, TxMode::Split);
        assert_eq!(parse("").unwrap().tx_mode, TxMode::Split);
        assert_eq!(parse("").unwrap().tx_mode, TxMode::default());
        assert!(parse("stamps=on").unwrap().stamps);
        assert!(!parse("").unwrap().stamps);
        assert!(parse("stamps=yes").is_err());
        assert!(parse("csum=on").unwrap().csum_offload);
        assert!(!parse("csum=off").unwrap().csum_offload);
        assert_eq!(parse("").unwrap().csum_offload, keys::CSUM_DEFAULT);
        assert!(parse("csum=1").is_err());
        assert!(parse("stats=per-guest").unwrap().stats_per_guest);
        assert!(!parse("stats=totals").unwrap().stats_per_guest);
        assert!(!parse("").unwrap().stats_per_guest);
        assert!(matches!(parse("stats=all"), Err(CmdlineError::BadValue { key: "stats", .. })));
        assert_eq!(parse("fpu=save").unwrap().fpu, FpuPolicy::Save);
        assert_eq!(parse("fpu=fault").unwrap().fpu, FpuPolicy::Fault);
        assert_eq!(parse("").unwrap().fpu, FpuPolicy::Fault);
        for policy in [FpuPolicy::Fault, FpuPolicy::Save] {
            assert_eq!(parse(&format!("fpu={}", policy.name())).unwrap().fpu, policy);
        }
    }

    #[test]
    fn mistakes_are_named() {
        // Words of VMMs (and typos) are ignored and listed; the kernel's keys still count.
        let firecracker = "console=ttyS0 reboot=k panic=1 pci=off quiet log=debug shutdown=3";
        assert_eq!(parse(firecracker).unwrap().log_level, LevelFilter::Debug);
        assert_eq!(
            unknown_words(firecracker).collect::<std::vec::Vec<_>>(),
            ["console=ttyS0", "reboot=k", "panic=1", "pci=off", "quiet", "shutdown=3"]
        );
        assert_eq!(unknown_words("log=info tx=cow").count(), 0);
        assert!(matches!(parse("log=loud"), Err(CmdlineError::BadValue { key: "log", value: "loud", .. })));
        assert!(matches!(parse("shutdown_after=0"), Err(CmdlineError::BadValue { .. })));
        assert!(matches!(parse("shutdown_after=-1"), Err(CmdlineError::BadValue { .. })));
        assert!(matches!(parse("shutdown_after=3s"), Err(CmdlineError::BadValue { .. })));
        assert!(matches!(parse("test_fault=gp"), Err(CmdlineError::BadValue { .. })));
        assert!(matches!(parse("tx=zero"), Err(CmdlineError::BadValue { key: "tx", .. })));
        assert!(matches!(parse("fpu=lazy"), Err(CmdlineError::BadValue { key: "fpu", expected: "fault or save", .. })));
    }

    #[test]
    fn virtio_mmio_devices_as_vmms_announce_them() {
        // Firecracker's form, and QEMU microvm's (acpi=off), beside VMM words.
        let args =
            parse("console=ttyS0 virtio_mmio.device=4K@0xc0001000:5 virtio_mmio.device=512@0xfeb00e00:12").unwrap();
        let devices: std::vec::Vec<_> = args.mmio_devices().collect();
        assert_eq!(
            devices,
            [
                MmioDevice { base: 0xc000_1000, size: 4096, irq: 5 },
                MmioDevice { base: 0xfeb0_0e00, size: 512, irq: 12 },
            ]
        );
        assert_eq!(unknown_words("virtio_mmio.device=4K@0xc0001000:5 quiet").collect::<std::vec::Vec<_>>(), ["quiet"]);
        assert_eq!(parse("").unwrap().mmio_devices().count(), 0);
        // An id may follow; sizes take K, M, G; the base may be decimal.
        assert_eq!(parse_mmio_device("1k@4096:7:3"), Some(MmioDevice { base: 4096, size: 1024, irq: 7 }));
        assert_eq!(
            parse_mmio_device("0x200@0XFEB00000:16"),
            Some(MmioDevice { base: 0xfeb0_0000, size: 512, irq: 16 })
        );
        assert_eq!(parse_mmio_device("1M@0x1000:1").map(|d| d.size), Some(1 << 20));
    }

    #[test]
    fn malformed_virtio_mmio_devices_fail_naming_the_key() {
        for bad in [
            "4K@0xc0001000",           // no IRQ
            "4K0xc0001000:5",          // no @
            "@0xc0001000:5",           // no size
            "4X@0xc0001000:5",         // unknown suffix
            "4K@0xc000100g:5",         // not hex
            "4K@0xc0001000:-1",        // negative IRQ
            "4K@0xc0001000:5:x",       // bad id
            "4K@0xc0001000:5:1:2",     // too many fields
            "128@0xc0001000:5",        // smaller than the registers
            "4K@0xfffffffffffff000:5", // wraps
            "4K@0xc0001002:5",         // misaligned
            "99999999999G@0x1000:5",   // size overflows
        ] {
            let word = std::format!("virtio_mmio.device={bad}");
            assert!(
                matches!(parse(&word), Err(CmdlineError::BadValue { key: "virtio_mmio.device", .. })),
                "{bad} accepted"
            );
        }
        let nine =
            (0..9).map(|i| std::format!("virtio_mmio.device=512@{}:5", 4096 * (i + 1))).collect::<std::vec::Vec<_>>();
        let nine_words = nine.join(" ");
        let error = parse(&nine_words).unwrap_err();
        assert!(std::format!("{error}").contains("at most 8 virtio-mmio devices"), "{error}");
        assert_eq!(parse(&nine[..8].join(" ")).unwrap().mmio_devices().count(), 8);
    }
}
