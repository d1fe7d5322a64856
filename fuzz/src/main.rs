//! `fuzz`: the command behind `cargo xtask fuzz`. See the crate documentation.

use fuzz::engine::{self, Limits, Target};
use fuzz::real::RealInputs;
use fuzz::targets;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

const USAGE: &str = "\
usage: fuzz --list
       fuzz <TARGET|all> [--secs N] [--execs N] [--seed N] [--input FILE]
                         [--images DIR] [--crashes DIR] [--progress SECS] [--features]

  --secs N       stop each target after N seconds (default 10 unless --execs is given)
  --execs N      stop each target after N executions
  --seed N       seed of the run (decimal or 0x hex); the same seed makes the same inputs
  --input FILE   run one saved input through the target and report its verdict
  --images DIR   real inputs to seed from (default: target/images of the workspace)
  --crashes DIR  where failing inputs are saved (default: target/fuzz/crashes)
  --progress S   print a progress line every S seconds
  --features     print the facts each target reported (which outcomes the run reached)";

struct Options {
    target: String,
    time: Option<Duration>,
    executions: Option<u64>,
    seed: Option<u64>,
    input: Option<PathBuf>,
    images: PathBuf,
    crashes: PathBuf,
    progress: Option<Duration>,
    show_features: bool,
}

fn workspace_target_dir() -> PathBuf {
    let manifest_dir = Path::new(env!("CARGO_MANIFEST_DIR"));
    manifest_dir.parent().unwrap_or(manifest_dir).join("target")
}

fn number(text: &str) -> Result<u64, String> {
    let parsed = match text.strip_prefix("0x") {
        Some(hex) => u64::from_str_radix(hex, 16),
        None => text.parse(),
    };
    parsed.map_err(|_| format!("`{text}` is not a number"))
}

fn seconds(text: &str) -> Result<Duration, String> {
    text.parse::<f64>()
        .ok()
        .filter(|s| s.is_finite() && *s >= 0.0)
        .map(Duration::from_secs_f64)
        .ok_or(format!("`{text}` is not a number of seconds"))
}

/// `Ok(None)` for `--list`.
fn parse_args(args: &[String]) -> Result<Option<Options>, String> {
    let mut target = None;
    let mut options = Options {
        target: String::new(),
        time: None,
        executions: None,
        seed: None,
        input: None,
        images: workspace_target_dir().join("images"),
        crashes: workspace_target_dir().join("fuzz/crashes"),
        progress: None,
        show_features: false,
    };
    let mut args = args.iter();
    while let Some(arg) = args.next() {
        let mut value = || args.next().ok_or(format!("{arg} needs a value"));
        match arg.as_str() {
            "--list" => return Ok(None),
            "--secs" => options.time = Some(seconds(value()?)?),
            "--execs" => options.executions = Some(number(value()?)?),
            "--seed" => options.seed = Some(number(value()?)?),
            "--input" => options.input = Some(value()?.into()),
            "--images" => options.images = value()?.into(),
            "--crashes" => options.crashes = value()?.into(),
            "--progress" => options.progress = Some(seconds(value()?)?),
            "--features" => options.show_features = true,
            "-h" | "--help" => return Err(String::new()),
            flag if flag.starts_with('-') => return Err(format!("unknown option {flag}")),
            name if target.is_none() => target = Some(name.to_string()),
            extra => return Err(format!("unexpected argument {extra}")),
        }
    }
    options.target = target.ok_or("no target named (try --list)")?;
    if options.time.is_none() && options.executions.is_none() {
        options.time = Some(Duration::from_secs(10));
    }
    Ok(Some(options))
}

fn list() {
    for target in targets::ALL {
        println!("{:<10} {}", target.name, target.checks);
    }
}

/// The facts a run reached, one line per tag with its values in order.
fn print_features(features: &[(&'static str, u64)]) {
    let mut tags: Vec<&str> = features.iter().map(|f| f.0).collect();
    tags.sort_unstable();
    tags.dedup();
    for tag in tags {
        let mut values: Vec<u64> = features.iter().filter(|f| f.0 == tag).map(|f| f.1).collect();
        values.sort_unstable();
        let shown: Vec<String> = values.iter().take(40).map(|v| v.to_string()).collect();
        let more = if values.len() > 40 { format!(" ... ({} values)", values.len()) } else { String::new() };
        println!("    {tag}: {}{more}", shown.join(" "));
    }
}

fn time_seed() -> u64 {
    let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_nanos());
    (nanos as u64) ^ u64::from(std::process::id()).rotate_left(32)
}

fn replay(target: &Target, path: &Path) -> ExitCode {
    let input = match std::fs::read(path) {
        Ok(input) => input,
        Err(error) => {
            eprintln!("cannot read {}: {error}", path.display());
            return ExitCode::FAILURE;
        }
    };
    match engine::replay(target, &input) {
        Ok(()) => {
            println!("fuzz {}: {} ({} bytes) passes every invariant", target.name, path.display(), input.len());
            ExitCode::SUCCESS
        }
        Err(message) => {
            println!("fuzz {}: {} FAILS: {message}", target.name, path.display());
            print!("{}", engine::hex_dump(&input, 4096));
            ExitCode::FAILURE
        }
    }
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let options = match parse_args(&args) {
        Ok(Some(options)) => options,
        Ok(None) => {
            list();
            return ExitCode::SUCCESS;
        }
        Err(message) => {
            if !message.is_empty() {
                eprintln!("error: {message}");
            }
            eprintln!("{USAGE}");
            return if message.is_empty() { ExitCode::SUCCESS } else { ExitCode::from(2) };
        }
    };
    let chosen: Vec<&Target> = match options.target.as_str() {
        "all" => targets::ALL.iter().collect(),
        name => match targets::find(name) {
            Some(target) => vec![target],
            None => {
                eprintln!("error: no target `{name}`; targets:");
                list();
                return ExitCode::from(2);
            }
        },
    };
    engine::capture_panics();
    if let Some(path) = &options.input {
        let [target] = chosen[..] else {
            eprintln!("error: --input needs one target, not `all`");
            return ExitCode::from(2);
        };
        return replay(target, path);
    }

    let seed = options.seed.unwrap_or_else(time_seed);
    let real = RealInputs::load(&options.images);
    println!("fuzz: seed {seed:#x}; real inputs from {}: {}", options.images.display(), real.describe());
    let limits = Limits { time: options.time, executions: options.executions, progress_every: options.progress };
    let mut failed = Vec::new();
    for target in chosen {
        let report = engine::fuzz(target, &real, seed, &limits);
        println!(
            "fuzz {:<10} {:>11} executions in {:>6.1} s ({:>9.0}/s), corpus {} ({} seeds), {} features",
            target.name,
            report.executions,
            report.elapsed.as_secs_f64(),
            report.per_second(),
            report.corpus,
            report.seeds,
            report.features.len()
        );
        if options.show_features {
            print_features(&report.features);
        }
        if let Some(failure) = report.failure {
            println!("FAILURE in target `{}` at execution {} of seed {seed:#x}:", target.name, failure.execution);
            println!("  {}", failure.message);
            println!("input ({} bytes):", failure.input.len());
            print!("{}", engine::hex_dump(&failure.input, 1024));
            match engine::save_failure(&options.crashes, target, &failure.input) {
                Ok(path) => println!(
                    "saved to {}\nreplay: cargo xtask fuzz {} --input {0}\nrerun:  cargo xtask fuzz {1} --seed {seed:#x} --execs {}",
                    path.display(),
                    target.name,
                    failure.execution
                ),
                Err(error) => println!("could not save the input under {}: {error}", options.crashes.display()),
            }
            failed.push(target.name);
        }
    }
    if failed.is_empty() {
        ExitCode::SUCCESS
    } else {
        println!("fuzz: invariants broken in {}", failed.join(", "));
        ExitCode::FAILURE
    }
}
