//! Trap entry and exit: our own assembly stubs save the complete register frame, call
//! [`trap_dispatch`](crate::trap::trap_dispatch) with a pointer to it, and restore whatever the frame
//! holds afterwards (which is what will let the scheduler switch guests by rewriting it).
//!
//! There is one 16-byte stub per vector, at `trap_stubs + 16 * vector`. Vectors for which the
//! CPU pushes no error code get a zero pushed instead, so every frame has the same layout.

use kernel_core::trap::exceptions::pushes_error_code;

/// The registers of the interrupted context, as laid out on the stack by the entry stubs.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct TrapFrame {
    pub r15: u64,
    pub r14: u64,
    pub r13: u64,
    pub r12: u64,
    pub r11: u64,
    pub r10: u64,
    pub r9: u64,
    pub r8: u64,
    pub rbp: u64,
    pub rdi: u64,
    pub rsi: u64,
    pub rdx: u64,
    pub rcx: u64,
    pub rbx: u64,
    pub rax: u64,
    pub vector: u64,
    pub error_code: u64,
    // Pushed by the CPU.
    pub rip: u64,
    pub cs: u64,
    pub rflags: u64,
    pub rsp: u64,
    pub ss: u64,
}

impl TrapFrame {
    /// Whether the trap interrupted ring 3.
    pub fn came_from_user(&self) -> bool {
        self.cs & 3 == 3
    }
}

/// Non-zero while per-packet stage stamps are on; read by the entry stubs.
#[cfg(feature = "stamps")]
static STAMPING: core::sync::atomic::AtomicU8 = core::sync::atomic::AtomicU8::new(0);
/// The TSC at the latest trap entry (written by the entry stubs while stamping).
#[cfg(feature = "stamps")]
static ENTRY_TSC: core::sync::atomic::AtomicU64 = core::sync::atomic::AtomicU64::new(0);

/// The TSC at the latest return from a trap (written by the restore path while stamping): at
/// an entry from ring 3, when the kernel last left for the guest.
#[cfg(feature = "stamps")]
static EXIT_TSC: core::sync::atomic::AtomicU64 = core::sync::atomic::AtomicU64::new(0);

/// Turns the trap entry and exit stamps on.
pub fn enable_stamping() {
    #[cfg(feature = "stamps")]
    STAMPING.store(1, core::sync::atomic::Ordering::Relaxed);
}

/// Whether the trap stamps are on (constant false without the `stamps` feature).
#[inline(always)]
pub fn stamping() -> bool {
    #[cfg(feature = "stamps")]
    return STAMPING.load(core::sync::atomic::Ordering::Relaxed) != 0;
    #[cfg(not(feature = "stamps"))]
    false
}

/// The TSC when the kernel last returned from a trap (0 when stamping is off).
pub fn exit_tsc() -> u64 {
    #[cfg(feature = "stamps")]
    return EXIT_TSC.load(core::sync::atomic::Ordering::Relaxed);
    #[cfg(not(feature = "stamps"))]
    0
}

/// The TSC when the trap being handled entered the kernel (0 when stamping is off).
pub fn entry_tsc() -> u64 {
    #[cfg(feature = "stamps")]
    return ENTRY_TSC.load(core::sync::atomic::Ordering::Relaxed);
    #[cfg(not(feature = "stamps"))]
    0
}

/// Size in bytes of one entry stub.
const STUB_BYTES: u64 = 16;

/// The entry stubs and the common save path, up to where the entry stamp goes.
macro_rules! trap_asm_head {
    () => {
        r#"
    .section .text.trap_stubs, "ax", @progbits
    .balign 16
    .global trap_stubs
trap_stubs:
    .set trap_vector, 0
    .rept 256
    .balign 16
    .if (trap_vector == 8) || ((trap_vector >= 10) && (trap_vector <= 14)) || (trap_vector == 17) || (trap_vector == 21) || (trap_vector == 29) || (trap_vector == 30)
    .else
    pushq $0
    .endif
    pushq $trap_vector
    jmp trap_common
    .set trap_vector, trap_vector + 1
    .endr

trap_common:
    pushq %rax
    pushq %rbx
    pushq %rcx
    pushq %rdx
    pushq %rsi
    pushq %rdi
    pushq %rbp
    pushq %r8
    pushq %r9
    pushq %r10
    pushq %r11
    pushq %r12
    pushq %r13
    pushq %r14
    pushq %r15
"#
    };
}

/// The call into Rust, up to the restore (where the exit stamp goes).
macro_rules! trap_asm_call {
    () => {
        r#"    movq %rsp, %rdi             # &mut TrapFrame; the CPU aligned the stack, 22 words keep it so
    cld
    call {dispatch}
trap_restore:
"#
    };
}

/// The rest of the common path: the restore, and `trap_enter_frame`.
macro_rules! trap_asm_tail {
    () => {
        r#"    popq %r15
    popq %r14
    popq %r13
    popq %r12
    popq %r11
    popq %r10
    popq %r9
    popq %r8
    popq %rbp
    popq %rdi
    popq %rsi
    popq %rdx
    popq %rcx
    popq %rbx
    popq %rax
    addq $16, %rsp              # vector and error code
    iretq

    # Enters the context in the frame at %rdi, which must lie at the top of the trap stack,
    # where a trap from ring 3 would have put it.
    .global trap_enter_frame
trap_enter_frame:
    movq %rdi, %rsp
    jmp trap_restore
    "#
    };
}

// With the `stamps` feature the entry takes the TSC (while stamping is on); without it the
// entry has no stamping code at all.
#[cfg(feature = "stamps")]
core::arch::global_asm!(
    concat!(
        trap_asm_head!(),
        r#"    # Stage stamps (benchmarks): the TSC at trap entry, only while stamping is on.
    cmpb $0, {stamping}(%rip)
    je 1f
    lfence
    rdtsc
    shlq $32, %rdx
    orq %rdx, %rax
    movq %rax, {entry_tsc}(%rip)
1:
"#,
        trap_asm_call!(),
        r#"    # And the TSC on the way out (rax and rdx are restored from the frame below).
    cmpb $0, {stamping}(%rip)
    je 2f
    lfence
    rdtsc
    shlq $32, %rdx
    orq %rdx, %rax
    movq %rax, {exit_tsc}(%rip)
2:
"#,
        trap_asm_tail!()
    ),
    dispatch = sym crate::trap::trap_dispatch,
    stamping = sym STAMPING,
    entry_tsc = sym ENTRY_TSC,
    exit_tsc = sym EXIT_TSC,
    options(att_syntax)
);

#[cfg(not(feature = "stamps"))]
core::arch::global_asm!(
    concat!(trap_asm_head!(), trap_asm_call!(), trap_asm_tail!()),
    dispatch = sym crate::trap::trap_dispatch,
    options(att_syntax)
);

extern "C" {
    /// First of the 256 entry stubs.
    static trap_stubs: [u8; 0];
    fn trap_enter_frame(frame: *const TrapFrame) -> !;
}

/// Leaves the kernel for the context in `frame` (a guest in ring 3), never to return: the
/// frame is copied to the top of the trap stack, where the next trap from ring 3 will land,
/// and restored from there exactly as a trap return would.
///
/// # Safety
/// `trap_stack_top` must be the RSP0 of the TSS, the current stack must not be that stack's
/// top frame (the kernel calls this from the boot stack), and `frame` must describe a valid
/// ring-3 context in the active address space.
pub unsafe fn enter_frame(frame: &TrapFrame, trap_stack_top: u64) -> ! {
    let slot = (trap_stack_top - core::mem::size_of::<TrapFrame>() as u64) as *mut TrapFrame;
    // SAFETY: per the contract, `slot` is the top of the (otherwise unused) trap stack, and the
    // assembly restores the registers from it and executes `iretq` into the guest.
    unsafe {
        slot.write(*frame);
        trap_enter_frame(slot)
    }
}

/// Address of the entry stub for `vector`.
pub fn stub_address(vector: u8) -> u64 {
    // Keep the assembly's error-code list and the Rust one in step.
    debug_assert!(pushes_error_code(8) && !pushes_error_code(32));
    // Only the address of the symbol is taken; nothing is read through it.
    let base = (&raw const trap_stubs) as u64;
    base + u64::from(vector) * STUB_BYTES
}
