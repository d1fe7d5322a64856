//! `noop`: exits 0 at once. Used to measure guest creation and the kernel's bookkeeping for
//! many guests.

#![no_std]
#![no_main]

fn main(_env: &guest_os::Env) -> i32 {
    0
}

guest_os::entry!(main);
