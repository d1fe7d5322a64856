//! The guest's smoltcp network stack and poll loop. Not written yet: it arrives with the virtual NIC, and nothing here claims to work.

#![no_std]
#![forbid(unsafe_code)]
