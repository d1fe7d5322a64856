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
}

impl FakePlatform {
    fn new() -> Self {
        FakePlatform { now: Rc::new(Cell::new(Instant::ZERO)), idles: Rc::default() }
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
    let (mut a, bell, _) = stack(&mut mem_a, config(MAC_A, IP_A, GATEWAY));
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
    assert!(a.poll());
    assert_eq!(bell.tx_kicks.get(), kicks + 1);
    assert_eq!(a.device.kernel_side().take_tx().len(), 10);
    assert!(!a.poll(), "nothing left to do");
    assert_eq!(bell.tx_kicks.get(), kicks + 1);
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
