//! Guest side: the wrappers that issue the virtual instructions (see [`crate::vi`]).
//!
//! Only built for bare-metal x86_64. Each wrapper is one `out dx, eax` with the arguments in the
//! registers the ABI names; the kernel changes nothing but `rax`.
#![allow(unsafe_code)]

use crate::vi::{Vi, NO_DEADLINE};
use core::arch::asm;

#[inline(always)]
fn vi0(vi: Vi) -> i64 {
    let result: i64;
    // SAFETY: the `out` traps to the kernel, which implements the instruction and resumes after
    // it with only `rax` changed; no guest memory is touched.
    unsafe { asm!("out dx, eax", in("dx") vi.port(), in("eax") 0u32, lateout("rax") result, options(nostack, nomem)) };
    result
}

/// Writes `bytes` to the console (the kernel prefixes each line with the guest's id and name).
/// Returns the number of bytes written, or a negative [`crate::vi::Error`] code.
pub fn console_write(bytes: &[u8]) -> i64 {
    let result: i64;
    // SAFETY: as in `vi0`; the kernel only reads `bytes` (it may, so no `nomem`).
    unsafe {
        asm!("out dx, eax", in("dx") Vi::ConsoleWrite.port(), in("eax") 0u32,
             in("rdi") bytes.as_ptr(), in("rsi") bytes.len(), lateout("rax") result,
             options(nostack, readonly))
    };
    result
}

/// Ends the guest with `code`.
pub fn exit(code: i32) -> ! {
    // SAFETY: the kernel never resumes a guest after `exit`.
    unsafe {
        asm!("out dx, eax", in("dx") Vi::Exit.port(), in("eax") 0u32, in("rdi") i64::from(code),
             options(nostack, nomem, noreturn))
    }
}

/// Gives the CPU to the next runnable guest.
pub fn yield_now() {
    vi0(Vi::Yield);
}

/// Sleeps until the TSC reaches `deadline` ([`NO_DEADLINE`]: until a virtual interrupt).
/// Returns the pending virtual-interrupt bits, 0 if the deadline woke the guest.
pub fn idle_until(deadline: u64) -> u64 {
    let result: i64;
    // SAFETY: as in `vi0`.
    unsafe {
        asm!("out dx, eax", in("dx") Vi::IdleUntil.port(), in("eax") 0u32, in("rdi") deadline,
             lateout("rax") result, options(nostack, nomem))
    };
    result as u64
}

/// Sleeps until a virtual interrupt arrives.
pub fn idle() -> u64 {
    idle_until(NO_DEADLINE)
}

/// Does nothing in the kernel: measures the trap round trip.
pub fn null() -> i64 {
    vi0(Vi::Null)
}

/// Tells the kernel that tx descriptors were produced. Returns how many it took.
pub fn vnic_tx_kick() -> i64 {
    let result: i64;
    // SAFETY: as in `vi0`; the kernel reads the shared page and tx slots, and writes descriptor
    // statuses and the consumer index, which the guest reads through atomics.
    unsafe {
        asm!("out dx, eax", in("dx") Vi::VnicTxKick.port(), in("eax") 0u32, lateout("rax") result, options(nostack))
    };
    result
}

/// Tells the kernel that rx buffers were posted.
pub fn vnic_rx_posted() -> i64 {
    let result: i64;
    // SAFETY: as in `vnic_tx_kick`.
    unsafe {
        asm!("out dx, eax", in("dx") Vi::VnicRxPosted.port(), in("eax") 0u32, lateout("rax") result, options(nostack))
    };
    result
}
