//! The trap path's first step: every trap and interrupt arrives here from the entry stubs
//! (`arch/trap.rs`), its vector is decoded once into a [`Vector`], and it goes to the guest
//! trap handler (from ring 3) or is handled for the kernel itself.

use crate::arch::clock::{end_of_interrupt, timer_tick};
use crate::arch::cpu;
use crate::arch::trap::TrapFrame;
use crate::arch::vectors::{NIC_VECTOR, SPURIOUS_VECTOR, TIMER_VECTOR};
use crate::drivers::power_off::power_off;
use crate::logger::console_write_fmt;
use hypercall_abi::host::KernelExit;
use kernel_core::trap::exceptions::exception_name;

/// What a trap is, decoded once from its vector number.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Vector {
    Timer,
    Nic,
    Spurious,
    /// A CPU exception (vectors 0 to 31), by number.
    Exception(u64),
    /// Anything else: no device of ours uses it.
    Unexpected(u64),
}

impl Vector {
    pub fn decode(vector: u64) -> Vector {
        match vector {
            v if v == u64::from(TIMER_VECTOR) => Vector::Timer,
            v if v == u64::from(NIC_VECTOR) => Vector::Nic,
            v if v == u64::from(SPURIOUS_VECTOR) => Vector::Spurious,
            v if v < 32 => Vector::Exception(v),
            v => Vector::Unexpected(v),
        }
    }
}

/// Called by the trap entry stub with the saved registers of the interrupted context.
pub extern "C" fn trap_dispatch(frame: &mut TrapFrame) {
    let vector = Vector::decode(frame.vector);
    if frame.came_from_user() {
        return crate::guest::handle_user_trap(frame, vector);
    }
    if crate::arch::trap::stamping() {
        crate::guest::timeline_kernel_interrupt(vector);
    }
    match vector {
        Vector::Timer => {
            crate::guest::timer_interrupt();
            timer_tick();
            // A NIC without interrupts is polled here too, not only while a guest runs.
            if crate::drivers::virtio_net::polled() {
                crate::guest::nic_interrupt();
            }
        }
        Vector::Spurious => {}
        Vector::Nic => {
            crate::drivers::virtio_net::count_interrupt();
            crate::guest::nic_interrupt();
            end_of_interrupt();
        }
        Vector::Exception(_) => kernel_fault(frame),
        Vector::Unexpected(v) => log::warn!("unexpected interrupt vector {v}"),
    }
}

/// A CPU exception in kernel mode: report it and end the machine.
fn kernel_fault(frame: &TrapFrame) -> ! {
    let (mnemonic, name) = exception_name(frame.vector).unwrap_or(("?", "reserved vector"));
    let cr2 = if frame.vector == 14 { cpu::cr2() } else { 0 };
    console_write_fmt(format_args!(
        "KERNEL FAULT: vector {} ({mnemonic} {name}) error {:#x} rip {:#x} cr2 {:#x} rsp {:#x} cs {:#x} rflags {:#x}\n",
        frame.vector, frame.error_code, frame.rip, cr2, frame.rsp, frame.cs, frame.rflags
    ));
    power_off(KernelExit::KernelFault)
}
