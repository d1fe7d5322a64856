//! Loading guests: an app's ELF file is checked once and its read-only pages are built once and
//! shared by every guest of that app; each guest then gets its own copy of the writable
//! segments, a stack, a heap and a boot-info page, in an address space of its own.
//!
//! Segments come from an image, so they are allegations too: the ELF parser checked them
//! (inside the file, inside the image area), and every use here is checked again rather than
//! assumed, so a parser slip refuses a guest instead of panicking the kernel.

use super::space::{fill_frame, zero_frame, AddressSpace, PageUse, SpaceError};
use alloc::vec::Vec;
use hypercall_abi::boot_info::BootInfo;
use hypercall_abi::initrd::{heap_bytes, GuestSpec};
use hypercall_abi::layout::{heap_base, BOOT_INFO_ADDR, IMAGE_BASE, PAGE_SIZE, STACK_SIZE, STACK_TOP};
use kernel_core::guest::elf::{self, ElfError, ElfImage, Segment};
use kernel_core::guest::mem::Access;
use kernel_core::mm::frame_alloc::FrameAllocator;

/// An app's checked ELF image and the frames of its read-only segments.
pub struct App {
    image: ElfImage,
    bytes: &'static [u8],
    /// Per segment: the shared frames of a read-only segment, empty for a writable one.
    shared: Vec<Vec<u64>>,
}

fn access_of(segment: &Segment) -> Access {
    Access { read: true, write: segment.writable, execute: segment.executable }
}

/// Fills frame `phys` (page at `page_addr`) with the file bytes of `segment` that fall in it.
/// `None` if the segment's file range is not inside `file` (the parser refuses such files).
fn fill_from_file(phys: u64, page_addr: u64, segment: &Segment, file: &[u8]) -> Option<()> {
    let data_end = segment.vaddr.checked_add(segment.file_size)?;
    let start = page_addr.max(segment.vaddr);
    let end = page_addr.checked_add(PAGE_SIZE)?.min(data_end);
    if start < end {
        let file_start = segment.file_offset.checked_add(start.checked_sub(segment.vaddr)?)?;
        let file_end = file_start.checked_add(end.checked_sub(start)?)?;
        let bytes = file.get(usize::try_from(file_start).ok()?..usize::try_from(file_end).ok()?)?;
        fill_frame(phys, usize::try_from(start.checked_sub(page_addr)?).ok()?, bytes);
    }
    Some(())
}

#[derive(Clone, Copy, Debug)]
pub enum AppError {
    Elf(ElfError),
    OutOfMemory,
}

impl core::fmt::Display for AppError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            AppError::Elf(e) => write!(f, "bad ELF file: {e}"),
            AppError::OutOfMemory => f.write_str("out of memory for the shared segments"),
        }
    }
}

impl App {
    /// Checks `bytes` and builds the shared read-only pages.
    pub fn load(bytes: &'static [u8], frames: &mut FrameAllocator<'static>) -> Result<App, AppError> {
        let image = elf::parse(bytes).map_err(AppError::Elf)?;
        let mut shared = Vec::new();
        for (index, segment) in image.segments().iter().enumerate() {
            let mut pages = Vec::new();
            if !segment.writable {
                let (start, end) = segment.page_range();
                for page_addr in (start..end).step_by(PAGE_SIZE as usize) {
                    let Some(phys) = frames.allocate() else {
                        for phys in shared.iter().flatten().chain(pages.iter()) {
                            let _ = frames.deallocate(*phys);
                        }
                        return Err(AppError::OutOfMemory);
                    };
                    zero_frame(phys);
                    pages.push(phys);
                    if fill_from_file(phys, page_addr, segment, bytes).is_none() {
                        for phys in shared.iter().flatten().chain(pages.iter()) {
                            let _ = frames.deallocate(*phys);
                        }
                        return Err(AppError::Elf(ElfError::SegmentOutOfFile { index }));
                    }
                }
            }
            shared.push(pages);
        }
        Ok(App { image, bytes, shared })
    }

    /// Frames shared by all guests of this app.
    pub fn shared_frames(&self) -> usize {
        self.shared.iter().map(Vec::len).sum()
    }
}

/// A freshly built guest address space and where to start it.
pub struct Loaded {
    pub space: AddressSpace,
    pub entry: u64,
}

/// Builds the address space of guest `id` running `app`.
pub fn build_guest(
    id: u32,
    spec: &GuestSpec<'_>,
    app: &App,
    tsc_hz: u64,
    frames: &mut FrameAllocator<'static>,
) -> Result<Loaded, SpaceError> {
    let mut space = AddressSpace::new(frames)?;
    match populate(&mut space, id, spec, app, tsc_hz, frames) {
        Ok(()) => Ok(Loaded { space, entry: app.image.entry }),
        Err(e) => {
            space.release(frames);
            Err(e)
        }
    }
}

fn populate(
    space: &mut AddressSpace,
    id: u32,
    spec: &GuestSpec<'_>,
    app: &App,
    tsc_hz: u64,
    frames: &mut FrameAllocator<'static>,
) -> Result<(), SpaceError> {
    for (segment, shared) in app.image.segments().iter().zip(&app.shared) {
        let (start, end) = segment.page_range();
        let access = access_of(segment);
        for (index, page_addr) in (start..end).step_by(PAGE_SIZE as usize).enumerate() {
            let phys = if segment.writable {
                let phys = space.new_frame(frames, PageUse::Other)?;
                fill_from_file(phys, page_addr, segment, app.bytes).ok_or(SpaceError::BadMapping(page_addr))?;
                phys
            } else {
                *shared.get(index).ok_or(SpaceError::BadMapping(page_addr))?
            };
            space.map_page(frames, page_addr, phys, access)?;
        }
        space.map.add(start, end, access).map_err(|_| SpaceError::BadMapping(start))?;
    }

    let image_end = app.image.segments().iter().map(|segment| segment.page_range().1).max().unwrap_or(IMAGE_BASE);
    let heap_base = heap_base(image_end);
    // Boot info: read-only for the guest.
    let heap_bytes = heap_bytes(spec.heap_kib).ok_or(SpaceError::HeapTooLarge(spec.heap_kib))?;
    let info = BootInfo {
        abi_version: hypercall_abi::ABI_VERSION,
        guest_id: id,
        tsc_hz,
        heap_base,
        heap_size: heap_bytes,
        stack_top: STACK_TOP,
        stack_size: STACK_SIZE,
        name: spec.name,
        args: spec.args,
        net: spec.net,
    };
    let phys = space.new_frame(frames, PageUse::Other)?;
    let mut page = [0u8; hypercall_abi::boot_info::ENCODED_SIZE];
    info.encode(&mut page).map_err(|_| SpaceError::BadMapping(BOOT_INFO_ADDR))?;
    fill_frame(phys, 0, &page);
    space.map_page(frames, BOOT_INFO_ADDR, phys, Access::READ)?;
    space
        .map
        .add(BOOT_INFO_ADDR, BOOT_INFO_ADDR.wrapping_add(PAGE_SIZE), Access::READ) // ABI constants
        .map_err(|_| SpaceError::BadMapping(BOOT_INFO_ADDR))?;

    // Stack below STACK_TOP (the page under it stays unmapped as a guard), then the heap right
    // after the image: both backed when first touched. ABI constants (the layout asserts
    // STACK_SIZE < STACK_TOP; the ELF checks keep the image below IMAGE_LIMIT).
    let stack_pages = STACK_SIZE.div_ceil(PAGE_SIZE);
    space.reserve_lazy(STACK_TOP.wrapping_sub(STACK_SIZE), stack_pages, Access::READ_WRITE, PageUse::Stack)?;
    space.reserve_lazy(heap_base, heap_bytes.div_ceil(PAGE_SIZE), Access::READ_WRITE, PageUse::Heap)?;
    Ok(())
}
