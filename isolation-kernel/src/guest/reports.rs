//! What guests report about themselves: the counters each guest publishes in its vNIC's shared
//! page ([`hypercall_abi::vnic::GuestCounter`]: frames taken, datagrams delivered to apps,
//! drops in its stack and apps). The `stats:` line carries them summed over every guest, live
//! and ended, and with `stats=per-guest` one `guest-stats:` line per guest follows it.
//!
//! The values are the guests' word, not facts: the kernel prints them and decides nothing by
//! them, and sums them saturating, so a guest writing nonsense garbles only its own report.

use super::Guest;
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

/// Guest `id` ends: its last report joins the ended guests' sums (and is printed on its own
/// with `stats=per-guest`).
pub fn guest_ended(id: usize, name: &str, nic: &GuestNic) {
    let values = nic.published_counters();
    add_guest_counters(&mut ENDED.lock(), &values);
    if PER_GUEST.load(Ordering::Relaxed) {
        print_line(id, name, &values);
    }
}

/// With `stats=per-guest`: one `guest-stats:` line for each live guest with a NIC.
pub fn print_per_guest(guests: &[Guest], nics: &[Option<GuestNic>]) {
    if !PER_GUEST.load(Ordering::Relaxed) {
        return;
    }
    for (id, (guest, nic)) in guests.iter().zip(nics).enumerate() {
        if let Some(nic) = nic {
            print_line(id, &guest.name, &nic.published_counters());
        }
    }
}

fn print_line(id: usize, name: &str, values: &GuestCounterValues) {
    let mut line = String::with_capacity(512);
    let _ = write!(line, "{GUEST_STATS_PREFIX} id={id} name={name}");
    for (counter, value) in GuestCounter::ALL.iter().zip(values) {
        let _ = write!(line, " {}={value}", counter.name());
    }
    console_write_fmt(format_args!("{line}\n"));
}
