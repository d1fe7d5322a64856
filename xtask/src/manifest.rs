//! Image manifests: `images/NAME.toml`. One file per bootable image.

use anyhow::{bail, Context, Result};
use serde::Deserialize;
use std::path::{Path, PathBuf};

#[derive(Debug, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Manifest {
    /// One line saying what the image is for.
    pub description: String,
    #[serde(default)]
    pub kernel: KernelSection,
}

#[derive(Debug, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct KernelSection {
    /// Default kernel log level (`--log` overrides it).
    #[serde(default = "default_log")]
    pub log: String,
    /// Guest-physical memory of the QEMU machine, in MiB.
    #[serde(default = "default_memory_mib")]
    pub memory_mib: u32,
}

impl Default for KernelSection {
    fn default() -> Self {
        KernelSection { log: default_log(), memory_mib: default_memory_mib() }
    }
}

fn default_log() -> String {
    "info".into()
}

fn default_memory_mib() -> u32 {
    128
}

pub const LOG_LEVELS: [&str; 6] = ["off", "error", "warn", "info", "debug", "trace"];

impl Manifest {
    pub fn parse(text: &str) -> Result<Manifest> {
        let manifest: Manifest = toml::from_str(text)?;
        if !LOG_LEVELS.contains(&manifest.kernel.log.as_str()) {
            bail!("kernel.log = {:?}: expected one of {}", manifest.kernel.log, LOG_LEVELS.join(", "));
        }
        if !(32..=65536).contains(&manifest.kernel.memory_mib) {
            bail!("kernel.memory_mib = {}: expected 32 to 65536", manifest.kernel.memory_mib);
        }
        Ok(manifest)
    }

    pub fn load(path: &Path) -> Result<Manifest> {
        let text = std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
        Manifest::parse(&text).with_context(|| format!("in image manifest {}", path.display()))
    }
}

/// Every image under `images/`, by name, sorted.
pub fn image_names(images_dir: &Path) -> Result<Vec<String>> {
    let mut names = Vec::new();
    for entry in std::fs::read_dir(images_dir).with_context(|| format!("listing {}", images_dir.display()))? {
        let path = entry?.path();
        if path.extension().is_some_and(|e| e == "toml") {
            if let Some(stem) = path.file_stem().and_then(|s| s.to_str()) {
                names.push(stem.to_string());
            }
        }
    }
    names.sort();
    Ok(names)
}

pub fn manifest_path(images_dir: &Path, name: &str) -> PathBuf {
    images_dir.join(format!("{name}.toml"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn minimal_manifest_gets_defaults() {
        let m = Manifest::parse("description = \"x\"").unwrap();
        assert_eq!(m.kernel, KernelSection::default());
    }

    #[test]
    fn mistakes_are_refused() {
        assert!(Manifest::parse("description = \"x\"\nguests = 3").is_err(), "unknown key");
        assert!(Manifest::parse("description = \"x\"\n[kernel]\nlog = \"loud\"").is_err());
        assert!(Manifest::parse("description = \"x\"\n[kernel]\nmemory_mib = 1").is_err());
        assert!(Manifest::parse("[kernel]\nlog = \"info\"").is_err(), "description is required");
    }

    #[test]
    fn every_manifest_in_the_repository_parses() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../images");
        let names = image_names(&dir).unwrap();
        assert!(names.contains(&"empty".to_string()));
        for name in names {
            Manifest::load(&manifest_path(&dir, &name)).unwrap();
        }
    }
}
