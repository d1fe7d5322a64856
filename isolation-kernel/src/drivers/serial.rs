//! The 16550 UART on COM1: the kernel's console and the log that tests read.

use crate::arch::cpu::{inb, outb};

const COM1: u16 = 0x3f8;
const DATA: u16 = COM1;
const INTERRUPT_ENABLE: u16 = COM1 + 1;
const FIFO_CONTROL: u16 = COM1 + 2;
const LINE_CONTROL: u16 = COM1 + 3;
const MODEM_CONTROL: u16 = COM1 + 4;
const LINE_STATUS: u16 = COM1 + 5;
const LINE_STATUS_THR_EMPTY: u8 = 0x20;
const LINE_STATUS_DATA_READY: u8 = 0x01;

pub struct Serial(());

impl Serial {
    /// Programs COM1 for 115200 baud, 8N1, FIFOs on, interrupts off.
    pub fn init() -> Serial {
        // SAFETY: COM1's registers at their fixed ports; this is the standard 16550 set-up and
        // nothing else in the kernel drives this UART.
        unsafe {
            outb(INTERRUPT_ENABLE, 0x00);
            outb(LINE_CONTROL, 0x80); // DLAB on: the next two ports are the divisor
            outb(DATA, 0x01); // divisor 1: 115200 baud
            outb(INTERRUPT_ENABLE, 0x00);
            outb(LINE_CONTROL, 0x03); // 8 bits, no parity, one stop bit, DLAB off
            outb(FIFO_CONTROL, 0xc7); // FIFOs on and cleared, 14-byte threshold
            outb(MODEM_CONTROL, 0x03); // DTR, RTS
        }
        Serial(())
    }

    pub fn write_byte(&mut self, byte: u8) {
        // SAFETY: reading the line status and writing the data register of COM1, which
        // `init` set up; only the transmit path is used.
        unsafe {
            while inb(LINE_STATUS) & LINE_STATUS_THR_EMPTY == 0 {}
            outb(DATA, byte);
        }
    }
}

/// A byte typed on the console, if one is waiting (the harness sends `q` to end a run).
pub fn try_read_byte() -> Option<u8> {
    // SAFETY: reading COM1's line status, and its data register only when a byte is ready;
    // the kernel uses the receive side nowhere else.
    unsafe { (inb(LINE_STATUS) & LINE_STATUS_DATA_READY != 0).then(|| inb(DATA)) }
}

impl core::fmt::Write for Serial {
    fn write_str(&mut self, s: &str) -> core::fmt::Result {
        for byte in s.bytes() {
            if byte == b'\n' {
                self.write_byte(b'\r');
            }
            self.write_byte(byte);
        }
        Ok(())
    }
}

/// Whether `q` was typed on the console: the way to end a run of servers cleanly (the harness
/// sends it; interactively, type it).
pub fn quit_requested() -> bool {
    static REQUESTED: core::sync::atomic::AtomicBool = core::sync::atomic::AtomicBool::new(false);
    while let Some(byte) = try_read_byte() {
        if byte == b'q' {
            REQUESTED.store(true, core::sync::atomic::Ordering::Relaxed);
        }
    }
    REQUESTED.load(core::sync::atomic::Ordering::Relaxed)
}
