//! `cargo xtask fuzz`: builds the `fuzz` crate with the `fuzzing` profile (optimized, with
//! overflow checks and debug assertions) and runs it. The engine and the targets live in
//! `fuzz/`; this file only forwards the options.

use crate::pack::workspace_root;
use anyhow::{bail, Context, Result};
use std::path::PathBuf;
use std::process::Command;

/// Seconds per target of the short runs `cargo xtask test` makes.
pub const TEST_SECS: f64 = 2.0;

#[derive(clap::Args, Debug, Default)]
pub struct FuzzArgs {
    /// Target to fuzz, or `all` (every target in turn); see --list.
    pub target: Option<String>,
    /// List the targets and what each checks.
    #[arg(long)]
    pub list: bool,
    /// Stop each target after this many seconds (default 10 unless --execs is given).
    #[arg(long)]
    pub secs: Option<f64>,
    /// Stop each target after this many executions.
    #[arg(long)]
    pub execs: Option<u64>,
    /// Seed of the run (decimal or 0x hex); the same seed makes the same inputs.
    #[arg(long)]
    pub seed: Option<String>,
    /// Run one saved input (from target/fuzz/crashes/) through the target and report its verdict.
    #[arg(long, value_name = "FILE")]
    pub input: Option<PathBuf>,
    /// Print a progress line this often, in seconds (long runs).
    #[arg(long, value_name = "SECONDS")]
    pub progress: Option<f64>,
    /// Print the outcomes each target reached.
    #[arg(long)]
    pub features: bool,
}

impl FuzzArgs {
    fn to_command_line(&self) -> Vec<String> {
        let mut args = Vec::new();
        if self.list {
            args.push("--list".to_string());
        }
        args.extend(self.target.clone());
        let options = [
            ("--secs", self.secs.map(|s| s.to_string())),
            ("--execs", self.execs.map(|n| n.to_string())),
            ("--seed", self.seed.clone()),
            ("--input", self.input.as_ref().map(|p| p.display().to_string())),
            ("--progress", self.progress.map(|s| s.to_string())),
        ];
        for (flag, value) in options {
            if let Some(value) = value {
                args.extend([flag.to_string(), value]);
            }
        }
        if self.features {
            args.push("--features".to_string());
        }
        args
    }
}

/// Builds and runs the fuzzer; an error if any invariant broke (the fuzzer has printed it).
pub fn run(args: &FuzzArgs) -> Result<()> {
    if args.target.is_none() && !args.list {
        bail!("name a target or `all` (cargo xtask fuzz --list shows them)");
    }
    let status = Command::new(std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into()))
        .current_dir(workspace_root())
        .args(["run", "--quiet", "--profile", "fuzzing", "--package", "fuzz", "--"])
        .args(args.to_command_line())
        .status()
        .context("running cargo to build and run the fuzzer")?;
    if !status.success() {
        bail!("fuzzing found a failure or could not run ({status})");
    }
    Ok(())
}

/// The short runs of `cargo xtask test`: every target for [`TEST_SECS`] seconds, a new seed
/// each time (printed, so a failure can be replayed).
pub fn short_runs() -> Result<()> {
    run(&FuzzArgs { target: Some("all".to_string()), secs: Some(TEST_SECS), ..FuzzArgs::default() })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn options_are_forwarded_to_the_fuzzer() {
        let args = FuzzArgs {
            target: Some("ring".into()),
            secs: Some(2.5),
            seed: Some("0x2a".into()),
            features: true,
            ..FuzzArgs::default()
        };
        assert_eq!(args.to_command_line(), ["ring", "--secs", "2.5", "--seed", "0x2a", "--features"]);
        let list = FuzzArgs { list: true, ..FuzzArgs::default() };
        assert_eq!(list.to_command_line(), ["--list"]);
    }
}
