//! Starting QEMU: choosing the accelerator, building the command line, running it with a
//! timeout and capturing the serial console.

use anyhow::{bail, Context, Result};
use hypercall_abi::host::{KernelExit, DEBUG_EXIT_IOSIZE, DEBUG_EXIT_PORT};
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

pub const QEMU: &str = "qemu-system-x86_64";
/// qboot starts a PVH kernel in about half the time SeaBIOS takes (see shared/MACHINE.md).
const QBOOT: &str = "/usr/share/qemu/qboot.rom";

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum AccelChoice {
    /// KVM when the host CPU has hardware virtualization (vmx/svm), TCG otherwise.
    Auto,
    /// Hardware virtualization through /dev/kvm (stamps count cycles).
    Kvm,
    /// QEMU's emulator (with -icount, stamps count executed instructions).
    Tcg,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Accel {
    Kvm,
    Tcg,
}

impl Accel {
    pub fn name(self) -> &'static str {
        match self {
            Accel::Kvm => "kvm",
            Accel::Tcg => "tcg",
        }
    }
}

/// Whether the host CPU has hardware virtualization. `/dev/kvm` alone is not enough: on PVM
/// hosts it exists but runs our ring-0 code ~100x slower than TCG.
pub fn host_has_hardware_virtualization() -> bool {
    std::fs::read_to_string("/proc/cpuinfo").is_ok_and(|info| {
        info.lines().filter(|l| l.starts_with("flags")).any(|l| l.split_whitespace().any(|f| f == "vmx" || f == "svm"))
    })
}

pub fn kvm_usable() -> bool {
    std::fs::OpenOptions::new().read(true).write(true).open("/dev/kvm").is_ok()
}

pub fn resolve_accel(choice: AccelChoice) -> Result<Accel> {
    match choice {
        AccelChoice::Tcg => Ok(Accel::Tcg),
        AccelChoice::Kvm if kvm_usable() => Ok(Accel::Kvm),
        AccelChoice::Kvm => bail!("--accel kvm: /dev/kvm is missing or not accessible"),
        AccelChoice::Auto if host_has_hardware_virtualization() && kvm_usable() => Ok(Accel::Kvm),
        AccelChoice::Auto => Ok(Accel::Tcg),
    }
}

/// The physical NIC's backend.
#[derive(Clone, Debug)]
pub enum NetBackend {
    /// QEMU's user-mode network (slirp), with UDP and TCP port forwards `(host port, guest IP,
    /// guest port)` from 127.0.0.1.
    User { forwards: Vec<(u16, [u8; 4], u16)>, tcp_forwards: Vec<(u16, [u8; 4], u16)> },
    /// A tap device (which must exist in the namespace QEMU runs in).
    Tap { ifname: String },
}

/// The machine QEMU emulates.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum Machine {
    /// The PC (i440FX) with PCI: the NIC is virtio-pci (legacy or modern, see --nic).
    #[default]
    Pc,
    /// QEMU's microvm (Firecracker's model, acpi=off): no PCI; the NIC is virtio-mmio, announced
    /// on the kernel command line, its interrupt through the I/O APIC.
    Microvm,
}

impl Machine {
    pub fn name(self) -> &'static str {
        match self {
            Machine::Pc => "pc",
            Machine::Microvm => "microvm",
        }
    }
}

/// How the physical NIC (virtio-net) sits on the machine's bus; virtio-mmio means the
/// `microvm` machine, the PCI transports the `pc` one.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum NicTransport {
    /// Legacy (transitional) virtio-pci: registers in an I/O BAR (QEMU `disable-modern=on`).
    #[default]
    Legacy,
    /// Modern virtio 1.x PCI: structures in memory BARs, MSI-X (QEMU `disable-legacy=on`; what
    /// cloud-hypervisor and Firecracker with --enable-pci offer).
    Modern,
    /// virtio-mmio version 2 on microvm (chosen with --machine microvm).
    #[value(skip)]
    Mmio,
}

impl NicTransport {
    /// How the kernel names the transport in its `nic:` line.
    pub fn kernel_name(self) -> &'static str {
        match self {
            NicTransport::Legacy => "legacy virtio-pci",
            NicTransport::Modern => "modern virtio-pci",
            NicTransport::Mmio => "virtio-mmio",
        }
    }

    /// The machine this transport exists on.
    pub fn machine(self) -> Machine {
        match self {
            NicTransport::Legacy | NicTransport::Modern => Machine::Pc,
            NicTransport::Mmio => Machine::Microvm,
        }
    }

    /// QEMU's `-device` for the NIC on `netdev` (PCI ones without an option ROM: it is not
    /// installed without recommends, and nothing boots from it).
    fn qemu_device(self, netdev: &str, mac: &str) -> String {
        match self {
            NicTransport::Legacy => format!("virtio-net-pci,netdev={netdev},disable-modern=on,romfile=,mac={mac}"),
            NicTransport::Modern => format!("virtio-net-pci,netdev={netdev},disable-legacy=on,romfile=,mac={mac}"),
            NicTransport::Mmio => format!("virtio-net-device,netdev={netdev},mac={mac}"),
        }
    }
}

/// How the machine lets the kernel end it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum PowerOff {
    /// QEMU's isa-debug-exit device: the exit status carries the kernel's verdict.
    #[default]
    DebugExit,
    /// No isa-debug-exit (as cloud-hypervisor): the kernel powers off through ACPI S5; the
    /// verdict is read from the console.
    Acpi,
    /// No isa-debug-exit and no ACPI tables (as Firecracker): the kernel resets through the
    /// i8042, which -no-reboot turns into QEMU's exit; the verdict is read from the console.
    I8042,
}

/// Everything that varies between QEMU runs.
pub struct QemuConfig<'a> {
    pub kernel: &'a Path,
    pub initrd: Option<&'a Path>,
    pub accel: Accel,
    pub memory_mib: u32,
    pub append: String,
    pub gdb: bool,
    /// TCG only: `-icount shift=0`, so the TSC counts executed instructions (deterministic).
    pub icount: bool,
    /// The physical NIC's network, if there is a NIC.
    pub net: Option<NetBackend>,
    /// How the NIC is attached, which also picks the machine (virtio-mmio: microvm).
    pub nic: NicTransport,
    /// Record what crosses the physical NIC to this pcap file.
    pub pcap: Option<&'a Path>,
    /// Run QEMU inside this network namespace (`ip netns exec`), for the tap backend.
    pub netns: Option<&'a str>,
    /// Make the NIC hold transmitted frames this long before sending them (virtio-net's
    /// `tx=timer`), so that zero-copy frames stay in flight long after their doorbell: the
    /// hostile tests need frames at the NIC when they attack. `None`: send at once.
    pub nic_tx_delay: Option<Duration>,
    /// The devices the kernel can end the machine with.
    pub power_off: PowerOff,
}

thread_local! {
    /// Words added to every kernel command line [`QemuConfig::for_image`] makes on this thread
    /// (see [`with_kernel_args`]).
    static EXTRA_KERNEL_ARGS: std::cell::RefCell<String> = const { std::cell::RefCell::new(String::new()) };
}

/// Runs `f` with `words` added to the kernel command line of every run it makes through
/// [`QemuConfig::for_image`] (for the tests that repeat others with a kernel option on).
pub fn with_kernel_args<T>(words: &str, f: impl FnOnce() -> T) -> T {
    let before = EXTRA_KERNEL_ARGS.with(|extra| extra.replace(words.to_string()));
    let result = f();
    EXTRA_KERNEL_ARGS.with(|extra| *extra.borrow_mut() = before);
    result
}

impl<'a> QemuConfig<'a> {
    /// A plain TCG-or-KVM run of a packed image: no NIC, no debugger, no icount.
    pub fn for_image(image: &'a crate::pack::Image, accel: Accel, append: String) -> Self {
        let extra = EXTRA_KERNEL_ARGS.with(|extra| extra.borrow().clone());
        let append = if extra.is_empty() { append } else { format!("{append} {extra}") };
        QemuConfig {
            kernel: &image.kernel,
            initrd: image.initrd.as_deref(),
            accel,
            memory_mib: image.manifest.kernel.memory_mib,
            append,
            gdb: false,
            icount: false,
            net: None,
            nic: NicTransport::Legacy,
            pcap: None,
            netns: None,
            nic_tx_delay: None,
            power_off: PowerOff::DebugExit,
        }
    }

    pub fn command(&self) -> Command {
        let mut cmd = match self.netns {
            Some(ns) => {
                let mut cmd = Command::new("ip");
                cmd.args(["netns", "exec", ns, QEMU]);
                cmd
            }
            None => Command::new(QEMU),
        };
        match self.nic.machine() {
            Machine::Pc => {
                let machine = if self.power_off == PowerOff::I8042 { "pc,acpi=off" } else { "pc" };
                cmd.args(["-M", machine]);
                if Path::new(QBOOT).exists() {
                    cmd.args(["-bios", QBOOT]);
                }
            }
            // Without ACPI, QEMU appends `virtio_mmio.device=` words for the devices to the
            // command line (as Firecracker does) and has one I/O APIC; qboot is its firmware.
            // Version 2 (virtio 1.x) transports, as Firecracker's; QEMU's default is legacy.
            Machine::Microvm => {
                cmd.args(["-M", "microvm,acpi=off", "-global", "virtio-mmio.force-legacy=false"]);
            }
        }
        cmd.args(["-nodefaults", "-no-reboot", "-display", "none", "-monitor", "none"]);
        match self.accel {
            Accel::Tcg => cmd.args(["-accel", "tcg", "-cpu", "max"]),
            // PVM (and some hosts) refuse to set IA32_ARCH_CAPABILITIES; the kernel needs none of it.
            Accel::Kvm => cmd.args(["-accel", "kvm", "-cpu", "host,-arch-capabilities"]),
        };
        cmd.args(["-smp", "1", "-m"]).arg(format!("{}M", self.memory_mib));
        cmd.args(["-serial", "stdio"]);
        if self.power_off == PowerOff::DebugExit {
            cmd.args(["-device"])
                .arg(format!("isa-debug-exit,iobase={DEBUG_EXIT_PORT:#x},iosize={DEBUG_EXIT_IOSIZE:#x}"));
        }
        cmd.arg("-kernel").arg(self.kernel);
        if let Some(initrd) = self.initrd {
            cmd.arg("-initrd").arg(initrd);
        }
        cmd.arg("-append").arg(&self.append);
        if self.gdb {
            cmd.args(["-s", "-S"]);
        }
        if self.icount && self.accel == Accel::Tcg {
            cmd.args(["-icount", "shift=0"]);
        }
        if let Some(net) = &self.net {
            let netdev = match net {
                NetBackend::User { forwards, tcp_forwards } => {
                    // slirp on the user plan's network, itself at the plan's gateway.
                    let plan = crate::manifest::NetPlan::USER;
                    let mut netdev =
                        format!("user,id=net0,net={},host={}", plan.cidr(), crate::manifest::format_ip(plan.gateway()));
                    for (protocol, list) in [("udp", forwards), ("tcp", tcp_forwards)] {
                        for (host_port, [a, b, c, d], guest_port) in list {
                            netdev +=
                                &format!(",hostfwd={protocol}:127.0.0.1:{host_port}-{a}.{b}.{c}.{d}:{guest_port}");
                        }
                    }
                    netdev
                }
                NetBackend::Tap { ifname } => format!("tap,id=net0,ifname={ifname},script=no,downscript=no"),
            };
            cmd.arg("-netdev").arg(netdev);
            let mut device = self.nic.qemu_device("net0", "52:54:00:12:34:56");
            if let Some(delay) = self.nic_tx_delay {
                device += &format!(",tx=timer,x-txtimer={}", delay.as_nanos().min(u128::from(u32::MAX)));
            }
            cmd.arg("-device").arg(device);
            if let Some(pcap) = self.pcap {
                cmd.arg("-object").arg(format!("filter-dump,id=dump0,netdev=net0,file={}", pcap.display()));
            }
        }
        cmd
    }
}

/// The command as one shell line, for humans and for `qemu-cmd.txt`.
pub fn shell_line(cmd: &Command) -> String {
    std::iter::once(cmd.get_program())
        .chain(cmd.get_args())
        .map(|a| {
            let a = a.to_string_lossy();
            if a.chars().all(|c| c.is_ascii_alphanumeric() || "-_=./,:+".contains(c)) {
                a.into_owned()
            } else {
                format!("'{}'", a.replace('\'', "'\\''"))
            }
        })
        .collect::<Vec<_>>()
        .join(" ")
}

/// How a QEMU run ended.
#[derive(Debug)]
pub struct Outcome {
    /// QEMU's exit status, `None` if killed by the timeout or a signal.
    pub status: Option<i32>,
    pub timed_out: bool,
    /// Everything the kernel wrote to the serial console (and QEMU to stderr, at the end).
    pub log: String,
    pub elapsed: Duration,
}

impl Outcome {
    /// Why the kernel ended the machine: from QEMU's exit status (`isa-debug-exit`), or, where
    /// the machine ended with status 0 (ACPI power-off, the i8042 reset with `-no-reboot`), from
    /// the console ([`crate::checks::console_verdict`]).
    pub fn exit(&self) -> Option<KernelExit> {
        match self.status {
            Some(0) => crate::checks::console_verdict(&self.log),
            status => status.and_then(KernelExit::from_qemu_status),
        }
    }

    /// One line saying how the run ended.
    pub fn describe(&self) -> String {
        match (self.timed_out, self.status, self.exit()) {
            (true, _, _) => format!("timed out after {:.1} s and was killed", self.elapsed.as_secs_f64()),
            (false, Some(0), Some(reason)) => format!(
                "kernel exit {reason:?} after {:.2} s (no exit device: read from its verdict and summary lines)",
                self.elapsed.as_secs_f64()
            ),
            (false, _, Some(reason)) => format!("kernel exit {reason:?} after {:.2} s", self.elapsed.as_secs_f64()),
            (false, Some(status), None) => format!("QEMU exited with status {status}, not a kernel exit code"),
            (false, None, None) => "QEMU was killed by a signal".to_string(),
        }
    }
}

/// A running QEMU whose console is captured (and optionally echoed), and whose serial input
/// the harness can write to (the kernel ends the run cleanly when it reads `q`).
pub struct Session {
    child: std::process::Child,
    stdin: Option<std::process::ChildStdin>,
    log: Arc<Mutex<String>>,
    reader: Option<std::thread::JoinHandle<()>>,
    stderr_reader: Option<std::thread::JoinHandle<String>>,
    start: Instant,
    deadline: Instant,
}

impl Session {
    /// Starts QEMU; it is killed if it runs past `timeout`.
    pub fn start(mut cmd: Command, timeout: Duration, echo: bool) -> Result<Session> {
        crate::setup::ensure_qemu()?;
        let start = Instant::now();
        let mut child = cmd
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .with_context(|| format!("starting {QEMU} (is it installed? `apt-get install qemu-system-x86`)"))?;
        let log = Arc::new(Mutex::new(String::new()));
        let stdout = child.stdout.take().expect("stdout is piped");
        let reader = {
            let log = Arc::clone(&log);
            std::thread::spawn(move || {
                for line in BufReader::new(stdout).split(b'\n').map_while(Result::ok) {
                    let line = String::from_utf8_lossy(&line).trim_end_matches('\r').to_string();
                    if echo {
                        println!("{line}");
                        let _ = std::io::stdout().flush();
                    }
                    let mut log = log.lock().expect("log lock");
                    log.push_str(&line);
                    log.push('\n');
                }
            })
        };
        let mut stderr = child.stderr.take().expect("stderr is piped");
        let stderr_reader = std::thread::spawn(move || {
            let mut text = String::new();
            let _ = std::io::Read::read_to_string(&mut stderr, &mut text);
            text
        });
        let deadline = start.checked_add(timeout).unwrap_or(start + Duration::from_secs(86_400 * 365));
        Ok(Session {
            stdin: child.stdin.take(),
            child,
            log,
            reader: Some(reader),
            stderr_reader: Some(stderr_reader),
            start,
            deadline,
        })
    }

    /// QEMU's process id (`ip netns exec` execs QEMU in its own process).
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The console as it grows, for a reader on another thread (`run --metrics`).
    pub fn shared_log(&self) -> Arc<Mutex<String>> {
        Arc::clone(&self.log)
    }

    /// The console so far.
    pub fn log(&self) -> String {
        self.log.lock().expect("log lock").clone()
    }

    /// Waits until `ready` holds for the console log; false if QEMU ended or time ran out first.
    pub fn wait_for(&mut self, timeout: Duration, ready: impl Fn(&str) -> bool) -> bool {
        let until = Instant::now() + timeout;
        loop {
            if ready(&self.log.lock().expect("log lock")) {
                return true;
            }
            if Instant::now() >= until.min(self.deadline) || matches!(self.child.try_wait(), Ok(Some(_))) {
                return ready(&self.log.lock().expect("log lock"));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// The QEMU serial input, for a caller that forwards its own stdin.
    pub fn take_stdin(&mut self) -> Option<std::process::ChildStdin> {
        self.stdin.take()
    }

    /// Asks the kernel to end the run (it reads `q` on its console).
    pub fn request_quit(&mut self) {
        if let Some(stdin) = self.stdin.as_mut() {
            let _ = stdin.write_all(b"q");
            let _ = stdin.flush();
        }
    }

    /// Waits for QEMU to end (killing it at the session's deadline) and returns how it ended.
    pub fn finish(mut self) -> Result<Outcome> {
        let mut timed_out = false;
        let status = loop {
            if let Some(status) = self.child.try_wait()? {
                break status;
            }
            if Instant::now() >= self.deadline {
                timed_out = true;
                let _ = self.child.kill();
                break self.child.wait()?;
            }
            std::thread::sleep(Duration::from_millis(20));
        };
        let elapsed = self.start.elapsed();
        drop(self.stdin.take());
        if let Some(reader) = self.reader.take() {
            let _ = reader.join();
        }
        let stderr_text = self.stderr_reader.take().and_then(|r| r.join().ok()).unwrap_or_default();
        let mut log = std::mem::take(&mut *self.log.lock().expect("log lock"));
        if !stderr_text.trim().is_empty() {
            log.push_str("--- qemu stderr ---\n");
            log.push_str(&stderr_text);
        }
        Ok(Outcome { status: if timed_out { None } else { status.code() }, timed_out, log, elapsed })
    }
}

impl Drop for Session {
    fn drop(&mut self) {
        if matches!(self.child.try_wait(), Ok(None)) {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// Runs QEMU to its end, capturing the console; kills it after `timeout`. With `echo`, console
/// lines are also printed as they arrive.
pub fn run_captured(cmd: Command, timeout: Duration, echo: bool) -> Result<Outcome> {
    Session::start(cmd, timeout, echo)?.finish()
}

/// Writes the exact command next to the image, so it can be rerun by hand.
pub fn save_command(image_dir: &Path, cmd: &Command) -> Result<PathBuf> {
    let path = image_dir.join("qemu-cmd.txt");
    std::fs::write(&path, shell_line(cmd) + "\n")?;
    Ok(path)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn command_has_exit_device_timeout_safe_options_and_kernel() {
        let config = |nic| QemuConfig {
            kernel: Path::new("/tmp/k.elf"),
            initrd: None,
            accel: Accel::Tcg,
            memory_mib: 64,
            append: "log=info shutdown_after=3".into(),
            gdb: false,
            icount: false,
            net: Some(NetBackend::User {
                forwards: vec![(7000, [10, 0, 2, 16], 7)],
                tcp_forwards: vec![(7000, [10, 0, 2, 16], 7), (8080, [10, 0, 2, 16], 80)],
            }),
            nic,
            pcap: None,
            netns: None,
            nic_tx_delay: None,
            power_off: PowerOff::DebugExit,
        };
        let line = shell_line(&config(NicTransport::Legacy).command());
        assert!(line.contains("-device isa-debug-exit,iobase=0xf4,iosize=0x4"), "{line}");
        assert!(line.contains("-no-reboot"));
        assert!(line.contains("-accel tcg -cpu max"));
        assert!(line.contains("-kernel /tmp/k.elf -append 'log=info shutdown_after=3'"), "{line}");
        assert!(!line.contains(" -S"));
        assert!(
            line.contains("user,id=net0,net=10.0.0.0/16,host=10.0.2.2,hostfwd=udp:127.0.0.1:7000-10.0.2.16:7"),
            "{line}"
        );
        assert!(
            line.contains("hostfwd=tcp:127.0.0.1:7000-10.0.2.16:7,hostfwd=tcp:127.0.0.1:8080-10.0.2.16:80"),
            "{line}"
        );
        assert!(line.contains("virtio-net-pci,netdev=net0,disable-modern=on"), "{line}");
        assert!(line.contains("qemu-system-x86_64 -M pc -"), "{line}");
        let modern = shell_line(&config(NicTransport::Modern).command());
        assert!(modern.contains("-device virtio-net-pci,netdev=net0,disable-legacy=on,romfile=,mac="), "{modern}");
        let mmio = shell_line(&config(NicTransport::Mmio).command());
        assert!(mmio.contains("-M microvm,acpi=off -global virtio-mmio.force-legacy=false -nodefaults"), "{mmio}");
        assert!(mmio.contains("-device virtio-net-device,netdev=net0,mac="), "{mmio}");
        assert!(!mmio.contains("-bios") && !mmio.contains("virtio-net-pci"), "{mmio}");
        let mut cfg = config(NicTransport::Legacy);
        cfg.power_off = PowerOff::Acpi;
        let acpi = shell_line(&cfg.command());
        assert!(acpi.contains("-M pc ") && !acpi.contains("isa-debug-exit"), "{acpi}");
        cfg.power_off = PowerOff::I8042;
        let i8042 = shell_line(&cfg.command());
        assert!(i8042.contains("-M pc,acpi=off ") && !i8042.contains("isa-debug-exit"), "{i8042}");
        assert!(i8042.contains("-no-reboot"), "the i8042 reset must end QEMU: {i8042}");
    }

    #[test]
    fn statuses_are_described() {
        let o = Outcome { status: Some(33), timed_out: false, log: String::new(), elapsed: Duration::from_secs(1) };
        assert_eq!(o.exit(), Some(KernelExit::Success));
        let o = Outcome { status: Some(0), timed_out: false, log: String::new(), elapsed: Duration::from_secs(1) };
        assert!(o.describe().contains("not a kernel exit code"));
        // Status 0 with the kernel's verdict on the console: a power-off without isa-debug-exit.
        let log = "summary: guest 0 a: exited 1; expected exit:0 (EXPECTATION FAILED); cpu 1 ms\nverdict: failure\n";
        let o = Outcome { status: Some(0), timed_out: false, log: log.into(), elapsed: Duration::from_secs(1) };
        assert_eq!(o.exit(), Some(KernelExit::Failure));
        assert!(o.describe().contains("read from its verdict and summary lines"), "{}", o.describe());
        // An exit status wins over the console.
        let o =
            Outcome { status: Some(35), timed_out: false, log: "verdict: success\n".into(), elapsed: Duration::ZERO };
        assert_eq!(o.exit(), Some(KernelExit::Failure));
    }
}
