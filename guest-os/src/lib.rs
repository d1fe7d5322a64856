//! The guest unikernel runtime and its apps (entry, heap, console log, time, idle). Not written yet: it arrives with the issue that hosts guests, and nothing here claims to run.

#![no_std]
#![forbid(unsafe_code)]
