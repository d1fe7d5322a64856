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
/// Interrupt identification bits 7:6 read back 11 when the FIFOs are on (a 16550A); a UART
/// without them (8250, 16450) reads 00, and its transmitter holds one byte.
const INTERRUPT_ID: u16 = COM1 + 2;
const INTERRUPT_ID_FIFOS_ON: u8 = 0xc0;
/// Bytes the 16550A's transmit FIFO holds.
const TRANSMIT_FIFO_BYTES: u8 = 16;

/// COM1's transmitter: once the line status says it is empty, `depth` bytes fit without asking
/// again. Asking is a port read, which a hypervisor traps: under QEMU TCG, polling before every
/// byte doubled the cost of the console (10,000 guests print 750 KB as they start).
pub struct Serial {
    depth: u8,
    /// Bytes that still fit before the line status must be read again.
    room: u8,
}

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
        // SAFETY: reading COM1's interrupt identification register has no side effect the
        // kernel relies on (no UART interrupt is enabled).
        let fifos_on = unsafe { inb(INTERRUPT_ID) } & INTERRUPT_ID_FIFOS_ON == INTERRUPT_ID_FIFOS_ON;
        Serial { depth: if fifos_on { TRANSMIT_FIFO_BYTES } else { 1 }, room: 0 }
    }

    pub fn write_byte(&mut self, byte: u8) {
        // SAFETY: reading the line status and writing the data register of COM1, which
        // `init` set up; only the transmit path is used.
        unsafe {
            if self.room == 0 {
                // Empty means the whole FIFO (in FIFO mode the bit reports the FIFO, not the
                // holding register).
                while inb(LINE_STATUS) & LINE_STATUS_THR_EMPTY == 0 {}
                self.room = self.depth;
            }
            outb(DATA, byte);
        }
        self.room = self.room.saturating_sub(1);
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
