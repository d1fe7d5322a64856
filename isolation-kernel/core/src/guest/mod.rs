//! Guests: validation of the pointers they pass, the scheduler, loading their ELF files from the cpio initrd, and checks of their register state.

pub mod cpio;
pub mod elf;
pub mod mem;
pub mod sched;
pub mod user_state;
