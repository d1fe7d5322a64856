//! The guest table: one borrower at a time through `with_guests`, the accessors whose proofs the lints ask for, the periodic `stats:` line and the network context.

use super::*;

/// Guest `id` of the table. Ids come only from `Scheduler::add`, which boot calls once for each
/// guest it pushes onto the table (and the table never shrinks), so every id indexes it.
#[allow(clippy::indexing_slicing)] // proof above
pub(super) fn at(list: &[Guest], id: GuestId) -> &Guest {
    &list[id]
}

/// [`at`], mutable.
#[allow(clippy::indexing_slicing)] // proof at `at`
pub(super) fn at_mut(list: &mut [Guest], id: GuestId) -> &mut Guest {
    &mut list[id]
}

/// The address space of a guest that is running or scheduled: `end_guest` takes the space in
/// the same step that removes the guest from the scheduler, and only such guests run.
#[allow(clippy::expect_used)] // proof above
pub(super) fn space_of(guest: &Guest) -> &AddressSpace {
    guest.space.as_ref().expect("a scheduled guest has an address space")
}

/// The median of sorted values (0 for none).
pub(super) fn median<T: Copy + Default>(sorted: &[T]) -> T {
    sorted.get(sorted.len() / 2).copied().unwrap_or_default()
}

/// TSC ticks in units of `1/per_second` s, in 128 bits (no overflow; 0 without a TSC rate).
pub(super) fn ticks_to(ticks: u64, per_second: u64, tsc_hz: u64) -> u64 {
    let value = u128::from(ticks).saturating_mul(u128::from(per_second)).checked_div(u128::from(tsc_hz));
    value.map_or(0, |v| u64::try_from(v).unwrap_or(u64::MAX))
}

/// `amount` units of `1/per_second` s in TSC ticks (saturating).
pub(super) fn ticks_from(amount: u64, per_second: u64, tsc_hz: u64) -> u64 {
    let ticks = u128::from(amount).saturating_mul(u128::from(tsc_hz)).checked_div(u128::from(per_second));
    ticks.map_or(0, |t| u64::try_from(t).unwrap_or(u64::MAX))
}

/// Whether a guest with this expectation is expected to end by itself.
pub(super) fn expected_to_end(expect: Expect) -> bool {
    matches!(expect, Expect::Exit(_) | Expect::Stopped(_) | Expect::Refused(_))
}

/// Runs `f` on the guest table (`None` before [`boot`] installed it). The kernel runs on one CPU
/// with interrupts off, so a second borrow while one is live can only be a re-entrant call, a
/// kernel bug: it panics, naming itself, instead of spinning for ever on a lock a caller forgot
/// to drop. Whatever must run with the table released (ending the run, switching stacks) is
/// decided inside and done by the caller afterwards.
pub(super) fn with_guests<R>(f: impl FnOnce(&mut Guests) -> R) -> Option<R> {
    table().as_mut().map(f)
}

/// Installs the guest table (once, at boot).
pub(super) fn install_guests(g: Guests) {
    *table() = Some(g);
}

/// The guest table, borrowed; a second borrow while one is live panics (see [`with_guests`]).
fn table() -> spin::MutexGuard<'static, Option<Guests>> {
    match GUESTS.try_lock() {
        Some(guard) => guard,
        None => panic!("the guest table was borrowed re-entrantly"),
    }
}

/// `name=value` pairs for the kernel's stats line.
pub fn stats_pairs() -> Vec<(&'static str, u64)> {
    with_guests(|g| stats_pairs_of(g)).unwrap_or_default()
}

pub(super) fn stats_pairs_of(g: &Guests) -> Vec<(&'static str, u64)> {
    let c = &g.counters;
    let mut pairs = alloc::vec![
        ("guests_created", c.guests_created),
        ("guests_refused", c.guests_refused),
        ("guests_exited", c.guests_exited),
        ("guests_stopped", c.guests_stopped),
        ("guests_running", g.sched.live() as u64),
        ("virtual_instructions", c.virtual_instructions),
        ("guest_switches", c.guest_switches),
        // Wake-ups that took the CPU from the running guest at once (ahead in virtual time).
        ("wake_boosts", g.sched.boosts()),
        // Wakes by input from outside (frames from the NIC) that ran boosted, ahead of every
        // guest that was not (within the boost's share of the CPU).
        ("boosted_wakes", g.sched.boosted_wakes()),
        // Input wakes not boosted because 64 boosted guests were already waiting.
        ("boost_queue_full", g.sched.boost_queue_full()),
        ("lazy_pages_backed", c.lazy_pages_backed),
        ("console_writes_refused", c.console_writes_refused),
        // 1 once the kernel heap ran out and its reserve was given back (no guest grows after).
        ("heap_reserve_spent", u64::from(crate::mm::heap::reserve_spent())),
        ("heap_growth_failed", crate::mm::heap::growth_failed()),
        // Summed when reported (every few seconds), never per tick.
        (
            "guest_private_pages",
            g.list.iter().filter_map(|guest| guest.space.as_ref()).map(|s| s.owned_frames() as u64).sum()
        ),
    ];
    pairs.extend(g.net.counters.pairs());
    pairs.extend(reports::totals(&g.nics));
    pairs.push(("stamp_records", g.net.stamp_records_made));
    pairs.extend(g.timer.pairs());
    if let Some(nic) = &g.net.nic {
        pairs.extend([
            ("nic_tx_frames", nic.counters.tx_frames),
            ("nic_rx_frames", nic.counters.rx_frames),
            ("nic_rx_malformed", nic.counters.rx_malformed),
            ("nic_tx_queue_full", nic.counters.tx_queue_full),
            ("nic_notifies", nic.counters.notifies),
            ("nic_interrupts", crate::drivers::virtio_net::interrupts()),
        ]);
    }
    pairs
}

/// `stats=per-guest`: each guest's own counters on a line after every `stats:` line.
pub fn set_per_guest_stats(on: bool) {
    reports::set_per_guest(on);
}

/// Most doorbell timings kept.
pub(super) const KICK_SAMPLES: usize = 65_536;

/// Seconds between `stats:` lines while a run goes on (printed only when a counter changed).
pub(super) const STATS_INTERVAL_SECS: u64 = 5;

/// How often the console is read for a typed `q` when nothing else brings the kernel in (the
/// harness ends runs of servers with it). The one periodic wake-up of an idle kernel.
pub(super) const CONSOLE_POLL_MILLIS: u64 = 100;

/// How soon a NIC whose interrupts do not cover it (polled receive, completions without an
/// interrupt while frames are in flight) is looked at again.
pub(super) const NIC_POLL_MICROS: u64 = 1_000;

impl Guests {
    /// The kernel's own next timed work: the `stats:` line, the console's poll, the shutdown
    /// deadline, a rate limit's refill, a NIC that must be polled.
    fn kernel_work_deadline(&self, now: u64) -> Option<u64> {
        use kernel_core::guest::tickless::earlier;
        let nic_poll = self
            .net
            .nic
            .as_ref()
            .is_some_and(|nic| crate::drivers::virtio_net::polled() || nic.completions_unsignalled())
            .then(|| now.saturating_add(ticks_from(NIC_POLL_MICROS, 1_000_000, self.tsc_hz)));
        let polls = Some(self.next_stats_report.min(self.next_console_poll));
        earlier(earlier(polls, self.shutdown_deadline), earlier(self.net.rate_limit_deadline(), nic_poll))
    }

    /// Arms the tickless timer for the earliest of what wants the CPU back (the running guest's
    /// turn end while another is runnable, the earliest idle guest's deadline, the kernel's own
    /// work), or turns it off; the hardware is written only when that time changes.
    pub(super) fn arm_timer(&mut self, now: u64) {
        let wants = kernel_core::guest::tickless::Wants {
            turn_end: self.sched.preemption_deadline(),
            guest_deadline: self.sched.next_deadline(),
            kernel_work: self.kernel_work_deadline(now),
        };
        if let Some(at) = self.timer.plan(now, &wants, self.timer_limits) {
            crate::arch::clock::program_timer(at);
        }
    }

    /// Whether the console is due to be read for a `q` (and then when next).
    pub(super) fn console_poll_due(&mut self, now: u64) -> bool {
        if now < self.next_console_poll {
            return false;
        }
        self.next_console_poll = now.saturating_add(ticks_from(CONSOLE_POLL_MILLIS, 1_000, self.tsc_hz));
        true
    }

    /// Prints the stats line every few seconds if the packet counters moved.
    pub(super) fn maybe_report_stats(&mut self, now: u64) {
        // Here (on the timer and before every switch) the frame allocator is not held.
        crate::mm::heap::top_up();
        if now < self.next_stats_report {
            return;
        }
        self.next_stats_report = now.saturating_add(STATS_INTERVAL_SECS.saturating_mul(self.tsc_hz));
        let snapshot = (self.net.counters, self.counters.virtual_instructions);
        if snapshot != self.last_reported {
            self.last_reported = snapshot;
            crate::stats::print_stats_with(stats_pairs_of(self));
            reports::print_per_guest(self);
        }
    }

    pub(super) fn net_ctx(&mut self) -> crate::vnet::NetCtx<'_> {
        crate::vnet::NetCtx { net: &mut self.net, nics: &mut self.nics, sched: &mut self.sched, guests: &mut self.list }
    }

    /// Before guest `id` runs again in the address space that is active now: drop the TLB
    /// entries of pages write-protected since it last ran (one `invlpg` each; none at all when
    /// the address space is switched, which flushes them anyway).
    pub(super) fn flush_protected(&mut self, id: GuestId, address_space_switched: bool) {
        let Some(nic) = self.nics.get_mut(id).and_then(Option::as_mut) else { return };
        if !address_space_switched {
            for &page in &nic.pending_flush {
                x86_64::instructions::tlb::flush(x86_64::VirtAddr::new(page));
            }
            self.net.counters.tlb_flushes =
                self.net.counters.tlb_flushes.saturating_add(nic.pending_flush.len() as u64);
        }
        nic.pending_flush.clear();
    }

    /// Takes frames from the physical NIC and moves queued packets on; returns frames received.
    pub(super) fn poll_network(&mut self) -> usize {
        let mut ctx = self.net_ctx();
        let received = ctx.receive_from_nic();
        ctx.serve();
        received
    }
}
