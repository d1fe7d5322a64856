//! `vnet::vswitch`: ports added, then frames routed from guests and from the uplink.
//!
//! MACs and addresses come from small pools (so ports collide, frames hit known and unknown
//! MACs, broadcast and multicast), frames are cut at every length around the Ethernet and ARP
//! headers. `add_port` must refuse exactly what a model refuses and change nothing then. Every
//! route must equal the switch's documented rule, and in particular: a frame is never routed
//! back to its sender; unicast to a local MAC goes to that guest only; a frame from the uplink
//! never goes back to the uplink; a frame too short for its headers is dropped as malformed;
//! a broadcast ARP reaches only the owner of the address asked for. `source_is` accepts
//! exactly the frames carrying the sender's own MAC.
//!
//! Then delivery, modelled from the portable pieces the kernel's `deliver` is made of: a frame
//! from a guest must carry its own source MAC, a routed frame must fit the destination's MTU,
//! takes the next buffer the destination posted (`RxRing::take` on a producer the guest moves
//! anywhere) and must fit that buffer (`validate_rx` on a descriptor the guest wrote).
//! Every frame ends in exactly one counter (`frames = uplink + delivered + each drop`), a
//! delivered frame lies inside the destination's rx area, fits its MTU and buffer, and fills a
//! buffer the guest posted, once.

use crate::engine::{Target, Verdict};
use crate::features::Features;
use crate::source::Source;
use crate::{check, check_eq};
use hypercall_abi::layout::VNIC_RX_AREA_ADDR;
use hypercall_abi::vnic::{max_frame, rx_buffer_addr_for, slot_size, MAX_MTU, MIN_MTU, MTU, RX_RING_SIZE, RX_SLOTS};
use kernel_core::vnet::ring::position;
use kernel_core::vnet::{
    validate_rx, DropReason, Ipv4, Mac, NetCounters, Route, RxRing, Source as From, Vswitch, VswitchError, BROADCAST,
};

pub const TARGET: Target = Target {
    name: "vswitch",
    checks: "add_port refuses what a model refuses; routes equal the documented rule: never back to the sender, \
             unicast to its owner only, uplink never to uplink, short frames malformed; source_is exact; \
             delivery (MTU, rx ring, posted buffer) puts every frame in exactly one counter",
    max_len: 2048,
    dictionary: &[&[0x08, 0x06], &[0x08, 0x00], &[0xff; 6], &[0x02, 0, 0, 0, 0, 1]],
    seeds,
    run,
};

const MACS: [Mac; 8] = [
    [0x02, 0, 0, 0, 0, 1],
    [0x02, 0, 0, 0, 0, 2],
    [0x02, 0, 0, 0, 0, 3],
    [0x52, 0x54, 0, 0x12, 0x34, 0x56],
    [0x02, 0, 0, 0, 1, 0],
    [0x03, 0, 0, 0, 0, 1],
    [0x01, 0, 0x5e, 0, 0, 1],
    BROADCAST,
];
const IPS: [Ipv4; 5] = [[10, 0, 2, 16], [10, 0, 2, 17], [10, 0, 2, 18], [10, 0, 2, 2], [0, 0, 0, 0]];
const GUESTS: usize = 6;
const ETHERTYPE_ARP: u16 = 0x0806;

fn seeds(_: &crate::real::RealInputs) -> Vec<Vec<u8>> {
    vec![
        // Three ports, then frames from each source to each MAC.
        vec![3, 0, 0, 0, 1, 1, 1, 2, 2, 2, 0, 1, 0, 0, 1, 1, 60, 2, 7, 0, 1, 1, 0, 42, 0, 6, 7, 0, 0, 1, 2, 42],
        vec![5; 64],
        (0..=255).collect(),
    ]
}

/// The ports as the model knows them: (guest, MAC, address), in the order they were added.
type Ports = Vec<(usize, Mac, Ipv4)>;

fn model_add(ports: &Ports, guest: usize, mac: Mac, ip: Ipv4) -> Result<(), VswitchError> {
    if mac[0] & 1 != 0 {
        Err(VswitchError::MulticastMac(mac))
    } else if ports.iter().any(|p| p.0 == guest) {
        Err(VswitchError::GuestHasPort(guest))
    } else if ports.iter().any(|p| p.1 == mac) {
        Err(VswitchError::DuplicateMac(mac))
    } else if ports.iter().any(|p| p.2 == ip) {
        Err(VswitchError::DuplicateIp(ip))
    } else {
        Ok(())
    }
}

/// The rule of the module's documentation, written out directly.
fn model_route(ports: &Ports, frame: &[u8], from: From) -> Route {
    if frame.len() < 14 {
        return Route::Drop(DropReason::Malformed);
    }
    let dst: Mac = frame[..6].try_into().unwrap();
    let from_guest = |g: usize| from == From::Guest(g);
    if dst[0] & 1 == 0 {
        return match (ports.iter().find(|p| p.1 == dst), from) {
            (Some(p), _) if from_guest(p.0) => Route::Drop(DropReason::Loopback),
            (Some(p), _) => Route::Guest(p.0),
            (None, From::Guest(_)) => Route::Uplink,
            (None, From::Uplink) => Route::Drop(DropReason::UnknownMac),
        };
    }
    if u16::from_be_bytes([frame[12], frame[13]]) == ETHERTYPE_ARP {
        if frame.len() < 42 {
            return Route::Drop(DropReason::Malformed);
        }
        let target: Ipv4 = frame[38..42].try_into().unwrap();
        if let Some(p) = ports.iter().find(|p| p.2 == target) {
            if !from_guest(p.0) {
                return Route::Guest(p.0);
            }
        }
    }
    match from {
        From::Guest(_) => Route::Uplink,
        From::Uplink => Route::Drop(DropReason::NotForUs),
    }
}

fn frame(source: &mut Source) -> Vec<u8> {
    let dst = match source.below(10) {
        0 => source.bytes(6).to_vec(),
        _ => source.pick(&MACS).to_vec(),
    };
    let src = source.pick(&MACS);
    let ethertype = match source.below(4) {
        0 | 1 => ETHERTYPE_ARP,
        2 => 0x0800,
        _ => source.u16(),
    };
    let mut frame = [dst.as_slice(), &src, &ethertype.to_be_bytes()].concat();
    frame.resize(14, 0);
    // An ARP request body: hardware/protocol types and sizes, opcode, sender, target.
    frame.extend_from_slice(&[0, 1, 0x08, 0x00, 6, 4, 0, 1]);
    frame.extend_from_slice(&src);
    frame.extend_from_slice(&source.pick(&IPS));
    frame.extend_from_slice(&[0; 6]);
    frame.extend_from_slice(&source.pick(&IPS));
    let len = match source.below(3) {
        0 => source.below(43),
        1 => 42,
        _ => usize::from(source.u16() % 1600),
    };
    frame.resize(len, 0xab);
    frame
}

fn run(input: &[u8], features: &mut Features) -> Verdict {
    let mut source = Source::new(input);
    let mut switch = if source.bool() { Vswitch::new() } else { Vswitch::with_capacity(source.below(4)) };
    let mut ports: Ports = Vec::new();
    for _ in 0..source.below(GUESTS + 2) {
        let (guest, mac, ip) = (source.below(GUESTS), source.pick(&MACS), source.pick(&IPS));
        let got = switch.add_port(guest, mac, ip);
        features.note("add", got.as_ref().map_or_else(add_error_kind, |()| 0));
        check_eq!(got, model_add(&ports, guest, mac, ip), "add_port({guest}, {mac:02x?}, {ip:?})");
        match got {
            Ok(()) => ports.push((guest, mac, ip)),
            Err(e) => {
                let _ = e.to_string();
            }
        }
        check_eq!(switch.port_count(), ports.len(), "port count");
    }
    for &(guest, mac, ip) in &ports {
        check_eq!(switch.mac_of(guest), Some(mac), "mac_of({guest})");
        check_eq!(switch.guest_by_mac(&mac), Some(guest), "guest_by_mac");
        check_eq!(switch.guest_by_ip(&ip), Some(guest), "guest_by_ip");
    }

    let mut nics: Vec<Nic> = (0..GUESTS).map(|_| Nic::new(&mut source)).collect();
    let mut counters = NetCounters::default();
    let mut frames = 0u64;

    while !source.is_empty() {
        if source.below(4) == 0 {
            // A guest posts buffers: moves its producer anywhere, rewrites a descriptor.
            let nic = &mut nics[source.below(GUESTS)];
            nic.post(&mut source);
            continue;
        }
        let from = match source.below(GUESTS + 2) {
            g if g < GUESTS + 1 => From::Guest(g),
            _ => From::Uplink,
        };
        let frame = frame(&mut source);
        let route = switch.route(&frame, from);
        features.note(
            "route",
            match route {
                Route::Guest(g) => g as u64,
                Route::Uplink => 100,
                Route::Drop(reason) => 200 + reason as u64,
            } * 4
                + u64::from(from == From::Uplink) * 2
                + u64::from(frame.first().is_some_and(|b| b & 1 != 0)),
        );
        check_eq!(route, model_route(&ports, &frame, from), "route of {} bytes from {from:?}", frame.len());
        check_invariants(&ports, &frame, from, route)?;
        if let From::Guest(g) = from {
            let own = ports.iter().find(|p| p.0 == g).map(|p| p.1);
            let expected = own.is_some_and(|mac| frame.get(6..12) == Some(&mac[..]));
            check_eq!(switch.source_is(g, &frame), expected, "source_is({g})");
        }
        if let Route::Drop(reason) = route {
            check!(!reason.kind().is_empty() && !reason.to_string().is_empty(), "drop reason without a name");
        }
        frames += 1;
        let outcome = deliver(&switch, &mut nics, &frame, from)?;
        features.note("deliver", outcome as u64);
        *counter(&mut counters, outcome) += 1;
        let accounted = counters.tx_packets
            + counters.rx_packets
            + counters.drops_spoof
            + counters.drops_malformed
            + counters.drops_unknown_mac
            + counters.drops_oversize
            + counters.drops_no_buffer
            + counters.drops_bad_rx_ring
            + counters.drops_bad_desc
            + counters.drops_rx_buffer_small;
        check_eq!(accounted, frames, "frames accounted for by the counters {counters:?}");
    }
    Ok(())
}

/// A guest's receive side: its ring as the kernel keeps it, and what the guest wrote in its
/// shared page (producer, descriptors), which it may change at any time.
struct Nic {
    mtu: u64,
    rx: RxRing,
    producer: u32,
    descriptors: [(u64, u32); RX_RING_SIZE as usize],
    /// Ring indices filled since the guest last posted.
    filled: Vec<u32>,
}

impl Nic {
    fn new(source: &mut Source) -> Nic {
        let mtu = source.pick(&[MTU, MTU, MAX_MTU, MIN_MTU]);
        let start = source.u32_near(&[0, u32::MAX - 8]);
        // Well-formed full-slot buffers to begin with, all posted.
        let size = slot_size(mtu);
        let descriptors = core::array::from_fn(|i| (rx_buffer_addr_for(i as u64, size), size as u32));
        Nic {
            mtu,
            rx: RxRing::starting_at(start),
            producer: start.wrapping_add(RX_RING_SIZE),
            descriptors,
            filled: Vec::new(),
        }
    }

    fn post(&mut self, source: &mut Source) {
        let consumer = self.rx.consumer();
        self.producer = match source.below(4) {
            0 => source.u32(),
            _ => consumer.wrapping_add(u32::from(source.u8()) % (2 * RX_RING_SIZE + 2)).wrapping_sub(RX_RING_SIZE / 2),
        };
        self.filled.clear();
        if source.bool() {
            let size = slot_size(self.mtu);
            let slot = u64::from(source.u8()) % (RX_SLOTS + 2);
            let addr = rx_buffer_addr_for(slot, size).wrapping_add(source.u64_near(&[0, 1, 64, size - 64]));
            let capacity = source.u32_near(&[0, 14, 60, 1514, 4096, size as u32, u32::MAX]);
            // Usually the descriptor the next frame will use.
            let ahead = if source.bool() { 0 } else { source.u32() };
            self.descriptors[position(consumer.wrapping_add(ahead), RX_RING_SIZE)] = (addr, capacity);
        }
    }
}

/// Where a frame ended, as the kernel counts it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Outcome {
    Uplink,
    Delivered,
    Spoofed,
    Malformed,
    /// Unknown MAC, and (as the kernel's `count_drop` does) every other route drop.
    UnknownMac,
    Oversize,
    NoBuffer,
    BadRxRing,
    BadDescriptor,
    BufferTooSmall,
}

fn counter(counters: &mut NetCounters, outcome: Outcome) -> &mut u64 {
    match outcome {
        Outcome::Uplink => &mut counters.tx_packets,
        Outcome::Delivered => &mut counters.rx_packets,
        Outcome::Spoofed => &mut counters.drops_spoof,
        Outcome::Malformed => &mut counters.drops_malformed,
        Outcome::UnknownMac => &mut counters.drops_unknown_mac,
        Outcome::Oversize => &mut counters.drops_oversize,
        Outcome::NoBuffer => &mut counters.drops_no_buffer,
        Outcome::BadRxRing => &mut counters.drops_bad_rx_ring,
        Outcome::BadDescriptor => &mut counters.drops_bad_desc,
        Outcome::BufferTooSmall => &mut counters.drops_rx_buffer_small,
    }
}

/// What the kernel does with a frame, from the portable pieces: the source check for guests'
/// frames, the route, then for a guest the MTU, the rx ring and the posted buffer.
fn deliver(switch: &Vswitch, nics: &mut [Nic], frame: &[u8], from: From) -> Result<Outcome, String> {
    if let From::Guest(g) = from {
        if !switch.source_is(g, frame) {
            return Ok(Outcome::Spoofed);
        }
    }
    let dst = match switch.route(frame, from) {
        Route::Uplink => return Ok(Outcome::Uplink),
        Route::Drop(DropReason::Malformed) => return Ok(Outcome::Malformed),
        Route::Drop(_) => return Ok(Outcome::UnknownMac),
        Route::Guest(dst) => dst,
    };
    check!(from != From::Guest(dst), "a guest's frame delivered back to it");
    let Some(nic) = nics.get_mut(dst) else {
        return Err(format!("routed to guest {dst}, which has no NIC"));
    };
    let len = frame.len() as u64;
    if len > max_frame(nic.mtu) {
        return Ok(Outcome::Oversize);
    }
    let consumer = nic.rx.consumer();
    let index = match nic.rx.take(nic.producer) {
        Ok(Some(index)) => index,
        Ok(None) => {
            check_eq!(nic.producer, consumer, "no buffer although the guest posted some");
            return Ok(Outcome::NoBuffer);
        }
        Err(_) => {
            check!(nic.producer.wrapping_sub(consumer) > RX_RING_SIZE, "a producer within the ring refused");
            return Ok(Outcome::BadRxRing);
        }
    };
    check!(index == consumer && nic.producer.wrapping_sub(index) <= RX_RING_SIZE, "index {index} not posted");
    check!(!nic.filled.contains(&index), "rx buffer {index} filled twice");
    nic.filled.push(index);
    let (addr, capacity) = nic.descriptors[position(index, RX_RING_SIZE)];
    let size = slot_size(nic.mtu);
    let Ok(buffer) = validate_rx(addr, capacity, size) else {
        return Ok(Outcome::BadDescriptor);
    };
    if len > buffer.capacity {
        return Ok(Outcome::BufferTooSmall);
    }
    // Delivered: the frame lies in the destination's rx area, in the buffer it posted.
    let start = VNIC_RX_AREA_ADDR + buffer.slot * size + buffer.offset;
    check!(start == addr && start + len <= VNIC_RX_AREA_ADDR + RX_SLOTS * size, "frame outside the rx area");
    check!(buffer.offset + len <= size && len <= max_frame(nic.mtu), "frame outside its slot or over the MTU");
    Ok(Outcome::Delivered)
}

/// The properties that matter, stated on their own.
fn check_invariants(ports: &Ports, frame: &[u8], from: From, route: Route) -> Verdict {
    if frame.len() < 14 {
        check_eq!(route, Route::Drop(DropReason::Malformed), "short frame");
        return Ok(());
    }
    let dst = &frame[..6];
    match route {
        Route::Guest(g) => {
            check!(from != From::Guest(g), "frame routed back to its sender {g}");
            let port = ports.iter().find(|p| p.0 == g);
            check!(port.is_some(), "routed to guest {g}, which has no port");
            let (_, mac, ip) = port.unwrap();
            if dst[0] & 1 == 0 {
                check!(dst == mac, "unicast for {dst:02x?} delivered to guest {g} with {mac:02x?}");
            } else {
                check!(
                    frame.len() >= 42 && frame[38..42] == ip[..],
                    "group frame to guest {g} that did not ask for it"
                );
            }
        }
        Route::Uplink => check!(from != From::Uplink, "uplink frame sent back to the uplink"),
        Route::Drop(DropReason::Loopback) => {
            check!(
                ports.iter().any(|p| From::Guest(p.0) == from && p.1 == dst),
                "loopback drop of a frame to another MAC"
            )
        }
        Route::Drop(_) => {}
    }
    if dst[0] & 1 == 0 {
        if let Some(owner) = ports.iter().find(|p| p.1 == dst) {
            if from != From::Guest(owner.0) {
                check_eq!(route, Route::Guest(owner.0), "unicast to a local MAC");
            }
        }
    }
    Ok(())
}

fn add_error_kind(error: &VswitchError) -> u64 {
    match error {
        VswitchError::DuplicateMac(_) => 1,
        VswitchError::DuplicateIp(_) => 2,
        VswitchError::MulticastMac(_) => 3,
        VswitchError::GuestHasPort(_) => 4,
        VswitchError::NoMemory => 5,
    }
}
