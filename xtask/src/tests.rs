//! `cargo xtask test`: host unit tests, then QEMU integration tests. Every QEMU run has a
//! timeout; a failing test prints the kernel's console log.

use crate::checks;
use crate::manifest::NetPlan;
use crate::pack::{self, Image};
use crate::qemu::{self, Accel, NetBackend, Outcome, QemuConfig, Session};
use crate::udp;
use crate::TxMode;
use anyhow::{bail, Context, Result};
use hypercall_abi::cmdline as keys;
use hypercall_abi::host::KernelExit;
use std::process::Command;
use std::time::{Duration, Instant};

mod rx;

/// Timeouts: TCG boots in well under a second; PVM emulates ring 0 and takes seconds.
const TCG_TIMEOUT: Duration = Duration::from_secs(60);
const KVM_TIMEOUT: Duration = Duration::from_secs(180);

struct Ctx {
    artifacts: pack::Artifacts,
    empty: Image,
    hello: Image,
    chaos: Image,
}

/// A failed check, with the log of the run it came from.
struct Failure {
    reason: String,
    log: String,
}

type TestResult = std::result::Result<Verdict, Failure>;

enum Verdict {
    Pass,
    Skip(String),
}

struct QemuTest {
    name: &'static str,
    run: fn(&Ctx) -> TestResult,
}

const QEMU_TESTS: &[QemuTest] = &[
    QemuTest { name: "boot_tcg", run: boot_tcg },
    QemuTest { name: "boot_kvm", run: boot_kvm },
    QemuTest { name: "kernel_page_fault_reported", run: kernel_page_fault_reported },
    QemuTest { name: "kernel_invalid_opcode_reported", run: kernel_invalid_opcode_reported },
    QemuTest { name: "kernel_panic_reported", run: kernel_panic_reported },
    QemuTest { name: "bad_command_line_refused", run: bad_command_line_refused },
    QemuTest { name: "hung_kernel_is_killed_by_timeout", run: hung_kernel_is_killed_by_timeout },
    QemuTest { name: "hello_16_guests_tcg", run: hello_tcg },
    QemuTest { name: "hello_16_guests_kvm", run: hello_kvm },
    QemuTest { name: "chaos_hostile_guests_isolated_tcg", run: chaos_tcg },
    QemuTest { name: "udp_echo_user_network_copy_tcg", run: |ctx| udp_echo_user_network(ctx, TxMode::Copy) },
    QemuTest { name: "udp_echo_user_network_cow_tcg", run: |ctx| udp_echo_user_network(ctx, TxMode::Cow) },
    QemuTest { name: "udp_guest_to_guest_copy_tcg", run: |ctx| udp_guest_to_guest(ctx, TxMode::Copy, "udp-g2g") },
    QemuTest { name: "udp_guest_to_guest_cow_tcg", run: |ctx| udp_guest_to_guest(ctx, TxMode::Cow, "udp-g2g") },
    QemuTest { name: "vnic_bad_descriptors_rejected_copy_tcg", run: |ctx| vnic_bad_descriptors(ctx, TxMode::Copy) },
    QemuTest { name: "vnic_bad_descriptors_rejected_cow_tcg", run: |ctx| vnic_bad_descriptors(ctx, TxMode::Cow) },
    QemuTest { name: "cow_rewrite_in_flight_tcg", run: cow_rewrite_in_flight },
    QemuTest { name: "rx_oversize_dropped_and_counted_tcg", run: rx::rx_oversize_dropped_and_counted },
    QemuTest { name: "bench_echo_smoke", run: bench_echo_smoke },
    QemuTest { name: "bench_dispatch_smoke", run: bench_dispatch_smoke },
    QemuTest {
        name: "udp_echo_tap_network_copy_tcg",
        run: |ctx| udp_echo_tap_network(ctx, TxMode::Copy, "udp-echo", &udp::TEST_SIZES),
    },
    QemuTest {
        name: "udp_echo_tap_network_cow_tcg",
        run: |ctx| udp_echo_tap_network(ctx, TxMode::Cow, "udp-echo", &udp::TEST_SIZES),
    },
    QemuTest {
        name: "udp_jumbo_tap_network_copy_tcg",
        run: |ctx| udp_echo_tap_network(ctx, TxMode::Copy, "udp-echo-jumbo", &udp::JUMBO_TEST_SIZES),
    },
    QemuTest {
        name: "udp_jumbo_tap_network_cow_tcg",
        run: |ctx| udp_echo_tap_network(ctx, TxMode::Cow, "udp-echo-jumbo", &udp::JUMBO_TEST_SIZES),
    },
    QemuTest {
        name: "udp_jumbo_guest_to_guest_copy_tcg",
        run: |ctx| udp_guest_to_guest(ctx, TxMode::Copy, "udp-g2g-jumbo"),
    },
    QemuTest {
        name: "udp_jumbo_guest_to_guest_cow_tcg",
        run: |ctx| udp_guest_to_guest(ctx, TxMode::Cow, "udp-g2g-jumbo"),
    },
];

pub fn run_all(filter: Option<&str>, qemu_only: bool) -> Result<()> {
    if !qemu_only {
        println!("== host unit tests (cargo test)");
        let status = Command::new(std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into()))
            .current_dir(pack::workspace_root())
            .arg("test")
            .status()
            .context("running cargo test")?;
        if !status.success() {
            bail!("host unit tests failed");
        }
        println!("== lints (cargo clippy: host crates, then the kernel and guests for {})", pack::KERNEL_TARGET);
        pack::clippy()?;
    }

    println!("== building the kernel and images");
    let artifacts = pack::Artifacts::build()?;
    let ctx = Ctx {
        artifacts: pack::Artifacts { kernel: artifacts.kernel.clone(), guest_bin_dir: artifacts.guest_bin_dir.clone() },
        empty: pack::pack_image("empty", &artifacts, NetPlan::USER)?,
        hello: pack::pack_image("hello", &artifacts, NetPlan::USER)?,
        chaos: pack::pack_image("chaos", &artifacts, NetPlan::USER)?,
    };

    println!("== QEMU integration tests");
    let mut failed = Vec::new();
    for test in QEMU_TESTS.iter().filter(|t| filter.is_none_or(|f| t.name.contains(f))) {
        let start = Instant::now();
        let result = (test.run)(&ctx);
        let secs = start.elapsed().as_secs_f64();
        match result {
            Ok(Verdict::Pass) => println!("PASS {} ({secs:.1} s)", test.name),
            Ok(Verdict::Skip(why)) => println!("SKIP {}: {why}", test.name),
            Err(failure) => {
                println!("FAIL {} ({secs:.1} s): {}", test.name, failure.reason);
                println!("---- console log of {} ----\n{}---- end of log ----", test.name, failure.log);
                failed.push(test.name);
            }
        }
    }
    if !failed.is_empty() {
        bail!("{} QEMU test(s) failed: {}", failed.len(), failed.join(", "));
    }
    println!("all tests passed");
    Ok(())
}

fn failure(reason: impl Into<String>, log: String) -> Failure {
    Failure { reason: reason.into(), log }
}

/// Starts `image` with a network, without waiting for it to end.
fn start_networked(
    image: &Image,
    net: NetBackend,
    netns: Option<&str>,
    tx: TxMode,
    timeout: Duration,
) -> std::result::Result<Session, Failure> {
    start_networked_pcap(image, net, netns, tx, None, timeout)
}

fn start_networked_pcap(
    image: &Image,
    net: NetBackend,
    netns: Option<&str>,
    tx: TxMode,
    pcap: Option<&std::path::Path>,
    timeout: Duration,
) -> std::result::Result<Session, Failure> {
    let config = QemuConfig {
        net: Some(net),
        pcap,
        netns,
        ..QemuConfig::for_image(image, Accel::Tcg, format!("log=info shutdown_after=300 tx={}", tx.name()))
    };
    Session::start(config.command(), timeout, false).map_err(|e| failure(format!("{e:#}"), String::new()))
}

/// Waits until every echo guest of the image says it listens.
fn wait_listening(session: &mut Session, count: usize) -> std::result::Result<(), Failure> {
    if session.wait_for(Duration::from_secs(30), |log| log.matches("udp-echo listening on").count() >= count) {
        Ok(())
    } else {
        Err(failure(format!("{count} echo guests did not all start listening"), session.log()))
    }
}

/// A host port base unlikely to collide with another run on this machine.
fn host_port_base() -> u16 {
    20_000 + (std::process::id() % 2_000) as u16 * 8
}

fn boot(image: &Image, accel: Accel, append: &str, timeout: Duration) -> std::result::Result<Outcome, Failure> {
    let config = QemuConfig::for_image(image, accel, append.to_string());
    qemu::run_captured(config.command(), timeout, false)
        .map_err(|e| Failure { reason: format!("{e:#}"), log: String::new() })
}

/// Turns a failed condition into a [`Failure`] carrying the log.
fn check(outcome: &Outcome, ok: bool, reason: impl FnOnce() -> String) -> std::result::Result<(), Failure> {
    if ok {
        Ok(())
    } else {
        Failure { reason: format!("{} ({})", reason(), outcome.describe()), log: outcome.log.clone() }.into_err()
    }
}

impl Failure {
    fn into_err<T>(self) -> std::result::Result<T, Failure> {
        Err(self)
    }
}

fn expect_exit(outcome: &Outcome, want: KernelExit) -> std::result::Result<(), Failure> {
    check(outcome, outcome.exit() == Some(want), || format!("expected kernel exit {want:?}"))
}

fn expect_line(outcome: &Outcome, needle: &str) -> std::result::Result<(), Failure> {
    check(outcome, outcome.log.contains(needle), || format!("console log lacks `{needle}`"))
}

/// The kernel boots, reports memory, TSC and an advancing tick count, and exits cleanly.
fn check_clean_boot(outcome: &Outcome) -> std::result::Result<(), Failure> {
    expect_exit(outcome, KernelExit::Success)?;
    expect_line(outcome, "memory map (")?;
    check(outcome, outcome.log.lines().any(|l| l.trim_end().ends_with("] usable")), || {
        "no usable memory-map entry logged".into()
    })?;
    expect_line(outcome, "paging: kernel page tables active")?;
    let mhz = checks::tsc_mhz(&outcome.log);
    check(outcome, mhz.is_some_and(|m| m > 100.0), || format!("TSC frequency {mhz:?} MHz is missing or implausible"))?;
    let reports = checks::uptime_reports(&outcome.log);
    check(outcome, reports.len() >= 2, || format!("expected 2 uptime reports, got {}", reports.len()))?;
    check(outcome, reports.windows(2).all(|w| w[1].1 > w[0].1 && w[0].1 > 0), || {
        format!("timer ticks do not advance: {reports:?}")
    })?;
    let stats = checks::stats(&outcome.log);
    let ticks = stats.as_ref().and_then(|s| s.get("timer_ticks").copied());
    check(outcome, ticks.is_some_and(|t| t >= reports.last().map_or(1, |r| r.1)), || {
        format!("stats line missing or timer_ticks wrong: {stats:?}")
    })?;
    let frames_free = stats.as_ref().and_then(|s| s.get("frames_free").copied()).unwrap_or(0);
    check(outcome, frames_free > 0, || "stats report no free frames".into())
}

fn boot_append(secs: u64) -> String {
    format!("{}=info {}={secs}", keys::LOG, keys::SHUTDOWN_AFTER)
}

fn boot_tcg(ctx: &Ctx) -> TestResult {
    let outcome = boot(&ctx.empty, Accel::Tcg, &boot_append(2), TCG_TIMEOUT)?;
    check_clean_boot(&outcome)?;
    Ok(Verdict::Pass)
}

fn boot_kvm(ctx: &Ctx) -> TestResult {
    if !qemu::kvm_usable() {
        return Ok(Verdict::Skip("/dev/kvm is missing or not accessible on this host".into()));
    }
    let outcome = boot(&ctx.empty, Accel::Kvm, &boot_append(2), KVM_TIMEOUT)?;
    check_clean_boot(&outcome)?;
    Ok(Verdict::Pass)
}

fn fault_test(ctx: &Ctx, kind: &str, exit: KernelExit, needles: &[&str]) -> TestResult {
    let append = format!("{}={kind} {}=5", keys::TEST_FAULT, keys::SHUTDOWN_AFTER);
    let outcome = boot(&ctx.empty, Accel::Tcg, &append, TCG_TIMEOUT)?;
    expect_exit(&outcome, exit)?;
    for needle in needles {
        expect_line(&outcome, needle)?;
    }
    check(&outcome, checks::stats(&outcome.log).is_none(), || {
        "a faulting kernel must not report a clean shutdown".into()
    })?;
    Ok(Verdict::Pass)
}

fn kernel_page_fault_reported(ctx: &Ctx) -> TestResult {
    fault_test(
        ctx,
        "page_fault",
        KernelExit::KernelFault,
        &["KERNEL FAULT: vector 14 (#PF page fault) error 0x2 rip 0xffffffff8", "cr2 0xfffffeff"],
    )
}

fn kernel_invalid_opcode_reported(ctx: &Ctx) -> TestResult {
    fault_test(
        ctx,
        "invalid_opcode",
        KernelExit::KernelFault,
        &["KERNEL FAULT: vector 6 (#UD invalid opcode) error 0x0 rip 0xffffffff8"],
    )
}

fn kernel_panic_reported(ctx: &Ctx) -> TestResult {
    fault_test(
        ctx,
        "panic",
        KernelExit::Panic,
        &["KERNEL PANIC: panicked at isolation-kernel/src/", "test_fault=panic requested"],
    )
}

fn bad_command_line_refused(ctx: &Ctx) -> TestResult {
    let outcome = boot(&ctx.empty, Accel::Tcg, "shutdown_after=soon", TCG_TIMEOUT)?;
    expect_exit(&outcome, KernelExit::Failure)?;
    expect_line(&outcome, "bad value `soon` for `shutdown_after`")?;
    Ok(Verdict::Pass)
}

/// The harness itself: a kernel that never exits is killed at the timeout and reported.
fn hung_kernel_is_killed_by_timeout(ctx: &Ctx) -> TestResult {
    let outcome = boot(&ctx.empty, Accel::Tcg, "log=info", Duration::from_secs(3))?;
    check(&outcome, outcome.timed_out && outcome.status.is_none(), || "QEMU was not killed at the timeout".into())?;
    check(&outcome, outcome.describe().contains("timed out"), || "timeout not described".into())?;
    expect_line(&outcome, "idling (no shutdown_after given)")?;
    Ok(Verdict::Pass)
}

/// Every guest of the image ended as its manifest expects, judged from the kernel's fixed-form
/// end lines (independently of the kernel's own verdict), and the kernel agreed.
fn check_guest_expectations(image: &Image, outcome: &Outcome) -> std::result::Result<(), Failure> {
    let ends = checks::guest_ends(&outcome.log);
    for guest in &image.guests {
        let end = ends.get(&guest.name).map(|(_, end)| end);
        check(outcome, checks::end_meets(end, &guest.expect), || {
            format!("guest {} expected {}, the log says {end:?}", guest.name, guest.expect)
        })?;
    }
    check(outcome, !outcome.log.contains("KERNEL"), || "the kernel faulted or panicked".into())?;
    check(outcome, !outcome.log.contains("EXPECTATION FAILED"), || "the kernel reports a failed expectation".into())?;
    expect_exit(outcome, KernelExit::Success)
}

fn run_hello(ctx: &Ctx, accel: Accel, timeout: Duration) -> TestResult {
    let outcome = boot(&ctx.hello, accel, "log=info shutdown_after=120", timeout)?;
    check_guest_expectations(&ctx.hello, &outcome)?;
    let guests = &ctx.hello.guests;
    for (index, guest) in guests.iter().enumerate() {
        let greeting =
            format!("guest {index} {}: hello from guest {index} ({}), args: [alpha beta]", guest.name, guest.name);
        expect_line(&outcome, &greeting)?;
        let slept = outcome.log.lines().find_map(|l| {
            let rest = l.split_once(&format!("guest {index} {}: slept ", guest.name))?.1;
            rest.split_once(" us")?.0.parse::<u64>().ok()
        });
        check(&outcome, slept.is_some_and(|us| us >= 50_000), || {
            format!("{} did not report sleeping 50 ms: {slept:?}", guest.name)
        })?;
    }
    let stats = checks::stats(&outcome.log).unwrap_or_default();
    check(&outcome, stats.get("guests_exited") == Some(&(guests.len() as u64)), || format!("stats: {stats:?}"))?;
    Ok(Verdict::Pass)
}

fn hello_tcg(ctx: &Ctx) -> TestResult {
    run_hello(ctx, Accel::Tcg, TCG_TIMEOUT)
}

fn hello_kvm(ctx: &Ctx) -> TestResult {
    if !qemu::kvm_usable() {
        return Ok(Verdict::Skip("/dev/kvm is missing or not accessible on this host".into()));
    }
    run_hello(ctx, Accel::Kvm, KVM_TIMEOUT)
}

fn chaos_tcg(ctx: &Ctx) -> TestResult {
    let outcome = boot(&ctx.chaos, Accel::Tcg, "log=info shutdown_after=120", TCG_TIMEOUT)?;
    check_guest_expectations(&ctx.chaos, &outcome)?;
    // The spinning guest was preempted: the hello guests finished while it still ran.
    let ends = checks::guest_ends(&outcome.log);
    let position = |name: &str| outcome.log.find(&format!(" {name} ")).zip(ends.get(name)).map(|(at, _)| at);
    let spin_end = outcome.log.find("spin stopped: cpu budget");
    let hello_end = outcome.log.find("hello-last exited 0");
    check(&outcome, matches!((hello_end, spin_end), (Some(h), Some(s)) if h < s), || {
        "hello-last should finish while the spinning guest is still preempted and running".into()
    })?;
    check(&outcome, position("spin").is_some(), || "no end line for the spinning guest".into())?;
    let stats = checks::stats(&outcome.log).unwrap_or_default();
    check(&outcome, stats.get("guests_refused") == Some(&4), || format!("expected 4 refused ELF files: {stats:?}"))?;
    Ok(Verdict::Pass)
}

/// The stats line's counters, or a failure naming what is missing.
fn final_stats(outcome: &Outcome) -> std::result::Result<std::collections::BTreeMap<String, u64>, Failure> {
    checks::stats(&outcome.log).ok_or_else(|| failure("no stats line", outcome.log.clone()))
}

fn udp_echo_user_network(ctx: &Ctx, tx: TxMode) -> TestResult {
    let image = pack::pack_image("udp-echo", &ctx.artifacts, NetPlan::USER)
        .map_err(|e| failure(format!("{e:#}"), String::new()))?;
    let base = host_port_base();
    let guests: Vec<_> = image.guests.iter().filter_map(|g| g.net).collect();
    let forwards = guests.iter().enumerate().map(|(i, n)| (base + i as u16, n.ipv4, 7)).collect();
    let mut session = start_networked(&image, NetBackend::User { forwards }, None, tx, TCG_TIMEOUT)?;
    wait_listening(&mut session, guests.len())?;
    let mut sent = 0;
    for i in 0..guests.len() {
        let peer = std::net::SocketAddr::from(([127, 0, 0, 1], base + i as u16));
        let report = udp::echo_check(peer, &udp::TEST_SIZES, 1, 3, Duration::from_secs(2), i as u64)
            .map_err(|e| failure(format!("echo check of guest {i}: {e:#}"), session.log()))?;
        if report.intact != udp::TEST_SIZES.len() {
            return Err(failure(format!("guest {i} via {peer}: {report:?}"), session.log()));
        }
        sent += report.intact + report.retries;
    }
    session.request_quit();
    let outcome = session.finish().map_err(|e| failure(format!("{e:#}"), String::new()))?;
    check_guest_expectations(&image, &outcome)?;
    let stats = final_stats(&outcome)?;
    let get = |name: &str| stats.get(name).copied().unwrap_or(0);
    check(&outcome, get("rx_packets") >= sent as u64 && get("tx_packets") >= sent as u64, || {
        format!("too few packets counted for {sent} echoes: {stats:?}")
    })?;
    match tx {
        // The copy path copies every transmitted byte twice: into the FIFO, into the NIC buffer.
        TxMode::Copy => check(&outcome, get("tx_bytes_copied") == 2 * get("tx_bytes"), || {
            format!("tx_bytes_copied is not twice tx_bytes: {stats:?}")
        })?,
        // The COW path copies nothing on the way to the NIC, and protected a page per packet.
        TxMode::Cow => check(&outcome, get("tx_bytes_copied") == 0 && get("cow_protects") > 0, || {
            format!("the COW path copied bytes or protected nothing: {stats:?}")
        })?,
    }
    check(&outcome, get("drops_bad_desc") == 0 && get("drops_spoof") == 0, || {
        format!("well-behaved guests had drops: {stats:?}")
    })?;
    // Stamping is off unless asked for: no stamp record is made.
    check(&outcome, stats.contains_key("stamp_records") && get("stamp_records") == 0, || {
        format!("stamp records without stamps=on: {stats:?}")
    })?;
    Ok(Verdict::Pass)
}

fn udp_guest_to_guest(ctx: &Ctx, tx: TxMode, image_name: &str) -> TestResult {
    let image = pack::pack_image(image_name, &ctx.artifacts, NetPlan::USER)
        .map_err(|e| failure(format!("{e:#}"), String::new()))?;
    let outcome = boot(&image, Accel::Tcg, &format!("log=info shutdown_after=120 tx={}", tx.name()), TCG_TIMEOUT)?;
    check_guest_expectations(&image, &outcome)?;
    let clients = image.guests.iter().filter(|g| g.app == "udp-client").count();
    check(&outcome, outcome.log.matches("datagrams echoed intact").count() == clients, || {
        "a client printed no result".into()
    })?;
    check(&outcome, outcome.log.contains("every guest expected to end has ended"), || {
        "the run did not end with the clients".into()
    })?;
    let stats = final_stats(&outcome)?;
    check(&outcome, !stats.contains_key("nic_tx_frames"), || "guest-to-guest ran with a physical NIC".into())?;
    Ok(Verdict::Pass)
}

fn vnic_bad_descriptors(ctx: &Ctx, tx: TxMode) -> TestResult {
    let image = pack::pack_image("net-hostile", &ctx.artifacts, NetPlan::USER)
        .map_err(|e| failure(format!("{e:#}"), String::new()))?;
    let outcome = boot(&image, Accel::Tcg, &format!("log=info shutdown_after=120 tx={}", tx.name()), TCG_TIMEOUT)?;
    check_guest_expectations(&image, &outcome)?;
    for case in [
        "outside its memory",
        "kernel address",
        "huge length",
        "in the headroom",
        "spoofed source MAC",
        "ring index beyond the ring",
    ] {
        let line = outcome.log.lines().find(|l| l.contains(&format!("({case})")) || l.contains(&format!("{case}:")));
        check(&outcome, line.is_some_and(|l| l.contains("as expected")), || {
            format!("bad descriptor case `{case}`: {line:?}")
        })?;
    }
    let stats = final_stats(&outcome)?;
    let get = |name: &str| stats.get(name).copied().unwrap_or(0);
    check(&outcome, get("drops_bad_desc") == 4, || {
        format!("drops_bad_desc should count 4 bad descriptors: {stats:?}")
    })?;
    check(&outcome, get("bad_ring_indices") == 1, || {
        format!("bad_ring_indices should count the producer beyond the ring: {stats:?}")
    })?;
    check(&outcome, get("drops_spoof") >= 1, || format!("drops_spoof should count the spoofed frame: {stats:?}"))?;
    check(&outcome, outcome.log.matches("rejected tx descriptor").count() == 1, || {
        "bad descriptors should be logged once per guest".into()
    })?;
    Ok(Verdict::Pass)
}

fn udp_echo_tap_network(ctx: &Ctx, tx: TxMode, image_name: &str, sizes: &[usize]) -> TestResult {
    let image = pack::pack_image(image_name, &ctx.artifacts, NetPlan::TAP)
        .map_err(|e| failure(format!("{e:#}"), String::new()))?;
    let namespace = match crate::tapnet::TapNamespace::create(&NetPlan::TAP, image.manifest.kernel.mtu) {
        Ok(ns) => ns,
        Err(e) => return Ok(Verdict::Skip(format!("cannot create a tap device in a network namespace: {e:#}"))),
    };
    let net = NetBackend::Tap { ifname: crate::tapnet::TAP_IFNAME.into() };
    let mut session = start_networked(&image, net, Some(&namespace.name), tx, TCG_TIMEOUT)?;
    let guests: Vec<_> = image.guests.iter().filter_map(|g| g.net).collect();
    wait_listening(&mut session, guests.len())?;
    let target = crate::manifest::format_ip(guests[0].ipv4);
    let ping = namespace.command("ping").args(["-c", "2", "-W", "2", &target]).output();
    let ping_note = match ping {
        Ok(out) if out.status.success() => String::new(),
        Ok(out) => {
            return Err(failure(
                format!("ping {target} failed: {}", String::from_utf8_lossy(&out.stdout)),
                session.log(),
            ))
        }
        Err(e) => format!(" (ping not run: {e}; install iputils-ping)"),
    };
    let exe = std::env::current_exe().map_err(|e| failure(format!("{e}"), String::new()))?;
    for net in &guests {
        let peer = format!("{}:7", crate::manifest::format_ip(net.ipv4));
        let out = namespace
            .command(&exe.to_string_lossy())
            .args(["udp-probe", &peer, "--sizes", &sizes.iter().map(|s| s.to_string()).collect::<Vec<_>>().join(",")])
            .output()
            .map_err(|e| failure(format!("running udp-probe: {e}"), session.log()))?;
        if !out.status.success() {
            return Err(failure(
                format!(
                    "udp-probe {peer}: {}{}",
                    String::from_utf8_lossy(&out.stdout),
                    String::from_utf8_lossy(&out.stderr)
                ),
                session.log(),
            ));
        }
    }
    session.request_quit();
    let outcome = session.finish().map_err(|e| failure(format!("{e:#}"), String::new()))?;
    check_guest_expectations(&image, &outcome)?;
    if ping_note.is_empty() {
        Ok(Verdict::Pass)
    } else {
        println!("note: udp_echo_tap_network_tcg passed its UDP part{ping_note}");
        Ok(Verdict::Pass)
    }
}

/// Source MACs of every frame in a pcap file (classic format, Ethernet).
fn pcap_source_macs(bytes: &[u8]) -> Vec<[u8; 6]> {
    let mut macs = Vec::new();
    let mut at = 24;
    while at + 16 <= bytes.len() {
        let len = u32::from_le_bytes(bytes[at + 8..at + 12].try_into().expect("4 bytes")) as usize;
        let frame = &bytes[(at + 16).min(bytes.len())..(at + 16 + len).min(bytes.len())];
        if let Some(mac) = frame.get(6..12) {
            macs.push(mac.try_into().expect("6 bytes"));
        }
        at += 16 + len;
    }
    macs
}

/// Host port the cow-rewrite image sends to (its manifest says so).
const COW_REWRITE_PORT: u16 = 40123;
/// The MAC the cow-rewriter guest writes into its in-flight frames (guest-os/src/bin/cow_rewriter.rs).
const SPOOFED_MAC: [u8; 6] = [0x02, 0x49, 0x4b, 0xee, 0xee, 0xee];

fn cow_rewrite_in_flight(ctx: &Ctx) -> TestResult {
    let image = pack::pack_image("cow-rewrite", &ctx.artifacts, NetPlan::USER)
        .map_err(|e| failure(format!("{e:#}"), String::new()))?;
    let socket = std::net::UdpSocket::bind(("127.0.0.1", COW_REWRITE_PORT))
        .map_err(|e| failure(format!("cannot listen on 127.0.0.1:{COW_REWRITE_PORT}: {e}"), String::new()))?;
    socket.set_read_timeout(Some(Duration::from_millis(200))).map_err(|e| failure(e.to_string(), String::new()))?;
    let pcap = image.dir.join("cow-rewrite.pcap");
    let _ = std::fs::remove_file(&pcap);
    let session = start_networked_pcap(
        &image,
        NetBackend::User { forwards: Vec::new() },
        None,
        TxMode::Cow,
        Some(&pcap),
        TCG_TIMEOUT,
    )?;
    let receiver = std::thread::spawn(move || {
        let mut received = Vec::new();
        let mut buf = [0u8; 2048];
        let mut quiet = 0;
        while quiet < 25 {
            match socket.recv_from(&mut buf) {
                Ok((len, _)) => {
                    quiet = 0;
                    received.push(String::from_utf8_lossy(&buf[..len]).trim_end().to_string());
                }
                Err(_) => quiet += 1,
            }
        }
        received
    });
    let outcome = session.finish().map_err(|e| failure(format!("{e:#}"), String::new()))?;
    let received = receiver.join().unwrap_or_default();
    check_guest_expectations(&image, &outcome)?;
    let rounds = 20;
    for round in 0..rounds {
        for tag in ["ORIGINAL", "AFTER"] {
            let want = format!("{tag} {round}");
            check(&outcome, received.contains(&want), || format!("the host never received `{want}`: {received:?}"))?;
        }
    }
    check(&outcome, !received.iter().any(|r| r.starts_with("REWRITTEN")), || {
        format!("rewritten bytes reached the wire: {received:?}")
    })?;
    let macs = pcap_source_macs(&std::fs::read(&pcap).unwrap_or_default());
    check(&outcome, macs.len() >= 2 * rounds, || format!("the pcap holds only {} frames", macs.len()))?;
    check(&outcome, !macs.contains(&SPOOFED_MAC), || "a frame with the spoofed source MAC crossed the NIC".into())?;
    let stats = final_stats(&outcome)?;
    let faults = stats.get("cow_faults").copied().unwrap_or(0);
    check(&outcome, faults >= 1, || format!("no COW fault was counted: {stats:?}"))?;
    check(&outcome, stats.get("tx_bytes_copied") == Some(&0), || format!("the COW path copied: {stats:?}"))?;
    Ok(Verdict::Pass)
}

/// `cargo xtask bench echo --quick`: every cell present, with numbers that mean something.
fn bench_echo_smoke(_ctx: &Ctx) -> TestResult {
    use crate::bench::{read_json, EchoReport};
    let json =
        crate::bench::echo(crate::bench::QUICK).map_err(|e| failure(format!("bench echo: {e:#}"), String::new()))?;
    let report: EchoReport = read_json(&json).map_err(|e| failure(format!("{e:#}"), String::new()))?;
    for mode in TxMode::ALL {
        for size in crate::bench::SIZES {
            for guests in crate::bench::GUEST_COUNTS {
                let row =
                    report.results.iter().find(|r| r.mode == mode && r.cell.size == size && r.cell.guests == guests);
                let cell = format!("{} {size} B {guests} guest(s)", mode.name());
                let Some(c) = row.map(|r| &r.cell) else {
                    return Err(failure(format!("cell {cell} missing from {}", json.display()), String::new()));
                };
                if !(c.rtt_p50_us > 0.0 && c.echoes_per_second > 0.0 && c.received > 0) {
                    return Err(failure(format!("cell {cell} empty in {}: {c:?}", json.display()), String::new()));
                }
            }
        }
    }
    Ok(Verdict::Pass)
}

/// `cargo xtask bench dispatch --quick`: every cell, every stage with a positive median, and
/// the stage medians adding up to the median total (within the stamps' own cost).
fn bench_dispatch_smoke(_ctx: &Ctx) -> TestResult {
    use crate::dispatch::{Direction, DispatchReport};
    let json = crate::dispatch::run(30, &crate::dispatch::SIZES, Accel::Tcg)
        .map_err(|e| failure(format!("bench dispatch: {e:#}"), String::new()))?;
    let report: DispatchReport =
        crate::bench::read_json(&json).map_err(|e| failure(format!("{e:#}"), String::new()))?;
    for direction in Direction::ALL {
        for mode in TxMode::ALL {
            for size in crate::dispatch::SIZES {
                let cell = format!("{direction:?} {} {size} B", mode.name());
                let found =
                    report.results.iter().find(|c| c.direction == direction && c.mode == mode && c.size == size);
                let Some(found) = found else {
                    return Err(failure(format!("cell {cell} missing from {}", json.display()), String::new()));
                };
                let mut sum = 0;
                for stage in direction.stages() {
                    let median = found.median(stage);
                    if median == 0 {
                        return Err(failure(format!("{cell}: stage {stage} missing or zero"), format!("{found:?}")));
                    }
                    sum += median;
                }
                let total = found.total_median;
                // Medians of parts need not add exactly; each stamp costs a few dozen instructions.
                if sum.abs_diff(total) > total / 10 + 200 {
                    return Err(failure(
                        format!("{cell}: stages add up to {sum}, total is {total}"),
                        format!("{found:?}"),
                    ));
                }
            }
        }
    }
    Ok(Verdict::Pass)
}
