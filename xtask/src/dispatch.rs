//! `cargo xtask bench dispatch`: where the work of one packet goes, stage by stage (Denali's
//! Figure 2), for both transmit paths. Boots `udp-echo` under TCG with `-icount shift=0` and
//! `stamps=on`, so every stamp counts executed instructions; sends sequential UDP datagrams of
//! each size to one guest; the guest reports the receive stages of each datagram it got (kernel
//! stamps from the rx buffer joined with its own), the kernel the transmit stages of each echo
//! (guest stamps from the tx slot's headroom joined with its own).

use crate::chart::{self, Bars, Panel, Series, PALETTE};
use crate::icount::{self, Counter, IdleRate, PerItem};
use crate::manifest::NetPlan;
use crate::pack::{self, Artifacts};
use crate::qemu::{Accel, NetBackend, QemuConfig, Session};
use crate::TxMode;
use anyhow::{bail, Context, Result};
use hypercall_abi::vnic::stamps::{APP_STAGES, REPORT_REQUEST, RX_STAGES, TX_STAGES};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

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
    /// The mean (rounded down): means add up, so the whole-echo account uses them.
    #[serde(default)]
    pub mean: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Direction {
    Rx,
    Tx,
    /// The echo app between a datagram's receive stages and its reply's transmit stages.
    App,
}

impl Direction {
    /// The directions of the per-packet tables and chart.
    pub const ALL: [Direction; 2] = [Direction::Rx, Direction::Tx];

    /// The stage names in the order a packet passes them.
    pub fn stages(self) -> &'static [&'static str] {
        match self {
            Direction::Rx => &RX_STAGES,
            Direction::Tx => &TX_STAGES,
            Direction::App => &APP_STAGES,
        }
    }

    fn name(self) -> &'static str {
        match self {
            Direction::Rx => "rx",
            Direction::Tx => "tx",
            Direction::App => "app",
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
    /// The whole echo against its stages, per size and transmit path (TCG only).
    #[serde(default)]
    pub echo: Vec<EchoAccount>,
}

/// One row of the whole-echo account: a stage, instructions per echo (mean).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AccountRow {
    pub name: String,
    /// `rx`, `app`, `tx` (the per-packet stages) or `unstaged` (the kernel's timeline).
    pub part: String,
    pub per_echo: f64,
    /// Unstaged rows: how many times per echo it happened (each stage happens once).
    #[serde(default)]
    pub times_per_echo: f64,
}

/// Every instruction of an echo, counted by the plugin from outside the machine, against the
/// stages that account for it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EchoAccount {
    #[serde(with = "crate::tx_mode_name")]
    pub mode: TxMode,
    /// UDP payload, bytes.
    pub size: usize,
    /// Echoes in the measured window (stamps on).
    pub echoes: u64,
    /// The stages, in the order an echo passes them, then the timeline's rows.
    pub rows: Vec<AccountRow>,
    pub stage_sum: f64,
    /// The timeline's staged span per echo: should equal the sum of the rx, app and tx rows.
    pub staged_span: f64,
    /// The timer's ticks per echo (left out of the stage sum: the idle window takes the timer
    /// off the whole too).
    pub timer: f64,
    /// The kernel's own accounting per echo (its TSC, every tick in ring 0 and ring 3).
    pub timeline: PerItem,
    /// The plugin's count per echo, idle subtracted, with the stamps on (what the stages cover)
    /// and off (what an echo costs).
    pub whole: PerItem,
    pub whole_unstamped: PerItem,
    /// `stage_sum / whole`, percent.
    pub coverage_percent: f64,
}

/// A `dispatch: dir=timeline` line: the kernel's ticks by activity for one frame length, and
/// how many stretches of each.
#[derive(Debug, Clone, PartialEq)]
pub struct TimelineRow {
    pub size: usize,
    pub echoes: u64,
    /// (name, ticks, stretches).
    pub activities: Vec<(String, u64, u64)>,
    pub kernel: u64,
    pub guest: u64,
}

impl TimelineRow {
    fn ticks(&self, name: &str) -> u64 {
        self.activities.iter().find(|(n, _, _)| n == name).map_or(0, |(_, t, _)| *t)
    }
}

/// Parses the kernel's `dispatch: dir=timeline frame=.. echoes=.. name=ticks:stretches ..
/// kernel=.. guest=..`.
pub fn parse_timeline(log: &str) -> Vec<TimelineRow> {
    log.lines()
        .filter_map(|line| {
            let rest = &line[line.find("dispatch: dir=timeline ")? + "dispatch: dir=timeline ".len()..];
            let mut row = TimelineRow { size: 0, echoes: 0, activities: Vec::new(), kernel: 0, guest: 0 };
            for field in rest.split_whitespace() {
                let (key, value) = field.split_once('=')?;
                if let Some((ticks, stretches)) = value.split_once(':') {
                    row.activities.push((key.to_string(), ticks.parse().ok()?, stretches.parse().ok()?));
                    continue;
                }
                let value: u64 = value.parse().ok()?;
                match key {
                    "frame" => row.size = usize::try_from(value).ok()?.checked_sub(HEADERS)?,
                    "echoes" => row.echoes = value,
                    "kernel" => row.kernel = value,
                    "guest" => row.guest = value,
                    _ => return None,
                }
            }
            Some(row)
        })
        .collect()
}

/// What a window of echoes of one size cost, counted by the plugin.
#[derive(Debug, Clone, Copy)]
struct Whole {
    size: usize,
    echoes: u64,
    per_echo: PerItem,
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
                    "dir" => {
                        cell.direction = match value {
                            "rx" => Direction::Rx,
                            "tx" => Direction::Tx,
                            "app" => Direction::App,
                            _ => return None, // the timeline: parse_timeline
                        }
                    }
                    "mode" => {}
                    "frame" => cell.size = value.parse::<usize>().ok()?.checked_sub(HEADERS)?,
                    "samples" => cell.samples = value.parse().ok()?,
                    "total" => cell.total_median = value.parse().ok()?,
                    name => {
                        let mut parts = value.split('/').map(|v| v.parse::<u64>());
                        let (median, p10, p90) = (parts.next()?.ok()?, parts.next()?.ok()?, parts.next()?.ok()?);
                        let mean = parts.next().transpose().ok()?.unwrap_or(median);
                        cell.stages.push(Stage { name: name.to_string(), median, p10, p90, mean });
                    }
                }
            }
            Some(cell)
        })
        .collect()
}

/// Idle windows, the lowest instruction rate of which is taken off every window of echoes.
pub(crate) const IDLE_WINDOW: Duration = Duration::from_millis(250);
pub(crate) const IDLE_WINDOWS: usize = 4;
/// Quiet before each read of the counters, so that the echo under way has ended.
pub(crate) const SETTLE: Duration = Duration::from_millis(50);
/// Pause after each echo before the next datagram: the guest goes back to idle in between, so
/// every echo takes the same path (sent at once, the next datagram may reach the guest before
/// it idles, which then skips the idle call and its return: the figures moved by 10% between
/// runs).
pub(crate) const ECHO_GAP: Duration = Duration::from_micros(500);

/// What one boot measured.
struct ModeRun {
    cells: Vec<Cell>,
    timeline: Vec<TimelineRow>,
    whole: Vec<Whole>,
    tsc_hz: u64,
}

/// Boots `udp-echo` with transmit path `tx` (stage stamps on or off), sends `packets`
/// sequential datagrams of each size, and under TCG counts every instruction of each size's
/// window with the plugin.
fn run_mode(
    artifacts: &Artifacts,
    tx: TxMode,
    packets: usize,
    sizes: &[usize],
    accel: Accel,
    stamps: bool,
    csum: Option<bool>,
) -> Result<ModeRun> {
    let image = pack::pack_image("udp-echo", artifacts, NetPlan::USER)?;
    let guest = image.guests.iter().find_map(|g| g.net).context("udp-echo has a networked guest")?;
    let port = 23_000 + (std::process::id() % 1_000) as u16 * 4;
    let on_off = if stamps { "on" } else { "off" };
    let config = QemuConfig {
        net: Some(NetBackend::User { forwards: vec![(port, guest.ipv4, 7)], tcp_forwards: Vec::new() }),
        icount: accel == Accel::Tcg,
        ..QemuConfig::for_image(
            &image,
            accel,
            format!("log=info shutdown_after=3600 tx={} stamps={on_off}{}", tx.name(), csum_word(csum)),
        )
    };
    let mut cmd = config.command();
    let counter = if accel == Accel::Tcg {
        let (counter, args) = Counter::new(&format!("dispatch-{}-{on_off}", tx.name()))?;
        cmd.args(args);
        Some(counter)
    } else {
        None
    };
    let mut session = Session::start(cmd, Duration::from_secs(1800), false)?;
    if !session.wait_for(Duration::from_secs(60), |log| log.contains("udp-echo listening on")) {
        bail!("udp-echo did not start:\n{}", session.log());
    }
    let peer = SocketAddr::from(([127, 0, 0, 1], port));
    // Warm-up with sizes the report leaves out, so the recorded datagrams all run warm.
    let socket = crate::udp::warmed_echo_socket(peer, sizes)?;
    let idle = match &counter {
        Some(counter) => counter.idle_rate(IDLE_WINDOW, IDLE_WINDOWS)?,
        None => IdleRate::default(),
    };
    if counter.is_some() {
        println!(
            "tx={} stamps={on_off}: idle, instructions per second of wall time: kernel {:.0}, guest {:.0}",
            tx.name(),
            idle.kernel,
            idle.guest
        );
    }
    let mut whole = Vec::new();
    for &size in sizes {
        let data = crate::udp::random_bytes(size as u64, size);
        let start = counter.as_ref().map(|c| c.read_settled(SETTLE)).transpose()?;
        crate::udp::echo_paced(&socket, peer, &data, packets, ECHO_GAP)?;
        let echoed = packets;
        if let (Some(counter), Some((before, t0))) = (&counter, start) {
            let (after, t1): (icount::Counts, Instant) = counter.read_settled(SETTLE)?;
            let counts = after.since(before);
            let per_echo = PerItem::of(counts, t1 - t0, idle, echoed as u64);
            println!(
                "tx={} stamps={on_off} {size} B: {echoed} echoes in {:.2} s: kernel {} guest {} instructions, \
                 idle share {:.0}",
                tx.name(),
                (t1 - t0).as_secs_f64(),
                counts.kernel,
                counts.guest,
                (idle.kernel + idle.guest) * (t1 - t0).as_secs_f64()
            );
            whole.push(Whole { size, echoes: echoed as u64, per_echo });
        }
    }
    if stamps {
        socket.send_to(REPORT_REQUEST, peer)?;
        if !session.wait_for(Duration::from_secs(60), |log| log.contains("dispatch: report done")) {
            bail!("the guest did not report its receive stages:\n{}", session.log());
        }
    }
    session.request_quit();
    let outcome = session.finish()?;
    if outcome.exit() != Some(hypercall_abi::host::KernelExit::Success) {
        bail!("the kernel did not end cleanly: {}\n{}", outcome.describe(), outcome.log);
    }
    let tsc_hz = crate::checks::tsc_mhz(&outcome.log).map_or(0, |mhz| (mhz * 1e6) as u64);
    let cells = parse_lines(&outcome.log, tx).into_iter().filter(|c| sizes.contains(&c.size)).collect();
    let timeline = parse_timeline(&outcome.log).into_iter().filter(|r| sizes.contains(&r.size)).collect();
    Ok(ModeRun { cells, timeline, whole, tsc_hz })
}

/// The timeline's activities that are the kernel's ring-3 guests' or the timer's, and those
/// the stage records already hold: not rows of their own.
const TIMELINE_STAGED: &str = "staged";
const TIMELINE_TIMER: &str = "timer_interrupt";

/// The whole-echo account of one size and transmit path: the per-packet stages (means), the
/// timeline's unstaged rows, and the plugin's counts.
fn account(
    mode: TxMode,
    size: usize,
    cells: &[Cell],
    timeline: &TimelineRow,
    whole: &Whole,
    unstamped: Option<&Whole>,
) -> EchoAccount {
    let mut rows = Vec::new();
    for direction in [Direction::Rx, Direction::App, Direction::Tx] {
        let cell = cells.iter().find(|c| c.direction == direction && c.mode == mode && c.size == size);
        for name in direction.stages() {
            let per_echo = cell.and_then(|c| c.stages.iter().find(|s| s.name == *name)).map_or(0, |s| s.mean);
            let part = direction.name().into();
            rows.push(AccountRow { name: name.to_string(), part, per_echo: per_echo as f64, times_per_echo: 1.0 });
        }
    }
    let echoes = timeline.echoes.max(1) as f64;
    for (name, ticks, stretches) in &timeline.activities {
        if name != TIMELINE_STAGED && name != TIMELINE_TIMER {
            rows.push(AccountRow {
                name: name.clone(),
                part: "unstaged".into(),
                per_echo: *ticks as f64 / echoes,
                times_per_echo: crate::bench::rounded(*stretches as f64 / echoes, 2),
            });
        }
    }
    let stage_sum: f64 = rows.iter().map(|r| r.per_echo).sum();
    let whole_total = whole.per_echo.total();
    EchoAccount {
        mode,
        size,
        echoes: whole.echoes,
        stage_sum: crate::bench::rounded(stage_sum, 1),
        staged_span: crate::bench::rounded(timeline.ticks(TIMELINE_STAGED) as f64 / echoes, 1),
        timer: crate::bench::rounded(timeline.ticks(TIMELINE_TIMER) as f64 / echoes, 1),
        timeline: PerItem { kernel: timeline.kernel as f64 / echoes, guest: timeline.guest as f64 / echoes },
        whole: whole.per_echo,
        whole_unstamped: unstamped.map_or_else(PerItem::default, |w| w.per_echo),
        coverage_percent: crate::bench::rounded(
            if whole_total > 0.0 { stage_sum * 100.0 / whole_total } else { 0.0 },
            1,
        ),
        rows: rows.into_iter().map(|r| AccountRow { per_echo: crate::bench::rounded(r.per_echo, 1), ..r }).collect(),
    }
}

/// Prints the whole-echo accounts side by side: one column per size and transmit path.
fn print_accounts(accounts: &[EchoAccount]) {
    if accounts.is_empty() {
        return;
    }
    println!(
        "whole echo: instructions per echo (TCG -icount; stage rows are means per echo, unstaged rows with how many \
         times per echo they happened; whole = every instruction QEMU executed in the window, counted by a plugin, \
         an idle window of the same length subtracted)"
    );
    print!("{:<40}", "row");
    for a in accounts {
        print!(" {:>14}", format!("{}B {}", a.size, a.mode.name()));
    }
    println!();
    let line = |label: &str, value: &dyn Fn(&EchoAccount) -> String| {
        print!("{label:<40}");
        for a in accounts {
            print!(" {:>14}", value(a));
        }
        println!();
    };
    for (i, row) in accounts[0].rows.iter().enumerate() {
        let label = format!("{} {}", row.part, row.name);
        line(&label, &|a| {
            a.rows.get(i).map_or(String::new(), |r| match r.part.as_str() {
                "unstaged" => format!("{:.0} ({:.2}x)", r.per_echo, r.times_per_echo),
                _ => format!("{:.0}", r.per_echo),
            })
        });
    }
    line("= stage sum", &|a| format!("{:.0}", a.stage_sum));
    line("  (timeline: staged span)", &|a| format!("{:.0}", a.staged_span));
    line("  (timeline: timer, not in the sum)", &|a| format!("{:.0}", a.timer));
    line("kernel's own count: ring 0 / ring 3", &|a| format!("{:.0}/{:.0}", a.timeline.kernel, a.timeline.guest));
    line("whole, stamps on: kernel / guest", &|a| format!("{:.0}/{:.0}", a.whole.kernel, a.whole.guest));
    line("whole, stamps on: total", &|a| format!("{:.0}", a.whole.total()));
    line("coverage: stage sum / whole", &|a| format!("{:.1}%", a.coverage_percent));
    if accounts.iter().any(|a| a.whole_unstamped.total() > 0.0) {
        line("whole, stamps off: kernel / guest", &|a| {
            format!("{:.0}/{:.0}", a.whole_unstamped.kernel, a.whole_unstamped.guest)
        });
        line("whole, stamps off: total", &|a| format!("{:.0}", a.whole_unstamped.total()));
    }
}

/// `cargo xtask bench dispatch`: tables per direction, the whole-echo account (TCG),
/// `dispatch.json` and `dispatch.svg`. Under TCG the stamps count instructions (`-icount
/// shift=0`); under KVM, cycles, and there is no whole-echo count. With `unstamped`, each
/// transmit path boots once more with the stamps off, for what an echo costs without them.
/// The kernel command-line word for checksum offload (`csum=on|off`), or none for its default.
pub fn csum_word(csum: Option<bool>) -> String {
    match csum {
        Some(on) => format!(" {}={}", hypercall_abi::cmdline::CSUM, if on { "on" } else { "off" }),
        None => String::new(),
    }
}

pub fn run(
    packets: usize,
    sizes: &[usize],
    accel: Accel,
    unstamped: bool,
    csum: Option<bool>,
) -> Result<std::path::PathBuf> {
    let artifacts = Artifacts::build_with(pack::Stamping::Built)?;
    let unit = if accel == Accel::Tcg { "instructions" } else { "cycles" };
    let mut cells = Vec::new();
    let mut accounts = Vec::new();
    let mut tsc_hz = 0;
    for tx in TxMode::ALL {
        let stamped = run_mode(&artifacts, tx, packets, sizes, accel, true, csum)?;
        let unstamped = if accel == Accel::Tcg && unstamped {
            run_mode(&artifacts, tx, packets, sizes, accel, false, csum)?.whole
        } else {
            Vec::new()
        };
        let by_size: BTreeMap<usize, &TimelineRow> = stamped.timeline.iter().map(|r| (r.size, r)).collect();
        for whole in &stamped.whole {
            let Some(timeline) = by_size.get(&whole.size) else {
                bail!("the kernel reported no timeline for {}-byte echoes", whole.size);
            };
            let plain = unstamped.iter().find(|w| w.size == whole.size);
            accounts.push(account(tx, whole.size, &stamped.cells, timeline, whole, plain));
        }
        cells.extend(stamped.cells);
        tsc_hz = stamped.tsc_hz;
    }
    cells.sort_by_key(|c| (c.direction, c.size, c.mode.name()));
    accounts.sort_by_key(|a| (a.size, a.mode.name()));
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
    print_accounts(&accounts);
    let results = cells.into_iter().filter(|c| c.direction != Direction::App).collect();
    let report = DispatchReport {
        accel: accel.name().into(),
        unit: unit.into(),
        cpu: crate::bench::host_cpu(),
        tsc_hz,
        results,
        echo: accounts,
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
                   dispatch: dir=tx mode=Copy frame=1442 samples=9 guest_stack=10/9/11/12 notify=5/5/6/7 total=15\n\
                   dispatch: dir=app frame=142 samples=9 guest_app=300/290/310/301 total=300\n\
                   dispatch: dir=timeline frame=142 echoes=9 staged=100 kernel=50 guest=50\n\
                   dispatch: report done\n";
        let cells = parse_lines(log, TxMode::Copy);
        assert_eq!(cells.len(), 3, "the timeline is not a stage line");
        assert_eq!(cells[0].stages[0].mean, 59, "no mean given: the median stands in");
        assert_eq!(cells[1].stages[1].mean, 7);
        assert_eq!((cells[2].direction, cells[2].size, cells[2].stages[0].mean), (Direction::App, 100, 301));
        assert_eq!(
            (cells[0].direction, cells[0].size, cells[0].samples, cells[0].total_median),
            (Direction::Rx, 100, 200, 2830)
        );
        assert_eq!(cells[0].stages[1].name, "guest_stack");
        assert_eq!((cells[1].direction, cells[1].size, cells[1].stages[1].p90), (Direction::Tx, 1400, 6));
    }

    #[test]
    fn timeline_lines_parse_into_rows() {
        let log = "dispatch: dir=timeline frame=142 echoes=3000 staged=18000000:9000 after_notify=300000:3000 kernel=12000000 guest=9000000\n\
                   dispatch: dir=timeline frame=1442 echoes=x staged=1:1\n\
                   dispatch: dir=rx frame=142 samples=1 a=1/1/1 total=1\n";
        let rows = parse_timeline(log);
        assert_eq!(rows.len(), 1, "a line with a bad number is skipped: {rows:?}");
        let row = &rows[0];
        assert_eq!((row.size, row.echoes, row.kernel, row.guest), (100, 3000, 12_000_000, 9_000_000));
        assert_eq!((row.ticks("staged"), row.ticks("after_notify"), row.ticks("absent")), (18_000_000, 300_000, 0));
        assert_eq!(row.activities[1], ("after_notify".to_string(), 300_000, 3_000));
    }

    #[test]
    fn the_account_adds_the_stage_means_and_the_unstaged_rows_and_leaves_out_the_timer() {
        let cells: Vec<Cell> =
            [Direction::Rx, Direction::App, Direction::Tx].into_iter().map(|d| cell(d, TxMode::Copy, 100)).collect();
        let timeline = TimelineRow {
            size: 100,
            echoes: 10,
            activities: vec![
                ("staged".into(), 20_000, 30),
                ("after_notify".into(), 1_000, 10),
                ("idle_call".into(), 500, 15),
                ("timer_interrupt".into(), 9_999, 3),
            ],
            kernel: 20_000,
            guest: 11_500,
        };
        let whole = Whole { size: 100, echoes: 10, per_echo: PerItem { kernel: 2_000.0, guest: 1_450.0 } };
        let a = account(TxMode::Copy, 100, &cells, &timeline, &whole, None);
        // 16 stages at a mean of 120 each, then 100 + 50 per echo from the timeline.
        let stages = RX_STAGES.len() + APP_STAGES.len() + TX_STAGES.len();
        assert_eq!(a.rows.len(), stages + 2);
        assert_eq!(a.stage_sum, (stages * 120 + 150) as f64);
        assert_eq!((a.staged_span, a.timer), (2_000.0, 999.9));
        assert_eq!(a.coverage_percent, 60.0);
        assert_eq!(a.rows[RX_STAGES.len()].part, "app");
        assert_eq!(
            a.rows.last().map(|r| (r.name.as_str(), r.per_echo, r.times_per_echo)),
            Some(("idle_call", 50.0, 1.5))
        );
        assert_eq!(a.timeline, PerItem { kernel: 2_000.0, guest: 1_150.0 });
    }

    fn cell(direction: Direction, mode: TxMode, size: usize) -> Cell {
        let stages = direction
            .stages()
            .iter()
            .enumerate()
            .map(|(i, name)| Stage { name: name.to_string(), median: 100 + i as u64, p10: 90, p90: 200, mean: 120 })
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
            echo: Vec::new(),
        };
        let json = serde_json::to_string(&report).unwrap();
        assert!(json.starts_with(r#"{"accel":"tcg","unit":"instructions","cpu":"AMD \"EPYC\"","tsc_hz":2000000000,"#));
        assert!(json.contains(r#"{"direction":"tx","mode":"cow","size":1400,"samples":30,"stages":[{"name":"guest_stack","median":100,"p10":90,"p90":200,"mean":120},"#));
        assert!(json.ends_with(r#""total_median":1000}],"echo":[]}"#));
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
        // Each stage's colour: its bars (a cell per size and path) and its legend swatch, per
        // panel it is in.
        let mut seen = Vec::new();
        for name in RX_STAGES.iter().chain(&TX_STAGES) {
            if seen.contains(name) {
                continue;
            }
            let panels = [&RX_STAGES[..], &TX_STAGES[..]].iter().filter(|s| s.contains(name)).count();
            let c = PALETTE[seen.len()];
            seen.push(*name);
            let fill = format!("fill=\"#{:02X}{:02X}{:02X}\"", c.0, c.1, c.2);
            assert_eq!(svg.matches(&fill).count(), panels * (TxMode::ALL.len() * SIZES.len() + 1), "{name}");
        }
    }
}
