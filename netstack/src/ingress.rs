//! Admission on the receive path: before the stack takes a frame from the rx ring, the guest
//! looks at it to decide whether its socket can hold it now, and afterwards counts where it went.
//!
//! A UDP socket's receive buffer is a smoltcp `PacketBuffer`: a ring of packet entries and a
//! ring of payload bytes, where a datagram that does not fit before the end of the byte ring is
//! preceded by a padding entry. smoltcp drops a datagram that does not fit, without a trace.
//! [`RxBook`] tracks the entries (datagrams and paddings) of one socket exactly, from what the
//! guest sees change (`recv_queue` bytes before and after each enqueue and dequeue), so that a
//! datagram is admitted only when it surely fits and otherwise waits in the rx ring; frames
//! wait there in order, where the kernel counts every one it cannot deliver.

use smoltcp::phy::{Checksum, ChecksumCapabilities};
use smoltcp::wire::{
    EthernetAddress, EthernetFrame, EthernetProtocol, IpAddress, IpProtocol, Ipv4Address, Ipv4Cidr, Ipv4Packet,
    Ipv4Repr, TcpControl, TcpPacket, TcpRepr, UdpPacket, UdpRepr, IPV4_MULTICAST_ALL_SYSTEMS,
};

/// What a received frame is, as the stack will treat it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Inbound {
    /// A UDP datagram addressed to this interface: destination port and payload length. Its
    /// UDP checksum is not checked yet (the stack checks it; see [`datagram_ok`]).
    Datagram { port: u16, len: usize },
    /// A TCP segment addressed to this interface, its checksum correct (or, under checksum
    /// offload, verified by the kernel).
    Segment(Segment),
    /// A frame the stack refuses: too short for its headers, a bad IPv4 header or checksum, a
    /// fragment (no reassembly), a non-unicast source, a bad UDP header, a bad TCP header or
    /// checksum.
    Malformed,
    /// Anything else: ARP, ICMP, other protocols, frames and packets addressed elsewhere.
    Other,
}

/// What admission needs to know of a TCP segment: who sent it, to which port, and the flags
/// that open (a SYN alone) or end (RST) a connection.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Segment {
    pub src: Ipv4Address,
    pub src_port: u16,
    pub dst_port: u16,
    /// A connection request: SYN without ACK.
    pub syn: bool,
    pub rst: bool,
}

/// The interface's own addresses, as the stack matches frames against them.
#[derive(Clone, Copy, Debug)]
pub struct Identity {
    pub mac: EthernetAddress,
    pub cidr: Option<Ipv4Cidr>,
    /// Checksum offload: the kernel verified every UDP and TCP frame it delivers, and the stack
    /// checks no UDP or TCP checksum (nor does the count, so as to agree with it).
    pub checksum_offload: bool,
}

impl Identity {
    /// The limited broadcast address or the subnet's.
    fn is_broadcast(&self, addr: Ipv4Address) -> bool {
        addr.is_broadcast() || self.cidr.and_then(|c| c.broadcast()).is_some_and(|b| b == addr)
    }

    /// Unicast: neither broadcast (limited or the subnet's), multicast nor unspecified.
    fn is_unicast(&self, addr: Ipv4Address) -> bool {
        !(self.is_broadcast(addr) || addr.is_multicast() || addr.is_unspecified())
    }

    /// Whether the stack takes an IPv4 packet to `addr` as its own.
    fn accepts(&self, addr: Ipv4Address) -> bool {
        self.cidr.is_some_and(|c| c.address() == addr) || self.is_broadcast(addr) || addr == IPV4_MULTICAST_ALL_SYSTEMS
    }
}

/// The checks smoltcp makes on receive, except the UDP checksum (a pass over the payload, paid
/// again by the stack): IPv4 header checksums are cheap and checked.
fn caps_without_udp_checksum() -> ChecksumCapabilities {
    let mut caps = ChecksumCapabilities::default();
    caps.udp = Checksum::None;
    caps
}

/// Classifies `frame` as the stack (smoltcp 0.12 with this crate's features) will treat it,
/// with the same parsers it uses.
pub fn classify(frame: &[u8], me: &Identity) -> Inbound {
    let Ok(eth) = EthernetFrame::new_checked(frame) else { return Inbound::Malformed };
    let dst = eth.dst_addr();
    if !(dst.is_broadcast() || dst.is_multicast() || dst == me.mac) {
        return Inbound::Other;
    }
    if eth.ethertype() != EthernetProtocol::Ipv4 {
        return Inbound::Other;
    }
    let Ok(packet) = Ipv4Packet::new_checked(eth.payload()) else { return Inbound::Malformed };
    let caps = caps_without_udp_checksum();
    let Ok(ip) = Ipv4Repr::parse(&packet, &caps) else { return Inbound::Malformed };
    if !me.is_unicast(ip.src_addr) && !ip.src_addr.is_unspecified() {
        return Inbound::Malformed;
    }
    if !me.accepts(ip.dst_addr) {
        return Inbound::Other;
    }
    let (src, dst) = (IpAddress::Ipv4(ip.src_addr), IpAddress::Ipv4(ip.dst_addr));
    match ip.next_header {
        IpProtocol::Udp => {
            let Ok(udp) = UdpPacket::new_checked(packet.payload()) else { return Inbound::Malformed };
            match UdpRepr::parse(&udp, &src, &dst, &caps) {
                Ok(repr) => Inbound::Datagram { port: repr.dst_port, len: udp.payload().len() },
                Err(_) => Inbound::Malformed,
            }
        }
        IpProtocol::Tcp => {
            // With the checksum, as the stack checks it: a segment it would drop is malformed.
            let Ok(tcp) = TcpPacket::new_checked(packet.payload()) else { return Inbound::Malformed };
            match TcpRepr::parse(&tcp, &src, &dst, &vnic_driver::checksum_capabilities(me.checksum_offload)) {
                Ok(repr) => Inbound::Segment(Segment {
                    src: ip.src_addr,
                    src_port: repr.src_port,
                    dst_port: repr.dst_port,
                    syn: repr.control == TcpControl::Syn && repr.ack_number.is_none(),
                    rst: repr.control == TcpControl::Rst,
                }),
                Err(_) => Inbound::Malformed,
            }
        }
        _ => Inbound::Other,
    }
}

/// The receive path's quick look: if `frame` reads as an IPv4/UDP datagram for this interface,
/// its destination port and payload length, straight from the headers (no checksums, no other
/// checks: whether the stack takes it is seen afterwards, and anything else goes through
/// [`classify`]). The length never exceeds the bytes the frame holds.
pub fn udp_destination(frame: &[u8], me: &Identity) -> Option<(u16, usize)> {
    const ETHERNET: usize = 14;
    let dst = EthernetAddress::from_bytes(frame.get(..6)?);
    if frame.get(12..ETHERNET)? != [0x08, 0x00] || !(dst == me.mac || dst.is_multicast()) {
        return None;
    }
    let ip = frame.get(ETHERNET..)?;
    let version_ihl = *ip.first()?;
    let header = usize::from(version_ihl & 0x0f) * 4;
    if version_ihl >> 4 != 4 || header < 20 || *ip.get(9)? != u8::from(IpProtocol::Udp) {
        return None;
    }
    let dst_ip: [u8; 4] = ip.get(16..20)?.try_into().ok()?;
    if !me.accepts(Ipv4Address::from(dst_ip)) {
        return None;
    }
    let udp = ip.get(header..)?;
    let port = u16::from_be_bytes([*udp.get(2)?, *udp.get(3)?]);
    let length = usize::from(u16::from_be_bytes([*udp.get(4)?, *udp.get(5)?]));
    (8..=udp.len()).contains(&length).then_some((port, length - 8))
}

/// Whether the stack takes `frame` as a whole datagram for this interface: [`classify`] calls it
/// one and its UDP checksum holds (or is omitted, as IPv4 allows). For the second look at a
/// datagram the stack did not queue, and at empty ones (which add no bytes to show they went in).
pub fn datagram_ok(frame: &[u8], me: &Identity) -> bool {
    matches!(classify(frame, me), Inbound::Datagram { .. }) && (me.checksum_offload || udp_checksum_ok(frame))
}

/// Whether the UDP checksum of a frame [`classify`] called a datagram holds (or is omitted, as
/// IPv4 allows). False for anything that does not parse.
fn udp_checksum_ok(frame: &[u8]) -> bool {
    let check = || {
        let eth = EthernetFrame::new_checked(frame).ok()?;
        let packet = Ipv4Packet::new_checked(eth.payload()).ok()?;
        let ip = Ipv4Repr::parse(&packet, &caps_without_udp_checksum()).ok()?;
        let udp = UdpPacket::new_checked(packet.payload()).ok()?;
        let (src, dst) = (IpAddress::Ipv4(ip.src_addr), IpAddress::Ipv4(ip.dst_addr));
        UdpRepr::parse(&udp, &src, &dst, &ChecksumCapabilities::default()).ok()
    };
    check().is_some()
}

/// The receive buffer of one UDP socket as the guest tracks it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RxBook {
    pub port: u16,
    /// Datagrams in the buffer.
    pub queued: usize,
    /// Padding entries in the buffer (each takes a packet entry too).
    pub paddings: usize,
}

impl RxBook {
    pub fn new(port: u16) -> Self {
        RxBook { port, queued: 0, paddings: 0 }
    }

    /// Whether a datagram of `len` payload bytes surely fits a buffer of `packet_capacity`
    /// entries and `payload_capacity` bytes holding `bytes_queued` bytes (paddings included).
    ///
    /// smoltcp's `PacketBuffer::enqueue` refuses only when every entry is used, or when the
    /// free bytes are fewer than `len`, or when the free bytes before the ring's end are fewer
    /// than `len` and so are those after the padding that skips them. With two free entries and
    /// at least `2 * len` free bytes none of these can happen: if the bytes before the end are
    /// fewer than `len`, the rest of the free bytes are more than `len`. A datagram of 0 bytes
    /// needs one free entry and no padding.
    pub fn surely_fits(
        &self,
        len: usize,
        packet_capacity: usize,
        payload_capacity: usize,
        bytes_queued: usize,
    ) -> bool {
        let entries = self.queued + self.paddings;
        let free_bytes = payload_capacity.saturating_sub(bytes_queued);
        if entries == 0 {
            // An empty buffer starts over at its beginning: anything up to its size fits.
            packet_capacity > 0 && len <= payload_capacity
        } else if len == 0 {
            entries < packet_capacity
        } else {
            entries + 2 <= packet_capacity && free_bytes >= 2 * len
        }
    }

    /// A datagram of `len` bytes was queued and the buffer's bytes grew by `grew`: more than
    /// `len` means a padding went in before it.
    pub fn enqueued(&mut self, len: usize, grew: usize) {
        self.queued += 1;
        if grew > len {
            self.paddings += 1;
        }
    }

    /// A dequeue took `taken` (a datagram of that many bytes, or none) and the buffer's bytes
    /// shrank by `shrank`: more than the datagram means a padding went out before it.
    pub fn dequeued(&mut self, taken: Option<usize>, shrank: usize) {
        if taken.is_some() {
            self.queued = self.queued.saturating_sub(1);
        }
        if shrank > taken.unwrap_or(0) {
            self.paddings = self.paddings.saturating_sub(1);
        }
    }
}

/// Frames for host tests.
#[cfg(test)]
pub mod test_frames {
    use super::*;
    use std::vec;
    use std::vec::Vec;

    /// An Ethernet/IPv4/UDP frame with correct checksums.
    pub fn udp_frame(
        dst_mac: EthernetAddress,
        src: Ipv4Address,
        dst: Ipv4Address,
        port: u16,
        payload: &[u8],
    ) -> Vec<u8> {
        let udp_len = 8 + payload.len();
        let ip_len = 20 + udp_len;
        let mut frame = vec![0u8; 14 + ip_len];
        let mut eth = EthernetFrame::new_unchecked(&mut frame[..]);
        eth.set_dst_addr(dst_mac);
        eth.set_src_addr(EthernetAddress([2, 0, 0, 0, 0, 9]));
        eth.set_ethertype(EthernetProtocol::Ipv4);
        let ip = Ipv4Repr {
            src_addr: src,
            dst_addr: dst,
            next_header: IpProtocol::Udp,
            payload_len: udp_len,
            hop_limit: 64,
        };
        let mut packet = Ipv4Packet::new_unchecked(&mut frame[14..]);
        ip.emit(&mut packet, &ChecksumCapabilities::default());
        let mut udp = UdpPacket::new_unchecked(&mut frame[34..]);
        UdpRepr { src_port: 5000, dst_port: port }.emit(
            &mut udp,
            &src.into(),
            &dst.into(),
            payload.len(),
            |buf| buf.copy_from_slice(payload),
            &ChecksumCapabilities::default(),
        );
        frame
    }
}

#[cfg(test)]
mod tests {
    use super::test_frames::udp_frame;
    use super::*;
    use smoltcp::storage::{PacketBuffer, PacketMetadata};
    use std::vec;

    const MAC: EthernetAddress = EthernetAddress([2, 0, 0, 0, 0, 1]);
    const IP: Ipv4Address = Ipv4Address::new(10, 0, 0, 1);
    const PEER: Ipv4Address = Ipv4Address::new(10, 0, 0, 9);

    fn me() -> Identity {
        Identity { mac: MAC, cidr: Some(Ipv4Cidr::new(IP, 24)), checksum_offload: false }
    }

    #[test]
    fn under_checksum_offload_the_count_checks_no_l4_checksum_as_the_stack_checks_none() {
        let me = Identity { checksum_offload: true, ..me() };
        let mut bad_udp_sum = udp_frame(MAC, PEER, IP, 7, b"hello");
        bad_udp_sum[45] ^= 0xff;
        assert!(datagram_ok(&bad_udp_sum, &me));
        let mut bad_tcp = tcp_frame(80, TcpControl::None, true, b"data");
        let last = bad_tcp.len() - 1;
        bad_tcp[last] ^= 0x40;
        assert!(matches!(classify(&bad_tcp, &me), Inbound::Segment(_)));
        // The IPv4 header checksum stays the stack's.
        let mut bad_ip_sum = udp_frame(MAC, PEER, IP, 7, b"hello");
        bad_ip_sum[24] ^= 1;
        assert_eq!(classify(&bad_ip_sum, &me), Inbound::Malformed);
    }

    #[test]
    fn datagrams_for_us_are_told_from_the_rest() {
        let me = me();
        let ours = udp_frame(MAC, PEER, IP, 7, b"hello");
        assert_eq!(classify(&ours, &me), Inbound::Datagram { port: 7, len: 5 });
        assert!(udp_checksum_ok(&ours) && datagram_ok(&ours, &me));
        assert_eq!(classify(&udp_frame(MAC, PEER, IP, 7, b""), &me), Inbound::Datagram { port: 7, len: 0 });
        // Broadcast, limited or the subnet's, is ours too.
        let bcast = EthernetAddress::BROADCAST;
        let limited = udp_frame(bcast, PEER, Ipv4Address::BROADCAST, 9, b"x");
        assert_eq!(classify(&limited, &me), Inbound::Datagram { port: 9, len: 1 });
        let subnet = udp_frame(bcast, PEER, Ipv4Address::new(10, 0, 0, 255), 9, b"x");
        assert_eq!(classify(&subnet, &me), Inbound::Datagram { port: 9, len: 1 });
        // Another guest's MAC or address: not ours.
        let other_mac = udp_frame(EthernetAddress([2, 0, 0, 0, 0, 2]), PEER, IP, 7, b"x");
        assert_eq!(classify(&other_mac, &me), Inbound::Other);
        assert_eq!(classify(&udp_frame(MAC, PEER, Ipv4Address::new(10, 0, 0, 2), 7, b"x"), &me), Inbound::Other);
        // An ARP frame.
        let mut arp = ours.clone();
        arp[12..14].copy_from_slice(&[0x08, 0x06]);
        assert_eq!(classify(&arp, &me), Inbound::Other);
    }

    /// An Ethernet/IPv4/TCP frame from PEER:5000 to `port`, with correct checksums.
    fn tcp_frame(port: u16, control: TcpControl, ack: bool, payload: &[u8]) -> std::vec::Vec<u8> {
        use smoltcp::wire::{TcpSeqNumber, TcpTimestampRepr};
        let repr = TcpRepr {
            src_port: 5000,
            dst_port: port,
            control,
            seq_number: TcpSeqNumber(1000),
            ack_number: ack.then_some(TcpSeqNumber(2000)),
            window_len: 1024,
            window_scale: None,
            max_seg_size: None,
            sack_permitted: false,
            sack_ranges: [None; 3],
            timestamp: None::<TcpTimestampRepr>,
            payload,
        };
        let mut frame = udp_frame(MAC, PEER, IP, port, &vec![0; repr.buffer_len() - 8]);
        let ip = Ipv4Repr {
            src_addr: PEER,
            dst_addr: IP,
            next_header: IpProtocol::Tcp,
            payload_len: repr.buffer_len(),
            hop_limit: 64,
        };
        ip.emit(&mut Ipv4Packet::new_unchecked(&mut frame[14..]), &ChecksumCapabilities::default());
        let mut tcp = TcpPacket::new_unchecked(&mut frame[34..]);
        repr.emit(&mut tcp, &PEER.into(), &IP.into(), &ChecksumCapabilities::default());
        frame
    }

    #[test]
    fn tcp_segments_are_told_with_their_flags() {
        let me = me();
        let segment = |syn, rst| Inbound::Segment(Segment { src: PEER, src_port: 5000, dst_port: 80, syn, rst });
        assert_eq!(classify(&tcp_frame(80, TcpControl::Syn, false, b""), &me), segment(true, false));
        assert_eq!(classify(&tcp_frame(80, TcpControl::Syn, true, b""), &me), segment(false, false), "a SYN-ACK");
        assert_eq!(classify(&tcp_frame(80, TcpControl::None, true, b"data"), &me), segment(false, false));
        assert_eq!(classify(&tcp_frame(80, TcpControl::Rst, true, b""), &me), segment(false, true));
        // The stack drops a bad checksum: so does the count, as malformed.
        let mut bad = tcp_frame(80, TcpControl::None, true, b"data");
        let last = bad.len() - 1;
        bad[last] ^= 0x40;
        assert_eq!(classify(&bad, &me), Inbound::Malformed);
        assert_eq!(classify(&tcp_frame(80, TcpControl::None, true, b"data")[..40], &me), Inbound::Malformed);
        // Port 0 is refused by the stack's parser.
        assert_eq!(classify(&tcp_frame(0, TcpControl::Syn, false, b""), &me), Inbound::Malformed);
    }

    #[test]
    fn malformed_frames_are_named() {
        let me = me();
        let good = udp_frame(MAC, PEER, IP, 7, b"hello");
        assert_eq!(classify(&good[..10], &me), Inbound::Malformed, "shorter than an Ethernet header");
        assert_eq!(classify(&good[..30], &me), Inbound::Malformed, "cut IPv4 header");
        let mut bad_ip_sum = good.clone();
        bad_ip_sum[24] ^= 1;
        assert_eq!(classify(&bad_ip_sum, &me), Inbound::Malformed);
        let from_broadcast = udp_frame(MAC, Ipv4Address::BROADCAST, IP, 7, b"x");
        assert_eq!(classify(&from_broadcast, &me), Inbound::Malformed);
        let mut port_zero = udp_frame(MAC, PEER, IP, 0, b"x");
        assert_eq!(classify(&port_zero, &me), Inbound::Malformed);
        port_zero[36..38].copy_from_slice(&7u16.to_be_bytes());
        // A bad UDP checksum still looks like a datagram; the second look tells.
        let mut bad_udp_sum = good.clone();
        bad_udp_sum[45] ^= 0xff;
        assert_eq!(classify(&bad_udp_sum, &me), Inbound::Datagram { port: 7, len: 5 });
        assert!(!udp_checksum_ok(&bad_udp_sum) && !datagram_ok(&bad_udp_sum, &me));
        assert!(!datagram_ok(&from_broadcast, &me) && !datagram_ok(&bad_ip_sum, &me));
        // A zero checksum means "none" over IPv4.
        let mut no_sum = good.clone();
        no_sum[40..42].fill(0);
        assert!(udp_checksum_ok(&no_sum));
        assert!(!udp_checksum_ok(&good[..20]));
    }

    /// smoltcp's own receive buffer against the book: a datagram the book admits is always
    /// taken, and the book's count of entries stays exact, over many mixed sizes.
    #[test]
    fn the_book_tracks_smoltcp_and_admits_only_what_fits() {
        const PACKETS: usize = 16;
        const BYTES: usize = 16 * 1500;
        let mut buffer: PacketBuffer<'_, ()> =
            PacketBuffer::new(vec![PacketMetadata::EMPTY; PACKETS], vec![0u8; BYTES]);
        let mut book = RxBook::new(7);
        let mut state = 0x1234_5678_u64;
        let mut random = move |below: usize| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            (state % below as u64) as usize
        };
        let (mut admitted, mut refused, mut paddings_seen) = (0, 0, 0);
        for _ in 0..200_000 {
            if random(3) > 0 {
                let len = match random(4) {
                    0 => 0,
                    1 => 1472,
                    _ => random(1473),
                };
                let bytes = buffer.payload_bytes_count();
                if !book.surely_fits(len, PACKETS, BYTES, bytes) {
                    refused += 1;
                    continue;
                }
                assert!(buffer.enqueue(len, ()).is_ok(), "an admitted datagram of {len} bytes was refused: {book:?}");
                let grew = buffer.payload_bytes_count() - bytes;
                book.enqueued(len, grew);
                admitted += 1;
                paddings_seen += usize::from(grew > len);
            } else {
                let bytes = buffer.payload_bytes_count();
                let taken = buffer.dequeue().ok().map(|(_, payload)| payload.len());
                book.dequeued(taken, bytes - buffer.payload_bytes_count());
            }
            // Exact: every entry is in use exactly when the book says so.
            let full = book.queued + book.paddings == PACKETS;
            assert_eq!(buffer.is_full(), full, "{book:?}");
            assert_eq!(buffer.is_empty(), book.queued + book.paddings == 0, "{book:?}");
        }
        assert!(admitted > 50_000 && refused > 1_000 && paddings_seen > 100, "{admitted} {refused} {paddings_seen}");
    }

    #[test]
    fn the_quick_look_agrees_with_classify_on_datagrams() {
        let me = me();
        let bcast = EthernetAddress::BROADCAST;
        for frame in [
            udp_frame(MAC, PEER, IP, 7, b"hello"),
            udp_frame(MAC, PEER, IP, 9, b""),
            udp_frame(MAC, PEER, IP, 7, &[0x55; 1472]),
            udp_frame(bcast, PEER, Ipv4Address::BROADCAST, 9, b"x"),
            udp_frame(bcast, PEER, Ipv4Address::new(10, 0, 0, 255), 9, b"x"),
        ] {
            let Inbound::Datagram { port, len } = classify(&frame, &me) else { panic!("a datagram") };
            assert_eq!(udp_destination(&frame, &me), Some((port, len)));
        }
        let good = udp_frame(MAC, PEER, IP, 7, b"hello");
        assert_eq!(udp_destination(&udp_frame(EthernetAddress([2, 0, 0, 0, 0, 2]), PEER, IP, 7, b"x"), &me), None);
        assert_eq!(udp_destination(&udp_frame(MAC, PEER, Ipv4Address::new(10, 0, 0, 2), 7, b"x"), &me), None);
        assert_eq!(udp_destination(&good[..40], &me), None, "cut short");
        let mut long_claim = good.clone();
        long_claim[38..40].copy_from_slice(&2000u16.to_be_bytes());
        assert_eq!(udp_destination(&long_claim, &me), None, "a UDP length beyond the frame");
        let mut tcp = good.clone();
        tcp[23] = 6;
        assert_eq!(udp_destination(&tcp, &me), None);
    }

    #[test]
    fn admission_rules() {
        let book = RxBook { port: 7, queued: 13, paddings: 1 };
        assert!(book.surely_fits(1472, 16, 24_000, 24_000 - 2944));
        assert!(!book.surely_fits(1472, 16, 24_000, 24_000 - 2943), "fewer than twice the bytes free");
        assert!(book.surely_fits(0, 16, 24_000, 24_000));
        let book = RxBook { port: 7, queued: 14, paddings: 1 };
        assert!(!book.surely_fits(1, 16, 24_000, 0), "one entry left: a padding may need it");
        assert!(book.surely_fits(0, 16, 24_000, 24_000), "a zero-length datagram needs no padding");
        let book = RxBook { port: 7, queued: 16, paddings: 0 };
        assert!(!book.surely_fits(0, 16, 24_000, 0));
        // An empty buffer takes anything up to its size: a datagram never waits for ever.
        let empty = RxBook::new(7);
        assert!(empty.surely_fits(24_000, 16, 24_000, 0));
        assert!(!empty.surely_fits(24_001, 16, 24_000, 0));
    }
}
