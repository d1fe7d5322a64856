//! `mem-probe`: uses its memory in one way, named by its first argument, so the tests can
//! check that the kernel backs stack and heap pages only when they are touched, reads untouched
//! ones as zeros, and stops a guest that reaches past them.
//!
//! - `grow heap_kib=N stack_kib=M`: writes N KiB of heap, frees it, writes half as much again
//!   (the same pages), and uses M KiB of stack; exits 0.
//! - `read-untouched`: hands the kernel (console_write) a pointer into heap it never wrote:
//!   exits 0 if the kernel read zeros and the page was not backed for it.
//! - `stack-overflow`: recurses past the stack into the guard page (to be stopped).
//! - `exec-untouched-heap`: jumps to a heap page it never touched (to be stopped: no execute).
//! - `beyond-heap`: writes the first byte past its heap (to be stopped).

#![no_std]
#![no_main]

extern crate alloc;

use alloc::vec::Vec;
use core::hint::black_box;
use guest_os::{println, vi, Env};
use hypercall_abi::layout::PAGE_SIZE;

const KIB: usize = 1024;

/// Uses `frames` more 4 KiB frames of stack, writing each.
#[inline(never)]
fn use_stack(frames: usize) -> u64 {
    let mut page = [0u8; PAGE_SIZE as usize];
    black_box(&mut page)[0] = frames as u8;
    let below = if frames > 1 { use_stack(frames - 1) } else { 0 };
    below + u64::from(black_box(&page)[0])
}

/// Recurses until the stack runs out (the bound is never reached: the stack is far smaller).
#[inline(never)]
fn overflow(depth: u64) -> u64 {
    let mut page = [0u8; PAGE_SIZE as usize];
    black_box(&mut page)[0] = depth as u8;
    let below = if black_box(depth) < 1 << 20 { overflow(depth + 1) } else { 0 };
    below + u64::from(black_box(&page)[0])
}

fn grow(env: &Env) -> i32 {
    let heap_kib: usize = env.arg("heap_kib").and_then(|v| v.parse().ok()).unwrap_or(256);
    let stack_kib: usize = env.arg("stack_kib").and_then(|v| v.parse().ok()).unwrap_or(32);
    let mut block: Vec<u8> = Vec::with_capacity(heap_kib * KIB);
    block.resize(heap_kib * KIB, 0x5a);
    let sum: u64 = block.iter().step_by(PAGE_SIZE as usize).map(|&b| u64::from(b)).sum();
    drop(block);
    // The same pages again: freed memory is reused, not newly backed.
    let mut again: Vec<u8> = Vec::with_capacity(heap_kib * KIB / 2);
    again.resize(heap_kib * KIB / 2, 0xa5);
    let used = use_stack(stack_kib * KIB / PAGE_SIZE as usize);
    println!("mem-probe: wrote heap_kib={heap_kib} stack_kib={stack_kib} (check {sum} {used} {})", again.len());
    0
}

fn read_untouched() -> i32 {
    // Allocated but never written: its pages are still unbacked.
    let block: Vec<u8> = Vec::with_capacity(64 * KIB);
    let inside = block.as_ptr().wrapping_add(32 * KIB);
    // SAFETY: 16 bytes inside the allocation; only their address goes to the kernel, which
    // validates it against this guest's memory and reads it.
    let bytes = unsafe { core::slice::from_raw_parts(inside, 16) };
    let written = vi::console_write(bytes);
    println!("");
    println!("mem-probe: console_write of an untouched heap page returned {written}");
    if written == 16 {
        0
    } else {
        1
    }
}

fn main(env: &Env) -> i32 {
    match env.args().next() {
        Some("grow") => grow(env),
        Some("read-untouched") => read_untouched(),
        Some("stack-overflow") => {
            println!("mem-probe: {}", overflow(0));
            99
        }
        Some("exec-untouched-heap") => {
            let last_page = env.heap_base + env.heap_size - PAGE_SIZE;
            println!("mem-probe: executing {last_page:#x}");
            // SAFETY: deliberately wrong: the heap is not executable; the kernel must stop us.
            let f: extern "C" fn() = unsafe { core::mem::transmute(last_page as usize) };
            f();
            99
        }
        Some("beyond-heap") => {
            let past = (env.heap_base + env.heap_size) as *mut u8;
            println!("mem-probe: writing {:#x}", past as u64);
            // SAFETY: deliberately wrong: the byte past the heap is not ours; the kernel must
            // stop us.
            unsafe { past.write_volatile(1) };
            99
        }
        other => {
            println!("mem-probe: unknown mode {other:?}");
            2
        }
    }
}

guest_os::entry!(main);
