//! Switching the register state that the trap frame does not hold (see
//! [`kernel_core::guest::user_state`]): the x87/MMX/SSE unit and the data segment selectors.
//!
//! The floating-point policy is set once at boot (`fpu=` on the command line):
//! - `fault` (the default): CR0.EM set, CR4.OSFXSR clear. An x87 instruction raises `#NM`, an
//!   MMX or SSE one `#UD`, and the guest is stopped (`exceptions::fpu_stop_cause` names it). The
//!   unit's registers never change after boot, so there is nothing of it to switch.
//! - `save`: CR0.EM clear, CR4.OSFXSR and OSXMMEXCPT set. Each guest owns a 512-byte FXSAVE area;
//!   when the kernel switches to a guest other than the one whose state the CPU holds, it saves
//!   the registers into the holder's area and loads the new guest's. Eagerly, at the switch: the
//!   kernel is built soft-float and never touches the unit itself, so the registers keep their
//!   owner's values however long the kernel runs in between.
//!
//! Both: CR0.NE makes an unmasked x87 error a `#MF` in the guest (not an external interrupt),
//! CR0.TS stays clear, and CR4.OSXSAVE, FSGSBASE and PKE stay clear, so AVX, `xsave`,
//! `wrfsbase`/`wrgsbase` and `wrpkru` raise `#UD`: a guest has no writable register state
//! beyond its trap frame and what this module switches.
//!
//! The selectors DS, ES, FS and GS are switched the same way under both policies. (A trap from
//! ring 3 leaves them as the guest loaded them, and `iretq` only nulls selectors of a higher
//! privilege, so without this a guest would see the values its predecessor loaded. The FS and GS
//! bases come from the GDT's user descriptors, base 0, whatever a guest loads.)

use super::cpu::cpuid;
use alloc::vec::Vec;
use core::arch::asm;
use core::sync::atomic::{AtomicBool, Ordering};
use kernel_core::boot::cmdline::FpuPolicy;
use kernel_core::guest::user_state::{
    sanitized_selectors, Selectors, FXSAVE_AREA_BYTES, INITIAL_FXSAVE_AREA, INITIAL_SELECTORS,
};
use x86_64::registers::control::{Cr0, Cr0Flags, Cr4, Cr4Flags};

/// Whether guests have the unit (`fpu=save`); set once by [`init`].
static SAVE: AtomicBool = AtomicBool::new(false);

/// CPUID.1:EDX bit of FXSAVE/FXRSTOR support.
const CPUID_FXSR: u32 = 1 << 24;

/// The policy [`init`] applied.
pub fn policy() -> FpuPolicy {
    if SAVE.load(Ordering::Relaxed) {
        FpuPolicy::Save
    } else {
        FpuPolicy::Fault
    }
}

/// Sets CR0 and CR4 for `policy`, before any guest runs. Fails if the CPU cannot save the unit.
pub fn init(policy: FpuPolicy) -> Result<(), &'static str> {
    let save = policy == FpuPolicy::Save;
    if save && cpuid(1, 0).edx & CPUID_FXSR == 0 {
        return Err("fpu=save needs FXSAVE/FXRSTOR, which this CPU lacks");
    }
    // SAFETY: only bits that govern the floating-point unit and guest-visible extensions change;
    // the kernel is built soft-float and uses none of them (paging, protection and caching bits
    // are kept as they are).
    unsafe {
        Cr0::update(|cr0| {
            cr0.remove(Cr0Flags::TASK_SWITCHED);
            cr0.insert(Cr0Flags::NUMERIC_ERROR);
            cr0.set(Cr0Flags::EMULATE_COPROCESSOR, !save);
            cr0.set(Cr0Flags::MONITOR_COPROCESSOR, save);
        });
        Cr4::update(|cr4| {
            cr4.remove(Cr4Flags::OSXSAVE | Cr4Flags::FSGSBASE | Cr4Flags::PROTECTION_KEY_USER);
            cr4.set(Cr4Flags::OSFXSR | Cr4Flags::OSXMMEXCPT_ENABLE, save);
        });
    }
    SAVE.store(save, Ordering::Relaxed);
    Ok(())
}

/// An FXSAVE area: `fxsave64`/`fxrstor64` require 16-byte alignment.
#[repr(C, align(16))]
struct FxArea([u8; FXSAVE_AREA_BYTES]);

/// What a guest without an area of its own is given under `fpu=save` (none runs: see
/// [`UserState::new`]): the fresh state, never another guest's.
static INITIAL_AREA: FxArea = FxArea(INITIAL_FXSAVE_AREA);

/// Any 32-bit integer, loaded by `fild` to set the x87 instruction and data pointers (see
/// [`UserState::load`]).
static POINTER_SCRUB: i32 = 0;

/// The data segment selectors the CPU holds now.
fn current_selectors() -> Selectors {
    let (ds, es, fs, gs): (u16, u16, u16, u16);
    // SAFETY: reading segment registers has no side effects.
    unsafe {
        asm!("mov {0:x}, ds", "mov {1:x}, es", "mov {2:x}, fs", "mov {3:x}, gs",
             out(reg) ds, out(reg) es, out(reg) fs, out(reg) gs, options(nomem, nostack, preserves_flags));
    }
    [ds, es, fs, gs]
}

/// One guest's copy of the state this module switches.
#[derive(Default)]
pub struct UserState {
    selectors: Selectors,
    /// Under `fpu=save`, the guest's one FXSAVE area (in a vector, so that allocating it can fail
    /// without a panic); empty under `fault`.
    fx: Vec<FxArea>,
}

impl UserState {
    /// Kernel heap bytes beside the struct (the FXSAVE area under `fpu=save`).
    pub fn heap_bytes(&self) -> usize {
        self.fx.capacity().saturating_mul(core::mem::size_of::<FxArea>())
    }

    /// A fresh guest's state: null selectors and, under `fpu=save`, the initial FXSAVE area.
    /// `None` when the kernel heap has no room for the area.
    pub fn new() -> Option<UserState> {
        let mut fx = Vec::new();
        if SAVE.load(Ordering::Relaxed) {
            fx.try_reserve_exact(1).ok()?;
            fx.push(FxArea(INITIAL_FXSAVE_AREA));
        }
        Some(UserState { selectors: INITIAL_SELECTORS, fx })
    }

    /// Copies what the CPU holds into this guest's copy. Only for the guest whose state the CPU
    /// holds (the one that ran last), before another guest's is loaded.
    pub fn save(&mut self) {
        let current = current_selectors();
        // Kept sanitized, so that `load` can load them without a check (the copy is sanitized
        // already when the guest changed nothing, the common case).
        if current != self.selectors {
            let user = super::gdt::selectors();
            self.selectors = sanitized_selectors(current, user.user_data.0, user.user_code.0);
        }
        if let Some(area) = self.fx.first_mut() {
            // SAFETY: the area is 512 bytes, 16-byte aligned and this guest's own; `fx` is
            // non-empty only under `fpu=save`, where CR0.EM is clear and CR4.OSFXSR set, so
            // `fxsave64` cannot fault.
            unsafe {
                asm!("fxsave64 [{}]", in(reg) area.0.as_mut_ptr(), options(nostack, preserves_flags));
            }
        }
    }

    /// Loads this guest's copy into the CPU, replacing every part of the previous holder's.
    pub fn load(&self) {
        // Segment loads are dear and guests rarely change their selectors: load them only when
        // they differ. (Equal selectors mean equal hidden state: every base is the GDT's 0.)
        if current_selectors() != self.selectors {
            let [ds, es, fs, gs] = self.selectors;
            // Each selector is null or a DPL-3 user segment of the loaded GDT (`save` and `new`
            // store only those), which ring 0 may load; the kernel addresses nothing through
            // DS/ES/FS/GS in long mode, and the FS/GS bases become the descriptors' base, 0.
            // SAFETY: loadable selectors (above), and nothing in the kernel depends on them.
            unsafe {
                asm!("mov ds, {0:x}", "mov es, {1:x}", "mov fs, {2:x}", "mov gs, {3:x}",
                     in(reg) ds, in(reg) es, in(reg) fs, in(reg) gs, options(nostack, preserves_flags));
            }
        }
        if !SAVE.load(Ordering::Relaxed) {
            return;
        }
        let area = self.fx.first().unwrap_or(&INITIAL_AREA);
        // AMD CPUs save and restore the x87 instruction and data pointers and opcode only while an
        // exception is pending, so `fxrstor64` could leave the previous guest's: clear any pending
        // exception, empty the stack, and give them the kernel's values with one `fild` first
        // (what Linux does for the same erratum). Then the whole area is loaded.
        // Under `fpu=save` CR0.EM and CR0.TS are clear, so none of these faults: `fnclex` first
        // removes any pending x87 exception `fild` would raise, `emms` empties the stack `fild`
        // pushes onto, and the area (valid FXSAVE contents: the initial image or what `fxsave64`
        // wrote) is 16-byte aligned.
        // SAFETY: no fault is possible (above) and only the x87/SSE unit's registers change.
        unsafe {
            asm!("fnclex", "emms", "fild dword ptr [{scrub}]", "fxrstor64 [{area}]",
                 scrub = in(reg) &raw const POINTER_SCRUB, area = in(reg) area.0.as_ptr(),
                 options(nostack, readonly, preserves_flags));
        }
    }
}
