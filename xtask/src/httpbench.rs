//! `cargo xtask bench http`: TCP and HTTP from host clients, against our `http` and `tcp-echo`
//! guests and against the Linux VM of `bench baseline` (whose `/init` serves the same endpoints
//! and TCP echo), in the same QEMU (TCG, `pc`, legacy virtio-net), one system after the other:
//!
//! - keep-alive `GET /` with `wrk` over QEMU's user network: requests per second and latency
//!   p50/p99 with 1 and with 32 connections per server, to 1 server and to 4 at once (one `wrk`
//!   per server, run together, requests per second summed, latency the highest of the four);
//!   Linux's "4 servers" are 4 host ports forwarded to its one VM;
//! - over the tap network: the download of `/bytes/N` at MTU 1500 (`http`) and 9000
//!   (`http-jumbo`), and N bytes through TCP echo and back (MTU 1500), every byte checked, copy
//!   and COW.
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
    /// The network of the request-rate cells (`user`) and of the streams (`tap`).
    pub rate_network: String,
    pub stream_network: String,
    /// Our transmit path in the request-rate cells (the `http` image's).
    pub rate_tx: String,
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
    /// The HTTP servers (ours: one per guest; Linux over the user network: 4 ports to its one).
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
            (linux_net, vec![SocketAddr::from((ip, HTTP_PORT))], vec![SocketAddr::from((ip, crate::ECHO_PORT))])
        }
    };
    let session =
        Session::start(baseline::linux_command(kernel, initramfs, &linux_net), Duration::from_secs(1500), false)?;
    Ok(Booted { system: System::Linux, session, http, echo })
}

/// Every request-rate cell against `booted`'s HTTP servers (reached from this process).
fn measure_rates(booted: &Booted, load: HttpLoad) -> Result<Vec<RateRow>> {
    for &server in &booted.http {
        tcpload::wait_until_serving(server, BOOT_LIMIT, tcpload::http_answers).with_context(|| {
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
                .map(|a| tcpload::spawn_wrk(&format!("http://{a}/"), connections, load.wrk_seconds))
                .collect::<Result<Vec<_>>>()?;
            let summaries = children.into_iter().map(tcpload::finish_wrk).collect::<Result<Vec<_>>>()?;
            let highest = |pick: fn(&tcpload::WrkSummary) -> f64| summaries.iter().map(pick).fold(0.0, f64::max);
            rows.push(RateRow {
                system: booted.system,
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
    let exe = std::env::current_exe()?;
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

/// A download (and at MTU 1500 an echo stream) from `booted`, stopped afterwards, even when
/// the measurement failed.
fn measure_streams(
    booted: Booted,
    namespace: &TapNamespace,
    mtu: u16,
    tx: Option<TxMode>,
    load: HttpLoad,
    what: &[Workload],
    report: &mut HttpReport,
) -> Result<()> {
    let system = booted.system;
    let measured = (|| -> Result<()> {
        for &workload in what {
            let (server, bytes) = match workload {
                Workload::Download => (booted.http.first(), load.download_bytes),
                Workload::Echo => (booted.echo.first(), load.echo_bytes),
            };
            let server = *server.context("no server")?;
            let transfer = measure_in_namespace(namespace, workload, server, bytes)
                .with_context(|| format!("{system:?}, MTU {mtu}; console:\n{}", booted.session.log()))?;
            let row = stream_row(system, mtu, tx, transfer);
            match workload {
                Workload::Download => report.downloads.push(row),
                Workload::Echo => report.echoes.push(row),
            }
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
    let rate_tx = pack::pack_image(MTU_IMAGES[0].1, &artifacts, NetPlan::USER)?.manifest.kernel.tx;
    let mut report = HttpReport {
        accel: "tcg".into(),
        unit: "wall-clock".into(),
        host_cpu: bench::host_cpu(),
        quick: load.wrk_seconds == QUICK.wrk_seconds,
        rate_network: "user".into(),
        stream_network: "tap".into(),
        rate_tx: rate_tx.name().into(),
        requests: Vec::new(),
        downloads: Vec::new(),
        echoes: Vec::new(),
        figures: Vec::new(),
        notes: Vec::new(),
    };
    let base = 30_000 + (std::process::id() % 1_000) as u16 * 8;
    let user = Net::User { base };
    println!("request rates over the user network: ours ({} guests, tx {})", MTU_IMAGES[0].1, rate_tx.name());
    let ours = boot_ours(&artifacts, MTU_IMAGES[0].1, rate_tx, &user)?;
    let rows = measure_rates(&ours, load);
    ours.stop()?;
    report.requests.extend(rows?);
    println!("request rates over the user network: Linux");
    let linux = boot_linux(&kernel, &initramfs, &user)?;
    report.requests.extend(measure_rates(&linux, load)?);
    linux.stop()?;
    match crate::tapnet::unavailable_reason(&[]) {
        Some(why) => {
            report.stream_network = "none".into();
            report.notes.push(format!("downloads and echo streams not measured: no tap network ({why})"));
        }
        None => {
            for (mtu, image) in MTU_IMAGES {
                let namespace = TapNamespace::create(&NetPlan::TAP, mtu)?;
                let net = Net::Tap { namespace: &namespace, mtu };
                for tx in TxMode::ALL {
                    println!("tap, MTU {mtu}: download from ours ({image}, tx {})", tx.name());
                    let ours = boot_ours(&artifacts, image, tx, &net)?;
                    measure_streams(ours, &namespace, mtu, Some(tx), load, &[Workload::Download], &mut report)?;
                }
                let with_echo: &[Workload] =
                    if mtu == MTU_IMAGES[0].0 { &[Workload::Download, Workload::Echo] } else { &[Workload::Download] };
                println!("tap, MTU {mtu}: Linux");
                let linux = boot_linux(&kernel, &initramfs, &net)?;
                measure_streams(linux, &namespace, mtu, None, load, with_echo, &mut report)?;
                if mtu == MTU_IMAGES[0].0 {
                    for tx in TxMode::ALL {
                        println!("tap, MTU {mtu}: TCP echo through ours ({ECHO_IMAGE}, tx {})", tx.name());
                        let ours = boot_ours(&artifacts, ECHO_IMAGE, tx, &net)?;
                        measure_streams(ours, &namespace, mtu, Some(tx), load, &[Workload::Echo], &mut report)?;
                    }
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

/// Ours beside Linux's for every cell measured on both.
pub fn figures(report: &HttpReport) -> Vec<Figure> {
    let mut out = Vec::new();
    let mut add = |figure: String, unit: &str, ours: f64, linux: f64| {
        let ratio = if linux > 0.0 { rounded(ours / linux, 3) } else { 0.0 };
        out.push(Figure { figure, unit: unit.into(), ours, linux, ratio });
    };
    let rate = |system, servers, connections| {
        report
            .requests
            .iter()
            .find(|r| r.system == system && r.servers == servers && r.connections_per_server == connections)
    };
    for servers in SERVER_COUNTS {
        for connections in CONNECTIONS {
            let (Some(o), Some(l)) =
                (rate(System::Ours, servers, connections), rate(System::Linux, servers, connections))
            else {
                continue;
            };
            let cell = rate_label(servers, connections);
            add(format!("GET / rate, {cell}"), "requests/s", o.requests_per_second, l.requests_per_second);
            add(format!("GET / latency p50, {cell}"), "µs", o.latency_p50_us, l.latency_p50_us);
            add(format!("GET / latency p99, {cell}"), "µs", o.latency_p99_us, l.latency_p99_us);
        }
    }
    for (name, rows) in [("download", &report.downloads), ("TCP echo", &report.echoes)] {
        for ours in rows.iter().filter(|r| r.system == System::Ours) {
            let Some(linux) = rows.iter().find(|r| r.system == System::Linux && r.mtu == ours.mtu) else { continue };
            let tx = ours.tx.as_deref().unwrap_or("?");
            add(
                format!("{name}, MTU {}, tx {tx}", ours.mtu),
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
        "ours vs the Linux VM, same QEMU (TCG, pc, legacy virtio-net), wall clock, one run; requests over the {} \
         network (our tx {}), streams over {}:",
        report.rate_network, report.rate_tx, report.stream_network
    );
    println!("{:<44} {:>10} {:>12} {:>12} {:>7}", "figure", "unit", "ours", "linux", "ratio");
    for f in &report.figures {
        println!("{:<44} {:>10} {:>12.1} {:>12.1} {:>7.2}", f.figure, f.unit, f.ours, f.linux, f.ratio);
    }
    for r in report.requests.iter().filter(|r| r.errors.total() > 0) {
        println!(
            "wrk counted errors against {:?}, {}: {:?} (of {} requests)",
            r.system,
            rate_label(r.servers, r.connections_per_server),
            r.errors,
            r.requests
        );
    }
    for note in &report.notes {
        println!("note: {note}");
    }
}

/// Four panels: request rate; latency at 1 and at 32 connections; throughput over tap.
fn http_svg(report: &HttpReport) -> Result<String> {
    let cells: Vec<(usize, u32)> =
        SERVER_COUNTS.iter().flat_map(|&s| CONNECTIONS.iter().map(move |&c| (s, c))).collect();
    let rate = |system, (servers, connections): (usize, u32)| {
        report
            .requests
            .iter()
            .find(|r| r.system == system && r.servers == servers && r.connections_per_server == connections)
    };
    let rate_series = |name: &str, colour, system| Series {
        name: name.into(),
        colour,
        values: cells.iter().map(|&c| rate(system, c).map_or(0.0, |r| r.requests_per_second)).collect(),
    };
    let latency_panel = |connections: u32| {
        let servers = SERVER_COUNTS;
        let series = |name: &str, colour, system, pick: fn(&RateRow) -> f64| Series {
            name: name.into(),
            colour,
            values: servers.iter().map(|&s| rate(system, (s, connections)).map_or(0.0, pick)).collect(),
        };
        Panel {
            title: format!(
                "GET / latency, {connections} connection{} per server",
                if connections == 1 { "" } else { "s" }
            ),
            x_desc: "servers loaded at once".into(),
            y_desc: "latency (µs, wall clock, log scale)".into(),
            legend_title: "system, percentile".into(),
            categories: servers.iter().map(|&s| format!("{s} server{}", if s == 1 { "" } else { "s" })).collect(),
            series: vec![
                series("ours p50", PALETTE[0], System::Ours, |r| r.latency_p50_us),
                series("ours p99", PALETTE[4], System::Ours, |r| r.latency_p99_us),
                series("Linux p50", PALETTE[1], System::Linux, |r| r.latency_p50_us),
                series("Linux p99", PALETTE[7], System::Linux, |r| r.latency_p99_us),
            ],
            bars: Bars::GroupedLogScale,
        }
    };
    let stream_categories: Vec<(&str, &Vec<StreamRow>, u16)> = vec![
        ("download, MTU 1500", &report.downloads, MTU_IMAGES[0].0),
        ("download, MTU 9000", &report.downloads, MTU_IMAGES[1].0),
        ("TCP echo, MTU 1500", &report.echoes, MTU_IMAGES[0].0),
    ];
    let stream_series = |name: &str, colour, system, tx: Option<&str>| Series {
        name: name.into(),
        colour,
        values: stream_categories
            .iter()
            .map(|(_, rows, mtu)| {
                rows.iter()
                    .find(|r| r.system == system && r.mtu == *mtu && r.tx.as_deref() == tx)
                    .map_or(0.0, |r| r.megabytes_per_second)
            })
            .collect(),
    };
    let panels = [
        Panel {
            title: format!("Keep-alive GET / with wrk, {} network, TCG", report.rate_network),
            x_desc: "servers loaded at once, connections per server".into(),
            y_desc: "requests per second (wall clock)".into(),
            legend_title: "system".into(),
            categories: cells.iter().map(|&(s, c)| format!("{s} x {c}")).collect(),
            series: vec![
                rate_series(&format!("ours (tx {})", report.rate_tx), PALETTE[0], System::Ours),
                rate_series("Linux VM", PALETTE[1], System::Linux),
            ],
            bars: Bars::Grouped,
        },
        Panel {
            title: format!("TCP throughput over {}, every byte checked", report.stream_network),
            x_desc: "transfer (download: /bytes/N; echo: N bytes out and back)".into(),
            y_desc: "payload MB/s (10^6 B/s, wall clock)".into(),
            legend_title: "system, transmit path".into(),
            categories: stream_categories.iter().map(|(name, _, _)| name.to_string()).collect(),
            series: vec![
                stream_series("ours, copy", PALETTE[0], System::Ours, Some("copy")),
                stream_series("ours, COW", PALETTE[4], System::Ours, Some("cow")),
                stream_series("Linux VM", PALETTE[1], System::Linux, None),
            ],
            bars: Bars::Grouped,
        },
        latency_panel(CONNECTIONS[0]),
        latency_panel(CONNECTIONS[1]),
    ];
    chart::svg(&panels, 2, (720, 460))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rate_row(system: System, servers: usize, connections: u32) -> RateRow {
        let scale = if system == System::Ours { 3.0 } else { 1.0 };
        RateRow {
            system,
            servers,
            connections_per_server: connections,
            requests_per_second: scale * 1000.0 * servers as f64 + connections as f64,
            latency_p50_us: 300.0 * connections as f64 / scale,
            latency_p99_us: 900.0 * connections as f64 / scale,
            requests: 1000,
            errors: WrkErrors { read_errors: connections as u64, ..WrkErrors::default() },
        }
    }

    fn stream(system: System, mtu: u16, tx: Option<TxMode>, megabytes: f64) -> StreamRow {
        stream_row(system, mtu, tx, Transfer { bytes: (megabytes * 1e6) as u64, seconds: 1.0 })
    }

    fn report() -> HttpReport {
        let mut requests = Vec::new();
        for system in [System::Ours, System::Linux] {
            for servers in SERVER_COUNTS {
                for connections in CONNECTIONS {
                    requests.push(rate_row(system, servers, connections));
                }
            }
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
            rate_network: "user".into(),
            stream_network: "tap".into(),
            rate_tx: "copy".into(),
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
        // 4 rate cells x (rate, p50, p99) + 4 downloads + 2 echoes.
        assert_eq!(figures.len(), 4 * 3 + 4 + 2, "{figures:#?}");
        let find =
            |name: &str| figures.iter().find(|f| f.figure == name).unwrap_or_else(|| panic!("{name}: {figures:#?}"));
        let f = find("GET / rate, 4 servers, 32 conns each");
        assert_eq!((f.ours, f.linux, f.ratio), (12032.0, 4032.0, 2.984));
        assert_eq!(find("GET / latency p99, 1 server, 1 conn").ratio, 0.333);
        let f = find("download, MTU 9000, tx cow");
        assert_eq!((f.ours, f.linux, f.ratio, f.unit.as_str()), (50.0, 80.0, 0.625, "MB/s"));
        assert_eq!(find("TCP echo, MTU 1500, tx copy").ratio, 0.5);
        // A cell Linux lacks gives no figure.
        report.downloads.retain(|r| !(r.system == System::Linux && r.mtu == 9000));
        assert_eq!(super::figures(&report).len(), 4 * 3 + 2 + 2);
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
        let back: HttpReport = serde_json::from_str(&json).unwrap();
        assert_eq!(back.requests, report.requests);
        assert!(json.contains(r#""errors":{"connect_errors":0,"read_errors":32,"write_errors":0,"#), "{json}");
        assert_eq!(back.downloads, report.downloads);
        assert_eq!(back.figures, report.figures);
    }

    #[test]
    fn the_chart_has_a_bar_per_figure_and_names_every_colour() {
        let svg = http_svg(&report()).unwrap();
        // Bars: rate 4 cells x 2 systems, throughput 3 x 3, latency 2 x (2 servers x 4 series);
        // legend swatches 2 + 3 + 4 + 4; one background.
        assert_eq!(svg.matches("<rect").count(), 1 + (8 + 9 + 16) + (2 + 3 + 4 + 4), "{svg}");
        let texts = chart::texts(&svg);
        for text in [
            "ours (tx copy)",
            "Linux VM",
            "ours, COW",
            "ours p99",
            "Linux p50",
            "4 x 32",
            "download, MTU 9000",
            "TCP echo, MTU 1500",
            "requests per second (wall clock)",
            "latency (µs, wall clock, log scale)",
            "payload MB/s (10^6 B/s, wall clock)",
        ] {
            assert!(texts.iter().any(|t| t == text), "{text} missing: {texts:?}");
        }
    }
}
