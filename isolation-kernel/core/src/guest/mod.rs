//! Guests: validation of the pointers they pass, the scheduler (with its id queue, deadline heap and delay histograms), loading their ELF files from the cpio initrd, and checks of their register state.

pub mod cpio;
pub mod deadlines;
pub mod delays;
pub mod elf;
pub mod mem;
pub mod queue;
pub mod sched;
pub mod tickless;
pub mod user_state;
