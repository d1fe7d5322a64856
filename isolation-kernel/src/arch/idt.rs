//! The IDT: every vector points at its own entry stub (see [`super::trap`]).

use super::gdt::DOUBLE_FAULT_IST_INDEX;
use super::trap::stub_address;
use x86_64::structures::idt::{EntryOptions, InterruptDescriptorTable};
use x86_64::VirtAddr;

static IDT: spin::Once<InterruptDescriptorTable> = spin::Once::new();

/// Points the IDT entry of `vector` at `addr`. Reserved exception vectors have no public entry
/// in the `x86_64` crate's table; the CPU never raises them, so they stay not-present.
///
/// # Safety
/// `addr` must be the address of an entry stub that expects this vector's frame layout.
unsafe fn set_entry(idt: &mut InterruptDescriptorTable, vector: u8, addr: VirtAddr) -> Option<&mut EntryOptions> {
    // SAFETY: forwarded to the caller.
    unsafe {
        Some(match vector {
            0 => idt.divide_error.set_handler_addr(addr),
            1 => idt.debug.set_handler_addr(addr),
            2 => idt.non_maskable_interrupt.set_handler_addr(addr),
            3 => idt.breakpoint.set_handler_addr(addr),
            4 => idt.overflow.set_handler_addr(addr),
            5 => idt.bound_range_exceeded.set_handler_addr(addr),
            6 => idt.invalid_opcode.set_handler_addr(addr),
            7 => idt.device_not_available.set_handler_addr(addr),
            8 => idt.double_fault.set_handler_addr(addr),
            10 => idt.invalid_tss.set_handler_addr(addr),
            11 => idt.segment_not_present.set_handler_addr(addr),
            12 => idt.stack_segment_fault.set_handler_addr(addr),
            13 => idt.general_protection_fault.set_handler_addr(addr),
            14 => idt.page_fault.set_handler_addr(addr),
            16 => idt.x87_floating_point.set_handler_addr(addr),
            17 => idt.alignment_check.set_handler_addr(addr),
            18 => idt.machine_check.set_handler_addr(addr),
            19 => idt.simd_floating_point.set_handler_addr(addr),
            20 => idt.virtualization.set_handler_addr(addr),
            21 => idt.cp_protection_exception.set_handler_addr(addr),
            28 => idt.hv_injection_exception.set_handler_addr(addr),
            29 => idt.vmm_communication_exception.set_handler_addr(addr),
            30 => idt.security_exception.set_handler_addr(addr),
            32..=255 => idt[vector].set_handler_addr(addr),
            _ => return None,
        })
    }
}

/// Builds and loads the IDT. Interrupt gates throughout: interrupts stay off inside the kernel.
pub fn init() {
    let idt = IDT.call_once(|| {
        let mut idt = InterruptDescriptorTable::new();
        for vector in 0..=255u8 {
            let addr = VirtAddr::new(stub_address(vector));
            // SAFETY: `stub_address` gives the stub generated for exactly this vector.
            let Some(options) = (unsafe { set_entry(&mut idt, vector, addr) }) else { continue };
            if vector == 8 {
                // SAFETY: the TSS's IST slot for double faults holds a stack of its own, so a
                // double fault caused by a kernel stack overflow can still be reported.
                unsafe { options.set_stack_index(DOUBLE_FAULT_IST_INDEX) };
            }
        }
        idt
    });
    idt.load();
}
