//! `hello`: prints its id and arguments, sleeps 50 ms through the idle virtual instruction,
//! checks that at least that much time passed, and exits 0 (1 if time did not advance enough).

#![no_std]
#![no_main]

use core::time::Duration;
use guest_os::time::Instant;
use guest_os::{println, Env};

const SLEEP: Duration = Duration::from_millis(50);

fn main(env: &Env) -> i32 {
    println!("hello from guest {} ({}), args: [{}]", env.id, env.name, env.args);
    let start = Instant::now();
    guest_os::time::sleep(SLEEP);
    let slept = start.elapsed();
    if slept < SLEEP {
        println!("slept only {} us, wanted {} us", slept.as_micros(), SLEEP.as_micros());
        return 1;
    }
    // The heap works too.
    let words: alloc::vec::Vec<&str> = env.args().collect();
    println!("slept {} us; {} argument(s); goodbye", slept.as_micros(), words.len());
    0
}

extern crate alloc;
guest_os::entry!(main);
