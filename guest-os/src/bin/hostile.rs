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

/// An Ethernet/IPv4/UDP frame from `nic`'s own MAC and address to slirp's host, with `options`
/// words of IPv4 options and a 32-byte payload (checksums left zero: the kernel's to fill).
fn udp_frame(nic: &guest_os::rawnic::RawNic, options: usize) -> ([u8; 128], usize) {
    let mut frame = [0u8; 128];
    let header = 20 + 4 * options;
    let udp_len = 8 + 32;
    frame[..6].copy_from_slice(&guest_os::rawnic::SLIRP_MAC);
    frame[6..12].copy_from_slice(&nic.config.mac);
    frame[12..14].copy_from_slice(&[0x08, 0x00]);
    let ip = &mut frame[14..];
    ip[0] = 0x40 | (header / 4) as u8;
    ip[2..4].copy_from_slice(&((header + udp_len) as u16).to_be_bytes());
    ip[8] = 64;
    ip[9] = 17;
    ip[12..16].copy_from_slice(&nic.config.ipv4);
    ip[16..20].copy_from_slice(&[10, 0, 2, 2]);
    for option in 0..options {
        ip[20 + 4 * option] = 1; // no-operation
    }
    let mut sum: u32 = 0;
    for pair in ip[..header].chunks(2) {
        sum += u32::from(u16::from_be_bytes([pair[0], pair[1]]));
    }
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    ip[10..12].copy_from_slice(&(!(sum as u16)).to_be_bytes());
    let udp = &mut ip[header..];
    udp[0..2].copy_from_slice(&40000u16.to_be_bytes());
    udp[2..4].copy_from_slice(&9u16.to_be_bytes()); // discard
    udp[4..6].copy_from_slice(&(udp_len as u16).to_be_bytes());
    udp[8..40].fill(0x5a);
    (frame, 14 + header + udp_len)
}

/// Leaves the L4 checksum to the kernel (checksum offload) on frames it cannot place, each from
/// this guest's own MAC, kicking after each: every one must come back
/// `RejectedChecksumRequest` while this guest keeps running; one good request (with IPv4
/// options) must go. Exits 0 if every outcome was as expected.
fn bad_checksum_requests(env: &Env) -> i32 {
    use hypercall_abi::vnic::{desc_flags, DescStatus, TX_RING_SIZE};
    let Some(nic) = guest_os::rawnic::RawNic::open(env.net) else {
        println!("bad-checksum-requests needs a virtual NIC (net = true)");
        return 98;
    };
    type Edit = fn(&mut [u8; 128], &mut usize);
    let cases: [(&str, Edit, DescStatus); 8] = [
        ("an ARP frame", |f, _| f[12..14].copy_from_slice(&[0x08, 0x06]), DescStatus::RejectedChecksumRequest),
        ("ICMP", |f, _| f[23] = 1, DescStatus::RejectedChecksumRequest),
        ("a fragment", |f, _| f[20] = 0x20, DescStatus::RejectedChecksumRequest),
        ("a header length of 3 words", |f, _| f[14] = 0x43, DescStatus::RejectedChecksumRequest),
        (
            "options beyond the frame",
            |f, len| {
                f[14] = 0x4f;
                *len = 14 + 40;
            },
            DescStatus::RejectedChecksumRequest,
        ),
        (
            "a total length beyond the frame",
            |f, _| f[16..18].copy_from_slice(&1400u16.to_be_bytes()),
            DescStatus::RejectedChecksumRequest,
        ),
        (
            "a UDP length beyond the datagram",
            |f, _| f[38..40].copy_from_slice(&999u16.to_be_bytes()),
            DescStatus::RejectedChecksumRequest,
        ),
        ("cut inside the UDP header", |_, len| *len = 14 + 20 + 5, DescStatus::RejectedChecksumRequest),
    ];
    let (mut failures, mut rejected) = (0, 0);
    let mut send = |what: &str, frame: &[u8], want: DescStatus| {
        let index = nic.post_tx(frame);
        let desc = &nic.shared.tx[(index % TX_RING_SIZE) as usize];
        desc.status
            .store(DescStatus::Pending as u32 | desc_flags::TX_CSUM_NEEDED, core::sync::atomic::Ordering::Release);
        vi::vnic_tx_kick();
        // Under COW and split a frame taken completes when the NIC is done with it.
        nic.wait_tx_consumer(index.wrapping_add(1), guest_os::time::tsc_hz());
        let status = nic.tx_status(index);
        rejected += u32::from(status == Some(DescStatus::RejectedChecksumRequest));
        let ok = status == Some(want);
        failures += u32::from(!ok);
        println!("checksum request ({what}): {status:?} {}", if ok { "as expected" } else { "WRONG" });
    };
    for (what, edit, want) in cases {
        let (mut frame, mut len) = udp_frame(&nic, 0);
        edit(&mut frame, &mut len);
        send(what, &frame[..len], want);
    }
    let (frame, len) = udp_frame(&nic, 2);
    send("a good datagram with IPv4 options", &frame[..len], DescStatus::Done);
    println!("hostile guest {} survived every bad checksum request; {failures} unexpected outcomes", env.id);
    println!("hostile-report role=bad-checksum-requests csum_rejected={rejected} failures={failures}");
    i32::from(failures > 0)
}

fn main(env: &Env) -> i32 {
    let what = env.args().next().unwrap_or("");
    if what == "bad-descriptors" {
        return bad_descriptors(env);
    }
    if what == "bad-checksum-requests" {
        return bad_checksum_requests(env);
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
