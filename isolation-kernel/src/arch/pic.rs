//! The legacy 8259A PICs: remapped away from the exception vectors, then fully masked. All
//! interrupts come through the local APIC.

use super::cpu::outb;

const MASTER_COMMAND: u16 = 0x20;
const MASTER_DATA: u16 = 0x21;
const SLAVE_COMMAND: u16 = 0xa0;
const SLAVE_DATA: u16 = 0xa1;
/// Where a spurious IRQ from a masked PIC would land: clear of exceptions and our vectors.
const REMAP_BASE: u8 = 0xe0;

pub fn remap_and_mask() {
    // SAFETY: the standard 8259A initialisation sequence on the PICs' fixed ports; it only
    // changes which vectors the PICs would raise, and the final writes mask every line.
    unsafe {
        outb(MASTER_COMMAND, 0x11); // ICW1: edge, cascade, ICW4 follows
        outb(SLAVE_COMMAND, 0x11);
        outb(MASTER_DATA, REMAP_BASE); // ICW2: vector base
        outb(SLAVE_DATA, REMAP_BASE + 8);
        outb(MASTER_DATA, 4); // ICW3: slave on IRQ2
        outb(SLAVE_DATA, 2);
        outb(MASTER_DATA, 1); // ICW4: 8086 mode
        outb(SLAVE_DATA, 1);
        outb(MASTER_DATA, 0xff); // mask everything
        outb(SLAVE_DATA, 0xff);
    }
}
