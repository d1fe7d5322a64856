//! The kernel heap, for the structures whose size is known only at run time (per-guest records
//! among them). Never used from interrupt handlers.
//!
//! It starts as one contiguous run of frames and grows by taking more runs from the frame
//! allocator: ahead of need ([`top_up`], called where the frame allocator is not held), and when
//! an allocation finds no room (the out-of-memory handler, which gives up if the frame allocator
//! is held by the code that allocates). So the kernel's share of RAM follows what the guests
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
/// needs more).
const GROWTH_BYTES: u64 = 1 << 20;
/// [`top_up`] grows the heap when fewer bytes than this are free: above the floor kept from
/// guests' growth and the room a new guest's creation asks for, so neither waits for an
/// allocation to fail first.
const LOW_WATER_BYTES: u64 = 512 * 1024;
/// Frames the heap took from the frame allocator after boot (they stay the heap's).
static GROWN_FRAMES: AtomicU64 = AtomicU64::new(0);

/// The heap's out-of-memory handler: takes a run of frames big enough for the allocation that
/// failed and gives it to the heap.
struct GrowFromFrames;

impl OomHandler for GrowFromFrames {
    fn handle_oom(talc: &mut Talc<Self>, layout: Layout) -> Result<(), ()> {
        // Room for the block, its alignment and the heap's per-run bookkeeping.
        let needed = (layout.size() as u64).saturating_add(layout.align() as u64).saturating_add(PAGE_SIZE);
        grow(talc, needed.max(GROWTH_BYTES), needed).then_some(()).ok_or(())
    }
}

/// Gives `talc` a run of frames of `wanted` bytes, or of at least `needed` if no run that long is
/// free; whether it got one. Fails, rather than waits, while the frame allocator is held: the
/// code holding it is the code that allocated.
fn grow(talc: &mut Talc<GrowFromFrames>, wanted: u64, needed: u64) -> bool {
    let run = x86_64::instructions::interrupts::without_interrupts(|| {
        let mut frames = FRAMES.try_lock()?;
        let frames = frames.as_mut()?;
        [wanted, needed].into_iter().find_map(|bytes| {
            let count = bytes.div_ceil(PAGE_SIZE);
            frames.allocate_contiguous(count, 1).map(|phys| (phys, count))
        })
    });
    let Some((phys, count)) = run else { return false };
    let bytes = count.saturating_mul(PAGE_SIZE) as usize;
    // SAFETY: the run was just taken from the frame allocator, so nothing else uses it; the
    // direct map covers it, writable; it is handed to the heap once and never returned.
    let claimed = unsafe { talc.claim(Span::from_base_size(phys_to_virt(phys).as_mut_ptr(), bytes)) };
    if claimed.is_err() {
        // Too small to hold even the heap's bookkeeping: cannot happen for whole frames, and
        // would leak only this run.
        return false;
    }
    GROWN_FRAMES.fetch_add(count, Ordering::Relaxed);
    true
}

/// Grows the heap if fewer than [`LOW_WATER_BYTES`] are free. Where the frame allocator is held
/// it cannot: so it is also called where it is not (between guests' creations, before switching
/// guests).
pub fn top_up() {
    x86_64::instructions::interrupts::without_interrupts(|| {
        let mut heap = HEAP.heap.lock();
        if (heap.get_counters().available_bytes as u64) < LOW_WATER_BYTES {
            grow(&mut heap, GROWTH_BYTES, GROWTH_BYTES);
        }
    });
}

/// Frames the heap took from the frame allocator after boot.
pub fn grown_frames() -> u64 {
    GROWN_FRAMES.load(Ordering::Relaxed)
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

/// Whether the heap has room for growth on a guest's behalf (see [`GUEST_GROWTH_FLOOR`]), growing
/// it first if it can; never once the reserve was spent.
pub fn room_for_guest_growth() -> bool {
    if RESERVE_SPENT.load(Ordering::Relaxed) {
        return false;
    }
    if usage().1 < GUEST_GROWTH_FLOOR {
        top_up();
    }
    usage().1 >= GUEST_GROWTH_FLOOR
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
