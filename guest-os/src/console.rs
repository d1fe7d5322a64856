//! Console output through the console-write virtual instruction, line-buffered so one line
//! costs one trap.

use crate::vi;
use core::fmt::{self, Write};

const LINE: usize = 256;

/// Collects text and hands it to the kernel a line (or a full buffer) at a time.
struct LineWriter {
    buf: [u8; LINE],
    len: usize,
}

impl LineWriter {
    fn flush(&mut self) {
        if self.len > 0 {
            vi::console_write(&self.buf[..self.len]);
            self.len = 0;
        }
    }
}

impl Write for LineWriter {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        for &byte in s.as_bytes() {
            if self.len == LINE {
                self.flush();
            }
            self.buf[self.len] = byte;
            self.len += 1;
            if byte == b'\n' {
                self.flush();
            }
        }
        Ok(())
    }
}

/// Writes formatted text to the console.
pub fn print_fmt(args: fmt::Arguments<'_>) {
    let mut writer = LineWriter { buf: [0; LINE], len: 0 };
    let _ = writer.write_fmt(args);
    writer.flush();
}

/// Writes text to the console.
pub fn write_str(s: &str) {
    print_fmt(format_args!("{s}"));
}

#[macro_export]
macro_rules! println {
    ($($arg:tt)*) => {
        $crate::console::print_fmt(format_args!("{}\n", format_args!($($arg)*)))
    };
}

struct ConsoleLogger;

impl log::Log for ConsoleLogger {
    fn enabled(&self, metadata: &log::Metadata<'_>) -> bool {
        metadata.level() <= log::max_level()
    }

    fn log(&self, record: &log::Record<'_>) {
        if self.enabled(record.metadata()) {
            print_fmt(format_args!("{:<5} {}\n", record.level(), record.args()));
        }
    }

    fn flush(&self) {}
}

static LOGGER: ConsoleLogger = ConsoleLogger;

pub(crate) fn init_logger() {
    if log::set_logger(&LOGGER).is_ok() {
        log::set_max_level(log::LevelFilter::Info);
    }
}
