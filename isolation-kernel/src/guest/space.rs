//! A guest's address space: its own PML4 whose upper half points at the kernel's tables, and a
//! lower half holding only what the loader maps (recorded in a [`GuestMemoryMap`], against
//! which every pointer the guest hands the kernel is validated before use).
//!
//! Stack and heap are *lazy* regions: recorded in the map (so pointers into them are valid)
//! but backed only when touched. The guest's first access to a page faults, and
//! [`AddressSpace::back_lazy_page`] maps a zeroed frame there; the kernel reading a page not
//! backed yet reads zeros. A guest pays for the pages it uses, not for the ones it may use.

use crate::arch::cpu;
use crate::mm::paging::{kernel_pml4_phys, no_execute};
use crate::mm::phys::{phys_to_virt, DIRECT_MAP_OFFSET};
use alloc::vec::Vec;
use hypercall_abi::layout::PAGE_SIZE as PAGE;
use kernel_core::guest::mem::{Access, GuestMemoryMap, Region, ValidSlice};
use kernel_core::mm::frame_alloc::FrameAllocator;
use x86_64::structures::paging::mapper::TranslateResult;
use x86_64::structures::paging::{
    FrameAllocator as PageTableFrameSource, Mapper, OffsetPageTable, Page, PageTable, PageTableFlags as Flags,
    PhysFrame, Size4KiB, Translate,
};
use x86_64::{PhysAddr, VirtAddr};

/// What a guest's private page holds: the breakdown of its memory in reports.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PageUse {
    PageTables,
    Stack,
    Heap,
    /// The shared page, tx slots and rx buffers.
    Vnic,
    /// Writable ELF segments and the boot-info page.
    Other,
}

impl PageUse {
    pub const ALL: [PageUse; 5] = [PageUse::PageTables, PageUse::Stack, PageUse::Heap, PageUse::Vnic, PageUse::Other];

    pub fn name(self) -> &'static str {
        match self {
            PageUse::PageTables => "page_tables",
            PageUse::Stack => "stack",
            PageUse::Heap => "heap",
            PageUse::Vnic => "vnic",
            PageUse::Other => "other",
        }
    }
}

/// A guest's private pages by use (frames it owns, as allocated; a COW copy replaces the frame
/// it copies, so it does not change the count).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PageCounts([u32; 5]);

impl PageCounts {
    pub fn get(&self, page_use: PageUse) -> u32 {
        self.0.get(page_use as usize).copied().unwrap_or(0)
    }

    fn add(&mut self, page_use: PageUse) {
        if let Some(count) = self.0.get_mut(page_use as usize) {
            *count = count.saturating_add(1);
        }
    }

    pub fn total(&self) -> u32 {
        self.0.iter().fold(0u32, |sum, &n| sum.saturating_add(n))
    }
}

/// Frames for a guest's page tables, each recorded so the guest's end can free them.
struct RecordingFrames<'a, 'b> {
    frames: &'a mut FrameAllocator<'b>,
    owned: &'a mut Vec<u64>,
    counts: &'a mut PageCounts,
}

// SAFETY: frames come from the frame allocator (unused RAM, handed out once) and are reachable
// through the direct map, which covers all RAM once the kernel's page tables are active.
unsafe impl PageTableFrameSource<Size4KiB> for RecordingFrames<'_, '_> {
    fn allocate_frame(&mut self) -> Option<PhysFrame<Size4KiB>> {
        // Room in the list first: a short kernel heap is "no frame", not a panic.
        if self.owned.len() == self.owned.capacity() && !crate::mm::heap::room_for_guest_growth() {
            return None;
        }
        self.owned.try_reserve(1).ok()?;
        let phys = self.frames.allocate()?;
        self.owned.push(phys);
        self.counts.add(PageUse::PageTables);
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
    counts: PageCounts,
    /// Regions backed on first touch (stack, heap), with their use.
    lazy: Vec<(Region, PageUse)>,
}

/// What [`AddressSpace::back_lazy_page`] did with a fault address.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LazyFault {
    /// A zeroed frame now backs the page: resume the guest.
    Backed,
    /// Not in a lazy region, already backed, or an access the region does not allow: the
    /// fault is the guest's.
    NotLazy,
    /// No frame left for the page.
    OutOfMemory,
}

impl AddressSpace {
    pub fn new(frames: &mut FrameAllocator<'static>) -> Result<AddressSpace, SpaceError> {
        let pml4_phys = frames.allocate().ok_or(SpaceError::OutOfMemory)?;
        let pml4_ptr = phys_to_virt(pml4_phys).as_mut_ptr::<PageTable>();
        let kernel_ptr = phys_to_virt(kernel_pml4_phys()).as_ptr::<PageTable>();
        // The kernel PML4 is only read: its upper-half entries are shared so every address space
        // sees the same kernel. The new table is never used after `release` frees it.
        // The lower half empty, the upper half a copy of the kernel's entries: two block writes
        // (one `rep stos`, one `rep movs`), not 512 entry writes.
        const HALF: usize = 256;
        // SAFETY: the new PML4 is a fresh frame nobody else references: a unique reference. A
        // page table is 512 u64 entries, so both halves lie inside each table; the kernel's is
        // another frame, so the copy does not overlap.
        let pml4: &'static mut PageTable = unsafe {
            let entries = pml4_ptr.cast::<u64>();
            core::ptr::write_bytes(entries, 0, HALF);
            core::ptr::copy_nonoverlapping(kernel_ptr.cast::<u64>().add(HALF), entries.add(HALF), HALF);
            &mut *pml4_ptr
        };
        // SAFETY: all RAM is mapped at DIRECT_MAP_OFFSET.
        let table = unsafe { OffsetPageTable::new(pml4, VirtAddr::new(DIRECT_MAP_OFFSET)) };
        let mut counts = PageCounts::default();
        counts.add(PageUse::PageTables);
        Ok(AddressSpace {
            pml4_phys,
            table,
            map: GuestMemoryMap::new(),
            owned: alloc::vec![pml4_phys],
            counts,
            lazy: Vec::new(),
        })
    }

    pub fn pml4_phys(&self) -> u64 {
        self.pml4_phys
    }

    /// Frames owned by this guest alone.
    pub fn owned_frames(&self) -> usize {
        self.owned.len()
    }

    /// This guest's private pages by use.
    pub fn page_counts(&self) -> PageCounts {
        self.counts
    }

    /// Kernel heap bytes this address space holds (its frame list and lazy regions).
    pub fn kernel_bytes(&self) -> usize {
        let entry = core::mem::size_of::<u64>();
        let lazy = core::mem::size_of::<(Region, PageUse)>();
        self.owned.capacity().saturating_mul(entry).saturating_add(self.lazy.capacity().saturating_mul(lazy))
    }

    /// Room for `count` more owned frames in the list, growing it only while the kernel heap
    /// has room for a guest's growth.
    fn reserve_owned(&mut self, count: usize) -> Result<(), SpaceError> {
        let spare = self.owned.capacity().saturating_sub(self.owned.len());
        if spare < count && !crate::mm::heap::room_for_guest_growth() {
            return Err(SpaceError::OutOfMemory);
        }
        self.owned.try_reserve(count).map_err(|_| SpaceError::OutOfMemory)
    }

    /// A zeroed frame owned by this guest.
    pub fn new_frame(&mut self, frames: &mut FrameAllocator<'static>, page_use: PageUse) -> Result<u64, SpaceError> {
        // Room in the frame list first (kernel heap), then the frame: either may be short.
        self.reserve_owned(1)?;
        let phys = frames.allocate().ok_or(SpaceError::OutOfMemory)?;
        self.owned.push(phys);
        self.counts.add(page_use);
        zero_frame(phys);
        Ok(phys)
    }

    /// A zeroed, physically contiguous run of `pages` frames owned by this guest; its base.
    pub fn new_run(
        &mut self,
        frames: &mut FrameAllocator<'static>,
        pages: u64,
        page_use: PageUse,
    ) -> Result<u64, SpaceError> {
        self.reserve_owned(usize::try_from(pages).map_err(|_| SpaceError::OutOfMemory)?)?;
        let base = frames.allocate_contiguous(pages, 1).ok_or(SpaceError::OutOfMemory)?;
        // A run the allocator handed out: its pages do not wrap.
        for frame in (0..pages).map(|page| base.wrapping_add(page.wrapping_mul(PAGE))) {
            self.owned.push(frame);
            self.counts.add(page_use);
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
        let mut source = RecordingFrames { frames, owned: &mut self.owned, counts: &mut self.counts };
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

    /// Records `pages` pages at `start` as the guest's, to be backed by zeroed frames when first
    /// touched ([`Self::back_lazy_page`]).
    pub fn reserve_lazy(
        &mut self,
        start: u64,
        pages: u64,
        access: Access,
        page_use: PageUse,
    ) -> Result<(), SpaceError> {
        if pages > 0 {
            // Kernel layout constants only (stack, heap): inside the user half, no wrap.
            let end = start.wrapping_add(pages.wrapping_mul(PAGE));
            self.map.add(start, end, access).map_err(|_| SpaceError::BadMapping(start))?;
            self.lazy.push((Region { start, end, access }, page_use));
        }
        Ok(())
    }

    /// Backs the page holding `addr` if it lies in a lazy region, is not backed yet, and the
    /// access (`write`, `execute`) is one the region allows. The address space must be the
    /// active one or not running: a page that was not present has no TLB entry to flush.
    pub fn back_lazy_page(
        &mut self,
        frames: &mut FrameAllocator<'static>,
        addr: u64,
        write: bool,
        execute: bool,
    ) -> LazyFault {
        // vNIC areas are backed a whole slot at a time, by the vNIC (`vnet::back_slot`).
        let found = self.lazy.iter().find(|(region, page_use)| region.contains(addr) && *page_use != PageUse::Vnic);
        let Some(&(region, page_use)) = found else {
            return LazyFault::NotLazy;
        };
        if (write && !region.access.write) || (execute && !region.access.execute) || self.is_backed(addr) {
            return LazyFault::NotLazy;
        }
        let page = addr & !(PAGE - 1);
        let Ok(phys) = self.new_frame(frames, page_use) else { return LazyFault::OutOfMemory };
        match self.map_page(frames, page, phys, region.access) {
            Ok(()) => LazyFault::Backed,
            // The frame stays owned (freed with the space); the guest is stopped.
            Err(_) => LazyFault::OutOfMemory,
        }
    }

    /// Whether a frame backs the page holding `addr`.
    fn is_backed(&self, addr: u64) -> bool {
        matches!(self.table.translate(VirtAddr::new_truncate(addr)), TranslateResult::Mapped { .. })
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
    /// every page is the guest's; each is translated through the guest's own page table, and a
    /// lazy page not backed yet reads as the zeros it would be backed with.
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
            match self.table.translate(VirtAddr::new(addr)) {
                TranslateResult::Mapped { frame, offset, .. } => {
                    let phys = frame.start_address().as_u64().wrapping_add(offset);
                    // SAFETY: `phys..phys + in_page` lies in one mapped guest frame (same page),
                    // which the direct map covers; `rest` has room for `in_page` bytes.
                    unsafe {
                        core::ptr::copy_nonoverlapping(phys_to_virt(phys).as_ptr::<u8>(), rest.as_mut_ptr(), in_page)
                    };
                }
                _ if self.lazy.iter().any(|(region, _)| region.contains(addr)) => {
                    rest.iter_mut().take(in_page).for_each(|byte| *byte = 0);
                }
                _ => panic!("validated guest address {addr:#x} is not mapped: guest map and page table disagree"),
            }
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
