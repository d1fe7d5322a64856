//! The kernel heap: a linked-list allocator over one contiguous run of frames, for the few
//! structures whose size is known only at run time. Never used from interrupt handlers.

use super::phys::phys_to_virt;
use linked_list_allocator::LockedHeap;

#[global_allocator]
static HEAP: LockedHeap = LockedHeap::empty();

/// Gives the heap the physical range `[phys, phys + bytes)`.
pub fn init(phys: u64, bytes: usize) {
    // SAFETY: the range was just taken from the frame allocator, is mapped writable in the
    // direct map, and is handed to the heap exactly once.
    unsafe { HEAP.lock().init(phys_to_virt(phys).as_mut_ptr(), bytes) };
}

/// Heap bytes that growth on a guest's behalf (its frame list, FIFO, console line) may not
/// take: they stay for the kernel's own allocations (the `stats:` line, end-of-run reports),
/// which are not fallible. A guest's growth below this floor fails like a missing frame.
const GUEST_GROWTH_FLOOR: u64 = 128 * 1024;

/// Whether the heap has room for growth on a guest's behalf (see [`GUEST_GROWTH_FLOOR`]).
pub fn room_for_guest_growth() -> bool {
    usage().1 >= GUEST_GROWTH_FLOOR
}

/// `(used, free)` bytes.
pub fn usage() -> (u64, u64) {
    x86_64::instructions::interrupts::without_interrupts(|| {
        let heap = HEAP.lock();
        (heap.used() as u64, heap.free() as u64)
    })
}
