//! What a fresh machine may lack, checked before the first build or boot, so that the README's
//! two commands work as written: the bare-metal target (rustup adds a `rust-toolchain.toml`'s
//! targets only when it installs the toolchain itself, not to one already installed) and QEMU.

use crate::pack::{workspace_root, KERNEL_TARGET};
use crate::qemu::QEMU;
use anyhow::{bail, Context, Result};
use std::process::Command;
use std::sync::OnceLock;

/// The line that installs what the tests and runs use, as root or as a user with sudo.
pub const INSTALL_LINE: &str =
    "$(command -v sudo) apt-get update && $(command -v sudo) apt-get install -y --no-install-recommends qemu-system-x86 curl";

/// Makes sure the kernel's target is installed: adds it through rustup if it is not, or stops
/// with the command that does. Checked once per run.
pub fn ensure_target() -> Result<()> {
    static CHECKED: OnceLock<Result<(), String>> = OnceLock::new();
    CHECKED.get_or_init(|| check_target().map_err(|e| format!("{e:#}"))).clone().map_err(anyhow::Error::msg)
}

fn check_target() -> Result<()> {
    let fix = format!("rustup target add {KERNEL_TARGET}");
    let listed = Command::new("rustup").current_dir(workspace_root()).args(["target", "list", "--installed"]).output();
    let Ok(listed) = listed else {
        // No rustup: the toolchain came some other way; the build will say if the target is missing.
        return Ok(());
    };
    if String::from_utf8_lossy(&listed.stdout).lines().any(|l| l.trim() == KERNEL_TARGET) {
        return Ok(());
    }
    println!("the {KERNEL_TARGET} target is not installed; running `{fix}`");
    let status = Command::new("rustup")
        .current_dir(workspace_root())
        .args(["target", "add", KERNEL_TARGET])
        .status()
        .with_context(|| format!("running `{fix}`"))?;
    if !status.success() {
        bail!("`{fix}` failed ({status}): run it by hand, then try again");
    }
    Ok(())
}

/// Makes sure QEMU is installed, or stops with the line that installs it. Checked once per run.
pub fn ensure_qemu() -> Result<()> {
    static CHECKED: OnceLock<bool> = OnceLock::new();
    let found = *CHECKED.get_or_init(|| Command::new(QEMU).arg("--version").output().is_ok_and(|o| o.status.success()));
    if !found {
        bail!("{QEMU} is not installed: run\n    {INSTALL_LINE}");
    }
    Ok(())
}

/// This xtask binary, for running its client subcommands (`udp-sweep`, `udp-probe`, ...) as
/// child processes: a copy of this build under `target/xtask-clients`, since a rebuild during a long
/// run (a benchmark takes minutes) replaces `target/release/xtask` and leaves
/// `current_exe()` naming a deleted file that can no longer be started.
pub fn client_exe() -> Result<std::path::PathBuf> {
    static COPY: OnceLock<std::path::PathBuf> = OnceLock::new();
    if let Some(path) = COPY.get() {
        return Ok(path.clone());
    }
    let exe = std::env::current_exe().context("the xtask binary")?;
    // Named by the build's modification time: one copy per build, shared by the runs of it.
    let built = std::fs::metadata(&exe)
        .and_then(|m| m.modified())
        .ok()
        .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
        .map_or(0, |d| d.as_nanos());
    let dir = workspace_root().join("target").join("xtask-clients");
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    let copy = dir.join(format!("xtask-{built}"));
    if !copy.exists() {
        // Copies of older builds go once nothing can still be running them (a day on).
        let stale = std::time::SystemTime::now() - std::time::Duration::from_secs(24 * 3600);
        for old in std::fs::read_dir(&dir).into_iter().flatten().flatten() {
            if old.metadata().and_then(|m| m.modified()).is_ok_and(|t| t < stale) {
                let _ = std::fs::remove_file(old.path());
            }
        }
        // Copied under a private name, then renamed: a concurrent run never starts a half copy.
        let partial = dir.join(format!("partial-{}", std::process::id()));
        std::fs::copy(&exe, &partial).with_context(|| format!("copying {} to {}", exe.display(), partial.display()))?;
        std::fs::rename(&partial, &copy).with_context(|| format!("renaming to {}", copy.display()))?;
    }
    Ok(COPY.get_or_init(|| copy).clone())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_install_line_works_with_and_without_sudo() {
        // `$(command -v sudo)` is empty for root without sudo and `/usr/bin/sudo` otherwise.
        assert!(INSTALL_LINE.starts_with("$(command -v sudo) apt-get update && "));
        assert!(INSTALL_LINE.contains("qemu-system-x86"));
    }
}
