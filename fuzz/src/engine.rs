//! The mutation loop: seeds in, mutated inputs through a target, new behaviour kept, the first
//! invariant failure or panic reported with everything needed to replay it.

use crate::features::Features;
use crate::mutate::Mutator;
use crate::real::RealInputs;
use crate::rng::{fnv1a, Rng};
use std::cell::RefCell;
use std::panic::{self, AssertUnwindSafe};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// What one execution of a target concluded: `Err` names the invariant that failed.
pub type Verdict = Result<(), String>;

/// Returns `Err(message)` from the enclosing target function when `cond` is false.
#[macro_export]
macro_rules! check {
    ($cond:expr, $($message:tt)+) => {{
        if !$cond {
            return Err(format!($($message)+));
        }
    }};
}

/// Returns `Err` when the two values differ, showing both.
#[macro_export]
macro_rules! check_eq {
    ($left:expr, $right:expr, $($message:tt)+) => {{
        let (left, right) = (&$left, &$right);
        if left != right {
            return Err(format!("{}: {:?} != {:?}", format!($($message)+), left, right));
        }
    }};
}

/// A fuzz target: an API of the kernel's portable library with the invariants it promises.
pub struct Target {
    pub name: &'static str,
    /// One line: what is fuzzed and which invariants are checked.
    pub checks: &'static str,
    /// Longest input the mutator makes.
    pub max_len: usize,
    /// Tokens of the input format, for the mutator.
    pub dictionary: &'static [&'static [u8]],
    /// Starting inputs: valid structures made in code, and real files where they exist.
    pub seeds: fn(&RealInputs) -> Vec<Vec<u8>>,
    /// Runs one input, reports what happened to `features`, and checks the invariants.
    pub run: fn(&[u8], &mut Features) -> Verdict,
}

/// When a run stops and where it puts what it finds.
#[derive(Clone, Debug)]
pub struct Limits {
    pub time: Option<Duration>,
    pub executions: Option<u64>,
    /// Print a progress line this often (long runs).
    pub progress_every: Option<Duration>,
}

/// An input that broke an invariant or panicked.
#[derive(Clone, Debug)]
pub struct Failure {
    pub message: String,
    pub input: Vec<u8>,
    /// 1-based number of the execution that failed, in this run's deterministic order.
    pub execution: u64,
}

/// How a run went.
#[derive(Debug)]
pub struct Report {
    pub executions: u64,
    pub elapsed: Duration,
    pub corpus: usize,
    pub seeds: usize,
    /// The facts the target reported, as (tag, value), in the order first seen.
    pub features: Vec<(&'static str, u64)>,
    pub failure: Option<Failure>,
}

impl Report {
    pub fn per_second(&self) -> f64 {
        self.executions as f64 / self.elapsed.as_secs_f64().max(1e-9)
    }
}

/// Most inputs kept; past this a new input replaces a random non-seed one.
const MAX_CORPUS: usize = 4096;

/// The generator of a target's run: the run seed mixed with the target's name, so that
/// `all` and a single target given the same seed make the same inputs.
pub fn target_rng(target: &Target, seed: u64) -> Rng {
    Rng::new(seed ^ fnv1a(target.name.as_bytes()))
}

/// Fuzzes `target` from its seeds until a limit is reached or an invariant fails.
pub fn fuzz(target: &Target, real: &RealInputs, seed: u64, limits: &Limits) -> Report {
    let start = Instant::now();
    let mut rng = target_rng(target, seed);
    let mutator = Mutator { dictionary: target.dictionary, max_len: target.max_len };
    let mut features = Features::new();
    let mut corpus: Vec<Vec<u8>> = Vec::new();
    for mut input in (target.seeds)(real) {
        input.truncate(target.max_len);
        if !corpus.contains(&input) {
            corpus.push(input);
        }
    }
    if corpus.is_empty() {
        corpus.push(Vec::new());
    }
    let seeds = corpus.len();
    let mut executions = 0u64;
    let mut last_progress = start;
    let report = |executions, corpus: &Vec<Vec<u8>>, features: &Features, failure| Report {
        executions,
        elapsed: start.elapsed(),
        corpus: corpus.len(),
        seeds,
        features: features.seen().to_vec(),
        failure,
    };

    // Every seed runs once as it is: a seed that fails is a finding too.
    for index in 0..seeds {
        executions += 1;
        features.start();
        if let Err(message) = run_caught(target, &corpus[index], &mut features) {
            let failure = Failure { message, input: corpus[index].clone(), execution: executions };
            return report(executions, &corpus, &features, Some(failure));
        }
    }

    let mut scratch = Vec::with_capacity(target.max_len);
    loop {
        if limits.executions.is_some_and(|max| executions >= max) {
            break;
        }
        if executions.is_multiple_of(256) {
            let now = Instant::now();
            if limits.time.is_some_and(|max| now - start >= max) {
                break;
            }
            if limits.progress_every.is_some_and(|every| now - last_progress >= every) {
                last_progress = now;
                let rate = executions as f64 / (now - start).as_secs_f64();
                println!(
                    "  {}: {executions} executions, {rate:.0}/s, corpus {}, {} features",
                    target.name,
                    corpus.len(),
                    features.distinct()
                );
            }
        }
        let parent = rng.below(corpus.len());
        let other = rng.below(corpus.len());
        scratch.clear();
        scratch.extend_from_slice(&corpus[parent]);
        mutator.mutate(&mut scratch, &corpus[other], &mut rng);
        executions += 1;
        features.start();
        if let Err(message) = run_caught(target, &scratch, &mut features) {
            let failure = Failure { message, input: scratch.clone(), execution: executions };
            return report(executions, &corpus, &features, Some(failure));
        }
        if features.finish() {
            if corpus.len() < MAX_CORPUS {
                corpus.push(scratch.clone());
            } else if corpus.len() > seeds {
                let victim = seeds + rng.below(corpus.len() - seeds);
                corpus[victim].clone_from(&scratch);
            }
        }
    }
    report(executions, &corpus, &features, None)
}

/// Runs one input outside the mutation loop (replaying a saved failure).
pub fn replay(target: &Target, input: &[u8]) -> Verdict {
    run_caught(target, input, &mut Features::new())
}

thread_local! {
    /// The last panic's message and location, captured by the hook instead of printed.
    static LAST_PANIC: RefCell<Option<String>> = const { RefCell::new(None) };
}

/// Makes panics quiet and remembered, so a panicking input is reported like a failed
/// invariant instead of spraying a backtrace per execution.
pub fn capture_panics() {
    panic::set_hook(Box::new(|info| {
        let message = match (info.payload().downcast_ref::<&str>(), info.payload().downcast_ref::<String>()) {
            (Some(text), _) => (*text).to_string(),
            (_, Some(text)) => text.clone(),
            _ => "(non-text panic payload)".to_string(),
        };
        let location = info.location().map(|l| format!(" at {}:{}", l.file(), l.line())).unwrap_or_default();
        LAST_PANIC.with(|last| *last.borrow_mut() = Some(format!("panic: {message}{location}")));
    }));
}

fn run_caught(target: &Target, input: &[u8], features: &mut Features) -> Verdict {
    match panic::catch_unwind(AssertUnwindSafe(|| (target.run)(input, features))) {
        Ok(verdict) => verdict,
        Err(_) => Err(LAST_PANIC.with(|last| last.borrow_mut().take()).unwrap_or_else(|| "panic".to_string())),
    }
}

/// Saves a failing input as `<dir>/<target>-<hash>.bin` and returns the path.
pub fn save_failure(dir: &Path, target: &Target, input: &[u8]) -> std::io::Result<PathBuf> {
    std::fs::create_dir_all(dir)?;
    let path = dir.join(format!("{}-{:016x}.bin", target.name, fnv1a(input)));
    std::fs::write(&path, input)?;
    Ok(path)
}

/// The input as hex, 32 bytes a line; long inputs are cut after `limit` bytes.
pub fn hex_dump(input: &[u8], limit: usize) -> String {
    let mut out = String::new();
    for (line, chunk) in input[..input.len().min(limit)].chunks(32).enumerate() {
        out += &format!("  {:06x}:", line * 32);
        for byte in chunk {
            out += &format!(" {byte:02x}");
        }
        out.push('\n');
    }
    if input.len() > limit {
        out += &format!("  ... {} more bytes (see the saved file)\n", input.len() - limit);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn no_seeds(_: &RealInputs) -> Vec<Vec<u8>> {
        vec![b"seed".to_vec()]
    }

    /// Fails on any input holding the byte 0xAB, which mutation finds quickly.
    fn fails_on_ab(input: &[u8], features: &mut Features) -> Verdict {
        features.note("len", input.len() as u64);
        check!(!input.contains(&0xAB), "input holds 0xab");
        Ok(())
    }

    fn panics_on_ab(input: &[u8], _: &mut Features) -> Verdict {
        if input.contains(&0xAB) {
            let index: usize = input.len() + 1000;
            let _ = input[index];
        }
        Ok(())
    }

    const FAILING: Target = Target {
        name: "failing",
        checks: "test target",
        max_len: 16,
        dictionary: &[],
        seeds: no_seeds,
        run: fails_on_ab,
    };

    fn limits(executions: u64) -> Limits {
        Limits { time: None, executions: Some(executions), progress_every: None }
    }

    #[test]
    fn finds_a_failing_input_and_replays_it_from_the_seed() {
        let real = RealInputs::default();
        let first = fuzz(&FAILING, &real, 42, &limits(1_000_000));
        let failure = first.failure.expect("0xAB is easy to find");
        assert!(failure.input.contains(&0xAB));
        assert_eq!(failure.message, "input holds 0xab");
        assert_eq!(replay(&FAILING, &failure.input), Err("input holds 0xab".to_string()));
        // Same seed, same run.
        let second = fuzz(&FAILING, &real, 42, &limits(1_000_000)).failure.unwrap();
        assert_eq!((second.execution, second.input), (failure.execution, failure.input));
    }

    #[test]
    fn panics_become_failures_with_their_location() {
        capture_panics();
        let target = Target { name: "panicking", run: panics_on_ab, ..FAILING };
        let failure = fuzz(&target, &RealInputs::default(), 1, &limits(1_000_000)).failure.unwrap();
        assert!(failure.message.starts_with("panic: index out of bounds"), "{}", failure.message);
        assert!(failure.message.contains("engine.rs"), "{}", failure.message);
        let _ = panic::take_hook();
    }

    #[test]
    fn stops_at_the_execution_limit() {
        let target = Target { run: |_, _| Ok(()), ..FAILING };
        let report = fuzz(&target, &RealInputs::default(), 1, &limits(5000));
        assert_eq!(report.executions, 5000);
        assert!(report.failure.is_none());
    }

    #[test]
    fn hex_dump_cuts_long_inputs() {
        assert_eq!(hex_dump(&[0, 0xff], 64), "  000000: 00 ff\n");
        let dump = hex_dump(&[7; 100], 64);
        assert_eq!(dump.lines().count(), 3);
        assert!(dump.ends_with("... 36 more bytes (see the saved file)\n"));
    }
}
