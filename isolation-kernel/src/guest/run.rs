//! Running guests: the trap from ring 3, the one check of whether the run is over, switching (registers, address space, register state), idling, and a guest's end.

use super::*;
use kernel_core::vnet::timeline::Activity;

/// A trap from ring 3: handles it, then resumes the current guest or switches to another.
pub fn handle_user_trap(frame: &mut TrapFrame, vector: Vector) {
    let now = cpu::rdtsc();
    let next = with_guests(|g| {
        let next = handle_trap(g, frame, vector, now);
        if let Next::Resume = next {
            g.arm_timer(now);
        }
        next
    });
    match next {
        Some(Next::Resume) => {}
        Some(Next::Switch(previous)) => switch_to_next(frame, previous),
        Some(Next::Finish(why)) => finish_run(why),
        None => finish_run("a trap from ring 3 before any guest was started"),
    }
}

/// Whether the run is over, and why: one check for every place that asks. `poll_console`
/// reads the serial port for a typed `q` (on the timer and when switching, not on every trap).
pub(super) fn run_over(g: &Guests, now: u64, poll_console: bool) -> Option<&'static str> {
    if g.shutdown_deadline.is_some_and(|d| now >= d) {
        return Some("shutdown_after reached");
    }
    if poll_console && crate::drivers::serial::quit_requested() {
        return Some("quit requested on the console");
    }
    if g.awaiting_end == 0 && g.some_expected_to_end {
        return Some("every guest expected to end has ended");
    }
    if g.sched.live() == 0 {
        return Some("every guest has finished");
    }
    None
}

pub(super) fn handle_trap(g: &mut Guests, frame: &mut TrapFrame, vector: Vector, now: u64) -> Next {
    let Some(id) = g.on_cpu else { return Next::Finish("a trap from ring 3 with no guest on the CPU") };
    if g.net.stamps.on() {
        // The guest ran from the kernel's last return until this trap's entry.
        g.net.timeline.exit(crate::arch::trap::exit_tsc());
        g.net.timeline.entry(crate::arch::trap::entry_tsc(), timeline_activity(vector));
    }
    // Guests woken while this trap is handled waited from now.
    g.sched.set_clock(now);
    let action = match vector {
        Vector::Timer => {
            g.timer.fired(now);
            crate::arch::clock::timer_tick();
            g.poll_network();
            Action::PreemptByTimer
        }
        Vector::Nic => {
            crate::drivers::virtio_net::count_interrupt();
            g.poll_network();
            crate::arch::clock::end_of_interrupt();
            // A receiver woken ahead of this guest runs now (see below), not after this quantum.
            Action::Resume
        }
        Vector::Spurious => Action::Resume,
        Vector::Exception(13) => general_protection(g, id, frame, now),
        // #UD, #NM: named as a floating-point or SIMD instruction when one raised it.
        Vector::Exception(v @ (6 | 7)) => {
            let mut bytes = [0u8; MAX_INSTRUCTION_LEN];
            let readable = instruction_at(at(&g.list, id), frame.rip, &mut bytes);
            let named = fpu_stop_cause(v, readable, user_state::policy());
            Action::Stop(named.map_or(GuestFault::Exception { vector: v }, GuestFault::FloatingPoint))
        }
        Vector::Exception(14) => page_fault(g, id, frame.error_code),
        Vector::Exception(v) => Action::Stop(GuestFault::Exception { vector: v }),
        Vector::Unexpected(v) => {
            log::warn!("unexpected interrupt vector {v} while guest {id} ran");
            Action::Resume
        }
    };

    let timer = vector == Vector::Timer;
    if timer {
        g.maybe_report_stats(now);
    }
    let guest = at_mut(&mut g.list, id);
    guest.cpu_ticks = guest.cpu_ticks.saturating_add(now.saturating_sub(g.running_since));
    g.running_since = now;
    let over_budget = guest.cpu_budget_ticks.is_some_and(|budget| guest.cpu_ticks > budget);
    let action = match action {
        Action::Resume | Action::Preempt | Action::PreemptByTimer | Action::Idle(_) if over_budget => {
            Action::Stop(GuestFault::CpuBudget { ms: guest.cpu_budget_ms })
        }
        other => other,
    };
    let poll_console = timer && g.console_poll_due(now);
    if let Some(why) = run_over(g, now, poll_console) {
        at_mut(&mut g.list, id).frame = *frame;
        return Next::Finish(why);
    }

    // Whatever woke a guest ahead of this one in virtual time (a packet from the NIC, another
    // guest's frame, a transmit completion), it runs now. Nobody woken ahead: this guest goes on.
    // The tick takes the CPU only from a guest that had its turn (see the scheduler).
    let action = match action {
        Action::Resume | Action::PreemptByTimer if g.sched.preempt_current_for_woken(now) => Action::YieldToWoken,
        Action::PreemptByTimer if !g.sched.preempt_current_by_timer(now) => Action::Resume,
        other => other,
    };
    let guest = at_mut(&mut g.list, id);
    match action {
        Action::Resume => {
            g.flush_protected(id, false);
            return Next::Resume;
        }
        Action::YieldToWoken | Action::PreemptByTimer => guest.frame = *frame,
        Action::Preempt => {
            guest.frame = *frame;
            g.sched.preempt_current(now);
        }
        Action::Idle(deadline) => {
            guest.frame = *frame;
            g.sched.idle_current(deadline, now);
        }
        Action::Exit(code) => {
            let end = End::Exited(code);
            console_write_fmt(format_args!("guest {id} {} {end}\n", guest.name));
            end_guest(g, id, end);
        }
        Action::Stop(cause) => {
            let end = End::Stopped { cause, rip: frame.rip };
            console_write_fmt(format_args!("guest {id} {} {end}\n", guest.name));
            end_guest(g, id, end);
        }
    }
    Next::Switch(id)
}

/// A page fault from ring 3: the first touch of a lazy page (backed, resumed), a write to a
/// protected tx slot (copied, resumed), or the guest's fault.
fn page_fault(g: &mut Guests, id: GuestId, error_code: u64) -> Action {
    let fault = PageFault { error_code, address: cpu::cr2() };
    // A user access (bit 2) to a page not present (bit 0 clear) may be the first touch of a
    // lazy page: a vNIC slot, the stack or the heap.
    if error_code & 0x5 == 0x4 {
        let (write, execute) = (error_code & 0x2 != 0, error_code & 0x10 != 0);
        let space = at_mut(&mut g.list, id).space.as_mut();
        let nic = g.nics.get_mut(id).and_then(Option::as_mut);
        let lazy = space.map(|space| {
            // A vNIC slot first (backed whole), else the stack or heap.
            let slot = match nic {
                Some(nic) if !execute => crate::vnet::back_slot(nic, space, fault.address),
                _ => LazyFault::NotLazy,
            };
            match slot {
                LazyFault::NotLazy => with_frames(|frames| space.back_lazy_page(frames, fault.address, write, execute)),
                verdict => verdict,
            }
        });
        match lazy {
            Some(LazyFault::Backed) => {
                g.counters.lazy_pages_backed = g.counters.lazy_pages_backed.saturating_add(1);
                return Action::Resume;
            }
            Some(LazyFault::OutOfMemory) => {
                return Action::Stop(GuestFault::NoMemoryForPage { address: fault.address })
            }
            Some(LazyFault::NotLazy) | None => {}
        }
    }
    // A write (bit 1) by the user (bit 2) to a present (bit 0) page may be a COW fault.
    let cow_candidate = error_code & 0x7 == 0x7 && g.nics.get(id).is_some_and(Option::is_some);
    let verdict = cow_candidate.then(|| g.net_ctx().write_fault(id, fault.address));
    match verdict {
        Some(crate::vnet::WriteFaultVerdict::Resolved) => Action::Resume,
        Some(crate::vnet::WriteFaultVerdict::Stop(cause)) => Action::Stop(cause),
        Some(crate::vnet::WriteFaultVerdict::NotCopyOnWrite) | None => Action::Stop(GuestFault::PageFault(fault)),
    }
}

/// What a trap is on the whole-echo timeline, as far as its vector tells (a `#GP` is a virtual
/// instruction until decoded otherwise).
fn timeline_activity(vector: Vector) -> Activity {
    match vector {
        Vector::Timer => Activity::Timer,
        Vector::Nic | Vector::Spurious | Vector::Unexpected(_) => Activity::NicInterrupt,
        Vector::Exception(13) => Activity::OtherVi,
        Vector::Exception(_) => Activity::Fault,
    }
}

/// An interrupt taken while the kernel idles (stage stamps on): the timeline's entry.
pub fn timeline_kernel_interrupt(vector: Vector) {
    with_guests(|g| g.net.timeline.entry(crate::arch::trap::entry_tsc(), timeline_activity(vector)));
}

/// The timer's interrupt, taken while the kernel idles (the halt loop then looks at what is due).
pub fn timer_interrupt() {
    with_guests(|g| g.timer.fired(cpu::rdtsc()));
}

/// The physical NIC's interrupt, taken while the kernel idles.
pub fn nic_interrupt() {
    with_guests(|g| {
        g.sched.set_clock(cpu::rdtsc());
        g.poll_network();
    });
}

/// Records the end of guest `id` (the current one) and frees its memory.
pub(super) fn end_guest(g: &mut Guests, id: GuestId, end: End) {
    let mut nic = g.nics.get_mut(id).and_then(Option::take);
    let kernel_counters = reports::kernel_pairs(g, id, nic.as_ref());
    let guest = at_mut(&mut g.list, id);
    reports::guest_ended(id, &guest.name, &kernel_counters, nic.as_ref());
    if let Some(nic) = &mut nic {
        g.net.drop_held(nic);
    }
    // Nothing may reach its pages once they are freed; pages the NIC still reads outlive it.
    if let (Some(nic), Some(space)) = (nic, guest.space.as_mut()) {
        g.net.orphan_in_flight(&nic, space);
    }
    flush_console(id, guest, true);
    match end {
        End::Exited(_) => g.counters.guests_exited = g.counters.guests_exited.saturating_add(1),
        _ => g.counters.guests_stopped = g.counters.guests_stopped.saturating_add(1),
    }
    if expected_to_end(guest.expect) {
        g.awaiting_end = g.awaiting_end.saturating_sub(1);
    }
    guest.end = Some(end);
    g.sched.finish(id);
    g.on_cpu = None;
    if let Some(space) = guest.space.take() {
        guest.pages_at_end = Some(space.page_counts());
        // Its tables may be the active ones: leave them before they are freed.
        space::activate_kernel();
        with_frames(|frames| space.release(frames));
    }
}

/// What [`switch_to_next`] found.
enum Step {
    /// A guest is in `frame`: run it.
    Run,
    /// Nobody is runnable: halt until an interrupt, then look again.
    Halt,
    /// The run is over, for this reason.
    Finish(&'static str),
}

/// Puts the next runnable guest's registers into `frame` (halting while every guest idles).
pub(super) fn switch_to_next(frame: &mut TrapFrame, previous: GuestId) {
    loop {
        let now = cpu::rdtsc();
        let step = with_guests(|g| {
            let poll_console = g.console_poll_due(now);
            if let Some(why) = run_over(g, now, poll_console) {
                return Step::Finish(why);
            }
            g.maybe_report_stats(now);
            // Frames a rate limit held back go on when their tokens are there, even while every
            // guest idles (the timer tick brings the kernel here).
            if g.net.rate_limited_due(now) {
                g.sched.set_clock(now);
                g.net_ctx().serve();
            }
            let Some(next) = g.sched.schedule(now) else {
                g.on_cpu = None;
                g.arm_timer(now);
                if g.net.stamps.on() {
                    g.net.timeline.halt(cpu::rdtsc_serialized());
                }
                return Step::Halt;
            };
            switch_user_state(g, next);
            let guest = at(&g.list, next);
            *frame = guest.frame;
            let switched = space::activate(space_of(guest).pml4_phys());
            g.flush_protected(next, switched);
            g.on_cpu = Some(next);
            g.running_since = now;
            if next != previous {
                g.counters.guest_switches = g.counters.guest_switches.saturating_add(1);
            }
            g.arm_timer(now);
            Step::Run
        });
        match step {
            Some(Step::Run) => return,
            Some(Step::Finish(why)) => finish_run(why),
            None => finish_run("no guest table to switch in"),
            Some(Step::Halt) => {}
        }
        // Every live guest idles: halt until the next interrupt (the timer, at the latest).
        cpu::enable_interrupts_and_halt();
        x86_64::instructions::interrupts::disable();
    }
}

/// Gives the CPU guest `next`'s [`UserState`], first saving the state it holds into its holder's
/// copy (unless that guest has ended: then its state is dropped, overwritten by `next`'s).
pub(super) fn switch_user_state(g: &mut Guests, next: GuestId) {
    if g.user_state_holder == Some(next) {
        return;
    }
    if let Some(holder) = g.user_state_holder.and_then(|h| g.list.get_mut(h)).filter(|h| h.end.is_none()) {
        holder.user_state.save();
    }
    at(&g.list, next).user_state.load();
    g.user_state_holder = Some(next);
}
