//! The whole-echo timeline (`stamps=on`, for `bench dispatch`): every TSC tick the CPU spends,
//! attributed to what it was doing, so that what the per-packet stage stamps leave out is
//! measured too and has a name.
//!
//! A received frame delivered with its stamps opens a *staged* span, which the echo's transmit
//! record closes at its notify: everything in between (kernel, guest, any trap) is accounted
//! for by the stage records. Everything else (the doorbell's return, the guest's way to idle,
//! the idle virtual instruction, interrupts that deliver nothing, the timer, faults) is added up
//! here by [`Activity`], for the frame length of the echo under way (the last staged frame),
//! beside the kernel's and the guest's total ticks. Under TCG with `-icount shift=0` ticks are
//! executed instructions; halted time is not counted.

/// What the CPU is doing, as far as the timeline knows.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Activity {
    /// Inside a staged span: the stage records account for it.
    Staged,
    /// A doorbell whose packets carried no stamps (kernel).
    Kick,
    /// From a doorbell's notify until the guest runs again, or the CPU halts when the doorbell
    /// was also the idle (kernel).
    AfterNotify,
    /// The idle virtual instruction, until the CPU halts or the guest resumes (kernel).
    Idle,
    /// Any other virtual instruction: console, rx posted, yield, exit (kernel).
    OtherVi,
    /// The NIC's interrupt when it delivered no staged frame: transmit completions (kernel).
    NicInterrupt,
    /// The timer interrupt (kernel).
    Timer,
    /// Page faults and other exceptions from the guest (kernel).
    Fault,
    /// The guest after a doorbell returned, until its next trap.
    GuestAfterKick,
    /// The guest after an idle that returned at once (a virtual interrupt was pending).
    GuestAfterIdle,
    /// The guest after any other trap.
    GuestOther,
    /// Halted: no instruction runs, nothing is counted.
    Halted,
}

impl Activity {
    /// The activities counted in a [`Row`], in its `ticks` order.
    pub const COUNTED: [Activity; 11] = [
        Activity::Staged,
        Activity::Kick,
        Activity::AfterNotify,
        Activity::Idle,
        Activity::OtherVi,
        Activity::NicInterrupt,
        Activity::Timer,
        Activity::Fault,
        Activity::GuestAfterKick,
        Activity::GuestAfterIdle,
        Activity::GuestOther,
    ];

    /// The name in `dispatch: dir=timeline` report lines.
    pub fn name(self) -> &'static str {
        match self {
            Activity::Staged => "staged",
            Activity::Kick => "kick_unstamped",
            Activity::AfterNotify => "after_notify",
            Activity::Idle => "idle_call",
            Activity::OtherVi => "other_virtual_instructions",
            Activity::NicInterrupt => "nic_interrupt_no_rx",
            Activity::Timer => "timer_interrupt",
            Activity::Fault => "guest_faults",
            Activity::GuestAfterKick => "guest_after_kick",
            Activity::GuestAfterIdle => "guest_after_idle_return",
            Activity::GuestOther => "guest_other",
            Activity::Halted => "halted",
        }
    }

    fn index(self) -> Option<usize> {
        Activity::COUNTED.iter().position(|&a| a == self)
    }

    /// What the guest's run after a trap of this kind counts as.
    fn guest_after(self) -> Activity {
        match self {
            Activity::Staged => Activity::Staged,
            Activity::Kick | Activity::AfterNotify => Activity::GuestAfterKick,
            Activity::Idle => Activity::GuestAfterIdle,
            _ => Activity::GuestOther,
        }
    }

    /// Whether this is the kernel's work on a trap (what [`Timeline::refine`] may relabel).
    fn in_kernel(self) -> bool {
        matches!(
            self,
            Activity::Kick
                | Activity::AfterNotify
                | Activity::Idle
                | Activity::OtherVi
                | Activity::NicInterrupt
                | Activity::Timer
                | Activity::Fault
        )
    }
}

/// Which side of the privilege line the CPU is on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Side {
    Kernel,
    Guest,
    Halted,
}

/// The ticks of one frame length.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Row {
    /// Frame length of the staged frames (the echo's size); [`OVERFLOW_KEY`] for every length
    /// past the first [`ROWS`] - 1.
    pub key: u32,
    /// Staged frames of this length: the echoes.
    pub echoes: u64,
    /// Ticks per activity, in [`Activity::COUNTED`] order, and how many stretches of it there
    /// were (a staged span counts one per side it crosses).
    pub ticks: [u64; Activity::COUNTED.len()],
    pub stretches: [u64; Activity::COUNTED.len()],
    /// Every tick in the kernel and in the guest (staged or not), halts left out.
    pub kernel: u64,
    pub guest: u64,
}

/// Frame lengths kept apart (a benchmark sends a few sizes).
pub const ROWS: usize = 16;
/// The key of the row that takes every length past the others.
pub const OVERFLOW_KEY: u32 = u32::MAX;

/// The timeline: the activity under way since when, and the rows.
#[derive(Clone, Debug)]
pub struct Timeline {
    activity: Activity,
    since: u64,
    side: Side,
    side_since: u64,
    staged: bool,
    /// Index into `rows` of the echo under way.
    row: usize,
    rows: [Row; ROWS],
    used: usize,
}

impl Default for Timeline {
    fn default() -> Self {
        Timeline {
            activity: Activity::Halted,
            since: 0,
            side: Side::Halted,
            side_since: 0,
            staged: false,
            row: 0,
            rows: [Row::default(); ROWS],
            used: 0,
        }
    }
}

impl Timeline {
    /// Ends the activity under way at `at` (an earlier `at` counts nothing).
    fn close(&mut self, at: u64) {
        let ticks = at.saturating_sub(self.since);
        if let (Some(i), Some(row)) = (self.activity.index(), self.rows.get_mut(self.row)) {
            if let (Some(t), Some(n)) = (row.ticks.get_mut(i), row.stretches.get_mut(i)) {
                *t = t.saturating_add(ticks);
                *n = n.saturating_add(1);
            }
        }
        self.since = self.since.max(at);
    }

    /// Ends the side under way at `at` and starts `side`.
    fn switch_side(&mut self, at: u64, side: Side) {
        let ticks = at.saturating_sub(self.side_since);
        if let Some(row) = self.rows.get_mut(self.row) {
            match self.side {
                Side::Kernel => row.kernel = row.kernel.saturating_add(ticks),
                Side::Guest => row.guest = row.guest.saturating_add(ticks),
                Side::Halted => {}
            }
        }
        self.side = side;
        self.side_since = self.side_since.max(at);
    }

    /// A trap or interrupt entered the kernel at `at` (the entry stub's stamp), from the guest
    /// or from a halt; `activity` is what it is as far as the vector tells.
    pub fn entry(&mut self, at: u64, activity: Activity) {
        self.close(at);
        self.switch_side(at, Side::Kernel);
        self.activity = if self.staged { Activity::Staged } else { activity };
    }

    /// The trap being handled turned out to be `activity` (a virtual instruction, decoded).
    /// The idle virtual instruction ends a staged span that no transmit closed (an echo never
    /// idles between its receive and its send).
    pub fn refine(&mut self, activity: Activity) {
        if activity == Activity::Idle && self.staged {
            self.staged = false;
            self.activity = Activity::Idle;
        } else if !self.staged && self.activity.in_kernel() {
            self.activity = activity;
        }
    }

    /// The kernel returns to the guest at `at`.
    pub fn exit(&mut self, at: u64) {
        self.close(at);
        self.switch_side(at, Side::Guest);
        self.activity = self.activity.guest_after();
    }

    /// The CPU halts at `at` until an interrupt.
    pub fn halt(&mut self, at: u64) {
        self.close(at);
        self.switch_side(at, Side::Halted);
        self.activity = Activity::Halted;
    }

    /// A received frame of `len` bytes went into a guest with its stamps: the echo of that
    /// length starts, and what the CPU has done since the interrupt's entry is staged.
    pub fn staged_receive(&mut self, len: u32) {
        self.row = self.row_for(len);
        if let Some(row) = self.rows.get_mut(self.row) {
            row.echoes = row.echoes.saturating_add(1);
        }
        self.activity = Activity::Staged;
        self.staged = true;
    }

    /// A transmit record was completed by the notify at `at`: the staged span ends there, and
    /// what follows is the doorbell's return.
    pub fn staged_transmit(&mut self, at: u64) {
        if self.activity.in_kernel() {
            self.activity = Activity::Staged; // the doorbell's own work is in the record
        }
        self.close(at);
        self.staged = false;
        self.activity = Activity::AfterNotify;
    }

    /// The row of frame length `len`, made on first use; the overflow row when all are taken.
    fn row_for(&mut self, len: u32) -> usize {
        if let Some(i) = self.rows.iter().take(self.used).position(|r| r.key == len) {
            return i;
        }
        let last = ROWS.saturating_sub(1);
        if self.used < last {
            let i = self.used;
            self.used = self.used.saturating_add(1);
            // A new row is still all zeros, but the first, which holds what came before any
            // staged frame: that stays with the first length.
            if let Some(row) = self.rows.get_mut(i) {
                row.key = len;
            }
            return i;
        }
        if self.used == last {
            self.used = ROWS;
            if let Some(row) = self.rows.get_mut(last) {
                row.key = OVERFLOW_KEY;
            }
        }
        last
    }

    /// The rows made so far.
    pub fn rows(&self) -> &[Row] {
        self.rows.get(..self.used).unwrap_or(&[])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ticks(row: &Row, activity: Activity) -> u64 {
        row.ticks[activity.index().unwrap()]
    }

    /// One sequential echo as the kernel sees it, from `t`: the NIC's interrupt while halted,
    /// the staged stretch to the notify, the doorbell's return, the guest's way to idle, the
    /// idle call and the halt. Returns the time it ends.
    fn echo(line: &mut Timeline, t: u64, len: u32) -> u64 {
        line.entry(t + 100, Activity::NicInterrupt); // halted until 100
        line.staged_receive(len);
        line.exit(t + 400);
        line.entry(t + 900, Activity::OtherVi); // the doorbell, as a #GP
        line.refine(Activity::Kick);
        line.staged_transmit(t + 1_200);
        line.exit(t + 1_250); // after_notify 50
        line.entry(t + 1_550, Activity::OtherVi); // guest_after_kick 300
        line.refine(Activity::Idle);
        line.halt(t + 1_620); // idle 70
        t + 2_000
    }

    #[test]
    fn an_echo_is_split_into_its_staged_span_and_the_rest() {
        let mut line = Timeline::default();
        let t = echo(&mut line, 0, 142);
        let t = echo(&mut line, t, 142);
        // A timer tick while halted, then the next length.
        line.entry(t + 10, Activity::Timer);
        line.halt(t + 40);
        echo(&mut line, t + 100, 1442);
        let rows = line.rows();
        assert_eq!(rows.len(), 2);
        let small = &rows[0];
        assert_eq!((small.key, small.echoes), (142, 2));
        assert_eq!(ticks(small, Activity::Staged), 2 * 1_100);
        assert_eq!(ticks(small, Activity::AfterNotify), 2 * 50);
        assert_eq!(ticks(small, Activity::GuestAfterKick), 2 * 300);
        assert_eq!(ticks(small, Activity::Idle), 2 * 70);
        assert_eq!(ticks(small, Activity::Timer), 30, "the tick between the sizes goes to the echo before");
        assert_eq!(ticks(small, Activity::Kick), 0);
        let stretches = |activity: Activity| small.stretches[activity.index().unwrap()];
        assert_eq!(
            (stretches(Activity::Idle), stretches(Activity::GuestAfterKick), stretches(Activity::Timer)),
            (2, 2, 1)
        );
        // Kernel: 300 + 300 (receive, doorbell to notify) + 50 + 70 per echo, and the tick.
        assert_eq!(small.kernel, 2 * (300 + 350 + 70) + 30);
        // Guest: 500 before the doorbell, 300 after it.
        assert_eq!(small.guest, 2 * 800);
        assert_eq!(rows[1].key, 1442);
        assert_eq!(rows[1].echoes, 1);
        let counted: u64 = rows[1].ticks.iter().sum();
        assert_eq!(counted, rows[1].kernel + rows[1].guest, "every tick has an activity");
    }

    #[test]
    fn unstaged_work_keeps_its_name() {
        let mut line = Timeline::default();
        line.entry(10, Activity::Fault);
        line.exit(30);
        line.entry(50, Activity::OtherVi);
        line.refine(Activity::Kick); // a doorbell without stamps
        line.exit(80);
        line.entry(100, Activity::OtherVi);
        line.refine(Activity::Idle);
        line.exit(105); // a virtual interrupt was pending
        line.entry(125, Activity::OtherVi);
        line.halt(140);
        line.staged_receive(60); // the row is made now; what came before went to row 0 as well
        let row = &line.rows()[0];
        assert_eq!(ticks(row, Activity::Fault), 20);
        assert_eq!(ticks(row, Activity::GuestOther), 20);
        assert_eq!(ticks(row, Activity::Kick), 30);
        assert_eq!(ticks(row, Activity::GuestAfterKick), 20);
        assert_eq!(ticks(row, Activity::Idle), 5);
        assert_eq!(ticks(row, Activity::GuestAfterIdle), 20);
        assert_eq!(ticks(row, Activity::OtherVi), 15);
    }

    #[test]
    fn an_idle_ends_a_span_that_no_transmit_closed() {
        let mut line = Timeline::default();
        line.entry(0, Activity::NicInterrupt);
        line.staged_receive(100);
        line.exit(50);
        line.entry(80, Activity::OtherVi); // the guest consumed the datagram and idles
        line.refine(Activity::Idle);
        line.halt(90);
        line.entry(200, Activity::Timer);
        line.halt(220);
        let row = &line.rows()[0];
        assert_eq!(ticks(row, Activity::Staged), 80);
        assert_eq!(ticks(row, Activity::Idle), 10);
        assert_eq!(ticks(row, Activity::Timer), 20);
    }

    #[test]
    fn the_notify_ends_the_staged_span() {
        let mut line = Timeline::default();
        line.entry(0, Activity::NicInterrupt);
        line.staged_receive(100);
        line.exit(10);
        line.entry(20, Activity::OtherVi);
        line.refine(Activity::Kick);
        line.staged_transmit(30);
        line.exit(40);
        line.entry(50, Activity::Timer); // the timer interrupts the guest after its doorbell
        line.exit(55);
        line.entry(60, Activity::Fault);
        line.halt(62);
        let row = &line.rows()[0];
        assert_eq!(ticks(row, Activity::Staged), 30);
        assert_eq!(ticks(row, Activity::AfterNotify), 10);
        assert_eq!(ticks(row, Activity::GuestAfterKick), 10);
        assert_eq!(ticks(row, Activity::Timer), 5);
        assert_eq!(ticks(row, Activity::GuestOther), 5);
        assert_eq!(ticks(row, Activity::Fault), 2);
    }

    #[test]
    fn lengths_past_the_rows_share_the_last_one() {
        let mut line = Timeline::default();
        for len in 0..20 {
            line.staged_receive(len);
        }
        let rows = line.rows();
        assert_eq!(rows.len(), ROWS);
        assert_eq!(rows[ROWS - 1].key, OVERFLOW_KEY);
        assert_eq!(rows[ROWS - 1].echoes, 20 - (ROWS as u64 - 1));
        assert_eq!(rows[3].key, 3);
    }

    #[test]
    fn a_clock_that_goes_backwards_counts_nothing() {
        let mut line = Timeline::default();
        line.entry(100, Activity::Timer);
        line.staged_receive(1);
        line.exit(50);
        line.entry(40, Activity::Timer);
        line.halt(200);
        let row = &line.rows()[0];
        assert_eq!(row.ticks.iter().sum::<u64>(), 100);
    }
}
