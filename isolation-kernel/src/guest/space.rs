//! A guest's address space: its own PML4 whose upper half points at the kernel's tables, and a
//! lower half holding only what the loader maps (recorded in a [`GuestMemoryMap`], against
//! which every pointer the guest hands the kernel is validated before use).

use crate::arch::cpu;
use crate::mm::paging::{kernel_pml4_phys, no_execute};
use crate::mm::phys::{phys_to_virt, DIRECT_MAP_OFFSET};
use alloc::vec::Vec;
use hypercall_abi::layout::PAGE_SIZE as PAGE;
use kernel_core::guest::mem::{Access, GuestMemoryMap, ValidSlice};
use kernel_core::mm::frame_alloc::FrameAllocator;
use x86_64::structures::paging::mapper::TranslateResult;
use x86_64::structures::paging::{
    FrameAllocator as PageTableFrameSource, Mapper, OffsetPageTable, Page, PageTable, PageTableFlags as Flags,
    PhysFrame, Size4KiB, Translate,
};
use x86_64::{PhysAddr, VirtAddr};

/// Frames for a guest's page tables, each recorded so the guest's end can free them.
struct RecordingFrames<'a, 'b> {
    frames: &'a mut FrameAllocator<'b>,
    owned: &'a mut Vec<u64>,
}

// SAFETY: frames come from the frame allocator (unused RAM, handed out once) and are reachable
// through the direct map, which covers all RAM once the kernel's page tables are active.
unsafe impl PageTableFrameSource<Size4KiB> for RecordingFrames<'_, '_> {
    fn allocate_frame(&mut self) -> Option<PhysFrame<Size4KiB>> {
        let phys = self.frames.allocate()?;
        self.owned.push(phys);
        Some(PhysFrame::containing_address(PhysAddr::new(phys)))
    }
}

/// Fills a frame with zeros through the direct map.
pub fn zero_frame(phys: u64) {
    // SAFETY: callers pass frames they just took from the allocator, so no one else uses them;
    // the direct map covers all RAM, writable.
    unsafe { core::ptr::write_bytes(phys_to_virt(phys).as_mut_ptr::<u8>(), 0, PAGE as usize) };
}

/// Copies `data` into frame `phys` at `offset`.
pub fn fill_frame(phys: u64, offset: usize, data: &[u8]) {
    copy_into_run(phys, PAGE, offset as u64, data);
}

/// Copies `data` to `offset` bytes into the physically contiguous run of `run` bytes at `phys`
/// (a frame, a pool buffer, a guest's slot), through the direct map.
pub fn copy_into_run(phys: u64, run: u64, offset: u64, data: &[u8]) {
    assert!(offset.checked_add(data.len() as u64).is_some_and(|end| end <= run), "copy beyond the run");
    // SAFETY: callers pass runs the kernel owns or a guest's own frames, all in the direct map;
    // the range stays inside the run (checked above); `data` is elsewhere in memory.
    unsafe {
        core::ptr::copy_nonoverlapping(
            data.as_ptr(),
            phys_to_virt(phys.wrapping_add(offset)).as_mut_ptr::<u8>(),
            data.len(),
        )
    };
}

#[derive(Clone, Copy, Debug)]
pub enum SpaceError {
    OutOfMemory,
    /// The loader asked to map a page twice or outside the user half: a loader bug or a bad
    /// layout in the image, refused rather than trusted.
    BadMapping(u64),
    /// The image asks for a heap beyond `initrd::MAX_HEAP_KIB` (its `heap_kib`).
    HeapTooLarge(u64),
}

impl core::fmt::Display for SpaceError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            SpaceError::OutOfMemory => f.write_str("out of memory"),
            SpaceError::BadMapping(addr) => write!(f, "cannot map page {addr:#x}"),
            SpaceError::HeapTooLarge(kib) => {
                write!(f, "heap_kib = {kib} is out of range: at most {}", hypercall_abi::initrd::MAX_HEAP_KIB)
            }
        }
    }
}

pub struct AddressSpace {
    pml4_phys: u64,
    table: OffsetPageTable<'static>,
    pub map: GuestMemoryMap,
    /// Frames this guest alone owns (page tables, writable data, stack, heap, boot info).
    owned: Vec<u64>,
}

impl AddressSpace {
    pub fn new(frames: &mut FrameAllocator<'static>) -> Result<AddressSpace, SpaceError> {
        let pml4_phys = frames.allocate().ok_or(SpaceError::OutOfMemory)?;
        let pml4_ptr = phys_to_virt(pml4_phys).as_mut_ptr::<PageTable>();
        let kernel_ptr = phys_to_virt(kernel_pml4_phys()).as_ptr::<PageTable>();
        // The kernel PML4 is only read: its upper-half entries are shared so every address space
        // sees the same kernel. The new table is never used after `release` frees it.
        // SAFETY: the new PML4 is a fresh frame nobody else references: a unique reference.
        let pml4: &'static mut PageTable = unsafe {
            pml4_ptr.write(PageTable::new());
            let pml4 = &mut *pml4_ptr;
            let kernel = &*kernel_ptr;
            for index in 256..512 {
                pml4[index] = kernel[index].clone();
            }
            pml4
        };
        // SAFETY: all RAM is mapped at DIRECT_MAP_OFFSET.
        let table = unsafe { OffsetPageTable::new(pml4, VirtAddr::new(DIRECT_MAP_OFFSET)) };
        Ok(AddressSpace { pml4_phys, table, map: GuestMemoryMap::new(), owned: alloc::vec![pml4_phys] })
    }

    pub fn pml4_phys(&self) -> u64 {
        self.pml4_phys
    }

    /// Frames owned by this guest alone.
    pub fn owned_frames(&self) -> usize {
        self.owned.len()
    }

    /// A zeroed frame owned by this guest.
    pub fn new_frame(&mut self, frames: &mut FrameAllocator<'static>) -> Result<u64, SpaceError> {
        let phys = frames.allocate().ok_or(SpaceError::OutOfMemory)?;
        self.owned.push(phys);
        zero_frame(phys);
        Ok(phys)
    }

    /// A zeroed, physically contiguous run of `pages` frames owned by this guest; its base.
    pub fn new_run(&mut self, frames: &mut FrameAllocator<'static>, pages: u64) -> Result<u64, SpaceError> {
        let base = frames.allocate_contiguous(pages, 1).ok_or(SpaceError::OutOfMemory)?;
        // A run the allocator handed out: its pages do not wrap.
        for frame in (0..pages).map(|page| base.wrapping_add(page.wrapping_mul(PAGE))) {
            self.owned.push(frame);
            zero_frame(frame);
        }
        Ok(base)
    }

    /// Maps one user page. The frame's lifetime is the caller's business (owned or shared).
    pub fn map_page(
        &mut self,
        frames: &mut FrameAllocator<'static>,
        virt: u64,
        phys: u64,
        access: Access,
    ) -> Result<(), SpaceError> {
        let mut flags = Flags::PRESENT | Flags::USER_ACCESSIBLE;
        if access.write {
            flags |= Flags::WRITABLE;
        }
        if !access.execute {
            flags |= no_execute();
        }
        let parents = Flags::PRESENT | Flags::WRITABLE | Flags::USER_ACCESSIBLE;
        let page =
            Page::<Size4KiB>::from_start_address(VirtAddr::try_new(virt).map_err(|_| SpaceError::BadMapping(virt))?)
                .map_err(|_| SpaceError::BadMapping(virt))?;
        let frame = PhysFrame::containing_address(PhysAddr::new(phys));
        let mut source = RecordingFrames { frames, owned: &mut self.owned };
        // SAFETY: a user page of this (not yet running, or current and being extended) guest;
        // it aliases no kernel memory, and the frame is either owned by this guest or a
        // read-only shared frame.
        let flush = unsafe { self.table.map_to_with_table_flags(page, frame, flags, parents, &mut source) };
        match flush {
            Ok(flush) => {
                flush.ignore(); // the address space is not active while it is being built
                Ok(())
            }
            Err(x86_64::structures::paging::mapper::MapToError::FrameAllocationFailed) => Err(SpaceError::OutOfMemory),
            Err(_) => Err(SpaceError::BadMapping(virt)),
        }
    }

    /// Maps `pages` fresh zeroed pages at `start` and records the region.
    pub fn map_zeroed(
        &mut self,
        frames: &mut FrameAllocator<'static>,
        start: u64,
        pages: u64,
        access: Access,
    ) -> Result<(), SpaceError> {
        for i in 0..pages {
            let phys = self.new_frame(frames)?;
            // Kernel layout constants only (stack, heap): inside the user half, no wrap.
            self.map_page(frames, start.wrapping_add(i.wrapping_mul(PAGE)), phys, access)?;
        }
        if pages > 0 {
            self.map
                .add(start, start.wrapping_add(pages.wrapping_mul(PAGE)), access)
                .map_err(|_| SpaceError::BadMapping(start))?;
        }
        Ok(())
    }

    /// Physical address of the last-level page-table entry that maps `virt` (4 KiB pages only).
    /// The entry stays where it is for the guest's life (page tables are freed only with the
    /// address space), so callers may keep it to flip permission bits without a walk.
    pub fn leaf_pte_phys(&self, virt: u64) -> Option<u64> {
        let mut table_phys = self.pml4_phys;
        for level in (1u32..=4).rev() {
            // level is 1..=4: shifts of 12..=39, an index below 512, an entry inside its table.
            let index = (virt >> (12u32.wrapping_add(9u32.wrapping_mul(level.wrapping_sub(1))))) & 0x1ff;
            let entry_phys = table_phys.wrapping_add(index.wrapping_mul(8));
            if level == 1 {
                return Some(entry_phys);
            }
            // SAFETY: `table_phys` is a page table of this address space (the root, or a table a
            // present entry points to), in the direct map; reading one entry is harmless.
            let entry = unsafe { phys_to_virt(entry_phys).as_ptr::<u64>().read_volatile() };
            let present = entry & 1 != 0;
            let huge = entry & (1 << 7) != 0;
            if !present || huge {
                return None;
            }
            table_phys = entry & 0x000f_ffff_ffff_f000;
        }
        None
    }

    /// Points the user page at `virt` to `phys`, writable (the COW copy). The caller flushes.
    pub fn remap_writable(
        &mut self,
        frames: &mut FrameAllocator<'static>,
        virt: u64,
        phys: u64,
    ) -> Result<(), SpaceError> {
        let page = Page::<Size4KiB>::containing_address(VirtAddr::new(virt));
        let (_, flush) = self.table.unmap(page).map_err(|_| SpaceError::BadMapping(virt))?;
        flush.ignore();
        self.map_page(frames, virt, phys, Access::READ_WRITE)
    }

    /// Stops owning `phys` (it now belongs to someone who frees it later). False if not owned.
    pub fn disown(&mut self, phys: u64) -> bool {
        match self.owned.iter().position(|&f| f == phys) {
            Some(index) => {
                self.owned.swap_remove(index);
                true
            }
            None => false,
        }
    }

    /// Takes ownership of `phys` (freed with the address space).
    pub fn own(&mut self, phys: u64) {
        self.owned.push(phys);
    }

    /// Copies guest memory into `buf`. The slice was validated against this guest's map, so
    /// every page is mapped; each is translated through the guest's own page table.
    pub fn read(&self, slice: ValidSlice, buf: &mut [u8]) {
        let len = (slice.len() as usize).min(buf.len());
        let mut done = 0usize;
        // A validated slice lies inside the user half, so `addr` never wraps; `done < len`.
        while let Some(rest) = buf.get_mut(done..len) {
            if rest.is_empty() {
                break;
            }
            let addr = slice.addr().wrapping_add(done as u64);
            let in_page = (PAGE.wrapping_sub(addr & (PAGE - 1)) as usize).min(rest.len());
            let phys = match self.table.translate(VirtAddr::new(addr)) {
                TranslateResult::Mapped { frame, offset, .. } => frame.start_address().as_u64().wrapping_add(offset),
                _ => panic!("validated guest address {addr:#x} is not mapped: guest map and page table disagree"),
            };
            // SAFETY: `phys..phys + in_page` lies in one mapped guest frame (same page), which
            // the direct map covers; `rest` has room for `in_page` bytes.
            unsafe { core::ptr::copy_nonoverlapping(phys_to_virt(phys).as_ptr::<u8>(), rest.as_mut_ptr(), in_page) };
            done = done.saturating_add(in_page);
        }
    }

    /// Frees every frame this guest owns. The caller makes sure this address space is not the
    /// active one.
    pub fn release(self, frames: &mut FrameAllocator<'static>) {
        for phys in self.owned {
            if let Err(e) = frames.deallocate(phys) {
                log::error!("freeing guest frame {phys:#x}: {e:?}");
            }
        }
    }
}

/// Sets or clears the writable bit of the page-table entry at `pte_phys` (found with
/// [`AddressSpace::leaf_pte_phys`]): the O(1) way the COW path protects and restores tx slots.
/// No TLB flush: the caller decides.
pub fn set_pte_writable(pte_phys: u64, writable: bool) {
    const WRITABLE: u64 = 1 << 1;
    let pte = phys_to_virt(pte_phys).as_mut_ptr::<u64>();
    // SAFETY: `pte_phys` is the leaf entry of a user page of a live guest (the caller keeps it
    // only while the guest lives); only the writable bit changes, so the mapping stays valid.
    unsafe {
        let entry = pte.read_volatile();
        pte.write_volatile(if writable { entry | WRITABLE } else { entry & !WRITABLE });
    }
}

/// Makes `pml4_phys` the active address space if it is not already; true if CR3 was written
/// (which flushes every non-global TLB entry, i.e. all of the guests').
pub fn activate(pml4_phys: u64) -> bool {
    let switch = cpu::active_pml4() != pml4_phys;
    if switch {
        // SAFETY: every address space shares the kernel half with the kernel's own tables, so
        // the code, stack and data in use stay mapped across the switch.
        unsafe { cpu::load_pml4(pml4_phys) };
    }
    switch
}

/// Switches to the kernel's own tables (before a guest's tables are freed).
pub fn activate_kernel() {
    activate(kernel_pml4_phys());
}
