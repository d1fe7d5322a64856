//! The guest scheduler's bookkeeping: round-robin over runnable guests, O(1) per switch, and a
//! deadline heap for idle guests (O(log n) per sleep). It decides who runs; the kernel binary
//! does the register and address-space switching.
//!
//! An idle guest is in neither queue's hot path: it costs nothing until its deadline passes or
//! a virtual interrupt wakes it, which is what lets one kernel hold thousands of mostly idle
//! guests. A guest woken early leaves a stale heap entry behind; the per-guest sleep generation
//! makes such entries harmless when they surface.
//!
//! Deadlines come from guests (the idle virtual instruction): any u64 at all.

use alloc::collections::{BinaryHeap, VecDeque};
use alloc::vec::Vec;
use core::cmp::Reverse;

pub type GuestId = usize;

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

#[derive(Debug, Default)]
pub struct Scheduler {
    states: Vec<RunState>,
    sleep_generation: Vec<u64>,
    run_queue: VecDeque<GuestId>,
    /// `(deadline, guest, generation)`, earliest first.
    sleepers: BinaryHeap<Reverse<(u64, GuestId, u64)>>,
    current: Option<GuestId>,
    live: usize,
}

impl Scheduler {
    pub fn new() -> Self {
        Self::default()
    }

    /// Registers a new guest, runnable at once.
    pub fn add(&mut self) -> GuestId {
        let id = self.states.len();
        self.states.push(RunState::Runnable);
        self.sleep_generation.push(0);
        self.run_queue.push_back(id);
        self.live = self.live.saturating_add(1);
        id
    }

    pub fn state(&self, id: GuestId) -> Option<RunState> {
        self.states.get(id).copied()
    }

    pub fn current(&self) -> Option<GuestId> {
        self.current
    }

    /// Guests not yet done.
    pub fn live(&self) -> usize {
        self.live
    }

    pub fn runnable(&self) -> usize {
        self.run_queue.len()
    }

    /// The current guest goes to the back of the run queue (preemption or yield).
    pub fn preempt_current(&mut self) {
        if let Some(id) = self.current.take() {
            self.set_state(id, RunState::Runnable);
            self.run_queue.push_back(id);
        }
    }

    /// The current guest idles until `deadline` (if any) or a virtual interrupt.
    pub fn idle_current(&mut self, deadline: Option<u64>) {
        if let Some(id) = self.current.take() {
            self.set_state(id, RunState::Idle { deadline });
            let generation = self.next_sleep_generation(id);
            if let Some(d) = deadline {
                self.sleepers.push(Reverse((d, id, generation)));
            }
        }
    }

    /// The guest is finished (exited or stopped), wherever it was.
    pub fn finish(&mut self, id: GuestId) {
        match self.states.get(id) {
            None | Some(RunState::Done) => return,
            Some(RunState::Runnable) => self.run_queue.retain(|&g| g != id),
            Some(RunState::Running) => self.current = None,
            Some(RunState::Idle { .. }) => {
                self.next_sleep_generation(id);
            }
        }
        self.set_state(id, RunState::Done);
        self.live = self.live.saturating_sub(1);
    }

    /// Sets a known guest's state (ids come from [`Scheduler::add`]; others are ignored).
    fn set_state(&mut self, id: GuestId, state: RunState) {
        if let Some(s) = self.states.get_mut(id) {
            *s = state;
        }
    }

    /// Makes every sleeper entry of `id` stale; returns the new generation.
    fn next_sleep_generation(&mut self, id: GuestId) -> u64 {
        let Some(generation) = self.sleep_generation.get_mut(id) else { return 0 };
        *generation = generation.wrapping_add(1); // 2^64 sleeps never happen; a wrap would only wake early
        *generation
    }

    /// A virtual interrupt for `id`: an idle guest becomes runnable. Returns whether it woke.
    pub fn wake(&mut self, id: GuestId) -> bool {
        if !matches!(self.states.get(id), Some(RunState::Idle { .. })) {
            return false;
        }
        self.next_sleep_generation(id);
        self.set_state(id, RunState::Runnable);
        self.run_queue.push_back(id);
        true
    }

    /// Wakes every idle guest whose deadline is at or before `now`; returns how many woke.
    pub fn wake_expired(&mut self, now: u64) -> usize {
        let mut woken: usize = 0;
        while let Some(&Reverse((deadline, id, generation))) = self.sleepers.peek() {
            if deadline > now {
                break;
            }
            self.sleepers.pop();
            if self.sleep_generation.get(id) == Some(&generation) && self.wake(id) {
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
        let id = self.run_queue.pop_front()?;
        self.set_state(id, RunState::Running);
        self.current = Some(id);
        Some(id)
    }

    /// The earliest pending idle deadline (possibly stale: then waking finds nobody).
    pub fn next_deadline(&self) -> Option<u64> {
        self.sleepers.peek().map(|Reverse((d, _, _))| *d)
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
            s.preempt_current();
        }
        assert_eq!(order, [ids[0], ids[1], ids[2], ids[0], ids[1], ids[2]]);
    }

    #[test]
    fn yield_with_nobody_else_runs_the_same_guest() {
        let mut s = Scheduler::new();
        let a = s.add();
        assert_eq!(s.schedule(0), Some(a));
        s.preempt_current();
        assert_eq!(s.schedule(0), Some(a));
        assert_eq!(s.state(a), Some(RunState::Running));
    }

    #[test]
    fn idle_guests_are_skipped_until_their_deadline() {
        let mut s = Scheduler::new();
        let a = s.add();
        let b = s.add();
        assert_eq!(s.schedule(0), Some(a));
        s.idle_current(Some(100));
        assert_eq!(s.schedule(10), Some(b));
        s.idle_current(Some(50));
        assert_eq!(s.schedule(20), None, "both idle");
        assert_eq!(s.next_deadline(), Some(50));
        assert_eq!(s.schedule(50), Some(b), "b's deadline passed first");
        s.preempt_current();
        assert_eq!(s.schedule(60), Some(b), "a still sleeps");
        s.preempt_current();
        assert_eq!(s.schedule(100), Some(b), "a woke behind b in the queue");
        s.preempt_current();
        assert_eq!(s.schedule(100), Some(a));
    }

    #[test]
    fn virtual_interrupt_wakes_early_and_stale_deadline_is_ignored() {
        let mut s = Scheduler::new();
        let a = s.add();
        s.schedule(0);
        s.idle_current(Some(100));
        assert!(s.wake(a));
        assert!(!s.wake(a), "already runnable");
        assert_eq!(s.schedule(10), Some(a));
        s.idle_current(None); // idle without deadline this time
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
        s.idle_current(Some(5));
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
        s.preempt_current();
        for _ in &sleepers {
            s.schedule(0).unwrap();
            s.idle_current(Some(1_000_000));
        }
        assert_eq!(s.runnable(), 1);
        for _ in 0..10 {
            assert_eq!(s.schedule(1), Some(busy));
            s.preempt_current();
        }
    }
}
