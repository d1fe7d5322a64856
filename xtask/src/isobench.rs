//! `cargo xtask bench isolation`: performance isolation (issue 14), over QEMU's user network
//! under TCG, wall clock.
//!
//! - Round trips of 100-byte UDP echoes to one echo guest (sequential, from the host), alone and
//!   beside each kind of hog of `images/isolation.toml` (a virtual-instruction storm, a transmit
//!   storm, a CPU spinner) and beside all of them: p50, p99, max, lost; and the echo guest's
//!   wake-up delay as the kernel counts it.
//! - CPU shares of the two spinners of `images/cpu-weights.toml` (weights 1 and 3), from the
//!   kernel's per-guest CPU time.
//! - The flooding guest of `images/tx-limit.toml` with its rate limit and without: what it sent
//!   per second (the kernel's per-guest counters), what was held back, and the round trips of
//!   the echo guest beside it.
//!
//! Writes `target/bench/isolation.json` and `isolation.svg`.

use crate::chart::{self, Bars, Panel, Series, PALETTE};
use crate::ledger;
use crate::manifest::{Manifest, NetPlan};
use crate::pack::{self, Artifacts, Image};
use crate::qemu::{Accel, NetBackend, Outcome, QemuConfig, Session};
use crate::udp;
use anyhow::{bail, Context, Result};
use hypercall_abi::cmdline as keys;
use serde::{Deserialize, Serialize};
use std::net::SocketAddr;
use std::time::Duration;

/// The hogs beside the echo guest in each round-trip cell: groups of `images/isolation.toml`.
pub const HOG_SETS: [(&str, &[&str]); 5] = [
    ("nothing", &[]),
    ("vi-storm", &["vi-storm"]),
    ("tx-storm", &["tx-storm"]),
    ("spinner", &["spinner"]),
    ("all three", &["vi-storm", "tx-storm", "spinner"]),
];
/// The echo guests' group in the images.
pub const ECHO_GROUP: &str = "echo";
/// Bytes per echoed datagram.
pub const ECHO_BYTES: usize = 100;
/// Where the flooding guests of the images send (`port=` in their args): the harness binds it
/// on the host, so that QEMU's user network delivers the frames instead of answering each with
/// an ICMP port-unreachable (which would double the work of QEMU's main loop, measuring slirp).
pub const FLOOD_SINK_PORT: u16 = 29_009;
/// An echo not back in this long counts as lost.
const ECHO_TIMEOUT: Duration = Duration::from_secs(1);

/// How much a run measures.
#[derive(Clone, Copy, Debug)]
pub struct Load {
    /// Sequential echoes per round-trip cell.
    pub echoes: usize,
    /// Seconds the CPU-share and flood runs last.
    pub seconds: u64,
}

pub const FULL: Load = Load { echoes: 2000, seconds: 6 };
pub const QUICK: Load = Load { echoes: 200, seconds: 3 };

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RttRow {
    /// What ran beside the echo guests.
    pub beside: String,
    pub echoes: usize,
    pub lost: usize,
    pub rtt_p50_us: f64,
    pub rtt_p99_us: f64,
    pub rtt_max_us: f64,
    /// The echo guest's wake-ups and their delay to its next run, as the kernel counts them
    /// (median: the upper end of its log2 bucket).
    pub wakes: u64,
    pub wake_delay_median_us: u64,
    pub wake_delay_p99_us: u64,
    pub wake_delay_max_us: u64,
    /// The echo guest's CPU time (kernel counter) per echo it answered (warm-up included), and
    /// its part of the time the guests ran: what it asks of the CPU beside its neighbours.
    #[serde(default)]
    pub echo_cpu_us_per_echo: f64,
    #[serde(default)]
    pub echo_cpu_share: f64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ShareRow {
    pub guest: String,
    pub cpu_weight: u64,
    pub cpu_us: u64,
    /// Its part of the CPU time the guests of the run got, and what its weight asks for.
    pub share: f64,
    pub weighted_share: f64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FloodRow {
    pub limited: bool,
    /// The limit in bytes per second (size / refill time), if any.
    pub limit_bytes_per_second: Option<f64>,
    pub seconds: f64,
    pub packets_per_second: f64,
    pub bytes_per_second: f64,
    pub held_back: u64,
    /// The neighbouring echo guest's round trips during the flood.
    pub echoes: usize,
    pub echo_lost: usize,
    pub echo_p50_us: f64,
    pub echo_p99_us: f64,
}

#[derive(Debug, Serialize, Deserialize)]
pub struct IsolationReport {
    pub accel: String,
    pub network: String,
    pub unit: String,
    pub rtt: Vec<RttRow>,
    pub shares: Vec<ShareRow>,
    pub floods: Vec<FloodRow>,
}

/// `base` with only the echo guests and the groups named in `keep`.
pub fn with_groups(base: &Manifest, keep: &[&str]) -> Manifest {
    let mut manifest = base.clone();
    manifest.guests.retain(|g| {
        let name = g.name.as_deref().unwrap_or(&g.app);
        name == ECHO_GROUP || keep.contains(&name)
    });
    manifest
}

/// A host port base unlikely to collide with another run on this machine.
fn port_base() -> u16 {
    23_000 + (std::process::id() % 1_000) as u16 * 8
}

/// The image's guests with a NIC, as (name, host port forwarded to its UDP port 7).
pub fn forwards(image: &Image, base: u16) -> Vec<(String, u16, [u8; 4])> {
    image
        .guests
        .iter()
        .filter_map(|g| g.net.map(|n| (g.name.clone(), n.ipv4)))
        .enumerate()
        .map(|(i, (name, ip))| (name, base + i as u16, ip))
        .collect()
}

/// Boots `image` on the user network with per-guest stats, every guest with a NIC reachable on
/// host port `base + i` (its port 7); `shutdown_after` seconds.
pub fn start(image: &Image, base: u16, shutdown_after: u64) -> Result<Session> {
    let forwards = forwards(image, base).into_iter().map(|(_, port, ip)| (port, ip, 7)).collect();
    let config = QemuConfig {
        net: Some(NetBackend::User { forwards, tcp_forwards: Vec::new() }),
        ..QemuConfig::for_image(
            image,
            Accel::Tcg,
            format!("{}=info {}={shutdown_after} {}=per-guest", keys::LOG, keys::SHUTDOWN_AFTER, keys::STATS),
        )
    };
    Session::start(config.command(), Duration::from_secs(shutdown_after + 120), false)
}

/// Binds the flood sink (never read: the host drops what does not fit, silently). `None` if
/// another run holds it, which serves as well.
pub fn bind_flood_sink() -> Option<std::net::UdpSocket> {
    std::net::UdpSocket::bind(("127.0.0.1", FLOOD_SINK_PORT)).ok()
}

/// Waits until `count` echo guests listen.
pub fn wait_listening(session: &mut Session, count: usize) -> Result<()> {
    if !session.wait_for(Duration::from_secs(60), |log| log.matches("udp-echo listening on").count() >= count) {
        bail!("{count} echo guests did not start listening:\n{}", session.log());
    }
    Ok(())
}

/// p50, p99 and max of round trips, in µs.
fn spread_us(rtts: &mut [Duration]) -> (f64, f64, f64) {
    rtts.sort_unstable();
    let max = rtts.last().map_or(0.0, |d| d.as_secs_f64() * 1e6);
    (
        crate::bench::rounded(udp::percentile_us(rtts, 50), 1),
        crate::bench::rounded(udp::percentile_us(rtts, 99), 1),
        crate::bench::rounded(max, 1),
    )
}

/// Seconds since boot of the first log line containing `needle` (`[    0.045069] ...`).
pub fn log_time(log: &str, needle: &str) -> Option<f64> {
    let line = log.lines().find(|l| l.contains(needle))?;
    line.trim_start().strip_prefix('[')?.split(']').next()?.trim().parse().ok()
}

/// Seconds the guests ran: from their creation to the last `stats:` line.
pub fn guests_ran_seconds(log: &str) -> Option<f64> {
    let created = log_time(log, " created, ")?;
    let end_ms = ledger::all_stats(log).last()?.get("uptime_ms").copied()?;
    Some(end_ms as f64 / 1000.0 - created).filter(|s| *s > 0.0)
}

/// The last per-guest counters of guest `name`.
pub fn guest_counters(outcome: &Outcome, name: &str) -> Result<ledger::Counters> {
    ledger::last_guest_stats(&outcome.log).remove(name).with_context(|| format!("no guest-stats line for {name}"))
}

fn counter(c: &ledger::Counters, key: &str) -> u64 {
    c.get(key).copied().unwrap_or(0)
}

/// One round-trip cell: the echo guests of `images/isolation.toml` beside the groups `hogs`.
fn rtt_cell(artifacts: &Artifacts, base: &Manifest, beside: &str, hogs: &[&str], load: Load) -> Result<RttRow> {
    let image = pack::pack_manifest("isolation-bench", with_groups(base, hogs), artifacts, NetPlan::USER)?;
    let ports = port_base();
    let echoes: Vec<_> = image.guests.iter().filter(|g| g.app == "udp-echo").collect();
    let mut session = start(&image, ports, 600)?;
    wait_listening(&mut session, echoes.len())?;
    let peer = SocketAddr::from(([127, 0, 0, 1], ports));
    // Warm-up (ARP, the first frames through slirp), then the measured echoes.
    udp::latency(peer, ECHO_BYTES, 20, ECHO_TIMEOUT)?;
    let (mut rtts, lost) = udp::latency(peer, ECHO_BYTES, load.echoes, ECHO_TIMEOUT)?;
    session.request_quit();
    let outcome = session.finish()?;
    if outcome.exit() != Some(hypercall_abi::host::KernelExit::Success) {
        bail!("beside {beside}: the kernel did not end cleanly: {}\n{}", outcome.describe(), outcome.log);
    }
    let echo = guest_counters(&outcome, &echoes[0].name)?;
    let (p50, p99, max) = spread_us(&mut rtts);
    let echo_cpu_us = counter(&echo, "cpu_us") as f64;
    let answered = counter(&echo, "guest_app_echoes").max(1) as f64;
    let ran = guests_ran_seconds(&outcome.log).unwrap_or(0.0);
    Ok(RttRow {
        beside: beside.to_string(),
        echoes: load.echoes,
        lost,
        rtt_p50_us: p50,
        rtt_p99_us: p99,
        rtt_max_us: max,
        wakes: counter(&echo, "wakes"),
        wake_delay_median_us: counter(&echo, "wake_delay_median_us"),
        wake_delay_p99_us: counter(&echo, "wake_delay_p99_us"),
        wake_delay_max_us: counter(&echo, "wake_delay_max_us"),
        echo_cpu_us_per_echo: echo_cpu_us / answered,
        echo_cpu_share: if ran > 0.0 { echo_cpu_us / 1e6 / ran } else { 0.0 },
    })
}

/// CPU time of each guest of `image` over a run of `seconds` (its weight from the manifest).
pub fn cpu_shares(image: &Image, seconds: u64) -> Result<(Outcome, Vec<ShareRow>)> {
    let session = start(image, port_base(), seconds)?;
    let outcome = session.finish()?;
    if outcome.exit() != Some(hypercall_abi::host::KernelExit::Success) {
        bail!("the kernel did not end cleanly: {}\n{}", outcome.describe(), outcome.log);
    }
    let stats = ledger::last_guest_stats(&outcome.log);
    let rows: Vec<(String, u64, u64)> = image
        .guests
        .iter()
        .map(|g| {
            let c = stats.get(&g.name).cloned().unwrap_or_default();
            (g.name.clone(), counter(&c, "cpu_weight"), counter(&c, "cpu_us"))
        })
        .collect();
    let total_cpu: u64 = rows.iter().map(|r| r.2).sum();
    let total_weight: u64 = rows.iter().map(|r| r.1).sum();
    if total_cpu == 0 || total_weight == 0 {
        bail!("no CPU time or weights in the per-guest stats:\n{}", outcome.log);
    }
    let shares = rows
        .into_iter()
        .map(|(guest, cpu_weight, cpu_us)| ShareRow {
            guest,
            cpu_weight,
            cpu_us,
            share: crate::bench::rounded(cpu_us as f64 / total_cpu as f64, 4),
            weighted_share: crate::bench::rounded(cpu_weight as f64 / total_weight as f64, 4),
        })
        .collect();
    Ok((outcome, shares))
}

/// What the flooding guest `flood` of a finished run sent per second, and what was held back.
pub fn flood_rates(outcome: &Outcome, flood: &str) -> Result<(f64, f64, f64, u64)> {
    let c = guest_counters(outcome, flood)?;
    let seconds = guests_ran_seconds(&outcome.log).context("no guest creation time or stats line in the log")?;
    Ok((
        seconds,
        counter(&c, "tx_packets") as f64 / seconds,
        counter(&c, "tx_bytes") as f64 / seconds,
        counter(&c, "tx_held_back"),
    ))
}

/// The bytes-per-second limit of a manifest group's `tx_limit`, if it has one.
pub fn byte_limit(manifest: &Manifest, group: &str) -> Option<f64> {
    let g = manifest.guests.iter().find(|g| g.name.as_deref() == Some(group))?;
    let bytes = g.tx_limit?.bytes?;
    Some(bytes.size as f64 * 1000.0 / bytes.refill_time_ms as f64)
}

/// The flood image, limited or not: the flooder's rates and the echo guest's round trips.
fn flood_cell(artifacts: &Artifacts, base: &Manifest, limited: bool, load: Load) -> Result<FloodRow> {
    let mut manifest = base.clone();
    if !limited {
        manifest.guests.iter_mut().for_each(|g| g.tx_limit = None);
    }
    let limit = byte_limit(&manifest, "flood");
    let image = pack::pack_manifest("tx-limit-bench", manifest, artifacts, NetPlan::USER)?;
    let ports = port_base();
    let mut session = start(&image, ports, load.seconds + 3)?;
    wait_listening(&mut session, 1)?;
    let peer = SocketAddr::from(([127, 0, 0, 1], ports));
    let count = (load.echoes / 4).max(20);
    let (mut rtts, lost) = udp::latency(peer, ECHO_BYTES, count, ECHO_TIMEOUT)?;
    let outcome = session.finish()?;
    if outcome.exit() != Some(hypercall_abi::host::KernelExit::Success) {
        bail!("the kernel did not end cleanly: {}\n{}", outcome.describe(), outcome.log);
    }
    let (seconds, packets, bytes, held_back) = flood_rates(&outcome, "flood")?;
    let (p50, p99, _) = spread_us(&mut rtts);
    Ok(FloodRow {
        limited,
        limit_bytes_per_second: limit,
        seconds: crate::bench::rounded(seconds, 2),
        packets_per_second: crate::bench::rounded(packets, 1),
        bytes_per_second: crate::bench::rounded(bytes, 0),
        held_back,
        echoes: count,
        echo_lost: lost,
        echo_p50_us: p50,
        echo_p99_us: p99,
    })
}

/// `cargo xtask bench isolation`: every cell, printed, and written to
/// `target/bench/isolation.{json,svg}`.
pub fn run(load: Load, only_cells: &[String]) -> Result<std::path::PathBuf> {
    let artifacts = Artifacts::build()?;
    let _sink = bind_flood_sink();
    let isolation = Manifest::load(&pack::images_dir().join("isolation.toml"))?;
    let mut rtt = Vec::new();
    for (beside, hogs) in
        HOG_SETS.into_iter().filter(|(beside, _)| only_cells.is_empty() || only_cells.iter().any(|c| c == beside))
    {
        println!("echo round trips beside {beside} ...");
        rtt.push(rtt_cell(&artifacts, &isolation, beside, hogs, load)?);
    }
    if !only_cells.is_empty() {
        print_rtt(&rtt);
        return Ok(std::path::PathBuf::new());
    }
    println!("CPU shares under weights ...");
    let weights = pack::pack_image("cpu-weights", &artifacts, NetPlan::USER)?;
    let (_, shares) = cpu_shares(&weights, load.seconds)?;
    let tx_limit = Manifest::load(&pack::images_dir().join("tx-limit.toml"))?;
    let mut floods = Vec::new();
    for limited in [false, true] {
        println!("a flooding guest, {} ...", if limited { "rate-limited" } else { "without a limit" });
        floods.push(flood_cell(&artifacts, &tx_limit, limited, load)?);
    }
    let report = IsolationReport {
        accel: "tcg".into(),
        network: "user".into(),
        unit: "wall-clock µs (round trips); kernel TSC time (CPU, wake-up delays)".into(),
        rtt,
        shares,
        floods,
    };
    print_report(&report);
    let json = crate::bench::write_json("isolation.json", &report)?;
    std::fs::write(json.with_file_name("isolation.svg"), svg(&report)?)?;
    println!("wrote {} and isolation.svg", json.display());
    Ok(json)
}

/// The round-trip table.
fn print_rtt(rows: &[RttRow]) {
    println!("\nUDP echo round trips ({ECHO_BYTES} bytes, sequential, user network, TCG, wall clock), one echo guest beside:");
    println!(
        "{:<10} {:>7} {:>5} {:>9} {:>9} {:>9} {:>6} {:>12} {:>12} {:>12} {:>12} {:>9}",
        "beside",
        "echoes",
        "lost",
        "p50 us",
        "p99 us",
        "max us",
        "wakes",
        "wake p50 us",
        "wake p99 us",
        "wake max us",
        "cpu/echo us",
        "cpu share"
    );
    for row in rows {
        println!(
            "{:<10} {:>7} {:>5} {:>9.0} {:>9.0} {:>9.0} {:>6} {:>12} {:>12} {:>12} {:>12.1} {:>9.3}",
            row.beside,
            row.echoes,
            row.lost,
            row.rtt_p50_us,
            row.rtt_p99_us,
            row.rtt_max_us,
            row.wakes,
            row.wake_delay_median_us,
            row.wake_delay_p99_us,
            row.wake_delay_max_us,
            row.echo_cpu_us_per_echo,
            row.echo_cpu_share
        );
    }
}

fn print_report(r: &IsolationReport) {
    print_rtt(&r.rtt);
    println!("\nCPU shares of busy guests (kernel CPU time):");
    println!("{:<8} {:>7} {:>12} {:>8} {:>9}", "guest", "weight", "cpu ms", "share", "weighted");
    for row in &r.shares {
        println!(
            "{:<8} {:>7} {:>12.1} {:>8.3} {:>9.3}",
            row.guest,
            row.cpu_weight,
            row.cpu_us as f64 / 1000.0,
            row.share,
            row.weighted_share
        );
    }
    println!("\nA guest flooding 1000-byte frames (kernel counters), and the echo guest beside it:");
    println!(
        "{:<9} {:>12} {:>9} {:>12} {:>12} {:>10} {:>11} {:>11} {:>5}",
        "limit", "limit B/s", "seconds", "packets/s", "bytes/s", "held back", "echo p50", "echo p99", "lost"
    );
    for row in &r.floods {
        println!(
            "{:<9} {:>12} {:>9.2} {:>12.0} {:>12.0} {:>10} {:>11.0} {:>11.0} {:>5}",
            if row.limited { "on" } else { "off" },
            row.limit_bytes_per_second.map_or("-".into(), |l| format!("{l:.0}")),
            row.seconds,
            row.packets_per_second,
            row.bytes_per_second,
            row.held_back,
            row.echo_p50_us,
            row.echo_p99_us,
            row.echo_lost
        );
    }
}

/// Three panels: round trips beside each hog set (log scale), CPU shares against weights, and
/// the flooder's bytes per second with and without its limit.
fn svg(r: &IsolationReport) -> Result<String> {
    let categories: Vec<String> = r.rtt.iter().map(|row| row.beside.clone()).collect();
    let pick = |f: fn(&RttRow) -> f64| r.rtt.iter().map(f).collect::<Vec<_>>();
    let panels = [
        Panel {
            title: "Echo round trip beside hogs (user network, TCG)".into(),
            x_desc: "what runs beside the echo guests".into(),
            y_desc: "round-trip time (µs, wall clock, log scale)".into(),
            legend_title: "percentile".into(),
            categories,
            series: vec![
                Series { name: "p50".into(), colour: PALETTE[0], values: pick(|row| row.rtt_p50_us) },
                Series { name: "p99".into(), colour: PALETTE[4], values: pick(|row| row.rtt_p99_us) },
                Series { name: "max".into(), colour: PALETTE[3], values: pick(|row| row.rtt_max_us) },
            ],
            bars: Bars::GroupedLogScale,
        },
        Panel {
            title: "CPU shares of two busy guests".into(),
            x_desc: "guest (CPU weight)".into(),
            y_desc: "share of their CPU time".into(),
            legend_title: "".into(),
            categories: r.shares.iter().map(|s| format!("{} ({})", s.guest, s.cpu_weight)).collect(),
            series: vec![
                Series {
                    name: "measured".into(),
                    colour: PALETTE[2],
                    values: r.shares.iter().map(|s| s.share).collect(),
                },
                Series {
                    name: "by weight".into(),
                    colour: PALETTE[1],
                    values: r.shares.iter().map(|s| s.weighted_share).collect(),
                },
            ],
            bars: Bars::Grouped,
        },
        Panel {
            title: "A flooding guest's transmit rate".into(),
            x_desc: "its rate limit".into(),
            y_desc: "bytes per second sent (kernel counters)".into(),
            legend_title: "".into(),
            categories: r
                .floods
                .iter()
                .map(|f| f.limit_bytes_per_second.map_or("none".into(), |l| format!("{:.0} KB/s", l / 1000.0)))
                .collect(),
            series: vec![Series {
                name: "sent".into(),
                colour: PALETTE[0],
                values: r.floods.iter().map(|f| f.bytes_per_second).collect(),
            }],
            bars: Bars::Grouped,
        },
    ];
    chart::svg(&panels, 3, (560, 420))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn variants_keep_the_echo_guests_and_the_hogs_named() {
        let base = Manifest::load(&pack::images_dir().join("isolation.toml")).unwrap();
        for (_, hogs) in HOG_SETS {
            let m = with_groups(&base, hogs);
            let names: Vec<_> = m.guests.iter().map(|g| g.name.clone().unwrap()).collect();
            assert_eq!(names[0], ECHO_GROUP);
            assert_eq!(names.len(), 1 + hogs.len(), "{names:?}");
            assert!(hogs.iter().all(|h| names.iter().any(|n| n == h)), "{hogs:?} all in {names:?}");
        }
        let limit = Manifest::load(&pack::images_dir().join("tx-limit.toml")).unwrap();
        assert_eq!(byte_limit(&limit, "flood"), Some(300_000.0));
        // The flooders send to the sink the harness binds.
        for (m, group) in [(&base, "tx-storm"), (&limit, "flood")] {
            let flood = m.guests.iter().find(|g| g.name.as_deref() == Some(group)).unwrap();
            assert!(flood.args.contains(&format!("port={FLOOD_SINK_PORT}")), "{}", flood.args);
        }
    }

    #[test]
    fn log_times_and_run_length() {
        let log = "[    0.250000] INFO  guests: 3 created, 0 refused; creating one took\n\
                   stats: uptime_ms=4250 tx_packets=1\n";
        assert_eq!(log_time(log, " created, "), Some(0.25));
        assert_eq!(guests_ran_seconds(log), Some(4.0));
        assert_eq!(guests_ran_seconds("stats: uptime_ms=10\n"), None);
    }

    #[test]
    fn the_chart_names_every_cell() {
        let rtt = HOG_SETS
            .iter()
            .map(|(beside, _)| RttRow {
                beside: beside.to_string(),
                echoes: 10,
                lost: 0,
                rtt_p50_us: 200.0,
                rtt_p99_us: 900.0,
                rtt_max_us: 2000.0,
                wakes: 10,
                wake_delay_median_us: 8,
                wake_delay_p99_us: 40,
                wake_delay_max_us: 90,
                echo_cpu_us_per_echo: 30.0,
                echo_cpu_share: 0.2,
            })
            .collect();
        let share = |guest: &str, w: u64, s: f64| ShareRow {
            guest: guest.into(),
            cpu_weight: w,
            cpu_us: 1,
            share: s,
            weighted_share: s,
        };
        let flood = |limited: bool| FloodRow {
            limited,
            limit_bytes_per_second: limited.then_some(300_000.0),
            seconds: 3.0,
            packets_per_second: 300.0,
            bytes_per_second: 300_000.0,
            held_back: 5,
            echoes: 10,
            echo_lost: 0,
            echo_p50_us: 1.0,
            echo_p99_us: 2.0,
        };
        let report = IsolationReport {
            accel: "tcg".into(),
            network: "user".into(),
            unit: "µs".into(),
            rtt,
            shares: vec![share("light", 1, 0.25), share("heavy", 3, 0.75)],
            floods: vec![flood(false), flood(true)],
        };
        let texts = chart::texts(&svg(&report).unwrap());
        for text in ["nothing", "all three", "light (1)", "heavy (3)", "300 KB/s", "none", "p99"] {
            assert!(texts.iter().any(|t| t == text), "{text} missing: {texts:?}");
        }
        let back: IsolationReport = serde_json::from_str(&serde_json::to_string(&report).unwrap()).unwrap();
        assert_eq!(back.rtt, report.rtt);
    }
}
