//! Guests: the table of guests, the trap path from ring 3 (virtual instructions, faults, timer
//! preemption), switching between guests, and the end of the run.
//!
//! Registers of the guest that trapped are its own to set: they are decoded here once and every
//! value is checked before use; the lints below keep them away from panics and overflow.

#![deny(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing, clippy::arithmetic_side_effects)]

mod loader;
mod reports;
pub mod space;

use crate::arch::cpu;
use crate::arch::trap::{enter_frame, TrapFrame};
use crate::arch::user_state::{self, UserState};
use crate::drivers::debug_exit::exit_qemu;
use crate::logger::console_write_fmt;
use crate::mm::phys::with_frames;
use crate::trap::Vector;
use alloc::collections::BTreeMap;
use alloc::format;
use alloc::string::{String, ToString};
use alloc::vec::Vec;
use hypercall_abi::host::KernelExit;
use hypercall_abi::initrd::{
    cpu_budget_ticks, parse_config, Expect, GuestSpec, Record, APP_DIR, CONFIG_FILE, MAX_CPU_BUDGET_MS,
};
use hypercall_abi::layout::STACK_TOP;
use hypercall_abi::vi::{self, MAX_CONSOLE_WRITE};
use kernel_core::guest::cpio::Archive;
use kernel_core::guest::mem::{readable_prefix, Access, UserSlice};
use kernel_core::guest::sched::{GuestId, Scheduler};
use kernel_core::trap::exceptions::{fpu_stop_cause, PageFault};
use kernel_core::trap::fault::GuestFault;
use kernel_core::trap::vcall::ViCall;
use kernel_core::trap::vinstr::{decode_gp, Direction, GpInstruction, PortOperand, MAX_INSTRUCTION_LEN};
use loader::App;
use space::AddressSpace;

/// `rflags` of a guest: interrupts enabled (bit 9), reserved bit 1 set, IOPL 0.
const GUEST_RFLAGS: u64 = 0x202;
/// Longest console line kept before it is flushed without a newline.
const CONSOLE_LINE_MAX: usize = 512;

/// How a guest ended.
#[derive(Clone, Debug)]
enum End {
    Exited(i32),
    Stopped { cause: GuestFault, rip: u64 },
    Refused(String),
}

impl End {
    fn meets(&self, expect: Expect<'_>) -> bool {
        match (self, expect) {
            (_, Expect::Any) => true,
            (End::Exited(code), Expect::Exit(want)) => *code == want,
            (End::Stopped { cause, .. }, Expect::Stopped(text)) => cause.to_string().contains(text),
            (End::Refused(error), Expect::Refused(text)) => error.contains(text),
            _ => false,
        }
    }
}

pub struct Guest {
    pub name: String,
    /// Registers while the guest is not on the CPU.
    frame: TrapFrame,
    /// Registers outside the trap frame (x87/MMX/SSE, segment selectors) while another guest's
    /// are on the CPU.
    user_state: UserState,
    pub space: Option<AddressSpace>,
    cpu_ticks: u64,
    /// Virtual instructions this guest issued: with `cpu_ticks`, what bounds the work of an
    /// idle guest in the tests (a guest whose idle returned at once would issue thousands).
    virtual_instructions: u64,
    /// CPU budget as the manifest states it, and in TSC ticks.
    cpu_budget_ms: u64,
    cpu_budget_ticks: Option<u64>,
    /// From the image config, which lives in the initrd for the whole run.
    expect: Expect<'static>,
    end: Option<End>,
    console: Vec<u8>,
}

/// What the trap handler decided for the current guest.
enum Action {
    Resume,
    Preempt,
    Idle(Option<u64>),
    Exit(i32),
    Stop(GuestFault),
}

#[derive(Default)]
struct Counters {
    guests_created: u64,
    guests_refused: u64,
    guests_exited: u64,
    guests_stopped: u64,
    virtual_instructions: u64,
    guest_switches: u64,
}

struct Guests {
    list: Vec<Guest>,
    /// Each guest's virtual NIC, by guest id (apart from `list` so the packet path can borrow
    /// them alongside the scheduler).
    nics: Vec<Option<crate::vnet::GuestNic>>,
    net: crate::vnet::Network,
    sched: Scheduler,
    /// TSC when the current guest last got the CPU (for CPU accounting).
    running_since: u64,
    /// The guest whose registers are in the trap frame, if any.
    on_cpu: Option<GuestId>,
    /// The guest whose [`UserState`] the CPU holds (it may have ended since).
    user_state_holder: Option<GuestId>,
    counters: Counters,
    shutdown_deadline: Option<u64>,
    tsc_hz: u64,
    /// Guests expected to end (exit, stop or be refused) that have not yet: when the last one
    /// ends, the run is over even if servers (expected to keep running) are still up.
    awaiting_end: usize,
    /// Whether any guest at all is expected to end (else only shutdown_after ends the run).
    some_expected_to_end: bool,
    next_stats_report: u64,
    last_reported: (kernel_core::vnet::NetCounters, u64),
    /// TSC ticks from a one-packet doorbell's trap to the NIC notify (instructions under
    /// `-icount`), for the transmit-path figures.
    kick_samples: Vec<u32>,
}

/// Guest `id` of the table. Ids come only from `Scheduler::add`, which boot calls once for each
/// guest it pushes onto the table (and the table never shrinks), so every id indexes it.
#[allow(clippy::indexing_slicing)] // proof above
fn at(list: &[Guest], id: GuestId) -> &Guest {
    &list[id]
}

/// [`at`], mutable.
#[allow(clippy::indexing_slicing)] // proof at `at`
fn at_mut(list: &mut [Guest], id: GuestId) -> &mut Guest {
    &mut list[id]
}

/// The address space of a guest that is running or scheduled: `end_guest` takes the space in
/// the same step that removes the guest from the scheduler, and only such guests run.
#[allow(clippy::expect_used)] // proof above
fn space_of(guest: &Guest) -> &AddressSpace {
    guest.space.as_ref().expect("a scheduled guest has an address space")
}

/// The median of sorted values (0 for none).
fn median<T: Copy + Default>(sorted: &[T]) -> T {
    sorted.get(sorted.len() / 2).copied().unwrap_or_default()
}

/// TSC ticks in units of `1/per_second` s, in 128 bits (no overflow; 0 without a TSC rate).
fn ticks_to(ticks: u64, per_second: u64, tsc_hz: u64) -> u64 {
    let value = u128::from(ticks).saturating_mul(u128::from(per_second)).checked_div(u128::from(tsc_hz));
    value.map_or(0, |v| u64::try_from(v).unwrap_or(u64::MAX))
}

/// Whether a guest with this expectation is expected to end by itself.
fn expected_to_end(expect: Expect<'_>) -> bool {
    matches!(expect, Expect::Exit(_) | Expect::Stopped(_) | Expect::Refused(_))
}

/// The guest table, installed by [`boot`]. Reached only through [`with_guests`].
static GUESTS: spin::Mutex<Option<Guests>> = spin::Mutex::new(None);

/// Runs `f` on the guest table (`None` before [`boot`] installed it). The kernel runs on one CPU
/// with interrupts off, so a second borrow while one is live can only be a re-entrant call, a
/// kernel bug: it panics, naming itself, instead of spinning for ever on a lock a caller forgot
/// to drop. Whatever must run with the table released (ending the run, switching stacks) is
/// decided inside and done by the caller afterwards.
fn with_guests<R>(f: impl FnOnce(&mut Guests) -> R) -> Option<R> {
    let Some(mut guard) = GUESTS.try_lock() else {
        panic!("the guest table was borrowed re-entrantly");
    };
    guard.as_mut().map(f)
}

/// Installs the guest table (once, at boot).
fn install_guests(g: Guests) {
    let Some(mut guard) = GUESTS.try_lock() else {
        panic!("the guest table was borrowed re-entrantly");
    };
    *guard = Some(g);
}

/// `name=value` pairs for the kernel's stats line.
pub fn stats_pairs() -> Vec<(&'static str, u64)> {
    with_guests(|g| stats_pairs_of(g)).unwrap_or_default()
}

fn stats_pairs_of(g: &Guests) -> Vec<(&'static str, u64)> {
    let c = &g.counters;
    let mut pairs = alloc::vec![
        ("guests_created", c.guests_created),
        ("guests_refused", c.guests_refused),
        ("guests_exited", c.guests_exited),
        ("guests_stopped", c.guests_stopped),
        ("guests_running", g.sched.live() as u64),
        ("virtual_instructions", c.virtual_instructions),
        ("guest_switches", c.guest_switches),
    ];
    pairs.extend(g.net.counters.pairs());
    pairs.extend(reports::totals(&g.nics));
    pairs.push(("stamp_records", g.net.stamp_records_made));
    if let Some(nic) = &g.net.nic {
        pairs.extend([
            ("nic_tx_frames", nic.counters.tx_frames),
            ("nic_rx_frames", nic.counters.rx_frames),
            ("nic_rx_malformed", nic.counters.rx_malformed),
            ("nic_tx_queue_full", nic.counters.tx_queue_full),
            ("nic_notifies", nic.counters.notifies),
        ]);
    }
    pairs
}

/// `stats=per-guest`: each guest's own counters on a line after every `stats:` line.
pub fn set_per_guest_stats(on: bool) {
    reports::set_per_guest(on);
}

/// Reads the initrd, loads every guest of the image and runs the first one. Returns only with
/// the reason the initrd cannot be used.
pub fn boot(
    initrd: &'static [u8],
    tsc_hz: u64,
    shutdown_deadline: Option<u64>,
    trap_stack_top: u64,
    tx_mode: kernel_core::boot::cmdline::TxMode,
    stamps: bool,
) -> String {
    let archive = Archive::new(initrd);
    let config = match archive.find(CONFIG_FILE) {
        Ok(Some(entry)) => entry.data,
        Ok(None) => return format!("initrd has no {CONFIG_FILE}"),
        Err(e) => return format!("initrd is malformed: {e}"),
    };
    let Ok(config) = core::str::from_utf8(config) else {
        return format!("{CONFIG_FILE} is not UTF-8");
    };
    let mut specs: Vec<GuestSpec<'static>> = Vec::new();
    for record in parse_config(config) {
        match record {
            Ok(Record::Image { name }) => log::info!("image `{name}`"),
            Ok(Record::Guest(spec)) => specs.push(spec),
            Err(e) => return format!("{CONFIG_FILE}: {e}"),
        }
    }
    if specs.is_empty() {
        return format!("{CONFIG_FILE} names no guests");
    }

    let max_mtu = specs.iter().filter_map(|s| s.net).map(|n| u64::from(n.mtu)).max();
    // No guest with a NIC: no physical NIC, no packet buffers.
    let physical_nic = max_mtu.and_then(|mtu| crate::drivers::virtio_net::probe(hypercall_abi::vnic::max_frame(mtu)));
    let max_mtu = max_mtu.unwrap_or(0);
    log::info!("transmit path: {tx_mode:?}; largest MTU {max_mtu}");
    let mut network = with_frames(|frames| crate::vnet::Network::new(physical_nic, tx_mode, max_mtu, frames));
    if stamps {
        network.enable_stamps();
        crate::arch::trap::enable_stamping();
        log::info!("per-packet stage stamps on");
    }
    let mut g = Guests {
        list: Vec::with_capacity(specs.len()),
        nics: Vec::with_capacity(specs.len()),
        net: network,
        sched: Scheduler::new(),
        running_since: 0,
        on_cpu: None,
        user_state_holder: None,
        counters: Counters::default(),
        shutdown_deadline,
        tsc_hz,
        awaiting_end: specs.iter().filter(|s| expected_to_end(s.expect)).count(),
        some_expected_to_end: specs.iter().any(|s| expected_to_end(s.expect)),
        next_stats_report: 0,
        last_reported: Default::default(),
        kick_samples: Vec::with_capacity(KICK_SAMPLES),
    };
    let mut apps: BTreeMap<&str, Result<App, String>> = BTreeMap::new();
    let mut create_ticks = Vec::with_capacity(specs.len());
    let mut pages = Vec::with_capacity(specs.len());
    for spec in &specs {
        let id = g.sched.add();
        let app = apps.entry(spec.app).or_insert_with(|| load_app(&archive, spec.app));
        let start = cpu::rdtsc();
        let user_state = UserState::new();
        let budget_ticks = match spec.cpu_budget_ms {
            0 => Ok(None),
            ms => cpu_budget_ticks(ms, tsc_hz)
                .map(Some)
                .ok_or_else(|| format!("cpu_budget_ms = {ms} is out of range: at most {MAX_CPU_BUDGET_MS}")),
        };
        let built = match (app, &budget_ticks) {
            (Ok(_), _) if user_state.is_none() => Err("no kernel memory for its floating-point state".to_string()),
            (Ok(_), Err(e)) => Err(e.clone()),
            (Ok(app), Ok(_)) => with_frames(|frames| {
                let mut loaded = loader::build_guest(id as u32, spec, app, tsc_hz, frames)
                    .map_err(|e| format!("cannot build its address space: {e}"))?;
                let nic = match spec.net {
                    None => None,
                    Some(config) => match crate::vnet::build_nic(&mut loaded.space, frames, config, stamps) {
                        Ok(nic) => Some(nic),
                        Err(e) => {
                            loaded.space.release(frames);
                            return Err(format!("cannot build its virtual NIC: {e}"));
                        }
                    },
                };
                Ok((loaded, nic))
            }),
            (Err(e), _) => Err(e.clone()),
        };
        let built = built.and_then(|(loaded, nic)| match g.net.add_guest(id, nic.as_ref()) {
            Ok(()) => Ok((loaded, nic)),
            Err(e) => {
                with_frames(|frames| loaded.space.release(frames));
                Err(format!("cannot join the vswitch: {e}"))
            }
        });
        if built.is_err() {
            let _ = g.net.add_guest(id, None);
        }
        let mut guest = Guest {
            name: spec.name.into(),
            frame: TrapFrame::default(),
            user_state: user_state.unwrap_or_default(),
            space: None,
            cpu_ticks: 0,
            virtual_instructions: 0,
            cpu_budget_ms: spec.cpu_budget_ms,
            cpu_budget_ticks: budget_ticks.ok().flatten(),
            expect: spec.expect,
            end: None,
            console: Vec::new(),
        };
        match built {
            Ok((loaded, nic)) => {
                g.nics.push(nic);
                create_ticks.push(cpu::rdtsc().saturating_sub(start));
                pages.push(loaded.space.owned_frames());
                let selectors = crate::arch::gdt::selectors();
                guest.frame = TrapFrame {
                    rip: loaded.entry,
                    cs: u64::from(selectors.user_code.0),
                    rflags: GUEST_RFLAGS,
                    rsp: STACK_TOP,
                    ss: u64::from(selectors.user_data.0),
                    ..TrapFrame::default()
                };
                guest.space = Some(loaded.space);
                g.counters.guests_created = g.counters.guests_created.saturating_add(1);
            }
            Err(error) => {
                g.nics.push(None);
                if expected_to_end(spec.expect) {
                    g.awaiting_end = g.awaiting_end.saturating_sub(1);
                }
                console_write_fmt(format_args!("guest {id} {} refused: {error}\n", spec.name));
                guest.end = Some(End::Refused(error));
                g.sched.finish(id);
                g.counters.guests_refused = g.counters.guests_refused.saturating_add(1);
            }
        }
        g.list.push(guest);
    }
    if !create_ticks.is_empty() {
        create_ticks.sort_unstable();
        pages.sort_unstable();
        let shared: usize = apps.values().filter_map(|a| a.as_ref().ok()).map(App::shared_frames).sum();
        log::info!(
            "guests: {} created, {} refused; creating one took {} TSC ticks (median); {} private pages per guest (median), {} pages shared",
            g.counters.guests_created,
            g.counters.guests_refused,
            median(&create_ticks),
            median(&pages),
            shared
        );
    }

    let now = cpu::rdtsc();
    let Some(first) = g.sched.schedule(now) else {
        install_guests(g);
        finish_run("no guest could be started");
    };
    g.running_since = now;
    g.on_cpu = Some(first);
    switch_user_state(&mut g, first);
    let frame = at(&g.list, first).frame;
    space::activate(space_of(at(&g.list, first)).pml4_phys());
    install_guests(g);
    // SAFETY: the trap stack's top is the TSS RSP0 and is unused (we run on the boot stack);
    // the frame is the guest's initial ring-3 context in the address space just activated.
    unsafe { enter_frame(&frame, trap_stack_top) }
}

fn load_app(archive: &Archive<'static>, app: &str) -> Result<App, String> {
    let path = format!("{APP_DIR}{app}");
    let entry = match archive.find(&path) {
        Ok(Some(entry)) => entry,
        Ok(None) => return Err(format!("app `{app}` is not in the initrd")),
        Err(e) => return Err(format!("initrd is malformed: {e}")),
    };
    let loaded = with_frames(|frames| App::load(entry.data, frames)).map_err(|e| format!("app `{app}`: {e}"));
    if let Err(e) = &loaded {
        log::error!("{e}");
    }
    loaded
}

/// What follows a trap, decided with the guest table borrowed and done after it is released.
enum Next {
    /// Back to the guest that trapped.
    Resume,
    /// Another guest (or the idle halt); the argument is the guest that trapped.
    Switch(GuestId),
    /// The run is over, for this reason.
    Finish(&'static str),
}

/// A trap from ring 3: handles it, then resumes the current guest or switches to another.
pub fn handle_user_trap(frame: &mut TrapFrame, vector: Vector) {
    let now = cpu::rdtsc();
    match with_guests(|g| handle_trap(g, frame, vector, now)) {
        Some(Next::Resume) => {}
        Some(Next::Switch(previous)) => switch_to_next(frame, previous),
        Some(Next::Finish(why)) => finish_run(why),
        None => finish_run("a trap from ring 3 before any guest was started"),
    }
}

/// Whether the run is over, and why: one check for every place that asks. `poll_console`
/// reads the serial port for a typed `q` (on the timer and when switching, not on every trap).
fn run_over(g: &Guests, now: u64, poll_console: bool) -> Option<&'static str> {
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

fn handle_trap(g: &mut Guests, frame: &mut TrapFrame, vector: Vector, now: u64) -> Next {
    let Some(id) = g.on_cpu else { return Next::Finish("a trap from ring 3 with no guest on the CPU") };
    let action = match vector {
        Vector::Timer => {
            crate::arch::clock::timer_tick();
            g.poll_network();
            Action::Preempt
        }
        Vector::Nic => {
            let woke = g.poll_network();
            crate::arch::clock::end_of_interrupt();
            // Let the receiver run soon rather than at the next tick.
            if woke > 0 {
                Action::Preempt
            } else {
                Action::Resume
            }
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
        Vector::Exception(14) => {
            let fault = PageFault { error_code: frame.error_code, address: cpu::cr2() };
            // A write (bit 1) by the user (bit 2) to a present (bit 0) page may be a COW fault.
            let cow_candidate = frame.error_code & 0x7 == 0x7 && g.nics.get(id).is_some_and(Option::is_some);
            let verdict = cow_candidate.then(|| g.net_ctx().write_fault(id, fault.address));
            match verdict {
                Some(crate::vnet::WriteFaultVerdict::Resolved) => Action::Resume,
                Some(crate::vnet::WriteFaultVerdict::Stop(cause)) => Action::Stop(cause),
                Some(crate::vnet::WriteFaultVerdict::NotCopyOnWrite) | None => {
                    Action::Stop(GuestFault::PageFault(fault))
                }
            }
        }
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
        Action::Resume | Action::Preempt | Action::Idle(_) if over_budget => {
            Action::Stop(GuestFault::CpuBudget { ms: guest.cpu_budget_ms })
        }
        other => other,
    };
    if let Some(why) = run_over(g, now, timer) {
        at_mut(&mut g.list, id).frame = *frame;
        return Next::Finish(why);
    }

    let guest = at_mut(&mut g.list, id);
    match action {
        Action::Resume => {
            g.flush_protected(id, false);
            return Next::Resume;
        }
        Action::Preempt => {
            guest.frame = *frame;
            g.sched.preempt_current();
        }
        Action::Idle(deadline) => {
            guest.frame = *frame;
            g.sched.idle_current(deadline);
        }
        Action::Exit(code) => {
            console_write_fmt(format_args!("guest {id} {} exited {code}\n", guest.name));
            end_guest(g, id, End::Exited(code));
        }
        Action::Stop(cause) => {
            console_write_fmt(format_args!("guest {id} {} stopped: {cause} at rip {:#x}\n", guest.name, frame.rip));
            end_guest(g, id, End::Stopped { cause, rip: frame.rip });
        }
    }
    Next::Switch(id)
}

/// Most doorbell timings kept.
const KICK_SAMPLES: usize = 65_536;

/// Seconds between `stats:` lines while a run goes on (printed only when a counter changed).
const STATS_INTERVAL_SECS: u64 = 5;

impl Guests {
    /// Prints the stats line every few seconds if the packet counters moved.
    fn maybe_report_stats(&mut self, now: u64) {
        if now < self.next_stats_report {
            return;
        }
        self.next_stats_report = now.saturating_add(STATS_INTERVAL_SECS.saturating_mul(self.tsc_hz));
        let snapshot = (self.net.counters, self.counters.virtual_instructions);
        if snapshot != self.last_reported {
            self.last_reported = snapshot;
            crate::stats::print_stats_with(stats_pairs_of(self));
            reports::print_per_guest(&self.list, &self.nics);
        }
    }

    fn net_ctx(&mut self) -> crate::vnet::NetCtx<'_> {
        crate::vnet::NetCtx { net: &mut self.net, nics: &mut self.nics, sched: &mut self.sched, guests: &mut self.list }
    }

    /// Before guest `id` runs again in the address space that is active now: drop the TLB
    /// entries of pages write-protected since it last ran (one `invlpg` each; none at all when
    /// the address space is switched, which flushes them anyway).
    fn flush_protected(&mut self, id: GuestId, address_space_switched: bool) {
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
    fn poll_network(&mut self) -> usize {
        let mut ctx = self.net_ctx();
        let received = ctx.receive_from_nic();
        ctx.serve();
        received
    }
}

/// The physical NIC's interrupt, taken while the kernel idles.
pub fn nic_interrupt() {
    with_guests(|g| g.poll_network());
}

/// Records the end of guest `id` (the current one) and frees its memory.
fn end_guest(g: &mut Guests, id: GuestId, end: End) {
    let nic = g.nics.get_mut(id).and_then(Option::take);
    let guest = at_mut(&mut g.list, id);
    if let Some(nic) = &nic {
        reports::guest_ended(id, &guest.name, nic);
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
        // Its tables may be the active ones: leave them before they are freed.
        space::activate_kernel();
        with_frames(|frames| space.release(frames));
    }
}

/// Puts the next runnable guest's registers into `frame` (halting while every guest idles).
fn switch_to_next(frame: &mut TrapFrame, previous: GuestId) {
    loop {
        let now = cpu::rdtsc();
        let step = with_guests(|g| {
            if let Some(why) = run_over(g, now, true) {
                return Next::Finish(why);
            }
            g.maybe_report_stats(now);
            let Some(next) = g.sched.schedule(now) else {
                g.on_cpu = None;
                return Next::Switch(previous); // nobody runnable: halt, then look again
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
            Next::Resume
        });
        match step {
            Some(Next::Resume) => return,
            Some(Next::Finish(why)) => finish_run(why),
            None => finish_run("no guest table to switch in"),
            Some(Next::Switch(_)) => {}
        }
        // Every live guest idles: halt until the next interrupt (the timer, at the latest).
        cpu::enable_interrupts_and_halt();
        x86_64::instructions::interrupts::disable();
    }
}

/// Gives the CPU guest `next`'s [`UserState`], first saving the state it holds into its holder's
/// copy (unless that guest has ended: then its state is dropped, overwritten by `next`'s).
fn switch_user_state(g: &mut Guests, next: GuestId) {
    if g.user_state_holder == Some(next) {
        return;
    }
    if let Some(holder) = g.user_state_holder.and_then(|h| g.list.get_mut(h)).filter(|h| h.end.is_none()) {
        holder.user_state.save();
    }
    at(&g.list, next).user_state.load();
    g.user_state_holder = Some(next);
}

/// Reads the bytes at `rip` in the guest's memory that are readable, up to one instruction's
/// worth, into `bytes`; returns how many there are.
#[inline(always)]
fn instruction_at<'b>(guest: &Guest, rip: u64, bytes: &'b mut [u8; MAX_INSTRUCTION_LEN]) -> &'b [u8] {
    let Some(space) = guest.space.as_ref() else { return &[] };
    let readable = readable_prefix(&space.map, rip, MAX_INSTRUCTION_LEN as u64, Access::READ) as usize;
    let Some(prefix) = bytes.get_mut(..readable) else { return &[] };
    if let Ok(slice) = UserSlice::new(rip, readable as u64).validate(&space.map, Access::READ) {
        space.read(slice, prefix);
    }
    prefix
}

fn general_protection(g: &mut Guests, id: GuestId, frame: &mut TrapFrame, now: u64) -> Action {
    let mut bytes = [0u8; MAX_INSTRUCTION_LEN];
    match decode_gp(instruction_at(at(&g.list, id), frame.rip, &mut bytes)) {
        Ok(GpInstruction::PortIo(io)) => {
            let port = match io.port {
                PortOperand::Dx => frame.rdx as u16,
                PortOperand::Imm(port) => u16::from(port),
            };
            match (io.direction, io.port) {
                (Direction::Out, PortOperand::Dx) if vi::is_vi_port(port) => {
                    frame.rip = frame.rip.wrapping_add(io.len as u64); // a user address plus at most 15
                    virtual_instruction(g, id, port, frame, now)
                }
                (Direction::Out, _) if vi::is_vi_port(port) => Action::Stop(GuestFault::ViNotDxForm { port }),
                (Direction::Out, _) => Action::Stop(GuestFault::PortOutsideRange { port }),
                (Direction::In, _) => Action::Stop(GuestFault::PortRead { port }),
            }
        }
        Ok(GpInstruction::StringIo) => Action::Stop(GuestFault::StringIo),
        Ok(GpInstruction::Privileged(p)) => Action::Stop(GuestFault::Privileged(p)),
        Ok(GpInstruction::Other) => Action::Stop(GuestFault::GeneralProtection { error_code: frame.error_code }),
        Err(e) => Action::Stop(GuestFault::InstructionUnreadable(e)),
    }
}

/// Why a virtual instruction did not produce a value.
enum ViFailure {
    /// An error code for the guest (`rax`), which keeps running.
    Error(vi::Error),
    /// The guest is stopped, for this cause.
    Stop(GuestFault),
}

/// Decodes the virtual instruction once, runs its handler, and writes its result: the one place
/// that sets `rax` or stops the guest for a virtual instruction.
fn virtual_instruction(g: &mut Guests, id: GuestId, port: u16, frame: &mut TrapFrame, now: u64) -> Action {
    g.counters.virtual_instructions = g.counters.virtual_instructions.saturating_add(1);
    let guest = at_mut(&mut g.list, id);
    guest.virtual_instructions = guest.virtual_instructions.saturating_add(1);
    let outcome =
        ViCall::decode(port, frame.rdi, frame.rsi).map_err(ViFailure::Error).and_then(|call| run_vi(g, id, call, now));
    match outcome {
        Ok((value, action)) => {
            frame.rax = value;
            action
        }
        Err(ViFailure::Error(error)) => {
            frame.rax = error.code() as u64;
            Action::Resume
        }
        Err(ViFailure::Stop(cause)) => Action::Stop(cause),
    }
}

/// The handlers: the value for `rax` and what happens to the guest next.
fn run_vi(g: &mut Guests, id: GuestId, call: ViCall, now: u64) -> Result<(u64, Action), ViFailure> {
    let nic = |g: &Guests| {
        g.nics.get(id).and_then(Option::as_ref).map(|_| ()).ok_or(ViFailure::Error(vi::Error::Unsupported))
    };
    Ok(match call {
        ViCall::ConsoleWrite { addr, len } => (console_write(g, id, addr, len)?, Action::Resume),
        ViCall::Exit { code } => (0, Action::Exit(code)),
        ViCall::Yield => (0, Action::Preempt),
        ViCall::IdleUntil { deadline } => {
            // A virtual interrupt raised since the guest last looked ends the idle at once.
            let pending = g.nics.get(id).and_then(Option::as_ref).map_or(0, crate::vnet::GuestNic::virq);
            let action = match deadline {
                _ if pending != 0 => Action::Resume,
                None => Action::Idle(None),
                Some(deadline) if deadline <= now => Action::Resume,
                Some(deadline) => Action::Idle(Some(deadline)),
            };
            (pending, action)
        }
        ViCall::Null => (0, Action::Resume),
        ViCall::VnicTxKick => {
            nic(g)?;
            // Doorbell to NIC notify, for kicks that carried exactly one packet (stamping on).
            let stamps = g.net.stamps;
            let start = stamps.now();
            let taken = g.net_ctx().tx_kick(id);
            if stamps.on() && taken == 1 && g.kick_samples.len() < g.kick_samples.capacity() {
                g.kick_samples.push(stamps.now().saturating_sub(start) as u32);
            }
            (taken, Action::Resume)
        }
        ViCall::VnicRxPosted => {
            nic(g)?;
            (g.nics.get(id).and_then(Option::as_ref).map_or(0, |nic| u64::from(nic.rx_posted())), Action::Resume)
        }
    })
}

/// Writes the guest's `len` bytes at `addr` (already bounded by the decoder) to its console
/// line; returns the bytes written.
fn console_write(g: &mut Guests, id: GuestId, addr: u64, len: u64) -> Result<u64, ViFailure> {
    let guest = at_mut(&mut g.list, id);
    let space = space_of(guest);
    let slice = match UserSlice::new(addr, len).validate(&space.map, Access::READ) {
        Ok(slice) => slice,
        Err(bad) => return Err(ViFailure::Stop(GuestFault::BadPointer { call: "console_write", bad })),
    };
    let mut buf = [0u8; MAX_CONSOLE_WRITE as usize];
    let text = buf.get_mut(..len as usize).ok_or(ViFailure::Error(vi::Error::BadLength))?;
    space.read(slice, text);
    for &byte in &*text {
        if byte == b'\n' {
            flush_console(id, guest, false);
        } else {
            guest.console.push(byte);
            if guest.console.len() >= CONSOLE_LINE_MAX {
                flush_console(id, guest, false);
            }
        }
    }
    Ok(len)
}

/// Prints the guest's buffered console line, prefixed with its id and name.
fn flush_console(id: GuestId, guest: &mut Guest, only_if_nonempty: bool) {
    if only_if_nonempty && guest.console.is_empty() {
        return;
    }
    let text = String::from_utf8_lossy(&guest.console);
    log::info!("guest {id} {}: {}", guest.name, text.trim_end_matches('\r'));
    guest.console.clear();
}

/// Prints every guest's end against its expectation, the stats line, and ends the machine:
/// with success only if every expectation holds.
pub fn finish_run(why: &str) -> ! {
    let mut all_met = true;
    with_guests(|g| {
        log::info!("run over: {why}");
        for (id, guest) in g.list.iter_mut().enumerate() {
            let (summary, met) = match &guest.end {
                Some(end) => {
                    let summary = match end {
                        End::Exited(code) => format!("exited {code}"),
                        End::Stopped { cause, rip } => format!("stopped: {cause} at rip {rip:#x}"),
                        End::Refused(error) => format!("refused: {error}"),
                    };
                    (summary, end.meets(guest.expect))
                }
                None => {
                    flush_console(id, guest, true);
                    ("still running".to_string(), matches!(guest.expect, Expect::Running | Expect::Any))
                }
            };
            all_met &= met;
            let verdict = if met { "as expected" } else { "EXPECTATION FAILED" };
            console_write_fmt(format_args!(
                "summary: guest {id} {}: {summary}; expected {} ({verdict}); cpu {} ms; cpu_us={} virtual_instructions={}\n",
                guest.name,
                guest.expect,
                ticks_to(guest.cpu_ticks, 1_000, g.tsc_hz),
                ticks_to(guest.cpu_ticks, 1_000_000, g.tsc_hz),
                guest.virtual_instructions
            ));
        }
    });
    with_guests(|g| {
        use hypercall_abi::vnic::stamps::{quantiles, write_stages, TX_STAGES};
        for (len, samples) in &g.net.tx_stage_samples {
            let mut line = format!("dispatch: dir=tx mode={:?} frame={len} samples={}", g.net.mode, samples.len());
            let _ = write_stages(&mut line, &TX_STAGES, samples, &mut alloc::vec![0; samples.len()]);
            console_write_fmt(format_args!("{line}\n"));
        }
        if !g.kick_samples.is_empty() {
            let n = g.kick_samples.len();
            let (median, p10, p90) = quantiles(&mut g.kick_samples);
            let cn = g.net.completion_samples.len();
            let (cmedian, _, _) = quantiles(&mut g.net.completion_samples);
            console_write_fmt(format_args!(
                "kick: tx={:?} one-packet doorbells={n} ticks trap-to-notify median={median} p10={p10} p90={p90}; \
                 zero-copy completion batches={cn} ticks per packet median={cmedian}\n",
                g.net.mode
            ));
        }
    });
    crate::stats::print_stats_with(stats_pairs());
    with_guests(|g| reports::print_per_guest(&g.list, &g.nics));
    if all_met {
        log::info!("every guest met its expectation");
        exit_qemu(KernelExit::Success)
    } else {
        log::error!("some guests did not meet their expectations");
        exit_qemu(KernelExit::Failure)
    }
}
