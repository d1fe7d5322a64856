//! `cargo xtask bench`: benchmarks whose numbers go into `target/bench/` as JSON (and SVG).
//!
//! `bench echo`: UDP echo round-trip latency (p50, p99; sequential datagrams to one guest) and
//! throughput (echoes per second with a window of outstanding datagrams per guest, to 1 and to
//! 4 guests; loss counted), 100 and 1400 bytes, copy and COW, from a load generator on the host
//! over the tap network (QEMU's user network where a tap device cannot be made). Wall-clock
//! figures under TCG: compare cells of one run, not runs of different machines.

use crate::manifest::{format_ip, NetPlan};
use crate::pack::{self, Artifacts};
use crate::qemu::{Accel, NetBackend, QemuConfig, Session};
use crate::tapnet::TapNamespace;
use crate::udp;
use crate::TxMode;
use anyhow::{bail, Context, Result};
use std::fmt::Write as _;
use std::net::SocketAddr;
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

/// One cell of the echo benchmark.
#[derive(Debug, Clone)]
pub struct EchoRow {
    pub mode: &'static str,
    pub size: usize,
    pub guests: usize,
    pub rtt_p50_us: f64,
    pub rtt_p99_us: f64,
    pub echoes_per_second: f64,
    pub sent: u64,
    pub received: u64,
}

/// How much traffic a run makes.
#[derive(Clone, Copy)]
pub struct Load {
    pub latency_samples: usize,
    pub throughput_seconds: f64,
}

pub const FULL: Load = Load { latency_samples: 2000, throughput_seconds: 3.0 };
pub const QUICK: Load = Load { latency_samples: 50, throughput_seconds: 0.3 };

/// The load generator: measures every (size, guests) cell against `peers` and returns rows
/// (mode filled in by the caller). Runs in this process or, for tap, inside the namespace.
pub fn measure(peers: &[SocketAddr], load: Load) -> Result<Vec<EchoRow>> {
    let mut rows = Vec::new();
    for size in SIZES {
        let (mut rtts, _lost) = udp::latency(peers[0], size, load.latency_samples, Duration::from_millis(500))?;
        rtts.sort_unstable();
        for guests in GUEST_COUNTS {
            let targets = &peers[..guests.min(peers.len())];
            let t = udp::throughput(targets, size, Duration::from_secs_f64(load.throughput_seconds), WINDOW)?;
            rows.push(EchoRow {
                mode: "",
                size,
                guests,
                rtt_p50_us: udp::percentile_us(&rtts, 50),
                rtt_p99_us: udp::percentile_us(&rtts, 99),
                echoes_per_second: t.echoes_per_second(),
                sent: t.sent,
                received: t.received,
            });
        }
    }
    Ok(rows)
}

/// Rows as whitespace-separated lines (what `bench-client` prints for its parent).
pub fn rows_to_lines(rows: &[EchoRow]) -> String {
    rows.iter()
        .map(|r| {
            format!(
                "row {} {} {:.1} {:.1} {:.1} {} {}\n",
                r.size, r.guests, r.rtt_p50_us, r.rtt_p99_us, r.echoes_per_second, r.sent, r.received
            )
        })
        .collect()
}

pub fn rows_from_lines(text: &str) -> Vec<EchoRow> {
    text.lines()
        .filter_map(|line| {
            let f: Vec<&str> = line.strip_prefix("row ")?.split_whitespace().collect();
            Some(EchoRow {
                mode: "",
                size: f.first()?.parse().ok()?,
                guests: f.get(1)?.parse().ok()?,
                rtt_p50_us: f.get(2)?.parse().ok()?,
                rtt_p99_us: f.get(3)?.parse().ok()?,
                echoes_per_second: f.get(4)?.parse().ok()?,
                sent: f.get(5)?.parse().ok()?,
                received: f.get(6)?.parse().ok()?,
            })
        })
        .collect()
}

/// Boots the `udp-echo` image with `tx` and measures it; returns the rows and the network used.
fn run_mode(artifacts: &Artifacts, tx: TxMode, load: Load, namespace: Option<&TapNamespace>) -> Result<Vec<EchoRow>> {
    let plan = if namespace.is_some() { NetPlan::TAP } else { NetPlan::USER };
    let image = pack::pack_image("udp-echo", artifacts, plan)?;
    let guests: Vec<_> = image.guests.iter().filter_map(|g| g.net).collect();
    let base = 21_000 + (std::process::id() % 1_000) as u16 * 8;
    let net = match namespace {
        Some(_) => NetBackend::Tap { ifname: crate::tapnet::TAP_IFNAME.into() },
        None => NetBackend::User {
            forwards: guests.iter().enumerate().map(|(i, n)| (base + i as u16, n.ipv4, 7)).collect(),
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
            let exe = std::env::current_exe()?;
            let mut cmd = ns.command(&exe.to_string_lossy());
            cmd.args(["bench-client", "--peers", &peers.join(",")]);
            if load.latency_samples == QUICK.latency_samples {
                cmd.arg("--quick");
            }
            let out = cmd.output().context("running the load generator in the namespace")?;
            if !out.status.success() {
                bail!("load generator failed: {}", String::from_utf8_lossy(&out.stderr));
            }
            rows_from_lines(&String::from_utf8_lossy(&out.stdout))
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
    Ok(rows.into_iter().map(|r| EchoRow { mode: tx.name(), ..r }).collect())
}

/// `cargo xtask bench echo`: every cell, printed, and written to `target/bench/echo.{json,svg}`.
pub fn echo(load: Load) -> Result<std::path::PathBuf> {
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
    for tx in [TxMode::Copy, TxMode::Cow] {
        rows.extend(run_mode(&artifacts, tx, load, namespace.as_ref())?);
    }
    println!("UDP echo over the {network} network, TCG, wall clock (one run):");
    println!(
        "{:<5} {:>5} {:>6} {:>12} {:>12} {:>12} {:>10} {:>8}",
        "mode", "size", "guests", "rtt p50 us", "rtt p99 us", "echoes/s", "sent", "lost"
    );
    for r in &rows {
        println!(
            "{:<5} {:>5} {:>6} {:>12.0} {:>12.0} {:>12.0} {:>10} {:>8}",
            r.mode,
            r.size,
            r.guests,
            r.rtt_p50_us,
            r.rtt_p99_us,
            r.echoes_per_second,
            r.sent,
            r.sent - r.received
        );
    }
    let dir = pack::workspace_root().join("target/bench");
    std::fs::create_dir_all(&dir)?;
    let json = dir.join("echo.json");
    std::fs::write(&json, echo_json(&rows, network))?;
    std::fs::write(dir.join("echo.svg"), echo_svg(&rows, network))?;
    println!("wrote {} and echo.svg", json.display());
    Ok(json)
}

fn echo_json(rows: &[EchoRow], network: &str) -> String {
    let mut out =
        format!("{{\"accel\": \"tcg\", \"unit\": \"wall-clock\", \"network\": \"{network}\", \"results\": [\n");
    for (i, r) in rows.iter().enumerate() {
        let _ = writeln!(
            out,
            "  {{\"mode\": \"{}\", \"size\": {}, \"guests\": {}, \"rtt_p50_us\": {:.1}, \"rtt_p99_us\": {:.1}, \"echoes_per_second\": {:.1}, \"sent\": {}, \"received\": {}, \"lost\": {}}}{}",
            r.mode,
            r.size,
            r.guests,
            r.rtt_p50_us,
            r.rtt_p99_us,
            r.echoes_per_second,
            r.sent,
            r.received,
            r.sent - r.received,
            if i + 1 < rows.len() { "," } else { "" }
        );
    }
    out + "]}\n"
}

/// Bars of echoes per second per cell, copy beside COW, labelled with the median RTT.
fn echo_svg(rows: &[EchoRow], network: &str) -> String {
    let max = rows.iter().map(|r| r.echoes_per_second).fold(1.0, f64::max);
    let (bar, gap, height) = (40.0, 30.0, 300.0);
    let width = 60.0 + rows.len() as f64 * bar + (rows.len() / 2) as f64 * gap;
    let mut svg = format!(
        "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{width}\" height=\"{}\" font-family=\"sans-serif\" font-size=\"11\">\n\
         <text x=\"10\" y=\"18\" font-size=\"14\">UDP echo, {network} network, TCG: echoes/s (bars) and median RTT (labels); blue copy, orange COW</text>\n",
        height + 90.0
    );
    let mut x = 40.0;
    for (i, r) in rows.iter().enumerate() {
        let h = r.echoes_per_second / max * height;
        let color = if r.mode == "copy" { "#4477aa" } else { "#ee7733" };
        let _ = writeln!(
            svg,
            "<rect x=\"{x}\" y=\"{}\" width=\"{}\" height=\"{h}\" fill=\"{color}\"/>",
            40.0 + height - h,
            bar - 4.0
        );
        let _ = writeln!(svg, "<text x=\"{x}\" y=\"{}\">{:.0}</text>", 36.0 + height - h, r.echoes_per_second);
        let _ = writeln!(svg, "<text x=\"{x}\" y=\"{}\">{}B×{}</text>", 55.0 + height, r.size, r.guests);
        let _ = writeln!(svg, "<text x=\"{x}\" y=\"{}\">{:.0}µs</text>", 70.0 + height, r.rtt_p50_us);
        x += bar + if i % 2 == 1 { gap } else { 0.0 };
    }
    svg + "</svg>\n"
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(mode: &'static str, size: usize, guests: usize) -> EchoRow {
        EchoRow {
            mode,
            size,
            guests,
            rtt_p50_us: 250.0,
            rtt_p99_us: 500.0,
            echoes_per_second: 20000.0,
            sent: 100,
            received: 98,
        }
    }

    #[test]
    fn rows_survive_the_trip_through_the_namespace() {
        let rows = vec![row("", 100, 1), row("", 1400, 4)];
        let back = rows_from_lines(&rows_to_lines(&rows));
        assert_eq!(back.len(), 2);
        assert_eq!((back[1].size, back[1].guests, back[1].received), (1400, 4, 98));
    }

    #[test]
    fn json_and_svg_name_every_cell() {
        let rows = vec![row("copy", 100, 1), row("cow", 100, 1)];
        let json = echo_json(&rows, "tap");
        assert_eq!(json.matches("\"mode\"").count(), 2);
        assert!(json.contains("\"lost\": 2"));
        assert_eq!(echo_svg(&rows, "tap").matches("<rect").count(), 2);
    }
}
