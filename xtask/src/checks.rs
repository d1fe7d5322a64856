//! Reading the kernel's console log: the facts the integration tests assert on.

use hypercall_abi::cmdline::STATS_PREFIX;
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
    Stopped { cause: String, rip: u64 },
    Refused(String),
}

/// Every guest's end from the fixed-form lines `guest <id> <name> exited <code>`,
/// `guest <id> <name> stopped: <cause> at rip <hex>` and `guest <id> <name> refused: <error>`,
/// by guest name.
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
        } else if let Some(stop) = tail.strip_prefix("stopped: ") {
            let Some((cause, rip)) = stop.rsplit_once(" at rip 0x") else { continue };
            let Ok(rip) = u64::from_str_radix(rip.trim(), 16) else { continue };
            GuestEnd::Stopped { cause: cause.to_string(), rip }
        } else if let Some(error) = tail.strip_prefix("refused: ") {
            GuestEnd::Refused(error.to_string())
        } else {
            continue;
        };
        ends.insert(name.to_string(), (id, end));
    }
    ends
}

/// Whether `end` satisfies a manifest expectation (`exit:N`, `stopped:TEXT`, `refused:TEXT`, `any`).
pub fn end_meets(end: Option<&GuestEnd>, expect: &str) -> bool {
    use hypercall_abi::initrd::Expect;
    match (Expect::parse(expect), end) {
        (Some(Expect::Any), _) => true,
        (Some(Expect::Running), None) => true,
        (Some(Expect::Exit(want)), Some(GuestEnd::Exited(code))) => *code == want,
        (Some(Expect::Stopped(text)), Some(GuestEnd::Stopped { cause, .. })) => cause.contains(text),
        (Some(Expect::Refused(text)), Some(GuestEnd::Refused(error))) => error.contains(text),
        _ => false,
    }
}

#[cfg(test)]
mod guest_end_tests {
    use super::*;

    #[test]
    fn end_lines_parse() {
        let log =
            "guest 3 hello-3 exited 0\nguest 4 bad stopped: page fault: write at 0x0 (not mapped) at rip 0x400179\n\
                   guest 5 elf refused: bad ELF file: x\n[ 0.1] INFO  guest 3 hello-3: exited 7\nguest x y exited 1\n";
        let ends = guest_ends(log);
        assert_eq!(ends.len(), 3);
        assert_eq!(ends["hello-3"], (3, GuestEnd::Exited(0)));
        assert_eq!(
            ends["bad"].1,
            GuestEnd::Stopped { cause: "page fault: write at 0x0 (not mapped)".into(), rip: 0x400179 }
        );
        assert!(end_meets(Some(&ends["bad"].1), "stopped:write at 0x0"));
        assert!(!end_meets(Some(&ends["bad"].1), "exit:0"));
        assert!(end_meets(Some(&ends["elf"].1), "refused:bad ELF"));
        assert!(end_meets(None, "running"));
        assert!(!end_meets(None, "exit:0"));
    }
}
