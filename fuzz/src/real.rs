//! Real inputs to start from: what `cargo xtask build` packed under `target/images/`.
//!
//! Each image directory holds `initrd.cpio` (the image config and the guest ELF files) and
//! `image.cfg`, and the kernel ELF. Targets seed from these when they exist; without them
//! (a fresh checkout) they still have the valid structures they make in code.

use kernel_core::guest::cpio::Archive;
use std::path::Path;

#[derive(Clone, Debug, Default)]
pub struct RealInputs {
    /// Initrd archives, as packed.
    pub initrds: Vec<Vec<u8>>,
    /// Image configs.
    pub configs: Vec<Vec<u8>>,
    /// ELF files: guest apps from the initrds (each app once) and the kernel.
    pub elfs: Vec<Vec<u8>>,
}

impl RealInputs {
    /// Reads every `target/images/*/` directory under `dir`, in name order (so runs replay).
    pub fn load(dir: &Path) -> RealInputs {
        let mut real = RealInputs::default();
        let Ok(entries) = std::fs::read_dir(dir) else {
            return real;
        };
        let mut images: Vec<_> = entries.filter_map(|e| e.ok().map(|e| e.path())).filter(|p| p.is_dir()).collect();
        images.sort();
        for image in images {
            if let Ok(initrd) = std::fs::read(image.join("initrd.cpio")) {
                for entry in Archive::new(&initrd).entries().flatten() {
                    if entry.name.starts_with(hypercall_abi::initrd::APP_DIR)
                        && !real.elfs.iter().any(|e| e == entry.data)
                    {
                        real.elfs.push(entry.data.to_vec());
                    }
                }
                real.initrds.push(initrd);
            }
            if let Ok(config) = std::fs::read(image.join(hypercall_abi::initrd::CONFIG_FILE)) {
                real.configs.push(config);
            }
            if let Ok(kernel) = std::fs::read(image.join("kernel.elf")) {
                if !real.elfs.contains(&kernel) {
                    real.elfs.push(kernel);
                }
            }
        }
        real
    }

    /// A one-line summary for the run's header.
    pub fn describe(&self) -> String {
        format!("{} initrds, {} image configs, {} ELF files", self.initrds.len(), self.configs.len(), self.elfs.len())
    }
}
