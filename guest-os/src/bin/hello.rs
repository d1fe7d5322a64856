//! `hello`: prints its id and arguments, sleeps 50 ms through the idle virtual instruction,
//! checks that at least that much time passed, and exits 0 (1 if time did not advance enough).
//! `sleep_ms=N rounds=R`: sleeps N ms R times instead, and also reports the latest it woke
//! (the tickless timer's test: `images/tickless.toml`).

#![no_std]
#![no_main]

use core::time::Duration;
use guest_os::time::Instant;
use guest_os::{println, Env};

const SLEEP_MS: u64 = 50;

fn main(env: &Env) -> i32 {
    println!("hello from guest {} ({}), args: [{}]", env.id, env.name, env.args);
    let number = |key: &str, default: u64| {
        env.args().find_map(|a| a.strip_prefix(key)?.strip_prefix('=')?.parse().ok()).unwrap_or(default)
    };
    let sleep = Duration::from_millis(number("sleep_ms", SLEEP_MS));
    let rounds = number("rounds", 1).max(1);
    let (mut total, mut latest) = (Duration::ZERO, Duration::ZERO);
    for _ in 0..rounds {
        let start = Instant::now();
        guest_os::time::sleep(sleep);
        let slept = start.elapsed();
        if slept < sleep {
            println!("slept only {} us, wanted {} us", slept.as_micros(), sleep.as_micros());
            return 1;
        }
        total += slept;
        latest = latest.max(slept - sleep);
    }
    // The heap works too.
    let words: alloc::vec::Vec<&str> = env.args().collect();
    if rounds > 1 {
        println!(
            "slept {} us in {rounds} sleeps of {} us, woke at most {} us late; goodbye",
            total.as_micros(),
            sleep.as_micros(),
            latest.as_micros()
        );
    } else {
        println!("slept {} us; {} argument(s); goodbye", total.as_micros(), words.len());
    }
    0
}

extern crate alloc;
guest_os::entry!(main);
