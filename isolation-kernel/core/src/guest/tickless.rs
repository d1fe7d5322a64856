//! The tickless timer's plan: when the kernel's one-shot timer must next fire, or that it must
//! not fire at all. There is no periodic tick: the timer is armed for the earliest of what
//! wants the CPU back at a given time, and for nothing when nothing does, so idle guests cost
//! nothing and guests' deadlines are kept to the TSC tick rather than to a timer period.
//!
//! What wants the CPU back ([`Wants`]):
//! - the running guest's turn ending, only while another guest is runnable (the scheduler's
//!   `preemption_deadline`);
//! - the earliest idle guest's deadline (smoltcp's `poll_at`, a sleep): any `u64` a guest chose;
//! - the kernel's own work: the `stats:` line, rate-limit refills, the shutdown deadline, a NIC
//!   that has to be polled.
//!
//! Deadlines come from guests, so the plan is safe against any value: one already past (or 0)
//! fires after [`Limits::min_ahead`] (never at once, so a guest cannot make the kernel take
//! interrupts back to back: at most one per `min_ahead` of its own sleeps), one far away
//! (`u64::MAX`) fires after [`Limits::max_ahead`] and is looked at again then, and a deadline
//! moving backwards is simply the new earliest. Each clamp is counted ([`TimerCounters`]).

/// What wants the CPU back, as absolute TSC times (`None`: nothing of that kind).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Wants {
    /// The running guest's turn ends (only while another guest is runnable).
    pub turn_end: Option<u64>,
    /// The earliest idle guest's deadline (possibly a stale one: waking then finds nobody).
    pub guest_deadline: Option<u64>,
    /// The kernel's own next piece of timed work.
    pub kernel_work: Option<u64>,
}

impl Wants {
    /// The earliest of them.
    pub fn earliest(&self) -> Option<u64> {
        earlier(earlier(self.turn_end, self.guest_deadline), self.kernel_work)
    }
}

/// The earlier of two optional times (`None` is never). Planned on every trap that resumes a
/// guest: an iterator over an array of options cost ~40 instructions more per call.
#[inline(always)]
pub fn earlier(a: Option<u64>, b: Option<u64>) -> Option<u64> {
    match (a, b) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, None) => a,
        (None, b) => b,
    }
}

/// How near and how far the timer may be armed, in TSC ticks from now.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Limits {
    /// Nearest: what is already due is handled by the code that arms the timer, so a time at or
    /// before `now + min_ahead` is work that came due in between (or a guest's deadline in the
    /// past); it fires this much later, bounding the interrupt rate.
    pub min_ahead: u64,
    /// Farthest: later times are looked at again after this (the hardware's counters are finite).
    pub max_ahead: u64,
}

impl Limits {
    /// Limits for a TSC of `tsc_hz`: `min_ahead` of `min_ahead_ns`, `max_ahead` of `max_ahead_ms`
    /// (at least one tick each; `max_ahead` at least `min_ahead`).
    pub fn for_tsc(tsc_hz: u64, min_ahead_ns: u64, max_ahead_ms: u64) -> Limits {
        let scale = |amount: u64, per_second: u64| {
            let ticks =
                u128::from(tsc_hz).saturating_mul(u128::from(amount)).checked_div(u128::from(per_second)).unwrap_or(0);
            u64::try_from(ticks).unwrap_or(u64::MAX).max(1)
        };
        let min_ahead = scale(min_ahead_ns, 1_000_000_000);
        Limits { min_ahead, max_ahead: scale(max_ahead_ms, 1_000).max(min_ahead) }
    }
}

/// How the plan moved the time it was given.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Clamp {
    /// Armed for exactly the time wanted (or not armed: nothing wanted).
    Exact,
    /// Wanted at or before `now + min_ahead`: armed for `now + min_ahead`.
    Soon,
    /// Wanted after `now + max_ahead`: armed for `now + max_ahead`.
    Far,
}

/// The time to arm the one-shot timer for (`None`: leave it off), and how it was clamped.
pub fn next_timer(now: u64, wants: &Wants, limits: Limits) -> (Option<u64>, Clamp) {
    let Some(wanted) = wants.earliest() else { return (None, Clamp::Exact) };
    let soonest = now.saturating_add(limits.min_ahead);
    let latest = now.saturating_add(limits.max_ahead);
    if wanted <= soonest {
        (Some(soonest), Clamp::Soon)
    } else if wanted > latest {
        (Some(latest), Clamp::Far)
    } else {
        (Some(wanted), Clamp::Exact)
    }
}

/// What the timer did, for the `stats:` line.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TimerCounters {
    /// The hardware was programmed (armed for a new time, or turned off).
    pub programmed: u64,
    /// Times wanted at or before `now + min_ahead` (deadlines in the past among them).
    pub clamped_soon: u64,
    /// Times wanted beyond `now + max_ahead` (a guest's `u64::MAX` among them).
    pub clamped_far: u64,
    /// Interrupts that came before the time armed (a one-shot count rounded short, or an
    /// interrupt of a timer armed before): the plan is made again then.
    pub fired_early: u64,
}

/// The timer as the kernel armed it: what is programmed, so that the hardware is written only
/// when the time changes (once per sleep or switch, not once per trap).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TimerPlan {
    armed: Option<u64>,
    pub counters: TimerCounters,
}

impl TimerPlan {
    pub const fn new() -> TimerPlan {
        TimerPlan {
            armed: None,
            counters: TimerCounters { programmed: 0, clamped_soon: 0, clamped_far: 0, fired_early: 0 },
        }
    }

    /// The time the timer is armed for.
    pub fn armed(&self) -> Option<u64> {
        self.armed
    }

    /// Plans the timer at `now` for `wants`: `Some(time)` (`Some(None)`: off) when the hardware
    /// must be programmed, `None` when it already is as it must be.
    pub fn plan(&mut self, now: u64, wants: &Wants, limits: Limits) -> Option<Option<u64>> {
        let (time, clamp) = next_timer(now, wants, limits);
        match clamp {
            Clamp::Exact => {}
            Clamp::Soon => self.counters.clamped_soon = self.counters.clamped_soon.saturating_add(1),
            Clamp::Far => self.counters.clamped_far = self.counters.clamped_far.saturating_add(1),
        }
        // A far time still armed at least half of `max_ahead` away need not move: re-arming it
        // on every trap for a guest sleeping "for ever" would write the hardware each time.
        let half_far = now.saturating_add(limits.max_ahead / 2);
        let keep_far = clamp == Clamp::Far && self.armed.is_some_and(|armed| armed >= half_far);
        if time == self.armed || keep_far {
            return None;
        }
        self.armed = time;
        self.counters.programmed = self.counters.programmed.saturating_add(1);
        Some(time)
    }

    /// The timer fired at `now` (a one-shot timer is off afterwards).
    pub fn fired(&mut self, now: u64) {
        if self.armed.is_some_and(|armed| armed > now) {
            self.counters.fired_early = self.counters.fired_early.saturating_add(1);
        }
        self.armed = None;
    }

    /// `name=value` pairs for the `stats:` line.
    pub fn pairs(&self) -> [(&'static str, u64); 4] {
        let c = &self.counters;
        [
            ("timer_programmed", c.programmed),
            ("timer_clamped_soon", c.clamped_soon),
            ("timer_clamped_far", c.clamped_far),
            ("timer_fired_early", c.fired_early),
        ]
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing, clippy::arithmetic_side_effects)]
mod tests {
    use super::*;

    const LIMITS: Limits = Limits { min_ahead: 10, max_ahead: 1_000_000 };

    fn wants(turn_end: Option<u64>, guest_deadline: Option<u64>, kernel_work: Option<u64>) -> Wants {
        Wants { turn_end, guest_deadline, kernel_work }
    }

    #[test]
    fn nothing_wanted_leaves_the_timer_off() {
        assert_eq!(next_timer(5_000, &Wants::default(), LIMITS), (None, Clamp::Exact));
        let mut plan = TimerPlan::new();
        assert_eq!(plan.plan(5_000, &Wants::default(), LIMITS), None, "already off");
        assert_eq!(plan.counters.programmed, 0);
    }

    #[test]
    fn the_earliest_want_is_armed_to_the_tick() {
        let w = wants(Some(9_000), Some(7_123), Some(50_000));
        assert_eq!(next_timer(5_000, &w, LIMITS), (Some(7_123), Clamp::Exact));
        assert_eq!(next_timer(5_000, &wants(None, None, Some(6_001)), LIMITS), (Some(6_001), Clamp::Exact));
        assert_eq!(next_timer(5_000, &wants(Some(5_011), None, None), LIMITS), (Some(5_011), Clamp::Exact));
    }

    #[test]
    fn hostile_deadlines_are_clamped_never_at_once_never_lost() {
        let now = 5_000;
        // In the past, zero, and "now": after min_ahead.
        for deadline in [0, 1, 4_999, 5_000, 5_010] {
            assert_eq!(next_timer(now, &wants(None, Some(deadline), None), LIMITS), (Some(5_010), Clamp::Soon));
        }
        // Far away: looked at again after max_ahead; a nearer want still wins.
        assert_eq!(next_timer(now, &wants(None, Some(u64::MAX), None), LIMITS), (Some(1_005_000), Clamp::Far));
        assert_eq!(next_timer(now, &wants(None, Some(u64::MAX), Some(6_000)), LIMITS), (Some(6_000), Clamp::Exact));
        // Near the end of the TSC's range nothing overflows.
        let late = u64::MAX - 3;
        assert_eq!(next_timer(late, &wants(None, Some(u64::MAX), None), LIMITS), (Some(u64::MAX), Clamp::Soon));
        assert_eq!(next_timer(late, &wants(None, Some(0), None), LIMITS), (Some(u64::MAX), Clamp::Soon));
    }

    #[test]
    fn a_deadline_moving_backwards_is_the_new_earliest() {
        let mut plan = TimerPlan::new();
        assert_eq!(plan.plan(0, &wants(None, Some(900), None), LIMITS), Some(Some(900)));
        assert_eq!(plan.plan(10, &wants(None, Some(300), None), LIMITS), Some(Some(300)));
        assert_eq!(plan.plan(20, &wants(None, Some(5), None), LIMITS), Some(Some(30)));
        assert_eq!(plan.counters.clamped_soon, 1);
        assert_eq!(plan.armed(), Some(30));
    }

    #[test]
    fn the_hardware_is_written_only_when_the_time_changes() {
        let mut plan = TimerPlan::new();
        let w = wants(None, Some(10_000), Some(20_000));
        assert_eq!(plan.plan(0, &w, LIMITS), Some(Some(10_000)));
        for now in 1..1_000 {
            assert_eq!(plan.plan(now, &w, LIMITS), None, "trap at {now}: nothing changed");
        }
        // A guest that sleeps "for ever" keeps the far time armed rather than moving it on
        // every trap.
        let far = wants(None, Some(u64::MAX), None);
        assert_eq!(plan.plan(2_000, &far, LIMITS), Some(Some(1_002_000)));
        for now in 2_001..3_000 {
            assert_eq!(plan.plan(now, &far, LIMITS), None);
        }
        assert_eq!(plan.counters.programmed, 2);
        // Turned off when nothing wants the CPU back, once.
        assert_eq!(plan.plan(3_000, &Wants::default(), LIMITS), Some(None));
        assert_eq!(plan.plan(3_001, &Wants::default(), LIMITS), None);
        // Once fired, the same time is armed again if it is still wanted (a one-shot is spent).
        assert_eq!(plan.plan(3_002, &w, LIMITS), Some(Some(10_000)));
        plan.fired(3_003);
        assert_eq!(plan.counters.fired_early, 1, "armed for 10,000, fired at 3,003");
        assert_eq!(plan.plan(3_003, &w, LIMITS), Some(Some(10_000)));
        plan.fired(10_000);
        assert_eq!(plan.counters.fired_early, 1);
    }

    #[test]
    fn a_guest_sleeping_in_the_past_over_and_over_costs_one_interrupt_per_min_ahead() {
        // The worst a guest can do with deadlines: always "already due". Each plan is at least
        // min_ahead after the previous one fired, so interrupts come at most one per min_ahead.
        let mut plan = TimerPlan::new();
        let mut now = 1_000;
        let mut fired_at = Vec::new();
        for _ in 0..1_000 {
            let time = plan.plan(now, &wants(None, Some(0), None), LIMITS).flatten().unwrap();
            assert!(time >= now + LIMITS.min_ahead);
            now = time;
            plan.fired(now);
            fired_at.push(now);
        }
        assert!(fired_at.windows(2).all(|w| w[1] - w[0] >= LIMITS.min_ahead));
        assert_eq!(plan.counters.clamped_soon, 1_000);
    }

    #[test]
    fn limits_from_the_tsc_rate() {
        let l = Limits::for_tsc(2_000_000_000, 2_000, 10_000);
        assert_eq!((l.min_ahead, l.max_ahead), (4_000, 20_000_000_000));
        let tiny = Limits::for_tsc(0, 2_000, 10_000);
        assert_eq!((tiny.min_ahead, tiny.max_ahead), (1, 1));
        let huge = Limits::for_tsc(u64::MAX, u64::MAX, u64::MAX);
        assert_eq!((huge.min_ahead, huge.max_ahead), (u64::MAX, u64::MAX));
    }
}
