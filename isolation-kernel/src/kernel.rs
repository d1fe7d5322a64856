//! Boot sequence, the idle loop and shutdown (trap dispatch is `trap.rs`).

use crate::arch::{self, clock, cpu};
use crate::drivers::power_off::{self, power_off};
use crate::mm::{self, paging, phys};
use core::sync::atomic::{AtomicBool, Ordering};
use hypercall_abi::host::KernelExit;
use hypercall_abi::layout::PAGE_SIZE as FRAME_SIZE;
use kernel_core::boot::cmdline::{self, KernelArgs, TestFault};
use kernel_core::boot::memmap::{usable_memory, MemoryKind, Range, RegionSet};
use kernel_core::boot::pvh;
use kernel_core::mm::frame_alloc::{bitmap_words, FrameAllocator};
use x86_64::VirtAddr;

/// Bytes of the boot (and, later, trap) stack, above one unmapped guard page.
const KERNEL_STACK_BYTES: usize = 64 * 1024;
const GUARD_BYTES: usize = 4096;
/// Size of the kernel heap at boot: 1/128 of RAM, at least 1 MiB. It grows from the frame
/// allocator as guests need it (see `mm::heap`).
const MIN_HEAP_BYTES: u64 = 1 << 20;
const HEAP_FRACTION_OF_RAM: u64 = 128;
/// Physical memory below this is the legacy BIOS area; the kernel leaves it alone.
const LOW_MEMORY_LIMIT: u64 = 1 << 20;

#[repr(C, align(4096))]
pub struct KernelStack(pub [u8; GUARD_BYTES + KERNEL_STACK_BYTES]);

/// The stack `kernel_entry` runs on; its lowest page is left unmapped as a guard.
pub static mut BOOT_STACK: KernelStack = KernelStack([0; GUARD_BYTES + KERNEL_STACK_BYTES]);
/// The stack traps from ring 3 land on (TSS RSP0); its lowest page is a guard too.
static mut TRAP_STACK: KernelStack = KernelStack([0; GUARD_BYTES + KERNEL_STACK_BYTES]);

pub static PANICKING: AtomicBool = AtomicBool::new(false);

extern "C" {
    static __kernel_phys_start: u8;
    static __text_start: u8;
    static __text_end: u8;
    static __rodata_start: u8;
    static __rodata_end: u8;
    static __data_start: u8;
    static __data_end: u8;
    static __kernel_end: u8;
}

fn kernel_layout() -> (paging::KernelLayout, u64, u64) {
    // Only the addresses of the linker-defined symbols are taken; nothing is read through them.
    let (phys_start, text_start, text_end, rodata_start, rodata_end, data_start, data_end, end) = (
        (&raw const __kernel_phys_start) as u64,
        (&raw const __text_start) as u64,
        (&raw const __text_end) as u64,
        (&raw const __rodata_start) as u64,
        (&raw const __rodata_end) as u64,
        (&raw const __data_start) as u64,
        (&raw const __data_end) as u64,
        (&raw const __kernel_end) as u64,
    );
    let layout = paging::KernelLayout {
        text: Range { start: text_start, end: text_end },
        rodata: Range { start: rodata_start, end: rodata_end },
        data: Range { start: data_start, end: data_end },
        stack_guard_pages: [(&raw const BOOT_STACK) as u64, (&raw const TRAP_STACK) as u64],
    };
    (layout, phys_start, end - paging::KERNEL_VMA)
}

fn trap_stack_top() -> VirtAddr {
    VirtAddr::new((&raw const TRAP_STACK) as u64 + core::mem::size_of::<KernelStack>() as u64)
}

fn fail(args: core::fmt::Arguments<'_>) -> ! {
    log::error!("{args}");
    power_off(KernelExit::Failure)
}

/// Entered from the PVH trampoline on the boot stack, with the boot page tables.
pub extern "C" fn kernel_entry(start_info_phys: u64) -> ! {
    crate::logger::init();
    arch::gdt::init(trap_stack_top());
    arch::idt::init();
    log::info!("isolation kernel {} (ABI {}) booting", env!("CARGO_PKG_VERSION"), hypercall_abi::ABI_VERSION);

    let info = pvh::parse_start_info(&phys::BootPhysReader, start_info_phys)
        .unwrap_or_else(|e| fail(format_args!("PVH start info at {start_info_phys:#x}: {e}")));
    // The ACPI tables are read while the boot tables still map the first GiB.
    power_off::discover(&phys::BootPhysReader, info.rsdp_phys);
    // The command line is copied out before the boot page tables (and their view of it) go.
    let mut cmdline_buf = [0u8; pvh::MAX_CMDLINE_LEN + 1];
    let cmdline_text = match info.cmdline_phys {
        Some(loc) => pvh::read_cmdline(&phys::BootPhysReader, loc, &mut cmdline_buf)
            .unwrap_or_else(|e| fail(format_args!("kernel command line: {e}"))),
        None => "",
    };
    let args = cmdline::parse(cmdline_text)
        .unwrap_or_else(|e| fail(format_args!("kernel command line `{cmdline_text}`: {e}")));
    log::set_max_level(args.log_level);
    log::info!("command line: `{cmdline_text}`");
    let mut ignored = cmdline::unknown_words(cmdline_text).peekable();
    if ignored.peek().is_some() {
        // Once, at boot: VMMs add words of their own (console=, reboot=, pci=off, ...).
        log::info!("command line: ignoring words the kernel does not know:");
        for word in ignored {
            log::info!("  {word}");
        }
    }
    if args.stamps && !cfg!(feature = "stamps") {
        // Refused rather than ignored: a benchmark must not read stamps that were never taken.
        fail(format_args!(
            "stamps=on: this kernel was built without the `stamps` feature (`cargo xtask run --stamps` builds one)"
        ));
    }
    crate::guest::set_per_guest_stats(args.stats_per_guest);
    crate::drivers::virtio_net::announce_mmio_devices(args.virtio_mmio);
    power_off::log_discovery();

    setup_memory(&info);
    phys::with_frames(power_off::map_registers);
    if let Err(problem) = clock::start() {
        fail(format_args!("{problem}"));
    }
    log_cpu();
    arch::user_state::init(args.fpu).unwrap_or_else(|e| fail(format_args!("{e}")));
    log::info!(
        "fpu: {} ({})",
        args.fpu.name(),
        match args.fpu {
            cmdline::FpuPolicy::Fault => "x87/MMX/SSE instructions stop the guest",
            cmdline::FpuPolicy::Save => "each guest has its own x87/MMX/SSE registers, switched with it",
        }
    );

    if let Some(fault) = args.test_fault {
        trigger_test_fault(fault);
    }
    if let Some(module) = info.modules().first() {
        // SAFETY: the module's frames were reserved from the frame allocator at boot and it lies
        // in RAM, which the direct map covers; nothing ever writes to it.
        let initrd: &'static [u8] = unsafe {
            core::slice::from_raw_parts(phys::phys_to_virt(module.phys).as_ptr::<u8>(), module.size as usize)
        };
        log::info!("initrd: {} bytes at {:#x}", module.size, module.phys);
        let hz = clock::tsc_hz();
        let deadline = args.shutdown_after_secs.map(|s| clock::boot_tsc() + s * hz);
        log::info!("boot complete in {} us; starting guests", clock::uptime_micros());
        crate::vnet::set_checksum_offload(args.csum_offload);
        log::info!("checksum offload: {}", if args.csum_offload { "on" } else { "off" });
        let problem = crate::guest::boot(initrd, hz, deadline, trap_stack_top().as_u64(), args.tx_mode, args.stamps);
        fail(format_args!("cannot start the image's guests: {problem}"));
    }
    run(&args)
}

fn setup_memory(info: &pvh::StartInfo) {
    log::info!("memory map ({} entries from PVH start info):", info.memory_map().len());
    for entry in info.memory_map().iter().filter(|e| e.size > 0) {
        let kind = match entry.kind {
            MemoryKind::Usable => "usable",
            MemoryKind::AcpiReclaimable => "ACPI",
            MemoryKind::Reserved => "reserved",
        };
        log::info!(
            "  [{:#014x}-{:#014x}] {kind}",
            entry.start,
            entry.start.saturating_add(entry.size).saturating_sub(1)
        );
    }
    let mut usable = usable_memory(info.memory_map(), LOW_MEMORY_LIMIT)
        .unwrap_or_else(|_| fail(format_args!("memory map too fragmented")));
    let managed_end = usable.ranges().last().map_or(0, |r| r.end);

    // Frames that hold the kernel image and boot modules are never handed out.
    let (layout, image_start, image_end) = kernel_layout();
    let mut taken = RegionSet::new();
    let _ = taken.insert(image_start, image_end);
    for module in info.modules() {
        let _ = taken.insert(module.phys, module.phys.saturating_add(module.size));
    }
    for r in taken.ranges() {
        let start = r.start - r.start % FRAME_SIZE;
        let _ = usable.remove(start, r.end.next_multiple_of(FRAME_SIZE));
    }

    // The bitmap itself takes the first run of usable frames the boot tables can reach.
    let frame_count = managed_end / FRAME_SIZE;
    let bitmap_bytes = (bitmap_words(frame_count) * 8) as u64;
    let bitmap_span = bitmap_bytes.next_multiple_of(FRAME_SIZE);
    let bitmap_phys = usable
        .ranges()
        .iter()
        .find(|r| r.len() >= bitmap_span && r.start + bitmap_span <= arch::boot::BOOT_DIRECT_MAP_BYTES)
        .map(|r| r.start)
        .unwrap_or_else(|| fail(format_args!("no room below 1 GiB for a {bitmap_bytes}-byte frame bitmap")));
    let _ = usable.remove(bitmap_phys, bitmap_phys + bitmap_span);
    let bitmap_ptr = phys::phys_to_virt(bitmap_phys).as_mut_ptr::<u64>();
    // SAFETY: the bitmap's frames were just removed from usable RAM, so nothing else will use
    // them; they lie in the first GiB, mapped by the boot tables and later by the direct map.
    let bitmap = unsafe { core::slice::from_raw_parts_mut(bitmap_ptr, bitmap_words(frame_count)) };
    let mut frames = FrameAllocator::new(bitmap, frame_count).expect("bitmap sized for frame_count");
    for r in usable.ranges() {
        frames.add_free_range(r.start, r.end);
    }
    log::info!(
        "frames: {} usable of {} ({} MiB), bitmap {} KiB at {:#x}, kernel image {:#x}-{:#x}",
        frames.free_frames(),
        frame_count,
        (frames.free_frames() * FRAME_SIZE) >> 20,
        bitmap_bytes / 1024,
        bitmap_phys,
        image_start,
        image_end
    );

    // The direct map covers every RAM range the loader reported, whole frames outward.
    let mut ram = RegionSet::new();
    for entry in info.memory_map().iter().filter(|e| e.kind != MemoryKind::Reserved) {
        let start = entry.start - entry.start % FRAME_SIZE;
        let end = entry.start.saturating_add(entry.size).next_multiple_of(FRAME_SIZE);
        let _ = ram.insert(start, end);
    }
    paging::init(&mut frames, ram.ranges(), &layout, arch::boot::BOOT_DIRECT_MAP_BYTES);
    log::info!("paging: kernel page tables active, direct map at {:#x}", phys::DIRECT_MAP_OFFSET);

    let heap_bytes =
        (frames.free_frames() * FRAME_SIZE / HEAP_FRACTION_OF_RAM).max(MIN_HEAP_BYTES).next_multiple_of(FRAME_SIZE);
    let heap_phys = frames
        .allocate_contiguous(heap_bytes / FRAME_SIZE, 1)
        .unwrap_or_else(|| fail(format_args!("no {} KiB of contiguous memory for the heap", heap_bytes / 1024)));
    mm::heap::init(heap_phys, heap_bytes as usize);
    *phys::FRAMES.lock() = Some(frames);

    // Prove the heap works before anything relies on it.
    let probe: alloc::vec::Vec<u64> = (0..512).collect();
    assert_eq!(probe.iter().sum::<u64>(), 511 * 512 / 2);
    drop(probe);
    log::info!("heap: {} KiB at physical {heap_phys:#x}", heap_bytes / 1024);
}

fn log_cpu() {
    let mut brand = [0u8; 48];
    log::info!("cpu: {}", cpu::brand_string(&mut brand));
}

fn trigger_test_fault(fault: TestFault) {
    log::warn!("test_fault={fault:?}: faulting on purpose");
    match fault {
        TestFault::PageFault => {
            // An address in the kernel half that nothing maps (below the MMIO window).
            let unmapped = (paging::MMIO_WINDOW - 0x1000_0000) as *mut u64;
            // SAFETY: deliberately unsound: this write must fault, which is what the test checks.
            unsafe { unmapped.write_volatile(0xdead) };
        }
        // SAFETY: `ud2` only raises #UD, which is what the test checks.
        TestFault::InvalidOpcode => unsafe { core::arch::asm!("ud2") },
        TestFault::Panic => panic!("test_fault=panic requested on the command line"),
    }
    fail(format_args!("test fault {fault:?} did not fault"));
}

/// The idle loop: halts between interrupts, reports uptime once a second, and ends the machine
/// when the shutdown deadline passes.
fn run(args: &KernelArgs) -> ! {
    let hz = clock::tsc_hz();
    let boot = clock::boot_tsc();
    let deadline = args.shutdown_after_secs.map(|s| boot + s * hz);
    let mut next_report = boot + hz;
    let mut seconds = 0;
    log::info!(
        "boot complete in {} us; {}",
        clock::uptime_micros(),
        match args.shutdown_after_secs {
            Some(_) => "idling until shutdown_after",
            None => "idling (no shutdown_after given)",
        }
    );
    // The tickless timer brings the loop back for the next report, the shutdown deadline or the
    // console's poll for a typed `q`, whichever comes first.
    let console_poll = hz / 10;
    loop {
        let now = cpu::rdtsc();
        let wake = [Some(next_report), deadline, Some(now + console_poll)].into_iter().flatten().min();
        clock::program_timer(wake);
        cpu::enable_interrupts_and_halt();
        x86_64::instructions::interrupts::disable();
        let now = cpu::rdtsc();
        if now >= next_report {
            seconds += 1;
            next_report += hz;
            log::info!("uptime {seconds} s, timer ticks {}", clock::timer_ticks());
        }
        let quit = crate::drivers::serial::quit_requested();
        if quit || deadline.is_some_and(|d| now >= d) {
            crate::stats::print_stats_with(alloc::vec::Vec::new()); // no guests
            log::info!("{}: exiting", if quit { "quit requested on the console" } else { "shutdown_after reached" });
            power_off(KernelExit::Success);
        }
    }
}

#[panic_handler]
fn panic(info: &core::panic::PanicInfo<'_>) -> ! {
    x86_64::instructions::interrupts::disable();
    if PANICKING.swap(true, Ordering::Relaxed) {
        // A panic while reporting a panic: do not risk a loop.
        power_off(KernelExit::Panic);
    }
    crate::logger::console_write_fmt(format_args!("KERNEL PANIC: {info}\n"));
    power_off(KernelExit::Panic)
}
