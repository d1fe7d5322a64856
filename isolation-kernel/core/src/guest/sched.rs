//! The guest scheduler's bookkeeping: round-robin over runnable guests, O(1) per switch, and a
//! deadline heap for idle guests (O(log n) per sleep). It decides who runs; the kernel binary
//! does the register and address-space switching.
//!
//! An idle guest is in neither queue's hot path: it costs nothing until its deadline passes or
//! a virtual interrupt wakes it, which is what lets one kernel hold thousands of mostly idle
//! guests. Per operation, in the number of guests n:
//! - adding a guest, preempting, waking, and picking the next guest: O(1) (the run queue is an
//!   [`IdQueue`]: ending a runnable guest takes it out where it is, without a scan);
//! - idling with a deadline, and each expired deadline: O(log n) (an indexed [`DeadlineHeap`]
//!   with one entry per guest); looking for expired deadlines when none is due: O(1).
//!
//! A guest woken early keeps its heap entry (so the wake stays O(1)); the entry is moved when
//! it idles again and ignored if it comes due while the guest is not idling on it, so stale
//! entries never outnumber guests.
//!
//! Deadlines come from guests (the idle virtual instruction): any u64 at all.
//!
//! **Wake-up boost** (in the spirit of Xen's credit scheduler's BOOST): a guest woken by a
//! virtual interrupt or its deadline runs ahead of guests that used up their quanta, if it is
//! one that idles: its last run before idling was shorter than the boost limit. It goes to a
//! boost queue served before the run queue, and a guest the kernel preempts so the woken one
//! runs at once goes back to the *front* of the run queue (it keeps its turn). A guest that
//! uses its whole quantum goes to the back of the run queue and loses any boost, so a guest
//! cannot stay boosted by computing: a boosted guest runs at most one limit's worth before it
//! either idles (and may be boosted again when woken) or is preempted like any other.

//! **CPU shares** (weights, in the spirit of deficit round robin): each guest has a weight
//! (1 by default) and a credit of CPU time, in TSC ticks. A turn is worth its weight times the
//! quantum; every run is charged to the credit. The timer takes the CPU from a guest only when
//! its credit is used up: it goes to the back of the run queue and its next turn is added to
//! what it has left (an overrun is paid back from the next turn, so timer ticks that come late
//! or early cost no share over time). A guest caught by the tick with credit left keeps its
//! turn at the front of the queue; one that idles or yields ends its turn (an overrun stays
//! owed). So busy guests get the CPU in proportion to their weights, each turn at most one
//! tick off, and the error never adds up. All of it is O(1) per event and touches only the
//! guest concerned: an idle guest costs nothing per tick.
//!
//! **Wake-up delays**: the time from a wake (a virtual interrupt or a deadline) to the guest's
//! next run, in a small log2 histogram per guest ([`DelayHistogram`]). A wake's time is the
//! scheduler's clock: the time of the event being handled ([`Scheduler::set_clock`]).

use super::deadlines::DeadlineHeap;
use super::delays::DelayHistogram;
use super::queue::IdQueue;
use alloc::vec::Vec;

pub type GuestId = usize;

/// The largest CPU weight (the image config's limit).
pub use hypercall_abi::initrd::MAX_CPU_WEIGHT;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RunState {
    /// In the run queue.
    Runnable,
    /// On the CPU (at most one guest).
    Running,
    /// Waiting for a virtual interrupt or, if set, the TSC deadline.
    Idle { deadline: Option<u64> },
    /// Exited or stopped; never scheduled again.
    Done,
}

/// What the scheduler keeps of one guest.
#[derive(Clone, Debug)]
struct Entry {
    state: RunState,
    /// When it last got the CPU (while running), or when it was woken (while it waits to run
    /// after a wake).
    since: u64,
    /// CPU time left of its turn, in TSC ticks (negative: an overrun its next turn pays).
    credit: i64,
    weight: u32,
    /// Whether its last run before idling was short enough for a boost when it wakes.
    boost_eligible: bool,
    /// Woken from idle and not yet run: its wait is a wake-up delay.
    woken: bool,
    delays: DelayHistogram,
}

#[derive(Debug, Default)]
pub struct Scheduler {
    guests: Vec<Entry>,
    /// Woken guests that idle (served first), and the rest.
    boosted: IdQueue,
    run_queue: IdQueue,
    /// A run at least this long (TSC ticks) earns no boost; 0: no boosts.
    boost_limit: u64,
    /// A turn of weight 1, in TSC ticks (0: every tick ends a turn).
    quantum: u64,
    boosts: u64,
    /// The time of the event being handled (wakes are stamped with it).
    clock: u64,
    /// Deadlines of idle guests (and stale ones of guests woken early, see the module notes).
    sleepers: DeadlineHeap,
    current: Option<GuestId>,
    live: usize,
}

impl Scheduler {
    pub fn new() -> Self {
        Self::default()
    }

    /// Turns the wake-up boost on for guests whose runs before idling are shorter than
    /// `ticks` (0 turns it off).
    pub fn set_boost_limit(&mut self, ticks: u64) {
        self.boost_limit = ticks;
    }

    /// Sets the turn of a guest of weight 1, in TSC ticks (the timer's period, normally).
    pub fn set_quantum(&mut self, ticks: u64) {
        self.quantum = ticks;
        for id in 0..self.guests.len() {
            self.refill_turn(id, true);
        }
    }

    /// Gives guest `id` a CPU weight (clamped to `1..=MAX_CPU_WEIGHT`) and a fresh turn.
    pub fn set_weight(&mut self, id: GuestId, weight: u32) {
        if let Some(entry) = self.guests.get_mut(id) {
            entry.weight = weight.clamp(1, MAX_CPU_WEIGHT);
        }
        self.refill_turn(id, true);
    }

    pub fn weight(&self, id: GuestId) -> Option<u32> {
        self.guests.get(id).map(|e| e.weight)
    }

    /// The time of the event being handled: a wake now is stamped with it.
    pub fn set_clock(&mut self, now: u64) {
        self.clock = now;
    }

    /// Wake-ups that went to the boost queue.
    pub fn boosts(&self) -> u64 {
        self.boosts
    }

    /// Guest `id`'s wake-up delays so far.
    pub fn wake_delays(&self, id: GuestId) -> Option<&DelayHistogram> {
        self.guests.get(id).map(|e| &e.delays)
    }

    /// Guest `id`'s credit left of its turn (TSC ticks; negative: owed).
    pub fn credit(&self, id: GuestId) -> Option<i64> {
        self.guests.get(id).map(|e| e.credit)
    }

    /// Reserves room for `additional` more guests now, fallibly (false: the heap is short), so
    /// that registering them later does not grow storage.
    pub fn try_reserve(&mut self, additional: usize) -> bool {
        self.guests.try_reserve(additional).is_ok()
            && self.run_queue.try_reserve(additional)
            && self.boosted.try_reserve(additional)
            && self.sleepers.try_reserve(additional)
    }

    /// Registers a new guest of weight 1, runnable at once. O(1) amortized: nothing looks at
    /// the others.
    pub fn add(&mut self) -> GuestId {
        let id = self.guests.len();
        self.guests.push(Entry {
            state: RunState::Runnable,
            since: 0,
            credit: 0,
            weight: 1,
            boost_eligible: false,
            woken: false,
            delays: DelayHistogram::new(),
        });
        self.refill_turn(id, true);
        let queued = self.run_queue.register();
        let boosted = self.boosted.register();
        let timed = self.sleepers.register();
        debug_assert!(queued == id && boosted == id && timed == id, "scheduler ids out of step");
        self.run_queue.push_back(id);
        self.live = self.live.saturating_add(1);
        id
    }

    pub fn state(&self, id: GuestId) -> Option<RunState> {
        self.guests.get(id).map(|e| e.state)
    }

    pub fn current(&self) -> Option<GuestId> {
        self.current
    }

    /// Guests not yet done.
    pub fn live(&self) -> usize {
        self.live
    }

    pub fn runnable(&self) -> usize {
        self.run_queue.len().saturating_add(self.boosted.len())
    }

    /// Deadline entries held (at most one per guest).
    pub fn sleeper_entries(&self) -> usize {
        self.sleepers.len()
    }

    /// Queue and heap entries visited so far: the scheduler's work, which tests compare across
    /// guest counts.
    pub fn work(&self) -> u64 {
        self.run_queue.visits().saturating_add(self.boosted.visits()).saturating_add(self.sleepers.visits())
    }

    /// A turn's worth of CPU for guest `id`: its weight times the quantum.
    fn turn(&self, id: GuestId) -> i64 {
        let weight = self.guests.get(id).map_or(1, |e| e.weight);
        i64::try_from(self.quantum.saturating_mul(u64::from(weight))).unwrap_or(i64::MAX)
    }

    /// Starts guest `id`'s next turn: what it has left (at most nothing, unless `fresh`: then
    /// nothing is carried) plus a turn.
    fn refill_turn(&mut self, id: GuestId, fresh: bool) {
        let turn = self.turn(id);
        if let Some(entry) = self.guests.get_mut(id) {
            let carried = if fresh { 0 } else { entry.credit.min(0) };
            entry.credit = carried.saturating_add(turn);
        }
    }

    /// Charges the current guest's run since it got the CPU to its credit, and takes it off the
    /// CPU (runnable); returns it and whether credit is left.
    fn charge_current(&mut self, now: u64) -> Option<(GuestId, bool)> {
        let id = self.current.take()?;
        let entry = self.guests.get_mut(id)?;
        let ran = now.saturating_sub(entry.since);
        entry.credit = entry.credit.saturating_sub(i64::try_from(ran).unwrap_or(i64::MAX));
        entry.state = RunState::Runnable;
        Some((id, entry.credit > 0))
    }

    /// The current guest yields: its turn ends, to the back of the run queue.
    pub fn preempt_current(&mut self, now: u64) {
        if let Some((id, _)) = self.charge_current(now) {
            self.refill_turn(id, false);
            self.run_queue.push_back(id);
        }
    }

    /// The timer took the CPU from the current guest: to the front of the run queue if it has
    /// credit left (it keeps its turn: a guest caught in the middle of a short run, or a heavy
    /// guest's longer turn), else to the back with its next turn.
    pub fn preempt_current_by_timer(&mut self, now: u64) {
        let Some((id, credit_left)) = self.charge_current(now) else { return };
        if credit_left {
            self.run_queue.push_front(id);
        } else {
            self.refill_turn(id, false);
            self.run_queue.push_back(id);
        }
    }

    /// The current guest steps aside for a guest just woken with a boost: it goes to the front
    /// of the run queue, keeping its turn (if its credit is used up, to the back with its next
    /// turn, as on a tick). Without a boosted guest waiting it stays current (false: nothing to
    /// switch to).
    pub fn preempt_current_for_woken(&mut self, now: u64) -> bool {
        if self.boosted.is_empty() {
            return false;
        }
        self.preempt_current_by_timer(now);
        true
    }

    /// The current guest idles until `deadline` (if any) or a virtual interrupt; `now` tells
    /// how long it ran (a short run earns a boost when it wakes). Its turn ends.
    pub fn idle_current(&mut self, deadline: Option<u64>, now: u64) {
        let Some(id) = self.current else { return };
        let ran = self.guests.get(id).map_or(0, |e| now.saturating_sub(e.since));
        let boost_limit = self.boost_limit;
        if self.charge_current(now).is_none() {
            return;
        }
        self.refill_turn(id, false);
        if let Some(entry) = self.guests.get_mut(id) {
            entry.boost_eligible = ran < boost_limit;
            entry.state = RunState::Idle { deadline };
        }
        if let Some(d) = deadline {
            self.sleepers.set(id, d);
        }
    }

    /// The guest is finished (exited or stopped), wherever it was.
    pub fn finish(&mut self, id: GuestId) {
        match self.state(id) {
            None | Some(RunState::Done) => return,
            Some(RunState::Runnable) => {
                self.run_queue.remove(id);
                self.boosted.remove(id);
            }
            Some(RunState::Running) => self.current = None,
            Some(RunState::Idle { .. }) => {}
        }
        self.sleepers.remove(id);
        self.set_state(id, RunState::Done);
        self.live = self.live.saturating_sub(1);
    }

    /// Sets a known guest's state (ids come from [`Scheduler::add`]; others are ignored).
    fn set_state(&mut self, id: GuestId, state: RunState) {
        if let Some(entry) = self.guests.get_mut(id) {
            entry.state = state;
        }
    }

    /// A virtual interrupt for `id`: an idle guest becomes runnable. Returns whether it woke.
    /// O(1): its deadline entry, if any, stays behind (see the module notes).
    pub fn wake(&mut self, id: GuestId) -> bool {
        let clock = self.clock;
        let Some(entry) = self.guests.get_mut(id) else { return false };
        if !matches!(entry.state, RunState::Idle { .. }) {
            return false;
        }
        entry.state = RunState::Runnable;
        entry.woken = true;
        entry.since = clock;
        if entry.boost_eligible {
            self.boosted.push_back(id);
            self.boosts = self.boosts.saturating_add(1);
        } else {
            self.run_queue.push_back(id);
        }
        true
    }

    /// Wakes every idle guest whose deadline is at or before `now`; returns how many woke.
    pub fn wake_expired(&mut self, now: u64) -> usize {
        self.clock = self.clock.max(now);
        let mut woken: usize = 0;
        while let Some((deadline, id)) = self.sleepers.pop_expired(now) {
            // An entry left by a guest woken early is dropped here unless it idles on it.
            let idling_on_it = self.state(id) == Some(RunState::Idle { deadline: Some(deadline) });
            if idling_on_it && self.wake(id) {
                woken = woken.saturating_add(1);
            }
        }
        woken
    }

    /// Picks the next guest to run (after waking expired sleepers); it becomes current.
    /// The current guest, if any, must have been moved out with one of the calls above.
    pub fn schedule(&mut self, now: u64) -> Option<GuestId> {
        debug_assert!(self.current.is_none(), "schedule with a guest still current");
        self.wake_expired(now);
        let id = self.boosted.pop_front().or_else(|| self.run_queue.pop_front())?;
        if let Some(entry) = self.guests.get_mut(id) {
            if core::mem::replace(&mut entry.woken, false) {
                entry.delays.record(now.saturating_sub(entry.since));
            }
            entry.state = RunState::Running;
            entry.since = now;
        }
        self.current = Some(id);
        Some(id)
    }

    /// The earliest pending idle deadline (possibly stale: then waking finds nobody).
    pub fn next_deadline(&self) -> Option<u64> {
        self.sleepers.peek().map(|(deadline, _)| deadline)
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing, clippy::arithmetic_side_effects)]
mod tests {
    use super::*;

    #[test]
    fn round_robin_in_arrival_order() {
        let mut s = Scheduler::new();
        let ids: Vec<_> = (0..3).map(|_| s.add()).collect();
        let mut order = Vec::new();
        for _ in 0..6 {
            order.push(s.schedule(0).unwrap());
            s.preempt_current(0);
        }
        assert_eq!(order, [ids[0], ids[1], ids[2], ids[0], ids[1], ids[2]]);
    }

    #[test]
    fn yield_with_nobody_else_runs_the_same_guest() {
        let mut s = Scheduler::new();
        let a = s.add();
        assert_eq!(s.schedule(0), Some(a));
        s.preempt_current(0);
        assert_eq!(s.schedule(0), Some(a));
        assert_eq!(s.state(a), Some(RunState::Running));
    }

    #[test]
    fn idle_guests_are_skipped_until_their_deadline() {
        let mut s = Scheduler::new();
        let a = s.add();
        let b = s.add();
        assert_eq!(s.schedule(0), Some(a));
        s.idle_current(Some(100), 0);
        assert_eq!(s.schedule(10), Some(b));
        s.idle_current(Some(50), 0);
        assert_eq!(s.schedule(20), None, "both idle");
        assert_eq!(s.next_deadline(), Some(50));
        assert_eq!(s.schedule(50), Some(b), "b's deadline passed first");
        s.preempt_current(0);
        assert_eq!(s.schedule(60), Some(b), "a still sleeps");
        s.preempt_current(0);
        assert_eq!(s.schedule(100), Some(b), "a woke behind b in the queue");
        s.preempt_current(0);
        assert_eq!(s.schedule(100), Some(a));
    }

    #[test]
    fn virtual_interrupt_wakes_early_and_stale_deadline_is_ignored() {
        let mut s = Scheduler::new();
        let a = s.add();
        s.schedule(0);
        s.idle_current(Some(100), 0);
        assert!(s.wake(a));
        assert!(!s.wake(a), "already runnable");
        assert_eq!(s.schedule(10), Some(a));
        s.idle_current(None, 0); // idle without deadline this time
        assert_eq!(s.wake_expired(1000), 0, "the old deadline entry is stale");
        assert_eq!(s.state(a), Some(RunState::Idle { deadline: None }));
        assert_eq!(s.schedule(1000), None);
    }

    #[test]
    fn finished_guests_leave_every_queue() {
        let mut s = Scheduler::new();
        let a = s.add();
        let b = s.add();
        let c = s.add();
        assert_eq!(s.schedule(0), Some(a));
        s.idle_current(Some(5), 0);
        s.finish(a); // stopped while idle
        s.finish(b); // stopped while runnable
        assert_eq!(s.live(), 1);
        assert_eq!(s.schedule(10), Some(c));
        s.finish(c); // while running
        assert_eq!(s.current(), None);
        assert_eq!(s.live(), 0);
        assert_eq!(s.schedule(10), None);
        s.finish(c);
        assert_eq!(s.live(), 0, "finishing twice changes nothing");
    }

    #[test]
    fn thousands_of_idle_guests_do_not_slow_the_run_queue() {
        let mut s = Scheduler::new();
        let busy = s.add();
        let sleepers: Vec<_> = (0..5000).map(|_| s.add()).collect();
        // Let every sleeper run once and go idle far in the future.
        s.schedule(0);
        s.preempt_current(0);
        for _ in &sleepers {
            s.schedule(0).unwrap();
            s.idle_current(Some(1_000_000), 0);
        }
        assert_eq!(s.runnable(), 1);
        for _ in 0..10 {
            assert_eq!(s.schedule(1), Some(busy));
            s.preempt_current(0);
        }
    }

    /// `idle` guests that ran once and idle far in the future, and one busy guest, which is
    /// running.
    fn busy_among_sleepers(idle: usize) -> (Scheduler, GuestId) {
        let mut s = Scheduler::new();
        let busy = s.add();
        for _ in 0..idle {
            s.add();
        }
        assert_eq!(s.schedule(0), Some(busy));
        s.preempt_current(0);
        for n in 0..idle {
            s.schedule(0).unwrap();
            s.idle_current(Some(1_000_000_000 + n as u64), 0);
        }
        assert_eq!(s.schedule(1), Some(busy));
        (s, busy)
    }

    /// Work of `ticks` timer ticks for the busy guest (preempted, scheduled again).
    fn tick_work(s: &mut Scheduler, busy: GuestId, ticks: u64) -> u64 {
        let before = s.work();
        for t in 0..ticks {
            s.preempt_current(0);
            assert_eq!(s.schedule(2 + t), Some(busy));
        }
        s.work() - before
    }

    #[test]
    fn ten_thousand_idle_guests_cost_nothing_per_tick() {
        let (mut few, busy_few) = busy_among_sleepers(10);
        let (mut many, busy_many) = busy_among_sleepers(10_000);
        let work_few = tick_work(&mut few, busy_few, 1_000);
        let work_many = tick_work(&mut many, busy_many, 1_000);
        assert_eq!(work_many, work_few, "work per tick must not depend on idle guests");
        assert!(work_many <= 6 * 1_000, "{work_many} entries visited in 1,000 ticks");
        assert_eq!(many.sleeper_entries(), 10_000);
        assert_eq!(many.next_deadline(), Some(1_000_000_000));
    }

    #[test]
    fn waking_creating_and_ending_guests_do_not_scan_the_others() {
        let (mut few, _) = busy_among_sleepers(10);
        let (mut many, _) = busy_among_sleepers(10_000);
        let work = |s: &mut Scheduler, idle: usize| {
            let before = s.work();
            // A virtual interrupt for an idle guest in the middle, a new guest, and a runnable
            // guest (the one just woken) ended where it waits in the run queue.
            let middle = idle / 2;
            assert!(s.wake(middle));
            let new = s.add();
            s.finish(middle);
            assert_eq!(s.state(new), Some(RunState::Runnable));
            s.work() - before
        };
        // Ending removes the woken guest's stale deadline entry: O(log n), the only part that
        // grows, and it grows with the logarithm.
        let (work_few, work_many) = (work(&mut few, 10), work(&mut many, 10_000));
        assert!(work_many <= work_few + 4 * 14, "{work_few} with 10 idle guests, {work_many} with 10,000");
    }

    #[test]
    fn a_guest_woken_early_again_and_again_keeps_one_deadline_entry() {
        let mut s = Scheduler::new();
        let a = s.add();
        for round in 0..10_000u64 {
            assert_eq!(s.schedule(round), Some(a));
            s.idle_current(Some(u64::MAX - round), 0); // far away, and every time another one
            assert!(s.wake(a));
            assert!(s.sleeper_entries() <= 1, "round {round}: {} entries", s.sleeper_entries());
        }
        assert_eq!(s.schedule(0), Some(a));
        s.idle_current(None, 0);
        assert_eq!(s.wake_expired(u64::MAX), 0, "the stale entry wakes nobody");
        assert_eq!(s.sleeper_entries(), 0);
        assert_eq!(s.state(a), Some(RunState::Idle { deadline: None }));
    }

    #[test]
    fn a_stale_entry_moved_by_a_new_sleep_wakes_at_the_new_deadline() {
        let mut s = Scheduler::new();
        let a = s.add();
        s.schedule(0);
        s.idle_current(Some(100), 0);
        s.wake(a);
        s.schedule(1);
        s.idle_current(Some(300), 0); // the entry moves from 100 to 300
        assert_eq!(s.wake_expired(200), 0);
        assert_eq!(s.wake_expired(300), 1);
        assert_eq!(s.schedule(300), Some(a));
        s.preempt_current(0);
        s.finish(a);
        assert_eq!((s.live(), s.runnable(), s.sleeper_entries()), (0, 0, 0));
    }

    #[test]
    fn a_woken_guest_that_idles_runs_before_guests_that_used_their_quanta() {
        let mut s = Scheduler::new();
        s.set_boost_limit(100);
        s.set_quantum(1_000);
        let (echo, hog1, hog2) = (s.add(), s.add(), s.add());
        assert_eq!(s.schedule(0), Some(echo));
        s.idle_current(None, 10); // a short run: eligible
        assert_eq!(s.schedule(10), Some(hog1));
        s.preempt_current(0);
        assert_eq!(s.schedule(1_000), Some(hog2));
        // A packet for the echo guest while hog2 runs: it runs next, hog2 keeps its turn.
        assert!(s.wake(echo));
        assert_eq!(s.boosts(), 1);
        assert!(s.preempt_current_for_woken(1_010));
        assert_eq!(s.schedule(1_010), Some(echo));
        s.idle_current(None, 1_020);
        assert_eq!(s.schedule(1_020), Some(hog2), "the preempted guest kept its place");
        s.preempt_current(0);
        assert_eq!(s.schedule(2_000), Some(hog1));
        // Without a boosted guest waiting, nobody steps aside.
        assert!(!s.preempt_current_for_woken(2_010));
        assert_eq!(s.current(), Some(hog1));
    }

    #[test]
    fn a_guest_that_computes_earns_no_boost() {
        let mut s = Scheduler::new();
        s.set_boost_limit(100);
        s.set_quantum(1_000);
        let (spinner, other) = (s.add(), s.add());
        assert_eq!(s.schedule(0), Some(spinner));
        s.idle_current(Some(500), 400); // ran 400 ticks before idling: too long
        assert_eq!(s.schedule(400), Some(other));
        assert!(s.wake(spinner));
        assert_eq!(s.boosts(), 0);
        assert!(!s.preempt_current_for_woken(410), "it waits its turn in the run queue");
        s.preempt_current(0);
        assert_eq!(s.schedule(600), Some(spinner));
        // A short run this time: boosted when woken, then preempted by the timer after a whole
        // quantum: back of the run queue, the boost gone.
        s.idle_current(None, 610);
        assert_eq!(s.schedule(610), Some(other));
        assert!(s.wake(spinner));
        assert_eq!(s.boosts(), 1);
        s.preempt_current(0);
        assert_eq!(s.schedule(700), Some(spinner), "boosted: ahead of the guest that used its quantum");
        s.preempt_current(0);
        assert_eq!(s.schedule(800), Some(other));
        s.preempt_current(0);
        assert_eq!(s.schedule(900), Some(spinner));
        s.finish(other);
        assert_eq!(s.runnable(), 0, "the spinner is current, the other gone");
    }

    #[test]
    fn finishing_a_boosted_guest_takes_it_out_of_the_boost_queue() {
        let mut s = Scheduler::new();
        s.set_boost_limit(100);
        s.set_quantum(1_000);
        let (a, b) = (s.add(), s.add());
        assert_eq!(s.schedule(0), Some(a));
        s.idle_current(None, 1);
        assert_eq!(s.schedule(1), Some(b));
        assert!(s.wake(a));
        s.finish(a);
        assert_eq!(s.runnable(), 0);
        assert!(!s.preempt_current_for_woken(2));
        s.preempt_current(0);
        assert_eq!(s.schedule(2), Some(b));
    }

    #[test]
    fn the_tick_in_the_middle_of_a_short_run_keeps_the_turn() {
        let mut s = Scheduler::new();
        s.set_boost_limit(100);
        s.set_quantum(1_000);
        let (echo, spinner) = (s.add(), s.add());
        assert_eq!(s.schedule(0), Some(echo));
        s.preempt_current_by_timer(30); // caught 30 ticks into a short run: keeps its turn
        assert_eq!(s.schedule(30), Some(echo));
        s.preempt_current_by_timer(1_030); // a whole quantum: its share is used
        assert_eq!(s.schedule(1_030), Some(spinner));
        s.preempt_current_by_timer(2_030);
        assert_eq!(s.schedule(2_030), Some(echo));
    }

    /// Busy guests (they never idle) under timer ticks of `period` +- `jitter` TSC ticks, each
    /// switch costing the kernel `switch` ticks, for `ticks` ticks: the CPU time each guest got.
    fn run_busy(s: &mut Scheduler, guests: usize, ticks: u64, period: u64, jitter: u64, switch: u64) -> Vec<u64> {
        let mut cpu = vec![0; guests];
        let mut now = 0;
        let mut current = s.schedule(now).unwrap();
        let mut since = now;
        let mut rng = 0x1234_5678u64;
        for _ in 0..ticks {
            rng = rng.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1_442_695_040_888_963_407);
            now += period - jitter + (rng >> 33) % (2 * jitter + 1);
            cpu[current] += now - since;
            s.preempt_current_by_timer(now);
            now += switch;
            current = s.schedule(now).unwrap();
            since = now;
        }
        cpu
    }

    #[test]
    fn busy_guests_share_the_cpu_in_proportion_to_their_weights() {
        for (weights, jitter) in [(&[1u32, 3][..], 0), (&[1, 3], 300), (&[1, 2, 5], 450), (&[16, 1], 100)] {
            let mut s = Scheduler::new();
            s.set_boost_limit(100);
            s.set_quantum(1_000);
            for &w in weights {
                let id = s.add();
                s.set_weight(id, w);
            }
            let cpu = run_busy(&mut s, weights.len(), 20_000, 1_000, jitter, 7);
            let total: u64 = cpu.iter().sum();
            let weight_sum: u32 = weights.iter().sum();
            for (id, &w) in weights.iter().enumerate() {
                let share = cpu[id] as f64 / total as f64;
                let want = f64::from(w) / f64::from(weight_sum);
                assert!(
                    (share / want - 1.0).abs() < 0.02,
                    "weights {weights:?}, jitter {jitter}: guest {id} got {share:.4}, want {want:.4}"
                );
            }
        }
    }

    #[test]
    fn equal_weights_take_turns_of_one_tick() {
        let mut s = Scheduler::new();
        s.set_quantum(1_000);
        let (a, b) = (s.add(), s.add());
        let mut order = Vec::new();
        let mut now = 0;
        s.schedule(now);
        for _ in 0..6 {
            now += 1_000;
            s.preempt_current_by_timer(now);
            order.push(s.schedule(now).unwrap());
        }
        assert_eq!(order, [b, a, b, a, b, a]);
    }

    #[test]
    fn a_heavy_guest_keeps_its_turn_across_ticks_and_an_overrun_is_paid_back() {
        let mut s = Scheduler::new();
        s.set_quantum(1_000);
        let (heavy, light) = (s.add(), s.add());
        s.set_weight(heavy, 3);
        assert_eq!(s.credit(heavy), Some(3_000));
        assert_eq!(s.schedule(0), Some(heavy));
        for tick in [1_000, 2_000] {
            s.preempt_current_by_timer(tick);
            assert_eq!(s.schedule(tick), Some(heavy), "credit left at {tick}");
        }
        // A late tick: 500 ticks over its turn, owed from the next one.
        s.preempt_current_by_timer(3_500);
        assert_eq!(s.credit(heavy), Some(2_500));
        assert_eq!(s.schedule(3_500), Some(light));
        s.preempt_current_by_timer(4_500);
        assert_eq!(s.schedule(4_500), Some(heavy));
        // Idling ends the turn but the debt stays: a fresh turn minus nothing owed here.
        s.idle_current(None, 4_600);
        assert_eq!(s.credit(heavy), Some(3_000));
        // Weights are clamped to 1..=MAX_CPU_WEIGHT.
        s.set_weight(light, 0);
        assert_eq!(s.weight(light), Some(1));
        s.set_weight(light, 1_000);
        assert_eq!(s.weight(light), Some(MAX_CPU_WEIGHT));
        s.set_weight(99, 2); // unknown: ignored
    }

    #[test]
    fn a_boosted_wake_runs_inside_a_heavy_guest_turn_which_goes_on_after() {
        let mut s = Scheduler::new();
        s.set_boost_limit(100);
        s.set_quantum(1_000);
        let (echo, heavy) = (s.add(), s.add());
        s.set_weight(heavy, 16);
        assert_eq!(s.schedule(0), Some(echo));
        s.idle_current(None, 10);
        assert_eq!(s.schedule(10), Some(heavy));
        s.set_clock(5_000);
        assert!(s.wake(echo));
        assert!(s.preempt_current_for_woken(5_000));
        assert_eq!(s.schedule(5_020), Some(echo));
        s.idle_current(None, 5_050);
        assert_eq!(s.schedule(5_050), Some(heavy), "the heavy guest's turn goes on");
        assert_eq!(s.credit(heavy), Some(16_000 - 4_990));
    }

    #[test]
    fn wake_delays_run_from_the_wake_to_the_run() {
        let mut s = Scheduler::new();
        s.set_boost_limit(100);
        s.set_quantum(100_000);
        let (a, b) = (s.add(), s.add());
        assert_eq!(s.schedule(0), Some(a));
        s.idle_current(None, 10);
        assert_eq!(s.schedule(10), Some(b));
        s.set_clock(1_000);
        assert!(s.wake(a)); // boosted, but b runs on until the kernel switches
        assert!(s.preempt_current_for_woken(60_000));
        assert_eq!(s.schedule(60_000), Some(a));
        let delays = s.wake_delays(a).unwrap();
        assert_eq!((delays.samples(), delays.max()), (1, 59_000));
        assert!((59_000..=2 * 59_000).contains(&delays.median()));
        // Guests preempted or scheduled first record no wake-up delay.
        assert_eq!(s.wake_delays(b).unwrap().samples(), 0);
        // A deadline wake is stamped with the time it was found expired (a short run: boosted).
        s.idle_current(Some(70_000), 60_010);
        assert_eq!(s.schedule(80_000), Some(a));
        assert_eq!(s.wake_delays(a).unwrap().samples(), 2);
        assert_eq!(s.wake_delays(a).unwrap().max(), 59_000);
    }
}
