//! TSC frequency: from CPUID where the CPU or hypervisor states it, measured against the PIT
//! otherwise.

use super::cpu::{cpuid, inb, outb, rdtsc};

/// How the TSC frequency was found.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TscSource {
    /// CPUID leaf 0x15: crystal clock times the TSC/crystal ratio.
    Cpuid15,
    /// CPUID leaf 0x16: the processor base frequency (close to, not exactly, the TSC rate).
    Cpuid16,
    /// Hypervisor leaf 0x40000010 (TSC kHz).
    Hypervisor,
    /// Counted against 2 ms of the PIT (channel 2; channel 0 where port 0x61 is absent).
    Pit,
}

impl TscSource {
    pub fn describe(self) -> &'static str {
        match self {
            TscSource::Cpuid15 => "cpuid leaf 0x15",
            TscSource::Cpuid16 => "cpuid leaf 0x16",
            TscSource::Hypervisor => "hypervisor leaf 0x40000010",
            TscSource::Pit => "PIT calibration",
        }
    }
}

const PIT_HZ: u64 = 1_193_182;
/// 2 ms: one PIT tick either way is 0.04%, and boot time matters (issue 12: first echo within
/// 100 ms of QEMU start; the 10 ms this was took a tenth of that).
const PIT_CALIBRATION_TICKS: u16 = 2_386;

fn from_cpuid() -> Option<(u64, TscSource)> {
    let max_leaf = cpuid(0, 0).eax;
    if max_leaf >= 0x15 {
        let r = cpuid(0x15, 0);
        if r.eax != 0 && r.ebx != 0 && r.ecx != 0 {
            return Some((u64::from(r.ecx) * u64::from(r.ebx) / u64::from(r.eax), TscSource::Cpuid15));
        }
    }
    let hypervisor_present = cpuid(1, 0).ecx & (1 << 31) != 0;
    if hypervisor_present && cpuid(0x4000_0000, 0).eax >= 0x4000_0010 {
        let khz = cpuid(0x4000_0010, 0).eax;
        if khz != 0 {
            return Some((u64::from(khz) * 1000, TscSource::Hypervisor));
        }
    }
    // Leaf 0x16 is only a base frequency; prefer measuring when a hypervisor is in the way.
    if max_leaf >= 0x16 && !hypervisor_present {
        let mhz = cpuid(0x16, 0).eax & 0xffff;
        if mhz != 0 {
            return Some((u64::from(mhz) * 1_000_000, TscSource::Cpuid16));
        }
    }
    None
}

/// What port 0x61 reads where no device answers it (QEMU's `microvm` has no speaker port).
const NO_PORT: u8 = 0xff;
/// Reads of PIT channel 0 before giving up on a PIT that does not count.
const CHANNEL0_MAX_READS: u32 = 10_000_000;

fn from_pit() -> u64 {
    // SAFETY: reading the speaker/gate port has no side effect.
    if unsafe { inb(0x61) } == NO_PORT {
        return from_pit_channel0();
    }
    // SAFETY: PIT channel 2 and its gate in port 0x61 are used by nothing else in this kernel;
    // the speaker output bit is kept off.
    unsafe {
        let gate = inb(0x61) & !0x03;
        outb(0x61, gate); // gate low: channel 2 holds
        outb(0x43, 0xb0); // channel 2, lobyte/hibyte, mode 0 (interrupt on terminal count)
        outb(0x42, (PIT_CALIBRATION_TICKS & 0xff) as u8);
        outb(0x42, (PIT_CALIBRATION_TICKS >> 8) as u8);
        outb(0x61, gate | 0x01); // gate high: counting starts
        let start = rdtsc();
        while inb(0x61) & 0x20 == 0 {}
        let end = rdtsc();
        outb(0x61, gate);
        (end - start) * PIT_HZ / u64::from(PIT_CALIBRATION_TICKS)
    }
}

/// PIT channel 0's current count (latched, so the two bytes belong together).
fn channel0_count() -> u16 {
    // SAFETY: the PIT's command and channel 0 data ports; latching and reading only sample the
    // counter. Channel 0's interrupt (IRQ 0) is masked: the kernel's timer is the local APIC's.
    unsafe {
        outb(0x43, 0x00); // latch channel 0
        u16::from_le_bytes([inb(0x40), inb(0x40)])
    }
}

/// Counts the TSC against 2 ms of PIT channel 0, whose gate is always open: for machines
/// without the speaker port that gates channel 2 (QEMU's `microvm`). Channel 0 is free: its
/// IRQ is masked and the kernel's timer is the local APIC's.
fn from_pit_channel0() -> u64 {
    // SAFETY: as in `channel0_count`; mode 0 from 0xffff counts down once (55 ms), longer than
    // the calibration.
    unsafe {
        outb(0x43, 0x30); // channel 0, lobyte/hibyte, mode 0
        outb(0x40, 0xff);
        outb(0x40, 0xff);
    }
    let first = channel0_count();
    let start = rdtsc();
    for _ in 0..CHANNEL0_MAX_READS {
        let elapsed = first.wrapping_sub(channel0_count());
        if (PIT_CALIBRATION_TICKS..u16::MAX / 2).contains(&elapsed) {
            return (rdtsc() - start) * PIT_HZ / u64::from(elapsed);
        }
    }
    panic!("the PIT does not count: no way to measure the TSC frequency");
}

/// The TSC frequency in Hz and where it came from.
pub fn frequency() -> (u64, TscSource) {
    from_cpuid().unwrap_or_else(|| (from_pit(), TscSource::Pit))
}
