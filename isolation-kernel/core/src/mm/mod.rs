//! Memory bookkeeping: the physical frame allocator.

pub mod frame_alloc;
