//! The kernel's `stats:` line: its own counters, then whatever the caller adds (the guests' and
//! the network's).

use crate::arch::clock;
use crate::mm::{self, phys};
use kernel_core::stats::Stats;

fn kernel_stats() -> Stats {
    let (frames_managed, frames_free) = phys::with_frames(|f| (f.managed_frames(), f.free_frames()));
    let (heap_bytes_used, heap_bytes_free) = mm::heap::usage();
    Stats {
        uptime_ms: clock::uptime_micros() / 1000,
        timer_ticks: clock::timer_ticks(),
        frames_managed,
        frames_free,
        heap_bytes_used,
        heap_bytes_free,
        heap_frames_grown: mm::heap::grown_frames(),
    }
}

/// Prints the `stats:` line with these guest and network counters.
pub fn print_stats_with(guest_pairs: alloc::vec::Vec<(&'static str, u64)>) {
    let mut text = alloc::string::String::new();
    for (name, value) in guest_pairs {
        text += &alloc::format!(" {name}={value}");
    }
    crate::logger::console_write_fmt(format_args!("{}{text}\n", kernel_stats()));
}
