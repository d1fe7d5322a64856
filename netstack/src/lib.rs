//! The guest network stack: a smoltcp [`Interface`] and [`SocketSet`] on the virtual NIC,
//! configured from the guest's [`NetConfig`], with a small socket API for apps and a poll loop
//! that sleeps through the [`Platform`] (the idle virtual instruction in a guest).
//!
//! An app loop is: `poll()`, use its sockets, `wait()`, repeat.
//!
//! UDP: [`NetStack::udp_bind`], [`NetStack::udp_send`] (or [`NetStack::udp_send_by`], which
//! waits for room), [`NetStack::udp_recv`].
//!
//! TCP, by handle (see the `tcp` module for how it works inside):
//! - [`NetStack::tcp_listen`]`(port, backlog)` -> [`TcpListener`]; [`NetStack::tcp_accept`]
//!   -> `Option<`[`TcpHandle`]`>` (a connection whose handshake is done). While all `backlog`
//!   sockets of a listener hold connections not yet accepted, new ones are refused (a reset)
//!   and counted.
//! - [`NetStack::tcp_connect`]`((ip, port))` -> [`TcpHandle`], from an ephemeral port;
//!   established when [`NetStack::tcp_may_send`] is true.
//! - [`NetStack::tcp_recv`]`(h, &mut buf)`: `Ok(n)` bytes, `Ok(0)` nothing yet,
//!   `Err(`[`TcpError::Finished`]`)` at the end of the stream, or how the connection ended
//!   (`Reset`, `Refused`, `TimedOut`).
//! - [`NetStack::tcp_send`]`(h, &buf)`: the bytes the send buffer took (a partial write, 0
//!   while it is full): the app keeps the rest. [`NetStack::tcp_send_all_by`] polls and idles
//!   until all is queued or a deadline passes; [`NetStack::tcp_send_room`] says how much
//!   would be taken now. A full send buffer waits, never drops.
//! - [`NetStack::tcp_shutdown`] (FIN; reading goes on), [`NetStack::tcp_close`] (gives the
//!   handle back: FIN after the queued data, the socket freed when both sides are done),
//!   [`NetStack::tcp_abort`] (gives it back with a reset).
//! - State: [`NetStack::tcp_can_send`], [`NetStack::tcp_can_recv`], [`NetStack::tcp_may_send`],
//!   [`NetStack::tcp_may_recv`], [`NetStack::tcp_is_closed`], [`NetStack::tcp_state`],
//!   [`NetStack::tcp_remote`].
//! - Options ([`TcpOptions`]): buffer sizes, idle timeout (a peer silent that long is given
//!   up), keep-alive probes, `nodelay`; the stack's defaults ([`NetStack::set_tcp_options`]) or
//!   per listener and connect ([`NetStack::tcp_listen_with`], [`NetStack::tcp_connect_with`]),
//!   or per connection ([`NetStack::tcp_set_timeout`], [`NetStack::tcp_set_keep_alive`]).
//!
//! Every connection an app gets ends one way, counted in the guest's counters: closed by both
//! sides, reset, or timed out ([`GuestCounter::TcpClosed`] and the rest); its socket is then
//! removed from the [`SocketSet`] (gauges [`GuestCounter::TcpOpen`], [`GuestCounter::TcpSockets`]).
//!
//! No silent loss: the stack takes a frame from the rx ring only when it can surely hold it
//! ([`ingress`]): a datagram whose socket is full waits in the ring (where the kernel counts
//! whatever it cannot deliver) until the app has read the socket and polls again. TCP needs no
//! such care: its window keeps the peer from sending more than the socket holds, so segments
//! go to the stack as they come (counted as [`GuestCounter::RxTcpSegments`]). Every frame
//! taken is counted by what became of it, and the counts are published in the vNIC's shared
//! page for the kernel's `stats:` line ([`hypercall_abi::vnic::GuestCounter`]); apps report what
//! they did with each datagram ([`AppOutcome`]) and can wait for room to send
//! ([`NetStack::udp_send_by`]) instead of dropping.

#![no_std]
#![forbid(unsafe_code)]

extern crate alloc;
#[cfg(test)]
extern crate std;

use alloc::vec;
use alloc::vec::Vec;
use hypercall_abi::vnic::{GuestCounter, GuestCounterValues, NetConfig, MTU, RX_RING_SIZE};
use ingress::{Inbound, RxBook};
use managed::ManagedSlice;
use smoltcp::iface::{Config, Interface, PollResult, SocketHandle, SocketSet};
use smoltcp::socket::{udp, Socket};
use smoltcp::wire::{EthernetAddress, IpAddress, IpCidr, IpEndpoint, Ipv4Cidr};
use vnic_driver::{Doorbell, Vnic, VnicCounters};

mod ingress;
mod tcp;

pub use smoltcp::socket::tcp::State as TcpState;
pub use smoltcp::time::{Duration, Instant};
pub use smoltcp::wire::Ipv4Address;
pub use tcp::{
    TcpError, TcpHandle, TcpListener, TcpOptions, TCP_DEFAULT_BUFFER, TCP_DEFAULT_IDLE_TIMEOUT, TCP_MAX_BACKLOG,
    TCP_MAX_BUFFER, TCP_MIN_BUFFER,
};

/// Largest UDP payload: one frame, as the stack does no IP fragmentation.
pub const MAX_UDP_PAYLOAD: usize = MTU as usize - 20 - 8;
/// IPv4 and UDP headers: what a datagram's payload leaves of the MTU.
const IP_UDP_HEADERS: usize = 20 + 8;
/// Datagrams each UDP socket buffers per direction.
pub const UDP_BUFFER_PACKETS: usize = 16;
/// Payload bytes each UDP socket buffers per direction.
pub const UDP_BUFFER_BYTES: usize = UDP_BUFFER_PACKETS * MTU as usize;
/// Most rounds in one [`NetStack::poll`]: a round takes at most a ring of frames and sends at
/// most one packet per socket, and this bounds the work when frames keep arriving.
const POLL_ROUNDS: usize = 32;
/// A poll that sent this many frames yields the CPU afterwards: the receivers (another guest
/// through the vswitch, most often) get to take them before this guest sends the next batch,
/// which a ring of [`RX_RING_SIZE`] buffers could not hold (the kernel drops a frame that finds
/// no buffer, and a TCP sender waits a retransmission timeout to send it again).
const YIELD_AFTER_FRAMES: u64 = RX_RING_SIZE as u64 / 2;
/// How long frames a poll produced may wait for the guest to idle (the kernel takes the tx ring
/// then, so an echo costs one virtual instruction) before the stack kicks after all: a guest
/// that keeps polling instead of idling sends at most this late.
const KICK_DEFERRAL: Duration = Duration::from_micros(100);

/// What the stack needs from the guest runtime: time, and a way to sleep.
pub trait Platform {
    fn now(&self) -> Instant;
    /// Sleeps until `deadline` (`None`: until a virtual interrupt) or until woken earlier.
    fn idle_until(&mut self, deadline: Option<Instant>);
    /// Lets other guests run now (the yield virtual instruction), then goes on.
    fn yield_now(&mut self) {}
}

/// Sends a gratuitous ARP (a request for our own address): neighbours, QEMU's user network
/// among them, learn our MAC at once instead of asking for it, and an ARP request that reached
/// us before our receive buffers were posted costs no retry timeout.
fn announce<D: Doorbell>(device: &mut Vnic<'_, D>, mac: [u8; 6], ipv4: [u8; 4], now: Instant) {
    use smoltcp::phy::{Device, TxToken};
    const ARP_FRAME: usize = 42;
    let Some(token) = device.transmit(now) else { return };
    token.consume(ARP_FRAME, |frame| {
        frame[0..6].fill(0xff);
        frame[6..12].copy_from_slice(&mac);
        frame[12..14].copy_from_slice(&[0x08, 0x06]);
        // Ethernet, IPv4, 6-byte and 4-byte addresses, request.
        frame[14..22].copy_from_slice(&[0x00, 0x01, 0x08, 0x00, 6, 4, 0x00, 0x01]);
        frame[22..28].copy_from_slice(&mac);
        frame[28..32].copy_from_slice(&ipv4);
        frame[32..38].fill(0);
        frame[38..42].copy_from_slice(&ipv4);
    });
    device.flush();
}

/// A UDP socket of one [`NetStack`] (using it with another stack panics).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct UdpHandle(SocketHandle);

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum NetError {
    /// Another socket of this stack has the port.
    PortInUse,
    /// Port 0, or an unspecified destination address or port.
    Unaddressable,
    /// More than [`MAX_UDP_PAYLOAD`] bytes.
    TooLarge,
    /// The socket's send buffer is full: poll, then try again (or use [`NetStack::udp_send_by`]).
    BufferFull,
    /// The heap has no room for the socket's buffers.
    NoMemory,
}

/// What an app did with a datagram it took ([`NetStack::udp_recv`]), for the guest's counters.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AppOutcome {
    /// Sent back (queued for sending).
    Echoed,
    /// Used without echoing: a reply the app waited for, a request it answered otherwise.
    Consumed,
    /// Dropped: no room to send in time, or an error.
    Dropped,
}

/// What [`NetStack::admission`] decided for the next frame in the rx ring.
#[derive(Clone, Copy, Debug)]
enum Admission {
    /// A datagram for the socket of `udp_books[book]`, which surely holds it now.
    Socket { book: usize, len: usize },
    /// A frame for the stack alone (or to be refused), with a tx slot free for any answer.
    Stack(Inbound),
}

/// The guest's network stack on its virtual NIC.
pub struct NetStack<'a, D: Doorbell, P: Platform> {
    iface: Interface,
    sockets: SocketSet<'static>,
    device: Vnic<'a, D>,
    platform: P,
    /// The interface's MTU (the standard one, or jumbo).
    mtu: usize,
    /// Receive-path stage records (stamping on), by frame length.
    rx_stage_samples: alloc::collections::BTreeMap<usize, Vec<[u32; 8]>>,
    /// The app's stage (stamping on): from the end of a datagram's receive stages (the app
    /// took it) to the app's next send, by the sent frame's length; and when the last receive
    /// record ended (0: none since the last send).
    app_stage_samples: alloc::collections::BTreeMap<usize, Vec<[u32; 1]>>,
    rx_done_at: u64,
    /// Since when produced frames wait for a kick (or the idle that makes one needless).
    kick_deferred_since: Option<Instant>,
    /// The interface's addresses, to classify frames before the stack takes them.
    identity: ingress::Identity,
    /// Each UDP socket's receive buffer as tracked for admission.
    udp_books: Vec<(SocketHandle, RxBook)>,
    /// The counters the stack and apps keep ([`GuestCounter`] order; the driver's and the
    /// gauges are filled in when published).
    counters: GuestCounterValues,
    /// Listeners and connections.
    tcp: tcp::TcpBook,
}

/// Receive records kept per frame length (bounded: the guest's heap is small).
const STAMP_SAMPLES: usize = 10_240;
/// Ethernet, IPv4 and UDP headers: a datagram's frame length is its payload plus these.
const FRAME_HEADERS: usize = 14 + IP_UDP_HEADERS;

impl<'a, D: Doorbell, P: Platform> NetStack<'a, D, P> {
    /// Builds the interface from `config`: its MAC, its IPv4 address (none if 0.0.0.0; a prefix
    /// over 32 counts as 32) and a default route via the gateway unless that is 0.0.0.0.
    pub fn new(config: NetConfig, mut device: Vnic<'a, D>, platform: P) -> Self {
        let now = platform.now();
        let mut iface_config = Config::new(EthernetAddress(config.mac).into());
        // Distinct per guest and per boot, for TCP sequence numbers and ephemeral ports.
        let seed = mac_seed(config.mac) ^ now.total_micros() as u64;
        iface_config.random_seed = seed;
        let mut iface = Interface::new(iface_config, &mut device, now);
        let ip = Ipv4Address::from(config.ipv4);
        if !ip.is_unspecified() {
            let cidr = IpCidr::new(ip.into(), config.prefix_len.min(32));
            iface.update_ip_addrs(|addrs| addrs.push(cidr).expect("an empty address list has room"));
        }
        let gateway = Ipv4Address::from(config.gateway);
        if !gateway.is_unspecified() {
            iface.routes_mut().add_default_ipv4_route(gateway).expect("an empty route table has room");
        }
        // Owned storage: the set grows on the heap as apps open sockets.
        let sockets = SocketSet::new(ManagedSlice::Owned(Vec::new()));
        if !ip.is_unspecified() {
            announce(&mut device, config.mac, config.ipv4, now);
        }
        let mtu = (config.mtu as usize).clamp(576, 9000);
        let identity = ingress::Identity {
            mac: EthernetAddress(config.mac),
            cidr: (!ip.is_unspecified()).then(|| Ipv4Cidr::new(ip, config.prefix_len.min(32))),
            checksum_offload: device.checksum_offload(),
        };
        NetStack {
            iface,
            sockets,
            device,
            platform,
            mtu,
            rx_stage_samples: alloc::collections::BTreeMap::new(),
            app_stage_samples: alloc::collections::BTreeMap::new(),
            rx_done_at: 0,
            kick_deferred_since: None,
            identity,
            udp_books: Vec::new(),
            counters: [0; GuestCounter::COUNT],
            tcp: tcp::TcpBook::new(seed),
        }
    }

    /// The receive-path and app stage records as `dispatch:` lines (one per frame length and
    /// direction): per stage `median/p10/p90/mean` in stamp ticks, then the median total.
    /// Empty unless stamping is on.
    pub fn dispatch_report(&self) -> Vec<alloc::string::String> {
        let mut lines = Vec::new();
        use hypercall_abi::vnic::stamps::{write_stages, APP_STAGES, RX_STAGES};
        for (len, samples) in &self.rx_stage_samples {
            let mut line = alloc::format!("dispatch: dir=rx frame={len} samples={}", samples.len());
            let _ = write_stages(&mut line, &RX_STAGES, samples, &mut vec![0; samples.len()]);
            lines.push(line);
        }
        for (len, samples) in &self.app_stage_samples {
            let mut line = alloc::format!("dispatch: dir=app frame={len} samples={}", samples.len());
            let _ = write_stages(&mut line, &APP_STAGES, samples, &mut vec![0; samples.len()]);
            lines.push(line);
        }
        lines
    }

    /// Largest UDP payload this interface sends (no IP fragmentation).
    pub fn max_udp_payload(&self) -> usize {
        self.mtu - IP_UDP_HEADERS
    }

    pub fn now(&self) -> Instant {
        self.platform.now()
    }

    /// Opens a UDP socket on `port`, with room for [`UDP_BUFFER_PACKETS`] datagrams each way.
    pub fn udp_bind(&mut self, port: u16) -> Result<UdpHandle, NetError> {
        if port == 0 {
            return Err(NetError::Unaddressable);
        }
        let taken = self.sockets.iter().any(|(_, socket)| match socket {
            Socket::Udp(udp) => udp.endpoint().port == port,
            #[allow(unreachable_patterns)]
            _ => false,
        });
        if taken {
            return Err(NetError::PortInUse);
        }
        let mtu = self.mtu;
        let buffer = || {
            udp::PacketBuffer::new(
                vec![udp::PacketMetadata::EMPTY; UDP_BUFFER_PACKETS],
                vec![0; UDP_BUFFER_PACKETS * mtu],
            )
        };
        let mut socket = udp::Socket::new(buffer(), buffer());
        socket.bind(port).map_err(|_| NetError::Unaddressable)?;
        let handle = self.sockets.add(socket);
        self.udp_books.push((handle, RxBook::new(port)));
        Ok(UdpHandle(handle))
    }

    /// Queues one datagram to `to`; the next [`Self::poll`] sends it.
    pub fn udp_send(&mut self, h: UdpHandle, data: &[u8], to: (Ipv4Address, u16)) -> Result<(), NetError> {
        if data.len() > self.max_udp_payload() {
            return Err(NetError::TooLarge);
        }
        let send = self.device.note_send();
        let done = core::mem::take(&mut self.rx_done_at);
        if done != 0 && send >= done {
            let samples = self.app_stage_samples.entry(data.len() + FRAME_HEADERS).or_default();
            if samples.len() < STAMP_SAMPLES {
                samples.push([(send - done).min(u64::from(u32::MAX)) as u32]);
            }
        }
        if to.0.is_unspecified() || to.1 == 0 {
            return Err(NetError::Unaddressable);
        }
        let socket = self.sockets.get_mut::<udp::Socket>(h.0);
        socket.send_slice(data, IpEndpoint::new(to.0.into(), to.1)).map_err(|e| match e {
            udp::SendError::BufferFull => NetError::BufferFull,
            udp::SendError::Unaddressable => NetError::Unaddressable,
        })
    }

    /// Queues one datagram like [`Self::udp_send`], but while the send buffer is full it polls
    /// (idling while nothing can move) until there is room, or gives up with
    /// [`NetError::BufferFull`] once `deadline` has passed: a sender that waits instead of
    /// dropping. Received frames keep flowing meanwhile, as far as sockets hold them.
    pub fn udp_send_by(
        &mut self,
        h: UdpHandle,
        data: &[u8],
        to: (Ipv4Address, u16),
        deadline: Instant,
    ) -> Result<(), NetError> {
        loop {
            match self.udp_send(h, data, to) {
                Err(NetError::BufferFull) if self.now() < deadline => {
                    if !self.poll() {
                        self.wait_until(deadline);
                    }
                }
                result => return result,
            }
        }
    }

    /// Records what the app did with a datagram it took, for the guest's published counters.
    pub fn app_outcome(&mut self, outcome: AppOutcome) {
        self.count(match outcome {
            AppOutcome::Echoed => GuestCounter::AppEchoes,
            AppOutcome::Consumed => GuestCounter::AppConsumed,
            AppOutcome::Dropped => GuestCounter::AppDrops,
        });
    }

    /// Takes the next received datagram: its length and sender. A datagram longer than `buf`
    /// is cut to `buf.len()`, as with `recv(2)`. The app then reports what it did with it
    /// ([`Self::app_outcome`]).
    pub fn udp_recv(&mut self, h: UdpHandle, buf: &mut [u8]) -> Option<(usize, (Ipv4Address, u16))> {
        let book = self.udp_books.iter().position(|(handle, _)| *handle == h.0);
        let socket = self.sockets.get_mut::<udp::Socket>(h.0);
        let before = socket.recv_queue();
        // Even a failed recv may drop a padding entry: the book follows the bytes.
        let (device, samples, rx_done_at) = (&mut self.device, &mut self.rx_stage_samples, &mut self.rx_done_at);
        let received = socket.recv().ok().map(|(data, meta)| {
            // The receive stages end here, before the app's copy (as the stack hands it over).
            if let Some(done) = record_rx_stages(device, samples, data.len()) {
                *rx_done_at = done;
            }
            let len = data.len().min(buf.len());
            buf[..len].copy_from_slice(&data[..len]);
            (data.len(), len, meta.endpoint)
        });
        let shrank = before.saturating_sub(socket.recv_queue());
        if let Some((_, book)) = book.and_then(|i| self.udp_books.get_mut(i)) {
            book.dequeued(received.map(|(full, _, _)| full), shrank);
        }
        let (_, len, endpoint) = received?;
        self.count(GuestCounter::AppReceived);
        let from = match endpoint.addr {
            IpAddress::Ipv4(addr) => (addr, endpoint.port),
            // Only if another crate turns on IPv6: this interface has no IPv6 address.
            #[allow(unreachable_patterns)]
            _ => {
                self.count(GuestCounter::AppDrops);
                return None;
            }
        };
        Some((len, from))
    }

    /// Sets an app's own running total (the HTTP server's, which it keeps itself), published
    /// with the stack's counters at the next poll. Counters the stack keeps are left alone.
    pub fn set_app_total(&mut self, counter: GuestCounter, value: u64) {
        use GuestCounter::{HttpBodyBytes, HttpErrors, HttpRequests};
        if let (true, Some(slot)) =
            (matches!(counter, HttpRequests | HttpErrors | HttpBodyBytes), self.counters.get_mut(counter as usize))
        {
            *slot = value;
        }
    }

    fn count(&mut self, counter: GuestCounter) {
        if let Some(value) = self.counters.get_mut(counter as usize) {
            *value = value.saturating_add(1);
        }
    }

    /// The guest's counters as published: the stack's and apps', the driver's, and the gauges.
    pub fn guest_counters(&self) -> GuestCounterValues {
        let mut values = self.counters;
        let driver = self.device.counters();
        let queued = self.udp_books.iter().map(|(_, book)| book.queued as u64).sum();
        let at = |c: GuestCounter| c as usize;
        let settled = [GuestCounter::AppEchoes, GuestCounter::AppConsumed, GuestCounter::AppDrops]
            .iter()
            .fold(0u64, |sum, &c| sum.saturating_add(values[at(c)]));
        values[at(GuestCounter::RxTaken)] = driver.rx_frames;
        values[at(GuestCounter::UdpQueued)] = queued;
        values[at(GuestCounter::AppHeld)] = values[at(GuestCounter::AppReceived)].saturating_sub(settled);
        values[at(GuestCounter::TxFrames)] = driver.tx_frames;
        values[at(GuestCounter::TxDropsRingFull)] = driver.tx_dropped_ring_full;
        values[at(GuestCounter::TxDropsTooLong)] = driver.tx_dropped.saturating_sub(driver.tx_dropped_ring_full);
        values[at(GuestCounter::TxRejected)] = driver.tx_rejected;
        values[at(GuestCounter::RxDescErrors)] = driver.rx_errors;
        values[at(GuestCounter::TcpOpen)] = self.tcp.open;
        values[at(GuestCounter::TcpSockets)] = self.tcp.sockets;
        values
    }

    /// Decides for the next frame in the rx ring: `None` if there is none, or if it must wait
    /// (its socket cannot surely hold it, or an answer it may need would find no tx slot).
    fn admission(&mut self) -> Option<Admission> {
        let frame = self.device.peek_rx()?;
        // The common case, a datagram for a socket, from a quick look at its headers; the stack
        // checks the rest, and what it refuses is counted by a second look afterwards.
        if let Some((port, len)) = ingress::udp_destination(frame, &self.identity) {
            if let Some(book) = self.udp_books.iter().position(|(_, b)| b.port == port) {
                let (handle, rx_book) = self.udp_books[book];
                let socket = self.sockets.get::<udp::Socket>(handle);
                let capacity = socket.payload_recv_capacity();
                // One that could never fit goes in (to be refused and counted), not to block
                // the ring for ever.
                let fits = len > capacity
                    || rx_book.surely_fits(len, socket.packet_recv_capacity(), capacity, socket.recv_queue());
                return fits.then_some(Admission::Socket { book, len });
            }
        }
        let inbound = ingress::classify(frame, &self.identity);
        // ARP, ICMP and datagrams to closed ports may be answered at once.
        self.device.tx_has_room().then_some(Admission::Stack(inbound))
    }

    /// Hands the next frame to the stack if it may go ([`Self::admission`]) and counts what
    /// became of it. Returns whether a frame was taken.
    fn ingress_one(&mut self, now: Instant) -> bool {
        let Some(admission) = self.admission() else { return false };
        let identity = self.identity;
        let datagram_ok = |device: &Vnic<'a, D>| device.last_rx().is_some_and(|f| ingress::datagram_ok(f, &identity));
        match admission {
            Admission::Socket { book, len } => {
                let (handle, rx_book) = self.udp_books[book];
                let socket = self.sockets.get::<udp::Socket>(handle);
                let before = socket.recv_queue();
                // An empty datagram adds no bytes: smoltcp takes it if an entry is free and it is
                // a whole datagram (the book knows the entries, whatever admission decided).
                let entry_free = rx_book.queued + rx_book.paddings < socket.packet_recv_capacity();
                self.iface.poll_ingress_single(now, &mut self.device, &mut self.sockets);
                let grew = self.sockets.get::<udp::Socket>(handle).recv_queue().saturating_sub(before);
                let queued = if len > 0 { grew > 0 } else { entry_free && datagram_ok(&self.device) };
                if queued {
                    self.udp_books[book].1.enqueued(len, grew);
                    self.count(GuestCounter::RxDatagrams);
                    self.count(GuestCounter::UdpDelivered);
                } else if datagram_ok(&self.device) {
                    // Refused though it looked whole: no room after all.
                    self.count(GuestCounter::RxDatagrams);
                    self.count(GuestCounter::DropsSocketFull);
                } else {
                    self.count(GuestCounter::DropsMalformed);
                }
            }
            Admission::Stack(inbound) => {
                let repeated_syn = match inbound {
                    Inbound::Segment(s) if s.syn => {
                        self.tcp_syn_verdict((s.src, s.src_port), s.dst_port) == tcp::SynVerdict::Repeated
                    }
                    _ => false,
                };
                if repeated_syn {
                    use smoltcp::phy::{Device, RxToken};
                    if let Some((frame, _)) = self.device.receive(now) {
                        frame.consume(|_| ());
                    }
                } else {
                    self.iface.poll_ingress_single(now, &mut self.device, &mut self.sockets);
                }
                let counter = match inbound {
                    Inbound::Datagram { .. } if datagram_ok(&self.device) => {
                        self.count(GuestCounter::RxDatagrams);
                        GuestCounter::DropsNoSocket
                    }
                    Inbound::Datagram { .. } | Inbound::Malformed => GuestCounter::DropsMalformed,
                    Inbound::Segment(_) => GuestCounter::RxTcpSegments,
                    Inbound::Other => GuestCounter::RxOther,
                };
                self.count(counter);
            }
        }
        true
    }

    /// Whether the stack has TCP listeners or connections to look after.
    fn has_tcp(&self) -> bool {
        self.tcp.sockets > 0
    }

    /// Processes received frames and sends what the sockets have queued, then rings the tx
    /// doorbell at most once. Returns whether any socket's state may have changed.
    pub fn poll(&mut self) -> bool {
        self.device.note_resume();
        // Clear the virtual-interrupt bits before looking at the rings: whatever the kernel
        // raises from here on stays set, and the idle in `wait` returns at once for it.
        self.device.take_virtual_interrupts();
        let now = self.platform.now();
        let mut changed = false;
        let sent_before = self.device.counters().tx_frames;
        // smoltcp sends at most one packet per socket per egress pass; repeat until it has
        // nothing more (or the ring is full), so the whole batch goes out on one kick. Frames
        // come in one at a time, each only if it can be held now.
        for _ in 0..POLL_ROUNDS {
            let mut progressed = false;
            let segments = self.counters[GuestCounter::RxTcpSegments as usize];
            for _ in 0..RX_RING_SIZE {
                if !self.ingress_one(now) {
                    break;
                }
                progressed = true;
            }
            // What closed a connection (a reset, or a timeout) shows in which pass it closed.
            if self.counters[GuestCounter::RxTcpSegments as usize] != segments {
                self.tcp_observe(tcp::Pass::Ingress);
            }
            if self.iface.poll_egress(now, &mut self.device, &mut self.sockets) != PollResult::None {
                progressed = true;
            }
            if self.has_tcp() {
                // Also frees what the app's reads and closes let go since the last poll.
                self.tcp_observe(tcp::Pass::Egress);
            }
            if !progressed {
                break;
            }
            changed = true;
        }
        self.flush_device(now);
        self.device.publish_counters(&self.guest_counters());
        if self.device.counters().tx_frames.saturating_sub(sent_before) >= YIELD_AFTER_FRAMES {
            // The yield hands the tx ring over too.
            self.device.handed_over_by_idle();
            self.kick_deferred_since = None;
            self.platform.yield_now();
        }
        changed
    }

    /// Sleeps until smoltcp's next deadline (`poll_delay`), or until a virtual interrupt when it
    /// has none. Returns at once if work is already waiting.
    pub fn wait(&mut self) {
        self.sleep(None);
    }

    /// As [`Self::wait`], but no later than `deadline` (an app's own timeout).
    pub fn wait_until(&mut self, deadline: Instant) {
        self.sleep(Some(deadline));
    }

    /// Ends a poll: buffers go back, and produced frames are kicked only if they waited
    /// [`KICK_DEFERRAL`] already or the ring is full; otherwise the idle that usually follows
    /// hands them over ([`Self::idle_until`]).
    fn flush_device(&mut self, now: Instant) {
        if !self.device.flush_without_kick() {
            self.kick_deferred_since = None;
            return;
        }
        let since = *self.kick_deferred_since.get_or_insert(now);
        if now - since >= KICK_DEFERRAL || !self.device.tx_has_room() {
            self.device.flush();
            self.kick_deferred_since = None;
        }
    }

    /// Idles until `deadline` (or a virtual interrupt); the kernel takes the tx ring as it does.
    fn idle_until(&mut self, deadline: Option<Instant>) {
        self.device.handed_over_by_idle();
        self.kick_deferred_since = None;
        self.platform.idle_until(deadline);
    }

    fn sleep(&mut self, limit: Option<Instant>) {
        // A frame the stack can take now; one that must wait for room does not count.
        if self.admission().is_some() {
            return;
        }
        let now = self.platform.now();
        let due = |deadline: Option<Instant>| deadline.is_some_and(|d| d <= now);
        let stack = self.iface.poll_delay(now, &self.sockets).map(|delay| now + delay);
        if due(limit) {
            return; // idling would only cost a trap
        }
        if due(stack) {
            if self.device.tx_has_room() {
                return;
            }
            // What is due is a send, and every tx slot is in flight: the kernel raises a
            // virtual interrupt when it completes one.
            self.idle_until(limit);
            return;
        }
        let deadline = match (stack, limit) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
        self.idle_until(deadline);
    }

    /// The vNIC under the stack, for host harnesses that play the kernel's side.
    #[cfg(feature = "testing")]
    #[doc(hidden)]
    pub fn device_mut(&mut self) -> &mut Vnic<'a, D> {
        &mut self.device
    }

    pub fn vnic_counters(&self) -> VnicCounters {
        self.device.counters()
    }
}

/// With stamping on, the stages of the datagram of `len` payload bytes just taken, from the
/// kernel's trap entry to now; the stamp that ends them (None: stamping off).
fn record_rx_stages<D: Doorbell>(
    device: &mut Vnic<'_, D>,
    samples: &mut alloc::collections::BTreeMap<usize, Vec<[u32; 8]>>,
    len: usize,
) -> Option<u64> {
    let stamps = device.take_rx_stamps()?;
    let done = device.clock();
    let [entry, handler, popped, routed, copied, released, resumed, driver] = stamps;
    let marks = [entry, handler, popped, routed, copied, released, resumed, driver, done];
    if marks.windows(2).all(|w| w[0] <= w[1]) && entry != 0 {
        let stages: [u32; 8] = core::array::from_fn(|i| (marks[i + 1] - marks[i]).min(u64::from(u32::MAX)) as u32);
        let samples = samples.entry(len + FRAME_HEADERS).or_default();
        if samples.len() < STAMP_SAMPLES {
            samples.push(stages);
        }
        return Some(done);
    }
    None
}

/// The MAC as a number, to seed smoltcp's random generator.
fn mac_seed(mac: [u8; 6]) -> u64 {
    mac.iter().fold(0, |seed, &b| (seed << 8) | u64::from(b))
}

#[cfg(test)]
mod tests;
