use crate::{Duration, Instant, Ipv4Address, NetError, NetStack, Platform, MAX_UDP_PAYLOAD};
use hypercall_abi::vnic::NetConfig;
use std::cell::{Cell, RefCell};
use std::rc::Rc;
use std::vec;
use std::vec::Vec;
use vnic_driver::testing::{switch, CountingDoorbell, GuestMemory};

/// A clock the test moves by hand; idling records its deadline and jumps the clock there.
#[derive(Clone)]
struct FakePlatform {
    now: Rc<Cell<Instant>>,
    idles: Rc<RefCell<Vec<Option<Instant>>>>,
    yields: Rc<Cell<usize>>,
}

impl FakePlatform {
    fn new() -> Self {
        FakePlatform { now: Rc::new(Cell::new(Instant::ZERO)), idles: Rc::default(), yields: Rc::default() }
    }

    fn advance(&self, by: Duration) {
        self.now.set(self.now.get() + by);
    }
}

impl Platform for FakePlatform {
    fn now(&self) -> Instant {
        self.now.get()
    }

    fn idle_until(&mut self, deadline: Option<Instant>) {
        self.idles.borrow_mut().push(deadline);
        if let Some(deadline) = deadline {
            self.now.set(self.now.get().max(deadline));
        }
    }

    fn yield_now(&mut self) {
        self.yields.set(self.yields.get() + 1);
    }
}

type Stack<'a> = NetStack<'a, CountingDoorbell, FakePlatform>;

const MAC_A: [u8; 6] = [0x02, 0, 0, 0, 0, 0x0a];
const MAC_B: [u8; 6] = [0x02, 0, 0, 0, 0, 0x0b];
const IP_A: Ipv4Address = Ipv4Address::new(10, 0, 0, 1);
const IP_B: Ipv4Address = Ipv4Address::new(10, 0, 0, 2);
const GATEWAY: [u8; 4] = [10, 0, 0, 254];

fn config(mac: [u8; 6], ip: Ipv4Address, gateway: [u8; 4]) -> NetConfig {
    NetConfig { mac, ipv4: ip.octets(), prefix_len: 24, gateway, mtu: 1500 }
}

/// A stack on `mem` with a doorbell and platform the test keeps clones of.
fn stack(mem: &mut GuestMemory, config: NetConfig) -> (Stack<'_>, CountingDoorbell, FakePlatform) {
    let (bell, platform) = (CountingDoorbell::default(), FakePlatform::new());
    let mut stack = NetStack::new(config, mem.vnic(bell.clone()), platform.clone());
    // The stack announces itself first: a gratuitous ARP (a request for its own address).
    let sent = stack.device.kernel_side().take_tx();
    assert_eq!(sent.len(), 1, "one announcement");
    let arp = &sent[0];
    assert_eq!((&arp[0..6], &arp[6..12], &arp[12..14]), (&[0xff; 6][..], &config.mac[..], &[0x08, 0x06][..]));
    assert_eq!((&arp[20..22], &arp[28..32], &arp[38..42]), (&[0, 1][..], &config.ipv4[..], &config.ipv4[..]));
    // These tests are about the stack, whatever the driver's window: the whole ring posted, as
    // a busy guest's is (vnic-driver's own tests cover the window).
    vnic_driver::testing::post_whole_ring(&mut stack.device);
    (stack, bell, platform)
}

fn payload(len: usize) -> Vec<u8> {
    (0..len).map(|i| (i * 7 + len) as u8).collect()
}

/// One step of the two-guest world: both stacks poll, then the switch moves their frames.
fn step(a: &mut Stack<'_>, b: &mut Stack<'_>) {
    a.poll();
    b.poll();
    switch(&mut [(&MAC_A, a.device.kernel_side()), (&MAC_B, b.device.kernel_side())]);
}

#[test]
fn udp_echo_between_two_stacks_is_byte_exact() {
    let (mut mem_a, mut mem_b) = (GuestMemory::default(), GuestMemory::default());
    let (mut client, client_bell, clock_a) = stack(&mut mem_a, config(MAC_A, IP_A, GATEWAY));
    let (mut server, _, clock_b) = stack(&mut mem_b, config(MAC_B, IP_B, GATEWAY));
    let c = client.udp_bind(5000).unwrap();
    let s = server.udp_bind(7).unwrap();
    let sizes = [1, 64, 100, 512, 1400, MAX_UDP_PAYLOAD];
    assert_eq!(MAX_UDP_PAYLOAD, 1472);
    for &n in &sizes {
        client.udp_send(c, &payload(n), (IP_B, 7)).unwrap();
    }
    let mut echoed = Vec::new();
    let mut buf = vec![0; 2048];
    for _ in 0..50 {
        step(&mut client, &mut server);
        while let Some((n, from)) = server.udp_recv(s, &mut buf) {
            assert_eq!(from, (IP_A, 5000));
            server.udp_send(s, &buf[..n], from).unwrap();
        }
        while let Some((n, from)) = client.udp_recv(c, &mut buf) {
            assert_eq!(from, (IP_B, 7));
            echoed.push(buf[..n].to_vec());
        }
        if echoed.len() == sizes.len() {
            break;
        }
        clock_a.advance(Duration::from_millis(1));
        clock_b.advance(Duration::from_millis(1));
    }
    let expected: Vec<Vec<u8>> = sizes.iter().map(|&n| payload(n)).collect();
    assert_eq!(echoed, expected);
    let (cc, sc) = (client.vnic_counters(), server.vnic_counters());
    assert_eq!((cc.tx_dropped, cc.tx_rejected, sc.tx_dropped, sc.tx_rejected), (0, 0, 0, 0));
    // The announcement, the ARP request, then all six datagrams in one batch: three kicks.
    assert_eq!(cc.tx_frames, 2 + sizes.len() as u64);
    assert_eq!(client_bell.tx_kicks.get(), 3);
}

#[test]
fn one_doorbell_per_poll_for_a_batch() {
    let (mut mem_a, mut mem_b) = (GuestMemory::default(), GuestMemory::default());
    let (mut a, bell, clock_a) = stack(&mut mem_a, config(MAC_A, IP_A, GATEWAY));
    let (mut b, _, _) = stack(&mut mem_b, config(MAC_B, IP_B, GATEWAY));
    let ha = a.udp_bind(1).unwrap();
    let hb = b.udp_bind(2).unwrap();
    // Resolve ARP first.
    a.udp_send(ha, b"hi", (IP_B, 2)).unwrap();
    for _ in 0..4 {
        step(&mut a, &mut b);
    }
    let mut buf = [0; 16];
    assert_eq!(b.udp_recv(hb, &mut buf), Some((2, (IP_A, 1))));
    let kicks = bell.tx_kicks.get();
    for i in 0..10u8 {
        a.udp_send(ha, &[i], (IP_B, 2)).unwrap();
    }
    // The batch goes into the ring at once; its kick waits for the idle that usually follows.
    assert!(a.poll());
    assert_eq!(bell.tx_kicks.get(), kicks);
    // A guest that goes on polling instead kicks once, when the deferral has passed.
    assert!(!a.poll(), "nothing left to do");
    assert_eq!(bell.tx_kicks.get(), kicks);
    clock_a.advance(crate::KICK_DEFERRAL);
    assert!(!a.poll());
    assert_eq!(bell.tx_kicks.get(), kicks + 1);
    assert_eq!(a.device.kernel_side().take_tx().len(), 10);
    assert!(!a.poll());
    assert_eq!(bell.tx_kicks.get(), kicks + 1);
    // A batch followed by an idle costs no kick at all: idling hands the ring over.
    for i in 0..3u8 {
        a.udp_send(ha, &[i], (IP_B, 2)).unwrap();
    }
    assert!(a.poll());
    a.wait();
    assert_eq!(clock_a.idles.borrow().len(), 1, "it idled");
    clock_a.advance(crate::KICK_DEFERRAL);
    assert!(!a.poll());
    assert_eq!(bell.tx_kicks.get(), kicks + 1);
    assert_eq!(a.device.kernel_side().take_tx().len(), 3);
}

/// A ping gets its echo reply (smoltcp answers it itself; a frame counted as "other").
#[test]
fn a_ping_is_answered() {
    use smoltcp::phy::ChecksumCapabilities;
    use smoltcp::wire::{
        EthernetAddress, EthernetFrame, EthernetProtocol, Icmpv4Packet, Icmpv4Repr, IpProtocol, Ipv4Packet, Ipv4Repr,
    };
    let mut mem = GuestMemory::default();
    let (mut net, _, _) = stack(&mut mem, config(MAC_B, IP_B, GATEWAY));
    let icmp = Icmpv4Repr::EchoRequest { ident: 7, seq_no: 1, data: b"ping" };
    let ip = Ipv4Repr {
        src_addr: IP_A,
        dst_addr: IP_B,
        next_header: IpProtocol::Icmp,
        payload_len: icmp.buffer_len(),
        hop_limit: 64,
    };
    let mut frame = vec![0u8; 14 + 20 + icmp.buffer_len()];
    let mut eth = EthernetFrame::new_unchecked(&mut frame[..]);
    eth.set_dst_addr(EthernetAddress(MAC_B));
    eth.set_src_addr(EthernetAddress(MAC_A));
    eth.set_ethertype(EthernetProtocol::Ipv4);
    let caps = ChecksumCapabilities::default();
    ip.emit(&mut Ipv4Packet::new_unchecked(&mut frame[14..]), &caps);
    icmp.emit(&mut Icmpv4Packet::new_unchecked(&mut frame[34..]), &caps);
    // An ARP request from the pinger first, as a host sends: the stack learns its MAC.
    let mut arp = vec![0u8; 42];
    arp[0..6].fill(0xff);
    arp[6..12].copy_from_slice(&MAC_A);
    arp[12..14].copy_from_slice(&[0x08, 0x06]);
    arp[14..22].copy_from_slice(&[0, 1, 8, 0, 6, 4, 0, 1]);
    arp[22..28].copy_from_slice(&MAC_A);
    arp[28..32].copy_from_slice(&IP_A.octets());
    arp[38..42].copy_from_slice(&IP_B.octets());
    assert!(net.device.kernel_side().deliver(&arp));
    assert!(net.device.kernel_side().deliver(&frame));
    net.poll();
    let sent = net.device.kernel_side().take_tx();
    assert_eq!(sent.len(), 2, "the ARP reply and the echo reply");
    let sent = &sent[1..];
    let reply = Icmpv4Packet::new_checked(&sent[0][34..]).unwrap();
    let repr = Icmpv4Repr::parse(&reply, &caps).unwrap();
    assert_eq!(repr, Icmpv4Repr::EchoReply { ident: 7, seq_no: 1, data: b"ping" });
}

/// A poll that sent a batch as large as half a receive ring yields the CPU, so the receiver
/// takes it before the next batch; a small one does not.
#[test]
fn a_poll_that_sent_a_big_batch_yields() {
    let (mut mem_a, mut mem_b) = (GuestMemory::default(), GuestMemory::default());
    let (mut a, _, platform) = stack(&mut mem_a, config(MAC_A, IP_A, GATEWAY));
    let (mut b, _, _) = stack(&mut mem_b, config(MAC_B, IP_B, GATEWAY));
    let ha = a.udp_bind(1).unwrap();
    a.udp_send(ha, b"hi", (IP_B, 2)).unwrap();
    for _ in 0..4 {
        step(&mut a, &mut b);
    }
    assert_eq!(platform.yields.get(), 0);
    for i in 0..crate::YIELD_AFTER_FRAMES as u8 - 1 {
        a.udp_send(ha, &[i], (IP_B, 2)).unwrap();
    }
    a.poll();
    assert_eq!(platform.yields.get(), 0, "one frame short of a batch");
    a.device.kernel_side().take_tx();
    for i in 0..crate::YIELD_AFTER_FRAMES as u8 {
        a.udp_send(ha, &[i], (IP_B, 2)).unwrap();
    }
    a.poll();
    assert_eq!(platform.yields.get(), 1);
}

#[test]
fn socket_api_errors() {
    let mut mem = GuestMemory::default();
    let (mut net, _, _) = stack(&mut mem, config(MAC_A, IP_A, GATEWAY));
    assert_eq!(net.udp_bind(0), Err(NetError::Unaddressable));
    let h = net.udp_bind(53).unwrap();
    assert_eq!(net.udp_bind(53), Err(NetError::PortInUse));
    assert!(net.udp_bind(54).is_ok());
    assert_eq!(net.udp_send(h, &[0; MAX_UDP_PAYLOAD + 1], (IP_B, 1)), Err(NetError::TooLarge));
    assert_eq!(net.udp_send(h, b"x", (Ipv4Address::UNSPECIFIED, 1)), Err(NetError::Unaddressable));
    assert_eq!(net.udp_send(h, b"x", (IP_B, 0)), Err(NetError::Unaddressable));
    for _ in 0..crate::UDP_BUFFER_PACKETS {
        net.udp_send(h, b"x", (IP_B, 1)).unwrap();
    }
    assert_eq!(net.udp_send(h, b"x", (IP_B, 1)), Err(NetError::BufferFull));
    let mut buf = [0; 8];
    assert_eq!(net.udp_recv(h, &mut buf), None);
}

#[test]
fn long_datagram_is_cut_to_the_buffer() {
    let (mut mem_a, mut mem_b) = (GuestMemory::default(), GuestMemory::default());
    let (mut a, _, _) = stack(&mut mem_a, config(MAC_A, IP_A, GATEWAY));
    let (mut b, _, _) = stack(&mut mem_b, config(MAC_B, IP_B, GATEWAY));
    let ha = a.udp_bind(1).unwrap();
    let hb = b.udp_bind(2).unwrap();
    a.udp_send(ha, &payload(100), (IP_B, 2)).unwrap();
    for _ in 0..4 {
        step(&mut a, &mut b);
    }
    let mut buf = [0; 10];
    assert_eq!(b.udp_recv(hb, &mut buf), Some((10, (IP_A, 1))));
    assert_eq!(&buf[..], &payload(100)[..10]);
    assert_eq!(b.udp_recv(hb, &mut buf), None);
}

#[test]
fn wait_sleeps_until_the_deadline_smoltcp_asks_for() {
    let mut mem = GuestMemory::default();
    let (mut net, _, platform) = stack(&mut mem, config(MAC_A, IP_A, GATEWAY));
    // Nothing scheduled: sleep until a virtual interrupt.
    net.poll();
    net.wait();
    assert_eq!(platform.idles.borrow().as_slice(), &[None]);
    // A datagram to a neighbour nobody answers for: smoltcp sends an ARP request and asks to
    // be polled again when its one-second silence ends.
    let h = net.udp_bind(9).unwrap();
    net.udp_send(h, b"anyone?", (IP_B, 9)).unwrap();
    platform.advance(Duration::from_millis(5));
    let sent_at = net.now();
    net.poll();
    assert_eq!(net.device.kernel_side().take_tx().len(), 1, "the ARP request");
    net.wait();
    assert_eq!(platform.idles.borrow().last(), Some(&Some(sent_at + Duration::from_secs(1))));
    assert_eq!(net.now(), sent_at + Duration::from_secs(1));
    // When the silence has ended there is work at once: no idle.
    let idles = platform.idles.borrow().len();
    net.wait();
    assert_eq!(platform.idles.borrow().len(), idles);
}

#[test]
fn wait_returns_at_once_when_frames_are_waiting() {
    let (mut mem_a, mut mem_b) = (GuestMemory::default(), GuestMemory::default());
    let (mut a, _, _) = stack(&mut mem_a, config(MAC_A, IP_A, GATEWAY));
    let (mut b, _, platform_b) = stack(&mut mem_b, config(MAC_B, IP_B, GATEWAY));
    let ha = a.udp_bind(1).unwrap();
    a.udp_send(ha, b"x", (IP_B, 2)).unwrap();
    a.poll();
    switch(&mut [(&MAC_A, a.device.kernel_side()), (&MAC_B, b.device.kernel_side())]);
    b.wait();
    assert!(platform_b.idles.borrow().is_empty());
    b.poll();
    b.wait();
    assert_eq!(platform_b.idles.borrow().as_slice(), &[None]);
}

#[test]
fn off_link_traffic_goes_to_the_gateway_only_if_there_is_one() {
    let far = (Ipv4Address::new(192, 0, 2, 1), 9);
    for (gateway, expect_arp) in [(GATEWAY, true), ([0; 4], false)] {
        let mut mem = GuestMemory::default();
        let (mut net, _, _) = stack(&mut mem, config(MAC_A, IP_A, gateway));
        let h = net.udp_bind(9).unwrap();
        net.udp_send(h, b"far", far).unwrap();
        net.poll();
        let sent = net.device.kernel_side().take_tx();
        if expect_arp {
            assert_eq!(sent.len(), 1);
            let arp = &sent[0];
            assert_eq!(&arp[12..14], &[0x08, 0x06], "an ARP frame");
            assert_eq!(&arp[38..42], &GATEWAY, "asking for the gateway");
        } else {
            assert!(sent.is_empty(), "no route, nothing sent");
        }
    }
}

#[test]
fn wait_until_caps_the_sleep_at_the_app_deadline() {
    let mut mem = GuestMemory::default();
    let (mut net, _, platform) = stack(&mut mem, config(MAC_A, IP_A, GATEWAY));
    net.poll();
    // Nothing scheduled in smoltcp: the app's deadline.
    let limit = net.now() + Duration::from_millis(250);
    net.wait_until(limit);
    assert_eq!(platform.idles.borrow().as_slice(), &[Some(limit)]);
    // smoltcp's deadline (ARP silence, one second) is later: still the app's.
    let h = net.udp_bind(9).unwrap();
    net.udp_send(h, b"anyone?", (IP_B, 9)).unwrap();
    net.poll();
    let limit = net.now() + Duration::from_millis(100);
    net.wait_until(limit);
    assert_eq!(platform.idles.borrow().last(), Some(&Some(limit)));
    // An app deadline far away: smoltcp's comes first.
    let silence_ends = net.now() + Duration::from_millis(900);
    net.wait_until(net.now() + Duration::from_secs(60));
    assert_eq!(platform.idles.borrow().last(), Some(&Some(silence_ends)));
    // A deadline already passed: no idle at all.
    let idles = platform.idles.borrow().len();
    net.wait_until(Instant::ZERO);
    assert_eq!(platform.idles.borrow().len(), idles);
}

mod tcp;

mod no_silent_loss {
    use super::*;
    use crate::ingress::test_frames::udp_frame;
    use crate::AppOutcome;
    use hypercall_abi::vnic::{GuestCounter as C, GuestCounterValues, RX_RING_SIZE, TX_RING_SIZE};
    use smoltcp::wire::EthernetAddress;

    const PEER: Ipv4Address = Ipv4Address::new(10, 0, 0, 9);

    fn datagram(port: u16, payload: &[u8]) -> Vec<u8> {
        udp_frame(EthernetAddress(MAC_B), PEER, IP_B, port, payload)
    }

    /// An ARP request from the peer for our address (answering it, the stack learns the peer).
    fn arp_request() -> Vec<u8> {
        let mut arp = vec![0u8; 42];
        arp[0..6].fill(0xff);
        arp[6..12].copy_from_slice(&[2, 0, 0, 0, 0, 9]);
        arp[12..14].copy_from_slice(&[0x08, 0x06]);
        arp[14..22].copy_from_slice(&[0, 1, 8, 0, 6, 4, 0, 1]);
        arp[22..28].copy_from_slice(&[2, 0, 0, 0, 0, 9]);
        arp[28..32].copy_from_slice(&PEER.octets());
        arp[38..42].copy_from_slice(&IP_B.octets());
        arp
    }

    /// The counters the guest last published in its shared page (what the kernel reads).
    fn published(net: &mut Stack<'_>) -> GuestCounterValues {
        net.device.kernel_side().shared().guest_counters.read()
    }

    fn get(values: &GuestCounterValues, counter: C) -> u64 {
        values[counter as usize]
    }

    /// The ledgers every published snapshot must satisfy.
    fn assert_balanced(v: &GuestCounterValues) {
        let g = |c| get(v, c);
        assert_eq!(
            g(C::RxTaken),
            g(C::RxDatagrams) + g(C::RxTcpSegments) + g(C::RxOther) + g(C::DropsMalformed),
            "{v:?}"
        );
        assert_eq!(g(C::RxDatagrams), g(C::UdpDelivered) + g(C::DropsSocketFull) + g(C::DropsNoSocket), "{v:?}");
        assert_eq!(g(C::UdpDelivered), g(C::AppReceived) + g(C::UdpQueued), "{v:?}");
        assert_eq!(g(C::AppReceived), g(C::AppEchoes) + g(C::AppConsumed) + g(C::AppDrops) + g(C::AppHeld), "{v:?}");
    }

    /// A full ring of datagrams (more than the socket's 16 entries hold) arrives before the
    /// guest runs: it takes only what its socket surely holds, the rest waits in the ring, and
    /// the app gets every datagram intact, in order, with nothing dropped.
    #[test]
    fn a_full_ring_burst_waits_in_the_ring_instead_of_overflowing_the_socket() {
        for sizes in [vec![MAX_UDP_PAYLOAD; 32], vec![0; 32], (0..32).map(|i| i * 46 + i % 3).collect::<Vec<_>>()] {
            let mut mem = GuestMemory::default();
            let (mut net, _, _) = stack(&mut mem, config(MAC_B, IP_B, GATEWAY));
            let h = net.udp_bind(7).unwrap();
            let payloads: Vec<Vec<u8>> = sizes.iter().enumerate().map(|(i, &n)| payload(n + i)[i..].to_vec()).collect();
            assert_eq!(payloads.len(), RX_RING_SIZE as usize);
            for p in &payloads {
                assert!(net.device.kernel_side().deliver(&datagram(7, p)));
            }
            assert_eq!(net.device.kernel_side().rx_posted(), 0, "the ring is full");
            net.poll();
            let first = published(&mut net);
            assert_balanced(&first);
            let taken = get(&first, C::RxTaken);
            assert!(taken > 0 && taken < 32, "took {taken} of 32 into a 16-entry socket");
            assert_eq!(get(&first, C::UdpQueued), taken);
            assert_eq!(net.device.kernel_side().rx_posted(), taken as u32, "taken buffers are reposted");
            let mut got = Vec::new();
            let mut buf = vec![0; 2048];
            for _ in 0..10 {
                while let Some((n, from)) = net.udp_recv(h, &mut buf) {
                    assert_eq!(from, (PEER, 5000));
                    got.push(buf[..n].to_vec());
                    net.app_outcome(AppOutcome::Consumed);
                }
                net.poll();
            }
            assert_eq!(got, payloads, "every datagram, intact and in order");
            let end = published(&mut net);
            assert_balanced(&end);
            assert_eq!((get(&end, C::RxTaken), get(&end, C::UdpDelivered), get(&end, C::AppConsumed)), (32, 32, 32));
            assert_eq!((get(&end, C::DropsSocketFull), get(&end, C::UdpQueued), get(&end, C::AppHeld)), (0, 0, 0));
            assert_eq!(net.device.kernel_side().rx_posted(), RX_RING_SIZE);
        }
    }

    /// While its socket is full the app is not woken for frames that must wait (no busy loop),
    /// but is at once when one can be taken.
    #[test]
    fn waiting_frames_do_not_keep_the_guest_awake() {
        let mut mem = GuestMemory::default();
        let (mut net, _, platform) = stack(&mut mem, config(MAC_B, IP_B, GATEWAY));
        let h = net.udp_bind(7).unwrap();
        for i in 0..20 {
            net.device.kernel_side().deliver(&datagram(7, &payload(1000 + i)));
        }
        net.poll();
        let idles = platform.idles.borrow().len();
        net.wait();
        assert_eq!(platform.idles.borrow().len(), idles + 1, "the head frame waits for room: idle");
        let mut buf = vec![0; 2048];
        assert!(net.udp_recv(h, &mut buf).is_some());
        net.app_outcome(AppOutcome::Dropped);
        while net.udp_recv(h, &mut buf).is_some() {
            net.app_outcome(AppOutcome::Dropped);
        }
        net.wait();
        assert_eq!(platform.idles.borrow().len(), idles + 1, "room now: no idle");
        net.poll();
        let v = published(&mut net);
        assert_balanced(&v);
        assert_eq!(get(&v, C::RxTaken), 20);
        assert_eq!(get(&v, C::AppDrops), get(&v, C::AppReceived));
    }

    /// Every frame taken is counted by what became of it: closed port, malformed, bad UDP
    /// checksum, ARP, a frame for someone else; the published counters balance.
    #[test]
    fn every_frame_taken_is_counted_by_cause() {
        let mut mem = GuestMemory::default();
        let (mut net, _, _) = stack(&mut mem, config(MAC_B, IP_B, GATEWAY));
        let h = net.udp_bind(7).unwrap();
        let good = datagram(7, b"fine");
        let mut bad_ip = good.clone();
        bad_ip[24] ^= 1;
        let mut bad_udp = good.clone();
        bad_udp[45] ^= 0xff;
        let mut bad_empty = datagram(7, b"");
        bad_empty[40] ^= 0x55;
        let arp = arp_request();
        let elsewhere = udp_frame(EthernetAddress(MAC_A), PEER, IP_A, 7, b"not mine");
        for frame in [&good, &datagram(99, b"closed"), &bad_ip, &bad_udp, &bad_empty, &arp, &elsewhere, &good[..9]] {
            assert!(net.device.kernel_side().deliver(frame));
        }
        net.poll();
        let v = published(&mut net);
        assert_balanced(&v);
        assert_eq!(get(&v, C::RxTaken), 8);
        assert_eq!((get(&v, C::RxDatagrams), get(&v, C::UdpDelivered), get(&v, C::DropsNoSocket)), (2, 1, 1));
        assert_eq!(get(&v, C::DropsMalformed), 4, "bad IP checksum, bad UDP checksums, a runt");
        assert_eq!(get(&v, C::RxOther), 2, "the ARP request and the frame for another MAC");
        // The ARP reply and the port-unreachable went out.
        let sent = net.device.kernel_side().take_tx();
        assert_eq!(sent.len(), 2, "{sent:?}");
        let mut buf = [0; 16];
        assert_eq!(net.udp_recv(h, &mut buf), Some((4, (PEER, 5000))));
        net.app_outcome(AppOutcome::Echoed);
        net.poll();
        let v = published(&mut net);
        assert_balanced(&v);
        assert_eq!((get(&v, C::AppReceived), get(&v, C::AppEchoes)), (1, 1));
    }

    /// An app's own totals are published at the next poll as set (not added up); counters the
    /// stack keeps cannot be set by an app.
    #[test]
    fn app_totals_are_published_as_set() {
        let mut mem = GuestMemory::default();
        let (mut net, _, _) = stack(&mut mem, config(MAC_B, IP_B, GATEWAY));
        net.set_app_total(C::HttpRequests, 7);
        net.set_app_total(C::HttpErrors, 2);
        net.set_app_total(C::HttpBodyBytes, 1 << 40);
        net.set_app_total(C::RxTaken, 99);
        net.set_app_total(C::AppEchoes, 5);
        net.poll();
        let v = published(&mut net);
        assert_eq!((get(&v, C::HttpRequests), get(&v, C::HttpErrors), get(&v, C::HttpBodyBytes)), (7, 2, 1 << 40));
        assert_eq!((get(&v, C::RxTaken), get(&v, C::AppEchoes)), (0, 0), "the stack's own counters stay its own");
        assert_balanced(&v);
        net.set_app_total(C::HttpRequests, 8);
        net.poll();
        assert_eq!(get(&published(&mut net), C::HttpRequests), 8);
    }

    /// A frame the stack may answer waits while every tx slot is in flight, rather than having
    /// its answer dropped; a sender waiting for room gives up at its deadline and says so.
    #[test]
    fn answers_and_sends_wait_for_tx_room() {
        let mut mem = GuestMemory::default();
        let (mut net, _, platform) = stack(&mut mem, config(MAC_B, IP_B, GATEWAY));
        let h = net.udp_bind(7).unwrap();
        // Learn the peer's MAC, then fill the tx ring and the send buffer.
        net.device.kernel_side().deliver(&arp_request());
        net.device.kernel_side().deliver(&datagram(7, b"hi"));
        net.poll();
        net.device.kernel_side().take_tx();
        let mut buf = [0; 16];
        let (_, from) = net.udp_recv(h, &mut buf).unwrap();
        net.app_outcome(AppOutcome::Consumed);
        for _ in 0..TX_RING_SIZE + crate::UDP_BUFFER_PACKETS as u32 {
            net.udp_send(h, b"x", from).unwrap();
            net.poll();
        }
        assert_eq!(net.device.kernel_side().tx_pending(), TX_RING_SIZE);
        // No room anywhere: the sender waits until its deadline and gives up.
        let deadline = net.now() + Duration::from_millis(30);
        assert_eq!(net.udp_send_by(h, b"late", from, deadline), Err(NetError::BufferFull));
        assert!(net.now() >= deadline);
        assert_eq!(platform.idles.borrow().last(), Some(&Some(deadline)), "idled, not spun");
        // A datagram to a closed port waits: its port-unreachable would find no slot.
        net.device.kernel_side().deliver(&datagram(99, b"closed"));
        net.poll();
        assert_eq!(get(&published(&mut net), C::DropsNoSocket), 0);
        assert_eq!(net.vnic_counters().tx_dropped, 0);
        // The kernel completes the ring: everything moves, nothing was lost.
        net.device.kernel_side().take_tx();
        net.poll();
        assert_eq!(get(&published(&mut net), C::DropsNoSocket), 1);
        assert!(net.udp_send_by(h, b"now", from, net.now()).is_ok());
        assert_eq!(net.vnic_counters().tx_dropped, 0);
        assert_balanced(&published(&mut net));
    }
}
