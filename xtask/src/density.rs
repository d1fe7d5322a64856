//! Density: many echo guests on one kernel over the tap network, each sent one datagram
//! (`cargo xtask udp-sweep` inside the namespace), and what the kernel says each guest costs.
//! Shared by the density test (`echo-1k`) and `cargo xtask bench density` (`echo-10k`).

use crate::manifest::{format_ip, NetPlan};
use crate::pack::Image;
use crate::qemu::{Accel, NetBackend, Outcome, QemuConfig, Session};
use crate::sweep::SweepResult;
use crate::tapnet::{TapNamespace, TAP_IFNAME};
use crate::TxMode;
use anyhow::{anyhow, bail, Context, Result};
use serde::Serialize;
use std::collections::BTreeMap;
use std::time::{Duration, Instant};

/// The line each `udp-echo` guest prints once it listens.
pub const LISTENING: &str = "udp-echo listening on";

/// A run of an echo image with every guest swept once.
pub struct DensityRun {
    /// Guests with a NIC.
    pub guests: usize,
    /// From QEMU's start to the last guest's "listening" line.
    pub listening_after: Duration,
    /// From QEMU's start to the last answer of the sweep (the sweep starts once every guest
    /// listens).
    pub answered_after: Duration,
    pub sweep: SweepResult,
    /// QEMU's resident set after the sweep (`VmRSS`), in KiB.
    pub qemu_rss_kib: Option<u64>,
    pub outcome: Outcome,
}

/// Why a run failed, with the console log so far.
pub struct RunError {
    pub error: anyhow::Error,
    pub log: String,
}

fn with_log<T>(result: Result<T>, log: impl FnOnce() -> String) -> std::result::Result<T, RunError> {
    result.map_err(|error| RunError { error, log: log() })
}

/// Boots `image` (packed for [`NetPlan::TAP`]) on a tap network of its own, waits up to
/// `boot_timeout` for every echo guest to listen, sweeps them all once, and ends the run.
pub fn run_echo_over_tap(
    image: &Image,
    tx: TxMode,
    boot_timeout: Duration,
) -> std::result::Result<DensityRun, RunError> {
    let no_log = String::new;
    let nets: Vec<_> = image.guests.iter().filter_map(|g| g.net).collect();
    let Some(first) = nets.first() else {
        return with_log(Err(anyhow!("image {} has no guest with a NIC", image.name)), no_log);
    };
    let namespace = with_log(TapNamespace::create(&NetPlan::TAP, image.manifest.kernel.mtu), no_log)?;
    // Only the sweep's datagrams reach the guests: no IPv6 chatter, and no ARP from the host
    // (Linux's neighbour table would hold at most 1,024 learnt guests; permanent entries do
    // not count).
    let ipv6 = format!("/proc/sys/net/ipv6/conf/{TAP_IFNAME}/disable_ipv6");
    let status = namespace.command("sh").args(["-c", &format!("[ ! -e {ipv6} ] || echo 1 > {ipv6}")]).status();
    with_log(status.context("turning IPv6 off").and_then(|s| s.success().then_some(()).context("sh failed")), no_log)?;
    with_log(namespace.add_neighbours(nets.iter().map(|n| (n.ipv4, n.mac))), no_log)?;
    let append = format!("log=info shutdown_after=3600 tx={}", tx.name());
    let config = QemuConfig {
        net: Some(NetBackend::Tap { ifname: TAP_IFNAME.into() }),
        netns: Some(&namespace.name),
        ..QemuConfig::for_image(image, Accel::Tcg, append)
    };
    let start = Instant::now();
    let mut session = with_log(Session::start(config.command(), boot_timeout * 4, false), no_log)?;
    let count = nets.len();
    if !session.wait_for(boot_timeout, |log| log.matches(LISTENING).count() >= count) {
        let log = session.log();
        let listening = log.matches(LISTENING).count();
        return Err(RunError {
            error: anyhow!("{listening} of {count} echo guests listened within {} s", boot_timeout.as_secs()),
            log,
        });
    }
    let listening_after = start.elapsed();
    let exe = with_log(std::env::current_exe().context("the xtask binary"), no_log)?;
    let sweep_started = start.elapsed();
    let output = namespace
        .command(&exe.to_string_lossy())
        .args(["udp-sweep", "--first", &format_ip(first.ipv4), "--count", &count.to_string()])
        .output();
    let qemu_rss_kib = rss_kib(session.pid());
    let sweep = with_log(
        output.context("running udp-sweep").and_then(|out| {
            let text = String::from_utf8_lossy(&out.stdout);
            match SweepResult::parse(&text) {
                Some(sweep) if out.status.success() => Ok(sweep),
                _ => bail!("udp-sweep failed: {text}{}", String::from_utf8_lossy(&out.stderr)),
            }
        }),
        || session.log(),
    )?;
    // By the sweep's own clock (which starts a few milliseconds after its process does).
    let answered_after = sweep_started + Duration::from_millis(sweep.last_answer_ms);
    session.request_quit();
    let outcome = with_log(session.finish(), String::new)?;
    drop(namespace);
    Ok(DensityRun { guests: count, listening_after, answered_after, sweep, qemu_rss_kib, outcome })
}

/// `VmRSS` of process `pid`, in KiB.
pub fn rss_kib(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status.lines().find_map(|l| l.strip_prefix("VmRSS:")?.trim().strip_suffix("kB")?.trim().parse().ok())
}

/// Median and maximum over the guests' `summary:` lines of each `pages*=` figure (private
/// pages in total and by use).
#[derive(Debug, Default, PartialEq, Eq)]
pub struct PageReport {
    pub guests: usize,
    /// Figure name (`pages`, `pages_heap`, ...) to (median, max).
    pub figures: BTreeMap<String, (u64, u64)>,
}

impl PageReport {
    pub fn from_log(log: &str) -> PageReport {
        let mut values: BTreeMap<String, Vec<u64>> = BTreeMap::new();
        let mut guests = 0;
        for line in log.lines().filter(|l| l.starts_with("summary: guest ")) {
            guests += 1;
            for (key, value) in line.split_whitespace().filter_map(|w| w.split_once('=')) {
                if let (true, Ok(value)) = (key.starts_with("pages"), value.parse()) {
                    values.entry(key.to_string()).or_default().push(value);
                }
            }
        }
        let figures = values
            .into_iter()
            .map(|(key, mut v)| {
                v.sort_unstable();
                (key, (v[v.len() / 2], v[v.len() - 1]))
            })
            .collect();
        PageReport { guests, figures }
    }

    pub fn get(&self, figure: &str) -> Option<(u64, u64)> {
        self.figures.get(figure).copied()
    }

    /// `pages 89/89 (median/max), page_tables 6/6, ...`
    pub fn describe(&self) -> String {
        let figures = self
            .figures
            .iter()
            .map(|(key, (median, max))| format!("{} {median}/{max}", key.strip_prefix("pages_").unwrap_or(key)))
            .collect::<Vec<_>>()
            .join(", ");
        format!("private pages per guest over {} guests (median/max): {figures}", self.guests)
    }
}

/// What the kernel logs once it has created an image's guests.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Creation {
    pub created: u64,
    pub refused: u64,
    /// Median TSC ticks to create one guest.
    pub ticks_median: u64,
    pub private_pages_median: u64,
    pub shared_pages: u64,
    pub kernel_bytes_median: u64,
}

impl Creation {
    /// From the `guests: N created, M refused; creating one took T TSC ticks (median); P private
    /// pages per guest (median), S pages shared; kernel heap B bytes per guest ...` line.
    pub fn from_log(log: &str) -> Option<Creation> {
        let line = log.lines().find_map(|l| {
            let rest = &l[l.find("guests: ")? + "guests: ".len()..];
            rest.contains(" created, ").then_some(rest)
        })?;
        let before = |marker: &str| -> Option<u64> {
            let head = &line[..line.find(marker)?];
            head.split_whitespace().last()?.trim_start_matches('(').parse().ok()
        };
        Some(Creation {
            created: before(" created")?,
            refused: before(" refused")?,
            ticks_median: before(" TSC ticks")?,
            private_pages_median: before(" private pages")?,
            shared_pages: before(" pages shared")?,
            kernel_bytes_median: before(" bytes per guest").unwrap_or(0),
        })
    }
}

/// Median and maximum of one figure over the guests.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Spread {
    pub median: u64,
    pub max: u64,
}

/// `target/bench/density.json`.
#[derive(Debug, Serialize)]
pub struct DensityReport {
    pub image: String,
    pub guests: usize,
    #[serde(with = "crate::tx_mode_name")]
    pub tx: TxMode,
    pub accel: &'static str,
    pub host_cpu: String,
    /// Guest RAM QEMU was given, and what QEMU itself held after the sweep.
    pub memory_mib: u32,
    pub qemu_rss_mib: Option<u64>,
    /// Wall-clock milliseconds from QEMU's start (TCG: emulator time).
    pub every_guest_listening_ms: u64,
    pub every_guest_answered_ms: u64,
    /// The sweep alone (one datagram to each guest, 64 in flight).
    pub sweep_ms: u64,
    pub answered: usize,
    pub retries: usize,
    /// The kernel's figures at creation: median TSC ticks to create one guest (TCG: emulator
    /// ticks), private pages (before the guest ran), pages shared, kernel heap bytes per guest.
    pub create_ticks_median: u64,
    pub private_pages_at_creation: u64,
    pub shared_pages: u64,
    pub kernel_heap_bytes_per_guest: u64,
    /// Private pages per guest at the end (after it answered), in total and by use.
    pub private_pages: BTreeMap<String, Spread>,
    /// The kernel's last `stats:` line.
    pub stats: BTreeMap<String, u64>,
}

/// `cargo xtask bench density`: boots `image_name` over tap, sweeps every guest once, and
/// reports what it took.
pub fn bench(image_name: &str, tx: TxMode) -> Result<DensityReport> {
    if let Some(why) = crate::tapnet::unavailable_reason(&[]) {
        bail!("bench density needs a tap network: {why}");
    }
    let image = crate::pack::build(Some(image_name), NetPlan::TAP)?.remove(0);
    let guests = image.guests.iter().filter(|g| g.net.is_some()).count();
    println!(
        "bench density: {guests} guests of {} over tap, {} MiB, TCG",
        image.name, image.manifest.kernel.memory_mib
    );
    // Creating 10,000 guests and starting their stacks takes tens of seconds under TCG.
    let run = run_echo_over_tap(&image, tx, Duration::from_secs(900))
        .map_err(|e| anyhow!("{:#}\n---- console log ----\n{}", e.error, tail(&e.log, 60)))?;
    let creation = Creation::from_log(&run.outcome.log).unwrap_or_default();
    let pages = PageReport::from_log(&run.outcome.log);
    let report = DensityReport {
        image: image.name.clone(),
        guests: run.guests,
        tx,
        accel: Accel::Tcg.name(),
        host_cpu: crate::bench::host_cpu(),
        memory_mib: image.manifest.kernel.memory_mib,
        qemu_rss_mib: run.qemu_rss_kib.map(|kib| kib / 1024),
        every_guest_listening_ms: run.listening_after.as_millis() as u64,
        every_guest_answered_ms: run.answered_after.as_millis() as u64,
        sweep_ms: run.sweep.last_answer_ms,
        answered: run.sweep.answered,
        retries: run.sweep.retries,
        create_ticks_median: creation.ticks_median,
        private_pages_at_creation: creation.private_pages_median,
        shared_pages: creation.shared_pages,
        kernel_heap_bytes_per_guest: creation.kernel_bytes_median,
        private_pages: pages.figures.iter().map(|(k, &(median, max))| (k.clone(), Spread { median, max })).collect(),
        stats: crate::checks::stats(&run.outcome.log).unwrap_or_default(),
    };
    println!(
        "{} of {} guests answered ({} retries); every guest listening {:.1} s and answered {:.1} s after QEMU \
         started (sweep {} ms)",
        report.answered,
        report.guests,
        report.retries,
        run.listening_after.as_secs_f64(),
        run.answered_after.as_secs_f64(),
        report.sweep_ms
    );
    println!(
        "creating one guest: {} TSC ticks (median); kernel heap {} bytes per guest; {} pages shared",
        report.create_ticks_median, report.kernel_heap_bytes_per_guest, report.shared_pages
    );
    println!("{}", pages.describe());
    println!(
        "memory: {} MiB given to the machine, QEMU's RSS {} MiB",
        report.memory_mib,
        report.qemu_rss_mib.map_or("?".into(), |m| m.to_string())
    );
    let path = crate::bench::write_json("density.json", &report)?;
    let log_path = path.with_file_name("density.log");
    std::fs::write(&log_path, &run.outcome.log)?;
    println!("wrote {} and the console log {}", path.display(), log_path.display());
    if report.answered != report.guests {
        bail!("{} of {} guests never answered: {:?}", report.guests - report.answered, report.guests, run.sweep.silent);
    }
    Ok(report)
}

/// The last `lines` lines of `text`.
fn tail(text: &str, lines: usize) -> String {
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    const LOG: &str = "\
[    0.040000] INFO  frames free before the guests: 15000
[    0.045069] INFO  guests: 3 created, 0 refused; creating one took 9691628 TSC ticks (median); 72 private pages per guest (median), 23 pages shared; kernel heap 6496 bytes per guest (median; the guest, its vNIC)
summary: guest 0 e-0: still running; expected running (as expected); cpu 32 ms; cpu_us=32284 virtual_instructions=9 pages=89 pages_page_tables=6 pages_heap=13
summary: guest 1 e-1: still running; expected running (as expected); cpu 32 ms; cpu_us=32284 virtual_instructions=9 pages=91 pages_page_tables=6 pages_heap=15
summary: guest 2 e-2: still running; expected running (as expected); cpu 32 ms; cpu_us=32284 virtual_instructions=9 pages=80 pages_page_tables=5 pages_heap=4
";

    #[test]
    fn pages_per_guest_are_read_from_the_summaries() {
        let report = PageReport::from_log(LOG);
        assert_eq!(report.guests, 3);
        assert_eq!(report.get("pages"), Some((89, 91)));
        assert_eq!(report.get("pages_page_tables"), Some((6, 6)));
        assert_eq!(report.get("pages_heap"), Some((13, 15)));
        assert_eq!(report.figures.len(), 3, "cpu_us and virtual_instructions are not pages");
        assert!(report.describe().contains("heap 13/15"), "{}", report.describe());
        assert_eq!(PageReport::from_log("no summaries"), PageReport::default());
    }

    #[test]
    fn the_creation_line_is_read() {
        let creation = Creation::from_log(LOG).unwrap();
        assert_eq!(
            creation,
            Creation {
                created: 3,
                refused: 0,
                ticks_median: 9_691_628,
                private_pages_median: 72,
                shared_pages: 23,
                kernel_bytes_median: 6496
            }
        );
        assert_eq!(Creation::from_log("nothing"), None);
    }

    #[test]
    fn rss_of_this_process_is_read() {
        assert!(rss_kib(std::process::id()).is_some_and(|kib| kib > 0));
    }
}
