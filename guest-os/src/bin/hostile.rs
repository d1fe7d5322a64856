//! `hostile`: does one bad thing, named by its first argument, to show that the kernel stops
//! this guest alone. Each case must never return; if the kernel let it through, the guest exits
//! with code 99 so the image's expectation fails.

#![no_std]
#![no_main]

use core::arch::asm;
use guest_os::{println, vi, Env};

fn main(env: &Env) -> i32 {
    let what = env.args().next().unwrap_or("");
    println!("hostile guest {} about to: {what}", env.id);
    // SAFETY: deliberately unsound in every case below; the point is that the kernel stops us.
    unsafe {
        match what {
            "null-write" => core::ptr::write_volatile(core::ptr::null_mut::<u64>(), 1),
            "kernel-write" => core::ptr::write_volatile(0xffff_8000_0010_0000 as *mut u64, 1),
            "hlt" => asm!("hlt"),
            "cli" => asm!("cli"),
            "wrmsr" => asm!("wrmsr", in("ecx") 0x10u32, in("eax") 0u32, in("edx") 0u32),
            "div-zero" => {
                let zero: u64 = core::hint::black_box(0);
                asm!("div {0}", in(reg) zero, inout("rax") 1u64 => _, inout("rdx") 0u64 => _);
            }
            "ud2" => asm!("ud2"),
            "spin" => loop {
                core::hint::spin_loop();
            },
            "console-kernel-pointer" => {
                let kernel = core::slice::from_raw_parts(0xffff_ffff_8010_0000 as *const u8, 16);
                vi::console_write(kernel);
            }
            "bad-port" => asm!("out dx, al", in("dx") 0x3f8u16, in("al") b'!'),
            "in-port" => {
                let _value: u32;
                asm!("in eax, dx", in("dx") hypercall_abi::vi::PORT_BASE, out("eax") _value);
            }
            other => {
                println!("unknown misbehaviour `{other}`");
                return 98;
            }
        }
    }
    println!("the kernel let `{what}` through");
    99
}

guest_os::entry!(main);
