use crate::testing::{switch, CountingDoorbell, GuestMemory};
use crate::{Vnic, VnicError, RX_WINDOW_START};
use core::sync::atomic::Ordering;
use hypercall_abi::vi::VirtualInterrupts;
use hypercall_abi::vnic::{
    max_frame, rx_buffer_addr_for, slot_size, tx_slot_addr_for, DescStatus, VnicShared, MTU, RX_RING_SIZE, TX_HEADROOM,
    TX_RING_SIZE,
};
use smoltcp::phy::{Device, RxToken, TxToken};
use smoltcp::time::Instant;
use std::vec;
use std::vec::Vec;

const T0: Instant = Instant::ZERO;

/// A frame of `len` bytes whose bytes say `seq` (enough for the fake kernel, which only
/// looks at lengths and, in the switch, the destination MAC).
fn frame(seq: u32, len: usize) -> Vec<u8> {
    (0..len).map(|i| (seq as usize).wrapping_mul(31).wrapping_add(i) as u8).collect()
}

fn send<D: crate::Doorbell>(vnic: &mut Vnic<'_, D>, data: &[u8]) {
    let token = vnic.transmit(T0).expect("a free tx slot");
    token.consume(data.len(), |buf| buf.copy_from_slice(data));
}

fn recv<D: crate::Doorbell>(vnic: &mut Vnic<'_, D>) -> Option<Vec<u8>> {
    let (rx, _tx) = vnic.receive(T0)?;
    Some(rx.consume(|buf| buf.to_vec()))
}

/// Makes the driver post more rx buffers, as a kernel holding frames does (moves `rx_wanted`
/// and lets the guest look), until at least 4 are posted; returns how many are.
fn widen<D: crate::Doorbell>(vnic: &mut Vnic<'_, D>) -> u32 {
    while vnic.kernel_side().rx_posted() < 4 {
        vnic.kernel_side().shared().rx_wanted.0.fetch_add(1, Ordering::Relaxed);
        assert!(vnic.peek_rx().is_none());
    }
    vnic.kernel_side().rx_posted()
}

fn producer(shared: &VnicShared) -> u32 {
    shared.tx_producer.0.load(Ordering::Relaxed)
}

#[test]
fn new_checks_area_sizes_and_ring_indices() {
    let mut mem = GuestMemory::default();
    let (shared, tx, rx) = (&mem.shared, &mut mem.tx_area, &mut mem.rx_area);
    assert_eq!(
        Vnic::new(shared, &mut tx[..100], rx, CountingDoorbell::default()).err(),
        Some(VnicError::TxAreaSize(100))
    );
    assert_eq!(
        Vnic::new(shared, tx, &mut rx[..4096], CountingDoorbell::default()).err(),
        Some(VnicError::RxAreaSize(4096))
    );
    shared.tx_producer.0.store(TX_RING_SIZE + 1, Ordering::Relaxed);
    assert_eq!(Vnic::new(shared, tx, rx, CountingDoorbell::default()).err(), Some(VnicError::BadRingIndices));
}

#[test]
fn new_posts_a_window_of_rx_buffers_and_rings_once() {
    let mut mem = GuestMemory::default();
    let bell = CountingDoorbell::default();
    let mut vnic = mem.vnic(bell.clone());
    assert_eq!(bell.rx_posted.get(), 1);
    assert_eq!(bell.tx_kicks.get(), 0);
    let side = vnic.kernel_side();
    assert_eq!(side.rx_posted(), RX_WINDOW_START);
    for (i, desc) in side.shared().rx.iter().enumerate().take(RX_WINDOW_START as usize) {
        assert_eq!(desc.addr.load(Ordering::Relaxed), rx_buffer_addr_for(i as u64, slot_size(MTU)));
        assert_eq!(u64::from(desc.len.load(Ordering::Relaxed)), slot_size(MTU));
        assert_eq!(desc.status.load(Ordering::Relaxed), DescStatus::Pending as u32);
    }
}

#[test]
fn transmit_fills_the_slot_and_descriptor_and_kicks_only_on_flush() {
    let mut mem = GuestMemory::default();
    let bell = CountingDoorbell::default();
    let mut vnic = mem.vnic(bell.clone());
    let data = frame(7, 60);
    send(&mut vnic, &data);
    assert_eq!(bell.tx_kicks.get(), 0, "no kick inside consume");
    {
        let side = vnic.kernel_side();
        let desc = &side.shared().tx[0];
        assert_eq!(desc.addr.load(Ordering::Relaxed), tx_slot_addr_for(0, slot_size(MTU)) + TX_HEADROOM);
        assert_eq!(desc.len.load(Ordering::Relaxed), 60);
        assert_eq!(desc.status.load(Ordering::Relaxed), DescStatus::Pending as u32);
        assert_eq!(producer(side.shared()), 1);
    }
    vnic.flush();
    assert_eq!(bell.tx_kicks.get(), 1);
    let mut side = vnic.kernel_side();
    assert_eq!(side.take_tx(), vec![data]);
    assert_eq!(side.shared().tx[0].status.load(Ordering::Relaxed), DescStatus::Done as u32);
    vnic.flush();
    assert_eq!(bell.tx_kicks.get(), 1, "nothing new, no kick");
    let c = vnic.counters();
    assert_eq!((c.tx_frames, c.tx_kicks, c.tx_rejected, c.tx_dropped), (1, 1, 0, 0));
}

#[test]
fn full_ring_refuses_transmit_until_the_kernel_completes() {
    let mut mem = GuestMemory::default();
    let mut vnic = mem.vnic(CountingDoorbell::default());
    for seq in 0..TX_RING_SIZE {
        send(&mut vnic, &frame(seq, 64));
    }
    assert!(vnic.transmit(T0).is_none());
    let sent = vnic.kernel_side().take_tx();
    assert_eq!(sent.len(), TX_RING_SIZE as usize);
    for (seq, f) in sent.iter().enumerate() {
        assert_eq!(f, &frame(seq as u32, 64));
    }
    assert!(vnic.transmit(T0).is_some());
}

#[test]
fn dropped_tx_token_leaves_the_producer_unchanged() {
    let mut mem = GuestMemory::default();
    let bell = CountingDoorbell::default();
    let mut vnic = mem.vnic(bell.clone());
    for _ in 0..3 * TX_RING_SIZE {
        let _token = vnic.transmit(T0).expect("a slot");
    }
    vnic.flush();
    assert_eq!(producer(vnic.kernel_side().shared()), 0);
    assert_eq!(bell.tx_kicks.get(), 0);
    assert_eq!(vnic.counters().tx_frames, 0);
}

#[test]
fn one_kick_per_batch() {
    let mut mem = GuestMemory::default();
    let bell = CountingDoorbell::default();
    let mut vnic = mem.vnic(bell.clone());
    for seq in 0..10 {
        send(&mut vnic, &frame(seq, 100));
    }
    vnic.flush();
    vnic.flush();
    assert_eq!(bell.tx_kicks.get(), 1);
    assert_eq!(vnic.kernel_side().take_tx().len(), 10);
    for seq in 0..5 {
        send(&mut vnic, &frame(seq, 100));
    }
    vnic.flush();
    assert_eq!(bell.tx_kicks.get(), 2);
    assert_eq!(vnic.counters().tx_kicks, 2);
}

#[test]
fn no_kick_while_the_kernel_drains_by_itself() {
    let mut mem = GuestMemory::default();
    let bell = CountingDoorbell::default();
    let mut vnic = mem.vnic(bell.clone());
    vnic.kernel_side().shared().needs_kick.0.store(0, Ordering::Relaxed);
    for seq in 0..10 {
        send(&mut vnic, &frame(seq, 100));
    }
    vnic.flush();
    assert_eq!(bell.tx_kicks.get(), 0);
    assert_eq!(vnic.kernel_side().take_tx().len(), 10);
    // The pending kick was cleared, not deferred: turning needs_kick back on kicks nothing.
    vnic.kernel_side().shared().needs_kick.0.store(1, Ordering::Relaxed);
    vnic.flush();
    assert_eq!(bell.tx_kicks.get(), 0);
}

#[test]
fn oversized_frame_is_dropped_and_counted() {
    let mut mem = GuestMemory::default();
    let mut vnic = mem.vnic(CountingDoorbell::default());
    let len = max_frame(MTU) as usize + 1;
    let token = vnic.transmit(T0).expect("a slot");
    let got = token.consume(len, |buf| buf.len());
    assert_eq!(got, len, "smoltcp still gets the buffer it asked for");
    assert_eq!(producer(vnic.kernel_side().shared()), 0);
    let c = vnic.counters();
    assert_eq!((c.tx_frames, c.tx_dropped, c.tx_dropped_ring_full), (0, 1, 0));
    // A frame of exactly max_frame(MTU) bytes goes out.
    send(&mut vnic, &frame(1, max_frame(MTU) as usize));
    assert_eq!(vnic.kernel_side().take_tx().len(), 1);
}

#[test]
fn rejected_tx_descriptors_are_counted() {
    let mut mem = GuestMemory::default();
    let mut vnic = mem.vnic(CountingDoorbell::default());
    for seq in 0..6 {
        send(&mut vnic, &frame(seq, 64));
    }
    let mut n = 0;
    let sent = vnic.kernel_side().complete_tx(|_| {
        n += 1;
        if n % 2 == 0 {
            DescStatus::RejectedSpoofedSource
        } else {
            DescStatus::Done
        }
    });
    assert_eq!(sent.len(), 3);
    vnic.flush();
    assert_eq!(vnic.counters().tx_rejected, 3);
    // Counted once only, also when the slots are reused.
    for seq in 0..TX_RING_SIZE {
        send(&mut vnic, &frame(seq, 64));
    }
    vnic.kernel_side().take_tx();
    vnic.flush();
    assert_eq!(vnic.counters().tx_rejected, 3);
}

#[test]
fn received_frames_come_out_whole_and_buffers_are_reposted() {
    assert_eq!(RX_WINDOW_START, 1, "the figures below assume a window of one");
    let mut mem = GuestMemory::default();
    let mut vnic = mem.vnic(CountingDoorbell::default());
    assert!(recv(&mut vnic).is_none());
    let frames: Vec<Vec<u8>> = (0..3).map(|seq| frame(seq, 60 + seq as usize * 500)).collect();
    for f in &frames {
        assert!(vnic.kernel_side().deliver(f));
    }
    // One buffer was posted: the other two frames are held, and the guest told.
    assert_eq!(vnic.kernel_side().rx_posted(), 0);
    assert_eq!(vnic.kernel_side().held(), 2);
    assert_eq!(vnic.kernel_side().shared().rx_wanted.0.load(Ordering::Relaxed), 2);
    assert!(vnic.rx_pending());
    assert_eq!(vnic.take_virtual_interrupts() & VirtualInterrupts::RX, VirtualInterrupts::RX);
    assert_eq!(vnic.take_virtual_interrupts(), 0);
    assert_eq!(recv(&mut vnic).as_ref(), Some(&frames[0]));
    assert!(recv(&mut vnic).is_none(), "the held frames wait for the kernel's next look");
    // The guest saw `rx_wanted` move: its window doubled to two buffers, both posted.
    assert_eq!(vnic.kernel_side().held(), 0, "the kernel looked (the guest trapped) and delivered");
    for f in &frames[1..] {
        assert_eq!(recv(&mut vnic).as_ref(), Some(f));
    }
    assert!(recv(&mut vnic).is_none());
    assert!(!vnic.rx_pending());
    let side = vnic.kernel_side();
    assert_eq!(side.rx_posted(), 2);
    assert_eq!(side.shared().rx_producer.0.load(Ordering::Relaxed), 3 + 2);
    // The buffers given back are reposted first: the window of two holds buffers 0 and 1.
    let posted: std::collections::BTreeSet<u64> =
        (3..5).map(|i| side.shared().rx[i].addr.load(Ordering::Relaxed)).collect();
    assert_eq!(posted, (0..2).map(|b| rx_buffer_addr_for(b, slot_size(MTU))).collect());
    for i in 3..5 {
        let desc = &side.shared().rx[i];
        assert_eq!(u64::from(desc.len.load(Ordering::Relaxed)), slot_size(MTU));
        assert_eq!(desc.status.load(Ordering::Relaxed), DescStatus::Pending as u32);
    }
    assert_eq!(vnic.counters().rx_frames, 3);
}

#[test]
fn a_taken_frame_stays_readable_until_its_buffer_is_reposted() {
    let mut mem = GuestMemory::default();
    let mut vnic = mem.vnic(CountingDoorbell::default());
    assert_eq!(vnic.peek_rx(), None);
    assert_eq!(vnic.last_rx(), None);
    let window = widen(&mut vnic);
    for seq in 0..2 {
        assert!(vnic.kernel_side().deliver(&frame(seq, 70)));
    }
    // Peeking takes nothing: the same frame comes out of the next receive.
    assert_eq!(vnic.peek_rx(), Some(&frame(0, 70)[..]));
    assert_eq!(vnic.peek_rx(), Some(&frame(0, 70)[..]));
    assert_eq!(vnic.counters().rx_frames, 0);
    assert_eq!(recv(&mut vnic), Some(frame(0, 70)));
    // Taken, not yet reposted: readable, and no longer pending.
    assert_eq!(vnic.last_rx(), Some(&frame(0, 70)[..]));
    assert_eq!(vnic.kernel_side().rx_posted(), window - 2);
    assert!(vnic.rx_pending(), "the second frame waits");
    // Looking for the next frame reposts the buffer of the last.
    assert_eq!(vnic.peek_rx(), Some(&frame(1, 70)[..]));
    assert_eq!(vnic.last_rx(), None);
    assert_eq!(vnic.kernel_side().rx_posted(), window - 1);
    assert_eq!(recv(&mut vnic), Some(frame(1, 70)));
    assert!(!vnic.rx_pending());
    vnic.flush();
    assert_eq!(vnic.kernel_side().rx_posted(), window);
    assert_eq!(vnic.counters().rx_frames, 2);
}

#[test]
fn tx_room_and_counter_publishing() {
    let mut mem = GuestMemory::default();
    let mut vnic = mem.vnic(CountingDoorbell::default());
    for seq in 0..TX_RING_SIZE {
        assert!(vnic.tx_has_room());
        send(&mut vnic, &frame(seq, 64));
    }
    assert!(!vnic.tx_has_room());
    vnic.kernel_side().take_tx();
    assert!(vnic.tx_has_room());
    let values = core::array::from_fn(|i| 7 * i as u64);
    vnic.publish_counters(&values);
    assert_eq!(vnic.kernel_side().shared().guest_counters.read(), values);
}

#[test]
fn dropped_rx_token_keeps_the_frame() {
    let mut mem = GuestMemory::default();
    let mut vnic = mem.vnic(CountingDoorbell::default());
    vnic.kernel_side().deliver(&frame(1, 80));
    let _tokens = vnic.receive(T0).expect("a frame");
    assert_eq!(recv(&mut vnic), Some(frame(1, 80)));
}

#[test]
fn malicious_rx_length_is_clamped_to_the_buffer() {
    let mut mem = GuestMemory::default();
    let mut vnic = mem.vnic(CountingDoorbell::default());
    let window = widen(&mut vnic);
    vnic.kernel_side().deliver(&frame(1, 80));
    vnic.kernel_side().shared().rx[0].len.store(u32::MAX, Ordering::Relaxed);
    let got = recv(&mut vnic).expect("a frame");
    assert_eq!(got.len(), slot_size(MTU) as usize);
    assert_eq!(&got[..80], &frame(1, 80)[..]);
    assert_eq!(vnic.counters().rx_len_clamped, 1);
    // The buffer goes back, with its full capacity, at the flush (or the next look for a frame).
    assert_eq!(vnic.kernel_side().rx_posted(), window - 1);
    vnic.flush();
    assert_eq!(vnic.kernel_side().rx_posted(), window);
    assert!(vnic.kernel_side().deliver(&frame(2, 80)));
    assert_eq!(recv(&mut vnic), Some(frame(2, 80)));
}

#[test]
fn failed_rx_descriptors_are_skipped_and_reposted() {
    let mut mem = GuestMemory::default();
    let mut vnic = mem.vnic(CountingDoorbell::default());
    let window = widen(&mut vnic);
    vnic.kernel_side().deliver(&frame(1, 80));
    vnic.kernel_side().deliver(&frame(2, 80));
    vnic.kernel_side().shared().rx[0].status.store(DescStatus::RejectedBadDescriptor as u32, Ordering::Relaxed);
    assert_eq!(recv(&mut vnic), Some(frame(2, 80)));
    assert!(recv(&mut vnic).is_none());
    assert_eq!(vnic.counters().rx_errors, 1);
    assert_eq!(vnic.kernel_side().rx_posted(), window);
}

#[test]
fn nonsense_consumer_indices_are_ignored() {
    let mut mem = GuestMemory::default();
    let mut vnic = mem.vnic(CountingDoorbell::default());
    send(&mut vnic, &frame(1, 64));
    vnic.kernel_side().shared().tx_consumer.0.store(1000, Ordering::Relaxed);
    vnic.kernel_side().shared().rx_consumer.0.store(1000, Ordering::Relaxed);
    assert!(vnic.transmit(T0).is_none());
    assert!(vnic.receive(T0).is_none());
    vnic.flush();
    assert_eq!(vnic.counters().tx_rejected, 0);
}

#[test]
fn tx_token_with_an_rx_token_drops_its_frame_when_the_ring_is_full() {
    let mut mem = GuestMemory::default();
    let mut vnic = mem.vnic(CountingDoorbell::default());
    for seq in 0..TX_RING_SIZE {
        send(&mut vnic, &frame(seq, 64));
    }
    vnic.kernel_side().deliver(&frame(99, 64));
    let (rx, tx) = vnic.receive(T0).expect("a frame");
    assert_eq!(rx.consume(|buf| buf.to_vec()), frame(99, 64));
    tx.consume(64, |buf| buf.fill(0xee));
    let c = vnic.counters();
    assert_eq!((c.tx_frames, c.tx_dropped, c.tx_dropped_ring_full), (TX_RING_SIZE as u64, 1, 1));
    assert_eq!(producer(vnic.kernel_side().shared()), TX_RING_SIZE);
    let sent = vnic.kernel_side().take_tx();
    assert!(sent.iter().all(|f| f[0] != 0xee));
}

#[test]
fn indices_wrap_around_u32_max() {
    let start = u32::MAX - 40;
    let mut mem = GuestMemory::with_indices(start);
    let bell = CountingDoorbell::default();
    let mut vnic = mem.vnic(bell.clone());
    let total = 200u32;
    let (mut sent, mut received) = (Vec::new(), Vec::new());
    let mut seq = 0;
    while seq < total {
        // Batches of 7 do not divide the ring: every slot position meets the wrap.
        for _ in 0..7 {
            if seq < total {
                send(&mut vnic, &frame(seq, 64 + seq as usize));
                seq += 1;
            }
        }
        vnic.flush();
        let mut side = vnic.kernel_side();
        let frames = side.take_tx();
        for f in &frames {
            assert!(side.deliver(f));
        }
        sent.extend(frames);
        while let Some(f) = recv(&mut vnic) {
            received.push(f);
        }
    }
    let expected: Vec<Vec<u8>> = (0..total).map(|s| frame(s, 64 + s as usize)).collect();
    assert_eq!(sent, expected);
    assert_eq!(received, expected);
    let side = vnic.kernel_side();
    assert_eq!(producer(side.shared()), start.wrapping_add(total));
    assert!(producer(side.shared()) < start, "the tx index wrapped");
    assert_eq!(side.shared().rx_consumer.0.load(Ordering::Relaxed), start.wrapping_add(total));
    // Bursts of 7 grew the window past 7 (doubling from the start), nothing is left held.
    assert!((8..=RX_RING_SIZE).contains(&side.rx_posted()), "{}", side.rx_posted());
    assert_eq!(side.held(), 0);
    let c = vnic.counters();
    assert_eq!((c.tx_frames, c.rx_frames, c.tx_rejected, c.tx_dropped), (200, 200, 0, 0));
    assert_eq!(bell.tx_kicks.get(), u64::from(total.div_ceil(7)));
}

mod end_to_end {
    use super::*;
    use smoltcp::iface::{Config, Interface, PollResult, SocketSet};
    use smoltcp::socket::udp;
    use smoltcp::wire::{EthernetAddress, IpAddress, IpCidr, IpEndpoint, Ipv4Address};

    const MAC_A: [u8; 6] = [0x02, 0, 0, 0, 0, 0x0a];
    const MAC_B: [u8; 6] = [0x02, 0, 0, 0, 0, 0x0b];

    fn iface(mac: [u8; 6], ip: Ipv4Address, vnic: &mut Vnic<'_, CountingDoorbell>) -> Interface {
        let mut iface = Interface::new(Config::new(EthernetAddress(mac).into()), vnic, T0);
        iface.update_ip_addrs(|addrs| addrs.push(IpCidr::new(ip.into(), 24)).unwrap());
        iface
    }

    fn udp_socket(port: u16) -> udp::Socket<'static> {
        let buffer = || udp::PacketBuffer::new(vec![udp::PacketMetadata::EMPTY; 16], vec![0; 16 * 1500]);
        let mut socket = udp::Socket::new(buffer(), buffer());
        socket.bind(port).unwrap();
        socket
    }

    /// Polls until smoltcp has nothing more to do, then flushes: smoltcp 0.12 sends at most
    /// one datagram per socket per `Interface::poll`, so one poll is not one batch.
    fn poll(iface: &mut Interface, vnic: &mut Vnic<'_, CountingDoorbell>, sockets: &mut SocketSet<'_>, now: Instant) {
        for _ in 0..TX_RING_SIZE {
            if iface.poll(now, vnic, sockets) == PollResult::None {
                break;
            }
        }
        vnic.flush();
    }

    #[test]
    fn two_interfaces_exchange_udp_through_the_switch() {
        let (ip_a, ip_b) = (Ipv4Address::new(10, 0, 0, 1), Ipv4Address::new(10, 0, 0, 2));
        let (mut mem_a, mut mem_b) = (GuestMemory::default(), GuestMemory::default());
        let (bell_a, bell_b) = (CountingDoorbell::default(), CountingDoorbell::default());
        let mut vnic_a = mem_a.vnic(bell_a.clone());
        let mut vnic_b = mem_b.vnic(bell_b.clone());
        let mut iface_a = iface(MAC_A, ip_a, &mut vnic_a);
        let mut iface_b = iface(MAC_B, ip_b, &mut vnic_b);
        let mut sockets_a = SocketSet::new(Vec::new());
        let mut sockets_b = SocketSet::new(Vec::new());
        let a = sockets_a.add(udp_socket(1000));
        let b = sockets_b.add(udp_socket(2000));

        let payloads: Vec<Vec<u8>> = [1usize, 100, 1472].iter().map(|&n| frame(n as u32, n)).collect();
        for p in &payloads {
            sockets_a.get_mut::<udp::Socket>(a).send_slice(p, (ip_b, 2000)).unwrap();
        }
        let mut got = Vec::new();
        let mut now = T0;
        for _ in 0..20 {
            poll(&mut iface_a, &mut vnic_a, &mut sockets_a, now);
            poll(&mut iface_b, &mut vnic_b, &mut sockets_b, now);
            while let Ok((data, meta)) = sockets_b.get_mut::<udp::Socket>(b).recv() {
                assert_eq!(meta.endpoint, IpEndpoint::new(IpAddress::Ipv4(ip_a), 1000));
                got.push(data.to_vec());
            }
            if got.len() == payloads.len() {
                break;
            }
            switch(&mut [(&MAC_A, vnic_a.kernel_side()), (&MAC_B, vnic_b.kernel_side())]);
            now += smoltcp::time::Duration::from_millis(1);
        }
        assert_eq!(got, payloads, "payloads arrive whole and in order");
        // ARP went both ways (request from A, reply from B) before the datagrams.
        let (ca, cb) = (vnic_a.counters(), vnic_b.counters());
        assert_eq!(ca.tx_frames, 1 + payloads.len() as u64);
        assert_eq!(cb.tx_frames, 1);
        assert_eq!(cb.rx_frames, 1 + payloads.len() as u64);
        assert_eq!((ca.tx_dropped, ca.tx_rejected, cb.tx_dropped, cb.tx_rejected), (0, 0, 0, 0));
        // One kick per poll that produced frames: the three datagrams went out in one batch.
        assert_eq!(bell_a.tx_kicks.get(), 2);
        assert_eq!(bell_b.tx_kicks.get(), 1);
    }

    /// With checksum offload the stack leaves UDP checksums out (zero) and the driver flags those
    /// frames (not ARP) for the kernel; without it, nothing is flagged and checksums are filled.
    #[test]
    fn checksum_offload_flags_udp_frames_and_the_stack_leaves_their_checksum() {
        use hypercall_abi::vnic::{desc_flags, Offloads, DESC_STATUS_MASK};
        for offload in [false, true] {
            let (ip_a, ip_b) = (Ipv4Address::new(10, 0, 0, 1), Ipv4Address::new(10, 0, 0, 2));
            let (mut mem_a, mut mem_b) = (GuestMemory::default(), GuestMemory::default());
            if offload {
                mem_a.shared.offloads.0.store(Offloads::CHECKSUM, Ordering::Relaxed);
            }
            let mut vnic_a = mem_a.vnic(CountingDoorbell::default());
            let mut vnic_b = mem_b.vnic(CountingDoorbell::default());
            assert_eq!(vnic_a.checksum_offload(), offload);
            let caps = vnic_a.capabilities().checksum;
            assert_eq!(
                (caps.udp.tx(), caps.udp.rx(), caps.tcp.tx(), caps.tcp.rx()),
                (!offload, !offload, !offload, !offload)
            );
            assert!(caps.ipv4.tx() && caps.ipv4.rx() && caps.icmpv4.rx(), "IPv4 and ICMP checksums stay the stack's");
            let mut iface_a = iface(MAC_A, ip_a, &mut vnic_a);
            let mut iface_b = iface(MAC_B, ip_b, &mut vnic_b);
            let (mut sockets_a, mut sockets_b) = (SocketSet::new(Vec::new()), SocketSet::new(Vec::new()));
            let a = sockets_a.add(udp_socket(1000));
            let b = sockets_b.add(udp_socket(2000));
            sockets_a.get_mut::<udp::Socket>(a).send_slice(b"payload", (ip_b, 2000)).unwrap();
            let mut seen = Vec::new();
            let mut now = T0;
            for _ in 0..10 {
                poll(&mut iface_a, &mut vnic_a, &mut sockets_a, now);
                poll(&mut iface_b, &mut vnic_b, &mut sockets_b, now);
                // The kernel's view of A's produced descriptors: flags, and the frames.
                let side = vnic_a.kernel_side();
                let shared = side.shared();
                let (producer, consumer) =
                    (shared.tx_producer.0.load(Ordering::Relaxed), shared.tx_consumer.0.load(Ordering::Relaxed));
                for index in consumer..producer {
                    let status = shared.tx[(index % TX_RING_SIZE) as usize].status.load(Ordering::Relaxed);
                    assert_eq!(status & DESC_STATUS_MASK, DescStatus::Pending as u32);
                    seen.push(status & desc_flags::TX_CSUM_NEEDED != 0);
                }
                let frames = switch(&mut [(&MAC_A, vnic_a.kernel_side()), (&MAC_B, vnic_b.kernel_side())]);
                if frames.sent == 0 && sockets_b.get::<udp::Socket>(b).can_recv() {
                    break;
                }
                now += smoltcp::time::Duration::from_millis(1);
            }
            let (data, _) = sockets_b.get_mut::<udp::Socket>(b).recv().unwrap();
            assert_eq!(data, b"payload");
            // ARP request (unflagged), then the datagram (flagged only with offload).
            assert_eq!(seen, [false, offload]);
            assert_eq!(vnic_a.counters().tx_csum_offloaded, u64::from(offload));
        }
    }
}

#[test]
fn received_frames_flagged_verified_are_taken_and_counted() {
    use hypercall_abi::vnic::desc_flags;
    let mut mem = GuestMemory::default();
    let mut vnic = mem.vnic(CountingDoorbell::default());
    crate::testing::post_whole_ring(&mut vnic);
    for (seq, verified) in [(1, true), (2, false)] {
        assert!(vnic.kernel_side().deliver(&frame(seq, 80)));
        if verified {
            let side = vnic.kernel_side();
            let consumer = side.shared().rx_consumer.0.load(Ordering::Relaxed);
            let desc = &side.shared().rx[(consumer.wrapping_sub(1) % RX_RING_SIZE) as usize];
            desc.status.fetch_or(desc_flags::RX_CSUM_VERIFIED, Ordering::Relaxed);
        }
        assert_eq!(recv(&mut vnic), Some(frame(seq, 80)), "a flag beside Done is still Done");
    }
    let counters = vnic.counters();
    assert_eq!((counters.rx_frames, counters.rx_errors, counters.rx_csum_verified), (2, 0, 1));
}

#[test]
fn one_frame_at_a_time_reuses_one_slot_and_a_burst_spreads() {
    let mut mem = GuestMemory::default();
    let mut vnic = mem.vnic(CountingDoorbell::default());
    let slot_of = |side: &crate::testing::KernelSide<'_>, position: u32| {
        let addr = side.shared().tx[(position % TX_RING_SIZE) as usize].addr.load(Ordering::Relaxed);
        (addr - TX_HEADROOM - tx_slot_addr_for(0, slot_size(MTU))) / slot_size(MTU)
    };
    // Sequential sends, each completed before the next: every one goes into slot 0.
    for seq in 0..(2 * TX_RING_SIZE) {
        let data = frame(seq, 64);
        send(&mut vnic, &data);
        vnic.flush();
        let mut side = vnic.kernel_side();
        assert_eq!(slot_of(&side, seq), 0, "send {seq}");
        assert_eq!(side.take_tx(), vec![data]);
    }
    // A burst of 3 before any completion takes 3 distinct slots, all 3 frames intact.
    let burst: Vec<_> = (0..3).map(|seq| frame(100 + seq, 64)).collect();
    for data in &burst {
        send(&mut vnic, data);
    }
    vnic.flush();
    let mut side = vnic.kernel_side();
    let base = 2 * TX_RING_SIZE;
    let mut slots: Vec<_> = (base..base + 3).map(|p| slot_of(&side, p)).collect();
    slots.sort_unstable();
    slots.dedup();
    assert_eq!(slots.len(), 3, "{slots:?}");
    assert_eq!(side.take_tx(), burst);
}

#[test]
fn frames_one_at_a_time_reuse_the_window_and_bursts_grow_it_to_the_ring() {
    let mut mem = GuestMemory::default();
    let mut vnic = mem.vnic(CountingDoorbell::default());
    let mut buffers_used = std::collections::BTreeSet::new();
    for seq in 0..100 {
        let mut side = vnic.kernel_side();
        let position = side.shared().rx_consumer.0.load(Ordering::Relaxed) % RX_RING_SIZE;
        buffers_used.insert(side.shared().rx[position as usize].addr.load(Ordering::Relaxed));
        assert!(side.deliver(&frame(seq, 90)));
        assert_eq!(recv(&mut vnic), Some(frame(seq, 90)));
        vnic.flush(); // the guest's poll ends: the buffer goes back before it idles
    }
    // One frame at a time: the buffer given back is the next posted; the lazily backed pages
    // a guest touches stay at its first window.
    assert_eq!(buffers_used.len(), RX_WINDOW_START as usize, "{buffers_used:x?}");
    assert_eq!(vnic.kernel_side().shared().rx_wanted.0.load(Ordering::Relaxed), 0);
    // Bursts the size of the ring: held, handed over as buffers come back, none lost, and the
    // window doubles each time the guest sees the kernel wanted more, up to the ring.
    let mut seq = 1000;
    for _ in 0..6 {
        let burst: Vec<Vec<u8>> = (0..RX_RING_SIZE).map(|i| frame(seq + i, 100)).collect();
        seq += RX_RING_SIZE;
        for f in &burst {
            assert!(vnic.kernel_side().deliver(f));
        }
        let mut got = Vec::new();
        for _ in 0..4 * RX_RING_SIZE {
            match recv(&mut vnic) {
                Some(f) => got.push(f),
                None => drop(vnic.kernel_side()), // the guest traps: the kernel delivers what it held
            }
        }
        assert_eq!(got, burst);
    }
    assert_eq!(vnic.kernel_side().rx_posted(), RX_RING_SIZE);
    // A hostile kernel moving `rx_wanted` only makes the guest post its whole ring.
    vnic.kernel_side().shared().rx_wanted.0.store(u32::MAX, Ordering::Relaxed);
    assert!(recv(&mut vnic).is_none());
    assert_eq!(vnic.kernel_side().rx_posted(), RX_RING_SIZE);
}
