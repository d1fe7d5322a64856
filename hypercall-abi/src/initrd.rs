//! The initrd (QEMU `-initrd`, a PVH boot module) that carries an image's guests.
//!
//! It is a cpio archive in the "newc" format (so `cpio -t < initrd.cpio` lists it) holding
//! [`CONFIG_FILE`], the image config below, and one ELF file per app at `bin/<app>`.
//! `cargo xtask build` writes it from the image's TOML manifest; the kernel reads it at boot.
//!
//! The image config is line-based, because the kernel has no TOML parser: `#` starts a comment
//! line, and every other line is a record type followed by tab-separated `key=value` fields.
//!
//! With `→` standing for a tab:
//!
//! ```text
//! image→name=hello
//! guest→name=hello-0→app=hello→heap_kib=64→cpu_budget_ms=0→expect=exit:0→args=a b
//! ```
//!
//! A guest with a virtual NIC has `net=<mac>,<ipv4>/<prefix>,<gateway>[,<mtu>]` (for example
//! `net=02:00:00:00:00:10,10.0.2.16/24,10.0.2.2`; the MTU defaults to 1500), placed before
//! `args`.
//!
//! Optional, before `args`: `cpu_weight=<1..=16>` (its share of the CPU when busy, against the
//! other busy guests' weights; 1 when absent), and transmit rate limits, token buckets as
//! Firecracker's rate limiters have them: `tx_packets=<size>,<refill_time_ms>[,<one_time_burst>]`
//! (packets) and `tx_bytes=...` (bytes). A bucket holds `size` tokens, refills from empty to
//! full in `refill_time_ms` (continuously), and starts with `one_time_burst` extra tokens that
//! are used first and never refilled (see [`BucketSpec`]).
//!
//! Every number has a limit, checked by the parser (and by `cargo xtask` when it writes the
//! config): `heap_kib` at most [`MAX_HEAP_KIB`], `cpu_budget_ms` at most [`MAX_CPU_BUDGET_MS`],
//! `args` at most [`MAX_ARGS_LEN`] bytes, at most [`MAX_GUESTS`] guest records; a value beyond
//! its limit is an error naming the limit. [`heap_bytes`] and [`cpu_budget_ticks`] turn the
//! numbers into what the kernel uses, with checked arithmetic.
//!
//! `expect` is `exit:<code>`, `stopped:<kind>` (a [`StopKind`]: why the kernel stopped it),
//! `refused:<kind>` (a [`RefusalKind`]: why the kernel refused to load it), `running` (still
//! running at shutdown) or `any`. Kinds are matched exactly, never as text: the kernel prints
//! the kind beside the human-readable cause (`guest 3 bad stopped page_fault: page fault: ...`).
//! `cpu_budget_ms=0` means no CPU budget. `args` comes last and
//! may contain spaces (not tabs).

#![deny(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing, clippy::arithmetic_side_effects)]

use crate::vnic::{NetConfig, MAX_MTU, MIN_MTU, MTU};

/// Path of the image config inside the archive.
pub const CONFIG_FILE: &str = "image.cfg";
/// Directory of the app ELF files inside the archive.
pub const APP_DIR: &str = "bin/";
/// Longest guest or image name.
pub const MAX_NAME: usize = crate::boot_info::MAX_NAME_LEN;
/// Longest `args`, in bytes: what the boot-info page holds.
pub const MAX_ARGS_LEN: usize = crate::boot_info::MAX_ARGS_LEN;
/// Largest `heap_kib`: [`MAX_HEAP_SIZE`](crate::layout::MAX_HEAP_SIZE) in KiB (1 GiB).
pub const MAX_HEAP_KIB: u64 = crate::layout::MAX_HEAP_SIZE / BYTES_PER_KIB;
/// Largest `cpu_budget_ms`: one day. With it, the budget in TSC ticks fits in 64 bits for any
/// TSC frequency up to 213 GHz.
pub const MAX_CPU_BUDGET_MS: u64 = 24 * 60 * 60 * 1000;
/// Largest `cpu_weight`: a busy guest's turn is its weight times the kernel's quantum (10 ms),
/// so at most 160 ms, and busy guests' shares hold over any second.
pub const MAX_CPU_WEIGHT: u32 = 16;
/// Largest token-bucket `size` and `one_time_burst` (2^40: a TB of bytes, far beyond any NIC's
/// second); with it, the kernel's token arithmetic stays inside 64 bits.
pub const MAX_BUCKET_TOKENS: u64 = 1 << 40;
/// Largest `refill_time_ms`: one hour.
pub const MAX_REFILL_TIME_MS: u64 = 60 * 60 * 1000;
/// Most guest records one image config may hold.
pub const MAX_GUESTS: usize = 16_384;
const BYTES_PER_KIB: u64 = 1024;
const MILLIS_PER_SECOND: u128 = 1000;

/// Guest arguments `cargo xtask` adds from the manifest's `tcp_rx_kib` and `tcp_tx_kib`: the
/// receive and send buffer of each of the guest's TCP sockets, in KiB (`tcp_rx_kib=256`).
pub const TCP_RX_KIB_ARG: &str = "tcp_rx_kib";
pub const TCP_TX_KIB_ARG: &str = "tcp_tx_kib";
/// Largest TCP buffer, each direction, in KiB (the guest's stack holds sockets to it too).
pub const MAX_TCP_BUFFER_KIB: u64 = 16 * 1024;

/// A guest's heap in bytes, from its `heap_kib`; `None` beyond [`MAX_HEAP_KIB`].
pub fn heap_bytes(heap_kib: u64) -> Option<u64> {
    if heap_kib > MAX_HEAP_KIB {
        return None;
    }
    heap_kib.checked_mul(BYTES_PER_KIB)
}

/// A CPU budget in TSC ticks, from its `cpu_budget_ms` and the TSC frequency; `None` beyond
/// [`MAX_CPU_BUDGET_MS`] or if the ticks do not fit in 64 bits.
pub fn cpu_budget_ticks(budget_ms: u64, tsc_hz: u64) -> Option<u64> {
    if budget_ms > MAX_CPU_BUDGET_MS {
        return None;
    }
    // Two 64-bit factors cannot overflow 128 bits; the divisor is a non-zero constant.
    let ticks = u128::from(budget_ms).checked_mul(u128::from(tsc_hz))?.checked_div(MILLIS_PER_SECOND)?;
    u64::try_from(ticks).ok()
}

/// Declares a kind enum with its stable names: `ALL`, `as_str` and `parse` stay in step.
macro_rules! kinds {
    ($(#[$meta:meta])* $name:ident { $($(#[$vmeta:meta])* $variant:ident = $text:literal,)* }) => {
        $(#[$meta])*
        #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
        pub enum $name {
            $($(#[$vmeta])* $variant,)*
        }

        impl $name {
            /// Every kind, in declaration order.
            pub const ALL: &'static [$name] = &[$($name::$variant,)*];

            /// The stable name (in `expect =` and in the kernel's end lines).
            pub const fn as_str(self) -> &'static str {
                match self {
                    $($name::$variant => $text,)*
                }
            }

            pub fn parse(text: &str) -> Option<Self> {
                Self::ALL.iter().copied().find(|kind| kind.as_str() == text)
            }
        }

        impl core::fmt::Display for $name {
            fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
                f.write_str(self.as_str())
            }
        }
    };
}

kinds! {
    /// Why the kernel stopped a guest (the kernel's `GuestFault::kind`).
    StopKind {
        /// A virtual-instruction port used with an immediate-port `out`.
        ViNotDxForm = "vi_not_dx_form",
        /// `out` to a port outside the virtual-instruction range.
        PortOutsideRange = "port_outside_range",
        /// `in` from any port.
        PortRead = "port_read",
        /// `ins`/`outs`.
        StringIo = "string_io",
        /// `hlt`, `cli`, `wrmsr` and the like.
        PrivilegedInstruction = "privileged_instruction",
        /// Any other general-protection fault.
        GeneralProtection = "general_protection",
        /// A `#GP` whose instruction could not be read.
        InstructionUnreadable = "instruction_unreadable",
        /// x87/MMX/SSE while the kernel gives guests no floating point.
        FloatingPoint = "floating_point",
        /// Any other CPU exception (`#DE`, `#UD`, ...).
        Exception = "exception",
        PageFault = "page_fault",
        /// The guest used up its `cpu_budget_ms`.
        CpuBudget = "cpu_budget",
        /// A virtual instruction was given a pointer that is not the guest's.
        BadPointer = "bad_pointer",
        /// A write to an in-flight tx slot found no memory for its copy-on-write copy.
        CowCopyNoMemory = "cow_copy_no_memory",
        /// The first touch of a stack or heap page found no frame to back it.
        NoMemoryForPage = "no_memory_for_page",
    }
}

kinds! {
    /// Why the kernel refused to load a guest.
    RefusalKind {
        /// The image names an app the initrd does not hold.
        AppMissing = "app_missing",
        InitrdMalformed = "initrd_malformed",
        ElfTooShort = "elf_too_short",
        ElfBadMagic = "elf_bad_magic",
        ElfNot64Bit = "elf_not_64_bit",
        ElfNotLittleEndian = "elf_not_little_endian",
        ElfNotExecutable = "elf_not_executable",
        ElfWrongMachine = "elf_wrong_machine",
        ElfBadProgramHeaders = "elf_bad_program_headers",
        ElfTooManySegments = "elf_too_many_segments",
        ElfNoSegments = "elf_no_segments",
        ElfSegmentOutOfFile = "elf_segment_out_of_file",
        ElfFileSizeExceedsMemSize = "elf_file_size_exceeds_mem_size",
        ElfSegmentOutsideImageArea = "elf_segment_outside_image_area",
        ElfOverlappingSegments = "elf_overlapping_segments",
        ElfMisalignedSegment = "elf_misaligned_segment",
        ElfEntryNotExecutable = "elf_entry_not_executable",
        /// No frames or kernel memory left for the guest.
        OutOfMemory = "out_of_memory",
        /// The loader was asked to map a page twice or outside the user half.
        BadMapping = "bad_mapping",
        /// `heap_kib` beyond what the kernel maps.
        HeapTooLarge = "heap_too_large",
        /// `cpu_budget_ms` beyond its limit.
        CpuBudgetOutOfRange = "cpu_budget_out_of_range",
        /// The virtual NIC could not be built.
        VnicUnbuildable = "vnic_unbuildable",
        /// The vswitch refused the guest's NIC (say, a MAC another guest has).
        VswitchRefused = "vswitch_refused",
    }
}

/// What a guest is expected to do, checked by the kernel when the run ends.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Expect {
    Exit(i32),
    /// Stopped by the kernel for this kind of fault.
    Stopped(StopKind),
    /// Refused at load time for this kind of error (bad ELF files).
    Refused(RefusalKind),
    /// Still running when the kernel shuts down (servers).
    Running,
    Any,
}

impl core::fmt::Display for Expect {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            Expect::Exit(code) => write!(f, "exit:{code}"),
            Expect::Stopped(kind) => write!(f, "stopped:{kind}"),
            Expect::Refused(kind) => write!(f, "refused:{kind}"),
            Expect::Running => f.write_str("running"),
            Expect::Any => f.write_str("any"),
        }
    }
}

impl Expect {
    pub fn parse(text: &str) -> Option<Expect> {
        match text {
            "running" => Some(Expect::Running),
            "any" => Some(Expect::Any),
            _ => {
                if let Some(code) = text.strip_prefix("exit:") {
                    code.parse().ok().map(Expect::Exit)
                } else if let Some(kind) = text.strip_prefix("refused:") {
                    RefusalKind::parse(kind).map(Expect::Refused)
                } else {
                    text.strip_prefix("stopped:").and_then(StopKind::parse).map(Expect::Stopped)
                }
            }
        }
    }
}

/// A token bucket (Firecracker's `TokenBucket`): `size` tokens, refilled from empty to full in
/// `refill_time_ms` (continuously), plus `one_time_burst` tokens at the start that are used
/// first and never refilled. `size` is at least 1 and at most [`MAX_BUCKET_TOKENS`],
/// `refill_time_ms` 1 to [`MAX_REFILL_TIME_MS`], `one_time_burst` at most [`MAX_BUCKET_TOKENS`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BucketSpec {
    pub size: u64,
    pub refill_time_ms: u64,
    pub one_time_burst: u64,
}

impl BucketSpec {
    /// Parses `<size>,<refill_time_ms>[,<one_time_burst>]`, each within its limit.
    pub fn parse(text: &str) -> Option<BucketSpec> {
        let mut parts = text.split(',');
        let number = |part: Option<&str>, range: core::ops::RangeInclusive<u64>| {
            part?.parse::<u64>().ok().filter(|n| range.contains(n))
        };
        let size = number(parts.next(), 1..=MAX_BUCKET_TOKENS)?;
        let refill_time_ms = number(parts.next(), 1..=MAX_REFILL_TIME_MS)?;
        let one_time_burst = match parts.next() {
            None => 0,
            burst => number(burst, 0..=MAX_BUCKET_TOKENS)?,
        };
        parts.next().is_none().then_some(BucketSpec { size, refill_time_ms, one_time_burst })
    }

    /// Whether every number is within its limit (what [`BucketSpec::parse`] accepts).
    pub fn is_valid(&self) -> bool {
        (1..=MAX_BUCKET_TOKENS).contains(&self.size)
            && (1..=MAX_REFILL_TIME_MS).contains(&self.refill_time_ms)
            && self.one_time_burst <= MAX_BUCKET_TOKENS
    }
}

impl core::fmt::Display for BucketSpec {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        write!(f, "{},{}", self.size, self.refill_time_ms)?;
        if self.one_time_burst > 0 {
            write!(f, ",{}", self.one_time_burst)?;
        }
        Ok(())
    }
}

/// A guest's transmit rate limits: packets and bytes, each an optional token bucket.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TxLimits {
    pub packets: Option<BucketSpec>,
    pub bytes: Option<BucketSpec>,
}

impl TxLimits {
    pub fn is_limited(&self) -> bool {
        self.packets.is_some() || self.bytes.is_some()
    }
}

/// One guest of the image.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct GuestSpec<'a> {
    pub name: &'a str,
    pub app: &'a str,
    pub heap_kib: u64,
    pub cpu_budget_ms: u64,
    pub expect: Expect,
    pub net: Option<NetConfig>,
    /// 1 to [`MAX_CPU_WEIGHT`].
    pub cpu_weight: u32,
    pub tx_limits: TxLimits,
    pub args: &'a str,
}

impl core::fmt::Display for GuestSpec<'_> {
    /// The config line for this guest (without the newline).
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        write!(
            f,
            "guest\tname={}\tapp={}\theap_kib={}\tcpu_budget_ms={}\texpect={}",
            self.name, self.app, self.heap_kib, self.cpu_budget_ms, self.expect
        )?;
        if let Some(net) = &self.net {
            let [m0, m1, m2, m3, m4, m5] = net.mac;
            let [a, b, c, d] = net.ipv4;
            let [g0, g1, g2, g3] = net.gateway;
            write!(
                f,
                "\tnet={m0:02x}:{m1:02x}:{m2:02x}:{m3:02x}:{m4:02x}:{m5:02x},{a}.{b}.{c}.{d}/{},{g0}.{g1}.{g2}.{g3}",
                net.prefix_len
            )?;
            if u64::from(net.mtu) != MTU {
                write!(f, ",{}", net.mtu)?;
            }
        }
        if self.cpu_weight != 1 {
            write!(f, "\tcpu_weight={}", self.cpu_weight)?;
        }
        if let Some(bucket) = &self.tx_limits.packets {
            write!(f, "\ttx_packets={bucket}")?;
        }
        if let Some(bucket) = &self.tx_limits.bytes {
            write!(f, "\ttx_bytes={bucket}")?;
        }
        write!(f, "\targs={}", self.args)
    }
}

/// Parses `<mac>,<ipv4>/<prefix>,<gateway>[,<mtu>]`.
pub fn parse_net(text: &str) -> Option<NetConfig> {
    let mut parts = text.split(',');
    let (mac_text, addr_text, gateway_text) = (parts.next()?, parts.next()?, parts.next()?);
    let mtu = match parts.next() {
        None => MTU as u16,
        Some(mtu) => mtu.parse().ok().filter(|m| (MIN_MTU..=MAX_MTU).contains(&u64::from(*m)))?,
    };
    if parts.next().is_some() {
        return None;
    }
    let mut mac = [0u8; 6];
    let mut octets = mac_text.split(':');
    for byte in &mut mac {
        let part = octets.next()?;
        if part.len() != 2 {
            return None;
        }
        *byte = u8::from_str_radix(part, 16).ok()?;
    }
    if octets.next().is_some() || mac[0] & 1 != 0 {
        return None; // a multicast address cannot be a NIC's own
    }
    let (ip_text, prefix_text) = addr_text.split_once('/')?;
    let prefix_len: u8 = prefix_text.parse().ok().filter(|p| (1..=32).contains(p))?;
    Some(NetConfig { mac, ipv4: parse_ipv4(ip_text)?, prefix_len, gateway: parse_ipv4(gateway_text)?, mtu })
}

fn parse_ipv4(text: &str) -> Option<[u8; 4]> {
    let mut out = [0u8; 4];
    let mut parts = text.split('.');
    for byte in &mut out {
        *byte = parts.next()?.parse().ok()?;
    }
    parts.next().is_none().then_some(out)
}

/// One record of the image config.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Record<'a> {
    Image { name: &'a str },
    Guest(GuestSpec<'a>),
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ConfigError<'a> {
    UnknownRecord {
        line: usize,
        record: &'a str,
    },
    MissingField {
        line: usize,
        field: &'static str,
    },
    BadField {
        line: usize,
        field: &'a str,
    },
    /// A number beyond its limit (or beyond 64 bits).
    TooLarge {
        line: usize,
        field: &'static str,
        value: &'a str,
        max: u64,
    },
    /// `args` longer than [`MAX_ARGS_LEN`].
    ArgsTooLong {
        line: usize,
        len: usize,
        max: usize,
    },
    /// A guest record beyond [`MAX_GUESTS`].
    TooManyGuests {
        line: usize,
        max: usize,
    },
}

impl core::fmt::Display for ConfigError<'_> {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            ConfigError::UnknownRecord { line, record } => write!(f, "line {line}: unknown record `{record}`"),
            ConfigError::MissingField { line, field } => write!(f, "line {line}: missing field `{field}`"),
            ConfigError::BadField { line, field } => write!(f, "line {line}: bad or unknown field `{field}`"),
            ConfigError::TooLarge { line, field, value, max } => {
                write!(f, "line {line}: `{field}={value}` is out of range: at most {max}")
            }
            ConfigError::ArgsTooLong { line, len, max } => {
                write!(f, "line {line}: `args` is {len} bytes long: at most {max}")
            }
            ConfigError::TooManyGuests { line, max } => write!(f, "line {line}: more than {max} guests"),
        }
    }
}

/// Whether `name` may name a guest or an image: 1 to [`MAX_NAME`] letters, digits, `-`, `_`, `.`.
pub fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= MAX_NAME
        && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_' || b == b'.')
}

fn parse_guest(line: usize, fields: core::str::Split<'_, char>) -> Result<GuestSpec<'_>, ConfigError<'_>> {
    let (mut name, mut app, mut heap_kib, mut budget, mut expect, mut args) = (None, None, None, None, None, None);
    let (mut net, mut cpu_weight, mut tx_limits) = (None, None, TxLimits::default());
    for field in fields {
        let bad = ConfigError::BadField { line, field };
        let (key, value) = field.split_once('=').ok_or(bad)?;
        match key {
            "name" if valid_name(value) => name = Some(value),
            "app" if valid_name(value) => app = Some(value),
            "heap_kib" => heap_kib = Some(bounded(line, field, "heap_kib", value, MAX_HEAP_KIB)?),
            "cpu_budget_ms" => budget = Some(bounded(line, field, "cpu_budget_ms", value, MAX_CPU_BUDGET_MS)?),
            "expect" => expect = Some(Expect::parse(value).ok_or(bad)?),
            "net" => net = Some(parse_net(value).ok_or(bad)?),
            "cpu_weight" => {
                let weight = bounded(line, field, "cpu_weight", value, u64::from(MAX_CPU_WEIGHT))?;
                cpu_weight = Some(u32::try_from(weight).ok().filter(|&w| w >= 1).ok_or(bad)?);
            }
            "tx_packets" => tx_limits.packets = Some(BucketSpec::parse(value).ok_or(bad)?),
            "tx_bytes" => tx_limits.bytes = Some(BucketSpec::parse(value).ok_or(bad)?),
            "args" if value.len() > MAX_ARGS_LEN => {
                return Err(ConfigError::ArgsTooLong { line, len: value.len(), max: MAX_ARGS_LEN })
            }
            "args" => args = Some(value),
            _ => return Err(bad),
        }
    }
    let missing = |field| ConfigError::MissingField { line, field };
    Ok(GuestSpec {
        name: name.ok_or(missing("name"))?,
        app: app.ok_or(missing("app"))?,
        heap_kib: heap_kib.ok_or(missing("heap_kib"))?,
        cpu_budget_ms: budget.unwrap_or(0),
        expect: expect.unwrap_or(Expect::Any),
        net,
        cpu_weight: cpu_weight.unwrap_or(1),
        tx_limits,
        args: args.unwrap_or(""),
    })
}

/// The decimal number `value` of `field` (`name=value`), at most `max`.
fn bounded<'a>(
    line: usize,
    field: &'a str,
    name: &'static str,
    value: &'a str,
    max: u64,
) -> Result<u64, ConfigError<'a>> {
    let too_large = ConfigError::TooLarge { line, field: name, value, max };
    match value.parse::<u64>() {
        Ok(number) if number <= max => Ok(number),
        Ok(_) => Err(too_large),
        Err(e) if *e.kind() == core::num::IntErrorKind::PosOverflow => Err(too_large),
        Err(_) => Err(ConfigError::BadField { line, field }),
    }
}

/// The records of an image config, in order; each line's error names its line number (1-based).
pub fn parse_config(text: &str) -> impl Iterator<Item = Result<Record<'_>, ConfigError<'_>>> {
    let mut guests = 0usize;
    text.lines().enumerate().filter(|(_, l)| !l.trim().is_empty() && !l.starts_with('#')).map(move |(index, l)| {
        let line = index.saturating_add(1); // 1-based; an index never reaches usize::MAX
        let mut fields = l.split('\t');
        match fields.next().unwrap_or("") {
            "image" => {
                let field = fields.next().unwrap_or("");
                match field.strip_prefix("name=") {
                    Some(name) if valid_name(name) && fields.next().is_none() => Ok(Record::Image { name }),
                    _ => Err(ConfigError::BadField { line, field }),
                }
            }
            "guest" => {
                guests = guests.saturating_add(1);
                if guests > MAX_GUESTS {
                    return Err(ConfigError::TooManyGuests { line, max: MAX_GUESTS });
                }
                parse_guest(line, fields).map(Record::Guest)
            }
            record => Err(ConfigError::UnknownRecord { line, record }),
        }
    })
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing, clippy::arithmetic_side_effects)]
mod tests {
    extern crate std;
    use super::*;
    use std::format;
    use std::string::{String, ToString};
    use std::vec::Vec;

    #[test]
    fn written_lines_parse_back() {
        let spec = GuestSpec {
            name: "hello-3",
            app: "hello",
            heap_kib: 64,
            cpu_budget_ms: 500,
            expect: Expect::Stopped(StopKind::PageFault),
            net: Some(NetConfig {
                mac: [2, 0, 0, 0, 0, 0x1f],
                ipv4: [10, 0, 2, 16],
                prefix_len: 24,
                gateway: [10, 0, 2, 2],
                mtu: 1500,
            }),
            cpu_weight: 3,
            tx_limits: TxLimits {
                packets: Some(BucketSpec { size: 100, refill_time_ms: 1000, one_time_burst: 0 }),
                bytes: Some(BucketSpec { size: 150_000, refill_time_ms: 100, one_time_burst: 9000 }),
            },
            args: "a b  c",
        };
        let text = "# comment\nimage\tname=hello\n\n".to_string() + &spec.to_string() + "\n";
        assert!(text.contains("\tcpu_weight=3\ttx_packets=100,1000\ttx_bytes=150000,100,9000\targs="), "{text}");
        let records: Vec<_> = parse_config(&text).collect();
        assert_eq!(records, [Ok(Record::Image { name: "hello" }), Ok(Record::Guest(spec))]);
        // The defaults are not written, and read back as defaults.
        let plain = GuestSpec { cpu_weight: 1, tx_limits: TxLimits::default(), ..spec };
        let line = plain.to_string();
        assert!(!line.contains("cpu_weight") && !line.contains("tx_"));
        assert_eq!(parse_one(&line), Ok(plain));
    }

    #[test]
    fn weights_and_buckets_are_bounded() {
        assert_eq!(parse_one(&guest_line("cpu_weight", "16")).unwrap().cpu_weight, MAX_CPU_WEIGHT);
        assert!(matches!(parse_one(&guest_line("cpu_weight", "17")), Err(ConfigError::TooLarge { max: 16, .. })));
        assert!(matches!(parse_one(&guest_line("cpu_weight", "0")), Err(ConfigError::BadField { .. })));
        let bucket = |text: &str| BucketSpec::parse(text);
        assert_eq!(bucket("1,1"), Some(BucketSpec { size: 1, refill_time_ms: 1, one_time_burst: 0 }));
        assert_eq!(
            bucket("1099511627776,3600000,1099511627776"),
            Some(BucketSpec {
                size: MAX_BUCKET_TOKENS,
                refill_time_ms: MAX_REFILL_TIME_MS,
                one_time_burst: MAX_BUCKET_TOKENS
            })
        );
        for bad in ["", "0,10", "10,0", "10", "10,10,", "10,10,1,1", "1099511627777,1", "1,3600001", "-1,10", "1,1,x"] {
            assert_eq!(bucket(bad), None, "{bad}");
            assert!(matches!(parse_one(&guest_line("tx_bytes", bad)), Err(ConfigError::BadField { .. })), "{bad}");
        }
        let line = guest_line("tx_packets", "50,1000,10");
        let limited = parse_one(&line).unwrap();
        assert_eq!(limited.tx_limits.packets, Some(BucketSpec { size: 50, refill_time_ms: 1000, one_time_burst: 10 }));
        assert!(limited.tx_limits.is_limited() && limited.tx_limits.bytes.is_none());
        assert!(!BucketSpec { size: 0, refill_time_ms: 1, one_time_burst: 0 }.is_valid());
        assert!(BucketSpec { size: 1, refill_time_ms: 1, one_time_burst: 0 }.is_valid());
    }

    #[test]
    fn mistakes_name_their_line() {
        let errors: Vec<_> = parse_config("image\tname=x\nguest\tname=a\theap_kib=1\nvm\tname=b\nguest\tname=a\tapp=b\theap_kib=lots\nguest\tname=a b\tapp=x\theap_kib=1\nguest\tname=a\tapp=x\theap_kib=1\texpect=exit:x")
            .filter_map(Result::err)
            .collect();
        assert_eq!(
            errors,
            [
                ConfigError::MissingField { line: 2, field: "app" },
                ConfigError::UnknownRecord { line: 3, record: "vm" },
                ConfigError::BadField { line: 4, field: "heap_kib=lots" },
                ConfigError::BadField { line: 5, field: "name=a b" },
                ConfigError::BadField { line: 6, field: "expect=exit:x" },
            ]
        );
    }

    #[test]
    fn net_configs_parse_and_bad_ones_do_not() {
        let net = parse_net("02:00:00:00:00:10,10.0.2.16/24,10.0.2.2").unwrap();
        assert_eq!(net.mac, [2, 0, 0, 0, 0, 0x10]);
        assert_eq!((net.ipv4, net.prefix_len, net.gateway, net.mtu), ([10, 0, 2, 16], 24, [10, 0, 2, 2], 1500));
        assert_eq!(parse_net("02:00:00:00:00:10,10.0.2.16/24,10.0.2.2,9000").unwrap().mtu, 9000);
        for bad in [
            "",
            "02:00:00:00:00,10.0.2.16/24,10.0.2.2",
            "03:00:00:00:00:10,10.0.2.16/24,10.0.2.2",
            "02:00:00:00:00:10,10.0.2.16,10.0.2.2",
            "02:00:00:00:00:10,10.0.2.16/33,10.0.2.2",
            "02:00:00:00:00:10,10.0.2.256/24,10.0.2.2",
            "02:00:00:00:00:10,10.0.2.16/24,10.0.2.2,x",
            "2:0:0:0:0:10,10.0.2.16/24,10.0.2.2",
            "02:00:00:00:00:10,10.0.2.16/24,10.0.2.2,9001",
            "02:00:00:00:00:10,10.0.2.16/24,10.0.2.2,100",
        ] {
            assert_eq!(parse_net(bad), None, "{bad}");
        }
    }

    /// A guest line with `field` set to `value` (and the required fields otherwise).
    fn guest_line(field: &str, value: &str) -> String {
        let mut line = "guest\tname=g\tapp=a\theap_kib=64".to_string();
        if field == "heap_kib" {
            line = "guest\tname=g\tapp=a".to_string();
        }
        line + &format!("\t{field}={value}")
    }

    fn parse_one(line: &str) -> Result<GuestSpec<'_>, ConfigError<'_>> {
        match parse_config(line).next() {
            Some(Ok(Record::Guest(spec))) => Ok(spec),
            Some(Err(e)) => Err(e),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn numbers_are_bounded_with_the_limit_in_the_message() {
        for (field, max) in [("heap_kib", MAX_HEAP_KIB), ("cpu_budget_ms", MAX_CPU_BUDGET_MS)] {
            let at_limit = guest_line(field, &max.to_string());
            let spec = parse_one(&at_limit).unwrap();
            assert_eq!(if field == "heap_kib" { spec.heap_kib } else { spec.cpu_budget_ms }, max);
            let beyond = (max + 1).to_string();
            let line = guest_line(field, &beyond);
            let error = parse_one(&line).unwrap_err();
            assert_eq!(error, ConfigError::TooLarge { line: 1, field, value: &beyond, max });
            assert_eq!(error.to_string(), format!("line 1: `{field}={beyond}` is out of range: at most {max}"));
            // Beyond 64 bits, and the value that once wrapped to 1 KiB (2^54 + 1 KiB).
            for huge in ["18446744073709551616", "18014398509481985"] {
                let line = guest_line(field, huge);
                assert!(matches!(parse_one(&line), Err(ConfigError::TooLarge { max: m, .. }) if m == max), "{huge}");
            }
            let line = guest_line(field, "-1");
            assert!(matches!(parse_one(&line), Err(ConfigError::BadField { .. })));
        }
        assert_eq!(MAX_HEAP_KIB, 1 << 20);
        assert_eq!(MAX_CPU_BUDGET_MS, 86_400_000);
    }

    #[test]
    fn args_are_bounded_by_the_boot_info_page() {
        let longest = "x".repeat(MAX_ARGS_LEN);
        assert_eq!(parse_one(&guest_line("args", &longest)).unwrap().args, longest);
        let too_long = "x".repeat(MAX_ARGS_LEN + 1);
        let line = guest_line("args", &too_long);
        let error = parse_one(&line).unwrap_err();
        assert_eq!(error, ConfigError::ArgsTooLong { line: 1, len: MAX_ARGS_LEN + 1, max: MAX_ARGS_LEN });
        assert_eq!(error.to_string(), "line 1: `args` is 1025 bytes long: at most 1024");
    }

    #[test]
    fn guest_records_are_bounded() {
        let line = "guest\tname=g\tapp=a\theap_kib=4\n";
        let at_limit = line.repeat(MAX_GUESTS);
        assert!(parse_config(&at_limit).all(|r| r.is_ok()));
        let beyond = line.repeat(MAX_GUESTS + 1);
        let errors: Vec<_> = parse_config(&beyond).filter_map(Result::err).collect();
        assert_eq!(errors, [ConfigError::TooManyGuests { line: MAX_GUESTS + 1, max: MAX_GUESTS }]);
        assert_eq!(errors[0].to_string(), "line 16385: more than 16384 guests");
    }

    #[test]
    fn budgets_and_heaps_convert_with_checked_arithmetic() {
        assert_eq!(heap_bytes(MAX_HEAP_KIB), Some(crate::layout::MAX_HEAP_SIZE));
        assert_eq!(heap_bytes(MAX_HEAP_KIB + 1), None);
        assert_eq!(heap_bytes((1 << 54) + 1), None, "once wrapped to 1 KiB");
        assert_eq!(heap_bytes(u64::MAX), None);
        assert_eq!(cpu_budget_ticks(200, 2_500_000_000), Some(500_000_000));
        assert_eq!(cpu_budget_ticks(MAX_CPU_BUDGET_MS, 2_500_000_000), Some(216_000_000_000_000));
        assert_eq!(cpu_budget_ticks(MAX_CPU_BUDGET_MS + 1, 1), None);
        // The limit keeps 64 bits for TSCs up to 213 GHz; beyond, the ticks do not fit.
        assert!(cpu_budget_ticks(MAX_CPU_BUDGET_MS, 213_000_000_000).is_some());
        assert_eq!(cpu_budget_ticks(MAX_CPU_BUDGET_MS, u64::MAX), None);
    }

    #[test]
    fn expectations_parse() {
        assert_eq!(Expect::parse("exit:-1"), Some(Expect::Exit(-1)));
        assert_eq!(Expect::parse("stopped:exception"), Some(Expect::Stopped(StopKind::Exception)));
        assert_eq!(Expect::parse("stopped:"), None);
        // Kinds are names, not text to search: a piece of one, or a cause's text, is no kind.
        assert_eq!(Expect::parse("stopped:page"), None);
        assert_eq!(Expect::parse("stopped:divide error (#DE)"), None);
        assert_eq!(Expect::parse("running"), Some(Expect::Running));
        assert_eq!(Expect::parse("refused:elf_wrong_machine"), Some(Expect::Refused(RefusalKind::ElfWrongMachine)));
        assert_eq!(Expect::parse("refused:wrong machine"), None);
        assert_eq!(Expect::parse("refused:"), None);
        assert_eq!(Expect::parse("exited"), None);
    }
}
