//! Mutation fuzzing of the isolation kernel's portable library, on stable Rust.
//!
//! `cargo xtask fuzz` runs the targets in [`targets`]: each feeds mutated inputs to one of the
//! kernel's hostile-input surfaces (instruction decoding, descriptor and pointer validation,
//! the ring protocol, the initrd's cpio, ELF and config formats, the PVH start info and memory
//! map, the vswitch) and checks the invariants that code promises, mostly by comparing it with
//! a reference model written independently in the target. The engine ([`engine`]) is small:
//! seeds, stacked byte mutations ([`mutate`]), and feedback from facts the targets report
//! ([`features`]) instead of compiler coverage, which stable Rust does not offer. Runs are
//! deterministic for a seed.

pub mod engine;
pub mod features;
pub mod mutate;
pub mod real;
pub mod rng;
pub mod source;
pub mod targets;
