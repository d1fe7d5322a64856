//! The guest heap: `linked_list_allocator` over the range the kernel reserves for it.
//!
//! The kernel backs heap pages lazily, with zeroed frames, on first touch. A zeroed allocation
//! therefore clears only what the allocator handed out before (tracked as a high-water mark):
//! memory beyond it still reads as zero, and leaving it alone keeps its pages unbacked. A
//! smoltcp socket's 24 KiB buffer costs a page only once data reaches it.

use core::alloc::{GlobalAlloc, Layout};
use core::sync::atomic::{AtomicUsize, Ordering};
use hypercall_abi::layout::bytes_to_zero;
use linked_list_allocator::LockedHeap;

pub struct GuestHeap {
    heap: LockedHeap,
    /// One past the highest byte ever handed out (the heap's base until the first allocation).
    high_water: AtomicUsize,
}

impl GuestHeap {
    pub const fn empty() -> Self {
        GuestHeap { heap: LockedHeap::empty(), high_water: AtomicUsize::new(0) }
    }

    /// Hands the allocator `[base, base + size)`.
    ///
    /// # Safety
    /// The range must be this guest's heap, used by nothing else, and read as zero wherever it
    /// was not written (as the kernel's lazy backing guarantees); call once.
    pub unsafe fn init(&self, base: *mut u8, size: usize) {
        self.high_water.store(base as usize, Ordering::Relaxed);
        // SAFETY: per this function's contract.
        unsafe { self.heap.lock().init(base, size) };
    }

    fn note_handed_out(&self, ptr: *mut u8, layout: Layout) {
        let end = (ptr as usize).saturating_add(layout.size());
        self.high_water.fetch_max(end, Ordering::Relaxed);
    }
}

// SAFETY: allocation and freeing are `LockedHeap`'s; `alloc_zeroed` returns memory that reads
// as zero: the part below the high-water mark (and the allocator's scratch past it) is
// cleared, and the rest was never written by anyone since the kernel backed it with zeros.
unsafe impl GlobalAlloc for GuestHeap {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        // SAFETY: forwarded with the caller's guarantees.
        let ptr = unsafe { self.heap.alloc(layout) };
        if !ptr.is_null() {
            self.note_handed_out(ptr, layout);
        }
        ptr
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        let high_water = self.high_water.load(Ordering::Relaxed);
        // SAFETY: forwarded with the caller's guarantees.
        let ptr = unsafe { self.heap.alloc(layout) };
        if !ptr.is_null() {
            let dirty = bytes_to_zero(ptr as usize, layout.size(), high_water);
            // SAFETY: `dirty <= layout.size()`: inside the block just allocated.
            unsafe { ptr.write_bytes(0, dirty) };
            self.note_handed_out(ptr, layout);
        }
        ptr
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: forwarded with the caller's guarantees.
        unsafe { self.heap.dealloc(ptr, layout) }
    }
}
