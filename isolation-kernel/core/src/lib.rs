//! The isolation kernel's portable half.
//!
//! Everything here is plain, safe Rust with no hardware access, so the same code runs in the
//! kernel and in host unit tests (`cargo test -p kernel-core`). The hardware half (boot, CPU
//! tables, paging, interrupts, drivers, guest switching) is the binary in `isolation-kernel/src`,
//! whose folders carry the same names: `boot` (PVH start info, memory map, command line), `mm`
//! (frame allocator), `drivers` (PCI configuration space, virtio transports' structures and
//! features), `guest` (pointer validation, scheduler, ELF and cpio loading, register-state
//! checks), `trap` (instruction decoding, exceptions), `vnet` (the packet path).

#![cfg_attr(not(test), no_std)]
#![forbid(unsafe_code)]
// Everything here handles what guests and images write: no panics, unchecked indexing or
// unchecked arithmetic outside tests (an `allow` only with its proof beside it).
#![cfg_attr(
    not(test),
    deny(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing, clippy::arithmetic_side_effects)
)]

extern crate alloc;

pub mod boot;
pub mod drivers;
pub mod guest;
pub mod mm;
pub mod stats;
pub mod trap;
pub mod vnet;
