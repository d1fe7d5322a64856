//! Building the kernel and packing images into `target/images/NAME/`.

use crate::manifest::{image_names, manifest_path, Manifest};
use anyhow::{bail, Context, Result};
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

/// Builds the kernel ELF (release) and returns its path.
///
/// The kernel is linked in the top 2 GiB, so it needs the `kernel` code model; QEMU applies no
/// relocations, so it must be a static (non-PIE) executable. These flags must not reach guest
/// code, hence a target directory of its own.
pub fn build_kernel() -> Result<PathBuf> {
    let root = workspace_root();
    let target_dir = root.join("target/kernel");
    let status = cargo()
        .current_dir(&root)
        .env_remove("RUSTFLAGS")
        .env("CARGO_ENCODED_RUSTFLAGS", ["-Crelocation-model=static", "-Ccode-model=kernel"].join("\x1f"))
        .args(["build", "--release", "--package", "isolation-kernel", "--bin", "isolation-kernel"])
        .args(["--target", KERNEL_TARGET])
        .arg("--target-dir")
        .arg(&target_dir)
        .status()
        .context("running cargo to build the kernel")?;
    if !status.success() {
        bail!("building the kernel failed ({status})");
    }
    Ok(target_dir.join(KERNEL_TARGET).join("release/isolation-kernel"))
}

/// A packed image: everything `run` needs.
pub struct Image {
    pub name: String,
    pub dir: PathBuf,
    pub manifest: Manifest,
    pub kernel: PathBuf,
}

/// Packs image `name` with an already-built kernel into `target/images/NAME/`.
pub fn pack_image(name: &str, kernel_elf: &Path) -> Result<Image> {
    let source = manifest_path(&images_dir(), name);
    if !source.exists() {
        let known = image_names(&images_dir())?.join(", ");
        bail!("no image named `{name}` (images/{name}.toml does not exist); images: {known}");
    }
    let manifest = Manifest::load(&source)?;
    let dir = workspace_root().join("target/images").join(name);
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    let kernel = dir.join("kernel.elf");
    std::fs::copy(kernel_elf, &kernel).with_context(|| format!("copying the kernel to {}", kernel.display()))?;
    std::fs::copy(&source, dir.join("manifest.toml"))?;
    Ok(Image { name: name.to_string(), dir, manifest, kernel })
}

/// Builds the kernel and packs `name`, or every image when `name` is `None`.
pub fn build(name: Option<&str>) -> Result<Vec<Image>> {
    let kernel = build_kernel()?;
    let names = match name {
        Some(n) => vec![n.to_string()],
        None => image_names(&images_dir())?,
    };
    names.iter().map(|n| pack_image(n, &kernel)).collect()
}
