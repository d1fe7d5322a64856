//! Time and the timer: the TSC (frequency, boot stamp, uptime) and the local APIC's one-shot
//! timer (TSC-deadline mode where the CPU has it, else a one-shot count), its interrupt count
//! and end-of-interrupt. The timer is tickless: it is armed only for what wants the CPU back
//! (`kernel_core::guest::tickless` plans when), never periodically.

use crate::arch::vectors::{SPURIOUS_VECTOR, TIMER_VECTOR};
use crate::arch::{cpu, lapic, pic, tsc};
use crate::mm::{paging, phys};
use core::sync::atomic::{AtomicU64, Ordering};

/// The scheduler's quantum: the turn a busy guest gets beside another busy one, in
/// microseconds. With a tickless timer it is no longer a timer period (the timer fires at a
/// turn's end only while another guest is runnable), and a guest woken by input no longer waits
/// for turns to end (it is boosted), so it only sets how often busy guests switch, and how often
/// a guest still starting up is preempted. Chosen by measurement (`bench density --quick`,
/// echo-1k, TCG, loaded host, 2-3 runs each): at 250 µs 6,200 timer interrupts and every guest
/// listening after 1.2-2.0 s; at 1 ms 200-3,800 and 0.8-1.1 s; at 4 ms 200-830 and 0.8-1.0 s; at
/// 10 ms 68 and 0.7-1.4 s. 4 ms: start-up guests (about 1 ms of work each under TCG) are rarely
/// preempted, and a guest woken without a boost and ahead in virtual time waits at most a turn
/// per busy guest.
pub const QUANTUM_MICROS: u64 = 4_000;

/// The nearest the timer is armed, in nanoseconds from now: a time already due (a guest's
/// deadline in the past) fires this much later, so guests cannot make the kernel take timer
/// interrupts back to back.
pub const TIMER_MIN_AHEAD_NS: u64 = 2_000;
/// The farthest the timer is armed, in milliseconds (later times are looked at again then).
pub const TIMER_MAX_AHEAD_MS: u64 = 10_000;

static TSC_HZ: AtomicU64 = AtomicU64::new(0);
static BOOT_TSC: AtomicU64 = AtomicU64::new(0);
static TIMER_TICKS: AtomicU64 = AtomicU64::new(0);
/// Local APIC timer ticks (at divide 16) in 2 ms of the TSC, for one-shot counts.
static LAPIC_PER_2MS: AtomicU64 = AtomicU64::new(0);
static LAPIC: spin::Once<lapic::LocalApic> = spin::Once::new();
/// Whether the timer runs in TSC-deadline mode (else one-shot counts).
static TSC_DEADLINE: core::sync::atomic::AtomicBool = core::sync::atomic::AtomicBool::new(false);

/// TSC ticks per second (0 before [`start`]).
pub fn tsc_hz() -> u64 {
    TSC_HZ.load(Ordering::Relaxed)
}

/// The TSC when the clock started.
pub fn boot_tsc() -> u64 {
    BOOT_TSC.load(Ordering::Relaxed)
}

/// Timer interrupts so far.
pub fn timer_ticks() -> u64 {
    TIMER_TICKS.load(Ordering::Relaxed)
}

/// The local APIC's id (0 before [`start`]): where device interrupts are sent.
pub fn apic_id() -> u32 {
    LAPIC.get().map_or(0, |apic| apic.id())
}

pub fn uptime_micros() -> u64 {
    let hz = tsc_hz();
    if hz == 0 {
        return 0;
    }
    let ticks = cpu::rdtsc().saturating_sub(boot_tsc());
    (u128::from(ticks) * 1_000_000 / u128::from(hz)) as u64
}

/// The quantum in TSC ticks.
pub fn quantum_ticks() -> u64 {
    tsc_hz().saturating_mul(QUANTUM_MICROS) / 1_000_000
}

/// How near and how far the timer may be armed (see the constants above).
pub fn timer_limits() -> kernel_core::guest::tickless::Limits {
    kernel_core::guest::tickless::Limits::for_tsc(tsc_hz(), TIMER_MIN_AHEAD_NS, TIMER_MAX_AHEAD_MS)
}

/// Whether the timer runs in TSC-deadline mode.
pub fn tsc_deadline_mode() -> bool {
    TSC_DEADLINE.load(Ordering::Relaxed)
}

/// Programs the one-shot timer to fire at TSC time `at` (at once if it has passed), or turns it
/// off (`None`).
pub fn program_timer(at: Option<u64>) {
    let Some(apic) = LAPIC.get() else { return };
    if tsc_deadline_mode() {
        // 0 disarms; a time in the past fires at once.
        apic.arm_tsc_deadline(at.map_or(0, |at| at.max(1)));
        return;
    }
    let Some(at) = at else {
        apic.arm_one_shot(0);
        return;
    };
    // TSC ticks to APIC ticks, rounded up (firing early only costs a second interrupt; firing
    // late would cost a guest its deadline).
    let ahead = u128::from(at.saturating_sub(cpu::rdtsc()));
    let per_2ms = u128::from(LAPIC_PER_2MS.load(Ordering::Relaxed));
    let tsc_per_2ms = u128::from(tsc_hz() / 500).max(1);
    let count = ahead.saturating_mul(per_2ms).div_ceil(tsc_per_2ms);
    apic.arm_one_shot(u32::try_from(count).unwrap_or(u32::MAX).max(1));
}

/// One interrupt of the LAPIC timer.
pub fn timer_tick() {
    TIMER_TICKS.fetch_add(1, Ordering::Relaxed);
    end_of_interrupt();
}

pub fn end_of_interrupt() {
    if let Some(apic) = LAPIC.get() {
        apic.end_of_interrupt();
    }
}

/// Measures the TSC, masks the 8259A PIC, enables the local APIC and sets its timer up, off.
pub fn start() -> Result<(), &'static str> {
    let (hz, source) = tsc::frequency();
    BOOT_TSC.store(cpu::rdtsc(), Ordering::Relaxed);
    TSC_HZ.store(hz, Ordering::Relaxed);
    log::info!("tsc: {}.{:03} MHz ({})", hz / 1_000_000, hz / 1000 % 1000, source.describe());

    pic::remap_and_mask();
    let (has_apic, has_x2apic) = lapic::features();
    if !has_apic {
        return Err("this CPU has no local APIC");
    }
    let mode = if has_x2apic {
        lapic::Mode::X2Apic
    } else {
        let base = lapic::xapic_phys_base();
        lapic::Mode::XApic(phys::with_frames(|frames| paging::map_mmio_page(0, base, frames)))
    };
    // SAFETY: x2APIC is used only where CPUID reports it; otherwise the xAPIC page was just
    // mapped uncached at the address given.
    let apic = LAPIC.call_once(|| unsafe { lapic::LocalApic::enable(mode, SPURIOUS_VECTOR) });
    // Measured over 2 ms (as the TSC is): a tick more or less is well under 0.1% of a period.
    // A first, discarded run warms the loop up (under TCG its first pass is translated, which
    // skews a short window by a third).
    apic.measure_timer_rate(hz / 5000);
    let per_2ms = apic.measure_timer_rate(hz / 500).max(1);
    LAPIC_PER_2MS.store(per_2ms, Ordering::Relaxed);
    let deadline_mode = lapic::has_tsc_deadline();
    TSC_DEADLINE.store(deadline_mode, Ordering::Relaxed);
    if deadline_mode {
        apic.set_tsc_deadline_timer(TIMER_VECTOR);
    } else {
        apic.set_one_shot_timer(TIMER_VECTOR);
    }
    log::info!(
        "lapic: id {} ({}), tickless timer: {} ({} ticks per 2 ms at divide 16), quantum {} us, 8259A PIC masked",
        apic.id(),
        match apic.mode() {
            lapic::Mode::X2Apic => "x2APIC",
            lapic::Mode::XApic(_) => "xAPIC",
        },
        if deadline_mode { "TSC-deadline" } else { "one-shot" },
        per_2ms,
        QUANTUM_MICROS
    );
    Ok(())
}
