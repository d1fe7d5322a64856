//! `cow-rewriter`: the copy-on-write path's correctness check. For each round it writes a UDP
//! datagram (payload `ORIGINAL <round>` and a pattern) into tx slot 0, kicks, and at once, while
//! the packet is still in flight, rewrites the slot's first page: the payload becomes
//! `REWRITTEN <round>` and the source MAC another guest's. The kernel must send the original
//! bytes (the rewrite takes a COW fault and lands in a private copy). After the round completes
//! it sends `AFTER <round>` from the same slot, which must carry those new bytes, then `spoof=N`
//! frames with a foreign source MAC, which the kernel must refuse. It drives the vNIC rings
//! itself (no smoltcp) and sends to QEMU's user-network host address, which delivers to the
//! host's loopback (and the test reads the NIC's pcap).
//!
//! With `probe=stale-tlb` (slots of several pages, jumbo MTU), each round also checks that no
//! stale TLB entry survives the COW fault: before the rewrite it reads the slot's other pages
//! (caching read-only translations of the old frames), after the old frames are freed it makes
//! the kernel reuse them (a `MARKER` frame in slot 1, rewritten in flight too, is copied into
//! the lowest free frames), then reads slot 0's other pages again: they must still hold the
//! original bytes, not the marker's.
//!
//! Arguments: `port=N` (host UDP port), `rounds=N` (default 20), `size=N` (UDP payload bytes,
//! default 32), `spoof=N` (default 1), `probe=stale-tlb`.

#![no_std]
#![no_main]

use guest_os::rawnic::{RawNic, SLIRP_MAC};
use guest_os::time::tsc_hz;
use guest_os::{println, vi, Env};
use hypercall_abi::layout::PAGE_SIZE as PAGE;
use hypercall_abi::vnic::{DescStatus, TX_HEADROOM};

const HOST_IP: [u8; 4] = [10, 0, 2, 2];
/// A MAC that is not this guest's: the spoof attempt.
pub const SPOOFED_MAC: [u8; 6] = [0x02, 0x49, 0x4b, 0xee, 0xee, 0xee];
/// Bytes of the payload that carry the tag (`ORIGINAL 3`, padded with spaces); the pattern follows.
const TAG_LEN: usize = 32;
const HEADERS: usize = 14 + 20 + 8;

fn ip_checksum(header: &[u8]) -> u16 {
    let mut sum: u32 = header.chunks(2).map(|w| u32::from(u16::from_be_bytes([w[0], w[1]]))).sum();
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

/// Payload byte `i` (past the tag) of the datagram tagged `tag` in round `round`: the test
/// recomputes it (xtask/src/tests.rs, `cow_payload_byte`).
fn pattern(tag: &str, round: u32, i: usize) -> u8 {
    let seed = tag.bytes().fold(round, |acc, b| acc.wrapping_mul(31).wrapping_add(u32::from(b)));
    (seed.wrapping_add(i as u32).wrapping_mul(2_654_435_761) >> 24) as u8
}

/// An Ethernet/IPv4/UDP frame from `mac` to the host with a `size`-byte payload (UDP checksum
/// 0: none): the tag `TAG ROUND` padded to [`TAG_LEN`], then the pattern. Returns its length.
fn build_frame(out: &mut [u8], mac: [u8; 6], ip: [u8; 4], port: u16, size: usize, tag: &str, round: u32) -> usize {
    let len = HEADERS + size;
    let f = &mut out[..len];
    f[0..6].copy_from_slice(&SLIRP_MAC);
    f[6..12].copy_from_slice(&mac);
    f[12..14].copy_from_slice(&[0x08, 0x00]);
    let ip_header = &mut f[14..34];
    ip_header.fill(0);
    ip_header[0] = 0x45;
    ip_header[2..4].copy_from_slice(&((20 + 8 + size) as u16).to_be_bytes());
    ip_header[8] = 64;
    ip_header[9] = 17;
    ip_header[12..16].copy_from_slice(&ip);
    ip_header[16..20].copy_from_slice(&HOST_IP);
    let checksum = ip_checksum(ip_header);
    ip_header[10..12].copy_from_slice(&checksum.to_be_bytes());
    f[34..36].copy_from_slice(&4000u16.to_be_bytes());
    f[36..38].copy_from_slice(&port.to_be_bytes());
    f[38..40].copy_from_slice(&((8 + size) as u16).to_be_bytes());
    f[40..42].fill(0);
    let payload = &mut f[HEADERS..];
    let tag_end = TAG_LEN.min(size);
    let mut text = [b' '; TAG_LEN];
    let mut w = 0;
    for b in tag.bytes().chain(*b" ") {
        text[w] = b;
        w += 1;
    }
    let mut digits = [0u8; 10];
    let (mut n, mut count) = (round, 0);
    loop {
        digits[count] = b'0' + (n % 10) as u8;
        count += 1;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    for i in (0..count).rev() {
        text[w] = digits[i];
        w += 1;
    }
    payload[..tag_end].copy_from_slice(&text[..tag_end]);
    for (i, byte) in payload[tag_end..].iter_mut().enumerate() {
        *byte = pattern(tag, round, i);
    }
    len
}

/// Reads `len` bytes of tx slot `slot` from `offset` (within the slot) through the guest's own
/// mapping, as the CPU translates it now.
fn read_slot(nic: &RawNic, slot: u32, offset: u64, out: &mut [u8]) {
    let base = nic.tx_frame_addr(slot) - TX_HEADROOM + offset;
    for (i, byte) in out.iter_mut().enumerate() {
        // SAFETY: inside the tx area, mapped (readable) for this guest; `offset + len` is
        // within the slot (callers pass ranges of the slot's pages).
        *byte = unsafe { core::ptr::read_volatile((base + i as u64) as *const u8) };
    }
}

fn main(env: &Env) -> i32 {
    let Some(nic) = RawNic::open(env.net) else {
        println!("cow-rewriter needs a virtual NIC (net = true)");
        return 2;
    };
    let arg = |key: &str, default: u32| env.arg(key).and_then(|p| p.parse().ok()).unwrap_or(default);
    let port = arg("port", 9) as u16;
    let rounds = arg("rounds", 20);
    let max_payload = (nic.slot_size - TX_HEADROOM) as usize - HEADERS;
    let max_payload = max_payload.min(usize::from(nic.config.mtu) - 28);
    let size = (arg("size", TAG_LEN as u32) as usize).clamp(TAG_LEN, max_payload);
    let spoofs = arg("spoof", 1);
    let probe = env.arg("probe") == Some("stale-tlb");
    let pages = nic.slot_size / PAGE;
    let (mac, ip) = (nic.config.mac, nic.config.ipv4);
    let mut frame = alloc::vec![0u8; HEADERS + size];
    let mut scratch = alloc::vec![0u8; nic.slot_size as usize];
    let mut original = alloc::vec![0u8; nic.slot_size as usize];
    let second = tsc_hz();
    let send = |slot: u32, frame: &[u8]| -> u32 {
        nic.write_tx_slot(slot, frame);
        let index = nic.tx_producer();
        nic.write_tx_desc(index, nic.tx_frame_addr(slot), frame.len() as u32);
        nic.set_tx_producer(index.wrapping_add(1));
        vi::vnic_tx_kick();
        index
    };
    // Rewrites the slot's first page at once (header and tag): in flight, this write must fault.
    let rewrite = |slot: u32, round: u32, buf: &mut [u8]| {
        let len = build_frame(buf, SPOOFED_MAC, ip, port, TAG_LEN, "REWRITTEN", round);
        nic.write_tx_slot(slot, &buf[..len]);
    };
    let (mut in_flight_rewrites, mut spoof_rejected, mut stale_reads, mut failures) = (0u32, 0u32, 0u32, 0u32);
    for round in 0..rounds {
        let len = build_frame(&mut frame, mac, ip, port, size, "ORIGINAL", round);
        let index = send(0, &frame[..len]);
        let in_flight = nic.tx_consumer() == index;
        if probe {
            // Cache read-only translations of the other pages (they map the old frames).
            for page in 1..pages {
                read_slot(&nic, 0, page * PAGE, &mut scratch[..1]);
            }
        }
        rewrite(0, round, &mut scratch);
        in_flight_rewrites += u32::from(in_flight);
        if !nic.wait_tx_consumer(index.wrapping_add(1), second) {
            failures += 1;
        }
        if probe {
            // The old frames are free now; have the kernel reuse them for a copy of slot 1.
            let len = build_frame(&mut frame, mac, ip, port, size, "MARKER", round);
            let marker = send(1, &frame[..len]);
            let in_flight = nic.tx_consumer() == marker;
            rewrite(1, round, &mut scratch);
            in_flight_rewrites += u32::from(in_flight);
            if !nic.wait_tx_consumer(marker.wrapping_add(1), second) {
                failures += 1;
            }
            // Slot 0's other pages still hold the original frame (the rewrite touched page 0).
            let len = build_frame(&mut original, mac, ip, port, size, "ORIGINAL", round);
            let end = TX_HEADROOM + len as u64;
            let mut stale = false;
            for page in 1..pages {
                let (start, stop) = (page * PAGE, ((page + 1) * PAGE).min(end));
                if start >= stop {
                    break;
                }
                let got = &mut scratch[..(stop - start) as usize];
                read_slot(&nic, 0, start, got);
                let want = &original[(start - TX_HEADROOM) as usize..(stop - TX_HEADROOM) as usize];
                stale |= got != want;
            }
            if stale {
                stale_reads += 1;
                println!("cow-rewriter: round {round}: slot 0 reads back other bytes than it holds (stale TLB entry)");
            }
        }
        // The slot now holds our rewrite; send a proper frame from it with new bytes.
        let len = build_frame(&mut frame, mac, ip, port, size, "AFTER", round);
        let after = send(0, &frame[..len]);
        if !nic.wait_tx_consumer(after.wrapping_add(1), second) || nic.tx_status(after) != Some(DescStatus::Done) {
            failures += 1;
        }
        for _ in 0..spoofs {
            let len = build_frame(&mut frame, SPOOFED_MAC, ip, port, size, "SPOOFED", round);
            let spoof = send(2, &frame[..len]);
            nic.wait_tx_consumer(spoof.wrapping_add(1), second);
            match nic.tx_status(spoof) {
                Some(DescStatus::RejectedSpoofedSource) => spoof_rejected += 1,
                status => {
                    failures += 1;
                    println!("cow-rewriter: a spoofed frame ended {status:?}");
                }
            }
        }
    }
    println!(
        "hostile-report role=cow-rewriter rounds={rounds} size={size} in_flight_rewrites={in_flight_rewrites} \
         spoof_rejected={spoof_rejected} stale_reads={stale_reads} failures={failures}"
    );
    i32::from(failures > 0 || stale_reads > 0)
}

extern crate alloc;
guest_os::entry!(main);
