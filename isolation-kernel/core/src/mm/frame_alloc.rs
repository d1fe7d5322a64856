//! Physical frame allocator: one bit per page-sized frame ([`PAGE_SIZE`]).
//!
//! The bitmap lives in memory the kernel carves out of usable RAM at boot (the caller passes it
//! in), so this module needs no heap. A set bit means "not available" (allocated, reserved, or
//! not RAM at all); everything starts unavailable and the boot code frees exactly the usable
//! ranges. Allocation returns the lowest free frame, which keeps early page tables inside the
//! boot mapping of low memory. Word-wise scanning keeps boot cheap: under PVM every ring-0
//! instruction is emulated, so a loop per frame would cost seconds.

// Not guest-facing: its inputs are the boot memory map and frame addresses the kernel itself
// took from it (never a guest's or an image's value), and its bitmap arithmetic is bounded by
// the frame count fixed at construction; the crate's lints for guest input do not apply here.
#![allow(clippy::indexing_slicing, clippy::arithmetic_side_effects)]

use hypercall_abi::layout::PAGE_SIZE;

const BITS: u64 = 64;

/// Number of `u64` words a bitmap for `frame_count` frames needs.
pub const fn bitmap_words(frame_count: u64) -> usize {
    frame_count.div_ceil(BITS) as usize
}

/// Why a frame could not be freed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FreeError {
    /// The address is not the start of a frame.
    Unaligned(u64),
    /// The frame lies beyond the memory the allocator manages.
    OutOfRange(u64),
    /// The frame is not allocated (double free, or never handed out).
    NotAllocated(u64),
}

/// The bitmap passed to [`FrameAllocator::new`] is too small for the frame count.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BitmapTooSmall {
    pub words_needed: usize,
}

pub struct FrameAllocator<'a> {
    /// Bit `f % 64` of word `f / 64` is set when frame `f` is unavailable.
    used: &'a mut [u64],
    frame_count: u64,
    free: u64,
    /// Frames ever made available (RAM the allocator manages, including allocated frames).
    managed: u64,
    /// No free frame lies in a word below this one; every allocation leaves it at the first
    /// word with a free frame, so the next one finds a frame without a scan.
    first_free_word: usize,
    /// Bitmap words and frames examined while looking for free frames (the allocator's work,
    /// for tests that show it does not grow with the frames handed out).
    probes: u64,
}

impl<'a> FrameAllocator<'a> {
    /// An allocator for frames `0..frame_count` with every frame unavailable.
    pub fn new(bitmap: &'a mut [u64], frame_count: u64) -> Result<Self, BitmapTooSmall> {
        let words_needed = bitmap_words(frame_count);
        let used = bitmap.get_mut(..words_needed).ok_or(BitmapTooSmall { words_needed })?;
        used.fill(u64::MAX);
        Ok(FrameAllocator { used, frame_count, free: 0, managed: 0, first_free_word: words_needed, probes: 0 })
    }

    pub fn free_frames(&self) -> u64 {
        self.free
    }

    /// Words and frames examined so far in looking for free frames.
    pub fn probes(&self) -> u64 {
        self.probes
    }

    /// Moves the hint past words that have no free frame left.
    fn skip_full_words(&mut self) {
        while self.first_free_word < self.used.len() && self.used[self.first_free_word] == u64::MAX {
            self.first_free_word += 1;
            self.probes += 1;
        }
    }

    pub fn managed_frames(&self) -> u64 {
        self.managed
    }

    pub fn frame_count(&self) -> u64 {
        self.frame_count
    }

    /// Frames `[first, end)` clamped to the managed range.
    fn frame_span(&self, start_phys: u64, end_phys: u64) -> (u64, u64) {
        let first = start_phys.div_ceil(PAGE_SIZE).min(self.frame_count);
        let end = (end_phys / PAGE_SIZE).min(self.frame_count);
        (first, end.max(first))
    }

    /// Applies `set_used` to every frame in `[first, end)` and returns how many changed state.
    fn set_span(&mut self, first: u64, end: u64, set_used: bool) -> u64 {
        let mut changed = 0;
        let mut frame = first;
        while frame < end {
            let word = (frame / BITS) as usize;
            let bit = frame % BITS;
            let count = (BITS - bit).min(end - frame);
            let mask = if count == BITS { u64::MAX } else { ((1u64 << count) - 1) << bit };
            let before = self.used[word];
            let after = if set_used { before | mask } else { before & !mask };
            changed += u64::from((before ^ after).count_ones());
            self.used[word] = after;
            frame += count;
        }
        changed
    }

    /// Makes the whole frames inside `[start_phys, end_phys)` available (boot-time setup).
    pub fn add_free_range(&mut self, start_phys: u64, end_phys: u64) {
        let (first, end) = self.frame_span(start_phys, end_phys);
        let freed = self.set_span(first, end, false);
        self.free += freed;
        self.managed += freed;
        if freed > 0 {
            self.first_free_word = self.first_free_word.min((first / BITS) as usize);
        }
    }

    /// Takes every frame touching `[start_phys, end_phys)` out of use for good (kernel image,
    /// boot structures). Frames already unavailable are left as they are.
    pub fn reserve_range(&mut self, start_phys: u64, end_phys: u64) {
        let first = (start_phys / PAGE_SIZE).min(self.frame_count);
        let end = end_phys.div_ceil(PAGE_SIZE).min(self.frame_count).max(first);
        let taken = self.set_span(first, end, true);
        self.free -= taken;
        self.managed -= taken;
    }

    /// The lowest free frame's physical address, now allocated.
    pub fn allocate(&mut self) -> Option<u64> {
        self.skip_full_words();
        let word_index = self.first_free_word;
        self.probes += 1;
        let word = *self.used.get(word_index)?;
        debug_assert_ne!(word, u64::MAX, "skip_full_words stops at a word with a free frame");
        let bit = u64::from((!word).trailing_zeros());
        let frame = word_index as u64 * BITS + bit;
        if frame >= self.frame_count {
            return None;
        }
        self.used[word_index] |= 1 << bit;
        self.free -= 1;
        Some(frame * PAGE_SIZE)
    }

    /// `count` physically contiguous free frames whose first frame number is a multiple of
    /// `align_frames`; returns the physical address of the first.
    pub fn allocate_contiguous(&mut self, count: u64, align_frames: u64) -> Option<u64> {
        if count == 0 || align_frames == 0 {
            return None;
        }
        self.skip_full_words();
        let mut start = (self.first_free_word as u64 * BITS).next_multiple_of(align_frames);
        while start.checked_add(count)? <= self.frame_count {
            // The first free frame at or after `start` in its word, or the next word.
            let word = (start / BITS) as usize;
            self.probes += 1;
            let free_here = !self.used[word] & (u64::MAX << (start % BITS));
            if free_here == 0 {
                start = ((word as u64 + 1) * BITS).next_multiple_of(align_frames);
                continue;
            }
            let first_free = word as u64 * BITS + u64::from(free_here.trailing_zeros());
            if first_free.next_multiple_of(align_frames) != start {
                start = first_free.next_multiple_of(align_frames);
                continue;
            }
            let blocker = (start..start + count).rev().find(|&f| self.is_used(f));
            self.probes += count.min(BITS);
            match blocker {
                None => {
                    self.set_span(start, start + count, true);
                    self.free -= count;
                    self.skip_full_words();
                    return Some(start * PAGE_SIZE);
                }
                Some(blocker) => start = (blocker + 1).next_multiple_of(align_frames),
            }
        }
        None
    }

    fn is_used(&self, frame: u64) -> bool {
        self.used[(frame / BITS) as usize] & (1 << (frame % BITS)) != 0
    }

    /// Returns an allocated frame.
    pub fn deallocate(&mut self, phys: u64) -> Result<(), FreeError> {
        if !phys.is_multiple_of(PAGE_SIZE) {
            return Err(FreeError::Unaligned(phys));
        }
        let frame = phys / PAGE_SIZE;
        if frame >= self.frame_count {
            return Err(FreeError::OutOfRange(phys));
        }
        if !self.is_used(frame) || self.free >= self.managed {
            return Err(FreeError::NotAllocated(phys));
        }
        self.used[(frame / BITS) as usize] &= !(1 << (frame % BITS));
        self.free += 1;
        self.first_free_word = self.first_free_word.min((frame / BITS) as usize);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIB: u64 = 1 << 20;

    #[test]
    fn starts_empty_and_hands_out_only_freed_ranges_lowest_first() {
        let mut bits = vec![0u64; bitmap_words(1024)];
        let mut alloc = FrameAllocator::new(&mut bits, 1024).unwrap();
        assert_eq!(alloc.allocate(), None);
        alloc.add_free_range(MIB + 0x800, 2 * MIB); // partial first frame is not usable
        assert_eq!(alloc.free_frames(), 255);
        assert_eq!(alloc.allocate(), Some(MIB + PAGE_SIZE));
        assert_eq!(alloc.allocate(), Some(MIB + 2 * PAGE_SIZE));
        assert_eq!(alloc.free_frames(), 253);
        assert_eq!(alloc.managed_frames(), 255);
    }

    #[test]
    fn reserved_frames_are_never_handed_out() {
        let mut bits = vec![0u64; bitmap_words(512)];
        let mut alloc = FrameAllocator::new(&mut bits, 512).unwrap();
        alloc.add_free_range(0, 512 * PAGE_SIZE);
        alloc.reserve_range(0x1800, 0x3001); // touches frames 1, 2 and 3
        assert_eq!(alloc.free_frames(), 509);
        let mut seen = Vec::new();
        while let Some(frame) = alloc.allocate() {
            seen.push(frame);
        }
        assert_eq!(seen.len(), 509);
        assert!(!seen.contains(&0x1000) && !seen.contains(&0x2000) && !seen.contains(&0x3000));
        assert_eq!(alloc.free_frames(), 0);
    }

    #[test]
    fn free_detects_double_free_bad_alignment_and_range() {
        let mut bits = vec![0u64; bitmap_words(100)];
        let mut alloc = FrameAllocator::new(&mut bits, 100).unwrap();
        alloc.add_free_range(0, 100 * PAGE_SIZE);
        alloc.reserve_range(0, PAGE_SIZE);
        let frame = alloc.allocate().unwrap();
        assert_eq!(alloc.deallocate(frame + 8), Err(FreeError::Unaligned(frame + 8)));
        assert_eq!(alloc.deallocate(100 * PAGE_SIZE), Err(FreeError::OutOfRange(100 * PAGE_SIZE)));
        assert_eq!(alloc.deallocate(frame), Ok(()));
        assert_eq!(alloc.deallocate(frame), Err(FreeError::NotAllocated(frame)));
        assert_eq!(alloc.free_frames(), 99);
        // A freed frame is reused first.
        assert_eq!(alloc.allocate(), Some(frame));
    }

    #[test]
    fn frames_beyond_the_count_are_never_returned() {
        // 70 frames: the second bitmap word has only 6 real frames in it.
        let mut bits = vec![0u64; bitmap_words(70)];
        let mut alloc = FrameAllocator::new(&mut bits, 70).unwrap();
        alloc.add_free_range(0, 1 << 40);
        assert_eq!(alloc.free_frames(), 70);
        for _ in 0..70 {
            assert!(alloc.allocate().unwrap() < 70 * PAGE_SIZE);
        }
        assert_eq!(alloc.allocate(), None);
    }

    #[test]
    fn contiguous_allocation_respects_holes_and_alignment() {
        let mut bits = vec![0u64; bitmap_words(4096)];
        let mut alloc = FrameAllocator::new(&mut bits, 4096).unwrap();
        alloc.add_free_range(0, 4096 * PAGE_SIZE);
        alloc.reserve_range(10 * PAGE_SIZE, 11 * PAGE_SIZE);
        let run = alloc.allocate_contiguous(16, 1).unwrap();
        assert_eq!(run, 11 * PAGE_SIZE, "skips the hole at frame 10");
        let aligned = alloc.allocate_contiguous(512, 512).unwrap();
        assert_eq!(aligned % (512 * PAGE_SIZE), 0);
        assert_eq!(alloc.free_frames(), 4096 - 1 - 16 - 512);
        assert_eq!(alloc.allocate_contiguous(5000, 1), None);
        assert_eq!(alloc.allocate(), Some(0), "single frames still come from the bottom");
    }

    #[test]
    fn bitmap_too_small_is_reported() {
        let mut bits = vec![0u64; 1];
        assert_eq!(FrameAllocator::new(&mut bits, 65).err(), Some(BitmapTooSmall { words_needed: 2 }));
    }

    #[test]
    fn single_frame_runs_and_frames_cost_the_same_however_many_were_handed_out() {
        // Guests' lazily backed slots take one-frame runs, their pages single frames, mixed:
        // the work per allocation must not grow with the frames allocated before it.
        let frames = 200_000;
        let mut bits = vec![0u64; bitmap_words(frames)];
        let mut alloc = FrameAllocator::new(&mut bits, frames).unwrap();
        alloc.add_free_range(0, frames * PAGE_SIZE);
        let mut worst = 0;
        for n in 0..frames - 10 {
            let before = alloc.probes();
            let frame = if n % 3 == 0 { alloc.allocate_contiguous(1, 1) } else { alloc.allocate() };
            assert_eq!(frame, Some(n * PAGE_SIZE), "lowest first");
            worst = worst.max(alloc.probes() - before);
        }
        assert!(worst <= 4, "an allocation examined {worst} words or frames");
        // A freed frame low down is found at once, and then the hint moves on again.
        alloc.deallocate(5 * PAGE_SIZE).unwrap();
        assert_eq!(alloc.allocate_contiguous(1, 1), Some(5 * PAGE_SIZE));
        let before = alloc.probes();
        assert_eq!(alloc.allocate(), Some((frames - 10) * PAGE_SIZE));
        assert!(alloc.probes() - before <= 4, "{} probes after a freed frame was reused", alloc.probes() - before);
    }
}
