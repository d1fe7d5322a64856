//! The contract between the isolation kernel, its guests and the host harness.
//!
//! Every number that two sides must agree on lives here and nowhere else. This crate has no
//! code that touches hardware, so it builds for any target and its tests run on the host.
//!
//! What is defined so far:
//! - [`ABI_VERSION`], which guests check against the boot-info page;
//! - [`vi`]: the virtual instructions (ports, argument registers, results, errors, misuse);
//! - [`layout`]: where things sit in every guest's address space;
//! - [`boot_info`]: the read-only boot-info page, encoded and decoded field by field;
//! - [`initrd`]: what the initrd that carries guest images holds, and the image config format;
//! - [`guest`] (bare-metal guests only): the wrappers that issue the virtual instructions;
//! - [`host`]: how the kernel ends QEMU and what its exit status means to `cargo xtask`;
//! - [`cmdline`]: the keys of the kernel command line that the harness sets.
//!
//! - [`vnic`]: the virtual NIC's shared page, rings, descriptors and slots.

#![no_std]
// Only the guest-side wrappers (inline `out`) need unsafe code, and they opt in explicitly.
#![deny(unsafe_code)]

pub mod boot_info;
#[cfg(all(target_arch = "x86_64", target_os = "none"))]
pub mod guest;
pub mod initrd;
pub mod layout;
pub mod vi;
pub mod vnic;

/// Version of the guest/kernel ABI. Bumped on every incompatible change of this crate.
/// 2: descriptor flags for checksum offload (`vnic::desc_flags`) and the `offloads` word.
pub const ABI_VERSION: u32 = 2;

pub mod host {
    //! The kernel ends QEMU through the `isa-debug-exit` device: writing `v` to its port makes
    //! QEMU exit with status `(v << 1) | 1`. These are the values the kernel writes and what
    //! `cargo xtask` concludes from the status it sees. A status that is none of these (QEMU's
    //! own 0 after a triple fault with `-no-reboot`, 1 on a QEMU error, a signal) is a failure.
    //!
    //! Machines without the device (Firecracker, cloud-hypervisor) are powered off through ACPI
    //! or the i8042 reset, which carry no status: there the harness reads the verdict from the
    //! console, the [`VERDICT_PREFIX`] line the kernel prints before it ends the machine and
    //! the guests' `summary:` lines.

    /// Prefix of the line the kernel prints just before it ends the machine: `verdict: NAME`
    /// with [`KernelExit::name`].
    pub const VERDICT_PREFIX: &str = "verdict:";

    /// I/O port of QEMU's `isa-debug-exit` device (`-device isa-debug-exit,iobase=0xf4,iosize=4`).
    pub const DEBUG_EXIT_PORT: u16 = 0xf4;
    /// Width in bytes of the `isa-debug-exit` device's I/O window.
    pub const DEBUG_EXIT_IOSIZE: u16 = 4;

    /// Why the kernel ended the machine.
    #[derive(Clone, Copy, Debug, PartialEq, Eq)]
    #[repr(u8)]
    pub enum KernelExit {
        /// Ran to its end (shutdown deadline reached, or every guest finished as expected).
        Success = 0x10,
        /// Finished, but the image's expectations did not hold, or the configuration was bad.
        Failure = 0x11,
        /// A Rust panic in the kernel.
        Panic = 0x12,
        /// A CPU exception in kernel mode (page fault, general protection, double fault, ...).
        KernelFault = 0x13,
    }

    impl KernelExit {
        /// Every exit reason, for lookups by value.
        pub const ALL: [KernelExit; 4] =
            [KernelExit::Success, KernelExit::Failure, KernelExit::Panic, KernelExit::KernelFault];

        /// The word on the [`VERDICT_PREFIX`] line.
        pub const fn name(self) -> &'static str {
            match self {
                KernelExit::Success => "success",
                KernelExit::Failure => "failure",
                KernelExit::Panic => "panic",
                KernelExit::KernelFault => "kernel_fault",
            }
        }

        /// The reason a [`VERDICT_PREFIX`] line names.
        pub fn from_name(name: &str) -> Option<KernelExit> {
            Self::ALL.into_iter().find(|reason| reason.name() == name)
        }

        /// The value the kernel writes to [`DEBUG_EXIT_PORT`].
        pub const fn code(self) -> u8 {
            self as u8
        }

        /// The exit status QEMU reports to the host for this reason.
        pub const fn qemu_status(self) -> i32 {
            ((self as i32) << 1) | 1
        }

        /// Which reason a QEMU exit status stands for, if any.
        pub fn from_qemu_status(status: i32) -> Option<KernelExit> {
            Self::ALL.into_iter().find(|reason| reason.qemu_status() == status)
        }
    }
}

pub mod cmdline {
    //! Keys of the kernel command line (`-append`), written as `key=value` separated by spaces.

    /// Maximum log level: `error`, `warn`, `info`, `debug` or `trace`.
    pub const LOG: &str = "log";
    /// Seconds after boot at which the kernel prints its `stats:` line and exits with success.
    pub const SHUTDOWN_AFTER: &str = "shutdown_after";
    /// Test only: make the kernel fault on purpose after boot (see [`TEST_FAULT_KINDS`]).
    pub const TEST_FAULT: &str = "test_fault";
    /// Values accepted by [`TEST_FAULT`].
    pub const TEST_FAULT_KINDS: [&str; 3] = ["page_fault", "invalid_opcode", "panic"];
    /// Transmit path: a [`TxMode`] by its [`TxMode::name`].
    pub const TX: &str = "tx";
    /// Per-packet stage stamps: `on` or `off` (the default; a normal run pays nothing).
    pub const STAMPS: &str = "stamps";
    /// Checksum offload through the vNIC (`crate::vnic::desc_flags`): `on` or `off`; also
    /// whether the kernel negotiates the physical NIC's checksum offloads.
    pub const CSUM: &str = "csum";
    /// Whether checksum offload is on when the command line does not say: on, as it costs
    /// fewer instructions per echo at every size measured (`cargo xtask bench dispatch --csum`).
    pub const CSUM_DEFAULT: bool = true;
    /// What the x87/MMX/SSE unit is to guests (see [`FPU_POLICIES`]).
    pub const FPU: &str = "fpu";
    /// Values accepted by [`FPU`]: `fault` (the default; guests are built soft-float, so any
    /// x87, MMX or SSE instruction stops the guest) or `save` (each guest has its own x87/MMX/SSE
    /// registers, saved and restored by the kernel on every switch between guests).
    pub const FPU_POLICIES: [&str; 2] = ["fault", "save"];
    /// A virtio-mmio device, in Linux's form `SIZE@BASE:IRQ[:ID]` (`4K@0xc0001000:5`), one word
    /// per device: how Firecracker and QEMU's `microvm` (with `acpi=off`) announce them.
    pub const VIRTIO_MMIO_DEVICE: &str = "virtio_mmio.device";
    /// Prefix of the line the kernel prints with its counters, as `name=value` pairs.
    pub const STATS_PREFIX: &str = "stats:";
    /// What the `stats:` line covers: `totals` (the default: guests' own counters summed) or
    /// `per-guest` (also one [`GUEST_STATS_PREFIX`] line per guest after each: the kernel's counters of it, and
    /// for a guest with a NIC the counters it publishes).
    pub const STATS: &str = "stats";
    /// Values accepted by [`STATS`].
    pub const STATS_KINDS: [&str; 2] = ["totals", "per-guest"];
    /// Prefix of the per-guest lines (`stats=per-guest`): `guest-stats: id=N name=NAME` and the
    /// guest's own counters as `name=value` pairs.
    pub const GUEST_STATS_PREFIX: &str = "guest-stats:";

    /// How guests' packets reach the NIC: the value of [`TX`].
    #[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
    pub enum TxMode {
        /// Denali's baseline: copied into a kernel FIFO buffer, then into the NIC's buffer.
        Copy,
        /// Zero copy: the guest's page is write-protected and handed to the NIC.
        Cow,
        /// Zero copy without page protection: the kernel copies the headers it checks and hands
        /// the NIC that copy chained with the guest's payload in place (frames up to 1 KiB go
        /// as on the copy path). The default: never costlier than copy, cheaper above 1 KiB,
        /// cheaper than COW at every size (README, "The transmit paths").
        #[default]
        Split,
    }

    impl TxMode {
        pub const ALL: [TxMode; 3] = [TxMode::Copy, TxMode::Cow, TxMode::Split];

        /// The word on the command line (and in the harness's reports).
        pub const fn name(self) -> &'static str {
            match self {
                TxMode::Copy => "copy",
                TxMode::Cow => "cow",
                TxMode::Split => "split",
            }
        }

        pub fn from_name(name: &str) -> Option<TxMode> {
            Self::ALL.into_iter().find(|mode| mode.name() == name)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::host::KernelExit;

    #[test]
    fn exit_status_round_trips_and_never_collides_with_qemu_own_statuses() {
        for reason in KernelExit::ALL {
            let status = reason.qemu_status();
            assert_eq!(KernelExit::from_qemu_status(status), Some(reason));
            // 0: QEMU exited by itself (triple fault with -no-reboot); 1: QEMU error.
            assert!(status > 1);
        }
        assert_eq!(KernelExit::Success.qemu_status(), 33);
        assert_eq!(KernelExit::from_qemu_status(0), None);
        assert_eq!(KernelExit::from_qemu_status(1), None);
        for reason in KernelExit::ALL {
            assert_eq!(KernelExit::from_name(reason.name()), Some(reason));
        }
        assert_eq!(KernelExit::from_name("Success"), None);
    }

    #[test]
    fn tx_modes_round_trip_by_name() {
        use super::cmdline::TxMode;
        for mode in TxMode::ALL {
            assert_eq!(TxMode::from_name(mode.name()), Some(mode));
        }
        assert_eq!(TxMode::from_name("cow"), Some(TxMode::Cow));
        assert_eq!(TxMode::from_name("Copy"), None);
    }
}
