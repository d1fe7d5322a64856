//! The fixed layout of every guest's address space (the lower half; the kernel owns the upper
//! half and guests cannot touch it). Guest programs are linked at [`IMAGE_BASE`] with the small
//! code model, so everything sits below 2 GiB.
//!
//! Laid out for few page tables: the boot info, the vNIC, the stack, the image and the start of
//! the heap (which follows the image at once, [`heap_base`]) share one 2 MiB range, so a small
//! guest needs a PML4, a PDPT, one directory and one last-level table: 4 pages. Stack, heap and the vNIC areas are backed lazily: a page costs a frame only once it
//! is touched.

/// The x86_64 base page size: the one page size of the kernel, its guests and the vNIC ABI.
pub const PAGE_SIZE: u64 = 4096;

/// The read-only boot-info page (see [`crate::boot_info`]).
pub const BOOT_INFO_ADDR: u64 = 0x0020_0000;
/// The vNIC shared page (rings and indices; see [`crate::vnic`]), read-write for the guest.
pub const VNIC_SHARED_ADDR: u64 = 0x0020_1000;
/// The vNIC transmit slots (room for `TX_SLOTS` jumbo slots).
pub const VNIC_TX_AREA_ADDR: u64 = 0x0020_2000;
/// The vNIC receive buffers (room for `RX_SLOTS` jumbo buffers).
pub const VNIC_RX_AREA_ADDR: u64 = 0x0026_2000;
/// Lowest address a guest ELF segment may occupy; guest programs are linked here (guest.ld).
pub const IMAGE_BASE: u64 = 0x0030_0000;
/// End of the region for ELF segments.
pub const IMAGE_LIMIT: u64 = 0x1000_0000;
/// Start of the guest heap: the first page after the image's last segment (which ends at
/// `image_end`), so a small image and the start of its heap share a last-level page table. Its
/// size comes from the image manifest; the boot info says both.
pub const fn heap_base(image_end: u64) -> u64 {
    let end = if image_end < IMAGE_BASE { IMAGE_BASE } else { image_end };
    end.next_multiple_of(PAGE_SIZE)
}
/// Largest heap a guest may ask for.
pub const MAX_HEAP_SIZE: u64 = 0x4000_0000;
/// Top of the guest stack (exclusive); the stack grows down from here. Above it and below it
/// (down to the receive area) nothing is mapped: an overflow faults.
pub const STACK_TOP: u64 = 0x002f_0000;
/// Size of the guest stack. The page below it is left unmapped as a guard.
pub const STACK_SIZE: u64 = 64 * 1024;
/// First address that is not guest memory: the end of the lower canonical half.
pub const USER_LIMIT: u64 = 0x0000_8000_0000_0000;

// Guests use the small code model: everything they address lies below 2 GiB.
const _: () = assert!(STACK_TOP < 1 << 31);

/// Bytes past an allocator's high-water mark that its own bookkeeping may have written (a
/// free-list header of 16 bytes, after rounding the last block up to 16 and aligning to 8).
pub const ALLOCATOR_SCRATCH: usize = 64;

/// How many bytes at the start of a fresh allocation `[start, start + len)` may hold old
/// data and must be zeroed for a zeroed allocation, given that nothing was ever handed out at
/// or beyond `high_water` (and only [`ALLOCATOR_SCRATCH`] bytes past it were ever written).
/// The kernel backs heap pages lazily with zeroed frames, so the rest already reads as zero:
/// not writing it keeps untouched pages unbacked (a guest pays only for what it uses).
pub fn bytes_to_zero(start: usize, len: usize, high_water: usize) -> usize {
    let dirty_end = high_water.saturating_add(ALLOCATOR_SCRATCH);
    dirty_end.saturating_sub(start).min(len)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn regions_are_ordered_aligned_and_below_2_gib() {
        use crate::vnic::{rx_buffer_addr_for, slot_size, MAX_MTU, RX_SLOTS};
        let bounds = [
            BOOT_INFO_ADDR,
            VNIC_SHARED_ADDR,
            VNIC_TX_AREA_ADDR,
            VNIC_RX_AREA_ADDR,
            rx_buffer_addr_for(RX_SLOTS, slot_size(MAX_MTU)),
            STACK_TOP - STACK_SIZE - PAGE_SIZE,
            STACK_TOP,
            IMAGE_BASE,
            heap_base(IMAGE_BASE),
            heap_base(IMAGE_LIMIT),
            heap_base(IMAGE_LIMIT) + MAX_HEAP_SIZE,
        ];
        assert!(heap_base(IMAGE_LIMIT) + MAX_HEAP_SIZE < 1 << 31, "the largest heap after the largest image");
        // One last-level page table (2 MiB) covers everything below the image and its first MiB.
        const TABLE_SPAN: u64 = 2 << 20;
        assert_eq!(BOOT_INFO_ADDR / TABLE_SPAN, IMAGE_BASE / TABLE_SPAN);
        assert_eq!(heap_base(IMAGE_BASE + 1), IMAGE_BASE + PAGE_SIZE);
        assert_eq!(heap_base(0), IMAGE_BASE);
        assert!(bounds.windows(2).all(|w| w[0] <= w[1]), "{bounds:x?}");
        assert!(bounds.iter().all(|b| b % PAGE_SIZE == 0));
    }

    #[test]
    fn zeroing_stops_where_nothing_was_ever_written() {
        // Wholly below the mark: everything.
        assert_eq!(bytes_to_zero(100, 50, 1000), 50);
        // Across the mark: up to the mark and the allocator's scratch.
        assert_eq!(bytes_to_zero(900, 4096, 1000), 100 + ALLOCATOR_SCRATCH);
        // Beyond the mark and its scratch: nothing.
        assert_eq!(bytes_to_zero(2000, 4096, 1000), 0);
        // Starting inside the scratch: its rest.
        assert_eq!(bytes_to_zero(1010, 4096, 1000), ALLOCATOR_SCRATCH - 10);
        // At the top of the address space: no overflow.
        assert_eq!(bytes_to_zero(usize::MAX - 10, 10, usize::MAX), 10);
    }
}
