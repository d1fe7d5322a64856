//! `cargo xtask bench dispatch`: where the work of one packet goes, stage by stage (Denali's
//! Figure 2), for both transmit paths. Boots `udp-echo` under TCG with `-icount shift=0` and
//! `stamps=on`, so every stamp counts executed instructions; sends sequential UDP datagrams of
//! each size to one guest; the guest reports the receive stages of each datagram it got (kernel
//! stamps from the rx buffer joined with its own), the kernel the transmit stages of each echo
//! (guest stamps from the tx slot's headroom joined with its own).

use crate::chart::{self, Bars, Panel, Series, PALETTE};
use crate::manifest::NetPlan;
use crate::pack::{self, Artifacts};
use crate::qemu::{Accel, NetBackend, QemuConfig, Session};
use crate::TxMode;
use anyhow::{bail, Context, Result};
use hypercall_abi::vnic::stamps::{REPORT_REQUEST, RX_STAGES, TX_STAGES};
use serde::{Deserialize, Serialize};
use std::net::{SocketAddr, UdpSocket};
use std::time::Duration;

/// UDP payload sizes of the smoke run (the user network carries standard frames only).
pub const SIZES: [usize; 4] = [64, 100, 512, 1400];
/// Sizes of the full run: 10,000 datagrams each take minutes under `-icount`.
pub const FULL_SIZES: [usize; 2] = [100, 1400];
/// Ethernet, IPv4 and UDP headers: frame length = payload + this.
const HEADERS: usize = 42;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Stage {
    pub name: String,
    pub median: u64,
    pub p10: u64,
    pub p90: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Direction {
    Rx,
    Tx,
}

impl Direction {
    pub const ALL: [Direction; 2] = [Direction::Rx, Direction::Tx];

    /// The stage names in the order a packet passes them.
    pub fn stages(self) -> &'static [&'static str] {
        match self {
            Direction::Rx => &RX_STAGES,
            Direction::Tx => &TX_STAGES,
        }
    }

    fn name(self) -> &'static str {
        match self {
            Direction::Rx => "rx",
            Direction::Tx => "tx",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Cell {
    pub direction: Direction,
    #[serde(with = "crate::tx_mode_name")]
    pub mode: TxMode,
    /// UDP payload, bytes.
    pub size: usize,
    pub samples: u64,
    pub stages: Vec<Stage>,
    /// Median of the per-packet totals (not the sum of the stage medians).
    pub total_median: u64,
}

impl Cell {
    /// The median of stage `name`; 0 when the cell lacks it.
    pub fn median(&self, name: &str) -> u64 {
        self.stages.iter().find(|s| s.name == name).map_or(0, |s| s.median)
    }
}

/// `target/bench/dispatch.json`.
#[derive(Debug, Serialize, Deserialize)]
pub struct DispatchReport {
    /// `tcg` or `kvm`.
    pub accel: String,
    /// `instructions` (TCG with `-icount shift=0`) or `cycles` (KVM).
    pub unit: String,
    pub cpu: String,
    /// The guest's TSC frequency, from the kernel's log (0 when it did not say).
    pub tsc_hz: u64,
    pub results: Vec<Cell>,
}

/// Parses `dispatch: dir=.. frame=.. samples=.. name=med/p10/p90 ... total=..` lines.
pub fn parse_lines(log: &str, mode: TxMode) -> Vec<Cell> {
    log.lines()
        .filter_map(|line| {
            let rest = &line[line.find("dispatch: dir=")? + "dispatch: ".len()..];
            let mut cell =
                Cell { direction: Direction::Rx, mode, size: 0, samples: 0, stages: Vec::new(), total_median: 0 };
            for field in rest.split_whitespace() {
                let (key, value) = field.split_once('=')?;
                match key {
                    "dir" => cell.direction = if value == "tx" { Direction::Tx } else { Direction::Rx },
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
        net: Some(NetBackend::User { forwards: vec![(port, guest.ipv4, 7)], tcp_forwards: Vec::new() }),
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
    let cells = parse_lines(&outcome.log, tx).into_iter().filter(|c| sizes.contains(&c.size)).collect();
    Ok((cells, tsc_hz))
}

/// `cargo xtask bench dispatch`: tables per direction, `dispatch.json` and `dispatch.svg`.
/// Under TCG the stamps count instructions (`-icount shift=0`); under hardware KVM, cycles.
pub fn run(packets: usize, sizes: &[usize], accel: Accel) -> Result<std::path::PathBuf> {
    let artifacts = Artifacts::build_with(pack::Stamping::Built)?;
    let unit = if accel == Accel::Tcg { "instructions" } else { "cycles" };
    let mut cells = Vec::new();
    let mut tsc_hz = 0;
    for tx in TxMode::ALL {
        let (mode_cells, hz) = run_mode(&artifacts, tx, packets, sizes, accel)?;
        cells.extend(mode_cells);
        tsc_hz = hz;
    }
    cells.sort_by_key(|c| (c.direction, c.size, c.mode.name()));
    for direction in Direction::ALL {
        println!("{}: median {unit} per stage ({}), share of the total in brackets", direction.name(), accel.name());
        let row: Vec<&Cell> = cells.iter().filter(|c| c.direction == direction).collect();
        print!("{:<32}", "stage");
        for c in &row {
            print!(" {:>16}", format!("{}B {}", c.size, c.mode.name()));
        }
        println!();
        for name in direction.stages() {
            print!("{name:<32}");
            for c in &row {
                let stage = c.median(name);
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
    let report = DispatchReport {
        accel: accel.name().into(),
        unit: unit.into(),
        cpu: crate::bench::host_cpu(),
        tsc_hz,
        results: cells,
    };
    let path = crate::bench::write_json("dispatch.json", &report)?;
    std::fs::write(path.with_file_name("dispatch.svg"), svg(&report.results, unit, accel)?)?;
    println!("wrote {} and dispatch.svg", path.display());
    Ok(path)
}

/// Two panels, receive above transmit: a stacked bar per cell (size, transmit path), one colour
/// per stage. A stage name has one colour in both panels (`guest_stack` is the guest's smoltcp
/// either way); different stages never share one.
fn svg(cells: &[Cell], unit: &str, accel: Accel) -> Result<String> {
    let mut names: Vec<&str> = Vec::new();
    for name in Direction::ALL.iter().flat_map(|d| d.stages()) {
        if !names.contains(name) {
            names.push(name);
        }
    }
    let colour = |name: &str| PALETTE[names.iter().position(|n| *n == name).unwrap_or(0) % PALETTE.len()];
    let how = if accel == Accel::Tcg { "TCG -icount" } else { "KVM" };
    let panels: Vec<Panel> = Direction::ALL
        .into_iter()
        .map(|direction| {
            let row: Vec<&Cell> = cells.iter().filter(|c| c.direction == direction).collect();
            let what = if direction == Direction::Rx { "Receive" } else { "Transmit" };
            Panel {
                title: format!("{what}: {unit} per packet by stage (median, {how})"),
                x_desc: "UDP payload (bytes) and transmit path".into(),
                y_desc: format!("{unit} per packet"),
                legend_title: format!("{} stage", direction.name()),
                categories: row.iter().map(|c| format!("{} B {}", c.size, c.mode.name())).collect(),
                series: direction
                    .stages()
                    .iter()
                    .map(|name| Series {
                        name: name.to_string(),
                        colour: colour(name),
                        values: row.iter().map(|c| c.median(name) as f64).collect(),
                    })
                    .collect(),
                bars: Bars::Stacked,
            }
        })
        .collect();
    chart::svg(&panels, 1, (1100, 460))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn report_lines_parse_into_cells() {
        let log = "[ 1.0] INFO  guest 0 udp-echo-0: dispatch: dir=rx frame=142 samples=200 interrupt_entry=59/58/60 guest_stack=489/480/500 total=2830\n\
                   dispatch: dir=tx mode=Copy frame=1442 samples=9 guest_stack=10/9/11 notify=5/5/6 total=15\n\
                   dispatch: report done\n";
        let cells = parse_lines(log, TxMode::Copy);
        assert_eq!(cells.len(), 2);
        assert_eq!(
            (cells[0].direction, cells[0].size, cells[0].samples, cells[0].total_median),
            (Direction::Rx, 100, 200, 2830)
        );
        assert_eq!(cells[0].stages[1].name, "guest_stack");
        assert_eq!((cells[1].direction, cells[1].size, cells[1].stages[1].p90), (Direction::Tx, 1400, 6));
    }

    fn cell(direction: Direction, mode: TxMode, size: usize) -> Cell {
        let stages = direction
            .stages()
            .iter()
            .enumerate()
            .map(|(i, name)| Stage { name: name.to_string(), median: 100 + i as u64, p10: 90, p90: 200 })
            .collect();
        Cell { direction, mode, size, samples: 30, stages, total_median: 1000 }
    }

    #[test]
    fn the_report_keeps_its_field_names() {
        let report = DispatchReport {
            accel: "tcg".into(),
            unit: "instructions".into(),
            cpu: "AMD \"EPYC\"".into(),
            tsc_hz: 2_000_000_000,
            results: vec![cell(Direction::Tx, TxMode::Cow, 1400)],
        };
        let json = serde_json::to_string(&report).unwrap();
        assert!(json.starts_with(r#"{"accel":"tcg","unit":"instructions","cpu":"AMD \"EPYC\"","tsc_hz":2000000000,"#));
        assert!(json.contains(r#"{"direction":"tx","mode":"cow","size":1400,"samples":30,"stages":[{"name":"guest_stack","median":100,"p10":90,"p90":200},"#));
        assert!(json.ends_with(r#""total_median":1000}]}"#));
        let back: DispatchReport = serde_json::from_str(&json).unwrap();
        assert_eq!(back.results, report.results);
    }

    #[test]
    fn the_chart_names_every_stage_and_never_gives_two_stages_one_colour() {
        let mut cells = Vec::new();
        for direction in Direction::ALL {
            for mode in TxMode::ALL {
                for size in SIZES {
                    cells.push(cell(direction, mode, size));
                }
            }
        }
        let svg = svg(&cells, "instructions", Accel::Tcg).unwrap();
        let texts = crate::chart::texts(&svg);
        for name in RX_STAGES.iter().chain(&TX_STAGES) {
            assert!(texts.iter().any(|t| t == name), "{name} not in a legend");
        }
        for text in ["1400 B cow", "instructions per packet", "rx stage", "tx stage"] {
            assert!(texts.iter().any(|t| t == text), "{text} missing: {texts:?}");
        }
        // Each stage's colour: its bars (8 cells) and its legend swatch, per panel it is in.
        let mut seen = Vec::new();
        for name in RX_STAGES.iter().chain(&TX_STAGES) {
            if seen.contains(name) {
                continue;
            }
            let panels = [&RX_STAGES[..], &TX_STAGES[..]].iter().filter(|s| s.contains(name)).count();
            let c = PALETTE[seen.len()];
            seen.push(*name);
            let fill = format!("fill=\"#{:02X}{:02X}{:02X}\"", c.0, c.1, c.2);
            assert_eq!(svg.matches(&fill).count(), panels * (2 * SIZES.len() + 1), "{name}");
        }
    }
}
