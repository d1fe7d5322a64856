//! The guest side of the virtual NIC (smoltcp::phy::Device over the shared rings). Not written yet: it arrives with the virtual NIC, and nothing here claims to work.

#![no_std]
#![forbid(unsafe_code)]
