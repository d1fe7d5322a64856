//! TCP for apps: listeners with a backlog, connections by handle, reads and writes with
//! backpressure, half-close, close and abort, idle timeouts; every connection that ends is
//! counted by how it ended and its socket freed.
//!
//! A smoltcp TCP socket holds one connection, so a listener keeps a pool of `backlog` sockets
//! listening on its port; [`NetStack::tcp_accept`] hands out one whose handshake is done and
//! puts a fresh listening socket in its place. While every socket of the pool is taken, a new
//! connection request is answered with a reset (and counted, [`GuestCounter::TcpRefused`]).
//!
//! The stack looks at every connection's state after each pass of the stack that can change it:
//! a socket that closes while segments come in was reset by the peer (or refused the connect,
//! or acknowledged our last FIN), one that closes while the stack sends gave up on a silent peer
//! (its timeout). TIME-WAIT is not kept: both sides have closed, the last ACK has gone out, and
//! the socket is freed at once (unless the app has yet to read what came before the FIN).

use crate::{NetError, NetStack, Platform};
use alloc::vec::Vec;
use hypercall_abi::vnic::GuestCounter;
use smoltcp::iface::SocketHandle;
use smoltcp::socket::tcp::{self, State};
use smoltcp::time::{Duration, Instant};
use smoltcp::wire::{IpAddress, IpEndpoint, Ipv4Address};
use vnic_driver::Doorbell;

/// Default receive and send buffer of a TCP socket, each (images set theirs with `tcp_rx_kib`
/// and `tcp_tx_kib`).
pub const TCP_DEFAULT_BUFFER: usize = 32 * 1024;
/// Largest TCP buffer (each direction) a socket may ask for.
pub const TCP_MAX_BUFFER: usize = hypercall_abi::initrd::MAX_TCP_BUFFER_KIB as usize * 1024;
/// Smallest TCP buffer: one full segment.
pub const TCP_MIN_BUFFER: usize = 1536;
/// Default idle timeout: a connection whose peer sends nothing for this long is given up.
pub const TCP_DEFAULT_IDLE_TIMEOUT: Duration = Duration::from_secs(60);
/// Most listening sockets one listener keeps.
pub const TCP_MAX_BACKLOG: usize = 128;
/// How long a connection the app has closed may wait for the peer to finish (as Linux's
/// `tcp_fin_timeout`), when it had no shorter idle timeout.
const ORPHAN_TIMEOUT: Duration = Duration::from_secs(60);
/// How long a reset socket waits to send its RST (it needs the peer's MAC, which an
/// unanswered connect never learnt) before it is freed anyway.
const RESET_GRACE: Duration = Duration::from_secs(2);
/// Local ports for connections apps open (IANA's dynamic range).
const EPHEMERAL_FIRST: u16 = 49152;
const EPHEMERAL_COUNT: u16 = u16::MAX - EPHEMERAL_FIRST + 1;

/// How a TCP socket is set up: buffer sizes and timers. The stack's defaults
/// ([`NetStack::set_tcp_options`]) apply to listeners and connects that name none.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TcpOptions {
    /// Receive buffer in bytes: the most the peer may send ahead of the app (the window).
    pub rx_buffer: usize,
    /// Send buffer in bytes: the most the app may queue ahead of the peer's acknowledgements.
    pub tx_buffer: usize,
    /// Give the connection up (RST, [`TcpError::TimedOut`]) when the peer has sent nothing for
    /// this long, or never answers a connect. `None`: never.
    pub idle_timeout: Option<Duration>,
    /// Send a keep-alive probe after this long without traffic, so that a quiet but living peer
    /// answers and is not timed out. `None`: no probes.
    pub keep_alive: Option<Duration>,
    /// Send small segments at once instead of holding them back while data is unacknowledged
    /// (`TCP_NODELAY`: turns Nagle's algorithm off). On by default: apps here write whole
    /// requests and replies, and Nagle with the peer's delayed ACK would stall each one.
    pub nodelay: bool,
}

impl Default for TcpOptions {
    fn default() -> Self {
        TcpOptions {
            rx_buffer: TCP_DEFAULT_BUFFER,
            tx_buffer: TCP_DEFAULT_BUFFER,
            idle_timeout: Some(TCP_DEFAULT_IDLE_TIMEOUT),
            keep_alive: None,
            nodelay: true,
        }
    }
}

impl TcpOptions {
    /// The buffer sizes kept within [`TCP_MIN_BUFFER`] and [`TCP_MAX_BUFFER`].
    fn bounded(mut self) -> Self {
        self.rx_buffer = self.rx_buffer.clamp(TCP_MIN_BUFFER, TCP_MAX_BUFFER);
        self.tx_buffer = self.tx_buffer.clamp(TCP_MIN_BUFFER, TCP_MAX_BUFFER);
        self
    }
}

/// A listener of one [`NetStack`]: a port and its pool of listening sockets.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct TcpListener {
    index: u32,
    serial: u32,
}

/// A TCP connection of one [`NetStack`], from [`NetStack::tcp_accept`] or
/// [`NetStack::tcp_connect`]. It stays valid until the app gives it back with
/// [`NetStack::tcp_close`] or [`NetStack::tcp_abort`], even after the connection has ended (its
/// calls then say how it ended); a handle given back is refused ([`TcpError::InvalidHandle`]),
/// never taken for a newer connection.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct TcpHandle {
    index: u32,
    serial: u32,
}

/// Why a call on a [`TcpHandle`] could not do what it was asked.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TcpError {
    /// The handle was given back (closed or aborted), or is another stack's.
    InvalidHandle,
    /// Reading: the peer has closed its sending half and every byte it sent has been read
    /// (end of stream).
    Finished,
    /// Writing: this side's sending half is closed ([`NetStack::tcp_shutdown`]), or the
    /// connection has ended normally.
    SendClosed,
    /// The connection was reset: by the peer, or by this side's abort.
    Reset,
    /// The peer refused the connection (answered the connect with a reset).
    Refused,
    /// The peer sent nothing for longer than the idle timeout, or never answered the connect.
    TimedOut,
}

/// How a connection ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum End {
    /// Both sides closed (or the app closed before the connection was established).
    Closed,
    Reset,
    Refused,
    TimedOut,
}

impl End {
    fn counter(self) -> GuestCounter {
        match self {
            End::Closed => GuestCounter::TcpClosed,
            End::Reset | End::Refused => GuestCounter::TcpReset,
            End::TimedOut => GuestCounter::TcpTimedOut,
        }
    }

    fn recv_error(self) -> TcpError {
        match self {
            End::Closed => TcpError::Finished,
            End::Reset => TcpError::Reset,
            End::Refused => TcpError::Refused,
            End::TimedOut => TcpError::TimedOut,
        }
    }

    fn send_error(self) -> TcpError {
        match self {
            End::Closed => TcpError::SendClosed,
            other => other.recv_error(),
        }
    }
}

/// What to do with a connection request (SYN) before the stack sees it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum SynVerdict {
    /// To the stack: a listening socket takes it, or it is refused with a reset (counted
    /// when the listener's backlog is full).
    Stack,
    /// The peer repeats the SYN of a connection a socket already holds (its SYN-ACK was slow or
    /// lost): left out, because the stack would give it to whichever socket comes first, and a
    /// listening one would start a second handshake for the same peer and port, which the peer
    /// then resets. The holder's SYN-ACK goes again at its retransmission timeout.
    Repeated,
}

/// Which pass of the stack just ran: what can close a socket differs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Pass {
    /// Segments came in: a reset, a refused connect, or the ACK of our last FIN.
    Ingress,
    /// The stack sent: only a timeout closes a socket there.
    Egress,
}

struct Listener {
    serial: u32,
    port: u16,
    backlog: usize,
    options: TcpOptions,
    /// Sockets listening, in a handshake, or holding a connection not yet accepted.
    pool: Vec<SocketHandle>,
}

struct Conn {
    serial: u32,
    /// The socket, until the connection has ended and the socket was freed.
    socket: Option<SocketHandle>,
    /// The state at the last look, to tell how the connection ended.
    seen: State,
    /// How it ended (counted when it was recorded), and when.
    end: Option<(End, Instant)>,
    /// The app gave the handle back: the record goes with the socket, and whatever still
    /// comes in is discarded.
    released: bool,
}

/// The stack's TCP book-keeping.
pub(crate) struct TcpBook {
    defaults: TcpOptions,
    listeners: Vec<Option<Listener>>,
    conns: Vec<Option<Conn>>,
    next_serial: u32,
    /// The next ephemeral port to try, as an offset from [`EPHEMERAL_FIRST`].
    next_ephemeral: u16,
    /// Gauges as of the last look ([`GuestCounter::TcpOpen`], [`GuestCounter::TcpSockets`]).
    pub open: u64,
    pub sockets: u64,
}

impl TcpBook {
    pub fn new(seed: u64) -> Self {
        TcpBook {
            defaults: TcpOptions::default(),
            listeners: Vec::new(),
            conns: Vec::new(),
            next_serial: 1,
            next_ephemeral: (seed % u64::from(EPHEMERAL_COUNT)) as u16,
            open: 0,
            sockets: 0,
        }
    }

    /// Connection records held (given back or not), and the places for them.
    #[cfg(test)]
    pub fn records(&self) -> (usize, usize) {
        (self.conns.iter().flatten().count(), self.conns.len())
    }

    fn serial(&mut self) -> u32 {
        let serial = self.next_serial;
        self.next_serial = self.next_serial.wrapping_add(1).max(1);
        serial
    }

    fn conn(&self, h: TcpHandle) -> Result<&Conn, TcpError> {
        match self.conns.get(h.index as usize) {
            Some(Some(conn)) if conn.serial == h.serial && !conn.released => Ok(conn),
            _ => Err(TcpError::InvalidHandle),
        }
    }

    fn conn_mut(&mut self, h: TcpHandle) -> Result<&mut Conn, TcpError> {
        match self.conns.get_mut(h.index as usize) {
            Some(Some(conn)) if conn.serial == h.serial && !conn.released => Ok(conn),
            _ => Err(TcpError::InvalidHandle),
        }
    }

    fn listener(&self, l: TcpListener) -> Option<&Listener> {
        self.listeners.get(l.index as usize)?.as_ref().filter(|listener| listener.serial == l.serial)
    }

    /// Files a new connection's record in a free place; its handle.
    fn insert(&mut self, socket: SocketHandle, seen: State) -> TcpHandle {
        let serial = self.serial();
        let conn = Conn { serial, socket: Some(socket), seen, end: None, released: false };
        let index = match self.conns.iter().position(Option::is_none) {
            Some(free) => {
                self.conns[free] = Some(conn);
                free
            }
            None => {
                self.conns.push(Some(conn));
                self.conns.len() - 1
            }
        };
        TcpHandle { index: index as u32, serial }
    }
}

/// `len` zero bytes, or `None` if the heap cannot hold them (instead of aborting the guest).
fn zeroed(len: usize) -> Option<Vec<u8>> {
    let mut bytes = Vec::new();
    bytes.try_reserve_exact(len).ok()?;
    bytes.resize(len, 0);
    Some(bytes)
}

/// A TCP socket set up as `options` says, or `None` if its buffers do not fit in the heap.
fn new_socket(options: &TcpOptions) -> Option<tcp::Socket<'static>> {
    let rx = zeroed(options.rx_buffer)?;
    let tx = zeroed(options.tx_buffer)?;
    let mut socket = tcp::Socket::new(tcp::SocketBuffer::new(rx), tcp::SocketBuffer::new(tx));
    socket.set_timeout(options.idle_timeout);
    socket.set_keep_alive(options.keep_alive);
    socket.set_nagle_enabled(!options.nodelay);
    // ACK at the next poll rather than after a delay: a poll takes in a whole ring of segments
    // and answers them with one ACK anyway, and a socket that reached TIME-WAIT has sent its
    // last ACK by the end of that poll and can be freed.
    socket.set_ack_delay(None);
    // Reno (RFC 5681): what is in flight adapts to what the path takes. A guest's receive ring
    // holds 32 frames and the kernel drops what finds it full; without congestion control a
    // sender keeps a whole window in flight and loses part of it again and again.
    socket.set_congestion_control(tcp::CongestionControl::Reno);
    Some(socket)
}

/// Whether a listening socket's connection is ready to be accepted: past the handshake and
/// not ended (it may already have data, or the peer's FIN).
fn ready(state: State) -> bool {
    !matches!(state, State::Listen | State::SynReceived | State::Closed)
}

fn endpoint((addr, port): (Ipv4Address, u16)) -> IpEndpoint {
    IpEndpoint::new(addr.into(), port)
}

impl<D: Doorbell, P: Platform> NetStack<'_, D, P> {
    /// The options listeners and connects get unless they name their own.
    pub fn tcp_options(&self) -> TcpOptions {
        self.tcp.defaults
    }

    /// Sets the options listeners and connects get from now on (buffer sizes bounded to
    /// [`TCP_MIN_BUFFER`]..=[`TCP_MAX_BUFFER`]).
    pub fn set_tcp_options(&mut self, options: TcpOptions) {
        self.tcp.defaults = options.bounded();
    }

    fn add_tcp_socket(&mut self, socket: tcp::Socket<'static>) -> SocketHandle {
        self.tcp.sockets += 1;
        self.sockets.add(socket)
    }

    fn remove_tcp_socket(&mut self, handle: SocketHandle) {
        self.tcp.sockets = self.tcp.sockets.saturating_sub(1);
        self.sockets.remove(handle);
    }

    /// A socket listening on `port`, added to the set.
    fn listening_socket(&mut self, port: u16, options: &TcpOptions) -> Option<SocketHandle> {
        let mut socket = new_socket(options)?;
        socket.listen(port).ok()?;
        Some(self.add_tcp_socket(socket))
    }

    /// Listens on `port` with the default options: `backlog` sockets (1 to
    /// [`TCP_MAX_BACKLOG`]) take connections until the app accepts them.
    pub fn tcp_listen(&mut self, port: u16, backlog: usize) -> Result<TcpListener, NetError> {
        let options = self.tcp.defaults;
        self.tcp_listen_with(port, backlog, options)
    }

    /// Listens on `port` as [`Self::tcp_listen`], with `options` for its connections.
    pub fn tcp_listen_with(&mut self, port: u16, backlog: usize, options: TcpOptions) -> Result<TcpListener, NetError> {
        if port == 0 {
            return Err(NetError::Unaddressable);
        }
        if self.tcp.listeners.iter().flatten().any(|l| l.port == port) {
            return Err(NetError::PortInUse);
        }
        let options = options.bounded();
        let backlog = backlog.clamp(1, TCP_MAX_BACKLOG);
        let mut pool = Vec::new();
        if pool.try_reserve_exact(backlog).is_err() {
            return Err(NetError::NoMemory);
        }
        for _ in 0..backlog {
            match self.listening_socket(port, &options) {
                Some(handle) => pool.push(handle),
                None => {
                    for handle in pool {
                        self.remove_tcp_socket(handle);
                    }
                    return Err(NetError::NoMemory);
                }
            }
        }
        let serial = self.tcp.serial();
        let listener = Listener { serial, port, backlog, options, pool };
        let index = match self.tcp.listeners.iter().position(Option::is_none) {
            Some(free) => {
                self.tcp.listeners[free] = Some(listener);
                free
            }
            None => {
                self.tcp.listeners.push(Some(listener));
                self.tcp.listeners.len() - 1
            }
        };
        Ok(TcpListener { index: index as u32, serial })
    }

    /// The next connection of `listener` whose handshake is done, if any; a fresh listening
    /// socket takes its place in the pool (at the next poll if the heap has no room now).
    pub fn tcp_accept(&mut self, listener: TcpListener) -> Option<TcpHandle> {
        let l = self.tcp.listener(listener)?;
        let at = l.pool.iter().position(|&h| ready(self.sockets.get::<tcp::Socket>(h).state()))?;
        let (port, options) = (l.port, l.options);
        let socket = self.tcp.listeners[listener.index as usize].as_mut()?.pool.remove(at);
        let state = self.sockets.get::<tcp::Socket>(socket).state();
        let handle = self.tcp.insert(socket, state);
        self.count(GuestCounter::TcpAccepted);
        self.tcp.open += 1;
        if let Some(fresh) = self.listening_socket(port, &options) {
            if let Some(l) = self.tcp.listeners[listener.index as usize].as_mut() {
                l.pool.push(fresh);
            }
        }
        Some(handle)
    }

    /// Opens a connection to `to` from an ephemeral port, with the default options. It is
    /// established when [`Self::tcp_may_send`] says so (or fails: [`TcpError::Refused`],
    /// [`TcpError::TimedOut`]).
    pub fn tcp_connect(&mut self, to: (Ipv4Address, u16)) -> Result<TcpHandle, NetError> {
        let options = self.tcp.defaults;
        self.tcp_connect_with(to, options)
    }

    /// Opens a connection as [`Self::tcp_connect`], with `options`.
    pub fn tcp_connect_with(&mut self, to: (Ipv4Address, u16), options: TcpOptions) -> Result<TcpHandle, NetError> {
        if to.0.is_unspecified() || to.0.is_broadcast() || to.0.is_multicast() || to.1 == 0 {
            return Err(NetError::Unaddressable);
        }
        let port = self.ephemeral_port().ok_or(NetError::PortInUse)?;
        let mut socket = new_socket(&options.bounded()).ok_or(NetError::NoMemory)?;
        socket.connect(self.iface.context(), endpoint(to), port).map_err(|_| NetError::Unaddressable)?;
        let socket = self.add_tcp_socket(socket);
        let handle = self.tcp.insert(socket, State::SynSent);
        self.count(GuestCounter::TcpConnects);
        self.tcp.open += 1;
        Ok(handle)
    }

    /// A local port no TCP socket of this stack uses, taken in turn from the dynamic range.
    fn ephemeral_port(&mut self) -> Option<u16> {
        let in_use = |port: u16| {
            self.sockets.iter().any(|(_, socket)| match socket {
                smoltcp::socket::Socket::Tcp(tcp) => {
                    tcp.listen_endpoint().port == port || tcp.local_endpoint().is_some_and(|e| e.port == port)
                }
                #[allow(unreachable_patterns)]
                _ => false,
            })
        };
        for _ in 0..EPHEMERAL_COUNT {
            let port = EPHEMERAL_FIRST + self.tcp.next_ephemeral;
            self.tcp.next_ephemeral = (self.tcp.next_ephemeral + 1) % EPHEMERAL_COUNT;
            if !in_use(port) {
                return Some(port);
            }
        }
        None
    }

    /// The socket of a connection that has one, or how it ended.
    fn tcp_socket(&mut self, h: TcpHandle) -> Result<Result<&mut tcp::Socket<'static>, End>, TcpError> {
        let conn = self.tcp.conn(h)?;
        match (conn.socket, conn.end) {
            (Some(socket), _) => Ok(Ok(self.sockets.get_mut::<tcp::Socket>(socket))),
            (None, Some((end, _))) => Ok(Err(end)),
            (None, None) => Err(TcpError::InvalidHandle),
        }
    }

    /// Reads what has arrived into `buf`: `Ok(n)` bytes, `Ok(0)` if nothing has yet (or the
    /// connection is not yet established), [`TcpError::Finished`] at the end of the stream, or
    /// how the connection failed. Reading makes room in the window: the peer may send more.
    pub fn tcp_recv(&mut self, h: TcpHandle, buf: &mut [u8]) -> Result<usize, TcpError> {
        let end = self.tcp.conn(h)?.end.map(|(end, _)| end);
        match self.tcp_socket(h)? {
            Err(end) => Err(end.recv_error()),
            Ok(socket) => match socket.recv_slice(buf) {
                Ok(n) => Ok(n),
                Err(tcp::RecvError::Finished) => Err(TcpError::Finished),
                Err(tcp::RecvError::InvalidState) => end.map_or(Ok(0), |end| Err(end.recv_error())),
            },
        }
    }

    /// Queues as much of `data` as the send buffer has room for: `Ok(n)` bytes (0 while it is
    /// full or the connection is not yet established), or why nothing more can be sent. The
    /// next polls send it as the peer's window allows.
    pub fn tcp_send(&mut self, h: TcpHandle, data: &[u8]) -> Result<usize, TcpError> {
        self.tcp_queue(h, |socket| socket.send_slice(data))
    }

    /// Queues what `fill` writes straight into the send buffer (no copy through a buffer of the
    /// app's): it is given free room (one contiguous part of it, so call again while it fills
    /// all it was given) and returns how many bytes it wrote. Otherwise as [`Self::tcp_send`];
    /// `fill` is not called when nothing can be queued.
    pub fn tcp_send_with(&mut self, h: TcpHandle, fill: impl FnOnce(&mut [u8]) -> usize) -> Result<usize, TcpError> {
        self.tcp_queue(h, |socket| {
            socket.send(|room| {
                let n = fill(room).min(room.len());
                (n, n)
            })
        })
    }

    /// Queues bytes on the connection's socket with `queue`, saying why nothing can be queued.
    fn tcp_queue(
        &mut self,
        h: TcpHandle,
        queue: impl FnOnce(&mut tcp::Socket<'static>) -> Result<usize, tcp::SendError>,
    ) -> Result<usize, TcpError> {
        let end = self.tcp.conn(h)?.end.map(|(end, _)| end);
        match self.tcp_socket(h)? {
            Err(end) => Err(end.send_error()),
            Ok(socket) => match queue(socket) {
                Ok(n) => Ok(n),
                Err(tcp::SendError::InvalidState) => match (end, socket.state()) {
                    (Some(end), _) => Err(end.send_error()),
                    (None, State::SynSent | State::SynReceived) => Ok(0),
                    (None, _) => Err(TcpError::SendClosed),
                },
            },
        }
    }

    /// Queues all of `data` like [`Self::tcp_send`], polling (and idling while nothing can
    /// move) whenever the send buffer is full: a sender that waits for the peer instead of
    /// dropping. Returns the bytes queued: all of them, or fewer only if `deadline` passed
    /// first. Other connections' segments keep flowing meanwhile.
    pub fn tcp_send_all_by(&mut self, h: TcpHandle, data: &[u8], deadline: Instant) -> Result<usize, TcpError> {
        let mut queued = 0;
        loop {
            queued += self.tcp_send(h, &data[queued..])?;
            if queued == data.len() || self.now() >= deadline {
                return Ok(queued);
            }
            if !self.poll() {
                self.wait_until(deadline);
            }
        }
    }

    /// Bytes [`Self::tcp_send`] would take now (0 unless the sending half is open).
    pub fn tcp_send_room(&mut self, h: TcpHandle) -> usize {
        match self.tcp_socket(h) {
            Ok(Ok(socket)) if socket.may_send() => socket.send_capacity() - socket.send_queue(),
            _ => 0,
        }
    }

    /// Bytes queued to send that the peer has not acknowledged yet.
    pub fn tcp_send_queue(&mut self, h: TcpHandle) -> usize {
        match self.tcp_socket(h) {
            Ok(Ok(socket)) => socket.send_queue(),
            _ => 0,
        }
    }

    /// Bytes received and not yet read.
    pub fn tcp_recv_queue(&mut self, h: TcpHandle) -> usize {
        match self.tcp_socket(h) {
            Ok(Ok(socket)) => socket.recv_queue(),
            _ => 0,
        }
    }

    /// Whether [`Self::tcp_send`] would take at least one byte now.
    pub fn tcp_can_send(&mut self, h: TcpHandle) -> bool {
        matches!(self.tcp_socket(h), Ok(Ok(socket)) if socket.can_send())
    }

    /// Whether the sending half is open: the connection is established and not shut down.
    pub fn tcp_may_send(&mut self, h: TcpHandle) -> bool {
        matches!(self.tcp_socket(h), Ok(Ok(socket)) if socket.may_send())
    }

    /// Whether [`Self::tcp_recv`] would return at least one byte now.
    pub fn tcp_can_recv(&mut self, h: TcpHandle) -> bool {
        matches!(self.tcp_socket(h), Ok(Ok(socket)) if socket.can_recv())
    }

    /// Whether more may be read: bytes are waiting, or the peer may still send.
    pub fn tcp_may_recv(&mut self, h: TcpHandle) -> bool {
        matches!(self.tcp_socket(h), Ok(Ok(socket)) if socket.may_recv())
    }

    /// Whether the connection has ended (closed by both sides, reset, refused or timed out),
    /// or the handle is not valid.
    pub fn tcp_is_closed(&mut self, h: TcpHandle) -> bool {
        self.tcp.conn(h).map_or(true, |conn| conn.end.is_some())
    }

    /// The connection's TCP state (`Closed` once it has ended or for an invalid handle).
    pub fn tcp_state(&mut self, h: TcpHandle) -> State {
        match self.tcp_socket(h) {
            Ok(Ok(socket)) => socket.state(),
            _ => State::Closed,
        }
    }

    /// The peer's address and port.
    pub fn tcp_remote(&mut self, h: TcpHandle) -> Option<(Ipv4Address, u16)> {
        let socket = self.tcp_socket(h).ok()?.ok()?;
        match socket.remote_endpoint()? {
            IpEndpoint { addr: IpAddress::Ipv4(addr), port } => Some((addr, port)),
            #[allow(unreachable_patterns)]
            _ => None,
        }
    }

    /// Sets the idle timeout of one connection (see [`TcpOptions::idle_timeout`]).
    pub fn tcp_set_timeout(&mut self, h: TcpHandle, timeout: Option<Duration>) {
        if let Ok(Ok(socket)) = self.tcp_socket(h) {
            socket.set_timeout(timeout);
        }
    }

    /// Sets the keep-alive interval of one connection (see [`TcpOptions::keep_alive`]).
    pub fn tcp_set_keep_alive(&mut self, h: TcpHandle, interval: Option<Duration>) {
        if let Ok(Ok(socket)) = self.tcp_socket(h) {
            socket.set_keep_alive(interval);
        }
    }

    /// Closes the sending half: a FIN follows the data already queued. Reading goes on until
    /// the peer closes its half ([`TcpError::Finished`]).
    pub fn tcp_shutdown(&mut self, h: TcpHandle) -> Result<(), TcpError> {
        match self.tcp_socket(h)? {
            Ok(socket) => {
                socket.close();
                let state = socket.state();
                self.tcp_seen(h.index as usize, state);
                if state == State::Closed {
                    // Shut down before the handshake: the connection is over.
                    let now = self.now();
                    self.record_end(h.index as usize, End::Closed, now);
                }
                Ok(())
            }
            Err(End::Closed) => Ok(()),
            Err(end) => Err(end.send_error()),
        }
    }

    /// Gives the connection back: the data already queued is sent, then a FIN; whatever the
    /// peer still sends is discarded, and the socket is freed when both sides are done (or at
    /// the idle timeout, or after a minute if it had none or a longer one). The handle is invalid
    /// from now on.
    pub fn tcp_close(&mut self, h: TcpHandle) {
        self.release(h, false);
    }

    /// Gives the connection back at once: a reset goes to the peer, queued data is dropped,
    /// and the socket is freed. The handle is invalid from now on.
    pub fn tcp_abort(&mut self, h: TcpHandle) {
        self.release(h, true);
    }

    fn release(&mut self, h: TcpHandle, abort: bool) {
        let Ok(conn) = self.tcp.conn_mut(h) else { return };
        conn.released = true;
        let (socket, ended) = (conn.socket, conn.end.is_some());
        let Some(socket) = socket else {
            // Ended and freed already: only the record is left.
            self.tcp.conns[h.index as usize] = None;
            return;
        };
        let now = self.now();
        let s = self.sockets.get_mut::<tcp::Socket>(socket);
        let end = if abort {
            s.abort();
            Some(End::Reset)
        } else {
            if s.timeout().is_none_or(|t| t > ORPHAN_TIMEOUT) {
                s.set_timeout(Some(ORPHAN_TIMEOUT));
            }
            s.close();
            // Closing before the handshake ends the connection at once.
            (s.state() == State::Closed).then_some(End::Closed)
        };
        let state = s.state();
        self.tcp_seen(h.index as usize, state);
        if let (Some(end), false) = (end, ended) {
            self.record_end(h.index as usize, end, now);
        }
        // Between polls: the last poll's sending pass has run.
        self.tcp_tidy(h.index as usize, now, Pass::Egress);
    }

    /// Records the state an app's call (shutdown, close, abort) put connection `index` in, so
    /// that the next look judges only what the stack did after it.
    fn tcp_seen(&mut self, index: usize, state: State) {
        if let Some(Some(conn)) = self.tcp.conns.get_mut(index) {
            conn.seen = state;
        }
    }

    fn record_end(&mut self, index: usize, end: End, now: Instant) {
        if let Some(Some(conn)) = self.tcp.conns.get_mut(index) {
            if conn.end.is_none() {
                conn.end = Some((end, now));
                self.tcp.open = self.tcp.open.saturating_sub(1);
                self.count(end.counter());
            }
        }
    }

    /// What becomes of a connection request (a SYN without ACK) from `from` to `port`, judged
    /// before the stack sees it. Counts the refused ones.
    pub(crate) fn tcp_syn_verdict(&mut self, from: (Ipv4Address, u16), port: u16) -> SynVerdict {
        let Some(listener) = self.tcp.listeners.iter().flatten().find(|l| l.port == port) else {
            return SynVerdict::Stack;
        };
        let peer = endpoint(from);
        let holds_peer = |socket: &tcp::Socket| {
            socket.state() != State::Listen
                && socket.remote_endpoint() == Some(peer)
                && socket.local_endpoint().is_some_and(|e| e.port == port)
        };
        let mut listening = false;
        for &h in &listener.pool {
            let socket = self.sockets.get::<tcp::Socket>(h);
            if holds_peer(socket) {
                return SynVerdict::Repeated;
            }
            listening |= socket.state() == State::Listen;
        }
        let known = self.tcp.conns.iter().flatten().filter_map(|c| c.socket).any(|h| holds_peer(self.sockets.get(h)));
        if known {
            return SynVerdict::Repeated;
        }
        if !listening {
            self.count(GuestCounter::TcpRefused);
        }
        SynVerdict::Stack
    }

    /// Looks at every connection after a `pass` of the stack: counts those that ended by how,
    /// frees the sockets of those done with, discards what comes in for connections the app
    /// gave back, and keeps every listener's pool listening and full.
    pub(crate) fn tcp_observe(&mut self, pass: Pass) {
        let now = self.now();
        let mut open = 0;
        for index in 0..self.tcp.conns.len() {
            let Some(Some(conn)) = self.tcp.conns.get(index) else { continue };
            let (Some(handle), seen) = (conn.socket, conn.seen) else { continue };
            let state = self.sockets.get::<tcp::Socket>(handle).state();
            if state != seen {
                let end = match (state, pass, seen) {
                    (State::TimeWait, _, _) => Some(End::Closed),
                    (State::Closed, Pass::Ingress, State::SynSent) => Some(End::Refused),
                    (State::Closed, Pass::Ingress, State::LastAck) => Some(End::Closed),
                    (State::Closed, Pass::Ingress, _) => Some(End::Reset),
                    (State::Closed, Pass::Egress, _) => Some(End::TimedOut),
                    _ => None,
                };
                if let Some(end) = end {
                    self.record_end(index, end, now);
                }
                if let Some(Some(conn)) = self.tcp.conns.get_mut(index) {
                    conn.seen = state;
                }
            }
            self.tcp_tidy(index, now, pass);
            if matches!(self.tcp.conns.get(index), Some(Some(conn)) if conn.end.is_none()) {
                open += 1;
            }
        }
        self.tcp.open = open;
        self.tcp_refill_listeners();
    }

    /// Frees connection `index`'s socket if the connection is done with, and its record too if
    /// the app gave it back; discards bytes arriving for a connection given back. A socket in
    /// TIME-WAIT goes only after a sending pass that had a slot for every frame due: the ACK of
    /// the peer's FIN has gone then (ACKs are not delayed, see `new_socket`).
    fn tcp_tidy(&mut self, index: usize, now: Instant, pass: Pass) {
        let acked = pass == Pass::Egress && self.device.tx_has_room();
        let Some(Some(conn)) = self.tcp.conns.get(index) else { return };
        let (socket, released, ended_at) = (conn.socket, conn.released, conn.end.map(|(_, at)| at));
        if let Some(handle) = socket {
            let s = self.sockets.get_mut::<tcp::Socket>(handle);
            if released && s.recv_queue() > 0 {
                let _ = s.recv(|bytes| (bytes.len(), ()));
            }
            let done = match s.state() {
                // Its reset (if it owes one) has gone, or could not go for too long.
                State::Closed => s.remote_endpoint().is_none() || ended_at.is_some_and(|at| now >= at + RESET_GRACE),
                State::TimeWait => acked && (released || s.recv_queue() == 0),
                _ => false,
            };
            if done {
                self.remove_tcp_socket(handle);
                if let Some(Some(conn)) = self.tcp.conns.get_mut(index) {
                    conn.socket = None;
                }
            }
        }
        if let Some(slot) = self.tcp.conns.get_mut(index) {
            if slot.as_ref().is_some_and(|c| c.released && c.socket.is_none()) {
                *slot = None;
            }
        }
    }

    /// Puts every listener's closed sockets (a handshake reset or timed out, a connection reset
    /// before it was accepted) back to listening, and fills pools short of their backlog.
    fn tcp_refill_listeners(&mut self) {
        for index in 0..self.tcp.listeners.len() {
            let Some(Some(l)) = self.tcp.listeners.get(index) else { continue };
            let (port, backlog, options) = (l.port, l.backlog, l.options);
            for &h in &l.pool {
                let socket = self.sockets.get_mut::<tcp::Socket>(h);
                if socket.state() == State::Closed && socket.remote_endpoint().is_none() {
                    let _ = socket.listen(port);
                }
            }
            let missing = backlog.saturating_sub(l.pool.len());
            for _ in 0..missing {
                let Some(fresh) = self.listening_socket(port, &options) else { break };
                if let Some(Some(l)) = self.tcp.listeners.get_mut(index) {
                    l.pool.push(fresh);
                }
            }
        }
    }
}
