//! Traps from guests: decoding the instruction that trapped, naming exceptions.

pub mod exceptions;
pub mod vcall;
pub mod vinstr;
