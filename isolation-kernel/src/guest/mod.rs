//! Guests, the binary's half (the portable half is `kernel_core::guest`): the types shared by
//! the files below, which each hold one part: `table` (the guest table and its accessors),
//! `create` (an image's guests built and the first entered), `run` (the trap from ring 3,
//! switching, idling, a guest's end), `virtual_instructions` (decode once, handle, write the
//! result), `console`, `end_of_run` (summaries and exit status), `reports` (guests' published
//! counters), `space` (address spaces), `loader` (ELF segments into a space). Each file takes
//! this module's types and imports with `use super::*`.
//!
//! Registers of the guest that trapped are its own to set: they are decoded here once and every
//! value is checked before use; the lints below keep them away from panics and overflow.

#![deny(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing, clippy::arithmetic_side_effects)]

mod console;
mod create;
mod end_of_run;
mod loader;
mod reports;
mod run;
pub mod space;
mod table;
mod virtual_instructions;

use crate::arch::cpu;
use crate::arch::trap::{enter_frame, TrapFrame};
use crate::arch::user_state::{self, UserState};
use crate::drivers::power_off::power_off;
use crate::logger::console_write_fmt;
use crate::mm::phys::with_frames;
use crate::trap::Vector;
use alloc::collections::BTreeMap;
use alloc::format;
use alloc::string::{String, ToString};
use alloc::vec::Vec;
use console::*;
use hypercall_abi::host::KernelExit;
use hypercall_abi::initrd::{
    cpu_budget_ticks, parse_config, Expect, GuestSpec, Record, RefusalKind, APP_DIR, CONFIG_FILE, MAX_CPU_BUDGET_MS,
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
use kernel_core::vnet::{GuestTx, RateLimiter};
use loader::App;
use run::*;
use space::{AddressSpace, LazyFault, PageCounts, PageUse};
use table::*;

pub use create::boot;
pub use end_of_run::finish_run;
pub use run::{handle_user_trap, nic_interrupt, timeline_kernel_interrupt, timer_interrupt};
pub use table::{set_per_guest_stats, stats_pairs};
use virtual_instructions::*;

/// How a guest ended.
#[derive(Clone, Debug)]
enum End {
    Exited(i32),
    Stopped { cause: GuestFault, rip: u64 },
    Refused(Refusal),
}

impl End {
    /// Matched by kind, never by text.
    fn meets(&self, expect: Expect) -> bool {
        match (self, expect) {
            (_, Expect::Any) => true,
            (End::Exited(code), Expect::Exit(want)) => *code == want,
            (End::Stopped { cause, .. }, Expect::Stopped(kind)) => cause.kind() == kind,
            (End::Refused(refusal), Expect::Refused(kind)) => refusal.kind() == kind,
            _ => false,
        }
    }
}

impl core::fmt::Display for End {
    /// As the end line and the `summary:` line print it: kinds first, for tools.
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            End::Exited(code) => write!(f, "exited {code}"),
            End::Stopped { cause, rip } => write!(f, "stopped {}: {cause} at rip {rip:#x}", cause.kind()),
            End::Refused(refusal) => write!(f, "refused {}: {refusal}", refusal.kind()),
        }
    }
}

/// Why a guest was refused at load time: typed, formatted only when reported.
#[derive(Clone, Copy, Debug)]
enum Refusal {
    AppMissing,
    InitrdMalformed(kernel_core::guest::cpio::CpioError),
    App(loader::AppError),
    /// No kernel memory for its floating-point state.
    NoFpuState,
    /// The kernel heap is nearly used up and has no memory to grow by: creating more guests would
    /// leave none for running the ones there are (an allocation failure would stop the kernel).
    KernelHeapLow {
        free: u64,
    },
    CpuBudgetOutOfRange {
        ms: u64,
    },
    AddressSpace(space::SpaceError),
    Vnic(space::SpaceError),
    Vswitch(&'static str),
}

impl Refusal {
    fn kind(&self) -> RefusalKind {
        use space::SpaceError;
        match self {
            Refusal::AppMissing => RefusalKind::AppMissing,
            Refusal::InitrdMalformed(_) => RefusalKind::InitrdMalformed,
            Refusal::App(loader::AppError::Elf(e)) => e.kind(),
            Refusal::App(loader::AppError::OutOfMemory)
            | Refusal::NoFpuState
            | Refusal::KernelHeapLow { .. }
            | Refusal::AddressSpace(SpaceError::OutOfMemory)
            | Refusal::Vnic(SpaceError::OutOfMemory) => RefusalKind::OutOfMemory,
            Refusal::CpuBudgetOutOfRange { .. } => RefusalKind::CpuBudgetOutOfRange,
            Refusal::AddressSpace(SpaceError::BadMapping(_)) => RefusalKind::BadMapping,
            Refusal::AddressSpace(SpaceError::HeapTooLarge(_)) => RefusalKind::HeapTooLarge,
            Refusal::Vnic(_) => RefusalKind::VnicUnbuildable,
            Refusal::Vswitch(_) => RefusalKind::VswitchRefused,
        }
    }
}

impl core::fmt::Display for Refusal {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            Refusal::AppMissing => f.write_str("its app is not in the initrd"),
            Refusal::InitrdMalformed(e) => write!(f, "initrd is malformed: {e}"),
            Refusal::App(e) => e.fmt(f),
            Refusal::NoFpuState => f.write_str("no kernel memory for its floating-point state"),
            Refusal::KernelHeapLow { free } => {
                write!(
                    f,
                    "the kernel heap has {free} bytes free, less than the {} kept for running guests, and no memory to grow by",
                    create::KERNEL_HEAP_RESERVE
                )
            }
            Refusal::CpuBudgetOutOfRange { ms } => {
                write!(f, "cpu_budget_ms = {ms} is out of range: at most {MAX_CPU_BUDGET_MS}")
            }
            Refusal::AddressSpace(e) => write!(f, "cannot build its address space: {e}"),
            Refusal::Vnic(e) => write!(f, "cannot build its virtual NIC: {e}"),
            Refusal::Vswitch(e) => write!(f, "cannot join the vswitch: {e}"),
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
    /// Idles asked for with a deadline already past when the kernel took the request: they
    /// return at once, with no wake-up (so `wakes` plus these is the guest's timed idles).
    idles_already_due: u64,
    /// CPU budget as the manifest states it, and in TSC ticks.
    cpu_budget_ms: u64,
    cpu_budget_ticks: Option<u64>,
    /// From the image config, which lives in the initrd for the whole run.
    expect: Expect,
    end: Option<End>,
    /// Its private pages when it ended (its address space is freed then).
    pages_at_end: Option<PageCounts>,
    console: Vec<u8>,
}

/// What the trap handler decided for the current guest.
enum Action {
    Resume,
    /// The guest yielded: to the back of the run queue.
    Preempt,
    /// The timer tick: the guest leaves the CPU if it had its turn.
    PreemptByTimer,
    /// A guest was just woken ahead of this one in virtual time: it runs now.
    YieldToWoken,
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
    /// Stack and heap pages backed on their first touch.
    lazy_pages_backed: u64,
    /// Console writes refused because the kernel heap had no room for the guest's line (the
    /// guest got `NoMemory`): its text is lost, and counted here.
    console_writes_refused: u64,
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
    /// When the console is next read for a typed `q` if nothing brings the kernel in before.
    next_console_poll: u64,
    /// The tickless timer: what is armed, and its counters.
    timer: kernel_core::guest::tickless::TimerPlan,
    timer_limits: kernel_core::guest::tickless::Limits,
    last_reported: (kernel_core::vnet::NetCounters, u64),
    /// TSC ticks from a one-packet doorbell's trap to the NIC notify (instructions under
    /// `-icount`), for the transmit-path figures.
    kick_samples: Vec<u32>,
}

/// The guest table, installed by [`boot`]. Reached only through [`with_guests`].
static GUESTS: spin::Mutex<Option<Guests>> = spin::Mutex::new(None);

/// What follows a trap, decided with the guest table borrowed and done after it is released.
enum Next {
    /// Back to the guest that trapped.
    Resume,
    /// Another guest (or the idle halt); the argument is the guest that trapped.
    Switch(GuestId),
    /// The run is over, for this reason.
    Finish(&'static str),
}

/// Why a virtual instruction did not produce a value.
enum ViFailure {
    /// An error code for the guest (`rax`), which keeps running.
    Error(vi::Error),
    /// The guest is stopped, for this cause.
    Stop(GuestFault),
}
