//! Image manifests: `images/NAME.toml`. One file per bootable image.

use anyhow::{bail, Context, Result};
use hypercall_abi::cmdline::FPU_POLICIES;
use hypercall_abi::initrd::{
    valid_name, BucketSpec, Expect, GuestSpec, RefusalKind, StopKind, TxLimits, MAX_ARGS_LEN, MAX_BUCKET_TOKENS,
    MAX_CPU_BUDGET_MS, MAX_CPU_WEIGHT, MAX_GUESTS, MAX_HEAP_KIB, MAX_NAME, MAX_REFILL_TIME_MS, MAX_TCP_BUFFER_KIB,
    TCP_RX_KIB_ARG, TCP_TX_KIB_ARG,
};
use hypercall_abi::vnic::{NetConfig, MAX_MTU, MIN_MTU, MTU};
use serde::Deserialize;
use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

#[derive(Debug, Deserialize, PartialEq, Clone)]
#[serde(deny_unknown_fields)]
pub struct Manifest {
    /// One line saying what the image is for.
    pub description: String,
    #[serde(default)]
    pub kernel: KernelSection,
    /// Groups of guests, in boot order (`[[guest]]` tables).
    #[serde(default, rename = "guest")]
    pub guests: Vec<GuestGroup>,
}

/// `count` guests running the same app.
#[derive(Debug, Deserialize, PartialEq, Clone)]
#[serde(deny_unknown_fields)]
pub struct GuestGroup {
    /// A guest-os binary (`hello`, `hostile`, `vi-bench`), or `corrupt-KIND` for a deliberately
    /// broken ELF made from `hello` (KIND: one of [`CORRUPT_KINDS`]) that the kernel must refuse.
    pub app: String,
    #[serde(default = "one")]
    pub count: u32,
    /// Guest name; with `count > 1`, the names are `NAME-0`, `NAME-1`, ... Default: the app.
    pub name: Option<String>,
    /// Arguments, words separated by spaces.
    #[serde(default)]
    pub args: String,
    #[serde(default = "default_heap_kib")]
    pub heap_kib: u64,
    /// CPU time after which the kernel stops the guest; 0 means no limit.
    #[serde(default)]
    pub cpu_budget_ms: u64,
    /// `exit:CODE`, `stopped:KIND` (a `StopKind`), `refused:KIND` (a `RefusalKind`), `running` or `any`.
    #[serde(default = "default_expect")]
    pub expect: String,
    /// Give the guest a virtual NIC, with the next MAC and IPv4 address of the network.
    #[serde(default)]
    pub net: bool,
    /// Receive buffer of each of the guest's TCP sockets, in KiB (default: netstack's). Passed
    /// to the guest as the argument `tcp_rx_kib=N`; each connection and each listening socket
    /// of a backlog holds one, so size `heap_kib` for them.
    pub tcp_rx_kib: Option<u64>,
    /// Send buffer of each TCP socket, in KiB (argument `tcp_tx_kib=N`).
    pub tcp_tx_kib: Option<u64>,
    /// Share of the CPU while busy, against the other busy guests' weights: 1 (the default) to
    /// 16. A busy guest's turn is its weight times the kernel's 10 ms quantum.
    #[serde(default = "one")]
    pub cpu_weight: u32,
    /// Transmit rate limits (`[guest.tx_limit]`, needs `net = true`): token buckets for packets
    /// and bytes, as Firecracker's rate limiters have them. Frames beyond the limit stay in the
    /// guest's ring until tokens are there (counted as `tx_held_back`), never dropped.
    pub tx_limit: Option<TxLimitSection>,
}

/// `[guest.tx_limit]`: `packets` and `bytes`, each `{ size, refill_time_ms, one_time_burst }`.
#[derive(Debug, Deserialize, PartialEq, Clone, Copy)]
#[serde(deny_unknown_fields)]
pub struct TxLimitSection {
    pub packets: Option<Bucket>,
    pub bytes: Option<Bucket>,
}

/// A token bucket: `size` tokens, refilled from empty to full in `refill_time_ms`, and
/// `one_time_burst` extra tokens at the start (used first, never refilled).
#[derive(Debug, Deserialize, PartialEq, Clone, Copy)]
#[serde(deny_unknown_fields)]
pub struct Bucket {
    pub size: u64,
    pub refill_time_ms: u64,
    #[serde(default)]
    pub one_time_burst: u64,
}

impl Bucket {
    fn spec(self) -> BucketSpec {
        BucketSpec { size: self.size, refill_time_ms: self.refill_time_ms, one_time_burst: self.one_time_burst }
    }
}

impl TxLimitSection {
    pub fn limits(&self) -> TxLimits {
        TxLimits { packets: self.packets.map(Bucket::spec), bytes: self.bytes.map(Bucket::spec) }
    }
}

/// Smallest TCP buffer a manifest may ask for: room for a full segment.
const MIN_TCP_BUFFER_KIB: u64 = 2;

/// How guests' addresses are assigned on a network (`--net user` or `--net tap`): one IPv4
/// network, its gateway (QEMU's slirp, or the host end of the tap), and guests at consecutive
/// addresses from the first guest's on, up to the last address before the broadcast one.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct NetPlan {
    /// The network's address (host bits zero) and prefix length.
    pub network: [u8; 4],
    pub prefix_len: u8,
    /// Offsets of the gateway and of the first guest from the network's address.
    pub gateway_offset: u32,
    pub first_guest_offset: u32,
}

impl NetPlan {
    /// QEMU's user network as a /16 (`-netdev user,net=10.0.0.0/16,host=10.0.2.2`): slirp
    /// stays at 10.0.2.2 and guests start at 10.0.2.16 as on slirp's default /24, and its DHCP
    /// range (10.0.0.15, 16 addresses) lies below ours.
    pub const USER: NetPlan = NetPlan {
        network: [10, 0, 0, 0],
        prefix_len: 16,
        gateway_offset: 2 * 256 + 2,
        first_guest_offset: 2 * 256 + 16,
    };
    /// The tap network inside the namespace `cargo xtask` creates: 10.77.0.0/16, the host end
    /// at 10.77.0.1, guests from 10.77.0.16.
    pub const TAP: NetPlan =
        NetPlan { network: [10, 77, 0, 0], prefix_len: 16, gateway_offset: 1, first_guest_offset: 16 };

    /// Guests with a NIC the plan has addresses (and MACs) for: from the first guest's address
    /// to the one before the broadcast address.
    pub const fn capacity(&self) -> usize {
        let prefix = if self.prefix_len > 32 { 32 } else { self.prefix_len as u32 };
        let addresses = 1u64 << (32 - prefix);
        let guests = addresses.saturating_sub(1).saturating_sub(self.first_guest_offset as u64);
        // MACs number guests in 24 bits.
        (if guests < MAC_GUESTS { guests } else { MAC_GUESTS }) as usize
    }

    fn address(&self, offset: u64) -> [u8; 4] {
        let base = u32::from_be_bytes(self.network) as u64;
        ((base + offset) as u32).to_be_bytes()
    }

    /// Address of the `index`-th guest with a NIC (`index` below [`NetPlan::capacity`]).
    pub fn guest_ip(&self, index: usize) -> [u8; 4] {
        debug_assert!(index < self.capacity(), "guest {index} is beyond the plan");
        self.address(u64::from(self.first_guest_offset) + index as u64)
    }

    pub fn gateway(&self) -> [u8; 4] {
        self.address(u64::from(self.gateway_offset))
    }

    /// `10.77.0.0/16`.
    pub fn cidr(&self) -> String {
        format!("{}/{}", format_ip(self.network), self.prefix_len)
    }

    /// MAC of the `index`-th guest with a NIC: locally administered, unicast, the index in the
    /// last three bytes.
    pub fn guest_mac(index: usize) -> [u8; 6] {
        [0x02, 0x49, 0x4b, (index >> 16) as u8, (index >> 8) as u8, index as u8]
    }

    pub fn config(&self, index: usize, mtu: u16) -> NetConfig {
        NetConfig {
            mac: Self::guest_mac(index),
            ipv4: self.guest_ip(index),
            prefix_len: self.prefix_len,
            gateway: self.gateway(),
            mtu,
        }
    }

    /// The plan in a few lines for `cargo xtask run`: the network, the gateway, the first
    /// guests and the pattern, not a line per guest.
    pub fn describe(&self, net_guests: usize) -> String {
        let mut text = format!(
            "network {} (gateway {}): {net_guests} guest(s) with a NIC, of at most {}",
            self.cidr(),
            format_ip(self.gateway()),
            self.capacity()
        );
        if net_guests > 0 {
            let last = net_guests - 1;
            text += &format!(
                "\n  guest NIC i: IPv4 {} + i, MAC {} + i (i = 0..={last}: {} .. {}, {} .. {})",
                format_ip(self.guest_ip(0)),
                format_mac(Self::guest_mac(0)),
                format_ip(self.guest_ip(0)),
                format_ip(self.guest_ip(last)),
                format_mac(Self::guest_mac(0)),
                format_mac(Self::guest_mac(last)),
            );
        }
        text
    }
}

/// Guests with a NIC an image may hold: what every network's plan has addresses for, and the
/// kernel's guest limit.
pub const MAX_NET_GUESTS: usize = MAX_GUESTS;
const _: () = assert!(MAX_NET_GUESTS <= NetPlan::USER.capacity() && MAX_NET_GUESTS <= NetPlan::TAP.capacity());
/// Guests a MAC of [`NetPlan::guest_mac`] can number (three bytes).
const MAC_GUESTS: u64 = 1 << 24;

pub fn format_mac(mac: [u8; 6]) -> String {
    mac.map(|b| format!("{b:02x}")).join(":")
}

pub fn format_ip(ip: [u8; 4]) -> String {
    format!("{}.{}.{}.{}", ip[0], ip[1], ip[2], ip[3])
}

/// Broken ELF files `cargo xtask build` can make from `hello`, for loader tests.
pub const CORRUPT_KINDS: [&str; 4] = ["truncated", "wrong-machine", "overlapping", "kernel-half"];
/// Apps that are binaries of guest-os.
pub const GUEST_APPS: [&str; 14] = [
    "cow-rewriter",
    "fpu-probe",
    "hello",
    "hostile",
    "http",
    "mem-probe",
    "noop",
    "ring-hostile",
    "tcp-client",
    "tcp-echo",
    "tx-flood",
    "udp-client",
    "udp-echo",
    "vi-bench",
];

fn one() -> u32 {
    1
}

fn default_heap_kib() -> u64 {
    64
}

fn default_expect() -> String {
    "exit:0".into()
}

/// One guest, expanded from its group, with owned strings.
#[derive(Debug, Clone, PartialEq)]
pub struct Guest {
    pub name: String,
    pub app: String,
    pub args: String,
    pub heap_kib: u64,
    pub cpu_budget_ms: u64,
    pub expect: String,
    pub net: Option<NetConfig>,
    pub cpu_weight: u32,
    pub tx_limits: TxLimits,
}

impl Guest {
    pub fn spec(&self) -> GuestSpec<'_> {
        GuestSpec {
            name: &self.name,
            app: &self.app,
            heap_kib: self.heap_kib,
            cpu_budget_ms: self.cpu_budget_ms,
            expect: Expect::parse(&self.expect).expect("validated when the manifest was parsed"),
            net: self.net,
            cpu_weight: self.cpu_weight,
            tx_limits: self.tx_limits,
            args: &self.args,
        }
    }
}

fn app_is_known(app: &str) -> bool {
    GUEST_APPS.contains(&app) || app.strip_prefix("corrupt-").is_some_and(|k| CORRUPT_KINDS.contains(&k))
}

#[derive(Debug, Deserialize, PartialEq, Clone)]
#[serde(deny_unknown_fields)]
pub struct KernelSection {
    /// Default kernel log level (`--log` overrides it).
    #[serde(default = "default_log")]
    pub log: String,
    /// Guest-physical memory of the QEMU machine, in MiB.
    #[serde(default = "default_memory_mib")]
    pub memory_mib: u32,
    /// Transmit path: `copy` (default) or `cow`.
    #[serde(default, with = "crate::tx_mode_name")]
    pub tx: crate::TxMode,
    /// MTU of the guests' virtual NICs: 1500, or up to 9000 (jumbo frames) for guest-to-guest
    /// traffic and the tap network (QEMU's user network carries at most 1500).
    #[serde(default = "default_mtu")]
    pub mtu: u16,
    /// What the x87/MMX/SSE unit is to guests: `fault` (the default) or `save` (the kernel's
    /// `fpu=`; `--fpu` overrides it).
    #[serde(default = "default_fpu")]
    pub fpu: String,
}

fn default_fpu() -> String {
    FPU_POLICIES[0].into()
}

fn default_mtu() -> u16 {
    MTU as u16
}

impl Default for KernelSection {
    fn default() -> Self {
        KernelSection {
            log: default_log(),
            memory_mib: default_memory_mib(),
            tx: crate::TxMode::default(),
            mtu: default_mtu(),
            fpu: default_fpu(),
        }
    }
}

fn default_log() -> String {
    "info".into()
}

fn default_memory_mib() -> u32 {
    128
}

pub const LOG_LEVELS: [&str; 6] = ["off", "error", "warn", "info", "debug", "trace"];

impl Manifest {
    pub fn parse(text: &str) -> Result<Manifest> {
        let manifest: Manifest = toml::from_str(text)?;
        if !LOG_LEVELS.contains(&manifest.kernel.log.as_str()) {
            bail!("kernel.log = {:?}: expected one of {}", manifest.kernel.log, LOG_LEVELS.join(", "));
        }
        if !(16..=65536).contains(&manifest.kernel.memory_mib) {
            bail!("kernel.memory_mib = {}: expected 16 to 65536", manifest.kernel.memory_mib);
        }
        if !(MIN_MTU..=MAX_MTU).contains(&u64::from(manifest.kernel.mtu)) {
            bail!("kernel.mtu = {}: expected {MIN_MTU} to {MAX_MTU}", manifest.kernel.mtu);
        }
        if !FPU_POLICIES.contains(&manifest.kernel.fpu.as_str()) {
            bail!("kernel.fpu = {:?}: expected one of {}", manifest.kernel.fpu, FPU_POLICIES.join(", "));
        }
        for group in &manifest.guests {
            if !app_is_known(&group.app) {
                bail!(
                    "guest app `{}` is unknown: expected one of {} or corrupt-{{{}}}",
                    group.app,
                    GUEST_APPS.join(", "),
                    CORRUPT_KINDS.join(",")
                );
            }
            if Expect::parse(&group.expect).is_none() {
                let names = |kinds: &mut dyn Iterator<Item = &'static str>| kinds.collect::<Vec<_>>().join("|");
                bail!(
                    "guest `{}`: expect = {:?} is not exit:CODE, stopped:KIND, refused:KIND, running or any \
                     (stop kinds: {}; refusal kinds: {})",
                    group.app,
                    group.expect,
                    names(&mut StopKind::ALL.iter().map(|k| k.as_str())),
                    names(&mut RefusalKind::ALL.iter().map(|k| k.as_str())),
                );
            }
            if group.heap_kib % 4 != 0 || group.heap_kib > MAX_HEAP_KIB {
                bail!(
                    "guest `{}`: heap_kib = {} must be a multiple of 4 and at most {MAX_HEAP_KIB}",
                    group.app,
                    group.heap_kib
                );
            }
            for (key, kib) in [("tcp_rx_kib", group.tcp_rx_kib), ("tcp_tx_kib", group.tcp_tx_kib)] {
                if kib.is_some_and(|k| !(MIN_TCP_BUFFER_KIB..=MAX_TCP_BUFFER_KIB).contains(&k)) {
                    bail!(
                        "guest `{}`: {key} = {} is out of range: {MIN_TCP_BUFFER_KIB} to {MAX_TCP_BUFFER_KIB}",
                        group.app,
                        kib.unwrap_or_default()
                    );
                }
            }
            if group.cpu_budget_ms > MAX_CPU_BUDGET_MS {
                bail!(
                    "guest `{}`: cpu_budget_ms = {} is out of range: at most {MAX_CPU_BUDGET_MS}",
                    group.app,
                    group.cpu_budget_ms
                );
            }
            if !(1..=MAX_CPU_WEIGHT).contains(&group.cpu_weight) {
                bail!(
                    "guest `{}`: cpu_weight = {} is out of range: 1 to {MAX_CPU_WEIGHT}",
                    group.app,
                    group.cpu_weight
                );
            }
            if let Some(limit) = &group.tx_limit {
                if !group.net {
                    bail!("guest `{}`: tx_limit needs a virtual NIC (net = true)", group.app);
                }
                if limit.packets.is_none() && limit.bytes.is_none() {
                    bail!("guest `{}`: tx_limit names neither `packets` nor `bytes`", group.app);
                }
                for (key, bucket) in [("packets", limit.packets), ("bytes", limit.bytes)] {
                    if bucket.is_some_and(|b| !b.spec().is_valid()) {
                        bail!(
                            "guest `{}`: tx_limit.{key} = {:?} is out of range: size 1 to {MAX_BUCKET_TOKENS}, \
                             refill_time_ms 1 to {MAX_REFILL_TIME_MS}, one_time_burst at most {MAX_BUCKET_TOKENS}",
                            group.app,
                            bucket.unwrap_or(Bucket { size: 0, refill_time_ms: 0, one_time_burst: 0 })
                        );
                    }
                }
            }
            // (expect is a closed vocabulary, checked above, so only args can hold a tab.)
            if group.args.contains(['\t', '\n']) {
                bail!("guest `{}`: args may not contain tabs or newlines", group.app);
            }
        }
        // Counted before expanding, so that a huge count is refused without being expanded.
        let total = manifest.guests.iter().try_fold(0u64, |n, g| n.checked_add(u64::from(g.count)));
        if total.is_none_or(|n| n > MAX_GUESTS as u64) {
            bail!("{} guests: at most {MAX_GUESTS}", total.map_or("too many".into(), |n| n.to_string()));
        }
        let guests = manifest.expand(&NetPlan::USER)?;
        let mut names = BTreeSet::new();
        for guest in &guests {
            if !names.insert(guest.name.as_str()) {
                bail!("two guests are named `{}`", guest.name);
            }
            if !valid_name(&guest.name) {
                bail!("guest name `{}` is not 1 to {MAX_NAME} letters, digits, `-`, `_` or `.`", guest.name);
            }
            if guest.args.len() > MAX_ARGS_LEN {
                bail!("guest `{}`: args are {} bytes long: at most {MAX_ARGS_LEN}", guest.name, guest.args.len());
            }
        }
        Ok(manifest)
    }

    /// Every guest, in boot order, with network addresses from `plan`. In `args`, `{i}` becomes
    /// the guest's index within its group, `{ip:NAME}` the IPv4 address of guest NAME and
    /// `{mac:NAME}` its MAC (`02:49:4b:00:00:05`).
    pub fn expand(&self, plan: &NetPlan) -> Result<Vec<Guest>> {
        let mut guests = Vec::new();
        let mut net_index = 0;
        for group in &self.guests {
            let base = group.name.clone().unwrap_or_else(|| group.app.clone());
            for i in 0..group.count {
                let limit = plan.capacity().min(MAX_NET_GUESTS);
                if group.net && net_index == limit {
                    bail!("more than {limit} guests with a NIC on {}: at most {limit}", plan.cidr());
                }
                let net = group.net.then(|| {
                    net_index += 1;
                    plan.config(net_index - 1, self.kernel.mtu)
                });
                let mut args = group.args.replace("{i}", &i.to_string());
                for (key, kib) in [(TCP_RX_KIB_ARG, group.tcp_rx_kib), (TCP_TX_KIB_ARG, group.tcp_tx_kib)] {
                    if let Some(kib) = kib {
                        args = format!("{args} {key}={kib}").trim_start().to_string();
                    }
                }
                guests.push(Guest {
                    name: if group.count == 1 { base.clone() } else { format!("{base}-{i}") },
                    app: group.app.clone(),
                    args,
                    heap_kib: group.heap_kib,
                    cpu_budget_ms: group.cpu_budget_ms,
                    expect: group.expect.clone(),
                    net,
                    cpu_weight: group.cpu_weight,
                    tx_limits: group.tx_limit.map(|l| l.limits()).unwrap_or_default(),
                });
            }
        }
        let addresses: Vec<(String, Option<NetConfig>)> = guests.iter().map(|g| (g.name.clone(), g.net)).collect();
        for guest in &mut guests {
            for key in ["ip", "mac"] {
                let open = format!("{{{key}:");
                while let Some(start) = guest.args.find(&open) {
                    let end = guest.args[start..]
                        .find('}')
                        .map(|e| start + e)
                        .ok_or_else(|| anyhow::anyhow!("guest {}: unterminated {open}...}} in args", guest.name))?;
                    let name = &guest.args[start + open.len()..end];
                    let net = match addresses.iter().find(|(n, _)| n == name) {
                        Some((_, Some(net))) => net,
                        Some((_, None)) => {
                            bail!("guest {}: {open}{name}}} names a guest without `net = true`", guest.name)
                        }
                        None => bail!("guest {}: {open}{name}}} names no guest of this image", guest.name),
                    };
                    let value = if key == "ip" { format_ip(net.ipv4) } else { format_mac(net.mac) };
                    guest.args.replace_range(start..=end, &value);
                }
            }
        }
        Ok(guests)
    }

    /// The image config the kernel reads (see `hypercall_abi::initrd`).
    pub fn image_config(&self, image_name: &str, guests: &[Guest]) -> String {
        let mut text =
            format!("# generated by cargo xtask build from images/{image_name}.toml\nimage\tname={image_name}\n");
        for guest in guests {
            text += &guest.spec().to_string();
            text.push('\n');
        }
        text
    }

    /// The distinct apps the image needs, sorted.
    pub fn apps(&self) -> Vec<String> {
        self.guests.iter().map(|g| g.app.clone()).collect::<BTreeSet<_>>().into_iter().collect()
    }

    pub fn load(path: &Path) -> Result<Manifest> {
        let text = std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
        Manifest::parse(&text).with_context(|| format!("in image manifest {}", path.display()))
    }
}

/// Every image under `images/`, by name, sorted.
pub fn image_names(images_dir: &Path) -> Result<Vec<String>> {
    let mut names = Vec::new();
    for entry in std::fs::read_dir(images_dir).with_context(|| format!("listing {}", images_dir.display()))? {
        let path = entry?.path();
        if path.extension().is_some_and(|e| e == "toml") {
            if let Some(stem) = path.file_stem().and_then(|s| s.to_str()) {
                names.push(stem.to_string());
            }
        }
    }
    names.sort();
    Ok(names)
}

pub fn manifest_path(images_dir: &Path, name: &str) -> PathBuf {
    images_dir.join(format!("{name}.toml"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn minimal_manifest_gets_defaults() {
        let m = Manifest::parse("description = \"x\"").unwrap();
        assert_eq!(m.kernel, KernelSection::default());
    }

    #[test]
    fn mistakes_are_refused() {
        assert!(Manifest::parse("description = \"x\"\nguests = 3").is_err(), "unknown key");
        assert!(Manifest::parse("description = \"x\"\n[kernel]\nlog = \"loud\"").is_err());
        assert!(Manifest::parse("description = \"x\"\n[kernel]\nmemory_mib = 1").is_err());
        assert!(Manifest::parse("description = \"x\"\n[kernel]\nfpu = \"lazy\"").is_err());
        assert_eq!(Manifest::parse("description = \"x\"\n[kernel]\nfpu = \"save\"").unwrap().kernel.fpu, "save");
        assert!(Manifest::parse("[kernel]\nlog = \"info\"").is_err(), "description is required");
    }

    #[test]
    fn the_transmit_path_is_read_by_its_command_line_word() {
        let m = Manifest::parse("description = \"x\"\n[kernel]\ntx = \"cow\"").unwrap();
        assert_eq!(m.kernel.tx, crate::TxMode::Cow);
        assert_eq!(Manifest::parse("description = \"x\"").unwrap().kernel.tx, crate::TxMode::Split);
        let m = Manifest::parse("description = \"x\"\n[kernel]\ntx = \"split\"").unwrap();
        assert_eq!(m.kernel.tx, crate::TxMode::Split);
        assert!(Manifest::parse("description = \"x\"\n[kernel]\ntx = \"Cow\"").is_err());
    }

    #[test]
    fn guests_expand_with_names_and_become_config_lines() {
        let m = Manifest::parse(
            "description = \"x\"\n[[guest]]\napp = \"hello\"\ncount = 2\nargs = \"a b\"\n[[guest]]\napp = \"hostile\"\nname = \"nul\"\nargs = \"null-write\"\nexpect = \"stopped:page_fault\"\n",
        )
        .unwrap();
        let guests = m.expand(&NetPlan::USER).unwrap();
        let names: Vec<_> = guests.iter().map(|g| g.name.clone()).collect();
        assert_eq!(names, ["hello-0", "hello-1", "nul"]);
        let config = m.image_config("t", &guests);
        let records: Vec<_> = hypercall_abi::initrd::parse_config(&config).collect::<Result<_, _>>().unwrap();
        assert_eq!(records.len(), 4);
        assert_eq!(m.apps(), ["hello", "hostile"]);
    }

    #[test]
    fn network_addresses_and_arg_placeholders() {
        let m = Manifest::parse(
            "description = \"x\"\n[[guest]]\napp = \"hello\"\nname = \"echo\"\ncount = 2\nnet = true\n[[guest]]\napp = \"hello\"\nname = \"client\"\ncount = 2\nnet = true\nargs = \"peer={ip:echo-{i}}:7 n={i} mac={mac:echo-1}\"\n[[guest]]\napp = \"hello\"\nname = \"quiet\"\n",
        )
        .unwrap();
        let guests = m.expand(&NetPlan::TAP).unwrap();
        assert_eq!(guests[0].net.unwrap().ipv4, [10, 77, 0, 16]);
        assert_eq!(guests[3].net.unwrap().mac, [0x02, 0x49, 0x4b, 0, 0, 3]);
        assert_eq!(guests[3].args, "peer=10.77.0.17:7 n=1 mac=02:49:4b:00:00:01");
        assert_eq!(guests[4].net, None);
        let config = m.image_config("t", &guests);
        assert!(config.contains("net=02:49:4b:00:00:00,10.77.0.16/16,10.77.0.1"), "{config}");
        let bad = "description = \"x\"\n[[guest]]\napp = \"hello\"\nargs = \"{ip:nobody}\"";
        assert!(Manifest::parse(bad).is_err());
        let bad = "description = \"x\"\n[[guest]]\napp = \"hello\"\nargs = \"{mac:hello}\"";
        assert!(Manifest::parse(bad).is_err(), "a guest without a NIC has no MAC");
    }

    #[test]
    fn mtu_is_bounded_and_reaches_the_config() {
        let m = Manifest::parse("description = \"x\"\n[kernel]\nmtu = 9000\n[[guest]]\napp = \"hello\"\nnet = true")
            .unwrap();
        let guests = m.expand(&NetPlan::USER).unwrap();
        assert_eq!(guests[0].net.unwrap().mtu, 9000);
        assert!(m.image_config("t", &guests).contains(",9000\t"));
        assert!(Manifest::parse("description = \"x\"\n[kernel]\nmtu = 9001").is_err());
        assert!(Manifest::parse("description = \"x\"\n[kernel]\nmtu = 100").is_err());
    }

    #[test]
    fn tcp_buffer_sizes_become_arguments_within_bounds() {
        let m = with_guest_line("args = \"port=7\"\ntcp_rx_kib = 256\ntcp_tx_kib = 64").unwrap();
        assert_eq!(m.expand(&NetPlan::USER).unwrap()[0].args, "port=7 tcp_rx_kib=256 tcp_tx_kib=64");
        let m = with_guest_line("tcp_tx_kib = 8").unwrap();
        assert_eq!(m.expand(&NetPlan::USER).unwrap()[0].args, "tcp_tx_kib=8");
        assert!(refusal("tcp_rx_kib = 1").ends_with("tcp_rx_kib = 1 is out of range: 2 to 16384"));
        assert!(refusal("tcp_tx_kib = 16385").ends_with("tcp_tx_kib = 16385 is out of range: 2 to 16384"));
    }

    #[test]
    fn weights_and_rate_limits_reach_the_config_within_bounds() {
        let m = with_guest_line(
            "net = true\ncpu_weight = 3\n[guest.tx_limit]\npackets = { size = 100, refill_time_ms = 1000 }\n\
             bytes = { size = 150000, refill_time_ms = 100, one_time_burst = 3000 }",
        )
        .unwrap();
        let guests = m.expand(&NetPlan::USER).unwrap();
        assert_eq!(guests[0].cpu_weight, 3);
        let config = m.image_config("t", &guests);
        assert!(config.contains("\tcpu_weight=3\ttx_packets=100,1000\ttx_bytes=150000,100,3000\targs="), "{config}");
        let records: Vec<_> = hypercall_abi::initrd::parse_config(&config).collect::<Result<_, _>>().unwrap();
        assert!(matches!(records[1], hypercall_abi::initrd::Record::Guest(spec)
            if spec.cpu_weight == 3 && spec.tx_limits == guests[0].tx_limits));
        // Defaults: weight 1, no limit, nothing written.
        let plain = with_guest_line("net = true").unwrap();
        let guests = plain.expand(&NetPlan::USER).unwrap();
        assert_eq!((guests[0].cpu_weight, guests[0].tx_limits), (1, TxLimits::default()));
        assert!(!plain.image_config("t", &guests).contains("cpu_weight"));
        assert!(refusal("cpu_weight = 0").ends_with("cpu_weight = 0 is out of range: 1 to 16"));
        assert!(refusal("cpu_weight = 17").ends_with("cpu_weight = 17 is out of range: 1 to 16"));
        let no_nic = refusal("[guest.tx_limit]\npackets = { size = 1, refill_time_ms = 1 }");
        assert!(no_nic.ends_with("tx_limit needs a virtual NIC (net = true)"), "{no_nic}");
        assert!(refusal("net = true\n[guest.tx_limit]").ends_with("names neither `packets` nor `bytes`"));
        let zero = refusal("net = true\n[guest.tx_limit]\nbytes = { size = 0, refill_time_ms = 1 }");
        assert!(
            zero.contains("tx_limit.bytes = Bucket { size: 0, refill_time_ms: 1, one_time_burst: 0 } is out of range")
        );
        assert!(with_guest_line("net = true\n[guest.tx_limit]\nbytes = { size = 1, refill = 1 }").is_err());
    }

    #[test]
    fn bad_guests_are_refused() {
        let base = "description = \"x\"\n[[guest]]\n";
        assert!(Manifest::parse(&format!("{base}app = \"nope\"")).is_err());
        assert!(Manifest::parse(&format!("{base}app = \"corrupt-nope\"")).is_err());
        assert!(
            Manifest::parse(&format!("{base}app = \"corrupt-truncated\"\nexpect = \"refused:elf_too_short\"")).is_ok()
        );
        assert!(Manifest::parse(&format!("{base}app = \"corrupt-truncated\"\nexpect = \"refused:x\"")).is_err());
        assert!(refusal("expect = \"stopped:page fault\"").contains("stop kinds: vi_not_dx_form|"));
        assert!(Manifest::parse(&format!("{base}app = \"hello\"\nexpect = \"fine\"")).is_err());
        assert!(Manifest::parse(&format!("{base}app = \"hello\"\nheap_kib = 3")).is_err());
        assert!(Manifest::parse(&format!("{base}app = \"hello\"\nargs = \"a\\tb\"")).is_err());
        assert!(
            Manifest::parse(&format!("{base}app = \"hello\"\n[[guest]]\napp = \"hello\"")).is_err(),
            "duplicate names"
        );
    }

    /// A manifest with one hello guest whose group has `line` added.
    fn with_guest_line(line: &str) -> Result<Manifest> {
        Manifest::parse(&format!("description = \"x\"\n[[guest]]\napp = \"hello\"\n{line}\n"))
    }

    fn refusal(line: &str) -> String {
        format!("{:#}", with_guest_line(line).expect_err(line))
    }

    #[test]
    fn image_config_numbers_are_bounded_with_the_limit_in_the_message() {
        // At the limit: accepted, and the config it becomes parses in the kernel's parser.
        let m = with_guest_line(&format!("heap_kib = {MAX_HEAP_KIB}\ncpu_budget_ms = {MAX_CPU_BUDGET_MS}")).unwrap();
        let guests = m.expand(&NetPlan::USER).unwrap();
        let config = m.image_config("t", &guests);
        let records: Vec<_> = hypercall_abi::initrd::parse_config(&config).collect::<Result<_, _>>().unwrap();
        assert!(matches!(records[1], hypercall_abi::initrd::Record::Guest(spec)
            if spec.heap_kib == MAX_HEAP_KIB && spec.cpu_budget_ms == MAX_CPU_BUDGET_MS));
        // One beyond (and the value that once wrapped to 1 KiB): refused, naming the limit.
        for heap in [MAX_HEAP_KIB + 4, (1 << 54) + 4] {
            let error = refusal(&format!("heap_kib = {heap}"));
            assert!(
                error.ends_with(&format!("heap_kib = {heap} must be a multiple of 4 and at most 1048576")),
                "{error}"
            );
        }
        let error = refusal(&format!("cpu_budget_ms = {}", MAX_CPU_BUDGET_MS + 1));
        assert!(error.ends_with("cpu_budget_ms = 86400001 is out of range: at most 86400000"), "{error}");
        // args: at most what the boot-info page holds, counted after placeholders expand.
        assert!(with_guest_line(&format!("args = \"{}\"", "x".repeat(MAX_ARGS_LEN))).is_ok());
        let error = refusal(&format!("args = \"{}\"", "x".repeat(MAX_ARGS_LEN + 1)));
        assert!(error.ends_with("args are 1025 bytes long: at most 1024"), "{error}");
        let error = refusal(&format!("args = \"{}{{i}}\"", "x".repeat(MAX_ARGS_LEN)));
        assert!(error.ends_with("args are 1025 bytes long: at most 1024"), "{error}");
        assert!(refusal("args = \"a\\tb\"").contains("tabs or newlines"));
        assert!(refusal("expect = \"stopped:a\\tb\"").contains("is not exit:CODE"));
    }

    #[test]
    fn guest_counts_and_names_are_bounded() {
        assert!(with_guest_line(&format!("count = {MAX_GUESTS}\nheap_kib = 4")).is_ok());
        let error = refusal(&format!("count = {}", MAX_GUESTS + 1));
        assert!(error.ends_with("16385 guests: at most 16384"), "{error}");
        let error = format!(
            "{:#}",
            Manifest::parse(&format!(
                "description = \"x\"\n[[guest]]\napp = \"hello\"\nname = \"a\"\ncount = {}\n[[guest]]\napp = \"hello\"\ncount = {}",
                u32::MAX,
                u32::MAX
            ))
            .unwrap_err()
        );
        assert!(error.ends_with("guests: at most 16384"), "{error}");
        let longest = "n".repeat(MAX_NAME);
        assert!(with_guest_line(&format!("name = \"{longest}\"")).is_ok());
        assert!(refusal(&format!("name = \"{longest}n\"")).contains("is not 1 to 64 letters"));
        assert!(refusal("name = \"a b\"").contains("is not 1 to 64 letters"));
        // Guests with a NIC: as many as the kernel holds, each with its own address and MAC.
        let m = with_guest_line(&format!("count = {MAX_NET_GUESTS}\nnet = true\nheap_kib = 4")).unwrap();
        for plan in [NetPlan::USER, NetPlan::TAP] {
            let guests = m.expand(&plan).unwrap();
            let nets: Vec<NetConfig> = guests.iter().map(|g| g.net.unwrap()).collect();
            assert_eq!(nets.iter().map(|n| n.ipv4).collect::<BTreeSet<_>>().len(), MAX_NET_GUESTS);
            assert_eq!(nets.iter().map(|n| n.mac).collect::<BTreeSet<_>>().len(), MAX_NET_GUESTS);
            assert!(nets.iter().all(|n| n.prefix_len == 16 && n.gateway == plan.gateway()));
        }
        let error = refusal(&format!("count = {}\nnet = true", MAX_NET_GUESTS + 1));
        assert!(error.ends_with("16385 guests: at most 16384"), "{error}");
    }

    #[test]
    fn address_plans_hold_sixty_five_thousand_guests_in_a_slash_16() {
        assert_eq!(NetPlan::TAP.capacity(), 65_519);
        assert_eq!(NetPlan::USER.capacity(), 65_007);
        let tap = NetPlan::TAP;
        assert_eq!(tap.cidr(), "10.77.0.0/16");
        assert_eq!(tap.gateway(), [10, 77, 0, 1]);
        assert_eq!(tap.guest_ip(0), [10, 77, 0, 16]);
        assert_eq!(tap.guest_ip(239), [10, 77, 0, 255]);
        assert_eq!(tap.guest_ip(240), [10, 77, 1, 0]);
        assert_eq!(tap.guest_ip(9_999), [10, 77, 39, 31]);
        assert_eq!(tap.guest_ip(tap.capacity() - 1), [10, 77, 255, 254], "the last before the broadcast");
        let user = NetPlan::USER;
        assert_eq!((user.gateway(), user.guest_ip(0)), ([10, 0, 2, 2], [10, 0, 2, 16]), "as on slirp's /24");
        assert_eq!(user.guest_ip(user.capacity() - 1), [10, 0, 255, 254]);
        assert_eq!(NetPlan::guest_mac(0x01_02_03), [0x02, 0x49, 0x4b, 1, 2, 3]);
        assert_eq!(NetPlan::guest_mac(9_999), [0x02, 0x49, 0x4b, 0, 0x27, 0x0f]);
        let text = tap.describe(10_000);
        assert!(text.contains("10.77.0.16 .. 10.77.39.31"), "{text}");
        assert!(text.contains("02:49:4b:00:00:00 .. 02:49:4b:00:27:0f"), "{text}");
        assert_eq!(text.lines().count(), 2, "a pattern, not a line per guest: {text}");
    }

    #[test]
    fn a_plan_refuses_guests_beyond_its_addresses_with_the_limit_in_the_message() {
        // A /24 with guests from .16: .16 to .254 (the broadcast .255 is no guest's).
        let small = NetPlan { network: [10, 9, 9, 0], prefix_len: 24, gateway_offset: 1, first_guest_offset: 16 };
        assert_eq!(small.capacity(), 239);
        let at_limit = with_guest_line("count = 239\nnet = true").unwrap();
        assert_eq!(at_limit.expand(&small).unwrap().last().unwrap().net.unwrap().ipv4, [10, 9, 9, 254]);
        let beyond = with_guest_line("count = 240\nnet = true").unwrap();
        let error = format!("{:#}", beyond.expand(&small).unwrap_err());
        assert_eq!(error, "more than 239 guests with a NIC on 10.9.9.0/24: at most 239");
        // Guests without a NIC take no address.
        assert!(with_guest_line("count = 300").unwrap().expand(&small).is_ok());
    }

    #[test]
    fn every_manifest_in_the_repository_parses() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../images");
        let names = image_names(&dir).unwrap();
        assert!(names.contains(&"empty".to_string()));
        for name in names {
            assert!(valid_name(&name), "image name `{name}`");
            Manifest::load(&manifest_path(&dir, &name)).unwrap();
        }
    }
}
