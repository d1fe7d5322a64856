//! What guests report about themselves: the counters each guest publishes in its vNIC's shared
//! page ([`hypercall_abi::vnic::GuestCounter`]: frames taken, datagrams delivered to apps,
//! drops in its stack and apps). The `stats:` line carries them summed over every guest, live
//! and ended, and with `stats=per-guest` one `guest-stats:` line per guest follows it.
//!
//! The values are the guests' word, not facts: the kernel prints them and decides nothing by
//! them, and sums them saturating, so a guest writing nonsense garbles only its own report.
//!
//! Each `guest-stats:` line begins with the kernel's own counters of that guest (facts, see
//! [`kernel_pairs`]): its CPU weight and time, its wake-ups and their delays, and what it sent
//! and had held back by its rate limit. Every guest has a line, with a NIC or without.

use super::{at, ticks_to, GuestId, Guests};
use crate::logger::console_write_fmt;
use crate::vnet::GuestNic;
use alloc::string::String;
use alloc::vec::Vec;
use core::fmt::Write;
use core::sync::atomic::{AtomicBool, Ordering};
use hypercall_abi::cmdline::GUEST_STATS_PREFIX;
use hypercall_abi::vnic::{add_guest_counters, GuestCounter, GuestCounterValues};

static PER_GUEST: AtomicBool = AtomicBool::new(false);

/// The sums of the last reports of guests that have ended (their shared pages are gone).
static ENDED: spin::Mutex<GuestCounterValues> = spin::Mutex::new([0; GuestCounter::COUNT]);

/// Whether a `guest-stats:` line per guest follows each `stats:` line (`stats=per-guest`).
pub fn set_per_guest(on: bool) {
    PER_GUEST.store(on, Ordering::Relaxed);
}

/// The guests' counters summed over every guest with a NIC, live and ended, as `stats:` pairs.
pub fn totals(nics: &[Option<GuestNic>]) -> Vec<(&'static str, u64)> {
    let mut sum = *ENDED.lock();
    for nic in nics.iter().flatten() {
        add_guest_counters(&mut sum, &nic.published_counters());
    }
    GuestCounter::ALL.iter().zip(sum).map(|(counter, value)| (counter.name(), value)).collect()
}

/// The kernel's own counters of guest `id` (its NIC, if it has one, passed apart: an ending
/// guest's has left the table): CPU weight and time (µs), wake-ups from idle, their delay to
/// the next run (median, the upper end of its log2 bucket, and maximum; µs), and frames sent,
/// their bytes, and frames its rate limit held back.
pub(super) type KernelPairs = [(&'static str, u64); 10];

pub(super) fn kernel_pairs(g: &Guests, id: GuestId, nic: Option<&GuestNic>) -> KernelPairs {
    let us = |ticks| ticks_to(ticks, 1_000_000, g.tsc_hz);
    let delays = g.sched.wake_delays(id).copied().unwrap_or_default();
    let tx = nic.map(|nic| &nic.tx);
    [
        ("cpu_weight", u64::from(g.sched.weight(id).unwrap_or(1))),
        ("cpu_us", us(at(&g.list, id).cpu_ticks)),
        ("wakes", delays.samples()),
        ("wake_delay_median_us", us(delays.median())),
        ("wake_delay_p99_us", us(delays.quantile(99, 100))),
        ("wake_delay_max_us", us(delays.max())),
        ("idles_already_due", at(&g.list, id).idles_already_due),
        ("tx_packets", tx.map_or(0, |tx| tx.packets)),
        ("tx_bytes", tx.map_or(0, |tx| tx.bytes)),
        ("tx_held_back", tx.map_or(0, |tx| tx.held_back)),
    ]
}

/// Guest `id` ends: its NIC's last report joins the ended guests' sums, and with
/// `stats=per-guest` its line is printed one last time.
pub(super) fn guest_ended(id: usize, name: &str, kernel: &KernelPairs, nic: Option<&GuestNic>) {
    let values = nic.map(GuestNic::published_counters);
    if let Some(values) = &values {
        add_guest_counters(&mut ENDED.lock(), values);
    }
    if PER_GUEST.load(Ordering::Relaxed) {
        print_line(id, name, kernel, values.as_ref());
    }
}

/// With `stats=per-guest`: one `guest-stats:` line for each live guest.
pub(super) fn print_per_guest(g: &Guests) {
    if !PER_GUEST.load(Ordering::Relaxed) {
        return;
    }
    for (id, guest) in g.list.iter().enumerate().filter(|(_, guest)| guest.end.is_none()) {
        let nic = g.nics.get(id).and_then(Option::as_ref);
        print_line(id, &guest.name, &kernel_pairs(g, id, nic), nic.map(GuestNic::published_counters).as_ref());
    }
}

fn print_line(id: usize, name: &str, kernel: &KernelPairs, values: Option<&GuestCounterValues>) {
    let mut line = String::with_capacity(640);
    let _ = write!(line, "{GUEST_STATS_PREFIX} id={id} name={name}");
    for (key, value) in kernel {
        let _ = write!(line, " {key}={value}");
    }
    for (counter, value) in GuestCounter::ALL.iter().zip(values.into_iter().flatten()) {
        let _ = write!(line, " {}={value}", counter.name());
    }
    console_write_fmt(format_args!("{line}\n"));
}
