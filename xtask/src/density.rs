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
    run_echo_over_tap_with(image, tx, boot_timeout, &[])
}

/// [`run_echo_over_tap`] with extra `udp-sweep` arguments.
pub fn run_echo_over_tap_with(
    image: &Image,
    tx: TxMode,
    boot_timeout: Duration,
    sweep_args: &[&str],
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
    // A boot that failed or refused guests will never have them all listening: stop waiting.
    if !session.wait_for(boot_timeout, |log| log.matches(LISTENING).count() >= count || boot_failure(log).is_some()) {
        let log = session.log();
        let listening = log.matches(LISTENING).count();
        // Where the others went, as the kernel counted it (stopped guests, refused console
        // lines, frames dropped for want of memory).
        let stats = crate::checks::stats(&log).unwrap_or_default();
        let counted: Vec<String> =
            ["guests_stopped", "console_writes_refused", "drops_no_memory", "heap_reserve_spent"]
                .iter()
                .filter_map(|name| stats.get(*name).filter(|&&value| value > 0).map(|value| format!("{name}={value}")))
                .collect();
        return Err(RunError {
            error: anyhow!(
                "{listening} of {count} echo guests listened within {} s; counted: {}",
                boot_timeout.as_secs(),
                if counted.is_empty() { "nothing".to_string() } else { counted.join(" ") }
            ),
            log,
        });
    }
    if let Some(why) = boot_failure(&session.log()) {
        return Err(RunError { error: anyhow!("{why}"), log: session.log() });
    }
    let listening_after = start.elapsed();
    let exe = with_log(crate::setup::client_exe(), no_log)?;
    let sweep_started = start.elapsed();
    let output = namespace
        .command(&exe.to_string_lossy())
        .args(["udp-sweep", "--first", &format_ip(first.ipv4), "--count", &count.to_string()])
        .args(sweep_args)
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

/// Why the boot in `log` cannot bring every guest up, if it cannot: the kernel failed (a heap too
/// small for the guest table, a panic) or refused guests (the first refusal is named).
pub fn boot_failure(log: &str) -> Option<String> {
    // `[    0.04] ERROR message` as `message`.
    let without_time = |line: &str| {
        let rest = line.split_once("] ").map_or(line, |(_, rest)| rest).trim_start();
        match rest.split_once(' ') {
            Some((level, message)) if ["ERROR", "WARN", "INFO", "DEBUG", "TRACE"].contains(&level) => {
                message.trim().to_string()
            }
            _ => rest.trim().to_string(),
        }
    };
    if let Some(line) = log.lines().find(|l| l.contains("cannot hold the table of") || l.contains("KERNEL PANIC")) {
        return Some(format!("boot failed: {}", without_time(line)));
    }
    let creation = Creation::from_log(log)?;
    (creation.refused > 0).then(|| {
        let first = log
            .lines()
            .filter(|l| l.contains("guest ") && !l.contains(" created, "))
            .find_map(|l| l.find(" refused ").map(|at| l[at + " refused ".len()..].trim()))
            .unwrap_or("(no refusal line)");
        format!("{} of {} guests refused, the first: {first}", creation.refused, creation.created + creation.refused)
    })
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

/// One boot of the memory bisection.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct MemoryProbe {
    pub memory_mib: u32,
    /// `None`: every guest answered; else why not.
    pub failure: Option<String>,
}

/// The smallest of `low`, `low + step`, ... up to `works_at` at which `probe` reports no failure,
/// given that it works at `works_at` (already seen) and that more memory never hurts: `low`
/// first, then the gap between the largest failure and the smallest success halved down to
/// `step`. Returns that memory and every probe in order.
pub fn smallest_memory(
    low: u32,
    works_at: u32,
    step: u32,
    mut probe: impl FnMut(u32) -> Option<String>,
) -> (u32, Vec<MemoryProbe>) {
    let step = step.max(1);
    let mut probes = Vec::new();
    if low >= works_at {
        return (works_at, probes);
    }
    let (mut failed_at, mut works_at) = (low, works_at);
    let failure = probe(low);
    let works = failure.is_none();
    probes.push(MemoryProbe { memory_mib: low, failure });
    if works {
        return (low, probes);
    }
    while works_at - failed_at > step {
        let mid = failed_at + ((works_at - failed_at) / step / 2).max(1) * step;
        let failure = probe(mid);
        if failure.is_some() {
            failed_at = mid;
        } else {
            works_at = mid;
        }
        probes.push(MemoryProbe { memory_mib: mid, failure });
    }
    (works_at, probes)
}

/// The probes' sweep: wider and with one retry, so that a probe where thousands of guests stay
/// silent ends in about a minute (the first run's sweep has the default 64 in flight, 2 retries).
const PROBE_SWEEP: [&str; 6] = ["--window", "256", "--max-retries", "1", "--retry-after-ms", "1000"];

/// What to run: the image, and the range of the memory bisection.
pub struct DensityPlan<'a> {
    pub image: &'a str,
    pub tx: TxMode,
    /// The bisection's lower bound and resolution (its upper bound is the image's `memory_mib`,
    /// where the first run must succeed); no bisection if `None`.
    pub bisect: Option<(u32, u32)>,
}

/// The full run: `echo-10k`, bisected from 256 MiB to 32 MiB resolution.
pub const FULL_BISECT: (u32, u32) = (256, 32);
/// `--quick`: `echo-1k`, from 32 MiB at 16 MiB resolution.
pub const QUICK_BISECT: (u32, u32) = (32, 16);

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
    /// The kernel's figures at creation: median TSC ticks to create one guest (TCG without
    /// -icount: wall-clock ticks), private pages (before the guest ran), pages shared, kernel heap
    /// bytes per guest.
    pub create_ticks_median: u64,
    pub private_pages_at_creation: u64,
    pub shared_pages: u64,
    pub kernel_heap_bytes_per_guest: u64,
    /// Instructions to create one networked guest (median over the image's guests): the same
    /// image booted under TCG `-icount shift=0`, where a TSC tick is one instruction.
    pub create_instructions_median: Option<u64>,
    /// The kernel heap in use at the end (after every guest answered; the guest table included),
    /// divided by the guests.
    pub kernel_heap_used_bytes_per_guest_at_end: Option<u64>,
    /// Private pages per guest at the end (after it answered), in total and by use.
    pub private_pages: BTreeMap<String, Spread>,
    /// The smallest `-m` (MiB) at which every guest answered, found by bisection; what failed at
    /// the largest memory that did not work; every probe.
    pub smallest_memory_mib: Option<u32>,
    pub failure_below_smallest: Option<MemoryProbe>,
    pub memory_probes: Vec<MemoryProbe>,
    /// Memory per guest, KiB: the guest's own private pages (median), the kernel heap it takes,
    /// the RAM that heap share costs (x32), and the smallest `-m` over the guests.
    pub memory_per_guest_kib: BTreeMap<&'static str, f64>,
    /// The kernel's last `stats:` line.
    pub stats: BTreeMap<String, u64>,
}

/// Boots `image` without a NIC under TCG `-icount shift=0` until the kernel reports its guests
/// created: the median TSC ticks of a creation are then instructions.
pub fn creation_instructions(image: &Image) -> Result<Creation> {
    let config = QemuConfig { icount: true, ..QemuConfig::for_image(image, Accel::Tcg, "log=info".into()) };
    let timeout = Duration::from_secs(600);
    let mut session = Session::start(config.command(), timeout, false)?;
    let created = |log: &str| Creation::from_log(log).is_some() || boot_failure(log).is_some();
    let seen = session.wait_for(timeout, created);
    let log = session.log();
    drop(session);
    if let Some(why) = boot_failure(&log) {
        bail!("the -icount boot of {}: {why}", image.name);
    }
    match Creation::from_log(&log) {
        Some(creation) if seen => Ok(creation),
        _ => bail!("no `guests:` line from the -icount boot of {}:\n{}", image.name, tail(&log, 30)),
    }
}

/// `cargo xtask bench density`: boots the image over tap, sweeps every guest once, measures the
/// instructions to create one under `-icount`, bisects the smallest memory, and reports it all
/// (`density.json`, `density.svg`).
pub fn bench(plan: &DensityPlan) -> Result<DensityReport> {
    if let Some(why) = crate::tapnet::unavailable_reason(&[]) {
        bail!("bench density needs a tap network: {why}");
    }
    let mut image = crate::pack::build(Some(plan.image), NetPlan::TAP)?.remove(0);
    let guests = image.guests.iter().filter(|g| g.net.is_some()).count();
    let memory_mib = image.manifest.kernel.memory_mib;
    println!("bench density: {guests} guests of {} over tap, {memory_mib} MiB, TCG", image.name);
    // Creating 10,000 guests and starting their stacks takes tens of seconds under TCG.
    let run = run_echo_over_tap(&image, plan.tx, Duration::from_secs(900))
        .map_err(|e| anyhow!("{:#}\n---- console log ----\n{}", e.error, tail(&e.log, 60)))?;
    let creation = Creation::from_log(&run.outcome.log).unwrap_or_default();
    let pages = PageReport::from_log(&run.outcome.log);
    let stats = crate::checks::stats(&run.outcome.log).unwrap_or_default();
    println!(
        "{} of {} guests answered ({} retries); every guest listening {:.1} s and answered {:.1} s after QEMU \
         started (sweep {} ms)",
        run.sweep.answered,
        run.guests,
        run.sweep.retries,
        run.listening_after.as_secs_f64(),
        run.answered_after.as_secs_f64(),
        run.sweep.last_answer_ms
    );
    let bench_dir = crate::pack::workspace_root().join("target/bench");
    std::fs::create_dir_all(&bench_dir)?;
    let log_path = bench_dir.join("density.log");
    std::fs::write(&log_path, &run.outcome.log)?;
    if run.sweep.answered != run.guests {
        bail!(
            "{} of {} guests never answered (console log in {}): {:?}",
            run.guests - run.sweep.answered,
            run.guests,
            log_path.display(),
            run.sweep.silent
        );
    }

    println!("creating one guest under -icount shift=0 ...");
    let counted = creation_instructions(&image);
    if let Err(e) = &counted {
        println!("could not count the instructions: {e:#}");
    }
    let create_instructions_median = counted.ok().map(|c| c.ticks_median);

    let mut probes = Vec::new();
    let mut smallest_memory_mib = None;
    if let Some((low, step)) = plan.bisect {
        // A probe that has not booted in 4 times the first run's time will not.
        let boot_timeout = (run.listening_after * 4).max(Duration::from_secs(60));
        let (smallest, all) = smallest_memory(low, memory_mib, step, |mib| {
            image.manifest.kernel.memory_mib = mib;
            let probe_log = bench_dir.join(format!("density-probe-{mib}.log"));
            let failure = match run_echo_over_tap_with(&image, plan.tx, boot_timeout, &PROBE_SWEEP) {
                Ok(r) if r.sweep.answered == r.guests => None,
                Ok(r) => {
                    let _ = std::fs::write(&probe_log, &r.outcome.log);
                    let stats = crate::checks::stats(&r.outcome.log).unwrap_or_default();
                    let mut counted: Vec<String> = stats
                        .iter()
                        .filter(|(name, &value)| value > 0 && (name.contains("drops") || name.contains("refused")))
                        .map(|(name, value)| format!("{name}={value}"))
                        .collect();
                    if r.sweep.host_rcvbuf_errors > 0 {
                        counted.push(format!("host_rcvbuf_errors={}", r.sweep.host_rcvbuf_errors));
                    }
                    Some(format!(
                        "{} of {} guests answered; counted: {}",
                        r.sweep.answered,
                        r.guests,
                        if counted.is_empty() { "no drops".into() } else { counted.join(" ") }
                    ))
                }
                Err(e) => {
                    let _ = std::fs::write(&probe_log, &e.log);
                    Some(format!("{:#}", e.error))
                }
            };
            let log_note =
                if failure.is_some() { format!(" (console log {})", probe_log.display()) } else { String::new() };
            println!("  -m {mib}: {}{log_note}", failure.as_deref().unwrap_or("every guest answered"));
            failure
        });
        image.manifest.kernel.memory_mib = memory_mib;
        smallest_memory_mib = Some(smallest);
        probes = all;
    }
    let failure_below_smallest = probes.iter().filter(|p| p.failure.is_some()).max_by_key(|p| p.memory_mib).cloned();

    let heap_used_per_guest = stats.get("heap_bytes_used").map(|used| used / run.guests.max(1) as u64);
    let mut memory_per_guest_kib = BTreeMap::new();
    if let Some((median, _)) = pages.get("pages") {
        memory_per_guest_kib.insert("guest_private_pages", (median * 4) as f64);
    }
    if let Some(bytes) = heap_used_per_guest {
        memory_per_guest_kib.insert("kernel_heap", bytes as f64 / 1024.0);
    }
    if let Some(mib) = smallest_memory_mib {
        memory_per_guest_kib.insert("smallest_memory", f64::from(mib) * 1024.0 / run.guests.max(1) as f64);
    }
    let report = DensityReport {
        image: image.name.clone(),
        guests: run.guests,
        tx: plan.tx,
        accel: Accel::Tcg.name(),
        host_cpu: crate::bench::host_cpu(),
        memory_mib,
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
        create_instructions_median,
        kernel_heap_used_bytes_per_guest_at_end: heap_used_per_guest,
        private_pages: pages.figures.iter().map(|(k, &(median, max))| (k.clone(), Spread { median, max })).collect(),
        smallest_memory_mib,
        failure_below_smallest,
        memory_probes: probes,
        memory_per_guest_kib,
        stats,
    };
    print_report(&report, &pages);
    let path = crate::bench::write_json("density.json", &report)?;
    std::fs::write(path.with_file_name("density.svg"), density_svg(&report)?)?;
    println!("wrote {}, density.svg and the console log {}", path.display(), log_path.display());
    Ok(report)
}

fn print_report(report: &DensityReport, pages: &PageReport) {
    let or_unknown = |v: Option<u64>| v.map_or("?".to_string(), |v| v.to_string());
    println!(
        "creating one guest: {} instructions (median, -icount), {} TSC ticks (median, wall clock); kernel heap {} \
         bytes per guest at creation, {} at the end; {} pages shared",
        or_unknown(report.create_instructions_median),
        report.create_ticks_median,
        report.kernel_heap_bytes_per_guest,
        or_unknown(report.kernel_heap_used_bytes_per_guest_at_end),
        report.shared_pages
    );
    println!("{}", pages.describe());
    println!(
        "memory: {} MiB given to the machine, QEMU's RSS {} MiB; smallest -m where every guest answers: {} MiB{}",
        report.memory_mib,
        or_unknown(report.qemu_rss_mib),
        report.smallest_memory_mib.map_or("?".into(), |m| m.to_string()),
        report.failure_below_smallest.as_ref().map_or(String::new(), |p| format!(
            " (at {} MiB: {})",
            p.memory_mib,
            p.failure.as_deref().unwrap_or("")
        ))
    );
    let per_guest: Vec<String> =
        report.memory_per_guest_kib.iter().map(|(what, kib)| format!("{what} {kib:.1}")).collect();
    println!("KiB per guest: {}", per_guest.join(", "));
}

/// Private pages per guest by use, time to every guest answering, and memory per guest.
pub fn density_svg(report: &DensityReport) -> Result<String> {
    use crate::chart::{Bars, Panel, Series, PALETTE};
    let uses = ["page_tables", "stack", "heap", "vnic", "other"];
    let page_series = uses
        .iter()
        .zip(PALETTE)
        .map(|(name, colour)| {
            let spread = report.private_pages.get(&format!("pages_{name}"));
            Series {
                name: name.replace('_', " "),
                colour,
                values: vec![spread.map_or(0.0, |s| s.median as f64), spread.map_or(0.0, |s| s.max as f64)],
            }
        })
        .collect();
    let memory_rows =
        [("guest_private_pages", "guest's pages"), ("kernel_heap", "kernel heap"), ("smallest_memory", "smallest -m")];
    let panels = [
        Panel {
            title: format!("Private pages per guest by use ({} guests)", crate::chart::thousands(report.guests as f64)),
            x_desc: "over the guests, after each answered".into(),
            y_desc: "private pages (4 KiB each)".into(),
            legend_title: "use".into(),
            categories: vec!["median".into(), "max".into()],
            series: page_series,
            bars: Bars::Stacked,
        },
        Panel {
            title: format!("{} guests over tap, TCG (wall clock)", crate::chart::thousands(report.guests as f64)),
            x_desc: "every guest ...".into(),
            y_desc: "milliseconds after QEMU started".into(),
            legend_title: "run".into(),
            categories: vec!["listening".into(), "answered".into()],
            series: vec![Series {
                name: format!("-m {}", report.memory_mib),
                colour: PALETTE[4],
                values: vec![report.every_guest_listening_ms as f64, report.every_guest_answered_ms as f64],
            }],
            bars: Bars::Grouped,
        },
        Panel {
            title: "Memory per guest: the kernel heap is the wall".into(),
            x_desc: "its pages; kernel heap (it grows as guests need it); smallest -m / guests".into(),
            y_desc: "KiB per guest".into(),
            legend_title: "measured".into(),
            categories: memory_rows.iter().map(|(_, label)| label.to_string()).collect(),
            series: vec![Series {
                name: "KiB per guest".into(),
                colour: PALETTE[5],
                values: memory_rows
                    .iter()
                    .map(|(key, _)| report.memory_per_guest_kib.get(key).copied().unwrap_or(0.0))
                    .collect(),
            }],
            bars: Bars::Stacked,
        },
    ];
    crate::chart::svg(&panels, 2, (760, 460))
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
    fn bisection_finds_the_smallest_working_memory_and_names_the_failure_below() {
        let mut probed = Vec::new();
        let (smallest, probes) = smallest_memory(256, 2560, 32, |mib| {
            probed.push(mib);
            (mib < 1000).then(|| format!("refused at {mib}"))
        });
        assert_eq!(smallest, 1024, "the first multiple of 32 above 256 that is at least 1000");
        assert_eq!(probed[0], 256);
        assert!(probed.len() <= 8, "{probed:?}");
        assert_eq!(probes.iter().map(|p| p.memory_mib).collect::<Vec<_>>(), probed);
        assert!(probes.iter().any(|p| p.memory_mib == 1024 - 32 && p.failure.as_deref() == Some("refused at 992")));
        assert!(probes.iter().all(|p| p.failure.is_some() == (p.memory_mib < 1000)));
        // Works at the lower bound: one probe.
        let (smallest, probes) = smallest_memory(256, 2560, 32, |_| None);
        assert_eq!((smallest, probes.len()), (256, 1));
        // Fails everywhere below the known-good memory.
        let (smallest, _) = smallest_memory(256, 2560, 32, |_| Some("no".into()));
        assert_eq!(smallest, 2560);
        assert_eq!(smallest_memory(256, 256, 32, |_| unreachable!()), (256, vec![]));
    }

    #[test]
    fn boot_failures_are_named() {
        assert_eq!(boot_failure(LOG), None);
        let table =
            "[ 0.1] ERROR the kernel heap (100 bytes free, grown from all free RAM) cannot hold the table of 10000 guests: give \
                     the machine more memory\n";
        assert!(boot_failure(table).is_some_and(|w| w.starts_with("boot failed: the kernel heap (100 bytes free")));
        let refused =
            "[ 0.2] INFO  guests: 7 created, 3 refused; creating one took 5 TSC ticks (median); 8 private pages \
                       per guest (median), 23 pages shared; kernel heap 6048 bytes per guest\n\
                       [ 0.2] WARN  guest 7 e-7 refused out_of_memory: the kernel heap is low\n";
        assert_eq!(
            boot_failure(refused).as_deref(),
            Some("3 of 10 guests refused, the first: out_of_memory: the kernel heap is low")
        );
    }

    #[test]
    fn the_chart_has_every_use_and_figure() {
        let spread = |median, max| Spread { median, max };
        let report = DensityReport {
            image: "echo-1k".into(),
            guests: 1000,
            tx: TxMode::Copy,
            accel: "tcg",
            host_cpu: String::new(),
            memory_mib: 256,
            qemu_rss_mib: Some(100),
            every_guest_listening_ms: 1500,
            every_guest_answered_ms: 2500,
            sweep_ms: 900,
            answered: 1000,
            retries: 0,
            create_ticks_median: 1,
            private_pages_at_creation: 8,
            shared_pages: 23,
            kernel_heap_bytes_per_guest: 6048,
            create_instructions_median: Some(20_000),
            kernel_heap_used_bytes_per_guest_at_end: Some(4096),
            private_pages: [
                ("pages", spread(18, 19)),
                ("pages_page_tables", spread(6, 6)),
                ("pages_stack", spread(2, 2)),
                ("pages_heap", spread(4, 5)),
                ("pages_vnic", spread(4, 4)),
                ("pages_other", spread(2, 2)),
            ]
            .into_iter()
            .map(|(k, v)| (k.to_string(), v))
            .collect(),
            smallest_memory_mib: Some(160),
            failure_below_smallest: None,
            memory_probes: vec![],
            memory_per_guest_kib: [("guest_private_pages", 72.0), ("kernel_heap", 4.0), ("smallest_memory", 163.8)]
                .into_iter()
                .collect(),
            stats: BTreeMap::new(),
        };
        let svg = density_svg(&report).unwrap();
        let texts = crate::chart::texts(&svg);
        for text in [
            "page tables",
            "stack",
            "heap",
            "vnic",
            "other",
            "median",
            "max",
            "private pages (4 KiB each)",
            "KiB per guest",
        ] {
            assert!(texts.iter().any(|t| t == text), "{text} missing: {texts:?}");
        }
        // Totals above the stacked bars: 18 of the medians, 19 of the maxima; the answered time.
        for total in ["18", "19", "72", "164"] {
            assert!(texts.iter().any(|t| t == total), "{total} missing: {texts:?}");
        }
    }

    #[test]
    fn rss_of_this_process_is_read() {
        assert!(rss_kib(std::process::id()).is_some_and(|kib| kib > 0));
    }
}
