//! The kernel's `log` backend: one line per record on COM1, stamped with the time since boot.

use crate::drivers::serial::Serial;
use core::fmt::Write;
use core::sync::atomic::Ordering;

pub static CONSOLE: spin::Mutex<Option<Serial>> = spin::Mutex::new(None);

struct KernelLogger;

static LOGGER: KernelLogger = KernelLogger;

impl log::Log for KernelLogger {
    fn enabled(&self, metadata: &log::Metadata) -> bool {
        metadata.level() <= log::max_level()
    }

    fn log(&self, record: &log::Record) {
        if !self.enabled(record.metadata()) {
            return;
        }
        let micros = crate::arch::clock::uptime_micros();
        crate::logger::console_write_fmt(format_args!(
            "[{:>5}.{:06}] {:<5} {}\n",
            micros / 1_000_000,
            micros % 1_000_000,
            record.level(),
            record.args()
        ));
    }

    fn flush(&self) {}
}

/// Sets up COM1 and installs the logger at `Info` until the command line says otherwise.
pub fn init() {
    *CONSOLE.lock() = Some(Serial::init());
    log::set_logger(&LOGGER).expect("the logger is installed once");
    log::set_max_level(log::LevelFilter::Info);
}

/// Writes formatted text to the console with interrupts off, so an interrupt handler that
/// logs cannot deadlock on the console lock it interrupted.
pub fn write_fmt(args: core::fmt::Arguments<'_>) {
    x86_64::instructions::interrupts::without_interrupts(|| {
        // A panic while the console is held (inside a formatting impl) must still be reported:
        // take the lock by force then, since nothing else will run again anyway.
        if crate::PANICKING.load(Ordering::Relaxed) {
            // SAFETY: single CPU; the holder of the lock is this same code path, which will
            // never resume after a panic, so no other reference to the console is live.
            unsafe { CONSOLE.force_unlock() };
        }
        let mut console = CONSOLE.lock();
        if let Some(serial) = console.as_mut() {
            let _ = serial.write_fmt(args);
        }
    });
}

/// Console output that bypasses the log level (panics, the stats line, exit reasons).
pub fn console_write_fmt(args: core::fmt::Arguments<'_>) {
    write_fmt(args);
}
