//! `cargo xtask bench boot`: time from starting QEMU to the first UDP echo from the default
//! image, on each machine and NIC transport: `pc` with legacy and with modern virtio-pci, and
//! `microvm` with virtio-mmio (Firecracker's model). Also the kernel's own figure (its `boot
//! complete in N us` line: from its entry to starting guests). Wall-clock under TCG: compare the
//! rows of one run.

use crate::bench::{rounded, write_json};
use crate::manifest::NetPlan;
use crate::pack::{self, Artifacts};
use crate::qemu::{Accel, NetBackend, NicTransport, QemuConfig, Session};
use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};
use std::net::{SocketAddr, UdpSocket};
use std::path::PathBuf;
use std::time::{Duration, Instant};

/// The machines and transports measured, in the order printed.
pub const TRANSPORTS: [NicTransport; 3] = [NicTransport::Legacy, NicTransport::Modern, NicTransport::Mmio];
/// How long a boot may take before the run counts as failed.
const FIRST_ECHO_LIMIT: Duration = Duration::from_secs(30);
/// How often the probe datagram is sent again while no echo has come.
const PROBE_INTERVAL: Duration = Duration::from_millis(1);

/// `target/bench/boot.json`.
#[derive(Debug, Serialize, Deserialize)]
pub struct BootReport {
    pub accel: String,
    pub image: String,
    pub runs: usize,
    pub unit: String,
    pub results: Vec<BootRow>,
}

/// One machine and transport: milliseconds from QEMU's start to the first echo, and from the
/// kernel's entry to its guests starting (the kernel's own clock).
#[derive(Debug, Serialize, Deserialize)]
pub struct BootRow {
    pub machine: String,
    pub nic: String,
    pub first_echo_ms_median: f64,
    pub first_echo_ms_min: f64,
    pub first_echo_ms_max: f64,
    pub kernel_boot_ms_median: f64,
}

/// Sends a datagram to `peer` every [`PROBE_INTERVAL`] until one is echoed; the time since
/// `start`.
fn first_echo(peer: SocketAddr, start: Instant) -> Result<Duration> {
    let socket = UdpSocket::bind("127.0.0.1:0")?;
    socket.set_read_timeout(Some(PROBE_INTERVAL))?;
    let mut buf = [0u8; 64];
    while start.elapsed() < FIRST_ECHO_LIMIT {
        socket.send_to(b"boot", peer)?;
        if let Ok((len, _)) = socket.recv_from(&mut buf) {
            if &buf[..len] == b"boot" {
                return Ok(start.elapsed());
            }
        }
    }
    bail!("no echo within {FIRST_ECHO_LIMIT:?}")
}

/// The kernel's `boot complete in N us`, in milliseconds.
fn kernel_boot_ms(log: &str) -> Option<f64> {
    let rest = log.lines().find_map(|l| l.split_once("boot complete in ").map(|(_, rest)| rest))?;
    Some(rest.split_once(" us")?.0.parse::<f64>().ok()? / 1e3)
}

fn median(values: &mut [f64]) -> f64 {
    values.sort_by(f64::total_cmp);
    values.get(values.len() / 2).copied().unwrap_or(0.0)
}

/// One boot of `image` on `nic`'s machine: (ms to the first echo, the kernel's boot ms).
fn boot_once(image: &pack::Image, nic: NicTransport, port: u16) -> Result<(f64, f64)> {
    let guest = image.guests.iter().find_map(|g| g.net).context("the image has no guest with a NIC")?;
    let config = QemuConfig {
        net: Some(NetBackend::User { forwards: vec![(port, guest.ipv4, crate::ECHO_PORT)], tcp_forwards: Vec::new() }),
        nic,
        ..QemuConfig::for_image(image, Accel::Tcg, "log=info shutdown_after=60 tx=copy".into())
    };
    let start = Instant::now();
    let mut session = Session::start(config.command(), Duration::from_secs(90), false)?;
    let echo = first_echo(SocketAddr::from(([127, 0, 0, 1], port)), start);
    session.request_quit();
    let outcome = session.finish()?;
    let echo = echo.with_context(|| format!("{}: {}", nic.kernel_name(), outcome.describe()))?;
    let kernel = kernel_boot_ms(&outcome.log).context("no `boot complete` line")?;
    Ok((echo.as_secs_f64() * 1e3, kernel))
}

/// Boots the default image `runs` times on each machine and transport, prints the table and
/// writes `target/bench/boot.json`.
pub fn run(runs: usize) -> Result<PathBuf> {
    let artifacts = Artifacts::build()?;
    let image = pack::pack_image(crate::DEFAULT_IMAGE, &artifacts, NetPlan::USER)?;
    let port = 21_000 + (std::process::id() % 2_000) as u16 * 4;
    let mut results = Vec::new();
    println!("boot to first UDP echo ({} runs each, TCG, image {}):", runs, image.name);
    println!(
        "{:<8} {:<18} {:>12} {:>9} {:>9} {:>15}",
        "machine", "NIC", "median ms", "min ms", "max ms", "kernel boot ms"
    );
    for nic in TRANSPORTS {
        let (mut echo, mut kernel) = (Vec::new(), Vec::new());
        for _ in 0..runs {
            let (e, k) = boot_once(&image, nic, port)?;
            echo.push(e);
            kernel.push(k);
        }
        let row = BootRow {
            machine: nic.machine().name().into(),
            nic: nic.kernel_name().into(),
            first_echo_ms_median: rounded(median(&mut echo), 1),
            first_echo_ms_min: rounded(echo.first().copied().unwrap_or(0.0), 1),
            first_echo_ms_max: rounded(echo.last().copied().unwrap_or(0.0), 1),
            kernel_boot_ms_median: rounded(median(&mut kernel), 1),
        };
        println!(
            "{:<8} {:<18} {:>12.1} {:>9.1} {:>9.1} {:>15.1}",
            row.machine,
            row.nic,
            row.first_echo_ms_median,
            row.first_echo_ms_min,
            row.first_echo_ms_max,
            row.kernel_boot_ms_median
        );
        results.push(row);
    }
    let report = BootReport { accel: "tcg".into(), image: image.name.clone(), runs, unit: "ms".into(), results };
    let path = write_json("boot.json", &report)?;
    println!("wrote {}", path.display());
    Ok(path)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kernel_boot_line_and_median() {
        let log = "[    0.014962] INFO  boot complete in 14940 us; starting guests\n";
        assert_eq!(kernel_boot_ms(log), Some(14.94));
        assert_eq!(kernel_boot_ms("nothing"), None);
        assert_eq!(median(&mut [3.0, 1.0, 2.0]), 2.0);
        assert_eq!(median(&mut []), 0.0);
    }
}
