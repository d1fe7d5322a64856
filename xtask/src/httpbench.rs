//! `cargo xtask bench http`: TCP and HTTP from host clients, against our `http` and `tcp-echo`
//! guests and against the Linux VM of `bench baseline` (whose `/init` serves the same endpoints
//! and TCP echo), in the same QEMU (TCG, `pc`, legacy virtio-net), one system after the other:
//!
//! - keep-alive `GET /` with `wrk`: requests per second and latency p50/p99 with 1 and with 32
//!   connections per server, to 1 server and to 4 at once (one `wrk` per server, run together,
//!   requests per second summed, latency the highest of the four), over QEMU's user network
//!   (the `http` image's transmit path) and over the tap network at MTU 1500 (copy and COW);
//!   Linux's "4 servers" are 4 host ports forwarded to its one VM, or its one address 4 times;
//! - over the tap network: the download of `/bytes/N` at MTU 1500 (`http`) and 9000
//!   (`http-jumbo`), and N bytes through TCP echo and back (MTU 1500), every byte checked, copy
//!   and COW.
//!
//! QEMU 7.2's user network listens on each forwarded port with a backlog of one, so a burst of
//! connections is accepted over seconds of SYN retries; `wrk` corrects its latencies for
//! coordinated omission, so such a wait shows in the percentiles of the user-network cells (for
//! both systems alike). The tap cells have no such front door.
//!
//! Prints ours, Linux's and the ratio (ours / Linux) and writes `http.json` and `http.svg`.
//! Wall-clock figures under TCG: compare the columns of one run.

use crate::baseline::{self, LinuxNet};
use crate::bench::{self, rounded};
use crate::chart::{self, Bars, Panel, Series, PALETTE};
use crate::manifest::NetPlan;
use crate::pack::{self, Artifacts};
use crate::qemu::{Accel, NetBackend, QemuConfig, Session};
use crate::tapnet::TapNamespace;
use crate::tcpload::{self, Transfer, Workload, WrkErrors};
use crate::{TxMode, HTTP_PORT};
use anyhow::{bail, Context, Result};
use hypercall_abi::host::KernelExit;
use plotters::style::RGBColor;
use serde::{Deserialize, Serialize};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// Servers loaded at once in the request-rate cells, and connections per server.
pub const SERVER_COUNTS: [usize; 2] = [1, 4];
pub const CONNECTIONS: [u32; 2] = [1, 32];
/// The MTUs of the tap cells and the image of our HTTP guests for each.
const MTU_IMAGES: [(u16, &str); 2] = [(1500, "http"), (9000, "http-jumbo")];
const ECHO_IMAGE: &str = "tcp-echo";
/// Time for a system to boot and answer; the Linux VM takes ~10 s under TCG.
const BOOT_LIMIT: Duration = Duration::from_secs(120);

/// How much traffic a run makes.
#[derive(Clone, Copy)]
pub struct HttpLoad {
    /// Seconds of each `wrk` cell.
    pub wrk_seconds: u32,
    pub download_bytes: u64,
    pub echo_bytes: u64,
}

pub const FULL: HttpLoad = HttpLoad { wrk_seconds: 10, download_bytes: 256 << 20, echo_bytes: 64 << 20 };
pub const QUICK: HttpLoad = HttpLoad { wrk_seconds: 1, download_bytes: 16 << 20, echo_bytes: 4 << 20 };

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum System {
    Ours,
    Linux,
}

/// One request-rate cell: `servers` loaded at once, each by a `wrk` with
/// `connections_per_server` keep-alive connections.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RateRow {
    pub system: System,
    /// `user` or `tap`.
    pub network: String,
    /// Our transmit path (`copy` or `cow`); none for Linux.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tx: Option<String>,
    pub servers: usize,
    pub connections_per_server: u32,
    /// Summed over the servers' `wrk` processes.
    pub requests_per_second: f64,
    /// The highest of the servers' `wrk` processes.
    pub latency_p50_us: f64,
    pub latency_p99_us: f64,
    pub requests: u64,
    /// What the `wrk` processes counted, summed.
    pub errors: WrkErrors,
}

/// One download or echo stream.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StreamRow {
    pub system: System,
    pub mtu: u16,
    /// Our transmit path (`copy` or `cow`); none for Linux.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tx: Option<String>,
    pub bytes: u64,
    pub seconds: f64,
    /// Decimal megabytes (10^6 bytes) of payload per second (for echo: one direction's).
    pub megabytes_per_second: f64,
}

/// One figure measured on both systems: ratio = ours / linux.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Figure {
    pub figure: String,
    pub unit: String,
    pub ours: f64,
    pub linux: f64,
    pub ratio: f64,
}

/// `target/bench/http.json`.
#[derive(Debug, Serialize, Deserialize)]
pub struct HttpReport {
    pub accel: String,
    /// `wall-clock`: emulator time under TCG.
    pub unit: String,
    pub host_cpu: String,
    pub quick: bool,
    /// The network of the streams and the tap request-rate cells: `tap`, or `none` where no
    /// tap device could be made.
    pub tap_network: String,
    /// Our transmit path in the user-network request-rate cells (the `http` image's).
    pub user_tx: String,
    pub requests: Vec<RateRow>,
    pub downloads: Vec<StreamRow>,
    pub echoes: Vec<StreamRow>,
    pub figures: Vec<Figure>,
    /// What was not measured, and why.
    pub notes: Vec<String>,
}

/// Where a booted system is reached.
enum Net<'a> {
    /// QEMU's user network: host TCP ports `base..base+4` to port 80, `base+4..base+8` to port 7.
    User {
        base: u16,
    },
    Tap {
        namespace: &'a TapNamespace,
        mtu: u16,
    },
}

/// A system under test, running.
struct Booted {
    system: System,
    session: Session,
    /// The HTTP servers (ours: one per guest; Linux: 4 host ports to its one, or its one 4 times).
    http: Vec<SocketAddr>,
    echo: Vec<SocketAddr>,
}

impl Booted {
    /// Ours ends cleanly (its stats printed); the Linux VM, which has no clean way out, is killed.
    fn stop(mut self) -> Result<()> {
        if self.system == System::Linux {
            return Ok(());
        }
        self.session.request_quit();
        let outcome = self.session.finish()?;
        if outcome.exit() != Some(KernelExit::Success) {
            bail!("the kernel did not end cleanly: {}\n{}", outcome.describe(), outcome.log);
        }
        Ok(())
    }
}

fn user_forwards(base: u16, servers: usize) -> Vec<(u16, u16, usize)> {
    (0..servers)
        .map(|i| (base + i as u16, HTTP_PORT, i))
        .chain((0..servers).map(|i| (base + 4 + i as u16, crate::ECHO_PORT, i)))
        .collect()
}

fn localhost(port: u16) -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], port))
}

fn boot_ours(artifacts: &Artifacts, image: &str, tx: TxMode, net: &Net) -> Result<Booted> {
    let plan = if matches!(net, Net::Tap { .. }) { NetPlan::TAP } else { NetPlan::USER };
    let image = pack::pack_image(image, artifacts, plan)?;
    let guests: Vec<[u8; 4]> = image.guests.iter().filter_map(|g| g.net.map(|n| n.ipv4)).collect();
    let (backend, http, echo) = match net {
        Net::User { base } => {
            let forwards = user_forwards(*base, guests.len().min(4));
            let backend = NetBackend::User {
                forwards: Vec::new(),
                tcp_forwards: forwards.iter().map(|&(host, port, i)| (host, guests[i], port)).collect(),
            };
            let http = (0..guests.len().min(4)).map(|i| localhost(base + i as u16)).collect();
            let echo = (0..guests.len().min(4)).map(|i| localhost(base + 4 + i as u16)).collect();
            (backend, http, echo)
        }
        Net::Tap { .. } => {
            let backend = NetBackend::Tap { ifname: crate::tapnet::TAP_IFNAME.into() };
            let at = |port| guests.iter().map(|ip| SocketAddr::from((*ip, port))).collect();
            (backend, at(HTTP_PORT), at(crate::ECHO_PORT))
        }
    };
    let config = QemuConfig {
        net: Some(backend),
        netns: match net {
            Net::Tap { namespace, .. } => Some(namespace.name.as_str()),
            Net::User { .. } => None,
        },
        ..QemuConfig::for_image(&image, Accel::Tcg, format!("log=warn shutdown_after=1200 tx={}", tx.name()))
    };
    let session = Session::start(config.command(), Duration::from_secs(1500), false)?;
    Ok(Booted { system: System::Ours, session, http, echo })
}

fn boot_linux(kernel: &Path, initramfs: &Path, net: &Net) -> Result<Booted> {
    let (linux_net, http, echo) = match net {
        Net::User { base } => {
            let forwards = user_forwards(*base, 4);
            let linux_net =
                LinuxNet::User { forwards: forwards.iter().map(|&(host, port, _)| ("tcp", host, port)).collect() };
            let http = (0..4).map(|i| localhost(base + i)).collect();
            let echo = (0..4).map(|i| localhost(base + 4 + i)).collect();
            (linux_net, http, echo)
        }
        Net::Tap { namespace, mtu } => {
            let ip = NetPlan::TAP.guest_ip(0);
            let linux_net = LinuxNet::Tap { namespace, ip, mtu: *mtu };
            // Its one server four times: the "4 servers" cells load it from 4 clients.
            (linux_net, vec![SocketAddr::from((ip, HTTP_PORT)); 4], vec![SocketAddr::from((ip, crate::ECHO_PORT))])
        }
    };
    let session =
        Session::start(baseline::linux_command(kernel, initramfs, &linux_net), Duration::from_secs(1500), false)?;
    Ok(Booted { system: System::Linux, session, http, echo })
}

/// Every request-rate cell against `booted`'s HTTP servers, from this process (user network)
/// or from inside `namespace` (tap), once every server has answered.
fn measure_rates(
    booted: &Booted,
    namespace: Option<&TapNamespace>,
    tx: Option<TxMode>,
    load: HttpLoad,
) -> Result<Vec<RateRow>> {
    for &server in &booted.http {
        let ready = match namespace {
            None => tcpload::wait_until_serving(server, BOOT_LIMIT, tcpload::http_answers),
            // An empty download: the client waits for the server to answer first.
            Some(ns) => measure_in_namespace(ns, Workload::Download, server, 0).map(|_| ()),
        };
        ready.with_context(|| {
            format!("{:?}'s HTTP server at {server} never answered; console:\n{}", booted.system, booted.session.log())
        })?;
    }
    let mut rows = Vec::new();
    for servers in SERVER_COUNTS {
        let Some(targets) = booted.http.get(..servers) else {
            bail!("{:?} has fewer than {servers} servers", booted.system)
        };
        for connections in CONNECTIONS {
            let children = targets
                .iter()
                .map(|a| tcpload::spawn_wrk(namespace, &format!("http://{a}/"), connections, load.wrk_seconds))
                .collect::<Result<Vec<_>>>()?;
            let summaries = children.into_iter().map(tcpload::finish_wrk).collect::<Result<Vec<_>>>()?;
            let highest = |pick: fn(&tcpload::WrkSummary) -> f64| summaries.iter().map(pick).fold(0.0, f64::max);
            rows.push(RateRow {
                system: booted.system,
                network: if namespace.is_some() { "tap" } else { "user" }.into(),
                tx: tx.map(|t| t.name().to_string()),
                servers,
                connections_per_server: connections,
                requests_per_second: rounded(summaries.iter().map(|s| s.requests_per_second()).sum(), 1),
                latency_p50_us: highest(|s| s.p50_us),
                latency_p99_us: highest(|s| s.p99_us),
                requests: summaries.iter().map(|s| s.requests).sum(),
                errors: summaries.iter().fold(WrkErrors::default(), |sum, s| sum.plus(s.errors)),
            });
        }
    }
    Ok(rows)
}

/// One transfer measured by `cargo xtask tcp-bench-client` inside the namespace.
fn measure_in_namespace(namespace: &TapNamespace, what: Workload, server: SocketAddr, bytes: u64) -> Result<Transfer> {
    let exe = crate::setup::client_exe()?;
    let mut cmd = namespace.command(&exe.to_string_lossy());
    let what_name = match what {
        Workload::Download => "download",
        Workload::Echo => "echo",
    };
    cmd.args(["tcp-bench-client", "--what", what_name, "--server", &server.to_string()]);
    cmd.args(["--bytes", &bytes.to_string(), "--wait-secs", &BOOT_LIMIT.as_secs().to_string()]);
    let out = cmd.output().context("running the client in the namespace")?;
    if !out.status.success() {
        bail!("the {what_name} client failed: {}", String::from_utf8_lossy(&out.stderr).trim());
    }
    serde_json::from_slice(&out.stdout)
        .with_context(|| format!("the client's output is not a transfer: {}", String::from_utf8_lossy(&out.stdout)))
}

fn stream_row(system: System, mtu: u16, tx: Option<TxMode>, transfer: Transfer) -> StreamRow {
    StreamRow {
        system,
        mtu,
        tx: tx.map(|t| t.name().to_string()),
        bytes: transfer.bytes,
        seconds: rounded(transfer.seconds, 3),
        megabytes_per_second: rounded(transfer.megabytes_per_second(), 2),
    }
}

/// What one boot is measured for over tap.
#[derive(Clone, Copy)]
struct TapCells {
    download: bool,
    rates: bool,
    echo: bool,
}

/// `cells` measured on `booted` over tap; `booted` is stopped afterwards, even when a
/// measurement failed.
fn measure_tap(
    booted: Booted,
    namespace: &TapNamespace,
    mtu: u16,
    tx: Option<TxMode>,
    load: HttpLoad,
    cells: TapCells,
    report: &mut HttpReport,
) -> Result<()> {
    let system = booted.system;
    let measured = (|| -> Result<()> {
        let console = || format!("{system:?}, MTU {mtu}; console:\n{}", booted.session.log());
        if cells.download {
            let server = *booted.http.first().context("no HTTP server")?;
            let transfer = measure_in_namespace(namespace, Workload::Download, server, load.download_bytes)
                .with_context(console)?;
            report.downloads.push(stream_row(system, mtu, tx, transfer));
        }
        if cells.rates {
            report.requests.extend(measure_rates(&booted, Some(namespace), tx, load).with_context(console)?);
        }
        if cells.echo {
            let server = *booted.echo.first().context("no echo server")?;
            let transfer =
                measure_in_namespace(namespace, Workload::Echo, server, load.echo_bytes).with_context(console)?;
            report.echoes.push(stream_row(system, mtu, tx, transfer));
        }
        // Checked once it has answered, so booted: the MTU it asked for is the one it got.
        if system == System::Linux && !booted.session.log().contains(&format!("http on port 80, mtu {mtu}\n")) {
            bail!("the Linux VM's eth0 did not get MTU {mtu}; its console:\n{}", booted.session.log());
        }
        Ok(())
    })();
    let stopped = booted.stop();
    measured?;
    stopped
}

/// `cargo xtask bench http`: every cell, printed, and written to `target/bench/http.{json,svg}`.
pub fn run(load: HttpLoad) -> Result<PathBuf> {
    if let Some(why) = tcpload::wrk_missing() {
        bail!("{why}");
    }
    let (kernel, initramfs) = baseline::prepare()?;
    let artifacts = Artifacts::build()?;
    let user_tx = pack::pack_image(MTU_IMAGES[0].1, &artifacts, NetPlan::USER)?.manifest.kernel.tx;
    let mut report = HttpReport {
        accel: "tcg".into(),
        unit: "wall-clock".into(),
        host_cpu: bench::host_cpu(),
        quick: load.wrk_seconds == QUICK.wrk_seconds,
        tap_network: "tap".into(),
        user_tx: user_tx.name().into(),
        requests: Vec::new(),
        downloads: Vec::new(),
        echoes: Vec::new(),
        figures: Vec::new(),
        notes: Vec::new(),
    };
    let base = 30_000 + (std::process::id() % 1_000) as u16 * 8;
    let user = Net::User { base };
    println!("user network: request rates of ours ({} guests, tx {})", MTU_IMAGES[0].1, user_tx.name());
    let ours = boot_ours(&artifacts, MTU_IMAGES[0].1, user_tx, &user)?;
    let rows = measure_rates(&ours, None, Some(user_tx), load);
    ours.stop()?;
    report.requests.extend(rows?);
    println!("user network: request rates of Linux");
    let linux = boot_linux(&kernel, &initramfs, &user)?;
    let rows = measure_rates(&linux, None, None, load);
    linux.stop()?;
    report.requests.extend(rows?);
    if let Some(why) = crate::tapnet::unavailable_reason(&[]) {
        report.tap_network = "none".into();
        report.notes.push(format!("tap cells (downloads, echo, rates over tap) not measured: {why}"));
    } else {
        for (mtu, image) in MTU_IMAGES {
            let namespace = TapNamespace::create(&NetPlan::TAP, mtu)?;
            let net = Net::Tap { namespace: &namespace, mtu };
            // Request rates and echo at the standard MTU only: small requests fit any.
            let standard = mtu == MTU_IMAGES[0].0;
            for tx in TxMode::ALL {
                println!("tap, MTU {mtu}: ours ({image}, tx {})", tx.name());
                let ours = boot_ours(&artifacts, image, tx, &net)?;
                let cells = TapCells { download: true, rates: standard, echo: false };
                measure_tap(ours, &namespace, mtu, Some(tx), load, cells, &mut report)?;
            }
            println!("tap, MTU {mtu}: Linux");
            let linux = boot_linux(&kernel, &initramfs, &net)?;
            let cells = TapCells { download: true, rates: standard, echo: standard };
            measure_tap(linux, &namespace, mtu, None, load, cells, &mut report)?;
            if standard {
                for tx in TxMode::ALL {
                    println!("tap, MTU {mtu}: TCP echo through ours ({ECHO_IMAGE}, tx {})", tx.name());
                    let ours = boot_ours(&artifacts, ECHO_IMAGE, tx, &net)?;
                    let cells = TapCells { download: false, rates: false, echo: true };
                    measure_tap(ours, &namespace, mtu, Some(tx), load, cells, &mut report)?;
                }
            }
        }
    }
    report.figures = figures(&report);
    print_report(&report);
    let json = bench::write_json("http.json", &report)?;
    std::fs::write(json.with_file_name("http.svg"), http_svg(&report)?)?;
    println!("wrote {} and http.svg", json.display());
    Ok(json)
}

fn rate_label(servers: usize, connections: u32) -> String {
    let s = |n: usize| if n == 1 { "" } else { "s" };
    match servers {
        1 => format!("1 server, {connections} conn{}", s(connections as usize)),
        _ => format!("{servers} servers, {connections} conn{} each", s(connections as usize)),
    }
}

/// The request-rate cells of one system on one network (ours: with one transmit path).
fn rate_cell<'a>(
    report: &'a HttpReport,
    system: System,
    network: &str,
    tx: Option<&str>,
    (servers, connections): (usize, u32),
) -> Option<&'a RateRow> {
    report.requests.iter().find(|r| {
        r.system == system
            && r.network == network
            && r.tx.as_deref() == tx
            && r.servers == servers
            && r.connections_per_server == connections
    })
}

/// Every (servers, connections per server) cell, in order.
fn rate_cells() -> Vec<(usize, u32)> {
    SERVER_COUNTS.iter().flat_map(|&s| CONNECTIONS.iter().map(move |&c| (s, c))).collect()
}

/// Ours beside Linux's for every cell measured on both.
pub fn figures(report: &HttpReport) -> Vec<Figure> {
    let mut out = Vec::new();
    let mut add = |figure: String, unit: &str, ours: f64, linux: f64| {
        let ratio = if linux > 0.0 { rounded(ours / linux, 3) } else { 0.0 };
        out.push(Figure { figure, unit: unit.into(), ours, linux, ratio });
    };
    // Ours' (network, transmit path) groups, in the order measured.
    let mut groups: Vec<(&str, Option<&str>)> = Vec::new();
    for r in report.requests.iter().filter(|r| r.system == System::Ours) {
        if !groups.contains(&(r.network.as_str(), r.tx.as_deref())) {
            groups.push((r.network.as_str(), r.tx.as_deref()));
        }
    }
    for (network, tx) in groups {
        for cell in rate_cells() {
            let (Some(o), Some(l)) = (
                rate_cell(report, System::Ours, network, tx, cell),
                rate_cell(report, System::Linux, network, None, cell),
            ) else {
                continue;
            };
            let name = format!("{network}, tx {}, {}", tx.unwrap_or("?"), rate_label(cell.0, cell.1));
            add(format!("GET / rate, {name}"), "requests/s", o.requests_per_second, l.requests_per_second);
            add(format!("GET / latency p50, {name}"), "µs", o.latency_p50_us, l.latency_p50_us);
            add(format!("GET / latency p99, {name}"), "µs", o.latency_p99_us, l.latency_p99_us);
        }
    }
    for (name, rows) in [("download", &report.downloads), ("TCP echo", &report.echoes)] {
        for ours in rows.iter().filter(|r| r.system == System::Ours) {
            let Some(linux) = rows.iter().find(|r| r.system == System::Linux && r.mtu == ours.mtu) else { continue };
            let tx = ours.tx.as_deref().unwrap_or("?");
            add(
                format!("{name}, tap, MTU {}, tx {tx}", ours.mtu),
                "MB/s",
                ours.megabytes_per_second,
                linux.megabytes_per_second,
            );
        }
    }
    out
}

fn print_report(report: &HttpReport) {
    println!(
        "ours vs the Linux VM, same QEMU (TCG, pc, legacy virtio-net), wall clock, one run; ratio = ours / Linux:"
    );
    println!("{:<58} {:>10} {:>11} {:>11} {:>7}", "figure", "unit", "ours", "linux", "ratio");
    for f in &report.figures {
        println!("{:<58} {:>10} {:>11.1} {:>11.1} {:>7.2}", f.figure, f.unit, f.ours, f.linux, f.ratio);
    }
    for r in report.requests.iter().filter(|r| r.errors.total() > 0) {
        println!(
            "wrk counted errors against {:?} ({}, tx {}), {}: {:?} (of {} requests)",
            r.system,
            r.network,
            r.tx.as_deref().unwrap_or("-"),
            rate_label(r.servers, r.connections_per_server),
            r.errors,
            r.requests
        );
    }
    for note in &report.notes {
        println!("note: {note}");
    }
}

/// One bar colour of the request-rate panels: a system on a network (ours with a transmit path).
struct RateSeries {
    name: &'static str,
    colour: RGBColor,
    /// The p99 bars' colour beside the p50 bars' `colour` in the latency panels.
    p99_colour: RGBColor,
    system: System,
    tx: Option<&'static str>,
}

/// Five panels: request rate and latency over the user network and over tap; throughput.
fn http_svg(report: &HttpReport) -> Result<String> {
    let cells = rate_cells();
    let categories: Vec<String> = cells.iter().map(|&(s, c)| format!("{s} x {c}")).collect();
    let user_tx: &'static str = if report.user_tx == "cow" { "cow" } else { "copy" };
    let user = [
        RateSeries {
            name: "ours",
            colour: PALETTE[0],
            p99_colour: PALETTE[8],
            system: System::Ours,
            tx: Some(user_tx),
        },
        RateSeries { name: "Linux VM", colour: PALETTE[1], p99_colour: PALETTE[10], system: System::Linux, tx: None },
    ];
    let tap = [
        RateSeries {
            name: "ours, copy",
            colour: PALETTE[0],
            p99_colour: PALETTE[8],
            system: System::Ours,
            tx: Some("copy"),
        },
        RateSeries {
            name: "ours, COW",
            colour: PALETTE[4],
            p99_colour: PALETTE[9],
            system: System::Ours,
            tx: Some("cow"),
        },
        RateSeries { name: "Linux VM", colour: PALETTE[1], p99_colour: PALETTE[10], system: System::Linux, tx: None },
    ];
    let values = |network: &str, s: &RateSeries, pick: fn(&RateRow) -> f64| -> Vec<f64> {
        cells.iter().map(|&c| rate_cell(report, s.system, network, s.tx, c).map_or(0.0, pick)).collect()
    };
    let rate_panel = |network: &str, title: String, series: &[RateSeries]| Panel {
        title,
        x_desc: "servers loaded at once x connections per server".into(),
        y_desc: "requests per second (wall clock)".into(),
        legend_title: "system, transmit path".into(),
        categories: categories.clone(),
        series: series
            .iter()
            .map(|s| Series {
                name: s.name.into(),
                colour: s.colour,
                values: values(network, s, |r| r.requests_per_second),
            })
            .collect(),
        bars: Bars::Grouped,
    };
    let latency_panel = |network: &str, title: String, series: &[RateSeries]| Panel {
        title,
        x_desc: "servers loaded at once x connections per server".into(),
        y_desc: "latency (µs, wall clock, log scale)".into(),
        legend_title: "system, percentile".into(),
        categories: categories.clone(),
        series: series
            .iter()
            .flat_map(|s| {
                [
                    Series {
                        name: format!("{} p50", s.name),
                        colour: s.colour,
                        values: values(network, s, |r| r.latency_p50_us),
                    },
                    Series {
                        name: format!("{} p99", s.name),
                        colour: s.p99_colour,
                        values: values(network, s, |r| r.latency_p99_us),
                    },
                ]
            })
            .collect(),
        bars: Bars::GroupedLogScale,
    };
    let stream_categories: Vec<(&str, &Vec<StreamRow>, u16)> = vec![
        ("download, MTU 1500", &report.downloads, MTU_IMAGES[0].0),
        ("download, MTU 9000", &report.downloads, MTU_IMAGES[1].0),
        ("TCP echo, MTU 1500", &report.echoes, MTU_IMAGES[0].0),
    ];
    let stream_series = |s: &RateSeries| Series {
        name: s.name.into(),
        colour: s.colour,
        values: stream_categories
            .iter()
            .map(|(_, rows, mtu)| {
                rows.iter()
                    .find(|r| r.system == s.system && r.mtu == *mtu && r.tx.as_deref() == s.tx)
                    .map_or(0.0, |r| r.megabytes_per_second)
            })
            .collect(),
    };
    let panels = [
        rate_panel("user", format!("Keep-alive GET / (wrk), user network, ours tx {user_tx}"), &user),
        rate_panel("tap", "Keep-alive GET / (wrk), tap network, MTU 1500".into(), &tap),
        latency_panel("user", "GET / latency (wrk), user network".into(), &user),
        latency_panel("tap", "GET / latency (wrk), tap network".into(), &tap),
        Panel {
            title: "TCP throughput over tap, every byte checked".into(),
            x_desc: "transfer (download: /bytes/N; echo: N bytes out and back)".into(),
            y_desc: "payload MB/s (10^6 B/s, wall clock)".into(),
            legend_title: "system, transmit path".into(),
            categories: stream_categories.iter().map(|(name, _, _)| name.to_string()).collect(),
            series: tap.iter().map(stream_series).collect(),
            bars: Bars::Grouped,
        },
    ];
    chart::svg(&panels, 2, (720, 460))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Ours `scale` times as fast as Linux (latency `scale` times lower).
    fn rate_row(system: System, network: &str, tx: Option<TxMode>, (servers, connections): (usize, u32)) -> RateRow {
        let scale = match tx {
            None => 1.0,
            Some(TxMode::Copy) => 3.0,
            Some(TxMode::Cow) => 4.0,
            Some(TxMode::Split) => 5.0,
        };
        RateRow {
            system,
            network: network.into(),
            tx: tx.map(|t| t.name().into()),
            servers,
            connections_per_server: connections,
            requests_per_second: scale * 1000.0 * servers as f64 + connections as f64,
            latency_p50_us: 300.0 * connections as f64 / scale,
            latency_p99_us: 1200.0 * connections as f64 / scale,
            requests: 1000,
            errors: WrkErrors { read_errors: connections as u64, ..WrkErrors::default() },
        }
    }

    fn stream(system: System, mtu: u16, tx: Option<TxMode>, megabytes: f64) -> StreamRow {
        stream_row(system, mtu, tx, Transfer { bytes: (megabytes * 1e6) as u64, seconds: 1.0 })
    }

    fn report() -> HttpReport {
        let mut requests = Vec::new();
        for cell in rate_cells() {
            requests.push(rate_row(System::Ours, "user", Some(TxMode::Copy), cell));
            requests.push(rate_row(System::Linux, "user", None, cell));
            requests.push(rate_row(System::Ours, "tap", Some(TxMode::Copy), cell));
            requests.push(rate_row(System::Ours, "tap", Some(TxMode::Cow), cell));
            requests.push(rate_row(System::Linux, "tap", None, cell));
        }
        let mut downloads = Vec::new();
        for mtu in [1500, 9000] {
            downloads.push(stream(System::Ours, mtu, Some(TxMode::Copy), 40.0));
            downloads.push(stream(System::Ours, mtu, Some(TxMode::Cow), 50.0));
            downloads.push(stream(System::Linux, mtu, None, 80.0));
        }
        let echoes = vec![
            stream(System::Ours, 1500, Some(TxMode::Copy), 10.0),
            stream(System::Ours, 1500, Some(TxMode::Cow), 12.0),
            stream(System::Linux, 1500, None, 20.0),
        ];
        HttpReport {
            accel: "tcg".into(),
            unit: "wall-clock".into(),
            host_cpu: "cpu".into(),
            quick: true,
            tap_network: "tap".into(),
            user_tx: "copy".into(),
            requests,
            downloads,
            echoes,
            figures: Vec::new(),
            notes: Vec::new(),
        }
    }

    #[test]
    fn every_cell_measured_on_both_becomes_a_figure_with_its_ratio() {
        let mut report = report();
        let figures = figures(&report);
        // 3 groups (user copy, tap copy, tap COW) x 4 rate cells x (rate, p50, p99), 4 downloads, 2 echoes.
        assert_eq!(figures.len(), 3 * 4 * 3 + 4 + 2, "{figures:#?}");
        let find =
            |name: &str| figures.iter().find(|f| f.figure == name).unwrap_or_else(|| panic!("{name}: {figures:#?}"));
        let f = find("GET / rate, user, tx copy, 4 servers, 32 conns each");
        assert_eq!((f.ours, f.linux, f.ratio, f.unit.as_str()), (12032.0, 4032.0, 2.984, "requests/s"));
        assert_eq!(find("GET / rate, tap, tx cow, 1 server, 1 conn").ratio, 3.997);
        assert_eq!(find("GET / latency p99, tap, tx cow, 1 server, 32 conns").ratio, 0.25);
        assert_eq!(find("GET / latency p50, user, tx copy, 4 servers, 1 conn each").ratio, 0.333);
        let f = find("download, tap, MTU 9000, tx cow");
        assert_eq!((f.ours, f.linux, f.ratio, f.unit.as_str()), (50.0, 80.0, 0.625, "MB/s"));
        assert_eq!(find("TCP echo, tap, MTU 1500, tx copy").ratio, 0.5);
        // A cell Linux lacks gives no figure.
        report.downloads.retain(|r| !(r.system == System::Linux && r.mtu == 9000));
        report.requests.retain(|r| !(r.system == System::Linux && r.network == "tap" && r.servers == 4));
        assert_eq!(super::figures(&report).len(), 4 * 3 + 2 * 2 * 3 + 2 + 2);
    }

    #[test]
    fn the_report_survives_json() {
        let mut report = report();
        report.figures = figures(&report);
        let json = serde_json::to_string(&report).unwrap();
        assert!(
            json.contains(
                r#"{"system":"linux","mtu":9000,"bytes":80000000,"seconds":1.0,"megabytes_per_second":80.0}"#
            ),
            "{json}"
        );
        assert!(json.contains(r#""system":"ours","mtu":1500,"tx":"cow","#));
        assert!(
            json.contains(r#"{"system":"linux","network":"tap","servers":1,"connections_per_server":1,"#),
            "{json}"
        );
        assert!(json.contains(r#""errors":{"connect_errors":0,"read_errors":32,"write_errors":0,"#), "{json}");
        let back: HttpReport = serde_json::from_str(&json).unwrap();
        assert_eq!(back.requests, report.requests);
        assert_eq!(back.downloads, report.downloads);
        assert_eq!(back.figures, report.figures);
    }

    #[test]
    fn the_chart_has_a_bar_per_figure_and_names_every_colour() {
        let svg = http_svg(&report()).unwrap();
        // Bars: rates 4 cells x (2 user + 3 tap series), latency 4 cells x (4 user + 6 tap),
        // throughput 3 x 3; legend swatches (2 + 3) + (4 + 6) + 3; one background.
        assert_eq!(svg.matches("<rect").count(), 1 + (4 * 5 + 4 * 10 + 9) + (5 + 10 + 3), "{svg}");
        let texts = chart::texts(&svg);
        for text in [
            "ours",
            "Linux VM",
            "ours, COW",
            "ours, copy p99",
            "ours, COW p50",
            "Linux VM p99",
            "4 x 32",
            "download, MTU 9000",
            "TCP echo, MTU 1500",
            "requests per second (wall clock)",
            "latency (µs, wall clock, log scale)",
            "payload MB/s (10^6 B/s, wall clock)",
        ] {
            assert!(texts.iter().any(|t| t == text), "{text} missing: {texts:?}");
        }
        // Every colour named once per panel it is in: ours' blue in 2 rate, 2 latency, 1 throughput
        // legends, plus its bars (4 + 4 rate, 4 + 4 latency p50, 3 throughput).
        let fill = |c: RGBColor| format!("fill=\"#{:02X}{:02X}{:02X}\"", c.0, c.1, c.2);
        assert_eq!(svg.matches(&fill(PALETTE[0])).count(), 5 + 8 + 8 + 3);
    }
}
