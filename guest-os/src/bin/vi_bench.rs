//! `vi-bench`: measures, in TSC ticks, the round trip of the null virtual instruction (ring 3
//! -> trap -> decode -> back) and of `yield` (a guest switch there and back when another guest
//! is runnable). Prints the median of each and exits 0.
//!
//! Arguments: `rounds=N` (default 10000); `storm`: instead, issue null virtual instructions
//! in a loop for ever and never idle (a hog for the performance-isolation tests).

#![no_std]
#![no_main]

extern crate alloc;

use alloc::vec::Vec;
use guest_os::time::ticks;
use guest_os::{println, vi, Env};

fn median(mut samples: Vec<u64>) -> u64 {
    samples.sort_unstable();
    samples[samples.len() / 2]
}

fn measure(rounds: usize, op: impl Fn()) -> u64 {
    let mut samples = Vec::with_capacity(rounds);
    for _ in 0..rounds {
        let start = ticks();
        op();
        samples.push(ticks() - start);
    }
    median(samples)
}

fn main(env: &Env) -> i32 {
    if env.args().any(|a| a == "storm") {
        println!("vi-bench: storm of null virtual instructions");
        loop {
            vi::null();
        }
    }
    let rounds = env.args().find_map(|a| a.strip_prefix("rounds=")).and_then(|n| n.parse().ok()).unwrap_or(10_000usize);
    // Warm up, then measure.
    measure(100, || {
        vi::null();
    });
    let null = measure(rounds, || {
        vi::null();
    });
    let yield_round_trip = measure(rounds, vi::yield_now);
    let empty = measure(rounds, || {});
    println!(
        "vi-bench: rounds={rounds} null_vi_ticks={null} yield_ticks={yield_round_trip} rdtsc_overhead_ticks={empty}"
    );
    0
}

guest_os::entry!(main);
