//! Ending the machine, with what it has: QEMU's `isa-debug-exit` (whose exit status carries the
//! verdict), else ACPI's S5 sleep state (cloud-hypervisor's sleep control register, QEMU `pc`'s
//! PM1 control, found in the ACPI tables at boot), else the i8042 keyboard controller's reset
//! (which Firecracker watches, and QEMU's `-no-reboot` turns into an exit). Without the exit
//! device no status reaches the host, so the kernel first prints its verdict on the console
//! (`verdict: NAME`), where the harness reads it beside the guests' `summary:` lines.

use crate::arch::cpu::{self, halt_forever, outb, outl, outw};
use crate::logger::console_write_fmt;
use hypercall_abi::host::{KernelExit, DEBUG_EXIT_PORT, VERDICT_PREFIX};
use kernel_core::boot::acpi::{self, PowerOff, Register, Space};
use kernel_core::boot::pvh::PhysRead;

/// The i8042's command port, and the command that pulses the CPU reset line.
const I8042_COMMAND_PORT: u16 = 0x64;
const I8042_RESET: u8 = 0xFE;
/// How long each way is given to take effect (a VMM handles the request asynchronously).
const SETTLE_MICROS: u64 = 200_000;
/// TSC ticks assumed per microsecond before the clock is measured.
const FALLBACK_TICKS_PER_MICRO: u64 = 3_000;
/// The page of the kernel's MMIO window a memory-mapped sleep register is mapped at: far from
/// the pages devices are given from the window's start.
const SLEEP_REGISTER_MMIO_SLOT: u64 = 1 << 20;

/// The ACPI way, found at boot; `None` until then, or if the tables offer none.
static ACPI_WAY: spin::Mutex<Option<AcpiWay>> = spin::Mutex::new(None);
/// Why the tables offer no ACPI way, for the boot log.
static NO_ACPI_WAY: spin::Mutex<Option<acpi::NoPowerOff>> = spin::Mutex::new(None);

#[derive(Clone, Copy)]
struct AcpiWay {
    plan: PowerOff,
    /// Where a memory-mapped sleep register is mapped (once paging is up).
    mapped: Option<u64>,
}

/// Reads the ACPI tables (through the boot mappings: call before they go, and as early as
/// possible, so that even a boot that fails ends the machine rather than resetting it, which
/// cloud-hypervisor answers with a reboot) and keeps how to power off through ACPI, if the
/// machine has a way.
pub fn discover(mem: &impl PhysRead, rsdp_hint: u64) {
    match acpi::find_power_off(mem, rsdp_hint) {
        Ok(plan) => *ACPI_WAY.lock() = Some(AcpiWay { plan, mapped: None }),
        Err(why) => *NO_ACPI_WAY.lock() = Some(why),
    }
}

/// Logs what [`discover`] found (once the log level is known).
pub fn log_discovery() {
    if let Some(why) = *NO_ACPI_WAY.lock() {
        log::info!("power-off: no ACPI way ({why})");
    }
    let Some(way) = *ACPI_WAY.lock() else { return };
    for (register, value) in way.plan.writes.iter().flatten() {
        log::info!(
            "power-off: ACPI S5 ({}): {} {:#x} <- {value:#x}",
            if way.plan.hardware_reduced { "sleep control register" } else { "PM1 control" },
            match register.space {
                Space::Io => "io port",
                Space::Memory => "memory",
            },
            register.address
        );
    }
}

/// Maps a memory-mapped sleep register (QEMU `microvm`'s), once the kernel's page tables are up.
pub fn map_registers(frames: &mut kernel_core::mm::frame_alloc::FrameAllocator<'static>) {
    let mut way = ACPI_WAY.lock();
    let Some(way) = way.as_mut() else { return };
    if let Some((register, _)) = way.plan.writes.first().copied().flatten().filter(|(r, _)| r.space == Space::Memory) {
        const PAGE_MASK: u64 = 0xfff;
        let virt = crate::mm::paging::map_mmio_page(SLEEP_REGISTER_MMIO_SLOT, register.address & !PAGE_MASK, frames);
        way.mapped = Some(virt.as_u64() | (register.address & PAGE_MASK));
    }
}

/// Spins for about `micros` (by the TSC; a guess at its rate before it is measured).
fn settle(micros: u64) {
    let per_micro = match crate::arch::clock::tsc_hz() / 1_000_000 {
        0 => FALLBACK_TICKS_PER_MICRO,
        measured => measured,
    };
    let start = cpu::rdtsc();
    while cpu::rdtsc().wrapping_sub(start) < micros.saturating_mul(per_micro) {
        core::hint::spin_loop();
    }
}

fn write_register(register: Register, value: u32, mapped: Option<u64>) {
    match (register.space, register.bytes) {
        (Space::Io, bytes) => {
            let port = register.address as u16; // checked to fit when the tables were read
                                                // SAFETY: the ACPI tables name this port as the machine's sleep (or PM1 control)
                                                // register; writing it asks the machine to power off, which is what is wanted.
            unsafe {
                match bytes {
                    1 => outb(port, value as u8),
                    2 => outw(port, value as u16),
                    _ => outl(port, value),
                }
            }
        }
        (Space::Memory, _) => {
            if let Some(virt) = mapped {
                // SAFETY: `virt` maps the sleep control register's page (uncached, at boot, by
                // `map_registers`); a byte write to it asks the machine to power off.
                unsafe { (virt as *mut u8).write_volatile(value as u8) };
            }
        }
    }
}

/// Ends the machine with `reason`: prints the verdict, then tries each way the machine may have;
/// if none works, halts for ever (a harness's timeout catches it).
pub fn power_off(reason: KernelExit) -> ! {
    x86_64::instructions::interrupts::disable();
    console_write_fmt(format_args!("{VERDICT_PREFIX} {}\n", reason.name()));
    // SAFETY: writing to the debug-exit port only asks QEMU to end the machine; on a machine
    // without the device the write goes nowhere.
    unsafe { outl(DEBUG_EXIT_PORT, u32::from(reason.code())) };
    // Still running: there is no isa-debug-exit.
    // A panic while the lock is held must not spin for ever: then the ACPI way is skipped.
    let way = ACPI_WAY.try_lock().and_then(|way| *way);
    if let Some(way) = way {
        console_write_fmt(format_args!("power-off: no isa-debug-exit; ACPI S5\n"));
        for (register, value) in way.plan.writes.iter().flatten() {
            write_register(*register, *value, way.mapped);
        }
        settle(SETTLE_MICROS);
    }
    console_write_fmt(format_args!("power-off: i8042 reset\n"));
    // SAFETY: the i8042 reset command pulses the CPU's reset line (a VMM ends the machine, or
    // restarts it, which `-no-reboot` turns into an exit): what is wanted here.
    unsafe { outb(I8042_COMMAND_PORT, I8042_RESET) };
    settle(SETTLE_MICROS);
    console_write_fmt(format_args!("power-off: nothing ended the machine; halting\n"));
    halt_forever()
}
