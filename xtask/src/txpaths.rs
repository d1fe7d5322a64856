//! The transmit paths side by side, frame by frame (part of `cargo xtask bench dispatch`; alone
//! with `--tx-paths`): copy, COW and split at frame sizes from 64 bytes to a 9014-byte jumbo
//! frame. The `tx-flood` guest (MTU 9000) sends `count` frames of one size to the uplink, one
//! doorbell each and [`GAP_US`] apart, under TCG with `-icount shift=0` and the instruction-count plugin; each cell
//! boots twice, with two counts, and the difference of the two runs' instructions divided by
//! the difference of their counts is the cost of one packet (boot, start-up and exit cancel
//! out). The kernel's `stats:` line, differenced the same way, gives each path's events per
//! packet: `invlpg`s, write faults on tx slots, bytes copied. That whole count includes the
//! idle and timer work of the gaps, the same on every path; a third boot, of the kernel built with stage
//! stamps and run with them on, gives the deterministic figure: the median instructions from
//! the doorbell's trap to the NIC's notify, plus, on the zero-copy paths, the median work per
//! packet when the NIC hands it back (the kernel's `kick:` line; the stamps' own instructions
//! included). The model is built on that figure. It leaves out the interrupt a zero-copy
//! completion takes (the copy path takes none: its NIC slots are taken back when needed), which
//! the whole-echo account of `bench dispatch` measures (`nic_interrupt_no_rx`, ~730
//! instructions per packet); `kernel_core::vnet::split::COPY_WHOLE_MAX` adds it.
//!
//! Under TCG an `invlpg` or a fault's hardware entry is one instruction, and a copy costs its
//! instructions (`rep movs`: one per iteration); on real hardware they cost far more. So the
//! report adds a model, per packet: the kernel's staged instructions (one cycle each) plus the
//! literature costs of `../shared/MACHINE.md` for each `invlpg` (230 cycles, warm), each fault
//! (a ring-3 trap round trip, 540 cycles) and each byte copied (a 1400-byte copy ~130 cycles:
//! 0.093 per byte). The copy's own instructions are in the count as well, so the model charges
//! copies twice, a little: it leans against the paths that copy more.

use crate::icount::Counter;
use crate::manifest::NetPlan;
use crate::pack::{self, Artifacts};
use crate::qemu::{Accel, NetBackend, QemuConfig, Session};
use crate::TxMode;
use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::time::Duration;

/// Frame lengths (bytes, Ethernet header included): minimum, small, the standard MTU's largest
/// (1514) and a jumbo frame's (9014).
pub const FRAME_SIZES: [usize; 9] = [64, 128, 256, 512, 1024, 1514, 2048, 4096, 9014];
/// Frames sent by the two runs of a cell: their difference is what is measured.
const COUNTS: (u64, u64) = (200, 1200);
/// Idle after each doorbell, µs: every frame goes out alone and is completed before the next
/// (as in an echo), so no path meets a full NIC queue (a flood would: the copy path, whose
/// descriptors complete at once, then retries its FIFO against the full queue, which costs
/// more than the path itself and depends on the host's timing).
const GAP_US: u64 = 200;
/// The image: `tx-flood` with MTU 9000 (its `size` and `count` are set per run).
const IMAGE: &str = "tx-flood-jumbo";

/// Literature costs on modern x86 (`../shared/MACHINE.md`), in cycles.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Literature {
    pub invlpg: f64,
    pub fault: f64,
    pub copy_per_byte: f64,
}

/// `invlpg` 200-260 (warm), a ring-3 trap round trip 470-610, a 1400-byte copy 100-150.
pub const LITERATURE: Literature = Literature { invlpg: 230.0, fault: 540.0, copy_per_byte: 130.0 / 1400.0 };

/// One transmit path at one frame size, per packet.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TxPathCell {
    #[serde(with = "crate::tx_mode_name")]
    pub mode: TxMode,
    /// Frame length, bytes.
    pub frame: usize,
    /// Instructions the machine executed per packet (TCG -icount, plugin): kernel (ring 0) and
    /// guest (ring 3, the same work on every path: building the frame in its slot).
    pub kernel_instructions: f64,
    pub guest_instructions: f64,
    /// Stamped boot, medians per packet: doorbell trap to NIC notify, and the zero-copy
    /// completion (0 on the copy path, which completes inside the doorbell); their sum.
    pub doorbell_to_notify: f64,
    pub completion: f64,
    pub staged: f64,
    /// Events per packet, from the kernel's counters.
    pub invlpg: f64,
    pub faults: f64,
    pub bytes_copied: f64,
    /// The model: staged instructions at a cycle each, plus the literature costs of the events.
    pub model_cycles: f64,
}

/// `target/bench/txpaths.json`.
#[derive(Debug, Serialize, Deserialize)]
pub struct TxPathsReport {
    pub cpu: String,
    pub literature: Literature,
    pub cells: Vec<TxPathCell>,
}

/// What one boot counted: the plugin's instructions and the kernel's counters.
struct Run {
    kernel: u64,
    guest: u64,
    stats: BTreeMap<String, u64>,
    log: String,
}

fn boot(artifacts: &Artifacts, tx: TxMode, frame: usize, count: u64, stamps: bool) -> Result<Run> {
    let mut manifest = crate::manifest::Manifest::load(&pack::images_dir().join(format!("{IMAGE}.toml")))?;
    let Some(guest) = manifest.guests.first_mut() else { bail!("{IMAGE} has no guest") };
    guest.args = format!("size={frame} count={count} port=40999 gap_us={GAP_US}");
    let image = pack::pack_manifest("tx-paths-bench", manifest, artifacts, NetPlan::USER)?;
    let config = QemuConfig {
        net: Some(NetBackend::User { forwards: Vec::new(), tcp_forwards: Vec::new() }),
        icount: true,
        ..QemuConfig::for_image(
            &image,
            Accel::Tcg,
            format!("log=info tx={} stamps={}", tx.name(), if stamps { "on" } else { "off" }),
        )
    };
    let mut cmd = config.command();
    let (counter, args) = Counter::new(&format!("txpaths-{}", tx.name()))?;
    cmd.args(args);
    let session = Session::start(cmd, Duration::from_secs(300), false)?;
    let outcome = session.finish()?;
    if outcome.exit() != Some(hypercall_abi::host::KernelExit::Success)
        || !outcome.log.contains(", 0 not completed as Done")
    {
        bail!("tx-flood ({} B, {count} frames, {}) did not end cleanly: {}", frame, tx.name(), outcome.describe());
    }
    let counts = counter.read()?;
    let stats = crate::checks::stats(&outcome.log).context("no stats line")?;
    Ok(Run { kernel: counts.kernel, guest: counts.guest, stats, log: outcome.log })
}

/// The kernel's `kick:` line: (doorbell trap to notify, zero-copy completion), medians.
fn parse_kick(log: &str) -> Option<(u64, u64)> {
    let line = log.lines().rev().find_map(|l| l.split_once("kick: ").map(|(_, rest)| rest))?;
    let number_after = |key: &str| -> Option<u64> {
        let rest = &line[line.find(key)? + key.len()..];
        rest.split(|c: char| !c.is_ascii_digit()).next()?.parse().ok()
    };
    Some((number_after("trap-to-notify median=")?, number_after("ticks per packet median=")?))
}

/// The per-packet cell of `tx` at `frame` bytes: two boots, differenced, and a stamped one.
fn cell(artifacts: &Artifacts, stamped: &Artifacts, tx: TxMode, frame: usize) -> Result<TxPathCell> {
    let (few, many) = (boot(artifacts, tx, frame, COUNTS.0, false)?, boot(artifacts, tx, frame, COUNTS.1, false)?);
    let staged_run = boot(stamped, tx, frame, COUNTS.0, true)?;
    let Some((doorbell, completion)) = parse_kick(&staged_run.log) else {
        bail!("no kick line from the stamped {} run at {frame} B", tx.name());
    };
    let staged = (doorbell + completion) as f64;
    let packets = (COUNTS.1 - COUNTS.0) as f64;
    let per = |a: u64, b: u64| b.saturating_sub(a) as f64 / packets;
    let event = |names: &[&str]| {
        let sum = |run: &Run| names.iter().map(|n| run.stats.get(*n).copied().unwrap_or(0)).sum::<u64>();
        per(sum(&few), sum(&many))
    };
    let kernel_instructions = per(few.kernel, many.kernel);
    let (invlpg, faults) = (event(&["tlb_flushes"]), event(&["cow_faults", "cow_spurious"]));
    let bytes_copied = event(&["tx_bytes_copied", "split_header_bytes"]);
    Ok(TxPathCell {
        mode: tx,
        frame,
        kernel_instructions: crate::bench::rounded(kernel_instructions, 1),
        doorbell_to_notify: doorbell as f64,
        completion: completion as f64,
        staged,
        guest_instructions: crate::bench::rounded(per(few.guest, many.guest), 1),
        invlpg: crate::bench::rounded(invlpg, 3),
        faults: crate::bench::rounded(faults, 3),
        bytes_copied: crate::bench::rounded(bytes_copied, 1),
        model_cycles: crate::bench::rounded(model(staged, invlpg, faults, bytes_copied, LITERATURE), 0),
    })
}

/// The model's cycles per packet (see the module's comment).
pub fn model(kernel_instructions: f64, invlpg: f64, faults: f64, bytes_copied: f64, costs: Literature) -> f64 {
    kernel_instructions + invlpg * costs.invlpg + faults * costs.fault + bytes_copied * costs.copy_per_byte
}

/// Measures every transmit path at every size (TCG only: the counts are instructions), prints
/// the two tables and writes `txpaths.json`.
pub fn run(sizes: &[usize]) -> Result<TxPathsReport> {
    let artifacts = Artifacts::build()?;
    let stamped = Artifacts::build_with(pack::Stamping::Built)?;
    let mut cells = Vec::new();
    for &frame in sizes {
        for tx in TxMode::ALL {
            let c = cell(&artifacts, &stamped, tx, frame)?;
            println!(
                "tx paths: {frame} B {}: staged {:.0} (doorbell to notify {:.0}, completion {:.0}); whole: kernel {:.0} \
                 guest {:.0} instructions per packet; invlpg {:.2}, faults {:.2}, bytes copied {:.0}; model {:.0} cycles",
                tx.name(),
                c.staged,
                c.doorbell_to_notify,
                c.completion,
                c.kernel_instructions,
                c.guest_instructions,
                c.invlpg,
                c.faults,
                c.bytes_copied,
                c.model_cycles
            );
            cells.push(c);
        }
    }
    print_table(&cells, sizes);
    let report = TxPathsReport { cpu: crate::bench::host_cpu(), literature: LITERATURE, cells };
    let path = crate::bench::write_json("txpaths.json", &report)?;
    println!("wrote {}", path.display());
    Ok(report)
}

fn print_table(cells: &[TxPathCell], sizes: &[usize]) {
    let find = |mode: TxMode, frame: usize| cells.iter().find(|c| c.mode == mode && c.frame == frame);
    for (title, value) in [
        (
            "kernel instructions per packet, staged: doorbell to notify + completion (TCG -icount, medians)",
            (|c: &TxPathCell| c.staged) as fn(&TxPathCell) -> f64,
        ),
        ("kernel instructions per packet, whole machine, runs differenced (gaps included)", |c| c.kernel_instructions),
        ("model: cycles per packet (instructions + invlpg, faults, bytes copied at literature costs)", |c| {
            c.model_cycles
        }),
    ] {
        println!("transmit paths: {title}");
        print!("{:>8}", "frame B");
        for tx in TxMode::ALL {
            print!(" {:>10}", tx.name());
        }
        println!(" {:>14}", "split / copy");
        for &frame in sizes {
            print!("{frame:>8}");
            for tx in TxMode::ALL {
                print!(" {:>10}", find(tx, frame).map_or(String::new(), |c| format!("{:.0}", value(c))));
            }
            let ratio = match (find(TxMode::Split, frame), find(TxMode::Copy, frame)) {
                (Some(s), Some(c)) if value(c) > 0.0 => format!("{:.2}", value(s) / value(c)),
                _ => String::new(),
            };
            println!(" {ratio:>14}");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_kick_line_parses() {
        let log = "x\nkick: tx=Split one-packet doorbells=999 ticks trap-to-notify median=2100 p10=2090 p90=2300; \
                   zero-copy completion batches=12 ticks per packet median=170\nstats: a=1";
        assert_eq!(parse_kick(log), Some((2100, 170)));
        assert_eq!(parse_kick("no such line"), None);
    }

    #[test]
    fn the_model_adds_the_literature_costs_of_each_event() {
        let costs = Literature { invlpg: 200.0, fault: 500.0, copy_per_byte: 0.1 };
        assert_eq!(model(1000.0, 0.0, 0.0, 0.0, costs), 1000.0);
        assert_eq!(model(1000.0, 1.0, 0.0, 0.0, costs), 1200.0);
        assert_eq!(model(1000.0, 1.0, 2.0, 0.0, costs), 2200.0);
        assert_eq!(model(1000.0, 0.0, 0.0, 1400.0, costs), 1140.0);
        // A 1400-byte copy at the literature's cost is cheaper than one warm invlpg.
        const { assert!(1400.0 * LITERATURE.copy_per_byte < LITERATURE.invlpg) };
    }
}
