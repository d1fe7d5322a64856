//! The kernel's counters, printed as one `stats:` line of `name=value` pairs, which tools grep.

use core::fmt;
use hypercall_abi::cmdline::STATS_PREFIX;

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Stats {
    pub uptime_ms: u64,
    pub timer_ticks: u64,
    pub frames_managed: u64,
    pub frames_free: u64,
    pub heap_bytes_used: u64,
    pub heap_bytes_free: u64,
    /// Frames the kernel heap took from the frame allocator after boot, as it grew.
    pub heap_frames_grown: u64,
}

impl Stats {
    /// The counters as `(name, value)` pairs, in the order they are printed.
    pub fn pairs(&self) -> [(&'static str, u64); 7] {
        [
            ("uptime_ms", self.uptime_ms),
            ("timer_ticks", self.timer_ticks),
            ("frames_managed", self.frames_managed),
            ("frames_free", self.frames_free),
            ("heap_bytes_used", self.heap_bytes_used),
            ("heap_bytes_free", self.heap_bytes_free),
            ("heap_frames_grown", self.heap_frames_grown),
        ]
    }
}

impl fmt::Display for Stats {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(STATS_PREFIX)?;
        for (name, value) in self.pairs() {
            write!(f, " {name}={value}")?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn line_is_prefix_then_name_value_pairs() {
        let stats = Stats { uptime_ms: 3001, timer_ticks: 300, frames_managed: 10, frames_free: 7, ..Stats::default() };
        let line = stats.to_string();
        assert!(line.starts_with("stats: uptime_ms=3001 timer_ticks=300 frames_managed=10 frames_free=7"));
        let pairs: Vec<_> = line.trim_start_matches("stats:").split_whitespace().collect();
        assert_eq!(pairs.len(), stats.pairs().len());
        assert!(pairs.iter().all(|p| p.split_once('=').unwrap().1.parse::<u64>().is_ok()));
    }
}
