//! `hostile`: does one bad thing, named by its first argument, to show that the kernel stops
//! this guest alone. Each case must never return; if the kernel let it through, the guest exits
//! with code 99 so the image's expectation fails.

#![no_std]
#![no_main]

use core::arch::asm;
use guest_os::{println, vi, Env};

/// Posts one bad tx descriptor after another (and a spoofed frame), kicking after each, and
/// checks that the kernel rejected each one while this guest keeps running. Exits 0 if every
/// rejection was reported in the descriptor, 1 otherwise.
fn bad_descriptors(env: &Env) -> i32 {
    use core::sync::atomic::Ordering::{Acquire, Release};
    use hypercall_abi::layout::{VNIC_SHARED_ADDR, VNIC_TX_AREA_ADDR};
    use hypercall_abi::vnic::{DescStatus, VnicShared, TX_HEADROOM, TX_RING_SIZE};
    if env.net.is_none() {
        println!("bad-descriptors needs a virtual NIC (net = true)");
        return 98;
    }
    // SAFETY: the kernel maps the shared page at this address for guests with a NIC.
    let shared = unsafe { &*(VNIC_SHARED_ADDR as *const VnicShared) };
    let slot = VNIC_TX_AREA_ADDR + TX_HEADROOM;
    // A frame claiming another guest's MAC as its source.
    let mut spoofed = [0u8; 60];
    spoofed[..6].copy_from_slice(&[0xff; 6]);
    spoofed[6..12].copy_from_slice(&[0x02, 0x49, 0x4b, 0x00, 0x00, 0x00]);
    spoofed[12..14].copy_from_slice(&[0x08, 0x06]);
    // SAFETY: the tx area is mapped read-write for this guest; nothing else uses slot 0 here.
    unsafe { core::ptr::copy_nonoverlapping(spoofed.as_ptr(), slot as *mut u8, spoofed.len()) };
    let cases: [(&str, u64, u32, DescStatus); 5] = [
        ("outside its memory", 0x1000, 100, DescStatus::RejectedBadDescriptor),
        ("kernel address", 0xffff_8000_0000_0000, 100, DescStatus::RejectedBadDescriptor),
        ("huge length", slot, u32::MAX, DescStatus::RejectedBadDescriptor),
        ("in the headroom", VNIC_TX_AREA_ADDR, 60, DescStatus::RejectedBadDescriptor),
        ("spoofed source MAC", slot, 60, DescStatus::RejectedSpoofedSource),
    ];
    let (mut failures, mut desc_rejected, mut spoof_rejected) = (0, 0, 0);
    for (what, addr, len, want) in cases {
        let index = shared.tx_producer.0.load(Acquire);
        let desc = &shared.tx[(index % TX_RING_SIZE) as usize];
        desc.addr.store(addr, Release);
        desc.len.store(len, Release);
        desc.status.store(DescStatus::Pending as u32, Release);
        shared.tx_producer.0.store(index.wrapping_add(1), Release);
        vi::vnic_tx_kick();
        let status = DescStatus::from_u32(desc.status.load(Acquire));
        desc_rejected += u32::from(status == Some(DescStatus::RejectedBadDescriptor));
        spoof_rejected += u32::from(status == Some(DescStatus::RejectedSpoofedSource));
        let ok = status == Some(want);
        failures += u32::from(!ok);
        println!("bad descriptor ({what}): {status:?} {}", if ok { "as expected" } else { "WRONG" });
    }
    // A producer index far beyond the ring: the kernel must ignore the kick, not trust it.
    let consumer = shared.tx_consumer.0.load(Acquire);
    shared.tx_producer.0.store(consumer.wrapping_add(1000), Release);
    let taken = vi::vnic_tx_kick();
    let ok = taken == 0 && shared.tx_consumer.0.load(Acquire) == consumer;
    failures += u32::from(!ok);
    println!("ring index beyond the ring: kernel took {taken} {}", if ok { "as expected" } else { "WRONG" });
    shared.tx_producer.0.store(consumer, Release);
    println!("hostile guest {} survived every bad descriptor; {failures} unexpected outcomes", env.id);
    println!(
        "hostile-report role=bad-descriptors desc_rejected={desc_rejected} spoof_rejected={spoof_rejected} \
         index_rejected={} failures={failures}",
        u32::from(taken == 0)
    );
    i32::from(failures > 0)
}

fn main(env: &Env) -> i32 {
    let what = env.args().next().unwrap_or("");
    if what == "bad-descriptors" {
        return bad_descriptors(env);
    }
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
