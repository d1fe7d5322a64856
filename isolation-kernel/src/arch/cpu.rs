//! Small wrappers around single CPU instructions.

use core::arch::x86_64::{__cpuid_count, _rdtsc, CpuidResult};

/// `cpuid` with leaf and sub-leaf.
pub fn cpuid(leaf: u32, subleaf: u32) -> CpuidResult {
    #[allow(unused_unsafe)]
    // SAFETY: `cpuid` exists on every x86_64 CPU and has no side effects beyond its outputs.
    unsafe {
        __cpuid_count(leaf, subleaf)
    }
}

/// Reads the time-stamp counter.
pub fn rdtsc() -> u64 {
    #[allow(unused_unsafe)]
    // SAFETY: `rdtsc` is available on x86_64 and CR4.TSD is left clear, so ring 0 may use it.
    unsafe {
        _rdtsc()
    }
}

/// Reads the time-stamp counter after every earlier instruction has completed (`lfence`
/// orders instruction dispatch on Intel and AMD for this purpose).
pub fn rdtsc_serialized() -> u64 {
    // SAFETY: `lfence` only orders instruction execution; it touches no memory or registers.
    unsafe { core::arch::asm!("lfence", options(nostack, preserves_flags)) };
    rdtsc()
}

/// The faulting linear address of the last page fault.
pub fn cr2() -> u64 {
    x86_64::registers::control::Cr2::read_raw()
}

/// Physical address of the active top-level page table (CR3 without its flag bits).
pub fn active_pml4() -> u64 {
    x86_64::registers::control::Cr3::read_raw().0.start_address().as_u64()
}

/// The first byte of the instruction at `rip` that trapped from ring 3 in the address space of
/// `pml4_phys`, read through that address space's own mapping: `None` unless it is the active
/// one and `rip` is a user address. The CPU fetched the instruction from there to raise the
/// trap, so the page is present and user-readable; the kernel has not changed the mapping since
/// (one CPU, interrupts off in the handler).
pub fn trapping_opcode_byte(rip: u64, pml4_phys: u64) -> Option<u8> {
    if rip >= hypercall_abi::layout::USER_LIMIT || active_pml4() != pml4_phys {
        return None;
    }
    // SAFETY: see above: a present, readable user page of the active address space, which the
    // CPU read this byte from to raise the trap being handled.
    Some(unsafe { core::ptr::read_volatile(rip as *const u8) })
}

/// Makes the PML4 at `pml4_phys` the active address space (a CR3 write, keeping CR3's
/// cache-control bits), which flushes every non-global TLB entry.
///
/// # Safety
/// `pml4_phys` must be a page-aligned PML4 that maps the kernel's code, stack and data in use at
/// the same virtual addresses as the active one, so execution continues across the switch.
pub unsafe fn load_pml4(pml4_phys: u64) {
    use x86_64::registers::control::Cr3;
    use x86_64::structures::paging::PhysFrame;
    let (_, flags) = Cr3::read_raw();
    // SAFETY: forwarded to the caller.
    unsafe { Cr3::write_raw(PhysFrame::containing_address(x86_64::PhysAddr::new(pml4_phys)), flags) }
}

/// Sets CR4.PGE: page-table entries marked global (the kernel's) survive CR3 writes.
pub fn enable_global_pages() {
    use x86_64::registers::control::{Cr4, Cr4Flags};
    // SAFETY: PGE only changes which TLB entries a CR3 write flushes; setting it flushes the TLB
    // and changes no mapping.
    unsafe { Cr4::update(|cr4| cr4.insert(Cr4Flags::PAGE_GLOBAL)) }
}

/// True when EFER.NXE is set, i.e. page-table entries may carry the no-execute bit.
pub fn no_execute_enabled() -> bool {
    use x86_64::registers::model_specific::{Efer, EferFlags};
    Efer::read().contains(EferFlags::NO_EXECUTE_ENABLE)
}

/// Waits for the next interrupt with interrupts enabled, atomically (`sti; hlt`).
pub fn enable_interrupts_and_halt() {
    x86_64::instructions::interrupts::enable_and_hlt();
}

/// Halts forever with interrupts off: the end of the line when even QEMU's exit device fails.
pub fn halt_forever() -> ! {
    loop {
        x86_64::instructions::interrupts::disable();
        x86_64::instructions::hlt();
    }
}

/// Writes one byte to an I/O port.
///
/// # Safety
/// The port must belong to a device whose side effects the caller intends.
pub unsafe fn outb(port: u16, value: u8) {
    // SAFETY: forwarded to the caller.
    unsafe { x86_64::instructions::port::Port::new(port).write(value) }
}

/// Reads one byte from an I/O port.
///
/// # Safety
/// The port must belong to a device for which a read has only the intended side effects.
pub unsafe fn inb(port: u16) -> u8 {
    // SAFETY: forwarded to the caller.
    unsafe { x86_64::instructions::port::Port::new(port).read() }
}

/// Writes one 32-bit word to an I/O port.
///
/// # Safety
/// The port must belong to a device whose side effects the caller intends.
pub unsafe fn outl(port: u16, value: u32) {
    // SAFETY: forwarded to the caller.
    unsafe { x86_64::instructions::port::Port::new(port).write(value) }
}

/// Reads one 32-bit word from an I/O port.
///
/// # Safety
/// The port must belong to a device for which a read has only the intended side effects.
pub unsafe fn inl(port: u16) -> u32 {
    // SAFETY: forwarded to the caller.
    unsafe { x86_64::instructions::port::Port::new(port).read() }
}

/// Writes one 16-bit word to an I/O port.
///
/// # Safety
/// The port must belong to a device whose side effects the caller intends.
pub unsafe fn outw(port: u16, value: u16) {
    // SAFETY: forwarded to the caller.
    unsafe { x86_64::instructions::port::Port::new(port).write(value) }
}

/// Reads one 16-bit word from an I/O port.
///
/// # Safety
/// The port must belong to a device for which a read has only the intended side effects.
pub unsafe fn inw(port: u16) -> u16 {
    // SAFETY: forwarded to the caller.
    unsafe { x86_64::instructions::port::Port::new(port).read() }
}

/// Reads a model-specific register.
///
/// # Safety
/// The MSR must exist on this CPU (reading a missing one raises `#GP`).
pub unsafe fn rdmsr(msr: u32) -> u64 {
    // SAFETY: forwarded to the caller.
    unsafe { x86_64::registers::model_specific::Msr::new(msr).read() }
}

/// Writes a model-specific register.
///
/// # Safety
/// The MSR must exist and the value must be one whose effect the caller intends.
pub unsafe fn wrmsr(msr: u32, value: u64) {
    // SAFETY: forwarded to the caller.
    unsafe { x86_64::registers::model_specific::Msr::new(msr).write(value) }
}

/// The CPU's brand string (CPUID 0x80000002..4), for logs and benchmark reports.
pub fn brand_string(buf: &mut [u8; 48]) -> &str {
    if cpuid(0x8000_0000, 0).eax < 0x8000_0004 {
        return "unknown CPU";
    }
    for (i, leaf) in (0x8000_0002u32..=0x8000_0004).enumerate() {
        let r = cpuid(leaf, 0);
        for (j, reg) in [r.eax, r.ebx, r.ecx, r.edx].into_iter().enumerate() {
            buf[i * 16 + j * 4..i * 16 + j * 4 + 4].copy_from_slice(&reg.to_le_bytes());
        }
    }
    let end = buf.iter().position(|&b| b == 0).unwrap_or(buf.len());
    core::str::from_utf8(&buf[..end]).unwrap_or("unknown CPU").trim()
}
