//! `cargo xtask`: build, run and test the isolation kernel and its images.

mod baseline;
mod bench;
mod bootbench;
mod burst;
mod chart;
mod checks;
mod density;
mod dispatch;
mod fuzz;
mod httpbench;
mod icount;
mod initrd;
mod isobench;
mod ledger;
mod manifest;
mod metrics;
mod native;
mod openloop;
mod pack;
mod qemu;
mod setup;
mod sweep;
mod tapnet;
mod tcpload;
mod tests;
mod txpaths;
mod udp;
mod vmm;

use anyhow::{bail, Result};
use clap::{Parser, Subcommand};
use hypercall_abi::cmdline as keys;
use hypercall_abi::host::KernelExit;
use manifest::{format_ip, NetPlan};
use qemu::{AccelChoice, Machine, NetBackend, NicTransport, QemuConfig};
use std::time::Duration;

/// The image `cargo xtask run` boots when none is named.
const DEFAULT_IMAGE: &str = "udp-echo";

#[derive(Parser)]
#[command(about = "Build, run, test and benchmark the isolation kernel and its guest images", version)]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Build the kernel (release, x86_64-unknown-none) and pack images into target/images/NAME/.
    Build {
        /// Image to pack (a file images/NAME.toml); every image when omitted.
        image: Option<String>,
    },
    /// Boot an image in QEMU; the console is this terminal (Ctrl-C ends QEMU).
    Run(RunArgs),
    /// Benchmarks; results (JSON, SVG charts) under target/bench/.
    Bench {
        #[command(subcommand)]
        which: BenchCmd,
    },
    /// The echo benchmark's load generator (run inside the tap namespace by `bench echo`):
    /// prints its measured cells as JSON on stdout.
    #[command(hide = true)]
    BenchClient {
        /// The echo servers, ADDRESS:PORT, comma-separated (the first one also for latency).
        #[arg(long, value_delimiter = ',', required = true)]
        peers: Vec<std::net::SocketAddr>,
        /// The smoke run's load (as `bench echo --quick`).
        #[arg(long)]
        quick: bool,
    },
    /// One open-loop trial inside the tap namespace (for `bench echo` and `bench baseline`):
    /// datagrams at a fixed rate, echoes counted, printed as JSON; or the Linux baseline's
    /// counters (`--linux-stats`).
    #[command(hide = true)]
    OpenLoopClient {
        /// The echo server, ADDRESS:PORT.
        #[arg(long)]
        peer: std::net::SocketAddr,
        /// UDP payload, bytes.
        #[arg(long, default_value_t = 100)]
        size: usize,
        /// Datagrams per second.
        #[arg(long, default_value_t = 1000)]
        rate: u64,
        /// How long to send, milliseconds.
        #[arg(long, default_value_t = 4000)]
        trial_ms: u64,
        /// How long to wait for echoes after the last send, at most, milliseconds.
        #[arg(long, default_value_t = 2000)]
        drain_ms: u64,
        /// Ask the Linux baseline for its counters instead.
        #[arg(long)]
        linux_stats: bool,
    },
    /// `bench http`'s client inside the tap namespace: waits for the server to answer, measures
    /// one download or echo stream (every byte checked) and prints it as JSON on stdout.
    #[command(hide = true)]
    TcpBenchClient {
        /// What to measure.
        #[arg(long, value_enum)]
        what: tcpload::Workload,
        /// The HTTP or TCP echo server, ADDRESS:PORT.
        #[arg(long)]
        server: std::net::SocketAddr,
        /// Bytes to download or to echo.
        #[arg(long)]
        bytes: u64,
        /// How long the server may take to answer first (it may still be booting).
        #[arg(long, default_value_t = 120)]
        wait_secs: u64,
    },
    /// Check a UDP echo server: one random datagram of each test size, every byte compared.
    #[command(hide = true)]
    UdpProbe {
        /// The echo server, ADDRESS:PORT.
        peer: std::net::SocketAddr,
        /// Datagram sizes (default: the standard test sizes).
        #[arg(long, value_delimiter = ',')]
        sizes: Vec<usize>,
    },
    /// Bursts of datagrams to UDP echo servers, echoes compared, host drops counted (the loss
    /// tests run it inside the tap namespace).
    #[command(hide = true)]
    UdpBurst {
        /// The echo servers, `ADDR:PORT`, comma-separated.
        #[arg(long, value_delimiter = ',')]
        peers: Vec<std::net::SocketAddr>,
        /// One datagram of each size, in order, to each peer.
        #[arg(long, value_delimiter = ',')]
        sizes: Vec<usize>,
        /// Makes this burst's payloads differ from other bursts'.
        #[arg(long, default_value_t = 1)]
        seed: u64,
        /// The burst is over when no echo has come for this long.
        #[arg(long, default_value_t = 1000)]
        settle_ms: u64,
        /// The tap device whose drop counters are read.
        #[arg(long, default_value = tapnet::TAP_IFNAME)]
        tap: String,
    },
    /// One datagram to each of COUNT echo servers at consecutive addresses, every answer matched
    /// (the density test and `bench density` run it inside the tap namespace).
    #[command(hide = true)]
    UdpSweep {
        /// The first server's address; server i is at FIRST + i.
        #[arg(long)]
        first: std::net::Ipv4Addr,
        /// Servers to sweep.
        #[arg(long)]
        count: usize,
        /// Their UDP port.
        #[arg(long, default_value_t = ECHO_PORT)]
        port: u16,
        /// Datagrams in flight at most.
        #[arg(long, default_value_t = 64)]
        window: usize,
        /// Milliseconds before an unanswered datagram is sent again.
        #[arg(long, default_value_t = 2000)]
        retry_after_ms: u64,
        /// Times a datagram is sent again before its server counts as silent.
        #[arg(long, default_value_t = 2)]
        max_retries: u32,
        /// Makes this sweep's payloads differ from other sweeps'.
        #[arg(long, default_value_t = 1)]
        seed: u64,
    },
    /// Mutation fuzzing of the kernel's portable parsers and models (stable Rust; see fuzz/).
    Fuzz(fuzz::FuzzArgs),
    /// Host unit tests, then the QEMU integration tests. Exit status 0 only if all pass.
    Test {
        /// Run only the QEMU tests whose name contains this text.
        #[arg(long)]
        filter: Option<String>,
        /// Skip the host unit tests.
        #[arg(long)]
        qemu_only: bool,
    },
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
enum NetChoice {
    /// QEMU's user network: host UDP and TCP port 127.0.0.1:(BASE+i) reach guest i's port 7,
    /// TCP 127.0.0.1:(HTTP_BASE+i) its port 80.
    User,
    /// A tap device in a network namespace of its own (needs root); reach guests by address.
    Tap,
    /// No physical NIC (guests still reach each other through the vswitch).
    None,
}

/// The transmit path: the kernel's own type, so its command-line words are written in one place.
pub use hypercall_abi::cmdline::TxMode;

/// `--tx`: the values by name, each with its meaning (shown by `--help`).
fn tx_mode_parser() -> impl clap::builder::TypedValueParser<Value = TxMode> {
    use clap::builder::{PossibleValue, PossibleValuesParser, TypedValueParser};
    let help = |mode| match mode {
        TxMode::Copy => "Denali's path: the kernel copies each packet into its FIFO, the driver into the NIC buffer",
        TxMode::Cow => "Zero copy: the guest's tx page is write-protected and handed to the NIC",
        TxMode::Split => {
            "Zero copy without protection: the kernel copies the headers, the NIC reads the payload in place"
        }
    };
    PossibleValuesParser::new(TxMode::ALL.map(|mode| PossibleValue::new(mode.name()).help(help(mode))))
        .try_map(|name| TxMode::from_name(&name).ok_or("not a transmit path"))
}

/// `#[serde(with = "tx_mode_name")]`: a [`TxMode`] as its command-line word, in TOML and JSON.
pub mod tx_mode_name {
    use super::TxMode;
    use serde::{de::Error, Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(mode: &TxMode, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(mode.name())
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(deserializer: D) -> Result<TxMode, D::Error> {
        let name = String::deserialize(deserializer)?;
        TxMode::from_name(&name)
            .ok_or_else(|| D::Error::custom(format!("unknown transmit path `{name}`: copy, cow or split")))
    }
}

#[derive(Subcommand)]
enum BenchCmd {
    /// Per-stage cost of each packet (stamps on; instructions under TCG -icount, cycles under
    /// KVM), rx and tx, copy and COW, and under TCG the whole echo (every instruction, counted by
    /// a QEMU plugin) against the stages: dispatch.json and dispatch.svg.
    Dispatch {
        /// A few packets per cell (a smoke run).
        #[arg(long)]
        quick: bool,
        /// auto: KVM (cycles) only with hardware virtualization, else TCG with -icount (instructions).
        #[arg(long, value_enum, default_value_t = AccelChoice::Auto)]
        accel: AccelChoice,
        /// Datagrams per size and transmit path (default: 10,100; 30 with --quick).
        #[arg(long)]
        packets: Option<usize>,
        /// Only the transmit paths side by side, 64 to 9014-byte frames: instructions per packet
        /// and the model with literature costs (txpaths.json; TCG). The full run (not --quick)
        /// ends with it too.
        #[arg(long)]
        tx_paths: bool,
        /// With --tx-paths: these frame lengths (comma-separated) instead of 64 to 9014.
        #[arg(long, value_delimiter = ',')]
        frames: Vec<usize>,
        /// Checksum offload: on or off (default: the kernel's).
        #[arg(long, value_parser = clap::builder::PossibleValuesParser::new(["on", "off"]))]
        csum: Option<String>,
    },
    /// Time from QEMU's start to the first UDP echo of the default image, on pc (legacy and
    /// modern virtio-pci) and microvm (virtio-mmio): boot.json.
    Boot {
        /// Boots per machine and transport (the median is reported).
        #[arg(long, default_value_t = 10)]
        runs: usize,
    },
    /// The host-native stages in real TSC ticks: guest stack and driver, kernel portable logic:
    /// native.json.
    Native,
    /// Our udp-echo guests against a Linux VM (Debian's kernel) in the same QEMU: boot to
    /// first echo, latency, throughput, the open-loop search on user and tap, and the ratios:
    /// baseline.json.
    Baseline {
        /// Fewer packets per cell.
        #[arg(long)]
        quick: bool,
        /// Only the whole-machine instructions per echo, ours and the Linux VM's (TCG with
        /// -icount and the counting plugin): baseline-instructions.json.
        #[arg(long)]
        instructions: bool,
    },
    /// Many echo guests on one kernel over tap (needs root): time from QEMU's start to every
    /// guest answering one datagram, private pages per guest, kernel heap per guest, QEMU's
    /// RSS: density.json.
    Density {
        /// The image (its guests must be udp-echo with a NIC); echo-1k with --quick.
        #[arg(long)]
        image: Option<String>,
        /// echo-1k, and the memory bisected from 32 MiB at 16 MiB resolution.
        #[arg(long)]
        quick: bool,
        /// Skip the memory bisection (each probe a full boot and sweep).
        #[arg(long)]
        no_bisect: bool,
        /// Transmit path.
        #[arg(long, value_parser = tx_mode_parser(), default_value = "copy")]
        tx: TxMode,
    },
    /// UDP echo latency and throughput from the host, copy vs COW, 1 and 4 guests, then the
    /// open-loop search (highest rate under 1% loss) on user and tap: echo.json and echo.svg.
    Echo {
        /// A few packets per cell (a smoke run).
        #[arg(long)]
        quick: bool,
        /// Only the open-loop search (user and tap networks), not the closed-loop cells.
        #[arg(long)]
        open_loop_only: bool,
    },
    /// Performance isolation: an echo guest's round trips alone and beside hogs (a storm of
    /// virtual instructions, a transmit storm, a CPU spinner, all three), CPU shares under weights,
    /// a flooding guest with and without a transmit rate limit: isolation.json and isolation.svg.
    Isolation {
        /// 200 echoes per cell, 3-second runs.
        #[arg(long)]
        quick: bool,
        /// Only these round-trip cells (by their `beside` name: nothing, vi-storm, tx-storm,
        /// spinner, all three), comma-separated, and no share or flood runs: for trying a change.
        #[arg(long, value_delimiter = ',')]
        cells: Vec<String>,
        /// Echoes per round-trip cell (default 2,000; 200 with --quick).
        #[arg(long)]
        echoes: Option<usize>,
    },
    /// TCP and HTTP, ours against the Linux VM of `bench baseline` in the same QEMU: wrk's
    /// keep-alive GET / rate and latency (1 and 32 connections, 1 and 4 servers, user network),
    /// /bytes/N download over tap at MTU 1500 and 9000 and TCP echo throughput, copy vs COW:
    /// http.json and http.svg. Needs wrk (apt-get install wrk).
    Http {
        /// One second per wrk cell, 16 MiB downloads, 4 MiB echoed.
        #[arg(long)]
        quick: bool,
    },
}

#[derive(clap::Args)]
struct RunArgs {
    /// Image to boot (images/NAME.toml).
    #[arg(default_value = DEFAULT_IMAGE)]
    image: String,
    /// Accelerator: auto picks KVM only on hosts with vmx/svm (PVM's /dev/kvm is slower than TCG).
    #[arg(long, value_enum, default_value_t = AccelChoice::Auto)]
    accel: AccelChoice,
    /// Shut down after this many seconds, printing the kernel's stats line.
    #[arg(long = "for", value_name = "SECONDS")]
    for_secs: Option<u64>,
    /// Kernel log level: off, error, warn, info, debug, trace (default: the image's).
    #[arg(long, value_parser = clap::builder::PossibleValuesParser::new(manifest::LOG_LEVELS))]
    log: Option<String>,
    /// Start QEMU halted, waiting for a debugger on tcp::1234 (`gdb -ex 'target remote :1234'`).
    #[arg(long)]
    gdb: bool,
    /// Kill QEMU after this many seconds (default: none, or --for plus a margin).
    #[arg(long, value_name = "SECONDS")]
    timeout: Option<u64>,
    /// TCG only: run with `-icount shift=0`, so TSC stamps count executed instructions.
    #[arg(long)]
    icount: bool,
    /// The physical NIC's network.
    #[arg(long, value_enum, default_value_t = NetChoice::User)]
    net: NetChoice,
    /// First host port of the user network's forwards (guest i: UDP and TCP BASE+i -> its port 7).
    #[arg(long, value_name = "BASE", default_value_t = 7000)]
    host_port_base: u16,
    /// First host port of the user network's HTTP forwards (guest i: TCP HTTP_BASE+i -> its port 80).
    #[arg(long, value_name = "HTTP_BASE", default_value_t = 8080)]
    http_port_base: u16,
    /// Transmit path (default: the image's `tx`, else copy).
    #[arg(long, value_parser = tx_mode_parser())]
    tx: Option<TxMode>,
    /// Per-packet stage stamps in kernel and guests (for `bench dispatch`; off by default):
    /// builds the kernel with its `stamps` feature (target/kernel-stamps).
    #[arg(long)]
    stamps: bool,
    /// After each `stats:` line, one line of each guest's own counters (`stats=per-guest`).
    #[arg(long)]
    per_guest_stats: bool,
    /// Checksum offload through the vNICs and on the physical NIC: on or off (default: the
    /// kernel's).
    #[arg(long, value_parser = clap::builder::PossibleValuesParser::new(["on", "off"]))]
    csum: Option<String>,
    /// What the x87/MMX/SSE unit is to guests: fault (stops the guest) or save (switched per
    /// guest). Default: the image's `fpu`, else fault.
    #[arg(long, value_parser = clap::builder::PossibleValuesParser::new(keys::FPU_POLICIES))]
    fpu: Option<String>,
    /// Record what crosses the physical NIC to this pcap file (opens in Wireshark/tshark).
    #[arg(long, value_name = "FILE")]
    pcap: Option<std::path::PathBuf>,
    /// Make the NIC hold each transmitted frame this long (keeps zero-copy frames in flight).
    #[arg(long, value_name = "MICROSECONDS")]
    nic_tx_delay_us: Option<u64>,
    /// The machine: pc (PCI) or microvm (virtio-mmio, Firecracker's model).
    #[arg(long, value_enum, default_value_t = Machine::Pc)]
    machine: Machine,
    /// How the physical NIC (virtio-net) is attached on pc (default legacy; microvm has
    /// virtio-mmio only).
    #[arg(long, value_enum)]
    nic: Option<NicTransport>,
    /// Serve the kernel's latest `stats:` counters, totals and per guest, at http://ADDR/metrics
    /// in the Prometheus text format (port 0: any free port; implies --per-guest-stats).
    #[arg(long, value_name = "ADDR")]
    metrics: Option<std::net::SocketAddr>,
    /// The device the kernel ends the machine with, as on the VMMs it is deployed on (the kernel
    /// picks what the machine has; without isa-debug-exit the verdict is read from the console).
    #[arg(long, value_enum, default_value_t = qemu::PowerOff::DebugExit)]
    power_off: qemu::PowerOff,
    /// Run on this VMM instead of QEMU (Firecracker: virtio-mmio; cloud-hypervisor: modern
    /// virtio-pci), on the tap network; writes its configuration next to the image, and says
    /// why it cannot run where the VMM or hardware KVM is missing.
    #[arg(long, value_enum)]
    vmm: Option<vmm::Vmm>,
}

fn main() {
    if let Err(error) = real_main() {
        eprintln!("error: {error:#}");
        std::process::exit(1);
    }
}

fn real_main() -> Result<()> {
    match Cli::parse().command {
        Cmd::Build { image } => {
            for image in pack::build(image.as_deref(), NetPlan::USER)? {
                println!("packed {} -> {}", image.name, image.dir.display());
            }
            Ok(())
        }
        Cmd::Run(args) => run(args),
        Cmd::Test { filter, qemu_only } => tests::run_all(filter.as_deref(), qemu_only),
        Cmd::Fuzz(args) => fuzz::run(&args),
        Cmd::TcpBenchClient { what, server, bytes, wait_secs } => {
            let transfer = tcpload::measure(what, server, bytes, Duration::from_secs(wait_secs))?;
            println!("{}", serde_json::to_string(&transfer)?);
            Ok(())
        }
        Cmd::UdpSweep { first, count, port, window, retry_after_ms, max_retries, seed } => {
            let plan = sweep::SweepPlan {
                first,
                count,
                port,
                window,
                retry_after: Duration::from_millis(retry_after_ms),
                max_retries,
                seed,
            };
            println!("{}", sweep::sweep(&plan)?.line());
            Ok(())
        }
        Cmd::UdpProbe { peer, sizes } => udp::probe(peer, &sizes),
        Cmd::UdpBurst { peers, sizes, seed, settle_ms, tap } => burst::command(&peers, &sizes, seed, settle_ms, &tap),
        Cmd::Bench { which: BenchCmd::Native } => native::run().map(|_| ()),
        Cmd::Bench { which: BenchCmd::Boot { runs } } => bootbench::run(runs.max(1)).map(|_| ()),
        Cmd::Bench { which: BenchCmd::Density { image, quick, no_bisect, tx } } => {
            let default = if quick { "echo-1k" } else { "echo-10k" };
            let bisect = if quick { density::QUICK_BISECT } else { density::FULL_BISECT };
            let plan = density::DensityPlan {
                image: image.as_deref().unwrap_or(default),
                tx,
                bisect: (!no_bisect).then_some(bisect),
            };
            density::bench(&plan).map(|_| ())
        }
        Cmd::Bench { which: BenchCmd::Dispatch { quick, accel, packets, csum, tx_paths, frames } } => {
            let (default, sizes) = if quick { (30, &dispatch::SIZES[..]) } else { (10_100, &dispatch::FULL_SIZES[..]) };
            let accel = qemu::resolve_accel(accel)?;
            let csum = csum.map(|word| word == "on");
            if !tx_paths {
                dispatch::run(packets.unwrap_or(default), sizes, accel, true, csum)?;
            }
            if tx_paths || (!quick && accel == qemu::Accel::Tcg) {
                let frames = if frames.is_empty() { &txpaths::FRAME_SIZES[..] } else { &frames[..] };
                txpaths::run(frames)?;
            }
            Ok(())
        }
        Cmd::Bench { which: BenchCmd::Baseline { quick, instructions: true } } => {
            baseline::run_instructions(quick).map(|_| ())
        }
        Cmd::Bench { which: BenchCmd::Baseline { quick, instructions: false } } => {
            baseline::run_baseline(if quick { bench::QUICK } else { bench::FULL }).map(|_| ())
        }
        Cmd::Bench { which: BenchCmd::Echo { quick, open_loop_only } } => {
            let parts = if open_loop_only { bench::EchoParts::OpenLoop } else { bench::EchoParts::All };
            bench::echo(if quick { bench::QUICK } else { bench::FULL }, parts).map(|_| ())
        }
        Cmd::Bench { which: BenchCmd::Isolation { quick, cells, echoes } } => {
            let mut load = if quick { isobench::QUICK } else { isobench::FULL };
            load.echoes = echoes.unwrap_or(load.echoes);
            isobench::run(load, &cells).map(|_| ())
        }
        Cmd::Bench { which: BenchCmd::Http { quick } } => {
            httpbench::run(if quick { httpbench::QUICK } else { httpbench::FULL }).map(|_| ())
        }
        Cmd::OpenLoopClient { peer, size, rate, trial_ms, drain_ms, linux_stats } => {
            if linux_stats {
                let counters = openloop::linux_stats(peer)?;
                let pairs: Vec<String> = counters.iter().map(|(k, v)| format!("{k}={v}")).collect();
                println!("linux-stats: {}", pairs.join(" "));
                return Ok(());
            }
            let plan = openloop::Plan {
                trial: Duration::from_millis(trial_ms),
                drain: Duration::from_millis(drain_ms),
                ..openloop::FULL
            };
            let trial = openloop::client_trial(peer, size, rate, &plan, tapnet::TAP_IFNAME)?;
            println!("{}", serde_json::to_string(&trial)?);
            Ok(())
        }
        Cmd::BenchClient { peers, quick } => {
            let cells = bench::measure(&peers, if quick { bench::QUICK } else { bench::FULL })?;
            println!("{}", serde_json::to_string(&cells)?);
            Ok(())
        }
    }
}

/// UDP and TCP port every guest's echo forward points at.
pub const ECHO_PORT: u16 = 7;
/// TCP port every guest's HTTP forward points at.
pub const HTTP_PORT: u16 = 80;
/// Guests that get host port forwards on the user network (three `hostfwd` each: UDP and TCP to
/// the echo port, TCP to the HTTP port; all in one QEMU argument, which Linux caps at 128 KiB):
/// the first ones.
const MAX_USER_FORWARDS: usize = 64;
/// Guests `cargo xtask run` lists one line each; the plan's pattern describes the rest.
const LISTED_GUESTS: usize = 8;

/// User-network forwards `(host port, guest address, guest port)`: host port `base + i` to
/// guest `i`'s `port`, for the first [`MAX_USER_FORWARDS`] guests.
fn user_forwards(base: u16, port: u16, guests: impl Iterator<Item = [u8; 4]>) -> Result<Vec<(u16, [u8; 4], u16)>> {
    guests
        .take(MAX_USER_FORWARDS)
        .enumerate()
        .map(|(i, ip)| match u16::try_from(usize::from(base) + i) {
            Ok(host_port) => Ok((host_port, ip, port)),
            Err(_) => bail!("port base {base}: guest {i}'s forward would be beyond port 65535"),
        })
        .collect()
}

fn run(args: RunArgs) -> Result<()> {
    let nic = match (args.machine, args.nic) {
        (Machine::Pc, nic) => nic.unwrap_or_default(),
        (Machine::Microvm, None) => NicTransport::Mmio,
        (Machine::Microvm, Some(_)) => bail!("--nic picks a PCI transport; microvm has virtio-mmio only"),
    };
    if args.machine == Machine::Microvm && args.power_off != qemu::PowerOff::DebugExit {
        // Run without ACPI (so that QEMU announces its devices) and with no i8042.
        bail!("--power-off: microvm here has neither ACPI nor an i8042; only debug-exit");
    }
    let plan = if args.net == NetChoice::Tap || args.vmm.is_some() { NetPlan::TAP } else { NetPlan::USER };
    let stamping = if args.stamps { pack::Stamping::Built } else { pack::Stamping::Absent };
    let image = pack::build_with(Some(&args.image), plan, stamping)?.remove(0);
    let append = kernel_cmdline(&args, &image);
    if let Some(vmm) = args.vmm {
        let namespace = tapnet::TapNamespace::create(&plan, image.manifest.kernel.mtu)?;
        println!("image {}: {}", image.name, image.manifest.description);
        println!("{}", plan.describe(image.guests.iter().filter(|g| g.net.is_some()).count()));
        return vmm::run(vmm, &image, append, &namespace);
    }
    let accel = qemu::resolve_accel(args.accel)?;
    let metrics_listener = args.metrics.map(metrics::bind).transpose()?;
    let net_guests: Vec<_> = image.guests.iter().filter_map(|g| g.net.map(|n| (g.name.clone(), n))).collect();
    if args.net == NetChoice::User && u64::from(image.manifest.kernel.mtu) > hypercall_abi::vnic::MTU {
        bail!(
            "image {} has MTU {}: jumbo frames need --net tap or --net none (QEMU's user network carries 1500)",
            image.name,
            image.manifest.kernel.mtu
        );
    }
    let namespace = match args.net {
        NetChoice::Tap => Some(tapnet::TapNamespace::create(&plan, image.manifest.kernel.mtu)?),
        _ => None,
    };
    let guest_ips = || net_guests.iter().map(|(_, n)| n.ipv4);
    let forwards = user_forwards(args.host_port_base, ECHO_PORT, guest_ips())?;
    let http_forwards = user_forwards(args.http_port_base, HTTP_PORT, guest_ips())?;
    let backend = match args.net {
        NetChoice::User => {
            let tcp_forwards = forwards.iter().chain(&http_forwards).copied().collect();
            Some(NetBackend::User { forwards: forwards.clone(), tcp_forwards })
        }
        NetChoice::Tap => Some(NetBackend::Tap { ifname: tapnet::TAP_IFNAME.into() }),
        NetChoice::None => None,
    };
    let config = QemuConfig {
        kernel: &image.kernel,
        initrd: image.initrd.as_deref(),
        accel,
        memory_mib: image.manifest.kernel.memory_mib,
        append,
        gdb: args.gdb,
        icount: args.icount,
        net: backend,
        nic,
        pcap: args.pcap.as_deref(),
        netns: namespace.as_ref().map(|ns| ns.name.as_str()),
        nic_tx_delay: args.nic_tx_delay_us.map(Duration::from_micros),
        power_off: args.power_off,
    };
    if args.icount && accel != qemu::Accel::Tcg {
        bail!("--icount needs TCG (--accel tcg)");
    }
    let cmd = config.command();
    qemu::save_command(&image.dir, &cmd)?;
    println!("image {}: {}", image.name, image.manifest.description);
    println!("accelerator: {} ({})", accel.name(), accel_reason(args.accel));
    println!("machine: {}, NIC: {}", nic.machine().name(), nic.kernel_name());
    println!("qemu command: {}", qemu::shell_line(&cmd));
    if args.gdb {
        println!("waiting for gdb: gdb {} -ex 'target remote :1234'", image.kernel.display());
    }
    if args.net != NetChoice::None {
        println!("{}", plan.describe(net_guests.len()));
    }
    for (i, (name, net)) in net_guests.iter().enumerate().take(LISTED_GUESTS) {
        match (&args.net, &namespace, forwards.get(i).zip(http_forwards.get(i))) {
            (NetChoice::User, _, Some(((host_port, _, _), (http_port, _, _)))) => println!(
                "guest {name}: {} (udp and tcp 127.0.0.1:{host_port} -> port {ECHO_PORT}; tcp 127.0.0.1:{http_port} -> port {HTTP_PORT})",
                format_ip(net.ipv4)
            ),
            (NetChoice::Tap, Some(ns), _) => println!(
                "guest {name}: {} (try: ip netns exec {} ping {0}; ip netns exec {1} nc [-u] {0} {ECHO_PORT})",
                format_ip(net.ipv4),
                ns.name
            ),
            _ => println!("guest {name}: {} (vswitch only)", format_ip(net.ipv4)),
        }
    }
    if net_guests.len() > LISTED_GUESTS {
        println!("... and {} more guests with a NIC, by the pattern above", net_guests.len() - LISTED_GUESTS);
    }
    if args.net == NetChoice::User && net_guests.len() > forwards.len() {
        println!(
            "host port forwards: the first {} guests only (127.0.0.1:{}..={}); the others are reachable from guests",
            forwards.len(),
            args.host_port_base,
            forwards.last().map_or(args.host_port_base, |f| f.0)
        );
    }
    let margin = if accel == qemu::Accel::Kvm { 120 } else { 30 };
    let timeout = args.timeout.or(args.for_secs.map(|s| s + margin)).map(Duration::from_secs);
    println!("type q and Enter to end the run (the kernel prints its stats and exits)");
    let mut session = qemu::Session::start(cmd, timeout.unwrap_or(Duration::MAX), true)?;
    if let Some(listener) = metrics_listener {
        println!("metrics: http://{}{} (Prometheus text format)", listener.local_addr()?, metrics::PATH);
        metrics::serve(listener, session.shared_log());
    }
    if let Some(mut qemu_stdin) = session.take_stdin() {
        std::thread::spawn(move || std::io::copy(&mut std::io::stdin(), &mut qemu_stdin));
    }
    let outcome = session.finish()?;
    drop(namespace);
    println!("{}", outcome.describe());
    match outcome.exit() {
        Some(KernelExit::Success) => Ok(()),
        _ => bail!("image {} did not end with success", image.name),
    }
}

/// The kernel command line for `image` as `args` ask: log level, run length, transmit path, FPU
/// policy, stamps and per-guest stats.
fn kernel_cmdline(args: &RunArgs, image: &pack::Image) -> String {
    let log = args.log.clone().unwrap_or_else(|| image.manifest.kernel.log.clone());
    let mut append = format!("{}={log}", keys::LOG);
    if let Some(secs) = args.for_secs {
        append += &format!(" {}={secs}", keys::SHUTDOWN_AFTER);
    }
    let tx = args.tx.unwrap_or(image.manifest.kernel.tx);
    append += &format!(" {}={}", keys::TX, tx.name());
    append += &format!(" {}={}", keys::FPU, args.fpu.as_deref().unwrap_or(&image.manifest.kernel.fpu));
    if let Some(csum) = &args.csum {
        append += &format!(" {}={csum}", keys::CSUM);
    }
    if args.stamps {
        append += &format!(" {}=on", keys::STAMPS);
    }
    if args.per_guest_stats || args.metrics.is_some() {
        append += &format!(" {}=per-guest", keys::STATS);
    }
    append
}

fn accel_reason(choice: AccelChoice) -> &'static str {
    match choice {
        AccelChoice::Auto if qemu::host_has_hardware_virtualization() => "auto: host CPU has vmx/svm",
        AccelChoice::Auto => "auto: no vmx/svm on this host, and PVM's /dev/kvm is slower than TCG",
        _ => "as requested",
    }
}

#[cfg(test)]
mod cli_tests {
    use super::*;
    use clap::CommandFactory;

    /// Every subcommand, option and option value says what it is in `--help`.
    #[test]
    fn every_command_and_option_is_described() {
        fn check(command: &clap::Command, path: &str, missing: &mut Vec<String>) {
            for arg in command.get_arguments().filter(|a| !matches!(a.get_id().as_str(), "help" | "version")) {
                let name = format!("{path} --{}", arg.get_id());
                if arg.get_help().is_none() {
                    missing.push(name.clone());
                }
                // Flags (`--quick`) have the possible values true and false, which need no words; a
                // value the option's own help names (`--log`'s levels) needs none either.
                let values = if arg.get_action().takes_values() { arg.get_possible_values() } else { Vec::new() };
                let help = arg.get_help().map(|h| h.to_string()).unwrap_or_default();
                let named = |value: &str| help.split(|c: char| !c.is_alphanumeric() && c != '_').any(|w| w == value);
                for value in values.iter().filter(|v| v.get_help().is_none() && !named(v.get_name())) {
                    missing.push(format!("{name}={}", value.get_name()));
                }
            }
            for sub in command.get_subcommands().filter(|s| s.get_name() != "help") {
                let sub_path = format!("{path} {}", sub.get_name());
                if sub.get_about().is_none() {
                    missing.push(sub_path.clone());
                }
                check(sub, &sub_path, missing);
            }
        }
        Cli::command().debug_assert();
        let mut missing = Vec::new();
        check(&Cli::command(), "xtask", &mut missing);
        assert!(missing.is_empty(), "no description: {missing:?}");
    }

    #[test]
    fn user_forwards_cover_the_first_guests_and_stay_in_port_range() {
        let plan = NetPlan::USER;
        let forwards = user_forwards(7000, ECHO_PORT, (0..10_000).map(|i| plan.guest_ip(i))).unwrap();
        assert_eq!(forwards.len(), MAX_USER_FORWARDS);
        assert_eq!(forwards[0], (7000, [10, 0, 2, 16], ECHO_PORT));
        assert_eq!(forwards[MAX_USER_FORWARDS - 1].0, 7000 + MAX_USER_FORWARDS as u16 - 1);
        let http = user_forwards(8080, HTTP_PORT, (0..3).map(|i| plan.guest_ip(i))).unwrap();
        assert_eq!(http[2], (8082, [10, 0, 2, 18], HTTP_PORT));
        assert_eq!(user_forwards(65_535, ECHO_PORT, (0..1).map(|i| plan.guest_ip(i))).unwrap().len(), 1);
        let error = user_forwards(65_535, ECHO_PORT, (0..2).map(|i| plan.guest_ip(i))).unwrap_err().to_string();
        assert!(error.contains("beyond port 65535"), "{error}");
    }

    #[test]
    fn tx_is_parsed_by_its_command_line_word() {
        let parse = |args: &[&str]| Cli::try_parse_from(args.iter().copied()).map(|cli| cli.command);
        assert!(matches!(parse(&["xtask", "run", "--tx", "cow"]), Ok(Cmd::Run(RunArgs { tx: Some(TxMode::Cow), .. }))));
        assert!(matches!(parse(&["xtask", "run"]), Ok(Cmd::Run(RunArgs { tx: None, .. }))));
        assert!(parse(&["xtask", "run", "--tx", "zero"]).is_err());
    }
}
