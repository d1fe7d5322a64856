//! QEMU's `isa-debug-exit` device: the way the kernel ends the virtual machine with a status.

use crate::arch::cpu::{halt_forever, outl};
use hypercall_abi::host::{KernelExit, DEBUG_EXIT_PORT};

/// Ends QEMU with the status of `reason`. If the device is missing, halts forever instead, so a
/// harness's timeout catches it.
pub fn exit_qemu(reason: KernelExit) -> ! {
    // SAFETY: writing to the debug-exit port only asks QEMU to end the machine; on a machine
    // without the device the write goes nowhere.
    unsafe { outl(DEBUG_EXIT_PORT, u32::from(reason.code())) };
    crate::logger::console_write_fmt(format_args!("isa-debug-exit did not end the machine; halting\n"));
    halt_forever()
}
