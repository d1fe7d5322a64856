//! Time and the timer: the TSC (frequency, boot stamp, uptime) and the local APIC's periodic
//! timer, its tick count and end-of-interrupt.

use crate::arch::vectors::{SPURIOUS_VECTOR, TIMER_VECTOR};
use crate::arch::{cpu, lapic, pic, tsc};
use crate::mm::{paging, phys};
use core::sync::atomic::{AtomicU64, Ordering};

/// Timer interrupts per second: the scheduler's quantum is one period. 1 ms, not 10: a guest
/// that has become busy (an echo server answering back-to-back requests under TCG) waits at
/// most about a quantum behind a hog, and the tick costs O(1) (`bench isolation --quick`, one run each: an echo
/// guest's p99 beside a CPU spinner 5.7 ms at 100 Hz, 1.3 ms at 1000 Hz).
pub const TIMER_HZ: u64 = 1000;

static TSC_HZ: AtomicU64 = AtomicU64::new(0);
static BOOT_TSC: AtomicU64 = AtomicU64::new(0);
static TIMER_TICKS: AtomicU64 = AtomicU64::new(0);
static LAPIC: spin::Once<lapic::LocalApic> = spin::Once::new();

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

/// One tick of the LAPIC timer.
pub fn timer_tick() {
    TIMER_TICKS.fetch_add(1, Ordering::Relaxed);
    end_of_interrupt();
}

pub fn end_of_interrupt() {
    if let Some(apic) = LAPIC.get() {
        apic.end_of_interrupt();
    }
}

/// Measures the TSC, masks the 8259A PIC, enables the local APIC and starts its periodic timer.
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
    let per_2ms = apic.measure_timer_rate(hz / 500);
    let period = (per_2ms * 500 / TIMER_HZ).clamp(1, u64::from(u32::MAX)) as u32;
    apic.start_periodic_timer(TIMER_VECTOR, period);
    log::info!(
        "lapic: id {} ({}), timer {} Hz ({} ticks/period at divide 16), 8259A PIC masked",
        apic.id(),
        match apic.mode() {
            lapic::Mode::X2Apic => "x2APIC",
            lapic::Mode::XApic(_) => "xAPIC",
        },
        TIMER_HZ,
        period
    );
    Ok(())
}
