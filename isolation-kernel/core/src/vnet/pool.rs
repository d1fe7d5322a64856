//! Bookkeeping for a fixed pool of packet buffers. The kernel owns the memory (say, an array of
//! 2 KiB buffers carved out at boot); this only says which buffers are free, so a packet on the
//! transmit path costs an O(1) pop and push and never a heap allocation.

use alloc::vec;
use alloc::vec::Vec;
use core::fmt;

/// Index of a buffer in the pool (`0..capacity`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct BufId(pub u32);

/// A release the pool refused; it means a bookkeeping bug in the caller, so the kernel reports it
/// rather than corrupting the free list.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PoolError {
    /// The buffer is free already (double release).
    NotAllocated(BufId),
    /// No such buffer in this pool.
    OutOfRange(BufId),
}

impl fmt::Display for PoolError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::NotAllocated(BufId(id)) => write!(f, "buffer {id} released but not allocated"),
            Self::OutOfRange(BufId(id)) => write!(f, "buffer {id} is not in the pool"),
        }
    }
}

/// A free list (a stack, so the most recently released, cache-warm buffer is reused first) and
/// an in-use flag per buffer to catch double and bogus releases.
#[derive(Debug)]
pub struct PacketPool {
    free: Vec<u32>,
    in_use: Vec<bool>,
}

impl PacketPool {
    /// A pool of `count` buffers, all free. The free list gets its full capacity now, so later
    /// releases never reallocate.
    pub fn new(count: u32) -> Self {
        let mut free = Vec::with_capacity(count as usize);
        // Reversed, so that the first allocations hand out 0, 1, 2, ...
        free.extend((0..count).rev());
        Self { free, in_use: vec![false; count as usize] }
    }

    /// A free buffer, or `None` when all are in use.
    pub fn alloc(&mut self) -> Option<BufId> {
        let id = self.free.pop()?;
        if let Some(flag) = self.in_use.get_mut(id as usize) {
            *flag = true;
        }
        Some(BufId(id))
    }

    /// Returns a buffer to the pool.
    pub fn release(&mut self, id: BufId) -> Result<(), PoolError> {
        let flag = self.in_use.get_mut(id.0 as usize).ok_or(PoolError::OutOfRange(id))?;
        if !*flag {
            return Err(PoolError::NotAllocated(id));
        }
        *flag = false;
        // Cannot outgrow the capacity reserved in `new`: each buffer is on the list at most once.
        self.free.push(id.0);
        Ok(())
    }

    /// Whether `id` is currently allocated.
    pub fn is_allocated(&self, id: BufId) -> bool {
        self.in_use.get(id.0 as usize).copied().unwrap_or(false)
    }

    /// Free buffers.
    pub fn available(&self) -> usize {
        self.free.len()
    }

    /// All buffers, free or not.
    pub fn capacity(&self) -> usize {
        self.in_use.len()
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing, clippy::arithmetic_side_effects)]
mod tests {
    use super::*;
    use alloc::string::ToString;

    #[test]
    fn exhaust_and_refill() {
        let mut pool = PacketPool::new(8);
        assert_eq!((pool.available(), pool.capacity()), (8, 8));
        let ids: Vec<BufId> = core::iter::from_fn(|| pool.alloc()).collect();
        assert_eq!(ids, (0..8).map(BufId).collect::<Vec<_>>());
        assert_eq!(pool.available(), 0);
        assert_eq!(pool.alloc(), None);
        assert!(ids.iter().all(|&id| pool.is_allocated(id)));
        let reserved = pool.free.capacity();
        for &id in &ids {
            assert_eq!(pool.release(id), Ok(()));
        }
        assert_eq!(pool.available(), 8);
        assert_eq!(pool.free.capacity(), reserved, "release must not reallocate");
        assert!(ids.iter().all(|&id| !pool.is_allocated(id)));
        // Everything comes back, each buffer exactly once.
        let mut again: Vec<u32> = core::iter::from_fn(|| pool.alloc()).map(|b| b.0).collect();
        again.sort_unstable();
        assert_eq!(again, (0..8).collect::<Vec<_>>());
    }

    #[test]
    fn double_release_is_refused_and_harmless() {
        let mut pool = PacketPool::new(4);
        let a = pool.alloc().unwrap();
        let b = pool.alloc().unwrap();
        assert_eq!(pool.release(a), Ok(()));
        assert_eq!(pool.release(a), Err(PoolError::NotAllocated(a)));
        assert_eq!(pool.available(), 3);
        // Never-allocated buffers cannot be released either.
        assert_eq!(pool.release(BufId(3)), Err(PoolError::NotAllocated(BufId(3))));
        // The free list holds no duplicates: four allocations give four distinct buffers.
        assert_eq!(pool.release(b), Ok(()));
        let mut ids: Vec<u32> = core::iter::from_fn(|| pool.alloc()).map(|b| b.0).collect();
        ids.sort_unstable();
        assert_eq!(ids, [0, 1, 2, 3]);
    }

    #[test]
    fn out_of_range_is_refused() {
        let mut pool = PacketPool::new(4);
        assert_eq!(pool.release(BufId(4)), Err(PoolError::OutOfRange(BufId(4))));
        assert_eq!(pool.release(BufId(u32::MAX)), Err(PoolError::OutOfRange(BufId(u32::MAX))));
        assert!(!pool.is_allocated(BufId(u32::MAX)));
        assert_eq!(pool.available(), 4);
        assert_eq!(PoolError::OutOfRange(BufId(9)).to_string(), "buffer 9 is not in the pool");
        assert!(PoolError::NotAllocated(BufId(2)).to_string().contains("buffer 2"));
    }

    #[test]
    fn most_recently_released_is_reused_first() {
        let mut pool = PacketPool::new(4);
        let a = pool.alloc().unwrap();
        let b = pool.alloc().unwrap();
        pool.release(a).unwrap();
        pool.release(b).unwrap();
        assert_eq!(pool.alloc(), Some(b));
        assert_eq!(pool.alloc(), Some(a));
    }

    #[test]
    fn empty_pool() {
        let mut pool = PacketPool::new(0);
        assert_eq!((pool.available(), pool.capacity()), (0, 0));
        assert_eq!(pool.alloc(), None);
        assert_eq!(pool.release(BufId(0)), Err(PoolError::OutOfRange(BufId(0))));
    }
}
