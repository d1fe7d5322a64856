//! Portable logic of the isolation kernel.
//!
//! Everything here is plain, safe Rust with no hardware access, so the same code runs in the
//! kernel and in host unit tests (`cargo test -p isolation-kernel`). The hardware side (boot,
//! CPU tables, paging, interrupts, drivers) lives in the binary (`src/main.rs`) and calls into
//! these modules.

#![cfg_attr(not(test), no_std)]
#![forbid(unsafe_code)]

extern crate alloc;

pub mod cmdline;
pub mod cpio;
pub mod elf;
pub mod exceptions;
pub mod frame_alloc;
pub mod guest_mem;
pub mod memmap;
pub mod pvh;
pub mod sched;
pub mod stats;
pub mod user_state;
pub mod vinstr;
pub mod vnet;
