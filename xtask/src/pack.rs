//! Building the kernel and packing images into `target/images/NAME/`.

use crate::initrd::{corrupt_elf, CpioWriter};
use crate::manifest::{image_names, manifest_path, Guest, Manifest, NetPlan};
use anyhow::{bail, Context, Result};
use hypercall_abi::initrd::{APP_DIR, CONFIG_FILE};
use std::path::{Path, PathBuf};
use std::process::Command;

pub const KERNEL_TARGET: &str = "x86_64-unknown-none";

/// The workspace root (the parent of `xtask/`).
pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("xtask lives inside the workspace").to_path_buf()
}

pub fn images_dir() -> PathBuf {
    workspace_root().join("images")
}

fn cargo() -> Command {
    Command::new(std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into()))
}

/// Runs `cargo build --release` for the bare-metal target with its own rustflags and target
/// directory (so kernel and guest flags never mix), and returns the release output directory.
fn build_bare_metal(what: &str, rustflags: &[&str], target_subdir: &str, selection: &[&str]) -> Result<PathBuf> {
    crate::setup::ensure_target()?;
    let root = workspace_root();
    let target_dir = root.join("target").join(target_subdir);
    let status = cargo()
        .current_dir(&root)
        .env_remove("RUSTFLAGS")
        .env("CARGO_ENCODED_RUSTFLAGS", rustflags.join("\x1f"))
        .args(["build", "--release"])
        .args(selection)
        .args(["--target", KERNEL_TARGET])
        .arg("--target-dir")
        .arg(&target_dir)
        .status()
        .with_context(|| format!("running cargo to build the {what}"))?;
    if !status.success() {
        bail!("building the {what} failed ({status})");
    }
    Ok(target_dir.join(KERNEL_TARGET).join("release"))
}

/// Runs clippy with warnings denied over the host crates and over the bare-metal kernel and
/// guests (each in the target directory of its build, so the two do not rebuild each other).
/// The guest-facing kernel modules deny `unwrap`, `expect`, indexing and unchecked arithmetic.
pub fn clippy() -> Result<()> {
    crate::setup::ensure_target()?;
    let root = workspace_root();
    let run = |what: &str, args: &[&str]| -> Result<()> {
        let status = cargo()
            .current_dir(&root)
            .env_remove("RUSTFLAGS")
            .arg("clippy")
            .args(args)
            .args(["--", "-D", "warnings"])
            .status()
            .with_context(|| format!("running cargo clippy on the {what}"))?;
        if !status.success() {
            bail!("cargo clippy found problems in the {what}");
        }
        Ok(())
    };
    run("host crates", &["--all-targets"])?;
    for (what, package, subdir) in [("kernel", "isolation-kernel", "kernel"), ("guest apps", "guest-os", "guest")] {
        let target_dir = root.join("target").join(subdir);
        let target_dir = target_dir.to_str().context("target directory is not UTF-8")?;
        run(
            what,
            &["--release", "--package", package, "--bins", "--target", KERNEL_TARGET, "--target-dir", target_dir],
        )?;
    }
    Ok(())
}

/// Builds the kernel ELF and returns its path.
///
/// The kernel is linked in the top 2 GiB, so it needs the `kernel` code model; QEMU applies no
/// relocations, so it must be a static (non-PIE) executable. One codegen unit: the kernel's
/// files are split by subsystem, and with several units a call across files is not inlined
/// (`bench dispatch`: 100 B copy receive 3,404 -> 3,281 and transmit 3,655 -> 3,607
/// instructions with one unit); the kernel is small, so the build barely slows.
///
/// With [`Stamping::Built`], the kernel has the `stamps` feature (per-packet stage stamps for
/// `bench dispatch`), built in its own target directory so the two kernels never rebuild each
/// other; without it every stamp compiles to nothing and the kernel refuses `stamps=on`.
pub fn build_kernel(stamping: Stamping) -> Result<PathBuf> {
    let mut selection = vec!["--package", "isolation-kernel", "--bin", "isolation-kernel"];
    let (what, subdir) = match stamping {
        Stamping::Absent => ("kernel", "kernel"),
        Stamping::Built => {
            selection.extend(["--features", "stamps"]);
            ("kernel with stage stamps", "kernel-stamps")
        }
    };
    let dir = build_bare_metal(
        what,
        &["-Crelocation-model=static", "-Ccode-model=kernel", "-Ccodegen-units=1"],
        subdir,
        &selection,
    )?;
    Ok(dir.join("isolation-kernel"))
}

/// Whether the kernel is built with per-packet stage stamps (the `stamps` feature).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Stamping {
    Absent,
    Built,
}

/// Builds every guest app and returns the directory holding the ELF files. Guests are linked
/// at a fixed low address (guest.ld): static relocation with the default small code model.
pub fn build_guests() -> Result<PathBuf> {
    build_bare_metal("guest apps", &["-Crelocation-model=static"], "guest", &["--package", "guest-os", "--bins"])
}

/// What `build` produced once: the kernel and the guest apps.
pub struct Artifacts {
    pub kernel: PathBuf,
    pub guest_bin_dir: PathBuf,
}

impl Artifacts {
    pub fn build() -> Result<Artifacts> {
        Self::build_with(Stamping::Absent)
    }

    pub fn build_with(stamping: Stamping) -> Result<Artifacts> {
        Ok(Artifacts { kernel: build_kernel(stamping)?, guest_bin_dir: build_guests()? })
    }

    /// The ELF file for `app` (a guest-os binary, or a corrupted copy of `hello`).
    fn app_elf(&self, app: &str) -> Result<Vec<u8>> {
        let (binary, corruption) = match app.strip_prefix("corrupt-") {
            Some(kind) => ("hello", Some(kind)),
            None => (app, None),
        };
        let path = self.guest_bin_dir.join(binary);
        let elf = std::fs::read(&path).with_context(|| format!("reading guest app {}", path.display()))?;
        match corruption {
            Some(kind) => corrupt_elf(&elf, kind),
            None => Ok(elf),
        }
    }
}

/// A packed image: everything `run` needs.
pub struct Image {
    pub name: String,
    pub dir: PathBuf,
    pub manifest: Manifest,
    /// Every guest, expanded, with the addresses of the network the image was packed for.
    pub guests: Vec<Guest>,
    pub kernel: PathBuf,
    /// The cpio archive of the image config and app ELF files (`None` for an image without guests).
    pub initrd: Option<PathBuf>,
}

/// Packs image `name` into `target/images/NAME/`, with guest addresses for `plan`.
pub fn pack_image(name: &str, artifacts: &Artifacts, plan: NetPlan) -> Result<Image> {
    let source = manifest_path(&images_dir(), name);
    if !source.exists() {
        let known = image_names(&images_dir())?.join(", ");
        bail!("no image named `{name}` (images/{name}.toml does not exist); images: {known}");
    }
    let manifest = Manifest::load(&source)?;
    let image = pack_manifest(name, manifest, artifacts, plan)?;
    std::fs::copy(&source, image.dir.join("manifest.toml"))?;
    Ok(image)
}

/// Packs `manifest` (parsed already: say, an image's manifest with some guests left out) as
/// image `name` into `target/images/NAME/`, with guest addresses for `plan`.
pub fn pack_manifest(name: &str, manifest: Manifest, artifacts: &Artifacts, plan: NetPlan) -> Result<Image> {
    let kernel_elf = &artifacts.kernel;
    if !hypercall_abi::initrd::valid_name(name) {
        bail!(
            "image name `{name}` is not 1 to {} letters, digits, `-`, `_` or `.` (the kernel reads it from {CONFIG_FILE})",
            hypercall_abi::initrd::MAX_NAME
        );
    }
    let dir = workspace_root().join("target/images").join(name);
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    let kernel = dir.join("kernel.elf");
    std::fs::copy(kernel_elf, &kernel).with_context(|| format!("copying the kernel to {}", kernel.display()))?;
    let guests = manifest.expand(&plan)?;
    let initrd = if manifest.guests.is_empty() {
        None
    } else {
        let config = manifest.image_config(name, &guests);
        std::fs::write(dir.join(CONFIG_FILE), &config)?;
        let mut archive = CpioWriter::default();
        archive.add_file(CONFIG_FILE, config.as_bytes());
        for app in manifest.apps() {
            archive.add(&format!("{APP_DIR}{app}"), &artifacts.app_elf(&app)?, 0o100755);
        }
        let path = dir.join("initrd.cpio");
        std::fs::write(&path, archive.finish()).with_context(|| format!("writing {}", path.display()))?;
        Some(path)
    };
    Ok(Image { name: name.to_string(), dir, manifest, guests, kernel, initrd })
}

/// Builds the kernel and guests and packs `name`, or every image when `name` is `None`.
pub fn build(name: Option<&str>, plan: NetPlan) -> Result<Vec<Image>> {
    build_with(name, plan, Stamping::Absent)
}

/// [`build`] with the kernel built with or without stage stamps.
pub fn build_with(name: Option<&str>, plan: NetPlan, stamping: Stamping) -> Result<Vec<Image>> {
    let artifacts = Artifacts::build_with(stamping)?;
    let names = match name {
        Some(n) => vec![n.to_string()],
        None => image_names(&images_dir())?,
    };
    names.iter().map(|n| pack_image(n, &artifacts, plan)).collect()
}
