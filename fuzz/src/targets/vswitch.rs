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

use crate::engine::{Target, Verdict};
use crate::features::Features;
use crate::source::Source;
use crate::{check, check_eq};
use isolation_kernel::vnet::{DropReason, Ipv4, Mac, Route, Source as From, Vswitch, VswitchError, BROADCAST};

pub const TARGET: Target = Target {
    name: "vswitch",
    checks: "add_port refuses what a model refuses; routes equal the documented rule: never back to the sender, \
             unicast to its owner only, uplink never to uplink, short frames malformed; source_is exact",
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

    while !source.is_empty() {
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
    }
    Ok(())
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
                check!(frame.len() >= 42 && frame[38..42] == ip[..], "group frame to guest {g} that did not ask for it");
            }
        }
        Route::Uplink => check!(from != From::Uplink, "uplink frame sent back to the uplink"),
        Route::Drop(DropReason::Loopback) => {
            check!(ports.iter().any(|p| From::Guest(p.0) == from && p.1 == dst), "loopback drop of a frame to another MAC")
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
    }
}
