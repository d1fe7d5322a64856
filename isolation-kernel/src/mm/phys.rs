//! Physical memory through the direct map, and the global frame allocator.

use crate::arch::boot::BOOT_DIRECT_MAP_BYTES;
use kernel_core::boot::pvh::{PhysRead, Unreadable};
use kernel_core::mm::frame_alloc::FrameAllocator;
use x86_64::VirtAddr;

/// Virtual address at which all physical memory is mapped (kernel only, no execute).
pub const DIRECT_MAP_OFFSET: u64 = 0xffff_8000_0000_0000;

/// The kernel virtual address of physical address `phys` in the direct map.
pub fn phys_to_virt(phys: u64) -> VirtAddr {
    VirtAddr::new(DIRECT_MAP_OFFSET + phys)
}

/// Reads physical memory through the boot page tables, which map the first GiB at the
/// direct-map offset. Anything beyond that is refused rather than faulted on.
pub struct BootPhysReader;

impl PhysRead for BootPhysReader {
    fn read(&self, phys: u64, buf: &mut [u8]) -> Result<(), Unreadable> {
        let end = phys.checked_add(buf.len() as u64).ok_or(Unreadable)?;
        if end > BOOT_DIRECT_MAP_BYTES {
            return Err(Unreadable);
        }
        let src = phys_to_virt(phys).as_ptr::<u8>();
        // SAFETY: `[phys, end)` lies in the first GiB, which the boot tables map at the
        // direct-map offset; `buf` is a distinct kernel buffer of exactly `buf.len()` bytes.
        unsafe { core::ptr::copy_nonoverlapping(src, buf.as_mut_ptr(), buf.len()) };
        Ok(())
    }
}

/// The frame allocator, set up once at boot. Locked with interrupts off: it is never used from
/// interrupt context, but this keeps that true by construction.
pub static FRAMES: spin::Mutex<Option<FrameAllocator<'static>>> = spin::Mutex::new(None);

/// Runs `f` with the frame allocator.
pub fn with_frames<R>(f: impl FnOnce(&mut FrameAllocator<'static>) -> R) -> R {
    x86_64::instructions::interrupts::without_interrupts(|| {
        let mut guard = FRAMES.lock();
        f(guard.as_mut().expect("frame allocator is set up at boot"))
    })
}
