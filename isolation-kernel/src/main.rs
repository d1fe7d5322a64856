//! The isolation kernel binary. See `DESIGN.md` and the README for the architecture.
//!
//! On the host this file compiles to a program that only explains how to build the kernel, so
//! that `cargo test` over the workspace can run the library's unit tests.

#![cfg_attr(target_os = "none", no_std, no_main)]

#[cfg(not(target_os = "none"))]
fn main() {
    eprintln!("the isolation kernel runs only on x86_64-unknown-none: use `cargo xtask build` or `cargo xtask run`");
    std::process::exit(2);
}

#[cfg(target_os = "none")]
extern crate alloc;

#[cfg(target_os = "none")]
mod arch;
#[cfg(target_os = "none")]
mod drivers;
#[cfg(target_os = "none")]
mod guest;
#[cfg(target_os = "none")]
mod kernel;
#[cfg(target_os = "none")]
mod logger;
#[cfg(target_os = "none")]
mod mm;
#[cfg(target_os = "none")]
mod stats;
#[cfg(target_os = "none")]
mod trap;
#[cfg(target_os = "none")]
mod vnet;

#[cfg(target_os = "none")]
pub use kernel::*;
