//! GDT and TSS: kernel and user segments, a ring-0 stack for traps from ring 3, a separate
//! stack for double faults, and an I/O permission bitmap that denies every port to ring 3, so
//! that a guest's `in`/`out` traps into the kernel as `#GP` (the virtual-instruction path).

use core::cell::UnsafeCell;
use x86_64::instructions::segmentation::{Segment, CS, DS, ES, SS};
use x86_64::instructions::tables::load_tss;
use x86_64::structures::gdt::{Descriptor, GlobalDescriptorTable, SegmentSelector};
use x86_64::structures::tss::TaskStateSegment;
use x86_64::VirtAddr;

/// One bit per I/O port (65,536 ports), plus the terminating all-ones byte the CPU requires.
const IO_BITMAP_BYTES: usize = 65_536 / 8 + 1;
/// IST slot (1-based in the TSS, 0-based in the IDT entry) of the double-fault stack.
pub const DOUBLE_FAULT_IST_INDEX: u16 = 0;
const DOUBLE_FAULT_STACK_BYTES: usize = 16 * 1024;

#[repr(C)]
struct TssWithIoBitmap {
    tss: TaskStateSegment,
    io_bitmap: [u8; IO_BITMAP_BYTES],
}

/// The TSS, written once at boot before it is loaded; the CPU then reads it on every trap.
struct TssCell(UnsafeCell<TssWithIoBitmap>);

// SAFETY: the kernel runs on one CPU; the TSS is written only in `init`, before interrupts are
// enabled and before `ltr` hands it to the CPU.
unsafe impl Sync for TssCell {}

static TSS: TssCell = TssCell(UnsafeCell::new(TssWithIoBitmap {
    tss: TaskStateSegment::new(),
    // A set bit denies the port: every port is denied.
    io_bitmap: [0xff; IO_BITMAP_BYTES],
}));

#[repr(C, align(16))]
struct Stack<const N: usize>([u8; N]);

static mut DOUBLE_FAULT_STACK: Stack<DOUBLE_FAULT_STACK_BYTES> = Stack([0; DOUBLE_FAULT_STACK_BYTES]);

pub struct Selectors {
    pub kernel_code: SegmentSelector,
    pub kernel_data: SegmentSelector,
    pub user_data: SegmentSelector,
    pub user_code: SegmentSelector,
    pub tss: SegmentSelector,
}

static GDT: spin::Once<(GlobalDescriptorTable, Selectors)> = spin::Once::new();

/// A 64-bit available-TSS descriptor whose limit covers the I/O bitmap (the `x86_64` crate's
/// constructor sets the limit to the bare TSS, which would leave no room for a bitmap).
fn tss_descriptor(base: u64, limit: u32) -> Descriptor {
    let low = u64::from(limit & 0xffff)
        | ((base & 0xff_ffff) << 16)
        | (0x89 << 40) // present, type 9: available 64-bit TSS
        | (u64::from((limit >> 16) & 0xf) << 48)
        | (((base >> 24) & 0xff) << 56);
    Descriptor::SystemSegment(low, base >> 32)
}

/// Loads the GDT and TSS. `kernel_stack_top` is where the CPU switches to on a trap from ring 3.
pub fn init(kernel_stack_top: VirtAddr) {
    let tss_ptr = TSS.0.get();
    // SAFETY: single CPU, interrupts off, TSS not yet loaded: nothing else reads it now.
    unsafe {
        (*tss_ptr).tss.privilege_stack_table[0] = kernel_stack_top;
        (*tss_ptr).tss.iomap_base = core::mem::size_of::<TaskStateSegment>() as u16;
        let df_stack = &raw mut DOUBLE_FAULT_STACK;
        let df_top = VirtAddr::from_ptr(df_stack) + DOUBLE_FAULT_STACK_BYTES as u64;
        (*tss_ptr).tss.interrupt_stack_table[usize::from(DOUBLE_FAULT_IST_INDEX)] = df_top;
    }
    let (gdt, selectors) = GDT.call_once(|| {
        let mut gdt = GlobalDescriptorTable::new();
        let kernel_code = gdt.append(Descriptor::kernel_code_segment());
        let kernel_data = gdt.append(Descriptor::kernel_data_segment());
        // User data before user code: the order `sysret` would need, should it ever be used.
        let user_data = gdt.append(Descriptor::user_data_segment());
        let user_code = gdt.append(Descriptor::user_code_segment());
        let limit = (core::mem::size_of::<TssWithIoBitmap>() - 1) as u32;
        let tss = gdt.append(tss_descriptor(tss_ptr as u64, limit));
        (gdt, Selectors { kernel_code, kernel_data, user_data, user_code, tss })
    });
    gdt.load();
    // SAFETY: the selectors come from the GDT just loaded and describe valid kernel segments;
    // the TSS descriptor points at a TSS that lives forever.
    unsafe {
        CS::set_reg(selectors.kernel_code);
        SS::set_reg(selectors.kernel_data);
        DS::set_reg(selectors.kernel_data);
        ES::set_reg(selectors.kernel_data);
        load_tss(selectors.tss);
    }
}

/// The selectors of the loaded GDT.
pub fn selectors() -> &'static Selectors {
    &GDT.get().expect("gdt::init runs first").1
}
