//! The kernel heap: one contiguous run of frames, for the structures whose size is known only at
//! run time (per-guest records among them). Never used from interrupt handlers.
//!
//! The allocator is `talc`: free blocks sit in size-class bins found through a bitmap, so an
//! allocation or a free costs the same with 10,000 guests' blocks live as with one. The
//! linked-list allocator used before walked its list of holes on both (first fit, and an
//! address-ordered insert): with 10,000 guests it took 84% of every instruction the machine ran
//! while they started.
//!
//! Growth on a guest's behalf is fallible and stops at a floor ([`room_for_guest_growth`]); the
//! kernel's own allocations (the `stats:` line, end-of-run reports) are not. A byte count alone
//! does not protect them: thousands of guests' small blocks, grown and freed, can leave the free
//! bytes in holes too small for anything. So the heap also keeps a contiguous reserve block,
//! given back the first time an allocation fails and the allocation retried; from then on no
//! guest grows the heap any more.

use super::phys::phys_to_virt;
use core::alloc::{GlobalAlloc, Layout};
use core::ptr::NonNull;
use core::sync::atomic::{AtomicBool, Ordering};
use talc::{ErrOnOom, Span, Talc, Talck};

type LockedHeap = Talck<spin::Mutex<()>, ErrOnOom>;

#[global_allocator]
static HEAP: KernelHeap = KernelHeap { heap: Talc::new(ErrOnOom).lock(), reserve: spin::Mutex::new(None) };

/// Bytes of the reserve block.
const RESERVE_BYTES: usize = 64 * 1024;

/// Set once the reserve was spent: the heap ran out for real.
static RESERVE_SPENT: AtomicBool = AtomicBool::new(false);

struct KernelHeap {
    heap: LockedHeap,
    /// The reserve block (taken from the heap at `init`), until spent.
    reserve: spin::Mutex<Option<NonNull<u8>>>,
}

// SAFETY: the reserve pointer is only ever handed back to the heap it came from, under its lock.
unsafe impl Sync for KernelHeap {}

const RESERVE_LAYOUT: Layout = match Layout::from_size_align(RESERVE_BYTES, 16) {
    Ok(layout) => layout,
    Err(_) => panic!("a valid layout"),
};

impl KernelHeap {
    /// Gives the reserve back to the heap, once: whether there was one to give.
    fn spend_reserve(&self) -> bool {
        let Some(reserve) = self.reserve.lock().take() else { return false };
        RESERVE_SPENT.store(true, Ordering::Relaxed);
        // SAFETY: the reserve came from this heap with RESERVE_LAYOUT and, taken out of its
        // Option, is freed once.
        unsafe { self.heap.dealloc(reserve.as_ptr(), RESERVE_LAYOUT) };
        true
    }
}

// SAFETY: every call is forwarded to the locked heap; the reserve block is a live allocation of
// that heap with `RESERVE_LAYOUT`, freed at most once (`spend_reserve`).
unsafe impl GlobalAlloc for KernelHeap {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        // SAFETY: forwarded with the caller's guarantees.
        let ptr = unsafe { self.heap.alloc(layout) };
        if !ptr.is_null() || !self.spend_reserve() {
            return ptr;
        }
        // SAFETY: as above.
        unsafe { self.heap.alloc(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: forwarded with the caller's guarantees.
        unsafe { self.heap.dealloc(ptr, layout) }
    }

    /// Forwarded, so that a vector grows in place where the block above it is free.
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        // SAFETY: forwarded with the caller's guarantees.
        let moved = unsafe { self.heap.realloc(ptr, layout, new_size) };
        if !moved.is_null() || !self.spend_reserve() {
            return moved;
        }
        // SAFETY: as above (a failed realloc leaves the block where it was).
        unsafe { self.heap.realloc(ptr, layout, new_size) }
    }
}

/// Gives the heap the physical range `[phys, phys + bytes)` and sets the reserve aside.
pub fn init(phys: u64, bytes: usize) {
    // SAFETY: the range was just taken from the frame allocator, is mapped writable in the
    // direct map, and is handed to the heap exactly once.
    let claimed = unsafe { HEAP.heap.lock().claim(Span::from_base_size(phys_to_virt(phys).as_mut_ptr(), bytes)) };
    assert!(claimed.is_ok(), "the heap's {bytes} bytes are enough for its own metadata");
    // SAFETY: a valid, non-zero layout; the block is kept until spent (see `alloc`).
    let reserve = unsafe { HEAP.heap.alloc(RESERVE_LAYOUT) };
    *HEAP.reserve.lock() = NonNull::new(reserve);
}

/// Heap bytes that growth on a guest's behalf (its frame list, FIFO, console line) may not
/// take: they stay for the kernel's own allocations (the `stats:` line, end-of-run reports),
/// which are not fallible. A guest's growth below this floor fails like a missing frame.
const GUEST_GROWTH_FLOOR: u64 = 128 * 1024;

/// Whether the heap has room for growth on a guest's behalf (see [`GUEST_GROWTH_FLOOR`]); never
/// once the reserve was spent.
pub fn room_for_guest_growth() -> bool {
    !RESERVE_SPENT.load(Ordering::Relaxed) && usage().1 >= GUEST_GROWTH_FLOOR
}

/// Whether the heap once ran out and its reserve was spent (for the `stats:` line).
pub fn reserve_spent() -> bool {
    RESERVE_SPENT.load(Ordering::Relaxed)
}

/// `(used, free)` bytes (the reserve counts as used until spent).
pub fn usage() -> (u64, u64) {
    x86_64::instructions::interrupts::without_interrupts(|| {
        let heap = HEAP.heap.lock();
        let counters = heap.get_counters();
        (counters.allocated_bytes as u64, counters.available_bytes as u64)
    })
}
