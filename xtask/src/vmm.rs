//! `cargo xtask run --vmm firecracker|cloud-hypervisor`: an image on the VMMs users deploy on.
//! Both load the kernel by PVH; Firecracker gives it virtio-mmio (announced on the command line)
//! and watches the i8042 reset, cloud-hypervisor modern virtio-pci with MSI-X and an ACPI sleep
//! register, and the kernel drives all of these. The VMM gets the same tap network in a network
//! namespace as `--net tap` with QEMU. Its configuration is written next to the image either
//! way, so a machine without the VMM (or without hardware KVM, which both need) still gets the
//! files to take elsewhere.

use crate::pack::Image;
use crate::tapnet::{TapNamespace, TAP_IFNAME};
use anyhow::{bail, Context, Result};
use std::path::{Path, PathBuf};
use std::process::Command;

/// The MAC of the kernel's physical NIC (the one QEMU gives it too).
pub const NIC_MAC: &str = "52:54:00:12:34:56";

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Vmm {
    /// Firecracker (virtio-mmio NIC, i8042 power-off).
    Firecracker,
    /// cloud-hypervisor (modern virtio-pci NIC with MSI-X, ACPI power-off).
    CloudHypervisor,
}

impl Vmm {
    /// The VMM's program name.
    pub fn program(self) -> &'static str {
        match self {
            Vmm::Firecracker => "firecracker",
            Vmm::CloudHypervisor => "cloud-hypervisor",
        }
    }
}

/// What the VMM is given: the image's kernel and initrd, the kernel command line, memory, and
/// the tap device (inside the namespace) its NIC is attached to.
#[derive(Clone, Debug)]
pub struct VmSpec<'a> {
    pub kernel: &'a Path,
    pub initrd: Option<&'a Path>,
    pub cmdline: String,
    pub memory_mib: u32,
    pub tap: &'a str,
}

/// Firecracker's `--config-file` JSON: one vCPU, the kernel by PVH with the initrd, and one NIC
/// on the tap. Firecracker appends its own words (`virtio_mmio.device=...`) to `boot_args`; the
/// kernel reads that key and ignores the words it does not know.
pub fn firecracker_config(spec: &VmSpec<'_>) -> serde_json::Value {
    let mut boot = serde_json::json!({
        "kernel_image_path": spec.kernel.display().to_string(),
        "boot_args": spec.cmdline,
    });
    if let Some(initrd) = spec.initrd {
        boot["initrd_path"] = initrd.display().to_string().into();
    }
    serde_json::json!({
        "boot-source": boot,
        "drives": [],
        "machine-config": { "vcpu_count": 1, "mem_size_mib": spec.memory_mib, "smt": false },
        "network-interfaces": [
            { "iface_id": "eth0", "guest_mac": NIC_MAC, "host_dev_name": spec.tap }
        ]
    })
}

/// cloud-hypervisor's arguments: the same machine (its NIC is modern virtio-pci).
pub fn cloud_hypervisor_args(spec: &VmSpec<'_>) -> Vec<String> {
    let mut args = vec!["--kernel".to_string(), spec.kernel.display().to_string()];
    if let Some(initrd) = spec.initrd {
        args.extend(["--initramfs".to_string(), initrd.display().to_string()]);
    }
    args.extend([
        "--cmdline".to_string(),
        spec.cmdline.clone(),
        "--cpus".to_string(),
        "boot=1".to_string(),
        "--memory".to_string(),
        format!("size={}M", spec.memory_mib),
        "--net".to_string(),
        format!("tap={},mac={NIC_MAC}", spec.tap),
        "--serial".to_string(),
        "tty".to_string(),
        "--console".to_string(),
        "off".to_string(),
    ]);
    args
}

/// Why `vmm` cannot run here, or `None` if it can: it must be on the PATH, and both need
/// hardware KVM (`/dev/kvm` on a CPU with vmx/svm; PVM's `/dev/kvm` is not enough).
pub fn unavailable_reason(vmm: Vmm) -> Option<String> {
    let on_path = std::env::var_os("PATH")
        .is_some_and(|path| std::env::split_paths(&path).any(|dir| dir.join(vmm.program()).is_file()));
    if !on_path {
        return Some(format!("`{}` is not on the PATH", vmm.program()));
    }
    if !crate::qemu::host_has_hardware_virtualization() || !crate::qemu::kvm_usable() {
        return Some(format!(
            "{} needs hardware KVM (/dev/kvm on a CPU with vmx or svm); this host has none",
            vmm.program()
        ));
    }
    None
}

/// Writes the VMM's configuration for `image` next to it and returns the file: Firecracker's
/// JSON, or cloud-hypervisor's command line as a shell line.
pub fn write_config(vmm: Vmm, image: &Image, spec: &VmSpec<'_>) -> Result<PathBuf> {
    let (path, text) = match vmm {
        Vmm::Firecracker => {
            (image.dir.join("firecracker.json"), serde_json::to_string_pretty(&firecracker_config(spec))? + "\n")
        }
        Vmm::CloudHypervisor => {
            let mut line = Command::new(vmm.program());
            line.args(cloud_hypervisor_args(spec));
            (image.dir.join("cloud-hypervisor.sh"), crate::qemu::shell_line(&line) + "\n")
        }
    };
    std::fs::write(&path, text).with_context(|| format!("writing {}", path.display()))?;
    Ok(path)
}

/// Writes the configuration, then runs the VMM in `namespace` (whose tap it uses) with the
/// console on this terminal, or says why it cannot run here.
pub fn run(vmm: Vmm, image: &Image, cmdline: String, namespace: &TapNamespace) -> Result<()> {
    let spec = VmSpec {
        kernel: &image.kernel,
        initrd: image.initrd.as_deref(),
        cmdline,
        memory_mib: image.manifest.kernel.memory_mib,
        tap: TAP_IFNAME,
    };
    let path = write_config(vmm, image, &spec)?;
    println!("{} configuration: {}", vmm.program(), path.display());
    if let Some(why) = unavailable_reason(vmm) {
        bail!("cannot run {} here: {why}. The configuration above runs it elsewhere (see the README)", vmm.program());
    }
    let mut cmd: Command = namespace.command(vmm.program());
    match vmm {
        Vmm::Firecracker => cmd.args(["--no-api", "--config-file"]).arg(&path),
        Vmm::CloudHypervisor => cmd.args(cloud_hypervisor_args(&spec)),
    };
    println!("running {} in network namespace {} (tap {TAP_IFNAME})", vmm.program(), namespace.name);
    let status = cmd.status().with_context(|| format!("starting {}", vmm.program()))?;
    if !status.success() {
        bail!("{} exited with {status}", vmm.program());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec() -> VmSpec<'static> {
        VmSpec {
            kernel: Path::new("/images/x/kernel.elf"),
            initrd: Some(Path::new("/images/x/initrd.cpio")),
            cmdline: "log=info tx=copy".into(),
            memory_mib: 256,
            tap: TAP_IFNAME,
        }
    }

    #[test]
    fn firecracker_config_has_the_kernel_initrd_memory_and_nic() {
        let config = firecracker_config(&spec());
        assert_eq!(config["boot-source"]["kernel_image_path"], "/images/x/kernel.elf");
        assert_eq!(config["boot-source"]["initrd_path"], "/images/x/initrd.cpio");
        assert_eq!(config["boot-source"]["boot_args"], "log=info tx=copy");
        assert_eq!(config["machine-config"]["mem_size_mib"], 256);
        assert_eq!(config["machine-config"]["vcpu_count"], 1);
        assert_eq!(config["network-interfaces"][0]["host_dev_name"], TAP_IFNAME);
        assert_eq!(config["network-interfaces"][0]["guest_mac"], NIC_MAC);
        let no_initrd = firecracker_config(&VmSpec { initrd: None, ..spec() });
        assert!(no_initrd["boot-source"].get("initrd_path").is_none());
    }

    #[test]
    fn cloud_hypervisor_args_name_the_same_machine() {
        let args = cloud_hypervisor_args(&spec());
        let after = |flag: &str| args.iter().position(|a| a == flag).and_then(|i| args.get(i + 1)).cloned();
        assert_eq!(after("--kernel").as_deref(), Some("/images/x/kernel.elf"));
        assert_eq!(after("--initramfs").as_deref(), Some("/images/x/initrd.cpio"));
        assert_eq!(after("--cmdline").as_deref(), Some("log=info tx=copy"));
        assert_eq!(after("--memory").as_deref(), Some("size=256M"));
        assert_eq!(after("--net"), Some(format!("tap={TAP_IFNAME},mac={NIC_MAC}")));
        assert_eq!(after("--serial").as_deref(), Some("tty"));
    }

    #[test]
    fn a_missing_vmm_is_named() {
        // Neither VMM is installed on the machines the tests run on; where one is, this says so.
        for vmm in [Vmm::Firecracker, Vmm::CloudHypervisor] {
            if let Some(why) = unavailable_reason(vmm) {
                assert!(why.contains(vmm.program()), "{why}");
            }
        }
    }
}
