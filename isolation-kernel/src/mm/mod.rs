//! Memory: the direct map of physical memory, the frame allocator, the kernel's page tables
//! and its heap.

pub mod heap;
pub mod paging;
pub mod phys;
