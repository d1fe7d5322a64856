//! Reading the kernel's console log: the facts the integration tests assert on.

use hypercall_abi::cmdline::STATS_PREFIX;
use hypercall_abi::host::{KernelExit, VERDICT_PREFIX};
use hypercall_abi::initrd::{RefusalKind, StopKind};
use std::collections::BTreeMap;

/// The counters of the last `stats:` line.
pub fn stats(log: &str) -> Option<BTreeMap<String, u64>> {
    let line = log.lines().rev().find_map(|l| l.strip_prefix(STATS_PREFIX))?;
    line.split_whitespace()
        .map(|pair| {
            let (name, value) = pair.split_once('=')?;
            Some((name.to_string(), value.parse().ok()?))
        })
        .collect()
}

/// `(seconds, ticks)` from every `uptime N s, timer ticks T` line.
pub fn uptime_reports(log: &str) -> Vec<(u64, u64)> {
    log.lines()
        .filter_map(|l| {
            let rest = &l[l.find("uptime ")? + "uptime ".len()..];
            let (secs, rest) = rest.split_once(" s, timer ticks ")?;
            Some((secs.parse().ok()?, rest.trim().parse().ok()?))
        })
        .collect()
}

/// The TSC frequency in MHz from the `tsc: X MHz` line.
pub fn tsc_mhz(log: &str) -> Option<f64> {
    log.lines().find_map(|l| {
        let rest = &l[l.find("tsc: ")? + 5..];
        rest.split_whitespace().next()?.parse().ok()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const LOG: &str = "\
[    0.000090] INFO  tsc: 2463.249 MHz (PIT calibration)
[    1.008292] INFO  uptime 1 s, timer ticks 98
[    2.007366] INFO  uptime 2 s, timer ticks 197
stats: uptime_ms=2007 timer_ticks=197 frames_free=64196
";

    #[test]
    fn reads_the_facts() {
        assert_eq!(tsc_mhz(LOG), Some(2463.249));
        assert_eq!(uptime_reports(LOG), vec![(1, 98), (2, 197)]);
        let stats = stats(LOG).unwrap();
        assert_eq!(stats["timer_ticks"], 197);
        assert_eq!(stats.len(), 3);
    }

    #[test]
    fn missing_or_garbled_lines_give_nothing() {
        assert_eq!(stats("no stats here"), None);
        assert_eq!(stats("stats: a=1 b=x"), None);
        assert_eq!(tsc_mhz("tsc: fast"), None);
        assert!(uptime_reports("uptime soon").is_empty());
    }
}

/// How the kernel reported a guest's end.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum GuestEnd {
    Exited(i32),
    Stopped { kind: StopKind, cause: String, rip: u64 },
    Refused { kind: RefusalKind, error: String },
}

/// Every guest's end from the fixed-form lines `guest <id> <name> exited <code>`,
/// `guest <id> <name> stopped <kind>: <cause> at rip <hex>` and
/// `guest <id> <name> refused <kind>: <error>`, by guest name. A line whose kind is not one of
/// [`StopKind`] or [`RefusalKind`] is not an end line.
pub fn guest_ends(log: &str) -> BTreeMap<String, (u32, GuestEnd)> {
    let mut ends = BTreeMap::new();
    for line in log.lines() {
        let Some(rest) = line.strip_prefix("guest ") else { continue };
        let mut words = rest.splitn(3, ' ');
        let (Some(id), Some(name), Some(tail)) = (words.next(), words.next(), words.next()) else { continue };
        let Ok(id) = id.parse() else { continue };
        let end = if let Some(code) = tail.strip_prefix("exited ") {
            match code.trim().parse() {
                Ok(code) => GuestEnd::Exited(code),
                Err(_) => continue,
            }
        } else if let Some(stop) = tail.strip_prefix("stopped ") {
            let Some((kind, stop)) = stop.split_once(": ") else { continue };
            let Some(kind) = StopKind::parse(kind) else { continue };
            let Some((cause, rip)) = stop.rsplit_once(" at rip 0x") else { continue };
            let Ok(rip) = u64::from_str_radix(rip.trim(), 16) else { continue };
            GuestEnd::Stopped { kind, cause: cause.to_string(), rip }
        } else if let Some(refusal) = tail.strip_prefix("refused ") {
            let Some((kind, error)) = refusal.split_once(": ") else { continue };
            let Some(kind) = RefusalKind::parse(kind) else { continue };
            GuestEnd::Refused { kind, error: error.to_string() }
        } else {
            continue;
        };
        ends.insert(name.to_string(), (id, end));
    }
    ends
}

/// Whether `end` satisfies a manifest expectation (`exit:N`, `stopped:KIND`, `refused:KIND`,
/// `running`, `any`): kinds compared as kinds, never as text.
pub fn end_meets(end: Option<&GuestEnd>, expect: &str) -> bool {
    use hypercall_abi::initrd::Expect;
    match (Expect::parse(expect), end) {
        (Some(Expect::Any), _) => true,
        (Some(Expect::Running), None) => true,
        (Some(Expect::Exit(want)), Some(GuestEnd::Exited(code))) => *code == want,
        (Some(Expect::Stopped(want)), Some(GuestEnd::Stopped { kind, .. })) => *kind == want,
        (Some(Expect::Refused(want)), Some(GuestEnd::Refused { kind, .. })) => *kind == want,
        _ => false,
    }
}

#[cfg(test)]
mod guest_end_tests {
    use super::*;

    #[test]
    fn end_lines_parse() {
        let log =
            "guest 3 hello-3 exited 0\nguest 4 bad stopped page_fault: page fault: write at 0x0 (not mapped) at rip \
                   0x400179\nguest 5 elf refused elf_too_short: bad ELF file: x\n[ 0.1] INFO  guest 3 hello-3: exited 7\n\
                   guest x y exited 1\nguest 6 odd stopped sneezed: x at rip 0x1\nguest 7 odd2 refused: no kind\n";
        let ends = guest_ends(log);
        assert_eq!(ends.len(), 3);
        assert_eq!(ends["hello-3"], (3, GuestEnd::Exited(0)));
        assert_eq!(
            ends["bad"].1,
            GuestEnd::Stopped {
                kind: StopKind::PageFault,
                cause: "page fault: write at 0x0 (not mapped)".into(),
                rip: 0x400179
            }
        );
        assert!(end_meets(Some(&ends["bad"].1), "stopped:page_fault"));
        assert!(!end_meets(Some(&ends["bad"].1), "stopped:exception"));
        assert!(!end_meets(Some(&ends["bad"].1), "stopped:write at 0x0"));
        assert!(!end_meets(Some(&ends["bad"].1), "exit:0"));
        assert!(end_meets(Some(&ends["elf"].1), "refused:elf_too_short"));
        assert!(!end_meets(Some(&ends["elf"].1), "refused:elf_bad_magic"));
        assert!(end_meets(None, "running"));
        assert!(!end_meets(None, "exit:0"));
    }
}

/// The verdict of a run whose machine ended without an exit status (ACPI power-off, the i8042
/// reset): the kernel's last `verdict:` line, held against the guests' `summary:` lines. Success
/// only if every summary line says its guest ended as expected; `None` without a verdict line
/// (the kernel never got to end the run: a triple fault, a hang).
pub fn console_verdict(log: &str) -> Option<KernelExit> {
    let verdict = log.lines().rev().find_map(|l| l.strip_prefix(VERDICT_PREFIX)).map(str::trim)?;
    let verdict = KernelExit::from_name(verdict)?;
    let every_guest_met = log
        .lines()
        .filter_map(|l| l.strip_prefix("summary: guest "))
        .all(|summary| summary.contains("(as expected)") && !summary.contains("(EXPECTATION FAILED)"));
    Some(if verdict == KernelExit::Success && !every_guest_met { KernelExit::Failure } else { verdict })
}

#[cfg(test)]
mod console_verdict_tests {
    use super::*;

    #[test]
    fn the_verdict_line_and_the_summaries_decide() {
        let met = "summary: guest 0 a: exited 0; expected exit:0 (as expected); cpu 1 ms
";
        let failed = "summary: guest 1 b: exited 3; expected exit:0 (EXPECTATION FAILED); cpu 1 ms
";
        assert_eq!(
            console_verdict(&format!(
                "{met}verdict: success
"
            )),
            Some(KernelExit::Success)
        );
        assert_eq!(
            console_verdict(&format!(
                "{met}{failed}verdict: failure
"
            )),
            Some(KernelExit::Failure)
        );
        // A kernel that says success while a summary says otherwise is not believed.
        assert_eq!(
            console_verdict(&format!(
                "{met}{failed}verdict: success
"
            )),
            Some(KernelExit::Failure)
        );
        assert_eq!(
            console_verdict(
                "verdict: success
"
            ),
            Some(KernelExit::Success),
            "an image without guests"
        );
        assert_eq!(
            console_verdict(
                "KERNEL PANIC: x
verdict: panic
"
            ),
            Some(KernelExit::Panic)
        );
        assert_eq!(console_verdict(met), None, "no verdict line: the kernel did not end the run");
        assert_eq!(
            console_verdict(
                "verdict: fine
"
            ),
            None
        );
        assert_eq!(
            console_verdict(
                "[ 1.0] INFO  guest 0 a: verdict: success
"
            ),
            None,
            "a guest's words"
        );
    }
}

/// What the kernel's `summary:` line says about one guest's work.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct GuestWork {
    /// CPU time the guest used, in microseconds.
    pub cpu_us: u64,
    /// Virtual instructions the guest issued.
    pub virtual_instructions: u64,
}

/// Every guest's work from the `summary: guest <id> <name>: ...; cpu_us=N virtual_instructions=N`
/// lines, by guest name.
pub fn guest_work(log: &str) -> BTreeMap<String, GuestWork> {
    let mut work = BTreeMap::new();
    for line in log.lines() {
        let Some(rest) = line.strip_prefix("summary: guest ") else { continue };
        let Some((_id, rest)) = rest.split_once(' ') else { continue };
        let Some((name, rest)) = rest.split_once(": ") else { continue };
        let Some((_, pairs)) = rest.rsplit_once("; ") else { continue };
        let value = |key: &str| {
            pairs.split_whitespace().find_map(|p| p.strip_prefix(key)?.strip_prefix('=')?.parse::<u64>().ok())
        };
        if let (Some(cpu_us), Some(virtual_instructions)) = (value("cpu_us"), value("virtual_instructions")) {
            work.insert(name.to_string(), GuestWork { cpu_us, virtual_instructions });
        }
    }
    work
}

#[cfg(test)]
mod guest_work_tests {
    use super::*;

    #[test]
    fn summary_lines_parse() {
        let log = "summary: guest 0 hello-0: exited 0; expected exit:0 (as expected); cpu 1 ms; cpu_us=1234 \
                   virtual_instructions=5\nsummary: guest 1 spin: stopped cpu_budget: cpu budget; x; expected \
                   stopped:cpu_budget (as expected); cpu 200 ms; cpu_us=200100 virtual_instructions=0\nsummary: guest 2 old: exited 0; cpu 3 ms\n";
        let work = guest_work(log);
        assert_eq!(work.len(), 2);
        assert_eq!(work["hello-0"], GuestWork { cpu_us: 1234, virtual_instructions: 5 });
        assert_eq!(work["spin"].cpu_us, 200_100);
    }
}

/// `(transmitted, received)` from ping's `N packets transmitted, M received` line.
pub fn ping_replies(output: &str) -> Option<(u64, u64)> {
    output.lines().find_map(|l| {
        let (sent, rest) = l.split_once(" packets transmitted, ")?;
        let received = rest.split_once(" received")?.0;
        Some((sent.trim().parse().ok()?, received.trim().parse().ok()?))
    })
}

/// One `udp-client: OK/TOTAL datagrams echoed intact by PEER, BAD corrupted, LOST lost, ...`
/// result line.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ClientResult {
    pub intact: u64,
    pub total: u64,
    pub corrupted: u64,
    pub lost: u64,
}

/// Every udp-client result line of the log, in order.
pub fn udp_client_results(log: &str) -> Vec<ClientResult> {
    log.lines()
        .filter_map(|l| {
            let rest = &l[l.find("udp-client: ")? + "udp-client: ".len()..];
            let (ratio, rest) = rest.split_once(" datagrams echoed intact by ")?;
            let (intact, total) = ratio.split_once('/')?;
            let mut fields = rest.split(", ").skip(1);
            let mut number = |unit: &str| fields.next()?.strip_suffix(unit)?.trim().parse().ok();
            Some(ClientResult {
                intact: intact.parse().ok()?,
                total: total.parse().ok()?,
                corrupted: number(" corrupted")?,
                lost: number(" lost")?,
            })
        })
        .collect()
}

/// `(intact, corrupted, lost)` from the `udp-probe PEER: N intact, N corrupted, N lost` line.
pub fn udp_probe_counts(output: &str) -> Option<(u64, u64, u64)> {
    output.lines().find_map(|l| {
        let rest = l.strip_prefix("udp-probe ")?.split_once(": ")?.1;
        let mut fields = rest.split(", ");
        let mut number = |unit: &str| fields.next()?.strip_suffix(unit)?.trim().parse().ok();
        Some((number(" intact")?, number(" corrupted")?, number(" lost")?))
    })
}

/// The transmit path the kernel reports (`transmit path: Copy; ...`): `Copy` or `Cow`.
pub fn tx_mode(log: &str) -> Option<&str> {
    log.lines().find_map(|l| Some(l[l.find("transmit path: ")? + "transmit path: ".len()..].split(';').next()?.trim()))
}

#[cfg(test)]
mod output_tests {
    use super::*;

    #[test]
    fn ping_and_probe_and_client_lines_parse_as_numbers() {
        let ping = "PING 10.77.0.16 56(84) bytes of data.\n2 packets transmitted, 0 received, 100% packet loss\n";
        assert_eq!(ping_replies(ping), Some((2, 0)));
        assert_eq!(ping_replies("ping: command not found"), None);
        assert_eq!(
            udp_probe_counts("udp-probe 10.77.0.16:7: 5 intact, 0 corrupted, 1 lost, 3 retries"),
            Some((5, 0, 1))
        );
        let log = "[ 1.0] INFO  guest 4 udp-client-0: udp-client: 0/30 datagrams echoed intact by 10.0.2.16:7, \
                   2 corrupted, 28 lost, 150 retries, 900 ms\n\
                   [ 1.1] INFO  guest 5 udp-client-1: udp-client: 30/30 datagrams echoed intact by 10.0.2.17:7, \
                   0 corrupted, 0 lost, 0 retries, 90 ms\n";
        assert_eq!(
            udp_client_results(log),
            vec![
                ClientResult { intact: 0, total: 30, corrupted: 2, lost: 28 },
                ClientResult { intact: 30, total: 30, corrupted: 0, lost: 0 }
            ]
        );
        assert_eq!(tx_mode("[ 0.1] INFO  transmit path: Cow; largest MTU 1500"), Some("Cow"));
        assert_eq!(tx_mode("nothing"), None);
    }
}

/// The `hostile-report role=ROLE key=N ...` lines of hostile guests: their counters by role.
pub fn hostile_reports(log: &str) -> BTreeMap<String, BTreeMap<String, u64>> {
    let mut reports = BTreeMap::new();
    for line in log.lines() {
        let Some(at) = line.find("hostile-report role=") else { continue };
        let mut words = line[at + "hostile-report ".len()..].split_whitespace();
        let Some(role) = words.next().and_then(|w| w.strip_prefix("role=")) else { continue };
        let counters = words
            .filter_map(|w| {
                let (key, value) = w.split_once('=')?;
                Some((key.to_string(), value.parse().ok()?))
            })
            .collect();
        reports.insert(role.to_string(), counters);
    }
    reports
}

#[cfg(test)]
mod hostile_report_tests {
    use super::*;

    #[test]
    fn reports_parse_by_role() {
        let log = "[ 1.2] INFO  guest 3 tx-ring: hostile-report role=tx-ring rounds=20 index_rejected=120 failures=0\n\
                   [ 1.3] INFO  guest 4 rx-ring: hostile-report role=rx-ring index_dropped=7 failures=1\n";
        let reports = hostile_reports(log);
        assert_eq!(reports.len(), 2);
        assert_eq!(reports["tx-ring"]["index_rejected"], 120);
        assert_eq!(reports["rx-ring"]["failures"], 1);
        assert!(!reports["tx-ring"].contains_key("late"));
    }
}
