//! `cargo xtask bench`: benchmarks whose numbers go into `target/bench/` as JSON (and SVG).
//!
//! `bench echo`: UDP echo round-trip latency (p50, p99; sequential datagrams to one guest) and
//! throughput (echoes per second with a window of outstanding datagrams per guest, to 1 and to
//! 4 guests; loss counted), 100 and 1400 bytes, copy and COW, from a load generator on the host
//! over the tap network (QEMU's user network where a tap device cannot be made). Wall-clock
//! figures under TCG: compare cells of one run, not runs of different machines.

use crate::chart::{self, Bars, Panel, Series, PALETTE};
use crate::manifest::{format_ip, NetPlan};
use crate::pack::{self, Artifacts};
use crate::qemu::{Accel, NetBackend, QemuConfig, Session};
use crate::tapnet::TapNamespace;
use crate::udp;
use crate::{openloop, TxMode};
use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

pub const SIZES: [usize; 2] = [100, 1400];
pub const GUEST_COUNTS: [usize; 2] = [1, 4];
const WINDOW: usize = 32;

/// The host CPU's model name, for benchmark reports.
pub fn host_cpu() -> String {
    std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|info| {
            info.lines()
                .find(|l| l.starts_with("model name"))
                .map(|l| l.split(':').nth(1).unwrap_or("").trim().to_string())
        })
        .unwrap_or_default()
}

/// `value` as pretty JSON in `target/bench/NAME`; the path written.
pub fn write_json(name: &str, value: &impl Serialize) -> Result<PathBuf> {
    let dir = pack::workspace_root().join("target/bench");
    std::fs::create_dir_all(&dir)?;
    let path = dir.join(name);
    std::fs::write(&path, serde_json::to_string_pretty(value)? + "\n")?;
    Ok(path)
}

/// A report that [`write_json`] wrote.
pub fn read_json<T: serde::de::DeserializeOwned>(path: &Path) -> Result<T> {
    let text = std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    serde_json::from_str(&text).with_context(|| format!("parsing {}", path.display()))
}

/// `value` to `decimals` places, so reports hold what was measured and not float noise.
pub fn rounded(value: f64, decimals: i32) -> f64 {
    let scale = 10f64.powi(decimals);
    (value * scale).round() / scale
}

/// One cell the load generator measures (what `bench-client` prints, as JSON, for its parent).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EchoCell {
    pub size: usize,
    pub guests: usize,
    pub rtt_p50_us: f64,
    pub rtt_p99_us: f64,
    pub echoes_per_second: f64,
    pub sent: u64,
    pub received: u64,
}

/// One row of `echo.json`: a cell of one transmit path.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EchoRow {
    #[serde(with = "crate::tx_mode_name")]
    pub mode: TxMode,
    #[serde(flatten)]
    pub cell: EchoCell,
    /// Datagrams sent and never echoed.
    pub lost: u64,
}

/// `target/bench/echo.json`.
#[derive(Debug, Serialize, Deserialize)]
pub struct EchoReport {
    pub accel: String,
    /// `wall-clock`: emulator time under TCG.
    pub unit: String,
    /// `tap` or `user`.
    pub network: String,
    pub results: Vec<EchoRow>,
    /// The open-loop search, one guest, each network.
    #[serde(default)]
    pub open_loop: Vec<openloop::Cell>,
}

/// The open loop's datagram sizes.
pub const OPEN_LOOP_SIZES: [usize; 2] = [100, 1400];

/// Boots `udp-echo` (copy path) on `client`'s network and runs the open-loop search against its
/// first guest, each of `sizes`; the kernel's stats lines say where the lowest failing rate's
/// datagrams went.
pub fn open_loop_ours(
    artifacts: &Artifacts,
    client: openloop::Client,
    plan: &openloop::Plan,
    sizes: &[usize],
) -> Result<Vec<openloop::Cell>> {
    let tap = matches!(client, openloop::Client::Namespace(_));
    let image = pack::pack_image("udp-echo", artifacts, if tap { NetPlan::TAP } else { NetPlan::USER })?;
    let guest = image.guests.iter().find_map(|g| g.net).context("udp-echo has a networked guest")?;
    let port = 24_000 + (std::process::id() % 1_000) as u16 * 4;
    let (net, peer) = match client {
        openloop::Client::Namespace(_) => (
            NetBackend::Tap { ifname: crate::tapnet::TAP_IFNAME.into() },
            SocketAddr::from((guest.ipv4, crate::ECHO_PORT)),
        ),
        openloop::Client::Here => (
            NetBackend::User { forwards: vec![(port, guest.ipv4, crate::ECHO_PORT)], tcp_forwards: Vec::new() },
            SocketAddr::from(([127, 0, 0, 1], port)),
        ),
    };
    let config = QemuConfig {
        net: Some(net),
        netns: match client {
            openloop::Client::Namespace(ns) => Some(ns.name.as_str()),
            openloop::Client::Here => None,
        },
        ..QemuConfig::for_image(&image, Accel::Tcg, "log=info shutdown_after=3000 tx=copy".into())
    };
    let mut session = Session::start(config.command(), Duration::from_secs(3000), false)?;
    if !session.wait_for(Duration::from_secs(60), |log| log.contains("udp-echo listening on")) {
        bail!("udp-echo did not start:\n{}", session.log());
    }
    let cells =
        openloop::measure(openloop::System::Ours, client, peer, sizes, plan, || openloop::settled_stats(&session))?;
    session.request_quit();
    let outcome = session.finish()?;
    if outcome.exit() != Some(hypercall_abi::host::KernelExit::Success) {
        bail!("the kernel did not end cleanly: {}\n{}", outcome.describe(), outcome.log);
    }
    Ok(cells)
}

/// How much traffic a run makes.
#[derive(Clone, Copy)]
pub struct Load {
    pub latency_samples: usize,
    pub throughput_seconds: f64,
}

pub const FULL: Load = Load { latency_samples: 2000, throughput_seconds: 3.0 };
pub const QUICK: Load = Load { latency_samples: 50, throughput_seconds: 0.3 };

/// The load generator: measures every (size, guests) cell against `peers`. Runs in this
/// process or, for tap, inside the namespace.
pub fn measure(peers: &[SocketAddr], load: Load) -> Result<Vec<EchoCell>> {
    let Some(&first) = peers.first() else { bail!("no echo server to measure") };
    let mut rows = Vec::new();
    for size in SIZES {
        let (mut rtts, _lost) = udp::latency(first, size, load.latency_samples, Duration::from_millis(500))?;
        rtts.sort_unstable();
        for guests in GUEST_COUNTS {
            let targets = &peers[..guests.min(peers.len())];
            let t = udp::throughput(targets, size, Duration::from_secs_f64(load.throughput_seconds), WINDOW)?;
            rows.push(EchoCell {
                size,
                guests,
                rtt_p50_us: rounded(udp::percentile_us(&rtts, 50), 1),
                rtt_p99_us: rounded(udp::percentile_us(&rtts, 99), 1),
                echoes_per_second: rounded(t.echoes_per_second(), 1),
                sent: t.sent,
                received: t.received,
            });
        }
    }
    Ok(rows)
}

/// Boots the `udp-echo` image with `tx` and measures it.
fn run_mode(artifacts: &Artifacts, tx: TxMode, load: Load, namespace: Option<&TapNamespace>) -> Result<Vec<EchoRow>> {
    let plan = if namespace.is_some() { NetPlan::TAP } else { NetPlan::USER };
    let image = pack::pack_image("udp-echo", artifacts, plan)?;
    let guests: Vec<_> = image.guests.iter().filter_map(|g| g.net).collect();
    let base = 21_000 + (std::process::id() % 1_000) as u16 * 8;
    let net = match namespace {
        Some(_) => NetBackend::Tap { ifname: crate::tapnet::TAP_IFNAME.into() },
        None => NetBackend::User {
            forwards: guests.iter().enumerate().map(|(i, n)| (base + i as u16, n.ipv4, 7)).collect(),
            tcp_forwards: Vec::new(),
        },
    };
    let config = QemuConfig {
        net: Some(net),
        netns: namespace.map(|ns| ns.name.as_str()),
        ..QemuConfig::for_image(&image, Accel::Tcg, format!("log=info shutdown_after=600 tx={}", tx.name()))
    };
    let mut session = Session::start(config.command(), Duration::from_secs(600), false)?;
    if !session.wait_for(Duration::from_secs(60), |log| log.matches("udp-echo listening on").count() >= guests.len()) {
        bail!("the echo guests did not start:\n{}", session.log());
    }
    let rows = match namespace {
        Some(ns) => {
            let peers: Vec<String> = guests.iter().map(|n| format!("{}:7", format_ip(n.ipv4))).collect();
            let exe = crate::setup::client_exe()?;
            let mut cmd = ns.command(&exe.to_string_lossy());
            cmd.args(["bench-client", "--peers", &peers.join(",")]);
            if load.latency_samples == QUICK.latency_samples {
                cmd.arg("--quick");
            }
            let out = cmd.output().context("running the load generator in the namespace")?;
            if !out.status.success() {
                bail!("load generator failed: {}", String::from_utf8_lossy(&out.stderr));
            }
            serde_json::from_slice(&out.stdout).with_context(|| {
                format!("the load generator's output is not its cells: {}", String::from_utf8_lossy(&out.stdout))
            })?
        }
        None => {
            let peers: Vec<SocketAddr> =
                (0..guests.len()).map(|i| SocketAddr::from(([127, 0, 0, 1], base + i as u16))).collect();
            measure(&peers, load)?
        }
    };
    session.request_quit();
    let outcome = session.finish()?;
    if outcome.exit() != Some(hypercall_abi::host::KernelExit::Success) {
        bail!("the kernel did not end cleanly: {}\n{}", outcome.describe(), outcome.log);
    }
    Ok(rows.into_iter().map(|cell| EchoRow { mode: tx, lost: cell.sent.saturating_sub(cell.received), cell }).collect())
}

/// `cargo xtask bench echo`: every cell, printed, and written to `target/bench/echo.{json,svg}`.
/// Which parts of `bench echo` run.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EchoParts {
    /// The closed-loop cells, then the open-loop search.
    All,
    /// The closed-loop cells only (the smoke test: the search is a benchmark, minutes long).
    ClosedLoop,
    /// The open-loop search only.
    OpenLoop,
}

pub fn echo(load: Load, parts: EchoParts) -> Result<std::path::PathBuf> {
    let artifacts = Artifacts::build()?;
    // QEMU's user network only where the machine cannot make a tap network; anywhere else a
    // failure to set it up is an error, not a quiet change of what is measured.
    let namespace = match crate::tapnet::unavailable_reason(&[]) {
        Some(why) => {
            println!("note: no tap network ({why}); measuring over QEMU's user network instead");
            None
        }
        None => Some(TapNamespace::create(&NetPlan::TAP, hypercall_abi::vnic::MTU as u16)?),
    };
    let network = if namespace.is_some() { "tap" } else { "user" };
    let mut rows = Vec::new();
    for tx in TxMode::ALL.into_iter().filter(|_| parts != EchoParts::OpenLoop) {
        rows.extend(run_mode(&artifacts, tx, load, namespace.as_ref())?);
    }
    let plan = if load.latency_samples == QUICK.latency_samples { openloop::QUICK } else { openloop::FULL };
    let mut open_loop = Vec::new();
    if parts != EchoParts::ClosedLoop {
        open_loop.extend(open_loop_ours(&artifacts, openloop::Client::Here, &plan, &OPEN_LOOP_SIZES)?);
        if let Some(ns) = &namespace {
            open_loop.extend(open_loop_ours(&artifacts, openloop::Client::Namespace(ns), &plan, &OPEN_LOOP_SIZES)?);
        }
    }
    println!("UDP echo over the {network} network, TCG, wall clock (one run):");
    println!(
        "{:<5} {:>5} {:>6} {:>12} {:>12} {:>12} {:>10} {:>8}",
        "mode", "size", "guests", "rtt p50 us", "rtt p99 us", "echoes/s", "sent", "lost"
    );
    for r in &rows {
        let c = &r.cell;
        println!(
            "{:<5} {:>5} {:>6} {:>12.0} {:>12.0} {:>12.0} {:>10} {:>8}",
            r.mode.name(),
            c.size,
            c.guests,
            c.rtt_p50_us,
            c.rtt_p99_us,
            c.echoes_per_second,
            c.sent,
            r.lost
        );
    }
    openloop::print(&open_loop, &plan);
    let report = EchoReport {
        accel: "tcg".into(),
        unit: "wall-clock".into(),
        network: network.into(),
        results: rows,
        open_loop,
    };
    let json = write_json("echo.json", &report)?;
    std::fs::write(json.with_file_name("echo.svg"), echo_svg(&report.results, network)?)?;
    println!("wrote {} and echo.svg", json.display());
    Ok(json)
}

/// Two panels over the same cells (size and transmit path): round-trip latency, p50 beside
/// p99 (measured once per cell, one guest, one datagram at a time), and throughput, one guest
/// beside four.
fn echo_svg(rows: &[EchoRow], network: &str) -> Result<String> {
    let mut keys: Vec<(usize, TxMode)> = Vec::new();
    for r in rows {
        if !keys.contains(&(r.cell.size, r.mode)) {
            keys.push((r.cell.size, r.mode));
        }
    }
    keys.sort_by_key(|&(size, mode)| (size, mode.name()));
    let categories = keys.iter().map(|(size, mode)| format!("{size} B {}", mode.name())).collect();
    let find = |(size, mode): (usize, TxMode), guests: usize| {
        rows.iter().find(|r| r.mode == mode && r.cell.size == size && r.cell.guests == guests).map(|r| &r.cell)
    };
    // Latency is one measurement per (size, mode), stored with every guest count's row.
    let latency = |pick: fn(&EchoCell) -> f64| {
        keys.iter().map(|&key| GUEST_COUNTS.iter().find_map(|&g| find(key, g)).map_or(0.0, pick)).collect()
    };
    let throughput =
        |guests: usize| keys.iter().map(|&key| find(key, guests).map_or(0.0, |c| c.echoes_per_second)).collect();
    let x_desc = "UDP payload (bytes) and transmit path".to_string();
    let panels = [
        Panel {
            title: format!("UDP echo round trip, {network} network, TCG"),
            x_desc: x_desc.clone(),
            y_desc: "round-trip time (µs, wall clock)".into(),
            legend_title: "percentile".into(),
            categories: Vec::clone(&categories),
            series: vec![
                Series { name: "p50 (median)".into(), colour: PALETTE[0], values: latency(|c| c.rtt_p50_us) },
                Series { name: "p99".into(), colour: PALETTE[4], values: latency(|c| c.rtt_p99_us) },
            ],
            bars: Bars::Grouped,
        },
        Panel {
            title: format!("UDP echo throughput, {WINDOW} datagrams outstanding per guest"),
            x_desc,
            y_desc: "echoes per second (wall clock)".into(),
            legend_title: "echo servers".into(),
            categories,
            series: GUEST_COUNTS
                .iter()
                .zip([PALETTE[2], PALETTE[3]])
                .map(|(&guests, colour)| Series {
                    name: format!("{guests} guest{}", if guests == 1 { "" } else { "s" }),
                    colour,
                    values: throughput(guests),
                })
                .collect(),
            bars: Bars::Grouped,
        },
    ];
    chart::svg(&panels, 2, (720, 460))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(mode: TxMode, size: usize, guests: usize) -> EchoRow {
        let cell = EchoCell {
            size,
            guests,
            rtt_p50_us: 250.5,
            rtt_p99_us: 500.25,
            echoes_per_second: 20000.0 + guests as f64,
            sent: 100,
            received: 98,
        };
        EchoRow { mode, cell, lost: 2 }
    }

    #[test]
    fn rounding_keeps_the_places_asked_for() {
        assert_eq!(rounded(200.40460299999998, 1), 200.4);
        assert_eq!(rounded(0.021459899485876444, 3), 0.021);
        assert_eq!(serde_json::to_string(&rounded(243.77700000000002, 1)).unwrap(), "243.8");
    }

    #[test]
    fn cells_survive_the_trip_through_the_namespace() {
        let cells = vec![row(TxMode::Copy, 100, 1).cell, row(TxMode::Copy, 1400, 4).cell];
        let back: Vec<EchoCell> = serde_json::from_str(&serde_json::to_string(&cells).unwrap()).unwrap();
        assert_eq!(back, cells);
    }

    #[test]
    fn the_report_keeps_its_field_names() {
        let report = EchoReport {
            accel: "tcg".into(),
            unit: "wall-clock".into(),
            network: "t\"ap".into(),
            results: vec![row(TxMode::Copy, 100, 1), row(TxMode::Cow, 100, 1)],
            open_loop: Vec::new(),
        };
        let json = serde_json::to_string(&report).unwrap();
        assert!(json.contains(r#"{"mode":"cow","size":100,"guests":1,"rtt_p50_us":250.5,"rtt_p99_us":500.25,"#));
        assert!(json.contains(r#""echoes_per_second":20001.0,"sent":100,"received":98,"lost":2}"#));
        assert!(json.contains(r#""network":"t\"ap""#), "strings are escaped: {json}");
        let back: EchoReport = serde_json::from_str(&json).unwrap();
        assert_eq!(back.results, report.results);
        assert!(serde_json::from_str::<EchoReport>(&json.replace("\"cow\"", "\"zero\"")).is_err());
    }

    #[test]
    fn the_chart_has_a_bar_per_figure_and_names_every_colour() {
        let mut rows = Vec::new();
        for mode in TxMode::ALL {
            for size in SIZES {
                for guests in GUEST_COUNTS {
                    rows.push(row(mode, size, guests));
                }
            }
        }
        let svg = echo_svg(&rows, "tap").unwrap();
        // Per panel: a cell per size and transmit path x 2 series bars, and 2 legend swatches.
        let cells = SIZES.len() * TxMode::ALL.len();
        assert_eq!(svg.matches("<rect").count(), 1 + 2 * (cells * 2 + 2), "{svg}");
        let texts = chart::texts(&svg);
        for text in [
            "100 B copy",
            "1400 B cow",
            "p50 (median)",
            "p99",
            "1 guest",
            "4 guests",
            "round-trip time (µs, wall clock)",
        ] {
            assert!(texts.iter().any(|t| t == text), "{text} missing: {texts:?}");
        }
    }
}
