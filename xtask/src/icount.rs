//! Every instruction QEMU's vCPU executes, counted from outside the machine by a TCG plugin
//! (`qemu-plugin/insn-count.c`, built here with the host's C compiler) and split between the
//! upper half of the address space (the kernel: ours, or a Linux guest's) and the lower half
//! (our ring-3 guests, or Linux user space). The plugin keeps its two counters in a file mapped
//! shared, so they can be read at any moment while QEMU runs: before and after a window of
//! echoes, and over an idle window.

use anyhow::{bail, Context, Result};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

/// The first word of the counter file (the plugin's `MAGIC`).
const MAGIC: u64 = 0x746e_756f_636e_7369;

/// Instructions executed in each half of the address space.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Counts {
    /// Upper half: ring 0.
    pub kernel: u64,
    /// Lower half: ring 3.
    pub guest: u64,
}

impl Counts {
    /// What was executed between `earlier` and `self`.
    pub fn since(self, earlier: Counts) -> Counts {
        Counts { kernel: self.kernel.saturating_sub(earlier.kernel), guest: self.guest.saturating_sub(earlier.guest) }
    }

    /// Reads the counter file's bytes.
    pub fn parse(bytes: &[u8]) -> Result<Counts> {
        let word = |i: usize| -> Result<u64> {
            let chunk = bytes.get(i * 8..i * 8 + 8).context("the counter file is too short")?;
            Ok(u64::from_le_bytes(chunk.try_into()?))
        };
        if word(0)? != MAGIC {
            bail!("the counter file does not start with the plugin's magic");
        }
        Ok(Counts { kernel: word(1)?, guest: word(2)? })
    }
}

/// Instructions per second of wall time in each half, over an idle window.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct IdleRate {
    pub kernel: f64,
    pub guest: f64,
}

/// Per item of work (echo), kernel and guest, with the idle rate over the window's length
/// taken off: what the work itself cost.
#[derive(Clone, Copy, Debug, Default, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct PerItem {
    pub kernel: f64,
    pub guest: f64,
}

impl PerItem {
    pub fn total(self) -> f64 {
        self.kernel + self.guest
    }

    /// `counts` executed over `window` while doing `items`, less `idle` for the same length.
    pub fn of(counts: Counts, window: Duration, idle: IdleRate, items: u64) -> PerItem {
        let items = items.max(1) as f64;
        let secs = window.as_secs_f64();
        PerItem {
            kernel: (counts.kernel as f64 - idle.kernel * secs).max(0.0) / items,
            guest: (counts.guest as f64 - idle.guest * secs).max(0.0) / items,
        }
    }
}

/// The plugin, built under `target/qemu-plugin/` when its source is newer.
pub fn plugin() -> Result<PathBuf> {
    let source = Path::new(env!("CARGO_MANIFEST_DIR")).join("qemu-plugin/insn-count.c");
    let dir = crate::pack::workspace_root().join("target/qemu-plugin");
    std::fs::create_dir_all(&dir)?;
    let built = dir.join("insn-count.so");
    let modified = |p: &Path| std::fs::metadata(p).and_then(|m| m.modified()).ok();
    if modified(&built).is_none() || modified(&built) < modified(&source) {
        let out = Command::new("cc")
            .args(["-shared", "-fPIC", "-O2", "-Wall", "-o"])
            .arg(&built)
            .arg(&source)
            .output()
            .context("running cc (the instruction-counting QEMU plugin)")?;
        if !out.status.success() {
            bail!("building the QEMU plugin failed: {}", String::from_utf8_lossy(&out.stderr));
        }
    }
    Ok(built)
}

/// A counter file that one QEMU's plugin writes.
pub struct Counter {
    path: PathBuf,
}

impl Counter {
    /// A fresh counter file named after `tag`, and the arguments that load the plugin into a
    /// QEMU command (append them: they must come after `-icount`, if any, only by convention).
    pub fn new(tag: &str) -> Result<(Counter, [String; 2])> {
        let plugin = plugin()?;
        let path =
            crate::pack::workspace_root().join(format!("target/qemu-plugin/counts-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_file(&path);
        let args = ["-plugin".to_string(), format!("{},arg=file={}", plugin.display(), path.display())];
        Ok((Counter { path }, args))
    }

    /// The counts now.
    pub fn read(&self) -> Result<Counts> {
        let bytes = std::fs::read(&self.path).with_context(|| format!("reading {}", self.path.display()))?;
        Counts::parse(&bytes)
    }

    /// The counts after `settle` with nothing sent (so that the work under way when the window
    /// ends has finished), and when they were read.
    pub fn read_settled(&self, settle: Duration) -> Result<(Counts, Instant)> {
        std::thread::sleep(settle);
        Ok((self.read()?, Instant::now()))
    }

    /// The idle rate: the lowest of `windows` windows of `window` each with nothing sent (so
    /// that the tail of earlier work, or one periodic stats line, does not count as idle).
    pub fn idle_rate(&self, window: Duration, windows: usize) -> Result<IdleRate> {
        let mut lowest: Option<IdleRate> = None;
        for _ in 0..windows.max(1) {
            let (start, at) = (self.read()?, Instant::now());
            std::thread::sleep(window);
            let counts = self.read()?.since(start);
            let secs = at.elapsed().as_secs_f64();
            let rate = IdleRate { kernel: counts.kernel as f64 / secs, guest: counts.guest as f64 / secs };
            if lowest.is_none_or(|l| rate.kernel + rate.guest < l.kernel + l.guest) {
                lowest = Some(rate);
            }
        }
        Ok(lowest.unwrap_or_default())
    }
}

impl Drop for Counter {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_counter_file_is_read_as_the_plugin_writes_it() {
        let mut bytes = vec![0u8; 4096];
        bytes[..8].copy_from_slice(&MAGIC.to_le_bytes());
        bytes[8..16].copy_from_slice(&5_000u64.to_le_bytes());
        bytes[16..24].copy_from_slice(&7u64.to_le_bytes());
        assert_eq!(Counts::parse(&bytes).unwrap(), Counts { kernel: 5_000, guest: 7 });
        assert!(Counts::parse(&bytes[..20]).is_err());
        bytes[0] ^= 1;
        assert!(Counts::parse(&bytes).is_err());
    }

    #[test]
    fn per_item_takes_the_idle_rate_off_for_the_window_length() {
        let counts = Counts { kernel: 10_000, guest: 6_000 }.since(Counts { kernel: 2_000, guest: 1_000 });
        assert_eq!(counts, Counts { kernel: 8_000, guest: 5_000 });
        let idle = IdleRate { kernel: 1_000.0, guest: 0.0 };
        let each = PerItem::of(counts, Duration::from_secs(2), idle, 10);
        assert_eq!(each, PerItem { kernel: 600.0, guest: 500.0 });
        assert_eq!(each.total(), 1_100.0);
        // More idle than work: nothing, not a negative cost.
        assert_eq!(PerItem::of(counts, Duration::from_secs(20), idle, 10).kernel, 0.0);
    }

    #[test]
    fn the_plugin_builds() {
        let built = plugin().unwrap();
        assert!(std::fs::metadata(built).unwrap().len() > 0);
    }
}
