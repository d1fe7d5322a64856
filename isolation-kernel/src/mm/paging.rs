//! The kernel's own page tables, replacing the boot tables: a direct map of physical RAM
//! (writable, never executable) in the upper half, the kernel image in the top 2 GiB with
//! per-section permissions and a guard page under the boot stack, and nothing in the lower half,
//! which belongs to guests. Kernel mappings are global so switching guest page tables keeps them
//! in the TLB.

use super::phys::{phys_to_virt, DIRECT_MAP_OFFSET};
use crate::arch::cpu;
use hypercall_abi::layout::PAGE_SIZE as PAGE;
use kernel_core::boot::memmap::Range;
use kernel_core::mm::frame_alloc::FrameAllocator;
use x86_64::structures::paging::mapper::MapToError;
use x86_64::structures::paging::{
    FrameAllocator as PageTableFrameSource, Mapper, OffsetPageTable, Page, PageTable, PageTableFlags as Flags,
    PhysFrame, Size2MiB, Size4KiB,
};
use x86_64::{PhysAddr, VirtAddr};

/// Where the linker placed the kernel image: virtual = physical + KERNEL_VMA.
pub const KERNEL_VMA: u64 = 0xffff_ffff_8000_0000;
/// Kernel virtual addresses for device registers (MMIO), one 4 KiB page each.
pub const MMIO_WINDOW: u64 = 0xffff_ff00_0000_0000;
const LARGE_PAGE: u64 = 2 << 20;

/// The kernel image's sections, as virtual address ranges.
pub struct KernelLayout {
    pub text: Range,
    pub rodata: Range,
    pub data: Range,
    /// Pages inside `data` left unmapped so a kernel stack overflow faults.
    pub stack_guard_pages: [u64; 2],
}

/// Hands the `x86_64` crate frames for page tables, refusing any that the current (boot)
/// mapping cannot reach, since the crate writes new tables through the direct map.
struct TableFrames<'a, 'b> {
    frames: &'a mut FrameAllocator<'b>,
    reachable_below: u64,
}

// SAFETY: every frame returned comes from the frame allocator, so it is unused RAM that nothing
// else will be given, and it lies below `reachable_below`, which the active page tables map at
// the direct-map offset.
unsafe impl PageTableFrameSource<Size4KiB> for TableFrames<'_, '_> {
    fn allocate_frame(&mut self) -> Option<PhysFrame<Size4KiB>> {
        let phys = self.frames.allocate()?;
        if phys + PAGE > self.reachable_below {
            self.frames.deallocate(phys).expect("frame was just allocated");
            return None;
        }
        Some(PhysFrame::containing_address(PhysAddr::new(phys)))
    }
}

/// The kernel's page table, for later mappings (MMIO, guests' kernel halves).
pub static KERNEL_PAGE_TABLE: spin::Mutex<Option<OffsetPageTable<'static>>> = spin::Mutex::new(None);

static KERNEL_PML4_PHYS: core::sync::atomic::AtomicU64 = core::sync::atomic::AtomicU64::new(0);

/// Physical address of the kernel's PML4 (whose upper half every guest shares).
pub fn kernel_pml4_phys() -> u64 {
    KERNEL_PML4_PHYS.load(core::sync::atomic::Ordering::Relaxed)
}

/// `NO_EXECUTE` where the CPU supports it (EFER.NXE set at boot), nothing otherwise.
pub fn no_execute() -> Flags {
    if cpu::no_execute_enabled() {
        Flags::NO_EXECUTE
    } else {
        Flags::empty()
    }
}

const TABLE_FLAGS: Flags = Flags::PRESENT.union(Flags::WRITABLE);

/// Maps `[phys, phys + len)` at `virt`, with 2 MiB pages wherever both sides are aligned.
fn map_range(
    table: &mut OffsetPageTable<'static>,
    frames: &mut TableFrames<'_, '_>,
    virt: u64,
    phys: u64,
    len: u64,
    flags: Flags,
) -> Result<(), MapToError<Size4KiB>> {
    let mut offset = 0;
    while offset < len {
        let (v, p) = (virt + offset, phys + offset);
        if v % LARGE_PAGE == 0 && p % LARGE_PAGE == 0 && len - offset >= LARGE_PAGE {
            let page = Page::<Size2MiB>::containing_address(VirtAddr::new(v));
            let frame = PhysFrame::<Size2MiB>::containing_address(PhysAddr::new(p));
            // SAFETY: a fresh mapping in a table that is not active yet (or of MMIO/RAM nobody
            // else maps at this address); it aliases nothing the kernel relies on.
            unsafe { table.map_to_with_table_flags(page, frame, flags | Flags::HUGE_PAGE, TABLE_FLAGS, frames) }
                .map_err(|e| match e {
                    MapToError::FrameAllocationFailed => MapToError::FrameAllocationFailed,
                    MapToError::ParentEntryHugePage => MapToError::ParentEntryHugePage,
                    MapToError::PageAlreadyMapped(_) => {
                        MapToError::PageAlreadyMapped(PhysFrame::containing_address(PhysAddr::new(p)))
                    }
                })?
                .ignore();
            offset += LARGE_PAGE;
        } else {
            let page = Page::<Size4KiB>::containing_address(VirtAddr::new(v));
            let frame = PhysFrame::<Size4KiB>::containing_address(PhysAddr::new(p));
            // SAFETY: as above.
            unsafe { table.map_to_with_table_flags(page, frame, flags, TABLE_FLAGS, frames) }?.ignore();
            offset += PAGE;
        }
    }
    Ok(())
}

/// Builds the kernel's page tables and switches to them.
///
/// `ram` lists the physical ranges to direct-map; `reachable_below` is how much of physical
/// memory the boot tables map (new page-table frames must lie below it).
pub fn init(frames: &mut FrameAllocator<'static>, ram: &[Range], layout: &KernelLayout, reachable_below: u64) {
    let nx = no_execute();
    let mut source = TableFrames { frames, reachable_below };
    let pml4_frame = source.allocate_frame().expect("a frame for the kernel PML4");
    let pml4_ptr = phys_to_virt(pml4_frame.start_address().as_u64()).as_mut_ptr::<PageTable>();
    // SAFETY: the frame is fresh RAM below `reachable_below`, mapped by the boot tables at the
    // direct-map offset; nothing else refers to it, so a unique `'static` reference is sound.
    let pml4: &'static mut PageTable = unsafe {
        pml4_ptr.write(PageTable::new());
        &mut *pml4_ptr
    };
    // SAFETY: all of physical memory that the tables will ever point into is (or, for frames
    // the allocator hands out, will be) mapped at DIRECT_MAP_OFFSET.
    let mut table = unsafe { OffsetPageTable::new(pml4, VirtAddr::new(DIRECT_MAP_OFFSET)) };

    let data_flags = Flags::PRESENT | Flags::WRITABLE | Flags::GLOBAL | nx;
    for range in ram {
        map_range(&mut table, &mut source, phys_to_virt(range.start).as_u64(), range.start, range.len(), data_flags)
            .expect("direct map of RAM");
    }
    let sections = [
        (layout.text, Flags::PRESENT | Flags::GLOBAL),
        (layout.rodata, Flags::PRESENT | Flags::GLOBAL | nx),
        (layout.data, data_flags),
    ];
    for (section, flags) in sections {
        let mut virt = section.start;
        while virt < section.end {
            if !layout.stack_guard_pages.contains(&virt) {
                map_range(&mut table, &mut source, virt, virt - KERNEL_VMA, PAGE, flags).expect("kernel image mapping");
            }
            virt += PAGE;
        }
    }

    // SAFETY: the new tables map everything the kernel touches from here on: its code, data and
    // stack at the same virtual addresses as before, and RAM at the same direct-map offset.
    unsafe { cpu::load_pml4(pml4_frame.start_address().as_u64()) };
    // The global kernel entries survive later address-space switches.
    cpu::enable_global_pages();
    KERNEL_PML4_PHYS.store(pml4_frame.start_address().as_u64(), core::sync::atomic::Ordering::Relaxed);
    *KERNEL_PAGE_TABLE.lock() = Some(table);
}

/// Maps one 4 KiB page of device registers at `MMIO_WINDOW + slot * 4 KiB`, uncached, and returns
/// its virtual address.
pub fn map_mmio_page(slot: u64, phys: u64, frames: &mut FrameAllocator<'static>) -> VirtAddr {
    let virt = MMIO_WINDOW + slot * PAGE;
    let flags =
        Flags::PRESENT | Flags::WRITABLE | Flags::NO_CACHE | Flags::WRITE_THROUGH | Flags::GLOBAL | no_execute();
    let mut guard = KERNEL_PAGE_TABLE.lock();
    let table = guard.as_mut().expect("paging::init runs first");
    let mut source = TableFrames { frames, reachable_below: u64::MAX };
    map_range(table, &mut source, virt, phys, PAGE, flags).expect("MMIO mapping");
    x86_64::instructions::tlb::flush(VirtAddr::new(virt));
    VirtAddr::new(virt)
}

/// The next free page of the MMIO window for [`map_mmio`] (page 0 is the local APIC's).
static NEXT_MMIO_PAGE: core::sync::atomic::AtomicU64 = core::sync::atomic::AtomicU64::new(1);

/// Maps the device registers at `[phys, phys + len)` (uncached, whole pages) at fresh pages of
/// the MMIO window, and returns the virtual address of `phys`. Mappings are never taken back.
pub fn map_mmio(phys: u64, len: u64, frames: &mut FrameAllocator<'static>) -> VirtAddr {
    let first = phys - phys % PAGE;
    let pages = (phys + len.max(1)).next_multiple_of(PAGE).saturating_sub(first) / PAGE;
    let slot = NEXT_MMIO_PAGE.fetch_add(pages, core::sync::atomic::Ordering::Relaxed);
    for page in 0..pages {
        map_mmio_page(slot + page, first + page * PAGE, frames);
    }
    VirtAddr::new(MMIO_WINDOW + slot * PAGE + phys % PAGE)
}
