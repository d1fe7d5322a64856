//! The kernel heap, for the structures whose size is known only at run time (per-guest records
//! among them). Never used from interrupt handlers.
//!
//! It starts as one contiguous run of frames and grows by taking more runs from the frame
//! allocator when an allocation finds no room (the out-of-memory handler; from a stash of frames
//! set aside, when the code that allocates holds the frame allocator). So the kernel's share of RAM follows what the guests
//! need of it (about 4.7 KiB each) instead of a fixed fraction set at boot, which at 1/32 of RAM
//! cost 150 KiB of RAM per guest and was the next wall after 10,000 guests.
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

use super::phys::{phys_to_virt, FRAMES};
use core::alloc::{GlobalAlloc, Layout};
use core::ptr::NonNull;
use core::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use hypercall_abi::layout::PAGE_SIZE;
use talc::{OomHandler, Span, Talc, Talck};

type LockedHeap = Talck<spin::Mutex<()>, GrowFromFrames>;

#[global_allocator]
static HEAP: KernelHeap = KernelHeap { heap: Talc::new(GrowFromFrames).lock(), reserve: spin::Mutex::new(None) };

/// Bytes the heap takes from the frame allocator each time it grows (more when one allocation
/// needs more), and the size of the stash (below).
const GROWTH_BYTES: u64 = 1 << 20;
/// Frames the heap took from the frame allocator after boot (they stay the heap's).
static GROWN_FRAMES: AtomicU64 = AtomicU64::new(0);
/// Times the heap could not grow: no run of frames long enough, or the frame allocator held by
/// the code that allocated and the stash spent.
static GROWTH_FAILED: AtomicU64 = AtomicU64::new(0);

/// A run of frames set aside for growing the heap while the frame allocator is held: the code
/// that holds it (backing a guest's page, building a guest) allocates too, and free bytes are no
/// guarantee of room: thousands of guests' small blocks leave holes too small for the next one
/// (10,000 guests starting once found no 128-byte block among 600 KB free). `(first frame's
/// physical address, frames)`; refilled by [`top_up`].
static STASH: spin::Mutex<Option<(u64, u64)>> = spin::Mutex::new(None);

/// The heap's out-of-memory handler: takes a run of frames big enough for the allocation that
/// failed (from the frame allocator, else the stash) and gives it to the heap.
struct GrowFromFrames;

impl OomHandler for GrowFromFrames {
    fn handle_oom(talc: &mut Talc<Self>, layout: Layout) -> Result<(), ()> {
        // Room for the block, its alignment and the heap's per-run bookkeeping.
        let needed = (layout.size() as u64).saturating_add(layout.align() as u64).saturating_add(PAGE_SIZE);
        let Some((phys, count)) = take_run(needed.max(GROWTH_BYTES), needed) else {
            GROWTH_FAILED.fetch_add(1, Ordering::Relaxed);
            return Err(());
        };
        let bytes = count.saturating_mul(PAGE_SIZE) as usize;
        // SAFETY: the run was taken from the frame allocator (now or into the stash), so nothing
        // else uses it; the direct map covers it, writable; it is handed to the heap once and
        // never returned.
        let claimed = unsafe { talc.claim(Span::from_base_size(phys_to_virt(phys).as_mut_ptr(), bytes)) };
        // (A run of whole frames always holds the heap's per-run bookkeeping.)
        claimed.map(|_| {
            GROWN_FRAMES.fetch_add(count, Ordering::Relaxed);
        })
    }
}

/// A run of frames of `wanted` bytes, or of at least `needed` if no run that long is free:
/// from the frame allocator, or from the stash while the frame allocator is held.
fn take_run(wanted: u64, needed: u64) -> Option<(u64, u64)> {
    x86_64::instructions::interrupts::without_interrupts(|| match FRAMES.try_lock() {
        Some(mut frames) => {
            let frames = frames.as_mut()?;
            [wanted, needed].into_iter().find_map(|bytes| {
                let count = bytes.div_ceil(PAGE_SIZE);
                frames.allocate_contiguous(count, 1).map(|phys| (phys, count))
            })
        }
        None => {
            let mut stash = STASH.lock();
            let fits = stash.is_some_and(|(_, count)| count.saturating_mul(PAGE_SIZE) >= needed);
            if fits {
                stash.take()
            } else {
                None
            }
        }
    })
}

/// Refills the heap's stash if it was spent. Call where the frame allocator is not held (where it
/// is, this does nothing): between guests' creations, before switching guests.
pub fn top_up() {
    x86_64::instructions::interrupts::without_interrupts(|| {
        let mut stash = STASH.lock();
        if stash.is_some() {
            return;
        }
        let Some(mut frames) = FRAMES.try_lock() else { return };
        let count = GROWTH_BYTES / PAGE_SIZE;
        *stash = frames.as_mut().and_then(|frames| frames.allocate_contiguous(count, 1)).map(|phys| (phys, count));
    });
}

/// Times the heap could not grow (see [`GROWTH_FAILED`]).
pub fn growth_failed() -> u64 {
    GROWTH_FAILED.load(Ordering::Relaxed)
}

/// Frames set aside in the heap's stash (for the `stats:` accounting of frames).
pub fn stashed_frames() -> u64 {
    x86_64::instructions::interrupts::without_interrupts(|| STASH.lock().map_or(0, |(_, count)| count))
}

/// Frames the heap took from the frame allocator after boot (given to it, or in its stash).
pub fn grown_frames() -> u64 {
    GROWN_FRAMES.load(Ordering::Relaxed).saturating_add(stashed_frames())
}

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

/// Whether the heap has room for growth on a guest's behalf (see [`has_room`]).
pub fn room_for_guest_growth() -> bool {
    has_room(GUEST_GROWTH_FLOOR)
}

/// Whether the heap has `bytes` free or frames set aside to grow by (refilling the stash first
/// where it can); never once the reserve was spent.
pub fn has_room(bytes: u64) -> bool {
    if RESERVE_SPENT.load(Ordering::Relaxed) {
        return false;
    }
    if usage().1 >= bytes {
        return true;
    }
    top_up();
    stashed_frames() > 0
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
