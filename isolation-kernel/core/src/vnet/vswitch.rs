//! The virtual switch: decides where a frame goes, from its Ethernet header (and, for a
//! broadcast ARP, the address asked for).
//!
//! Every guest port has one unicast MAC and one IPv4 address, fixed by the kernel when the
//! guest is created, so the switch never learns addresses from traffic and a guest cannot
//! poison it. A frame for another local guest goes straight to it; anything else a guest sends
//! goes to the uplink (the physical NIC); traffic from the uplink reaches a guest only if it is
//! addressed to one. Broadcast ARP is delivered only to the guest owning the address asked for,
//! so a thousand guests do not each wake for every ARP request. Lookups are O(1) hash lookups;
//! routing a frame never allocates.

use alloc::vec::Vec;
use core::fmt;
use hashbrown::HashMap;

pub type Mac = [u8; 6];
pub type Ipv4 = [u8; 4];

pub const BROADCAST: Mac = [0xff; 6];
pub use super::wire::ETHERTYPE_ARP;
/// Ethernet header length.
const HEADER_LEN: usize = super::wire::ETHERNET_HEADER;
/// An Ethernet header plus an Ethernet/IPv4 ARP packet.
const ARP_FRAME_LEN: usize = HEADER_LEN + super::wire::ARP_IPV4;
/// Where an Ethernet/IPv4 ARP packet's target protocol address lies in the frame.
const ARP_TARGET_IP: core::ops::Range<usize> = 38..ARP_FRAME_LEN;

/// Whether a MAC is a group (multicast or broadcast) address: bit 0 of its first byte.
pub fn is_group(mac: &Mac) -> bool {
    mac[0] & 1 != 0
}

/// Where a frame came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Source {
    Guest(usize),
    Uplink,
}

/// Where a frame goes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Route {
    Guest(usize),
    Uplink,
    Drop(DropReason),
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DropReason {
    /// Too short for the header it claims to have.
    Malformed,
    /// Unicast from the uplink to a MAC that is no local guest's.
    UnknownMac,
    /// Broadcast or multicast from the uplink that no local guest needs.
    NotForUs,
    /// A guest sent a frame to itself.
    Loopback,
}

impl DropReason {
    /// A short, stable name for counters and logs.
    pub fn kind(&self) -> &'static str {
        match self {
            Self::Malformed => "malformed",
            Self::UnknownMac => "unknown_mac",
            Self::NotForUs => "not_for_us",
            Self::Loopback => "loopback",
        }
    }
}

impl fmt::Display for DropReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Malformed => "frame too short for its headers",
            Self::UnknownMac => "destination MAC is no local guest's",
            Self::NotForUs => "group frame no local guest needs",
            Self::Loopback => "guest sent a frame to itself",
        })
    }
}

/// A port the switch refused to add.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum VswitchError {
    /// Another port has this MAC.
    DuplicateMac(Mac),
    /// Another port has this IPv4 address.
    DuplicateIp(Ipv4),
    /// A port's MAC must be unicast.
    MulticastMac(Mac),
    /// The guest has a port already (one port per guest).
    GuestHasPort(usize),
    /// The kernel heap had no room for the port's record.
    NoMemory,
}

/// Formats a MAC as `02:00:00:00:00:01`.
struct MacText<'a>(&'a Mac);

impl fmt::Display for MacText<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let [a, b, c, d, e, g] = *self.0;
        write!(f, "{a:02x}:{b:02x}:{c:02x}:{d:02x}:{e:02x}:{g:02x}")
    }
}

impl fmt::Display for VswitchError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::DuplicateMac(mac) => write!(f, "MAC {} is already in use", MacText(mac)),
            Self::DuplicateIp([a, b, c, d]) => write!(f, "IPv4 address {a}.{b}.{c}.{d} is already in use"),
            Self::MulticastMac(mac) => write!(f, "MAC {} is a multicast address", MacText(mac)),
            Self::GuestHasPort(guest) => write!(f, "guest {guest} already has a port"),
            Self::NoMemory => write!(f, "no kernel memory for the port"),
        }
    }
}

/// The switch's lookups are keyed by a MAC or IPv4 address packed into a `u64` and hashed with
/// one multiply: on every frame's path, where a general-purpose hasher over a 6-byte array cost
/// ~100 instructions per lookup (`bench dispatch`). The stored keys are the kernel's own (from
/// the image), so a sender choosing the looked-up key cannot lengthen the probes.
#[derive(Clone, Copy, Debug, Default)]
struct AddressHasher(u64);

impl core::hash::Hasher for AddressHasher {
    fn finish(&self) -> u64 {
        // Fibonacci hashing: the multiply spreads the key into the high bits (hashbrown's tag),
        // the shift brings them down to the low bits (its bucket index) too.
        let h = self.0.wrapping_mul(0x9e37_79b9_7f4a_7c15);
        h ^ (h >> 32)
    }

    fn write(&mut self, bytes: &[u8]) {
        for &byte in bytes {
            self.0 = self.0.rotate_left(8) ^ u64::from(byte);
        }
    }

    fn write_u64(&mut self, value: u64) {
        self.0 = value;
    }
}

type AddressMap = HashMap<u64, usize, core::hash::BuildHasherDefault<AddressHasher>>;

/// A MAC as a map key.
fn mac_key(mac: &Mac) -> u64 {
    let [a, b, c, d, e, f] = *mac;
    u64::from_le_bytes([a, b, c, d, e, f, 0, 0])
}

/// An IPv4 address as a map key.
fn ip_key(ip: &Ipv4) -> u64 {
    u64::from(u32::from_le_bytes(*ip))
}

#[derive(Debug, Default)]
pub struct Vswitch {
    by_mac: AddressMap,
    by_ip: AddressMap,
    /// Each guest's MAC, by guest id (ids are dense: the guest table's indices).
    mac_of: Vec<Option<Mac>>,
    ports: usize,
}

impl Vswitch {
    pub fn new() -> Self {
        Self::default()
    }

    /// Reserves room for `additional` more ports now, fallibly (false: the heap is short).
    pub fn try_reserve(&mut self, additional: usize) -> bool {
        self.by_mac.try_reserve(additional).is_ok()
            && self.by_ip.try_reserve(additional).is_ok()
            && self.mac_of.try_reserve(additional).is_ok()
    }

    /// A switch with room for `ports` ports, so that adding them does not rehash.
    pub fn with_capacity(ports: usize) -> Self {
        Self {
            by_mac: AddressMap::with_capacity_and_hasher(ports, Default::default()),
            by_ip: AddressMap::with_capacity_and_hasher(ports, Default::default()),
            mac_of: Vec::with_capacity(ports),
            ports: 0,
        }
    }

    /// Connects `guest` with its MAC and IPv4 address. Nothing changes if it is refused.
    pub fn add_port(&mut self, guest: usize, mac: Mac, ip: Ipv4) -> Result<(), VswitchError> {
        if is_group(&mac) {
            return Err(VswitchError::MulticastMac(mac));
        }
        if self.mac_of(guest).is_some() {
            return Err(VswitchError::GuestHasPort(guest));
        }
        if self.by_mac.contains_key(&mac_key(&mac)) {
            return Err(VswitchError::DuplicateMac(mac));
        }
        if self.by_ip.contains_key(&ip_key(&ip)) {
            return Err(VswitchError::DuplicateIp(ip));
        }
        if let Some(missing) = guest.checked_sub(self.mac_of.len()) {
            self.mac_of.try_reserve(missing.saturating_add(1)).map_err(|_| VswitchError::NoMemory)?;
            self.mac_of.resize(guest.saturating_add(1), None);
        }
        if let Some(entry) = self.mac_of.get_mut(guest) {
            *entry = Some(mac);
        }
        self.by_mac.insert(mac_key(&mac), guest);
        self.by_ip.insert(ip_key(&ip), guest);
        self.ports = self.ports.saturating_add(1);
        Ok(())
    }

    pub fn port_count(&self) -> usize {
        self.ports
    }

    pub fn guest_by_mac(&self, mac: &Mac) -> Option<usize> {
        self.by_mac.get(&mac_key(mac)).copied()
    }

    pub fn guest_by_ip(&self, ip: &Ipv4) -> Option<usize> {
        self.by_ip.get(&ip_key(ip)).copied()
    }

    pub fn mac_of(&self, guest: usize) -> Option<Mac> {
        self.mac_of.get(guest).copied().flatten()
    }

    /// Where `frame`, received from `from`, goes. Reads only the Ethernet header and, for a
    /// group-addressed ARP frame, the target address; the rest of the frame is not looked at.
    pub fn route(&self, frame: &[u8], from: Source) -> Route {
        let Some(header) = frame.first_chunk::<HEADER_LEN>() else {
            return Route::Drop(DropReason::Malformed);
        };
        let Some(dst) = header.first_chunk::<6>() else {
            return Route::Drop(DropReason::Malformed);
        };
        let ethertype = u16::from_be_bytes([header[12], header[13]]);
        if !is_group(dst) {
            return match (self.guest_by_mac(dst), from) {
                (Some(guest), Source::Guest(sender)) if guest == sender => Route::Drop(DropReason::Loopback),
                (Some(guest), _) => Route::Guest(guest),
                (None, Source::Guest(_)) => Route::Uplink,
                (None, Source::Uplink) => Route::Drop(DropReason::UnknownMac),
            };
        }
        if ethertype == ETHERTYPE_ARP {
            let Some(target) = frame.get(ARP_TARGET_IP).and_then(|b| <&Ipv4>::try_from(b).ok()) else {
                return Route::Drop(DropReason::Malformed);
            };
            if let Some(guest) = self.guest_by_ip(target) {
                if from != Source::Guest(guest) {
                    return Route::Guest(guest);
                }
            }
        }
        match from {
            Source::Guest(_) => Route::Uplink,
            Source::Uplink => Route::Drop(DropReason::NotForUs),
        }
    }

    /// Whether the frame's source MAC is `guest`'s own: a guest may not send as anyone else.
    /// False for a frame too short to have a source MAC and for a guest without a port.
    pub fn source_is(&self, guest: usize, frame: &[u8]) -> bool {
        match (self.mac_of(guest), frame.get(6..12)) {
            (Some(mac), Some(src)) => mac == src,
            _ => false,
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing, clippy::arithmetic_side_effects)]
mod tests {
    use super::*;
    use alloc::string::ToString;
    use alloc::vec::Vec;

    fn mac(n: u16) -> Mac {
        let [hi, lo] = n.to_be_bytes();
        [0x02, 0, 0, 0, hi, lo]
    }

    fn ip(n: u16) -> Ipv4 {
        let [hi, lo] = n.to_be_bytes();
        [10, 0, hi, lo]
    }

    const OUTSIDE_MAC: Mac = [0x52, 0x54, 0, 0x12, 0x34, 0x56];
    const OUTSIDE_IP: Ipv4 = [192, 168, 1, 1];

    /// An Ethernet frame with a payload of `payload_len` bytes (IPv4 EtherType).
    fn frame(dst: Mac, src: Mac, payload_len: usize) -> Vec<u8> {
        let mut f = Vec::new();
        f.extend_from_slice(&dst);
        f.extend_from_slice(&src);
        f.extend_from_slice(&[0x08, 0x00]);
        f.resize(14 + payload_len, 0xab);
        f
    }

    /// A broadcast ARP request from `sender` asking for `target`.
    fn arp_request(sender_mac: Mac, sender_ip: Ipv4, target: Ipv4) -> Vec<u8> {
        let mut f = Vec::new();
        f.extend_from_slice(&BROADCAST);
        f.extend_from_slice(&sender_mac);
        f.extend_from_slice(&[0x08, 0x06]);
        f.extend_from_slice(&[0, 1, 0x08, 0x00, 6, 4, 0, 1]);
        f.extend_from_slice(&sender_mac);
        f.extend_from_slice(&sender_ip);
        f.extend_from_slice(&[0; 6]);
        f.extend_from_slice(&target);
        assert_eq!(f.len(), 42);
        f
    }

    /// Guests 0, 1, 2 with `mac(g)` and `ip(g)`.
    fn three_ports() -> Vswitch {
        let mut switch = Vswitch::new();
        for g in 0..3 {
            switch.add_port(g, mac(g as u16), ip(g as u16)).unwrap();
        }
        switch
    }

    #[test]
    fn unicast_to_a_local_guest_goes_to_it() {
        let switch = three_ports();
        assert_eq!(switch.route(&frame(mac(1), mac(0), 46), Source::Guest(0)), Route::Guest(1));
        assert_eq!(switch.route(&frame(mac(2), OUTSIDE_MAC, 46), Source::Uplink), Route::Guest(2));
        // A bare header is enough.
        assert_eq!(switch.route(&frame(mac(0), mac(2), 0), Source::Guest(2)), Route::Guest(0));
    }

    #[test]
    fn unicast_to_an_unknown_mac() {
        let switch = three_ports();
        assert_eq!(switch.route(&frame(OUTSIDE_MAC, mac(0), 46), Source::Guest(0)), Route::Uplink);
        assert_eq!(switch.route(&frame(mac(7), OUTSIDE_MAC, 46), Source::Uplink), Route::Drop(DropReason::UnknownMac));
    }

    #[test]
    fn a_guest_sending_to_itself_is_dropped() {
        let switch = three_ports();
        assert_eq!(switch.route(&frame(mac(1), mac(1), 46), Source::Guest(1)), Route::Drop(DropReason::Loopback));
    }

    #[test]
    fn broadcast_arp_goes_only_to_the_owner_of_the_target() {
        let switch = three_ports();
        let from_outside = arp_request(OUTSIDE_MAC, OUTSIDE_IP, ip(2));
        assert_eq!(switch.route(&from_outside, Source::Uplink), Route::Guest(2));
        let from_guest = arp_request(mac(0), ip(0), ip(1));
        assert_eq!(switch.route(&from_guest, Source::Guest(0)), Route::Guest(1));
        // Longer frames (Ethernet padding to 60 bytes) are fine.
        let mut padded = arp_request(mac(0), ip(0), ip(2));
        padded.resize(60, 0);
        assert_eq!(switch.route(&padded, Source::Guest(0)), Route::Guest(2));
        // Multicast destination, same rule.
        let mut multicast = arp_request(OUTSIDE_MAC, OUTSIDE_IP, ip(1));
        multicast[..6].copy_from_slice(&[0x01, 0x00, 0x5e, 0, 0, 1]);
        assert_eq!(switch.route(&multicast, Source::Uplink), Route::Guest(1));
    }

    #[test]
    fn broadcast_arp_for_a_non_local_address() {
        let switch = three_ports();
        let from_guest = arp_request(mac(1), ip(1), OUTSIDE_IP);
        assert_eq!(switch.route(&from_guest, Source::Guest(1)), Route::Uplink);
        let from_outside = arp_request(OUTSIDE_MAC, OUTSIDE_IP, [192, 168, 1, 2]);
        assert_eq!(switch.route(&from_outside, Source::Uplink), Route::Drop(DropReason::NotForUs));
        // A guest asking for its own address (a gratuitous ARP) is not sent back to it.
        let gratuitous = arp_request(mac(1), ip(1), ip(1));
        assert_eq!(switch.route(&gratuitous, Source::Guest(1)), Route::Uplink);
    }

    #[test]
    fn other_group_frames() {
        let switch = three_ports();
        assert_eq!(switch.route(&frame(BROADCAST, mac(0), 46), Source::Guest(0)), Route::Uplink);
        let ipv6_multicast = [0x33, 0x33, 0, 0, 0, 1];
        assert_eq!(switch.route(&frame(ipv6_multicast, mac(0), 46), Source::Guest(0)), Route::Uplink);
        assert_eq!(switch.route(&frame(BROADCAST, OUTSIDE_MAC, 46), Source::Uplink), Route::Drop(DropReason::NotForUs));
        // Not ARP, so the bytes where an ARP target would be are ignored.
        let mut not_arp = arp_request(OUTSIDE_MAC, OUTSIDE_IP, ip(1));
        not_arp[12..14].copy_from_slice(&[0x08, 0x00]);
        assert_eq!(switch.route(&not_arp, Source::Uplink), Route::Drop(DropReason::NotForUs));
    }

    #[test]
    fn short_frames_are_malformed() {
        let switch = three_ports();
        let full = frame(mac(1), mac(0), 0);
        for len in 0..14 {
            for from in [Source::Guest(0), Source::Uplink] {
                assert_eq!(switch.route(&full[..len], from), Route::Drop(DropReason::Malformed), "{len}");
            }
        }
        let arp = arp_request(OUTSIDE_MAC, OUTSIDE_IP, ip(1));
        for len in 14..42 {
            assert_eq!(switch.route(&arp[..len], Source::Uplink), Route::Drop(DropReason::Malformed), "{len}");
            assert_eq!(switch.route(&arp[..len], Source::Guest(0)), Route::Drop(DropReason::Malformed), "{len}");
        }
        assert_eq!(switch.route(&arp, Source::Uplink), Route::Guest(1));
    }

    #[test]
    fn add_port_refuses_duplicates_and_group_macs() {
        let mut switch = three_ports();
        assert_eq!(switch.add_port(5, mac(1), ip(5)), Err(VswitchError::DuplicateMac(mac(1))));
        assert_eq!(switch.add_port(5, mac(5), ip(2)), Err(VswitchError::DuplicateIp(ip(2))));
        assert_eq!(switch.add_port(5, BROADCAST, ip(5)), Err(VswitchError::MulticastMac(BROADCAST)));
        let group = [0x01, 0x00, 0x5e, 0, 0, 9];
        assert_eq!(switch.add_port(5, group, ip(5)), Err(VswitchError::MulticastMac(group)));
        assert_eq!(switch.add_port(1, mac(5), ip(5)), Err(VswitchError::GuestHasPort(1)));
        // Refusals change nothing.
        assert_eq!(switch.port_count(), 3);
        assert_eq!(switch.guest_by_mac(&mac(5)), None);
        assert_eq!(switch.guest_by_ip(&ip(5)), None);
        assert_eq!(switch.mac_of(5), None);
        assert_eq!(switch.mac_of(1), Some(mac(1)));
        assert_eq!(switch.add_port(5, mac(5), ip(5)), Ok(()));
        assert_eq!(switch.guest_by_mac(&mac(5)), Some(5));
    }

    #[test]
    fn errors_read_well() {
        assert_eq!(VswitchError::DuplicateMac(mac(0x1a2b)).to_string(), "MAC 02:00:00:00:1a:2b is already in use");
        assert_eq!(VswitchError::DuplicateIp(ip(258)).to_string(), "IPv4 address 10.0.1.2 is already in use");
        assert!(VswitchError::MulticastMac(BROADCAST).to_string().contains("ff:ff:ff:ff:ff:ff"));
        assert!(VswitchError::GuestHasPort(4).to_string().contains("guest 4"));
        let kinds = [DropReason::Malformed, DropReason::UnknownMac, DropReason::NotForUs, DropReason::Loopback]
            .map(|r| r.kind());
        assert_eq!(kinds, ["malformed", "unknown_mac", "not_for_us", "loopback"]);
        assert!(!DropReason::Loopback.to_string().is_empty());
    }

    #[test]
    fn spoof_check() {
        let switch = three_ports();
        assert!(switch.source_is(1, &frame(OUTSIDE_MAC, mac(1), 46)));
        assert!(!switch.source_is(1, &frame(OUTSIDE_MAC, mac(2), 46)));
        assert!(!switch.source_is(1, &frame(OUTSIDE_MAC, OUTSIDE_MAC, 46)));
        assert!(!switch.source_is(1, &frame(OUTSIDE_MAC, BROADCAST, 46)));
        // Too short to hold a source MAC, or no such guest.
        let good = frame(OUTSIDE_MAC, mac(1), 0);
        assert!(switch.source_is(1, &good[..12]));
        assert!(!switch.source_is(1, &good[..11]));
        assert!(!switch.source_is(1, &[]));
        assert!(!switch.source_is(9, &frame(OUTSIDE_MAC, mac(9), 46)));
        assert!(!switch.source_is(usize::MAX, &good));
    }

    #[test]
    fn a_thousand_ports() {
        let n = 1000u16;
        let mut switch = Vswitch::with_capacity(n.into());
        for g in 0..n {
            switch.add_port(g.into(), mac(g), ip(g)).unwrap();
        }
        assert_eq!(switch.port_count(), 1000);
        for g in 0..n {
            let guest = usize::from(g);
            assert_eq!(switch.guest_by_mac(&mac(g)), Some(guest));
            assert_eq!(switch.guest_by_ip(&ip(g)), Some(guest));
            assert_eq!(switch.mac_of(guest), Some(mac(g)));
            assert_eq!(switch.route(&frame(mac(g), OUTSIDE_MAC, 46), Source::Uplink), Route::Guest(guest));
            let arp = arp_request(OUTSIDE_MAC, OUTSIDE_IP, ip(g));
            assert_eq!(switch.route(&arp, Source::Uplink), Route::Guest(guest));
            let sender = (g + 1) % n;
            assert_eq!(switch.route(&arp, Source::Guest(sender.into())), Route::Guest(guest));
            assert!(switch.source_is(guest, &frame(BROADCAST, mac(g), 0)));
        }
        assert_eq!(switch.guest_by_mac(&mac(n)), None);
        assert_eq!(switch.route(&frame(mac(n), OUTSIDE_MAC, 46), Source::Uplink), Route::Drop(DropReason::UnknownMac));
    }
}
