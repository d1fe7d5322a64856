//! The guest scheduler's bookkeeping: who runs, in the spirit of BVT (borrowed virtual time)
//! and Linux's CFS. It decides who runs; the kernel binary does the register and
//! address-space switching.
//!
//! **Virtual time.** Each guest has a virtual time that advances while it runs, by its CPU time
//! scaled by `MAX_CPU_WEIGHT / weight` (a guest of weight 3 advances a third as fast as one of
//! weight 1). The runnable guest with the least virtual time runs next. So busy guests get the
//! CPU in proportion to their weights, and because what a guest ran is carried in its virtual
//! time, timer ticks that come late or early cost no share over time.
//!
//! **Turns.** The timer takes the CPU from the running guest only after it has run at least
//! half a quantum and only if another runnable guest is not ahead of it in virtual time: equal
//! busy guests take turns of one quantum; a guest of weight 3 beside one of weight 1 runs three
//! quanta for its neighbour's one.
//!
//! **Wake-ups** (the boost of the issue, BVT's warp in miniature). A guest woken by a virtual
//! interrupt or its deadline gets back at most a fixed amount of virtual time it did not use
//! while idle: its virtual time becomes at least the scheduler's floor (the least virtual time
//! of the running and runnable guests, never decreasing) minus [`SLEEPER_BONUS_QUANTA`] quanta
//! of a weight-1 guest. If that is behind the running guest's, it takes the CPU at once (the
//! kernel switches on the trap that woke it). A guest that idles often but computes a lot gains nothing: its own
//! virtual time is already ahead, so it waits its turn. No guest can stay ahead by waking
//! itself: every run is charged.
//!
//! **Input boost** (Xen's credit BOOST, bounded). A guest woken by input from outside the
//! machine (a frame from the physical NIC; [`WakeKind::Input`]) is *boosted*: it runs before
//! every guest that is not, preempting the running one at once, and what it runs while boosted
//! is not charged to its virtual time but to one budget shared by all guests, refilled at
//! [`BOOST_SHARE`] of real time (up to [`BOOST_BURST_QUANTA`] quanta banked). So a service that
//! answers requests gets the CPU as they come even when it asks for more than its fair part
//! beside busy neighbours (under TCG an echo costs ~40-80 µs of CPU, i.e. 40% of the CPU at
//! back-to-back requests: more than the quarter three hogs leave it), while the guests that are
//! not boosted always keep at least `1 - BOOST_SHARE` of the CPU among them, shared by weight.
//! A boost ends when the guest idles, after [`BOOST_RUN_QUANTA`] of running, or when the budget
//! is spent; then it competes by virtual time like any other. Wakes by the guest's own doing
//! (its timer deadline, frames from other guests, its own completions) are not boosted: a guest
//! cannot boost itself, only the outside world can.
//!
//! **Cost.** Runnable guests are in a min-heap by virtual time (O(log n) to add or take one),
//! idle ones only in the deadline heap (O(log n) per sleep; looking for expired deadlines when
//! none is due: O(1)). A timer tick costs O(1) when the running guest keeps the CPU and O(log n)
//! in the *runnable* guests when it switches: an idle guest costs nothing per tick, which is
//! what lets one kernel hold thousands of mostly idle guests.
//!
//! A guest woken early keeps its deadline entry (so the wake stays cheap); the entry is moved
//! when it idles again and ignored if it comes due while the guest is not idling on it, so
//! stale entries never outnumber guests. Deadlines come from guests (the idle virtual
//! instruction): any u64 at all.
//!
//! **Wake-up delays**: the time from a wake to the guest's next run, in a small log2 histogram
//! per guest ([`DelayHistogram`]). A wake's time is the scheduler's clock: the time of the event
//! being handled ([`Scheduler::set_clock`]); for a deadline, the deadline itself (so the delay
//! includes how late the timer fired).

use super::deadlines::DeadlineHeap;
use super::delays::DelayHistogram;
use alloc::collections::VecDeque;
use alloc::vec::Vec;

pub type GuestId = usize;

/// The largest CPU weight (the image config's limit).
pub use hypercall_abi::initrd::MAX_CPU_WEIGHT;

/// Virtual time a woken guest may be behind the floor, in quanta of a weight-1 guest: enough
/// that a guest which idles most of the time runs ahead of busy ones when woken, bounded so
/// that idling cannot bank CPU time.
pub const SLEEPER_BONUS_QUANTA: u64 = 1;

/// The part of real time that boosted runs may take at most, over time: `(numerator,
/// denominator)`. The guests that are not boosted keep the rest.
pub const BOOST_SHARE: (u64, u64) = (1, 2);
/// Boosted CPU time that may be banked, in quanta (a burst of requests after a quiet spell).
pub const BOOST_BURST_QUANTA: u64 = 4;
/// A boosted run longer than this, in quanta, loses its boost (it competes by virtual time).
pub const BOOST_RUN_QUANTA: u64 = 1;
/// A wake is boosted only with at least this part of a quantum in the budget (a boost that
/// would end at once only costs two switches).
pub const BOOST_MIN_QUANTUM_FRACTION: u64 = 4;
/// Boosted guests waiting for the CPU at most (a FIFO of fixed room, so that boosting costs no
/// memory per guest; a wake that finds it full is not boosted, and counted).
pub const BOOST_QUEUE: usize = 64;

/// What woke a guest: input from outside the machine (boost-eligible) or anything else.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum WakeKind {
    #[default]
    Internal,
    /// A frame from the physical NIC.
    Input,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RunState {
    /// Waiting for the CPU.
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
    /// Its run is charged to its virtual time up to here (while running).
    charged: u64,
    /// Its virtual time (see the module notes).
    vtime: u64,
    weight: u32,
    /// Woken from idle and not yet run: its wait is a wake-up delay.
    woken: bool,
    /// Boosted (see the module notes): waiting in the boosted queue, or running boosted.
    boosted: bool,
    delays: DelayHistogram,
}

#[derive(Debug, Default)]
pub struct Scheduler {
    guests: Vec<Entry>,
    /// Runnable guests by virtual time (ties: the lower id first).
    runnable: DeadlineHeap,
    /// Boosted runnable guests, first come first served: they run before those in `runnable`.
    boosted: VecDeque<GuestId>,
    /// Wakes that would have been boosted but found the boosted queue full.
    boost_queue_full: u64,
    /// Boosted CPU time that may still be spent (TSC ticks), and when it was last refilled.
    boost_tokens: u64,
    boost_refilled: u64,
    boosted_wakes: u64,
    /// What wakes are made of now (set by the kernel around its receive path).
    wake_kind: WakeKind,
    /// A turn of the timer, in TSC ticks (0: every tick may switch).
    quantum: u64,
    /// No runnable guest's virtual time is below it for long: the least virtual time of the
    /// guests picked to run, never decreasing.
    floor: u64,
    /// A guest was woken while another ran, since the last
    /// [`Scheduler::preempt_current_for_woken`].
    woken_while_running: bool,
    boosts: u64,
    /// The time of the event being handled (wakes are stamped with it).
    clock: u64,
    /// Deadlines of idle guests (and stale ones of guests woken early, see the module notes).
    sleepers: DeadlineHeap,
    current: Option<GuestId>,
    live: usize,
}

impl Scheduler {
    /// A scheduler with no guests (and room for [`BOOST_QUEUE`] boosted ones, made now).
    pub fn new() -> Self {
        Self { boosted: VecDeque::with_capacity(BOOST_QUEUE), ..Self::default() }
    }

    /// Sets the timer's turn, in TSC ticks (the timer's period, normally).
    pub fn set_quantum(&mut self, ticks: u64) {
        self.quantum = ticks;
        self.boost_tokens = self.boost_cap();
    }

    /// What wakes made from now on are made of (input from outside, or not).
    pub fn set_wake_kind(&mut self, kind: WakeKind) {
        self.wake_kind = kind;
    }

    /// Wakes that were boosted.
    pub fn boosted_wakes(&self) -> u64 {
        self.boosted_wakes
    }

    /// Wakes that would have been boosted but found the boosted queue full.
    pub fn boost_queue_full(&self) -> u64 {
        self.boost_queue_full
    }

    /// Puts `id` at the back of the boosted queue if there is room (false: none).
    fn queue_boosted(&mut self, id: GuestId) -> bool {
        if self.boosted.len() >= BOOST_QUEUE.min(self.boosted.capacity()) {
            self.boost_queue_full = self.boost_queue_full.saturating_add(1);
            return false;
        }
        self.boosted.push_back(id);
        true
    }

    fn boost_cap(&self) -> u64 {
        self.quantum.saturating_mul(BOOST_BURST_QUANTA)
    }

    /// Refills the boost budget for the real time since it was last refilled.
    fn refill_boost(&mut self, now: u64) {
        let elapsed = now.saturating_sub(self.boost_refilled);
        self.boost_refilled = self.boost_refilled.max(now);
        // In 64 bits by constants (a 128-bit division is a library call on the wake path).
        let earned = elapsed.saturating_mul(BOOST_SHARE.0).checked_div(BOOST_SHARE.1).unwrap_or(0);
        self.boost_tokens = self.boost_tokens.saturating_add(earned).min(self.boost_cap());
    }

    /// Gives guest `id` a CPU weight (clamped to `1..=MAX_CPU_WEIGHT`).
    pub fn set_weight(&mut self, id: GuestId, weight: u32) {
        if let Some(entry) = self.guests.get_mut(id) {
            entry.weight = weight.clamp(1, MAX_CPU_WEIGHT);
        }
    }

    pub fn weight(&self, id: GuestId) -> Option<u32> {
        self.guests.get(id).map(|e| e.weight)
    }

    /// Guest `id`'s virtual time.
    pub fn vtime(&self, id: GuestId) -> Option<u64> {
        self.guests.get(id).map(|e| e.vtime)
    }

    /// The time of the event being handled: a wake now is stamped with it.
    pub fn set_clock(&mut self, now: u64) {
        self.clock = now;
    }

    /// Wake-ups that put the woken guest ahead of the running one.
    pub fn boosts(&self) -> u64 {
        self.boosts
    }

    /// Guest `id`'s wake-up delays so far.
    pub fn wake_delays(&self, id: GuestId) -> Option<&DelayHistogram> {
        self.guests.get(id).map(|e| &e.delays)
    }

    /// Reserves room for `additional` more guests now, fallibly (false: the heap is short), so
    /// that registering them later does not grow storage.
    pub fn try_reserve(&mut self, additional: usize) -> bool {
        self.guests.try_reserve(additional).is_ok()
            && self.runnable.try_reserve(additional)
            && self.sleepers.try_reserve(additional)
    }

    /// Registers a new guest of weight 1, runnable at once (at the floor of virtual time, so it
    /// neither waits behind nor runs ahead of the guests there are). O(log n).
    pub fn add(&mut self) -> GuestId {
        let id = self.guests.len();
        self.guests.push(Entry {
            state: RunState::Runnable,
            since: 0,
            charged: 0,
            vtime: self.floor,
            weight: 1,
            woken: false,
            boosted: false,
            delays: DelayHistogram::new(),
        });
        let queued = self.runnable.register();
        let timed = self.sleepers.register();
        debug_assert!(queued == id && timed == id, "scheduler ids out of step");
        self.runnable.set(id, self.floor);
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

    /// Guests waiting for the CPU.
    pub fn runnable(&self) -> usize {
        self.runnable.len().saturating_add(self.boosted.len())
    }

    /// Deadline entries held (at most one per guest).
    pub fn sleeper_entries(&self) -> usize {
        self.sleepers.len()
    }

    /// Heap entries visited so far: the scheduler's work, which tests compare across guest
    /// counts.
    pub fn work(&self) -> u64 {
        self.runnable.visits().saturating_add(self.sleepers.visits())
    }

    /// Virtual time of `ran` TSC ticks at `weight` (rounded up: a run is never free).
    fn virtual_ticks(ran: u64, weight: u32) -> u64 {
        let scaled = u128::from(ran).saturating_mul(u128::from(MAX_CPU_WEIGHT));
        let weight = u128::from(weight.max(1));
        let virtual_ticks = scaled.saturating_add(weight.saturating_sub(1)).checked_div(weight).unwrap_or(scaled);
        u64::try_from(virtual_ticks).unwrap_or(u64::MAX)
    }

    /// Charges the running guest's run since its last charge to its virtual time (a boosted
    /// run to the boost budget instead, and it loses its boost when that is spent or the run is
    /// long); returns it, its virtual time and how long it has had the CPU this time.
    fn charge_current(&mut self, now: u64) -> Option<(GuestId, u64, u64)> {
        let id = self.current?;
        let boosted = self.guests.get(id)?.boosted;
        if boosted {
            self.refill_boost(now);
        }
        let boost_run = self.quantum.saturating_mul(BOOST_RUN_QUANTA);
        let entry = self.guests.get_mut(id)?;
        let ran = now.saturating_sub(entry.charged);
        entry.charged = entry.charged.max(now);
        let on_cpu = now.saturating_sub(entry.since);
        if boosted {
            let spent = ran >= self.boost_tokens;
            self.boost_tokens = self.boost_tokens.saturating_sub(ran);
            entry.boosted = !spent && on_cpu < boost_run;
        } else {
            entry.vtime = entry.vtime.saturating_add(Self::virtual_ticks(ran, entry.weight));
        }
        Some((id, entry.vtime, on_cpu))
    }

    /// The running guest's rank (boosted first, then by virtual time), against which runnable
    /// guests are compared. Boosted guests rank equal (they are served in arrival order).
    fn current_rank(&self, vtime: u64) -> (bool, u64) {
        let boosted = self.current.and_then(|id| self.guests.get(id)).is_some_and(|e| e.boosted);
        if boosted {
            (false, 0)
        } else {
            (true, vtime)
        }
    }

    /// The least runnable guest's rank.
    fn least_rank(&self) -> Option<(bool, u64)> {
        if !self.boosted.is_empty() {
            return Some((false, 0));
        }
        self.runnable.peek().map(|(vtime, _)| (true, vtime))
    }

    /// Takes the running guest off the CPU into the runnable heap at virtual time `vtime`.
    fn requeue_current(&mut self, vtime: u64) {
        if let Some(id) = self.current.take() {
            let mut boosted = false;
            if let Some(entry) = self.guests.get_mut(id) {
                entry.vtime = vtime;
                entry.state = RunState::Runnable;
                boosted = entry.boosted;
            }
            if !(boosted && self.queue_boosted(id)) {
                if let Some(entry) = self.guests.get_mut(id) {
                    entry.boosted = false;
                }
                self.runnable.set(id, vtime);
            }
        }
    }

    /// Raises the floor to the least virtual time of the running guest (`running`) and the
    /// runnable ones.
    fn raise_floor(&mut self, running: u64) {
        let least = self.runnable.peek().map_or(running, |(least, _)| least.min(running));
        self.floor = self.floor.max(least);
    }

    /// The current guest yields: it goes behind the guest that is least in virtual time, which
    /// runs next (with nobody else runnable it runs on).
    pub fn preempt_current(&mut self, now: u64) {
        let Some((id, vtime, _)) = self.charge_current(now) else { return };
        // A guest that yields has work to do: it has no boost left (that is for answering).
        if let Some(entry) = self.guests.get_mut(id) {
            entry.boosted = false;
        }
        let behind = self.runnable.peek().map_or(vtime, |(least, _)| vtime.max(least.saturating_add(1)));
        self.requeue_current(behind);
    }

    /// A timer tick while the current guest runs: idle guests whose deadline passed wake (and
    /// take the CPU at once if ahead, as on any wake); then the current guest keeps the CPU
    /// (false) unless it has run half a quantum or more and another runnable guest is not ahead
    /// of it in virtual time; then it goes to the runnable heap (true) and
    /// [`Scheduler::schedule`] picks the next. O(1) when it keeps the CPU and no deadline is
    /// due.
    pub fn preempt_current_by_timer(&mut self, now: u64) -> bool {
        // Idle guests whose deadline passed wake now (O(1) when none is due), and may take the
        // CPU at once as any woken guest.
        self.wake_expired(now);
        if self.preempt_current_for_woken(now) {
            return true;
        }
        let Some((_, vtime, on_cpu)) = self.charge_current(now) else { return false };
        self.raise_floor(vtime);
        // (An equal one too: guests of equal weight take turns.)
        let rank = self.current_rank(vtime);
        let behind_it = self.least_rank().is_some_and(|least| least <= rank);
        let switch = behind_it && on_cpu >= self.quantum / 2;
        if switch {
            self.requeue_current(vtime);
        }
        switch
    }

    /// After a guest was woken while this one ran: if a runnable guest is behind the running
    /// one in virtual time (the woken one, normally), the running guest goes to the runnable
    /// heap (true: switch; the one behind runs next). Otherwise nothing changes (false). O(1)
    /// when no guest was woken.
    pub fn preempt_current_for_woken(&mut self, now: u64) -> bool {
        if !core::mem::replace(&mut self.woken_while_running, false) {
            return false;
        }
        let Some((_, vtime, _)) = self.charge_current(now) else { return false };
        self.raise_floor(vtime);
        let rank = self.current_rank(vtime);
        let ahead = self.least_rank().is_some_and(|least| least < rank);
        if ahead {
            self.boosts = self.boosts.saturating_add(1);
            self.requeue_current(vtime);
        }
        ahead
    }

    /// The current guest idles until `deadline` (if any) or a virtual interrupt.
    pub fn idle_current(&mut self, deadline: Option<u64>, now: u64) {
        if self.charge_current(now).is_none() {
            return;
        }
        let Some(id) = self.current.take() else { return };
        if let Some(entry) = self.guests.get_mut(id) {
            entry.state = RunState::Idle { deadline };
            entry.boosted = false;
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
                self.runnable.remove(id);
                self.boosted.retain(|&queued| queued != id);
            }
            Some(RunState::Running) => self.current = None,
            Some(RunState::Idle { .. }) => {}
        }
        self.sleepers.remove(id);
        if let Some(entry) = self.guests.get_mut(id) {
            entry.state = RunState::Done;
        }
        self.live = self.live.saturating_sub(1);
    }

    /// A virtual interrupt for `id`: an idle guest becomes runnable, with at most the sleeper's
    /// bonus of virtual time back (see the module notes). Returns whether it woke. O(log n)
    /// (its deadline entry, if any, stays behind: see the module notes). For a guest already
    /// runnable it changes nothing but asks [`Scheduler::preempt_current_for_woken`] to look:
    /// if that guest is behind the running one in virtual time, it runs now.
    pub fn wake(&mut self, id: GuestId) -> bool {
        // Running or finished: nothing to wake (the kernel wakes the running guest whenever it
        // takes its transmit ring; every kick does).
        if matches!(self.state(id), None | Some(RunState::Running) | Some(RunState::Done)) {
            return false;
        }
        let bonus = self.quantum.saturating_mul(SLEEPER_BONUS_QUANTA).saturating_mul(u64::from(MAX_CPU_WEIGHT));
        let earliest = self.floor.saturating_sub(bonus);
        let (clock, current) = (self.clock, self.current);
        let input = self.wake_kind == WakeKind::Input;
        if input {
            self.refill_boost(clock);
        }
        let boost = input && self.boost_tokens > 0 && self.boost_tokens >= self.quantum / BOOST_MIN_QUANTUM_FRACTION;
        let Some(entry) = self.guests.get_mut(id) else { return false };
        if entry.state == RunState::Runnable {
            // Already waiting for the CPU (preempted with work to do, or woken by its own
            // doing): input boosts it as it would an idle guest; otherwise, if it is behind
            // the running guest in virtual time, it may run now rather than at its turn.
            let upgrade = boost && !entry.boosted;
            self.woken_while_running |= current.is_some();
            if upgrade && self.runnable.remove(id) {
                if self.queue_boosted(id) {
                    self.boosted_wakes = self.boosted_wakes.saturating_add(1);
                    if let Some(entry) = self.guests.get_mut(id) {
                        entry.boosted = true;
                    }
                } else {
                    let vtime = self.guests.get(id).map_or(0, |e| e.vtime);
                    self.runnable.set(id, vtime);
                }
            }
            return false;
        }
        if !matches!(entry.state, RunState::Idle { .. }) {
            return false;
        }
        entry.state = RunState::Runnable;
        entry.woken = true;
        entry.since = clock;
        entry.vtime = entry.vtime.max(earliest);
        let vtime = entry.vtime;
        let boosted = boost && self.queue_boosted(id);
        if let Some(entry) = self.guests.get_mut(id) {
            entry.boosted = boosted;
        }
        if boosted {
            self.boosted_wakes = self.boosted_wakes.saturating_add(1);
        } else {
            self.runnable.set(id, vtime);
        }
        self.woken_while_running |= current.is_some();
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
                // Its wake-up delay runs from the deadline (how late the timer was included).
                if let Some(entry) = self.guests.get_mut(id) {
                    entry.since = entry.since.min(deadline);
                }
            }
        }
        woken
    }

    /// Picks the next guest to run (after waking expired sleepers): the runnable one least in
    /// virtual time; it becomes current. The current guest, if any, must have been moved out
    /// with one of the calls above.
    pub fn schedule(&mut self, now: u64) -> Option<GuestId> {
        debug_assert!(self.current.is_none(), "schedule with a guest still current");
        self.wake_expired(now);
        self.woken_while_running = false;
        let id = match self.boosted.pop_front() {
            Some(id) => id,
            None => {
                let (vtime, id) = self.runnable.pop_expired(u64::MAX)?;
                // (Boosted guests' virtual times lag, uncharged: they do not move the floor.)
                self.floor = self.floor.max(vtime);
                id
            }
        };
        if let Some(entry) = self.guests.get_mut(id) {
            if core::mem::replace(&mut entry.woken, false) {
                entry.delays.record(now.saturating_sub(entry.since));
            }
            entry.state = RunState::Running;
            entry.since = now;
            entry.charged = now;
        }
        self.current = Some(id);
        Some(id)
    }

    /// When the timer must next look at the running guest: `None` while nobody else is
    /// runnable (it may run on undisturbed: no tick). Otherwise the end of its turn (a quantum
    /// after it got the CPU), or later if its virtual time is still behind the least runnable
    /// guest's then: when it catches up at its weight (a guest of weight 3 runs three quanta
    /// for its weight-1 neighbour's one, in one go, without a tick in between).
    pub fn preemption_deadline(&self) -> Option<u64> {
        let id = self.current?;
        let (least_unboosted, least) = self.least_rank()?;
        let entry = self.guests.get(id)?;
        if entry.boosted {
            // Its boost ends after a run of BOOST_RUN_QUANTA or when the budget is spent (it
            // refills at BOOST_SHARE while the guest runs, so it lasts that much longer); then
            // it competes.
            let run_end = entry.since.saturating_add(self.quantum.saturating_mul(BOOST_RUN_QUANTA));
            let (earn, per) = (u128::from(BOOST_SHARE.0), u128::from(BOOST_SHARE.1));
            let lasts = u128::from(self.boost_tokens)
                .saturating_mul(per)
                .checked_div(per.saturating_sub(earn))
                .unwrap_or(u128::MAX);
            let spent = entry.charged.saturating_add(u64::try_from(lasts).unwrap_or(u64::MAX));
            return Some(run_end.min(spent));
        }
        if !least_unboosted {
            return Some(entry.charged); // a boosted guest waits: at once
        }
        let turn_end = entry.since.saturating_add(self.quantum);
        // Virtual ticks to catch up, in TSC ticks at its weight (rounded up).
        let gap = u128::from(least.saturating_sub(entry.vtime));
        let real = gap.saturating_mul(u128::from(entry.weight.max(1))).div_ceil(u128::from(MAX_CPU_WEIGHT));
        let catch_up = entry.charged.saturating_add(u64::try_from(real).unwrap_or(u64::MAX));
        Some(turn_end.max(catch_up))
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

    /// A scheduler with a quantum of 1,000 TSC ticks and `n` guests (weight 1).
    fn with_guests(n: usize) -> (Scheduler, Vec<GuestId>) {
        let mut s = Scheduler::new();
        s.set_quantum(1_000);
        let ids = (0..n).map(|_| s.add()).collect();
        (s, ids)
    }

    /// A timer tick at `now`: the next guest on the CPU (the same one if it kept it).
    fn tick(s: &mut Scheduler, now: u64) -> GuestId {
        if s.preempt_current_by_timer(now) {
            s.schedule(now).unwrap()
        } else {
            s.current().unwrap()
        }
    }

    #[test]
    fn busy_guests_of_equal_weight_take_turns_of_one_quantum_in_arrival_order() {
        let (mut s, ids) = with_guests(3);
        assert_eq!(s.schedule(0), Some(ids[0]));
        let order: Vec<_> = (1..=6).map(|t| tick(&mut s, t * 1_000)).collect();
        assert_eq!(order, [ids[1], ids[2], ids[0], ids[1], ids[2], ids[0]]);
    }

    #[test]
    fn a_sleeper_whose_deadline_passed_wakes_on_the_tick_beside_a_busy_guest() {
        // The busy guest would keep the CPU on every tick; the sleeper must not wait for it.
        let (mut s, ids) = with_guests(2);
        let (sleeper, spinner) = (ids[0], ids[1]);
        assert_eq!(s.schedule(0), Some(sleeper));
        s.idle_current(Some(50_000), 10);
        assert_eq!(s.schedule(10), Some(spinner));
        for t in 1..50 {
            assert!(!s.preempt_current_by_timer(t * 1_000), "tick {t}: nobody else is runnable");
        }
        assert!(s.preempt_current_by_timer(50_000), "the deadline passed: the sleeper runs");
        assert_eq!(s.schedule(50_000), Some(sleeper));
        assert_eq!(s.wake_delays(sleeper).unwrap().samples(), 1);
    }

    #[test]
    fn a_tick_early_in_a_run_does_not_switch() {
        let (mut s, ids) = with_guests(2);
        assert_eq!(s.schedule(0), Some(ids[0]));
        assert!(!s.preempt_current_by_timer(400), "under half a quantum on the CPU");
        assert_eq!(s.current(), Some(ids[0]));
        assert!(s.preempt_current_by_timer(1_000));
        assert_eq!(s.schedule(1_000), Some(ids[1]));
    }

    #[test]
    fn yield_with_nobody_else_runs_the_same_guest_and_otherwise_lets_the_next_run() {
        let (mut s, ids) = with_guests(1);
        assert_eq!(s.schedule(0), Some(ids[0]));
        s.preempt_current(0);
        assert_eq!(s.schedule(0), Some(ids[0]));
        assert_eq!(s.state(ids[0]), Some(RunState::Running));
        let b = s.add();
        for round in 0..4 {
            s.preempt_current(10 + round);
            let next = s.schedule(10 + round).unwrap();
            assert_eq!(next, if round % 2 == 0 { b } else { ids[0] }, "round {round}");
        }
    }

    #[test]
    fn idle_guests_are_skipped_until_their_deadline() {
        let (mut s, ids) = with_guests(2);
        let (a, b) = (ids[0], ids[1]);
        assert_eq!(s.schedule(0), Some(a));
        s.idle_current(Some(100), 0);
        assert_eq!(s.schedule(10), Some(b));
        s.idle_current(Some(50), 10);
        assert_eq!(s.schedule(20), None, "both idle");
        assert_eq!(s.next_deadline(), Some(50));
        assert_eq!(s.schedule(50), Some(b), "b's deadline passed first");
        s.preempt_current(60);
        assert_eq!(s.schedule(60), Some(b), "a still sleeps");
        s.idle_current(None, 70);
        assert_eq!(s.schedule(100), Some(a));
    }

    #[test]
    fn virtual_interrupt_wakes_early_and_stale_deadline_is_ignored() {
        let (mut s, ids) = with_guests(1);
        let a = ids[0];
        s.schedule(0);
        s.idle_current(Some(100), 0);
        assert!(s.wake(a));
        assert!(!s.wake(a), "already runnable");
        assert_eq!(s.schedule(10), Some(a));
        s.idle_current(None, 10); // idle without deadline this time
        assert_eq!(s.wake_expired(1000), 0, "the old deadline entry is stale");
        assert_eq!(s.state(a), Some(RunState::Idle { deadline: None }));
        assert_eq!(s.schedule(1000), None);
    }

    #[test]
    fn finished_guests_leave_every_queue() {
        let (mut s, ids) = with_guests(3);
        let (a, b, c) = (ids[0], ids[1], ids[2]);
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
        assert_eq!((s.runnable(), s.sleeper_entries()), (0, 0));
    }

    /// `idle` guests that ran once and idle far in the future, and one busy guest, which is
    /// running.
    fn busy_among_sleepers(idle: usize) -> (Scheduler, GuestId) {
        let mut s = Scheduler::new();
        s.set_quantum(1_000);
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

    #[test]
    fn ten_thousand_idle_guests_cost_nothing_per_tick() {
        let (mut few, busy_few) = busy_among_sleepers(10);
        let (mut many, busy_many) = busy_among_sleepers(10_000);
        for (s, busy) in [(&mut few, busy_few), (&mut many, busy_many)] {
            let before = s.work();
            for t in 1..=1_000 {
                assert_eq!(tick(s, t * 1_000), busy);
            }
            assert_eq!(s.work(), before, "a tick that keeps the only busy guest visits nothing");
        }
        // Yields: the busy guest leaves the CPU and comes back, through the runnable heap.
        let yields = |s: &mut Scheduler, busy| {
            let before = s.work();
            for t in 0..1_000 {
                s.preempt_current(2_000_000 + t);
                assert_eq!(s.schedule(2_000_000 + t), Some(busy));
            }
            s.work() - before
        };
        let (work_few, work_many) = (yields(&mut few, busy_few), yields(&mut many, busy_many));
        assert_eq!(work_many, work_few, "work per switch must not depend on idle guests");
        assert!(work_many <= 4 * 1_000, "{work_many} entries visited in 1,000 yields");
        assert_eq!(many.sleeper_entries(), 10_000);
        assert_eq!(many.next_deadline(), Some(1_000_000_000));
    }

    #[test]
    fn waking_creating_and_ending_guests_cost_a_logarithm_at_most() {
        let (mut few, _) = busy_among_sleepers(10);
        let (mut many, _) = busy_among_sleepers(10_000);
        let work = |s: &mut Scheduler, idle: usize| {
            let before = s.work();
            // A virtual interrupt for an idle guest in the middle, a new guest, and a runnable
            // guest (the one just woken) ended where it waits.
            let middle = idle / 2;
            assert!(s.wake(middle));
            let new = s.add();
            s.finish(middle);
            assert_eq!(s.state(new), Some(RunState::Runnable));
            s.work() - before
        };
        // Ending removes the woken guest's stale deadline entry: O(log n) in the sleepers; the
        // runnable heap holds two or three guests whatever the number of idle ones.
        let (work_few, work_many) = (work(&mut few, 10), work(&mut many, 10_000));
        assert!(work_many <= work_few + 4 * 14, "{work_few} with 10 idle guests, {work_many} with 10,000");
    }

    #[test]
    fn a_guest_woken_early_again_and_again_keeps_one_deadline_entry() {
        let (mut s, ids) = with_guests(1);
        let a = ids[0];
        for round in 0..10_000u64 {
            assert_eq!(s.schedule(round), Some(a));
            s.idle_current(Some(u64::MAX - round), round); // far away, and every time another one
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
        let (mut s, ids) = with_guests(1);
        let a = ids[0];
        s.schedule(0);
        s.idle_current(Some(100), 0);
        s.wake(a);
        s.schedule(1);
        s.idle_current(Some(300), 1); // the entry moves from 100 to 300
        assert_eq!(s.wake_expired(200), 0);
        assert_eq!(s.wake_expired(300), 1);
        assert_eq!(s.schedule(300), Some(a));
        s.preempt_current(300);
        s.finish(a);
        assert_eq!((s.live(), s.runnable(), s.sleeper_entries()), (0, 0, 0));
    }

    #[test]
    fn a_woken_guest_that_idles_runs_at_once_ahead_of_busy_guests() {
        let (mut s, ids) = with_guests(3);
        let (echo, hog1, hog2) = (ids[0], ids[1], ids[2]);
        assert_eq!(s.schedule(0), Some(echo));
        s.idle_current(None, 10);
        assert_eq!(s.schedule(10), Some(hog1));
        let mut now = 10;
        for _ in 0..20 {
            now += 1_000;
            tick(&mut s, now);
        }
        // A packet for the echo guest while a hog runs: it runs next.
        let running = s.current().unwrap();
        now += 300;
        s.set_clock(now);
        assert!(s.wake(echo));
        assert!(s.preempt_current_for_woken(now + 5));
        assert_eq!(s.boosts(), 1);
        assert_eq!(s.schedule(now + 5), Some(echo));
        s.idle_current(None, now + 50);
        // The hogs go on, the one least in virtual time first.
        let next = s.schedule(now + 50).unwrap();
        assert!(next == hog1 || next == hog2);
        assert_eq!(s.current(), Some(next));
        // Without a wake, nobody steps aside.
        assert!(!s.preempt_current_for_woken(now + 60));
        assert_eq!(s.current(), Some(next));
        let _ = running;
    }

    #[test]
    fn an_echo_guest_that_serves_a_burst_longer_than_a_quantum_is_still_woken_ahead() {
        // The case a run-length limit got wrong: the echo guest answers a burst (2 quanta of
        // CPU) before it idles; it used far less than its share, so it still runs at once.
        let (mut s, ids) = with_guests(2);
        let (echo, hog) = (ids[0], ids[1]);
        assert_eq!(s.schedule(0), Some(echo));
        s.idle_current(None, 10);
        assert_eq!(s.schedule(10), Some(hog));
        let mut now = 10;
        for round in 0..50 {
            now += 20_000;
            s.set_clock(now);
            assert!(s.wake(echo));
            assert!(s.preempt_current_for_woken(now), "round {round}");
            assert_eq!(s.schedule(now), Some(echo));
            now += if round % 5 == 0 { 2_000 } else { 100 };
            s.idle_current(None, now);
            assert_eq!(s.schedule(now), Some(hog));
        }
    }

    #[test]
    fn an_interrupt_for_a_preempted_guest_behind_the_running_one_lets_it_run_now() {
        let (mut s, ids) = with_guests(2);
        let (hog, echo) = (ids[0], ids[1]);
        assert_eq!(s.schedule(0), Some(hog));
        assert!(s.preempt_current_by_timer(1_000), "the echo guest is not ahead of the hog");
        assert_eq!(s.schedule(1_000), Some(echo));
        assert!(s.preempt_current_by_timer(3_000), "the echo guest became busy for two quanta");
        assert_eq!(s.schedule(3_000), Some(hog));
        // A frame for the echo guest, runnable (not idle): no wake, but it is behind the hog in
        // virtual time by the time the hog has run another 1.5 quanta, so it runs at once.
        s.set_clock(4_500);
        assert!(!s.wake(echo), "it was not idle");
        assert!(s.preempt_current_for_woken(4_500));
        assert_eq!(s.schedule(4_500), Some(echo));
        assert_eq!(s.wake_delays(echo).unwrap().samples(), 0, "no wake-up to count");
        // Behind it is not: the same frame changes nothing.
        s.set_clock(4_600);
        assert!(!s.wake(hog));
        assert!(!s.preempt_current_for_woken(4_600));
        assert_eq!(s.current(), Some(echo));
    }

    #[test]
    fn a_guest_that_computes_earns_no_boost_and_one_that_wakes_itself_gets_its_share_only() {
        let (mut s, ids) = with_guests(2);
        let (waker, spinner) = (ids[0], ids[1]);
        // The waker runs 90% of a quantum, idles, and is woken at once by a virtual interrupt
        // (say, its own frames looped back): over many rounds it gets no more than half.
        let mut cpu = [0u64; 2];
        let mut now = 0;
        let mut current = s.schedule(now).unwrap();
        let mut since = now;
        let mut next_tick = 1_000;
        for _ in 0..20_000 {
            let ran = if current == waker { 900 } else { next_tick - now };
            let end = (now + ran).min(next_tick);
            cpu[current] += end - since;
            now = end;
            if now == next_tick {
                next_tick += 1_000;
                if s.preempt_current_by_timer(now) {
                    current = s.schedule(now).unwrap();
                }
                since = now;
            } else {
                // The waker idles and its own interrupt wakes it while the kernel switches.
                s.idle_current(None, now);
                s.set_clock(now);
                assert!(s.wake(waker));
                current = s.schedule(now).unwrap();
                since = now;
            }
        }
        let share = cpu[waker] as f64 / (cpu[0] + cpu[1]) as f64;
        assert!((0.45..=0.55).contains(&share), "the self-waking guest got {share:.3} of the CPU");
        assert!(cpu[spinner] > 0);
    }

    /// Busy guests (they never idle) under timer ticks of `period` +- `jitter` TSC ticks, each
    /// switch costing the kernel `switch` ticks, for `ticks` ticks: the CPU time each got.
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
            if s.preempt_current_by_timer(now) {
                now += switch;
                current = s.schedule(now).unwrap();
            }
            since = now;
        }
        cpu
    }

    #[test]
    fn busy_guests_share_the_cpu_in_proportion_to_their_weights() {
        for (weights, jitter) in [(&[1u32, 3][..], 0), (&[1, 3], 300), (&[1, 2, 5], 450), (&[16, 1], 100), (&[1, 1], 0)]
        {
            let mut s = Scheduler::new();
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

    /// Busy guests under a tickless timer: it fires only at `preemption_deadline` (late by
    /// `late` TSC ticks, a switch costing `switch`), for `until` ticks: the CPU time each got,
    /// and how many times the timer fired.
    fn run_tickless(s: &mut Scheduler, guests: usize, until: u64, late: u64, switch: u64) -> (Vec<u64>, u64) {
        let mut cpu = vec![0; guests];
        let mut now = 0;
        let mut current = s.schedule(now).unwrap();
        let mut since = now;
        let mut fired = 0;
        while now < until {
            let Some(deadline) = s.preemption_deadline() else { panic!("busy guests beside each other need a timer") };
            assert!(deadline >= now, "a deadline in the past: {deadline} at {now}");
            now = deadline + late;
            fired += 1;
            cpu[current] += now - since;
            if s.preempt_current_by_timer(now) {
                now += switch;
                current = s.schedule(now).unwrap();
            }
            since = now;
        }
        (cpu, fired)
    }

    #[test]
    fn tickless_busy_guests_share_by_weight_with_one_interrupt_per_turn() {
        for weights in [&[1u32, 3][..], &[1, 1], &[1, 2, 5], &[16, 1]] {
            let mut s = Scheduler::new();
            s.set_quantum(1_000);
            for &w in weights {
                let id = s.add();
                s.set_weight(id, w);
            }
            let (cpu, fired) = run_tickless(&mut s, weights.len(), 2_000_000, 3, 7);
            let total: u64 = cpu.iter().sum();
            let weight_sum: u32 = weights.iter().sum();
            for (id, &w) in weights.iter().enumerate() {
                let share = cpu[id] as f64 / total as f64;
                let want = f64::from(w) / f64::from(weight_sum);
                assert!(
                    (share / want - 1.0).abs() < 0.02,
                    "weights {weights:?}: guest {id} got {share:.4}, want {want:.4}"
                );
            }
            // Every interrupt switches: no tick is spent on a guest that keeps the CPU.
            let switches = total / 1_000;
            assert!(fired <= switches + 2, "weights {weights:?}: {fired} interrupts for about {switches} turns");
        }
    }

    #[test]
    fn a_guest_alone_or_beside_idle_ones_needs_no_timer() {
        let (mut s, ids) = with_guests(3);
        assert_eq!(s.schedule(0), Some(ids[0]));
        assert!(s.preemption_deadline().is_some(), "two others are runnable");
        s.idle_current(None, 10);
        assert_eq!(s.schedule(10), Some(ids[1]));
        s.idle_current(Some(u64::MAX), 20);
        assert_eq!(s.schedule(20), Some(ids[2]));
        assert_eq!(s.preemption_deadline(), None, "the others idle: no tick");
        // A wake makes one runnable: the running guest's turn ends a quantum after it began.
        s.set_clock(500);
        assert!(s.wake(ids[0]));
        let _ = s.preempt_current_for_woken(500);
        if s.current() == Some(ids[2]) {
            assert_eq!(s.preemption_deadline(), Some(20 + 1_000));
        }
        let (many, _) = busy_among_sleepers(10_000);
        assert_eq!(many.preemption_deadline(), None, "10,000 idle guests, one busy: no tick");
    }

    /// An echo guest beside `hogs` busy guests under a tickless timer: a request arrives
    /// `gap` ticks after each answer (input from outside), and answering takes `cost` ticks of
    /// CPU. Returns each guest's CPU time (the echo guest first), the echo guest's longest wait
    /// from a request to its run, and the answers given by `until`.
    fn echo_beside_hogs(hogs: usize, cost: u64, gap: u64, until: u64) -> (Vec<u64>, u64, u64) {
        let (mut s, ids) = with_guests(1 + hogs);
        let echo = ids[0];
        let mut cpu = vec![0u64; 1 + hogs];
        let mut now = 0;
        let mut current = s.schedule(now).unwrap();
        assert_eq!(current, echo);
        s.idle_current(None, now);
        current = s.schedule(now).unwrap();
        let mut since = now;
        let mut next_request = gap;
        let (mut worst_wait, mut answers) = (0, 0);
        let mut woken_at = None;
        let mut left = 0; // the echo guest's work left on the request
        let mut steps = 0u64;
        while now < until {
            steps += 1;
            assert!(steps < 100 * until / 100 + 1_000_000, "the simulation does not advance at {now}");
            // The next event: a request, the timer, or the echo guest's answer.
            let timer = s.preemption_deadline().unwrap_or(u64::MAX);
            let done = if current == echo { now + left } else { u64::MAX };
            let request = if woken_at.is_none() && left == 0 && current != echo { next_request } else { u64::MAX };
            let at = timer.min(done).min(request).max(now);
            cpu[current] += at - since;
            if current == echo {
                left -= at - now;
            }
            now = at;
            since = now;
            if at == done {
                answers += 1;
                s.idle_current(None, now);
                current = s.schedule(now).unwrap();
                next_request = now + gap;
            } else if at == request {
                s.set_clock(now);
                s.set_wake_kind(WakeKind::Input);
                assert!(s.wake(echo));
                s.set_wake_kind(WakeKind::Internal);
                woken_at = Some(now);
                left = cost;
                if s.preempt_current_for_woken(now) {
                    current = s.schedule(now).unwrap();
                }
            } else if s.preempt_current_by_timer(now) {
                current = s.schedule(now).unwrap();
            }
            if current == echo {
                if let Some(woken) = woken_at.take() {
                    worst_wait = worst_wait.max(now - woken);
                }
            }
        }
        (cpu, worst_wait, answers)
    }

    #[test]
    fn input_wakes_a_guest_at_once_even_when_it_wants_more_than_its_fair_share() {
        // Three hogs; the echo guest wants 40% of the CPU (cost 400 per 1,000): more than the
        // quarter fair sharing would give it, less than the boost's half.
        let (cpu, worst_wait, answers) = echo_beside_hogs(3, 400, 600, 2_000_000);
        assert_eq!(worst_wait, 0, "a request waited {worst_wait} ticks for the CPU");
        assert!(answers >= 1_900, "{answers} answers");
        let total: u64 = cpu.iter().sum();
        for (hog, &c) in cpu.iter().enumerate().skip(1) {
            let share = c as f64 / total as f64;
            assert!((0.18..=0.22).contains(&share), "hog {hog} got {share:.3}: the hogs share the rest equally");
        }
    }

    #[test]
    fn a_guest_flooded_with_input_takes_at_most_the_boost_share_plus_its_fair_part() {
        // Requests back to back, each costing half a quantum: without a bound it would take
        // the CPU. The hogs keep 1 - BOOST_SHARE among them at least (shared by vtime with the
        // echo guest, which is charged only for what it ran unboosted).
        let (cpu, _, _) = echo_beside_hogs(1, 500, 0, 4_000_000);
        let total: u64 = cpu.iter().sum();
        let hog = cpu[1] as f64 / total as f64;
        let floor = (1.0 - BOOST_SHARE.0 as f64 / BOOST_SHARE.1 as f64) / 2.0;
        assert!(hog >= floor * 0.95, "the hog got {hog:.3}, at least {floor:.3} wanted");
        assert!(cpu[0] > cpu[1], "the flooded guest is boosted for part of its work");
    }

    #[test]
    fn input_for_a_guest_already_runnable_boosts_it() {
        // Woken by its own doing (not boosted) and ahead of the hog in virtual time, it waits;
        // a frame from outside then lets it run at once.
        let (mut s, ids) = with_guests(2);
        let (echo, hog) = (ids[0], ids[1]);
        assert_eq!(s.schedule(0), Some(echo));
        s.idle_current(None, 50_000); // it ran long: far ahead of the hog in virtual time
        assert_eq!(s.schedule(50_000), Some(hog));
        s.set_clock(50_100);
        assert!(s.wake(echo));
        assert!(!s.preempt_current_for_woken(50_100), "ahead in virtual time: it waits its turn");
        s.set_wake_kind(WakeKind::Input);
        s.set_clock(50_200);
        assert!(!s.wake(echo), "already runnable");
        assert_eq!(s.boosted_wakes(), 1);
        assert!(s.preempt_current_for_woken(50_200), "boosted: it runs now");
        assert_eq!(s.schedule(50_200), Some(echo));
        assert_eq!(s.runnable(), 1);
    }

    #[test]
    fn a_guest_woken_by_its_own_doing_is_not_boosted() {
        let (mut s, ids) = with_guests(2);
        let (a, hog) = (ids[0], ids[1]);
        assert_eq!(s.schedule(0), Some(a));
        s.idle_current(Some(5_000), 0);
        assert_eq!(s.schedule(0), Some(hog));
        s.set_clock(100);
        assert!(s.wake(a), "internal: a frame from another guest");
        assert_eq!(s.boosted_wakes(), 0);
        assert!(s.preempt_current_for_woken(100), "behind the hog in virtual time, it still runs first");
        assert_eq!(s.schedule(100), Some(a));
        s.idle_current(Some(5_000), 200);
        assert_eq!(s.schedule(200), Some(hog));
        assert_eq!(s.wake_expired(5_000), 1, "its deadline: not boosted either");
        assert_eq!(s.boosted_wakes(), 0);
    }

    #[test]
    fn a_heavier_guest_runs_longer_turns() {
        let (mut s, ids) = with_guests(2);
        let (light, heavy) = (ids[0], ids[1]);
        s.set_weight(heavy, 3);
        assert_eq!(s.schedule(0), Some(light));
        let order: Vec<_> = (1..=8).map(|t| tick(&mut s, t * 1_000)).collect();
        assert_eq!(order, [heavy, heavy, heavy, light, heavy, heavy, heavy, light]);
        // Weights are clamped to 1..=MAX_CPU_WEIGHT; unknown guests are ignored.
        s.set_weight(light, 0);
        assert_eq!(s.weight(light), Some(1));
        s.set_weight(light, 1_000);
        assert_eq!(s.weight(light), Some(MAX_CPU_WEIGHT));
        s.set_weight(99, 2);
        assert_eq!(s.weight(99), None);
    }

    #[test]
    fn idling_banks_no_more_than_the_sleeper_bonus() {
        let (mut s, ids) = with_guests(2);
        let (sleeper, hog) = (ids[0], ids[1]);
        assert_eq!(s.schedule(0), Some(sleeper));
        s.idle_current(None, 0);
        assert_eq!(s.schedule(0), Some(hog));
        // The hog runs alone for 1,000 quanta; then the sleeper wakes.
        for t in 1..=1_000 {
            assert_eq!(tick(&mut s, t * 1_000), hog);
        }
        s.set_clock(1_000_000);
        assert!(s.wake(sleeper));
        assert!(s.preempt_current_for_woken(1_000_000));
        assert_eq!(s.schedule(1_000_000), Some(sleeper));
        let behind = s.vtime(hog).unwrap() - s.vtime(sleeper).unwrap();
        assert_eq!(behind, SLEEPER_BONUS_QUANTA * 1_000 * u64::from(MAX_CPU_WEIGHT));
        // So the sleeper, now busy, runs one quantum's worth ahead of the hog, then they share.
        let mut ran = 0;
        let mut now = 1_000_000;
        while s.current() == Some(sleeper) {
            now += 1_000;
            tick(&mut s, now);
            ran += 1;
            assert!(ran < 10, "the sleeper banked more than its bonus");
        }
        assert!(ran <= 2, "{ran} quanta ahead");
    }

    #[test]
    fn wake_delays_run_from_the_wake_to_the_run() {
        let (mut s, ids) = with_guests(2);
        let (a, b) = (ids[0], ids[1]);
        assert_eq!(s.schedule(0), Some(a));
        s.idle_current(None, 10);
        assert_eq!(s.schedule(10), Some(b));
        s.set_clock(1_000);
        assert!(s.wake(a)); // the kernel switches only later
        assert!(s.preempt_current_for_woken(60_000));
        assert_eq!(s.schedule(60_000), Some(a));
        let delays = s.wake_delays(a).unwrap();
        assert_eq!((delays.samples(), delays.max()), (1, 59_000));
        assert!((59_000..=2 * 59_000).contains(&delays.median()));
        // Guests preempted or scheduled first record no wake-up delay.
        assert_eq!(s.wake_delays(b).unwrap().samples(), 0);
        // A deadline wake is stamped with the deadline: found expired at 80,000, run at 80,000,
        // it waited 10,000.
        s.idle_current(Some(70_000), 60_010);
        assert_eq!(s.schedule(80_000), Some(a), "a, woken at 80,000, is behind b");
        assert_eq!(s.wake_delays(a).unwrap().samples(), 2);
        assert_eq!(s.wake_delays(a).unwrap().max(), 59_000);
        assert!(s.wake_delays(a).unwrap().quantile(1, 4) >= 10_000);
    }
}
