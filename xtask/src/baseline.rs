//! `cargo xtask bench baseline`: the same measurements against a Linux VM in the same QEMU
//! (accelerator, `pc` machine, legacy virtio-net, user network): Debian's kernel
//! (`linux-image-amd64`, fetched with `apt-get download`) and an initramfs whose `/init` is a
//! static C program (`linux-baseline/echo-init.c`) that loads the virtio-net modules, configures
//! eth0 and serves UDP echo on port 7 (and TCP echo and HTTP, for `bench http`). Reports the time
//! from QEMU start to the first echo answered and the echo figures for both, with the ratio.

use crate::bench::{self, EchoCell, Load};
use crate::icount;
use crate::initrd::CpioWriter;
use crate::manifest::NetPlan;
use crate::openloop;
use crate::pack::{self, Artifacts};
use crate::qemu::{Accel, NetBackend, QemuConfig, Session, QEMU};
use crate::tapnet::TapNamespace;
use anyhow::{bail, Context, Result};
use std::fmt::Write as _;
use std::net::{SocketAddr, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

/// Modules `/init` loads, in dependency order (see `modinfo -F depends`).
const MODULES: [&str; 8] = [
    "drivers/virtio/virtio_ring",
    "drivers/virtio/virtio",
    "drivers/virtio/virtio_pci_legacy_dev",
    "drivers/virtio/virtio_pci_modern_dev",
    "drivers/virtio/virtio_pci",
    "net/core/failover",
    "drivers/net/net_failover",
    "drivers/net/virtio_net",
];
/// The Linux VM's address on QEMU's user network.
pub const LINUX_IP: [u8; 4] = [10, 0, 2, 15];

fn run(cmd: &mut Command, what: &str) -> Result<String> {
    let out = cmd.output().with_context(|| format!("running {what}"))?;
    if !out.status.success() {
        bail!("{what} failed: {}", String::from_utf8_lossy(&out.stderr).trim());
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// The Linux kernel and initramfs, fetched and built once under `target/linux-baseline/`.
pub fn prepare() -> Result<(PathBuf, PathBuf)> {
    let dir = pack::workspace_root().join("target/linux-baseline");
    std::fs::create_dir_all(&dir)?;
    let initramfs = dir.join("initramfs.cpio");
    let root = dir.join("root");
    let existing = std::fs::read_dir(root.join("boot")).ok().and_then(|mut d| {
        d.find_map(|e| {
            e.ok()
                .map(|e| e.path())
                .filter(|p| p.file_name().is_some_and(|n| n.to_string_lossy().starts_with("vmlinuz-")))
        })
    });
    let kernel = match existing {
        Some(kernel) => kernel,
        None => {
            let depends = run(Command::new("apt-cache").args(["depends", "linux-image-amd64"]), "apt-cache depends")?;
            let package = depends
                .lines()
                .find_map(|l| l.trim().strip_prefix("Depends: ").filter(|p| p.starts_with("linux-image-")))
                .context("linux-image-amd64 names no kernel package (run apt-get update?)")?
                .to_string();
            run(Command::new("apt-get").current_dir(&dir).args(["download", &package]), "apt-get download")?;
            let deb = std::fs::read_dir(&dir)?
                .filter_map(|e| e.ok().map(|e| e.path()))
                .find(|p| p.extension().is_some_and(|x| x == "deb"))
                .context("the downloaded .deb is missing")?;
            run(Command::new("dpkg-deb").arg("-x").arg(&deb).arg(&root), "dpkg-deb -x")?;
            std::fs::remove_file(&deb)?;
            std::fs::read_dir(root.join("boot"))?
                .filter_map(|e| e.ok().map(|e| e.path()))
                .find(|p| p.file_name().is_some_and(|n| n.to_string_lossy().starts_with("vmlinuz-")))
                .context("no vmlinuz in the kernel package")?
        }
    };
    let version = kernel
        .file_name()
        .and_then(|n| n.to_str())
        .and_then(|n| n.strip_prefix("vmlinuz-"))
        .context("kernel name")?
        .to_string();
    let init = dir.join("echo-init");
    let source = Path::new(env!("CARGO_MANIFEST_DIR")).join("linux-baseline/echo-init.c");
    run(
        Command::new("gcc").args(["-static", "-O2", "-o"]).arg(&init).arg(&source),
        "gcc -static (the baseline's /init)",
    )?;
    let mut archive = CpioWriter::default();
    archive.add("lib", &[], 0o040755);
    archive.add("init", &std::fs::read(&init)?, 0o100755);
    let modules = root.join("lib/modules").join(&version).join("kernel");
    for module in MODULES {
        let path = modules.join(format!("{module}.ko"));
        let name = Path::new(module).file_name().and_then(|n| n.to_str()).context("module name")?;
        archive.add(
            &format!("lib/{name}.ko"),
            &std::fs::read(&path).with_context(|| format!("reading {}", path.display()))?,
            0o100644,
        );
    }
    std::fs::write(&initramfs, archive.finish())?;
    Ok((kernel, initramfs))
}

/// Sends a datagram every 20 ms until one is echoed; the time since `start`.
fn first_echo(peer: SocketAddr, start: Instant, limit: Duration) -> Result<Duration> {
    let socket = UdpSocket::bind("127.0.0.1:0")?;
    socket.set_read_timeout(Some(Duration::from_millis(20)))?;
    let mut buf = [0u8; 64];
    while start.elapsed() < limit {
        socket.send_to(b"first", peer)?;
        if let Ok((len, _)) = socket.recv_from(&mut buf) {
            if &buf[..len] == b"first" {
                return Ok(start.elapsed());
            }
        }
    }
    bail!("no echo within {limit:?}")
}

struct Measured {
    boot_to_first_echo: Duration,
    rows: Vec<EchoCell>,
}

/// `target/bench/baseline.json`.
#[derive(serde::Serialize)]
struct BaselineReport {
    accel: &'static str,
    network: &'static str,
    unit: &'static str,
    results: Vec<Figure>,
    /// The open-loop search on both systems, one server each, user and tap networks.
    open_loop: Vec<openloop::Cell>,
}

/// One figure measured on both: ratio = ours / linux.
#[derive(serde::Serialize)]
struct Figure {
    figure: String,
    ours: f64,
    linux: f64,
    ratio: f64,
}

fn measure_ours(artifacts: &Artifacts, load: Load, base: u16) -> Result<Measured> {
    let image = pack::pack_image("udp-echo", artifacts, NetPlan::USER)?;
    let guests: Vec<_> = image.guests.iter().filter_map(|g| g.net).collect();
    let forwards = guests.iter().enumerate().map(|(i, n)| (base + i as u16, n.ipv4, 7)).collect();
    let config = QemuConfig {
        net: Some(NetBackend::User { forwards, tcp_forwards: Vec::new() }),
        ..QemuConfig::for_image(&image, Accel::Tcg, "log=warn shutdown_after=600 tx=copy".into())
    };
    let start = Instant::now();
    let mut session = Session::start(config.command(), Duration::from_secs(600), false)?;
    let peer0 = SocketAddr::from(([127, 0, 0, 1], base));
    let boot_to_first_echo = first_echo(peer0, start, Duration::from_secs(60))?;
    let peers: Vec<SocketAddr> =
        (0..guests.len()).map(|i| SocketAddr::from(([127, 0, 0, 1], base + i as u16))).collect();
    let rows = bench::measure(&peers, load)?;
    session.request_quit();
    session.finish()?;
    Ok(Measured { boot_to_first_echo, rows })
}

/// How the Linux VM is networked.
pub enum LinuxNet<'a> {
    /// QEMU's user network, the VM at [`LINUX_IP`]; forwards `(protocol, host port, guest port)`
    /// from 127.0.0.1, protocol `udp` or `tcp`.
    User { forwards: Vec<(&'static str, u16, u16)> },
    /// The tap device of `namespace` (QEMU runs inside it), the VM at `ip` with `mtu`.
    Tap { namespace: &'a TapNamespace, ip: [u8; 4], mtu: u16 },
}

/// The QEMU command that boots the Linux VM: the same machine, accelerator and NIC model as ours.
pub fn linux_command(kernel: &Path, initramfs: &Path, net: &LinuxNet) -> Command {
    let (mut cmd, netdev, [a, b, c, d], mtu) = match net {
        LinuxNet::User { forwards } => {
            let [a, b, c, d] = LINUX_IP;
            let mut netdev = String::from("user,id=net0,net=10.0.2.0/24");
            for (protocol, host_port, guest_port) in forwards {
                let _ = write!(netdev, ",hostfwd={protocol}:127.0.0.1:{host_port}-{a}.{b}.{c}.{d}:{guest_port}");
            }
            (Command::new(QEMU), netdev, LINUX_IP, hypercall_abi::vnic::MTU as u16)
        }
        LinuxNet::Tap { namespace, ip, mtu } => {
            let netdev = format!("tap,id=net0,ifname={},script=no,downscript=no", crate::tapnet::TAP_IFNAME);
            (namespace.command(QEMU), netdev, *ip, *mtu)
        }
    };
    cmd.args(["-M", "pc", "-nodefaults", "-no-reboot", "-display", "none", "-monitor", "none"]);
    if Path::new("/usr/share/qemu/qboot.rom").exists() {
        cmd.args(["-bios", "/usr/share/qemu/qboot.rom"]);
    }
    cmd.args(["-accel", "tcg", "-cpu", "max", "-smp", "1", "-m", "256M", "-serial", "stdio"]);
    cmd.arg("-kernel").arg(kernel).arg("-initrd").arg(initramfs);
    cmd.args(["-append", &format!("console=ttyS0 quiet ik.ip={a}.{b}.{c}.{d} ik.mtu={mtu}")]);
    cmd.arg("-netdev").arg(netdev);
    cmd.args(["-device", "virtio-net-pci,netdev=net0,disable-modern=on,romfile=,mac=52:54:00:12:34:57"]);
    cmd
}

fn measure_linux(kernel: &Path, initramfs: &Path, load: Load, base: u16) -> Result<Measured> {
    // Four host ports to the one Linux server: the "4 guests" cells load it from 4 streams.
    let forwards = (0..4u16).map(|i| ("udp", base + i, 7)).collect();
    let cmd = linux_command(kernel, initramfs, &LinuxNet::User { forwards });
    let start = Instant::now();
    let session = Session::start(cmd, Duration::from_secs(600), false)?;
    let boot_to_first_echo = first_echo(SocketAddr::from(([127, 0, 0, 1], base)), start, Duration::from_secs(120))
        .with_context(|| format!("the Linux VM never echoed; its console:\n{}", session.log()))?;
    let peers: Vec<SocketAddr> = (0..4).map(|i| SocketAddr::from(([127, 0, 0, 1], base + i))).collect();
    let rows = bench::measure(&peers, load)?;
    drop(session); // killed: the Linux VM has no clean way out here
    Ok(Measured { boot_to_first_echo, rows })
}

/// Boots the Linux VM on `client`'s network and runs the open-loop search against its UDP echo
/// server, each of `sizes`; its `/init`'s counters say where the lowest failing rate's
/// datagrams went.
fn open_loop_linux(
    kernel: &Path,
    initramfs: &Path,
    client: openloop::Client,
    plan: &openloop::Plan,
    sizes: &[usize],
) -> Result<Vec<openloop::Cell>> {
    let port = 24_002 + (std::process::id() % 1_000) as u16 * 4;
    let (net, peer) = match client {
        openloop::Client::Namespace(namespace) => {
            let ip = NetPlan::TAP.guest_ip(0);
            let mtu = hypercall_abi::vnic::MTU as u16;
            (LinuxNet::Tap { namespace, ip, mtu }, SocketAddr::from((ip, crate::ECHO_PORT)))
        }
        openloop::Client::Here => (
            LinuxNet::User { forwards: vec![("udp", port, crate::ECHO_PORT)] },
            SocketAddr::from(([127, 0, 0, 1], port)),
        ),
    };
    let session = Session::start(linux_command(kernel, initramfs, &net), Duration::from_secs(3000), false)?;
    // Up once it answers the counters request.
    let start = Instant::now();
    while client.linux_stats(peer).is_err() {
        if start.elapsed() > Duration::from_secs(120) {
            bail!("the Linux VM never answered; its console:\n{}", session.log());
        }
    }
    openloop::measure(openloop::System::Linux, client, peer, sizes, plan, || {
        std::thread::sleep(Duration::from_secs(1));
        client.linux_stats(peer)
    })
    // The session ends (QEMU killed) when dropped: the Linux VM has no clean way out here.
}

/// Sequential echoes per size for the whole-machine instruction count (as `bench dispatch`).
const INSTRUCTION_ECHOES: usize = 3_000;
const INSTRUCTION_ECHOES_QUICK: usize = 200;
/// Payload sizes of the instruction count.
const INSTRUCTION_SIZES: [usize; 2] = [100, 1_400];

/// Instructions per echo, kernel and user halves, of `count` sequential echoes of each size
/// sent to `peer` (a machine run with `-icount shift=0` and the counting plugin, already
/// answering): warmed up with sizes one byte shorter, an idle window's rate taken off, a pause
/// after each echo so that every echo takes the same path (see `bench dispatch`).
fn instructions_per_echo(
    counter: &icount::Counter,
    peer: SocketAddr,
    sizes: &[usize],
    count: usize,
) -> Result<Vec<(usize, icount::PerItem)>> {
    use crate::dispatch::{ECHO_GAP, IDLE_WINDOW, IDLE_WINDOWS, SETTLE};
    let socket = crate::udp::warmed_echo_socket(peer, sizes)?;
    let idle = counter.idle_rate(IDLE_WINDOW, IDLE_WINDOWS)?;
    let mut per_size = Vec::new();
    for &size in sizes {
        let data = crate::udp::random_bytes(size as u64, size);
        let (before, t0) = counter.read_settled(SETTLE)?;
        crate::udp::echo_paced(&socket, peer, &data, count, ECHO_GAP)?;
        let echoed = count;
        let (after, t1) = counter.read_settled(SETTLE)?;
        per_size.push((size, icount::PerItem::of(after.since(before), t1 - t0, idle, echoed as u64)));
    }
    Ok(per_size)
}

/// Whole-machine instructions per UDP echo, ours (one udp-echo guest, copy path, the kernel's
/// default checksum offload) and the Linux VM's, in the same QEMU (TCG `-icount shift=0`, `pc`,
/// legacy virtio-net, user network), counted by the plugin: `(size, ours, linux)`.
pub fn instructions_ours_and_linux(
    artifacts: &Artifacts,
    kernel: &Path,
    initramfs: &Path,
    count: usize,
) -> Result<Vec<(usize, icount::PerItem, icount::PerItem)>> {
    let port = 26_000 + (std::process::id() % 1_000) as u16 * 2;
    let peer = SocketAddr::from(([127, 0, 0, 1], port));
    let image = pack::pack_image("udp-echo", artifacts, NetPlan::USER)?;
    let guest = image.guests.iter().find_map(|g| g.net).context("udp-echo has a networked guest")?;
    let config = QemuConfig {
        net: Some(NetBackend::User { forwards: vec![(port, guest.ipv4, crate::ECHO_PORT)], tcp_forwards: Vec::new() }),
        icount: true,
        ..QemuConfig::for_image(&image, Accel::Tcg, "log=warn shutdown_after=3600 tx=copy".into())
    };
    let mut cmd = config.command();
    let (counter, args) = icount::Counter::new("baseline-ours")?;
    cmd.args(args);
    let start = Instant::now();
    let mut session = Session::start(cmd, Duration::from_secs(1800), false)?;
    first_echo(peer, start, Duration::from_secs(120))?;
    let ours = instructions_per_echo(&counter, peer, &INSTRUCTION_SIZES, count)?;
    session.request_quit();
    session.finish()?;

    let mut cmd = linux_command(kernel, initramfs, &LinuxNet::User { forwards: vec![("udp", port + 1, 7)] });
    let (counter, args) = icount::Counter::new("baseline-linux")?;
    cmd.args(["-icount", "shift=0"]).args(args);
    let start = Instant::now();
    let session = Session::start(cmd, Duration::from_secs(1800), false)?;
    let linux_peer = SocketAddr::from(([127, 0, 0, 1], port + 1));
    first_echo(linux_peer, start, Duration::from_secs(300))
        .with_context(|| format!("the Linux VM never echoed; its console:\n{}", session.log()))?;
    let linux = instructions_per_echo(&counter, linux_peer, &INSTRUCTION_SIZES, count)?;
    drop(session); // killed: the Linux VM has no clean way out here
    Ok(ours.into_iter().zip(linux).map(|((size, ours), (_, linux))| (size, ours, linux)).collect())
}

/// Prints the instruction counts side by side, and returns them as figures.
fn print_instructions(counts: &[(usize, icount::PerItem, icount::PerItem)]) -> Vec<Figure> {
    println!("whole-machine instructions per echo (TCG -icount, plugin; idle subtracted): kernel + user = total");
    println!("{:<10} {:>28} {:>28} {:>8}", "size", "ours", "linux", "ratio");
    let mut figures = Vec::new();
    for (size, ours, linux) in counts {
        let ratio = ours.total() / linux.total().max(1.0);
        let cell = |p: &icount::PerItem| format!("{:.0} + {:.0} = {:.0}", p.kernel, p.guest, p.total());
        println!("{:<10} {:>28} {:>28} {:>8.2}", format!("{size} B"), cell(ours), cell(linux), ratio);
        figures.push(Figure {
            figure: format!("instructions per echo, {size} B"),
            ours: bench::rounded(ours.total(), 1),
            linux: bench::rounded(linux.total(), 1),
            ratio: bench::rounded(ratio, 3),
        });
    }
    figures
}

/// `bench baseline --instructions`: only the instruction count, ours and Linux's.
pub fn run_instructions(quick: bool) -> Result<PathBuf> {
    let (kernel, initramfs) = prepare()?;
    let artifacts = Artifacts::build()?;
    let count = if quick { INSTRUCTION_ECHOES_QUICK } else { INSTRUCTION_ECHOES };
    let counts = instructions_ours_and_linux(&artifacts, &kernel, &initramfs, count)?;
    let figures = print_instructions(&counts);
    let report =
        BaselineReport { accel: "tcg", network: "user", unit: "instructions", results: figures, open_loop: Vec::new() };
    let path = bench::write_json("baseline-instructions.json", &report)?;
    println!("wrote {}", path.display());
    Ok(path)
}

pub fn run_baseline(load: Load) -> Result<PathBuf> {
    let (kernel, initramfs) = prepare()?;
    let artifacts = Artifacts::build()?;
    let base = 22_000 + (std::process::id() % 1_000) as u16 * 8;
    let ours = measure_ours(&artifacts, load, base)?;
    let linux = measure_linux(&kernel, &initramfs, load, base + 4)?;
    println!("ours vs a Linux VM, same QEMU (TCG, pc, legacy virtio-net, user network), wall clock, one run:");
    println!("{:<40} {:>12} {:>12} {:>8}", "figure", "ours", "linux", "ratio");
    let mut figures = Vec::new();
    let mut line = |figure: String, ours: f64, linux: f64| {
        let ratio = ours / linux;
        println!("{figure:<40} {ours:>12.1} {linux:>12.1} {ratio:>8.2}");
        figures.push(Figure {
            figure,
            ours: bench::rounded(ours, 1),
            linux: bench::rounded(linux, 1),
            ratio: bench::rounded(ratio, 3),
        });
    };
    line(
        "boot to first echo (ms)".into(),
        ours.boot_to_first_echo.as_secs_f64() * 1e3,
        linux.boot_to_first_echo.as_secs_f64() * 1e3,
    );
    for (o, l) in ours.rows.iter().zip(&linux.rows) {
        // Latency is measured once per size (one stream); print it with the 1-stream row.
        if o.guests == 1 {
            line(format!("rtt p50 us, {} B", o.size), o.rtt_p50_us, l.rtt_p50_us);
            line(format!("rtt p99 us, {} B", o.size), o.rtt_p99_us, l.rtt_p99_us);
        }
        line(format!("echoes/s, {} B, {} stream(s)", o.size, o.guests), o.echoes_per_second, l.echoes_per_second);
    }
    // The open loop: both systems one after the other on each network, one server each.
    let plan = if load.latency_samples == bench::QUICK.latency_samples { openloop::QUICK } else { openloop::FULL };
    let namespace = match crate::tapnet::unavailable_reason(&[]) {
        Some(why) => {
            println!("note: no tap network ({why}); the open loop runs over QEMU's user network only");
            None
        }
        None => Some(TapNamespace::create(&NetPlan::TAP, hypercall_abi::vnic::MTU as u16)?),
    };
    let mut clients = vec![openloop::Client::Here];
    clients.extend(namespace.as_ref().map(openloop::Client::Namespace));
    let mut open_loop = Vec::new();
    for client in clients {
        open_loop.extend(bench::open_loop_ours(&artifacts, client, &plan, &bench::OPEN_LOOP_SIZES)?);
        open_loop.extend(open_loop_linux(&kernel, &initramfs, client, &plan, &bench::OPEN_LOOP_SIZES)?);
    }
    openloop::print(&open_loop, &plan);
    let quick = load.latency_samples == bench::QUICK.latency_samples;
    let count = if quick { INSTRUCTION_ECHOES_QUICK } else { INSTRUCTION_ECHOES };
    let instructions = instructions_ours_and_linux(&artifacts, &kernel, &initramfs, count)?;
    println!("ours vs the Linux VM, open loop (one server each):");
    for ours in open_loop.iter().filter(|c| c.system == openloop::System::Ours) {
        let linux = open_loop
            .iter()
            .find(|c| c.system == openloop::System::Linux && c.network == ours.network && c.size == ours.size);
        if let Some(linux) = linux {
            line(
                format!("open-loop echoes/s < 1% loss, {} B, {}", ours.size, ours.network),
                ours.rate as f64,
                linux.rate as f64,
            );
        }
    }
    figures.extend(print_instructions(&instructions));
    let report = BaselineReport { accel: "tcg", network: "user", unit: "wall-clock", results: figures, open_loop };
    let path = bench::write_json("baseline.json", &report)?;
    println!("wrote {} (our figures: 4 guests, one per stream; Linux: one VM serving every stream)", path.display());
    Ok(path)
}
