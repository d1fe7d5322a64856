//! Monotonic time from `rdtsc` and the TSC frequency in the boot-info page, and sleeping with
//! the idle virtual instruction (the guest is not scheduled while it sleeps).

use core::sync::atomic::{AtomicU64, Ordering};
use core::time::Duration;

static TSC_HZ: AtomicU64 = AtomicU64::new(0);

pub(crate) fn init(tsc_hz: u64) {
    TSC_HZ.store(tsc_hz.max(1), Ordering::Relaxed);
}

/// TSC ticks per second.
pub fn tsc_hz() -> u64 {
    TSC_HZ.load(Ordering::Relaxed)
}

/// The raw time-stamp counter (the kernel leaves CR4.TSD clear, so ring 3 may read it).
pub fn ticks() -> u64 {
    // SAFETY: `rdtsc` has no side effects and is permitted in ring 3 here.
    #[allow(unused_unsafe)]
    unsafe {
        core::arch::x86_64::_rdtsc()
    }
}

/// The time-stamp counter after every earlier instruction has completed (`lfence`): the
/// clock of the per-packet stage stamps.
pub fn ticks_serialized() -> u64 {
    // SAFETY: `lfence` only orders instruction execution; it touches no memory or registers.
    unsafe { core::arch::asm!("lfence", options(nostack, preserves_flags)) };
    ticks()
}

/// A point in time.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Instant(u64);

impl Instant {
    pub fn now() -> Instant {
        Instant(ticks())
    }

    pub fn ticks(self) -> u64 {
        self.0
    }

    pub fn elapsed(self) -> Duration {
        Instant::now().duration_since(self)
    }

    pub fn duration_since(self, earlier: Instant) -> Duration {
        ticks_to_duration(self.0.saturating_sub(earlier.0))
    }

    pub fn checked_add(self, d: Duration) -> Option<Instant> {
        self.0.checked_add(duration_to_ticks(d)).map(Instant)
    }
}

pub fn ticks_to_duration(ticks: u64) -> Duration {
    let hz = u128::from(tsc_hz());
    Duration::from_nanos((u128::from(ticks) * 1_000_000_000 / hz) as u64)
}

pub fn duration_to_ticks(d: Duration) -> u64 {
    (d.as_nanos() * u128::from(tsc_hz()) / 1_000_000_000) as u64
}

/// Sleeps at least `d`, idling in the kernel rather than spinning.
pub fn sleep(d: Duration) {
    let deadline = Instant::now().checked_add(d).map_or(u64::MAX - 1, Instant::ticks);
    while ticks() < deadline {
        crate::vi::idle_until(deadline);
    }
}
