//! `cargo xtask bench dispatch`: where the work of one packet goes, stage by stage (Denali's
//! Figure 2), for both transmit paths. Boots `udp-echo` under TCG with `-icount shift=0` and
//! `stamps=on`, so every stamp counts executed instructions; sends sequential UDP datagrams of
//! each size to one guest; the guest reports the receive stages of each datagram it got (kernel
//! stamps from the rx buffer joined with its own), the kernel the transmit stages of each echo
//! (guest stamps from the tx slot's headroom joined with its own).

use crate::manifest::NetPlan;
use crate::pack::{self, Artifacts};
use crate::qemu::{Accel, NetBackend, QemuConfig, Session};
use crate::TxMode;
use anyhow::{bail, Context, Result};
use hypercall_abi::vnic::stamps::{REPORT_REQUEST, RX_STAGES, TX_STAGES};
use std::fmt::Write as _;
use std::net::{SocketAddr, UdpSocket};
use std::time::Duration;

/// UDP payload sizes of the smoke run (the user network carries standard frames only).
pub const SIZES: [usize; 4] = [64, 100, 512, 1400];
/// Sizes of the full run: 10,000 datagrams each take minutes under `-icount`.
pub const FULL_SIZES: [usize; 2] = [100, 1400];
/// Ethernet, IPv4 and UDP headers: frame length = payload + this.
const HEADERS: usize = 42;

#[derive(Debug, Clone)]
pub struct Stage {
    pub name: String,
    pub median: u64,
    pub p10: u64,
    pub p90: u64,
}

#[derive(Debug, Clone)]
pub struct Cell {
    pub direction: &'static str,
    pub mode: &'static str,
    pub size: usize,
    pub samples: u64,
    pub stages: Vec<Stage>,
    pub total_median: u64,
}

/// Parses `dispatch: dir=.. frame=.. samples=.. name=med/p10/p90 ... total=..` lines.
pub fn parse_lines(log: &str, mode: &'static str) -> Vec<Cell> {
    log.lines()
        .filter_map(|line| {
            let rest = &line[line.find("dispatch: dir=")? + "dispatch: ".len()..];
            let mut cell = Cell { direction: "", mode, size: 0, samples: 0, stages: Vec::new(), total_median: 0 };
            for field in rest.split_whitespace() {
                let (key, value) = field.split_once('=')?;
                match key {
                    "dir" => cell.direction = if value == "tx" { "tx" } else { "rx" },
                    "mode" => {}
                    "frame" => cell.size = value.parse::<usize>().ok()?.checked_sub(HEADERS)?,
                    "samples" => cell.samples = value.parse().ok()?,
                    "total" => cell.total_median = value.parse().ok()?,
                    name => {
                        let mut parts = value.split('/').map(|v| v.parse::<u64>());
                        let (median, p10, p90) = (parts.next()?.ok()?, parts.next()?.ok()?, parts.next()?.ok()?);
                        cell.stages.push(Stage { name: name.to_string(), median, p10, p90 });
                    }
                }
            }
            Some(cell)
        })
        .collect()
}

fn run_mode(
    artifacts: &Artifacts,
    tx: TxMode,
    packets: usize,
    sizes: &[usize],
    accel: Accel,
) -> Result<(Vec<Cell>, u64)> {
    let image = pack::pack_image("udp-echo", artifacts, NetPlan::USER)?;
    let guest = image.guests.iter().find_map(|g| g.net).context("udp-echo has a networked guest")?;
    let port = 23_000 + (std::process::id() % 1_000) as u16 * 4;
    let config = QemuConfig {
        net: Some(NetBackend::User { forwards: vec![(port, guest.ipv4, 7)] }),
        icount: accel == Accel::Tcg,
        ..QemuConfig::for_image(&image, accel, format!("log=info shutdown_after=3600 tx={} stamps=on", tx.name()))
    };
    let mut session = Session::start(config.command(), Duration::from_secs(1800), false)?;
    if !session.wait_for(Duration::from_secs(60), |log| log.contains("udp-echo listening on")) {
        bail!("udp-echo did not start:\n{}", session.log());
    }
    let peer = SocketAddr::from(([127, 0, 0, 1], port));
    let socket = UdpSocket::bind("127.0.0.1:0")?;
    // A lost datagram is resent after this; losses are rare, so short is cheap.
    socket.set_read_timeout(Some(Duration::from_millis(250)))?;
    let mut buf = [0u8; 4096];
    // Warm-up (ARP, first use of every path) with sizes the report leaves out, so the recorded
    // datagrams all run warm.
    for size in sizes.iter().map(|s| s - 1) {
        let data = crate::udp::random_bytes(size as u64, size);
        for _ in 0..20 {
            socket.send_to(&data, peer)?;
            let _ = socket.recv_from(&mut buf);
        }
    }
    for &size in sizes {
        let data = crate::udp::random_bytes(size as u64, size);
        let mut echoed = 0;
        for _ in 0..packets * 2 {
            socket.send_to(&data, peer)?;
            if matches!(socket.recv_from(&mut buf), Ok((len, _)) if buf[..len] == data[..]) {
                echoed += 1;
                if echoed == packets {
                    break;
                }
            }
        }
        if echoed < packets {
            bail!("only {echoed} of {packets} {size}-byte datagrams came back");
        }
    }
    socket.send_to(REPORT_REQUEST, peer)?;
    if !session.wait_for(Duration::from_secs(60), |log| log.contains("dispatch: report done")) {
        bail!("the guest did not report its receive stages:\n{}", session.log());
    }
    session.request_quit();
    let outcome = session.finish()?;
    if outcome.exit() != Some(hypercall_abi::host::KernelExit::Success) {
        bail!("the kernel did not end cleanly: {}\n{}", outcome.describe(), outcome.log);
    }
    let tsc_hz = crate::checks::tsc_mhz(&outcome.log).map_or(0, |mhz| (mhz * 1e6) as u64);
    let cells = parse_lines(&outcome.log, tx.name()).into_iter().filter(|c| sizes.contains(&c.size)).collect();
    Ok((cells, tsc_hz))
}

/// `cargo xtask bench dispatch`: tables per direction, `dispatch.json` and `dispatch.svg`.
/// Under TCG the stamps count instructions (`-icount shift=0`); under hardware KVM, cycles.
pub fn run(packets: usize, sizes: &[usize], accel: Accel) -> Result<std::path::PathBuf> {
    let artifacts = Artifacts::build()?;
    let unit = if accel == Accel::Tcg { "instructions" } else { "cycles" };
    let mut cells = Vec::new();
    let mut tsc_hz = 0;
    for tx in [TxMode::Copy, TxMode::Cow] {
        let (mode_cells, hz) = run_mode(&artifacts, tx, packets, sizes, accel)?;
        cells.extend(mode_cells);
        tsc_hz = hz;
    }
    cells.sort_by_key(|c| (c.direction, c.size, c.mode));
    for direction in ["rx", "tx"] {
        println!("{direction}: median {unit} per stage ({}), share of the total in brackets", accel.name());
        let names: Vec<&str> = if direction == "tx" { TX_STAGES.to_vec() } else { RX_STAGES.to_vec() };
        let row: Vec<&Cell> = cells.iter().filter(|c| c.direction == direction).collect();
        print!("{:<32}", "stage");
        for c in &row {
            print!(" {:>16}", format!("{}B {}", c.size, c.mode));
        }
        println!();
        for name in &names {
            print!("{name:<32}");
            for c in &row {
                let stage = c.stages.iter().find(|s| s.name == *name).map_or(0, |s| s.median);
                let share = stage as f64 * 100.0 / c.total_median.max(1) as f64;
                print!(" {:>16}", format!("{stage} ({share:.0}%)"));
            }
            println!();
        }
        print!("{:<32}", "total");
        for c in &row {
            print!(" {:>16}", c.total_median);
        }
        println!();
    }
    let cpu = crate::bench::host_cpu();
    let mut json = format!(
        "{{\"accel\": \"{}\", \"unit\": \"{unit}\", \"cpu\": \"{cpu}\", \"tsc_hz\": {tsc_hz}, \"results\": [\n",
        accel.name()
    );
    for (i, c) in cells.iter().enumerate() {
        let stages: Vec<String> = c
            .stages
            .iter()
            .map(|s| {
                format!(
                    "{{\"name\": \"{}\", \"median\": {}, \"p10\": {}, \"p90\": {}}}",
                    s.name, s.median, s.p10, s.p90
                )
            })
            .collect();
        let _ = writeln!(
            json,
            "  {{\"direction\": \"{}\", \"mode\": \"{}\", \"size\": {}, \"samples\": {}, \"stages\": [{}], \"total_median\": {}}}{}",
            c.direction,
            c.mode,
            c.size,
            c.samples,
            stages.join(", "),
            c.total_median,
            if i + 1 < cells.len() { "," } else { "" }
        );
    }
    json += "]}\n";
    let dir = pack::workspace_root().join("target/bench");
    std::fs::create_dir_all(&dir)?;
    let path = dir.join("dispatch.json");
    std::fs::write(&path, json)?;
    std::fs::write(dir.join("dispatch.svg"), svg(&cells))?;
    println!("wrote {} and dispatch.svg", path.display());
    Ok(path)
}

/// Stacked bars, one per cell, one colour per stage (legend per direction).
fn svg(cells: &[Cell]) -> String {
    const COLORS: [&str; 8] = ["#4477aa", "#66ccee", "#228833", "#ccbb44", "#ee6677", "#aa3377", "#bbbbbb", "#000000"];
    let max = cells.iter().map(|c| c.stages.iter().map(|s| s.median).sum::<u64>()).max().unwrap_or(1).max(1) as f64;
    let (bar, gap, height) = (46.0, 14.0, 320.0);
    let width = 260.0 + cells.len() as f64 * (bar + gap);
    let mut out = format!(
        "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{width}\" height=\"{}\" font-family=\"sans-serif\" font-size=\"10\">\n\
         <text x=\"10\" y=\"16\" font-size=\"13\">Per-stage instructions per packet (TCG -icount), median; rx then tx</text>\n",
        height + 80.0
    );
    for (i, c) in cells.iter().enumerate() {
        let x = 20.0 + i as f64 * (bar + gap);
        let mut y = 30.0 + height;
        for (k, s) in c.stages.iter().enumerate() {
            let h = s.median as f64 / max * height;
            y -= h;
            let _ = writeln!(
                out,
                "<rect x=\"{x}\" y=\"{y}\" width=\"{bar}\" height=\"{h}\" fill=\"{}\"><title>{}: {}</title></rect>",
                COLORS[k % 8],
                s.name,
                s.median
            );
        }
        let _ = writeln!(out, "<text x=\"{x}\" y=\"{}\">{} {}</text>", 45.0 + height, c.direction, c.size);
        let _ = writeln!(out, "<text x=\"{x}\" y=\"{}\">{}</text>", 58.0 + height, c.mode);
    }
    let legend_x = 30.0 + cells.len() as f64 * (bar + gap);
    for (k, name) in RX_STAGES.iter().enumerate() {
        let _ = writeln!(out, "<rect x=\"{legend_x}\" y=\"{}\" width=\"10\" height=\"10\" fill=\"{}\"/><text x=\"{}\" y=\"{}\">rx {name} / tx {}</text>", 40.0 + k as f64 * 16.0, COLORS[k], legend_x + 14.0, 49.0 + k as f64 * 16.0, TX_STAGES.get(k).copied().unwrap_or("-"));
    }
    out + "</svg>\n"
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn report_lines_parse_into_cells() {
        let log = "[ 1.0] INFO  guest 0 udp-echo-0: dispatch: dir=rx frame=142 samples=200 interrupt_entry=59/58/60 guest_stack=489/480/500 total=2830\n\
                   dispatch: dir=tx mode=Copy frame=1442 samples=9 guest_stack=10/9/11 notify=5/5/6 total=15\n\
                   dispatch: report done\n";
        let cells = parse_lines(log, "copy");
        assert_eq!(cells.len(), 2);
        assert_eq!(
            (cells[0].direction, cells[0].size, cells[0].samples, cells[0].total_median),
            ("rx", 100, 200, 2830)
        );
        assert_eq!(cells[0].stages[1].name, "guest_stack");
        assert_eq!((cells[1].direction, cells[1].size, cells[1].stages[1].p90), ("tx", 1400, 6));
    }
}
