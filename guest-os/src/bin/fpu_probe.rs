//! `fpu-probe`: looks for another guest's register state in its own. Two probes run side by
//! side (`side=a` and `side=b`, each knowing both sides' patterns). For every kind of state in
//! `kinds=` (x87, mmx, sse, control, regs), each round the probe
//! 1. reads the state without loading anything (what the CPU gives it: its own from the last
//!    round, the initial state, or, if the kernel leaks, what the other probe left there),
//! 2. writes its own pattern, yields (the other probe runs and writes its own), and reads again:
//!    it must get its own pattern back.
//!
//! Prints one line per kind with the counts, and exits 0 only if no read ever showed the other
//! side's pattern and every read after a yield gave back its own. Under `fpu=fault` the first
//! x87/MMX/SSE instruction stops the guest instead (the image expects that).
//!
//! The guest target is soft-float, so the compiler never uses these registers itself: the
//! inline assembly below names them in its template without declaring them.

#![no_std]
#![no_main]

use core::arch::asm;
use guest_os::{println, vi, Env};

/// Values read or written: up to five registers per kind (unused ones stay 0).
type Regs = [u64; 5];

/// RFLAGS bits a ring-3 program may set itself: alignment check, direction, ID.
const FLAG_AC: u64 = 1 << 18;
const FLAG_DF: u64 = 1 << 10;
const FLAG_ID: u64 = 1 << 21;
const PROBED_FLAGS: u64 = FLAG_AC | FLAG_DF | FLAG_ID;

/// What the probe reports for an empty x87 ST0: the integer indefinite `fistp` would store.
const X87_EMPTY: u64 = 0x8000_0000_0000_0000;
/// The condition bits C3, C2, C0 of the x87 status word, and their value after `fxam` of an
/// empty register.
const X87_CLASS_MASK: u16 = 0x4500;
const X87_CLASS_EMPTY: u16 = 0x4100;
/// The x87 control word and MXCSR after `fninit` and reset.
const INITIAL_FCW: u64 = 0x037f;
const INITIAL_MXCSR: u64 = 0x1f80;

#[derive(Clone, Copy, PartialEq, Eq)]
enum Kind {
    X87,
    Mmx,
    Sse,
    Control,
    Regs,
}

impl Kind {
    fn parse(name: &str) -> Option<Kind> {
        Some(match name {
            "x87" => Kind::X87,
            "mmx" => Kind::Mmx,
            "sse" => Kind::Sse,
            "control" => Kind::Control,
            "regs" => Kind::Regs,
            _ => return None,
        })
    }

    fn name(self) -> &'static str {
        match self {
            Kind::X87 => "x87",
            Kind::Mmx => "mmx",
            Kind::Sse => "sse",
            Kind::Control => "control",
            Kind::Regs => "regs",
        }
    }

    /// Side `a` or `b`'s pattern. `user` is (user data selector, user code selector).
    fn pattern(self, side_a: bool, user: (u64, u64)) -> Regs {
        let (data, code) = user;
        match (self, side_a) {
            (Kind::X87, true) => [0x5ec2_e7a0_0000_a001, 0, 0, 0, 0],
            (Kind::X87, false) => [0x5ec2_e7b0_0000_b002, 0, 0, 0, 0],
            (Kind::Mmx, true) => [0x3a3a_0000_0000_a003, 0, 0, 0, 0],
            (Kind::Mmx, false) => [0x3b3b_0000_0000_b004, 0, 0, 0, 0],
            (Kind::Sse, true) => [0x55e0_0000_0000_a005, 0x55ef_0000_0000_a006, 0, 0, 0],
            (Kind::Sse, false) => [0x55e0_0000_0000_b007, 0x55ef_0000_0000_b008, 0, 0, 0],
            // Rounding down (a) or up (b), in the x87 control word and in MXCSR.
            (Kind::Control, true) => [0x077f, 0x3f80, 0, 0, 0],
            (Kind::Control, false) => [0x0b7f, 0x5f80, 0, 0, 0],
            // DS, ES, FS, GS, then the probed RFLAGS bits.
            (Kind::Regs, true) => [data, code, data, code, FLAG_AC | FLAG_DF],
            (Kind::Regs, false) => [code, data, code, data, FLAG_ID],
        }
    }

    /// What a fresh guest reads.
    fn initial(self) -> Regs {
        match self {
            Kind::X87 => [X87_EMPTY, 0, 0, 0, 0],
            Kind::Control => [INITIAL_FCW, INITIAL_MXCSR, 0, 0, 0],
            Kind::Mmx | Kind::Sse | Kind::Regs => [0; 5],
        }
    }

    /// Reads the state without changing anything else (x87: pops ST0 into memory).
    fn read(self) -> Regs {
        let mut out = [0u64; 5];
        // SAFETY: every instruction below touches only the registers this probe studies
        // (which the soft-float compiler never uses) and `out`/the stack; the kernel either
        // gives this guest the unit or stops it at the first instruction.
        unsafe {
            match self {
                Kind::X87 => {
                    // An empty ST0 reads as empty (`fxam`: C3 and C0 set, C2 clear) rather than
                    // through `fistp`, whose result for an empty register emulators differ on.
                    let status: u16;
                    asm!("fxam", "fnstsw ax", out("ax") status, options(nomem, nostack));
                    if status & X87_CLASS_MASK == X87_CLASS_EMPTY {
                        out[0] = X87_EMPTY;
                    } else {
                        asm!("fistp qword ptr [{0}]", in(reg) out.as_mut_ptr(), options(nostack));
                    }
                }
                Kind::Mmx => asm!("movq {0}, mm0", "emms", out(reg) out[0], options(nomem, nostack)),
                Kind::Sse => asm!("movq {0}, xmm0", "movq {1}, xmm15", out(reg) out[0], out(reg) out[1],
                                  options(nomem, nostack)),
                Kind::Control => {
                    let (mut fcw, mut mxcsr) = (0u16, 0u32);
                    asm!("fnstcw word ptr [{0}]", "stmxcsr dword ptr [{1}]", in(reg) &mut fcw, in(reg) &mut mxcsr,
                         options(nostack));
                    out[0] = u64::from(fcw);
                    out[1] = u64::from(mxcsr);
                }
                Kind::Regs => {
                    let (ds, es, fs, gs): (u16, u16, u16, u16);
                    asm!("mov {0:x}, ds", "mov {1:x}, es", "mov {2:x}, fs", "mov {3:x}, gs",
                         out(reg) ds, out(reg) es, out(reg) fs, out(reg) gs, options(nomem, nostack));
                    let flags: u64;
                    asm!("pushfq", "pop {0}", out(reg) flags, options(nomem));
                    out = [ds.into(), es.into(), fs.into(), gs.into(), flags & PROBED_FLAGS];
                }
            }
        }
        out
    }

    /// Writes `pattern`, yields to the other guests, and reads the state back.
    fn write_yield_read(self, pattern: &Regs) -> Regs {
        // SAFETY: as in `read`; the selectors loaded are this guest's own user segments (read
        // from CS and SS), which ring 3 may load.
        unsafe {
            match self {
                Kind::X87 => asm!("fninit", "fild qword ptr [{0}]", in(reg) &pattern[0], options(nostack, readonly)),
                Kind::Mmx => asm!("movq mm0, {0}", in(reg) pattern[0], options(nomem, nostack)),
                Kind::Sse => asm!("movq xmm0, {0}", "movq xmm15, {1}", in(reg) pattern[0], in(reg) pattern[1],
                                  options(nomem, nostack)),
                Kind::Control => {
                    let (fcw, mxcsr) = (pattern[0] as u16, pattern[1] as u32);
                    asm!("fldcw word ptr [{0}]", "ldmxcsr dword ptr [{1}]", in(reg) &fcw, in(reg) &mxcsr,
                         options(nostack, readonly));
                }
                Kind::Regs => {
                    let [ds, es, fs, gs] = [pattern[0], pattern[1], pattern[2], pattern[3]].map(|s| s as u16);
                    asm!("mov ds, {0:x}", "mov es, {1:x}", "mov fs, {2:x}", "mov gs, {3:x}",
                         in(reg) ds, in(reg) es, in(reg) fs, in(reg) gs, options(nomem, nostack));
                    // The flags are set, kept across the yield and read back in one block, and
                    // cleared before Rust code runs again (it assumes DF clear).
                    let flags: u64;
                    asm!("pushfq", "or qword ptr [rsp], {set}", "popfq",
                         "out dx, eax",
                         "pushfq", "pop {flags}",
                         "pushfq", "and qword ptr [rsp], {clear}", "popfq",
                         set = in(reg) pattern[4], clear = in(reg) !PROBED_FLAGS, flags = lateout(reg) flags,
                         in("dx") hypercall_abi::vi::Vi::Yield.port(), inout("rax") 0u64 => _);
                    let mut read = self.read();
                    read[4] = flags & PROBED_FLAGS;
                    return read;
                }
            }
        }
        vi::yield_now();
        self.read()
    }
}

/// How reads compared with the patterns.
#[derive(Default)]
struct Tally {
    own: u32,
    initial: u32,
    peer: u32,
    other: u32,
}

impl Tally {
    fn add(&mut self, read: &Regs, own: &Regs, peer: &Regs, initial: &Regs) {
        // Any register holding the other side's value (where that differs from ours and from the
        // initial one) is a leak, even if the rest is not.
        let leaked = (0..read.len()).any(|i| read[i] == peer[i] && peer[i] != own[i] && peer[i] != initial[i]);
        if leaked {
            self.peer += 1;
        } else if read == own {
            self.own += 1;
        } else if read == initial {
            self.initial += 1;
        } else {
            self.other += 1;
        }
    }
}

impl core::fmt::Display for Tally {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        write!(f, "own={} initial={} peer={} other={}", self.own, self.initial, self.peer, self.other)
    }
}

fn main(env: &Env) -> i32 {
    let side_a = match env.arg("side") {
        Some("a") => true,
        Some("b") => false,
        other => {
            println!("fpu-probe: side must be a or b, not {other:?}");
            return 98;
        }
    };
    let rounds: u32 = env.arg("rounds").and_then(|r| r.parse().ok()).unwrap_or(16);
    let (cs, ss): (u16, u16);
    // SAFETY: reading segment registers has no side effects.
    unsafe { asm!("mov {0:x}, cs", "mov {1:x}, ss", out(reg) cs, out(reg) ss, options(nomem, nostack)) };
    let user = (u64::from(ss), u64::from(cs));
    let mut failed = false;
    for name in env.arg("kinds").unwrap_or("").split(',').filter(|k| !k.is_empty()) {
        let Some(kind) = Kind::parse(name) else {
            println!("fpu-probe: unknown kind `{name}`");
            return 98;
        };
        let (own, peer, initial) = (kind.pattern(side_a, user), kind.pattern(!side_a, user), kind.initial());
        let (mut before, mut after) = (Tally::default(), Tally::default());
        for _ in 0..rounds {
            before.add(&kind.read(), &own, &peer, &initial);
            after.add(&kind.write_yield_read(&own), &own, &peer, &initial);
        }
        let leak_free = before.peer == 0 && after.peer == 0 && after.own == rounds;
        failed |= !leak_free;
        println!(
            "fpu-probe {}: rounds={rounds} before: {before}; after: {after}; {}",
            kind.name(),
            if leak_free { "no leak" } else { "LEAK" }
        );
    }
    i32::from(failed)
}

guest_os::entry!(main);
