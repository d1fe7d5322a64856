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
