//! The local APIC: x2APIC through MSRs where the CPU has it, xAPIC through its MMIO page
//! otherwise (QEMU 7.2's TCG has no x2APIC). Only what the kernel uses: enable, timer, EOI.

use super::cpu::{cpuid, rdmsr, rdtsc, wrmsr};
use x86_64::VirtAddr;

const IA32_APIC_BASE: u32 = 0x1b;
const APIC_BASE_ENABLE: u64 = 1 << 11;
const APIC_BASE_X2APIC: u64 = 1 << 10;
const X2APIC_MSR_BASE: u32 = 0x800;

/// Register offsets in the xAPIC page (the x2APIC MSR is `0x800 + offset / 16`).
#[derive(Clone, Copy)]
#[repr(u32)]
enum Register {
    Id = 0x20,
    Eoi = 0xb0,
    SpuriousVector = 0xf0,
    LvtTimer = 0x320,
    LvtLint0 = 0x350,
    LvtLint1 = 0x360,
    LvtError = 0x370,
    TimerInitialCount = 0x380,
    TimerCurrentCount = 0x390,
    TimerDivide = 0x3e0,
}

const LVT_MASKED: u32 = 1 << 16;
/// LVT timer mode 2: the timer fires when the TSC reaches `IA32_TSC_DEADLINE`.
const LVT_TIMER_TSC_DEADLINE: u32 = 2 << 17;
const IA32_TSC_DEADLINE: u32 = 0x6e0;
const SVR_ENABLE: u32 = 1 << 8;
/// Divide configuration value for "divide by 16".
const TIMER_DIVIDE_BY_16: u32 = 0x3;

#[derive(Clone, Copy, Debug)]
pub enum Mode {
    X2Apic,
    /// xAPIC registers at this kernel virtual address (an uncached mapping of the APIC page).
    XApic(VirtAddr),
}

#[derive(Clone, Copy, Debug)]
pub struct LocalApic {
    mode: Mode,
}

/// Whether the CPU has a local APIC at all (CPUID.1:EDX bit 9), and x2APIC (ECX bit 21).
pub fn features() -> (bool, bool) {
    let r = cpuid(1, 0);
    (r.edx & (1 << 9) != 0, r.ecx & (1 << 21) != 0)
}

/// Whether the local APIC has the TSC-deadline timer mode (CPUID.1:ECX bit 24). QEMU's TCG
/// does not offer it; KVM's in-kernel APIC and real CPUs do.
pub fn has_tsc_deadline() -> bool {
    cpuid(1, 0).ecx & (1 << 24) != 0
}

/// Physical address of the xAPIC register page.
pub fn xapic_phys_base() -> u64 {
    // SAFETY: IA32_APIC_BASE exists on every CPU with a local APIC (checked by the caller).
    unsafe { rdmsr(IA32_APIC_BASE) & 0x000f_ffff_ffff_f000 }
}

impl LocalApic {
    /// Enables the APIC in `mode`, masks LINT0/LINT1/error and sets the spurious vector.
    ///
    /// # Safety
    /// For [`Mode::XApic`] the address must map the APIC page uncached; for [`Mode::X2Apic`]
    /// the CPU must support x2APIC.
    pub unsafe fn enable(mode: Mode, spurious_vector: u8) -> LocalApic {
        // SAFETY: IA32_APIC_BASE exists (APIC present); setting the enable bits is the
        // documented way to switch the APIC on (xAPIC first, then x2APIC).
        unsafe {
            let base = rdmsr(IA32_APIC_BASE);
            let mut enabled = base | APIC_BASE_ENABLE;
            wrmsr(IA32_APIC_BASE, enabled);
            if let Mode::X2Apic = mode {
                enabled |= APIC_BASE_X2APIC;
                wrmsr(IA32_APIC_BASE, enabled);
            }
        }
        let apic = LocalApic { mode };
        apic.write(Register::LvtLint0, LVT_MASKED);
        apic.write(Register::LvtLint1, LVT_MASKED);
        apic.write(Register::LvtError, LVT_MASKED);
        apic.write(Register::SpuriousVector, SVR_ENABLE | u32::from(spurious_vector));
        apic
    }

    pub fn mode(&self) -> Mode {
        self.mode
    }

    fn read(&self, reg: Register) -> u32 {
        match self.mode {
            // SAFETY: the register exists in x2APIC mode, which `enable` switched on.
            Mode::X2Apic => unsafe { rdmsr(X2APIC_MSR_BASE + reg as u32 / 16) as u32 },
            // SAFETY: `enable`'s contract: `base` maps the APIC page; the offset is a register.
            Mode::XApic(base) => unsafe { (base + u64::from(reg as u32)).as_ptr::<u32>().read_volatile() },
        }
    }

    fn write(&self, reg: Register, value: u32) {
        match self.mode {
            // SAFETY: as in `read`; writes to these registers only configure the APIC.
            Mode::X2Apic => unsafe { wrmsr(X2APIC_MSR_BASE + reg as u32 / 16, u64::from(value)) },
            // SAFETY: as in `read`.
            Mode::XApic(base) => unsafe { (base + u64::from(reg as u32)).as_mut_ptr::<u32>().write_volatile(value) },
        }
    }

    pub fn id(&self) -> u32 {
        match self.mode {
            Mode::X2Apic => self.read(Register::Id),
            Mode::XApic(_) => self.read(Register::Id) >> 24,
        }
    }

    /// Signals the end of the interrupt being handled.
    pub fn end_of_interrupt(&self) {
        self.write(Register::Eoi, 0);
    }

    /// Counts how many timer ticks (at divide-by-16) elapse in `tsc_ticks` of the TSC.
    pub fn measure_timer_rate(&self, tsc_ticks: u64) -> u64 {
        self.write(Register::TimerDivide, TIMER_DIVIDE_BY_16);
        self.write(Register::LvtTimer, LVT_MASKED);
        self.write(Register::TimerInitialCount, u32::MAX);
        let start = rdtsc();
        while rdtsc() - start < tsc_ticks {}
        let remaining = self.read(Register::TimerCurrentCount);
        self.write(Register::TimerInitialCount, 0);
        u64::from(u32::MAX - remaining)
    }

    /// Puts the timer in one-shot mode on `vector`, stopped (armed by [`Self::arm_one_shot`]).
    pub fn set_one_shot_timer(&self, vector: u8) {
        self.write(Register::TimerDivide, TIMER_DIVIDE_BY_16);
        self.write(Register::TimerInitialCount, 0);
        self.write(Register::LvtTimer, u32::from(vector));
    }

    /// One interrupt after `count` timer ticks (at divide-by-16); 0 stops the timer.
    pub fn arm_one_shot(&self, count: u32) {
        self.write(Register::TimerInitialCount, count);
    }

    /// Puts the timer in TSC-deadline mode on `vector`, disarmed (armed by
    /// [`Self::arm_tsc_deadline`]). The caller checked [`has_tsc_deadline`].
    pub fn set_tsc_deadline_timer(&self, vector: u8) {
        self.write(Register::TimerInitialCount, 0);
        self.write(Register::LvtTimer, LVT_TIMER_TSC_DEADLINE | u32::from(vector));
        // The SDM asks for the LVT write to be ordered before the first IA32_TSC_DEADLINE write
        // (an xAPIC MMIO write is not ordered with a WRMSR otherwise).
        // SAFETY: `mfence` only orders memory accesses.
        unsafe { core::arch::asm!("mfence", options(nostack, preserves_flags)) };
        self.arm_tsc_deadline(0);
    }

    /// One interrupt when the TSC reaches `deadline` (at once if it has); 0 disarms.
    pub fn arm_tsc_deadline(&self, deadline: u64) {
        // SAFETY: IA32_TSC_DEADLINE exists where CPUID reports the TSC-deadline mode, which
        // `set_tsc_deadline_timer`'s caller checked; writing it only arms the timer.
        unsafe { wrmsr(IA32_TSC_DEADLINE, deadline) }
    }
}
