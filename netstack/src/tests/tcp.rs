//! TCP between two stacks wired back to back through the test switch, on one clock.

use super::*;
use crate::{TcpError, TcpHandle, TcpListener, TcpOptions, TcpState};
use hypercall_abi::vnic::{GuestCounter as C, GuestCounterValues};
use smoltcp::socket::Socket;
use vnic_driver::testing::SwitchPass;

/// A stack on `mem` on the shared `clock`, its announcement taken off the wire.
fn stack_on<'a>(mem: &'a mut GuestMemory, config: NetConfig, clock: &FakePlatform) -> Stack<'a> {
    let mut net = NetStack::new(config, mem.vnic(CountingDoorbell::default()), clock.clone());
    assert_eq!(net.device.kernel_side().take_tx().len(), 1, "the announcement");
    net
}

/// A client (`a`) and a server (`b`) on one switch and one clock.
struct World<'a> {
    a: Stack<'a>,
    b: Stack<'a>,
    clock: FakePlatform,
    switched: SwitchPass,
}

impl<'a> World<'a> {
    fn new(mem_a: &'a mut GuestMemory, mem_b: &'a mut GuestMemory) -> Self {
        let clock = FakePlatform::new();
        let a = stack_on(mem_a, config(MAC_A, IP_A, GATEWAY), &clock);
        let b = stack_on(mem_b, config(MAC_B, IP_B, GATEWAY), &clock);
        World { a, b, clock, switched: SwitchPass::default() }
    }

    /// Both stacks poll, the switch moves their frames, and a millisecond passes.
    fn step(&mut self) {
        self.a.poll();
        self.b.poll();
        let pass = switch(&mut [(&MAC_A, self.a.device.kernel_side()), (&MAC_B, self.b.device.kernel_side())]);
        self.switched.sent += pass.sent;
        self.switched.delivered += pass.delivered;
        self.switched.dropped += pass.dropped;
        self.clock.advance(Duration::from_millis(1));
    }

    /// Steps until `done` holds (at most `limit` steps); whether it did.
    fn run_until(&mut self, limit: usize, mut done: impl FnMut(&mut Self) -> bool) -> bool {
        for _ in 0..limit {
            if done(self) {
                return true;
            }
            self.step();
        }
        done(self)
    }
}

/// The counters a stack last published (what the kernel reads).
fn published(net: &mut Stack<'_>) -> GuestCounterValues {
    net.device.kernel_side().shared().guest_counters.read()
}

fn get(values: &GuestCounterValues, counter: C) -> u64 {
    values[counter as usize]
}

/// The TCP sockets actually in the stack's set.
fn tcp_sockets_in_set(net: &Stack<'_>) -> u64 {
    net.sockets.iter().filter(|(_, socket)| matches!(socket, Socket::Tcp(_))).count() as u64
}

/// After a poll: every connection accepted or opened is closed, reset, timed out or open; the
/// socket gauge is the sockets really in the set; every frame taken is counted once.
fn assert_tcp_ledger(net: &mut Stack<'_>) -> GuestCounterValues {
    net.poll();
    let v = published(net);
    let g = |c| get(&v, c);
    assert_eq!(
        g(C::TcpAccepted) + g(C::TcpConnects),
        g(C::TcpClosed) + g(C::TcpReset) + g(C::TcpTimedOut) + g(C::TcpOpen),
        "{v:?}"
    );
    assert_eq!(g(C::TcpSockets), tcp_sockets_in_set(net), "{v:?}");
    assert_eq!(g(C::RxTaken), g(C::RxDatagrams) + g(C::RxTcpSegments) + g(C::RxOther) + g(C::DropsMalformed), "{v:?}");
    v
}

/// Byte `at` of stream `stream`: a position hash, so a lost, repeated or moved byte shows.
fn pattern(stream: u64, at: usize) -> u8 {
    (((at as u64) ^ stream << 40).wrapping_mul(0x9e37_79b9_7f4a_7c15) >> 56) as u8
}

fn small_buffers(bytes: usize) -> TcpOptions {
    TcpOptions { rx_buffer: bytes, tx_buffer: bytes, ..TcpOptions::default() }
}

/// The server accepts whatever is ready on `listener` into `conns`.
fn accept_all(net: &mut Stack<'_>, listener: TcpListener, conns: &mut Vec<TcpHandle>) {
    while let Some(conn) = net.tcp_accept(listener) {
        conns.push(conn);
    }
}

/// Echoes what `conn` received as far as its send buffer has room (the tcp-echo app's way);
/// true once the peer has finished and everything is queued.
fn echo(net: &mut Stack<'_>, conn: TcpHandle) -> Result<bool, TcpError> {
    let mut buf = [0u8; 2048];
    loop {
        let room = net.tcp_send_room(conn).min(buf.len());
        if room == 0 && !net.tcp_is_closed(conn) {
            return Ok(false);
        }
        match net.tcp_recv(conn, &mut buf[..room]) {
            Ok(0) => return Ok(false),
            Ok(n) => assert_eq!(net.tcp_send(conn, &buf[..n]), Ok(n), "the room it said it had"),
            Err(TcpError::Finished) => return Ok(true),
            Err(e) => return Err(e),
        }
    }
}

#[test]
fn connect_accept_and_echo_with_half_close() {
    let (mut mem_a, mut mem_b) = (GuestMemory::default(), GuestMemory::default());
    let mut w = World::new(&mut mem_a, &mut mem_b);
    let listener = w.b.tcp_listen(7, 2).unwrap();
    assert_eq!(w.b.tcp_listen(7, 2), Err(NetError::PortInUse));
    assert_eq!(w.b.tcp_listen(0, 2), Err(NetError::Unaddressable));
    let client = w.a.tcp_connect((IP_B, 7)).unwrap();
    assert_eq!(w.a.tcp_state(client), TcpState::SynSent);
    // Not yet established: nothing can be sent or read, and nothing is lost by trying.
    assert_eq!(w.a.tcp_send(client, b"early"), Ok(0));
    assert_eq!(w.a.tcp_recv(client, &mut [0; 8]), Ok(0));
    let mut conns = Vec::new();
    assert!(w.run_until(100, |w| {
        accept_all(&mut w.b, listener, &mut conns);
        !conns.is_empty() && w.a.tcp_may_send(client)
    }));
    let server = conns[0];
    assert_eq!(w.a.tcp_remote(client), Some((IP_B, 7)));
    let (peer_ip, peer_port) = w.b.tcp_remote(server).unwrap();
    assert_eq!(peer_ip, IP_A);
    assert!(peer_port >= 49152, "an ephemeral port: {peer_port}");
    // The client sends and half-closes; the server still answers after the client's FIN.
    assert_eq!(w.a.tcp_send(client, b"hello, "), Ok(7));
    assert_eq!(w.a.tcp_send(client, b"world"), Ok(5));
    w.a.tcp_shutdown(client).unwrap();
    assert_eq!(w.a.tcp_send(client, b"late"), Err(TcpError::SendClosed));
    let mut got = Vec::new();
    assert!(w.run_until(100, |w| {
        let mut buf = [0u8; 64];
        match w.b.tcp_recv(server, &mut buf) {
            Ok(n) => {
                got.extend_from_slice(&buf[..n]);
                false
            }
            Err(e) => {
                assert_eq!(e, TcpError::Finished);
                true
            }
        }
    }));
    assert_eq!(got, b"hello, world");
    assert!(!w.b.tcp_may_recv(server) && w.b.tcp_may_send(server), "half-closed: the server may still send");
    assert_eq!(w.b.tcp_send(server, b"bye"), Ok(3));
    w.b.tcp_close(server);
    assert_eq!(w.b.tcp_recv(server, &mut [0; 8]), Err(TcpError::InvalidHandle), "given back");
    let mut reply = Vec::new();
    let mut end = None;
    assert!(w.run_until(100, |w| {
        let mut buf = [0u8; 64];
        match w.a.tcp_recv(client, &mut buf) {
            Ok(n) => reply.extend_from_slice(&buf[..n]),
            Err(e) => end = Some(e),
        }
        end.is_some()
    }));
    assert_eq!((reply.as_slice(), end), (&b"bye"[..], Some(TcpError::Finished)));
    assert!(w.a.tcp_is_closed(client));
    w.a.tcp_close(client);
    w.run_until(10, |_| false);
    // Both ends counted one connection closed normally, and hold no connection socket.
    let (va, vb) = (assert_tcp_ledger(&mut w.a), assert_tcp_ledger(&mut w.b));
    assert_eq!((get(&va, C::TcpConnects), get(&va, C::TcpClosed), get(&va, C::TcpSockets)), (1, 1, 0), "{va:?}");
    assert_eq!((get(&vb, C::TcpAccepted), get(&vb, C::TcpClosed), get(&vb, C::TcpOpen)), (1, 1, 0));
    assert_eq!(get(&vb, C::TcpSockets), 2, "only the listener's pool of two");
    assert!(get(&vb, C::RxTcpSegments) > 0);
    assert_eq!(w.switched.dropped, 0);
}

#[test]
fn the_backlog_refuses_beyond_it_and_accept_refills_it() {
    let (mut mem_a, mut mem_b) = (GuestMemory::default(), GuestMemory::default());
    let mut w = World::new(&mut mem_a, &mut mem_b);
    let listener = w.b.tcp_listen(80, 2).unwrap();
    let clients: Vec<TcpHandle> = (0..3).map(|_| w.a.tcp_connect((IP_B, 80)).unwrap()).collect();
    w.run_until(50, |_| false);
    // Two handshakes took the pool's two sockets; the third request was refused and counted.
    let states: Vec<TcpState> = clients.iter().map(|&c| w.a.tcp_state(c)).collect();
    assert_eq!(states.iter().filter(|&&s| s == TcpState::Established).count(), 2, "{states:?}");
    let refused: Vec<&TcpHandle> = clients.iter().filter(|&&c| w.a.tcp_is_closed(c)).collect();
    assert_eq!(refused.len(), 1);
    assert_eq!(w.a.tcp_recv(*refused[0], &mut [0; 4]), Err(TcpError::Refused));
    assert_eq!(w.a.tcp_send(*refused[0], b"x"), Err(TcpError::Refused));
    assert_eq!(get(&published(&mut w.b), C::TcpRefused), 1);
    assert_eq!(get(&published(&mut w.a), C::TcpReset), 1, "a refused connect ends with a reset");
    // Accepting one puts a fresh listening socket in its place: the next request gets in.
    let first = w.b.tcp_accept(listener).unwrap();
    assert_eq!(get(&assert_tcp_ledger(&mut w.b), C::TcpSockets), 3, "a pool of two and the accepted one");
    let late = w.a.tcp_connect((IP_B, 80)).unwrap();
    let mut accepted = vec![first];
    assert!(w.run_until(50, |w| {
        accept_all(&mut w.b, listener, &mut accepted);
        accepted.len() == 3
    }));
    assert_eq!(accepted.len(), 3);
    assert_eq!(get(&published(&mut w.b), C::TcpRefused), 1);
    let vb = assert_tcp_ledger(&mut w.b);
    assert_eq!((get(&vb, C::TcpAccepted), get(&vb, C::TcpOpen), get(&vb, C::TcpSockets)), (3, 3, 5));
    // A connect to a port nobody listens on is refused too (not counted against a backlog).
    let nobody = w.a.tcp_connect((IP_B, 81)).unwrap();
    assert!(w.run_until(50, |w| w.a.tcp_is_closed(nobody)));
    assert_eq!(w.a.tcp_send(nobody, b"x"), Err(TcpError::Refused));
    assert_eq!(get(&published(&mut w.b), C::TcpRefused), 1);
    for c in clients.iter().chain([&late, &nobody]) {
        w.a.tcp_close(*c);
    }
    assert_eq!(get(&assert_tcp_ledger(&mut w.a), C::TcpConnects), 5);
}

#[test]
fn a_large_transfer_with_backpressure_is_byte_exact() {
    const TOTAL: usize = 1 << 20;
    let (mut mem_a, mut mem_b) = (GuestMemory::default(), GuestMemory::default());
    let mut w = World::new(&mut mem_a, &mut mem_b);
    // Small buffers on both sides: each is full again and again.
    let listener = w.b.tcp_listen_with(7, 1, small_buffers(4096)).unwrap();
    let client = w.a.tcp_connect_with((IP_B, 7), small_buffers(8192)).unwrap();
    let (mut server, mut served) = (None, false);
    let (mut sent, mut received, mut partial_writes, mut full_buffer_seen) = (0usize, 0usize, 0, false);
    let mut chunk = vec![0u8; 3000];
    let mut buf = vec![0u8; 1500];
    let mut finished = false;
    for _ in 0..100_000 {
        if server.is_none() && !served {
            server = w.b.tcp_accept(listener);
        }
        if let Some(conn) = server {
            if echo(&mut w.b, conn).unwrap() {
                // The client's FIN: the rest of the echo goes out, then ours.
                w.b.tcp_close(conn);
                server = None;
                served = true;
            }
        }
        while sent < TOTAL {
            let len = chunk.len().min(TOTAL - sent);
            for (i, byte) in chunk[..len].iter_mut().enumerate() {
                *byte = pattern(1, sent + i);
            }
            let n = w.a.tcp_send(client, &chunk[..len]).unwrap();
            if n < len {
                partial_writes += 1;
                full_buffer_seen |= n == 0 && w.a.tcp_state(client) == TcpState::Established;
            }
            sent += n;
            if n < len {
                break;
            }
        }
        if sent == TOTAL && w.a.tcp_may_send(client) {
            w.a.tcp_shutdown(client).unwrap();
        }
        loop {
            match w.a.tcp_recv(client, &mut buf) {
                Ok(0) => break,
                Ok(n) => {
                    for (i, &byte) in buf[..n].iter().enumerate() {
                        assert_eq!(byte, pattern(1, received + i), "echoed byte {}", received + i);
                    }
                    received += n;
                }
                Err(e) => {
                    assert_eq!(e, TcpError::Finished);
                    finished = true;
                    break;
                }
            }
        }
        if finished {
            break;
        }
        w.step();
    }
    assert!(finished, "sent {sent}, received {received}");
    assert_eq!(received, TOTAL);
    assert!(partial_writes > 10 && full_buffer_seen, "the sender met a full buffer ({partial_writes} partial writes)");
    w.a.tcp_close(client);
    w.run_until(20, |_| false);
    let (va, vb) = (assert_tcp_ledger(&mut w.a), assert_tcp_ledger(&mut w.b));
    assert_eq!((get(&va, C::TcpClosed), get(&vb, C::TcpClosed)), (1, 1));
    assert_eq!((get(&va, C::TcpSockets), get(&vb, C::TcpSockets)), (0, 1));
    assert_eq!((va[C::TxDropsRingFull as usize], vb[C::TxDropsRingFull as usize]), (0, 0));
}

#[test]
fn send_all_by_waits_for_room_and_gives_up_at_its_deadline() {
    let (mut mem_a, mut mem_b) = (GuestMemory::default(), GuestMemory::default());
    let mut w = World::new(&mut mem_a, &mut mem_b);
    let listener = w.b.tcp_listen_with(7, 1, small_buffers(4096)).unwrap();
    let client = w.a.tcp_connect_with((IP_B, 7), small_buffers(4096)).unwrap();
    let mut server = None;
    assert!(w.run_until(50, |w| {
        server = server.or_else(|| w.b.tcp_accept(listener));
        server.is_some() && w.a.tcp_may_send(client)
    }));
    // The server does not read: 4 KiB in its window and 4 KiB in our buffer, then nothing
    // moves; the sender waits (idling, not spinning) until its deadline and says how far it got.
    let data = vec![7u8; 20_000];
    let deadline = w.a.now() + Duration::from_millis(300);
    let queued = w.a.tcp_send_all_by(client, &data, deadline).unwrap();
    assert!(queued > 0 && queued < data.len(), "{queued}");
    assert!(w.a.now() >= deadline);
    // Nothing was dropped: what was queued arrives whole once the server reads.
    let server = server.unwrap();
    let mut got = 0;
    assert!(w.run_until(2000, |w| {
        let mut buf = [0u8; 1024];
        while let Ok(n @ 1..) = w.b.tcp_recv(server, &mut buf) {
            assert!(buf[..n].iter().all(|&b| b == 7));
            got += n;
        }
        got == queued
    }));
    assert_eq!(w.b.tcp_recv_queue(server), 0);
}

#[test]
fn abort_resets_the_peer_and_both_free_their_sockets() {
    let (mut mem_a, mut mem_b) = (GuestMemory::default(), GuestMemory::default());
    let mut w = World::new(&mut mem_a, &mut mem_b);
    let listener = w.b.tcp_listen(7, 1).unwrap();
    let client = w.a.tcp_connect((IP_B, 7)).unwrap();
    let mut server = None;
    assert!(w.run_until(50, |w| {
        server = server.or_else(|| w.b.tcp_accept(listener));
        server.is_some() && w.a.tcp_may_send(client)
    }));
    let server = server.unwrap();
    w.a.tcp_send(client, &[1; 1000]).unwrap();
    w.a.tcp_abort(client);
    assert_eq!(w.a.tcp_send(client, b"x"), Err(TcpError::InvalidHandle));
    assert!(w.run_until(50, |w| w.b.tcp_is_closed(server)));
    assert_eq!(w.b.tcp_recv(server, &mut [0; 8]), Err(TcpError::Reset));
    assert_eq!(w.b.tcp_send(server, b"x"), Err(TcpError::Reset));
    assert_eq!(w.b.tcp_shutdown(server), Err(TcpError::Reset));
    let (va, vb) = (assert_tcp_ledger(&mut w.a), assert_tcp_ledger(&mut w.b));
    assert_eq!((get(&va, C::TcpReset), get(&va, C::TcpSockets)), (1, 0), "aborted, freed");
    assert_eq!((get(&vb, C::TcpReset), get(&vb, C::TcpOpen)), (1, 0), "reset by the peer");
    assert_eq!(get(&vb, C::TcpSockets), 1, "the record stays until given back, the socket does not");
    w.b.tcp_close(server);
    assert_eq!(w.b.tcp_recv(server, &mut [0; 8]), Err(TcpError::InvalidHandle));
    assert_tcp_ledger(&mut w.b);
}

#[test]
fn a_silent_peer_is_timed_out_and_its_socket_freed() {
    let (mut mem_a, mut mem_b) = (GuestMemory::default(), GuestMemory::default());
    let mut w = World::new(&mut mem_a, &mut mem_b);
    let options = TcpOptions { idle_timeout: Some(Duration::from_secs(3)), ..TcpOptions::default() };
    let listener = w.b.tcp_listen_with(7, 1, options).unwrap();
    let client = w.a.tcp_connect((IP_B, 7)).unwrap();
    let mut server = None;
    assert!(w.run_until(50, |w| {
        server = server.or_else(|| w.b.tcp_accept(listener));
        server.is_some() && w.a.tcp_may_send(client)
    }));
    let server = server.unwrap();
    // The client's guest dies: nothing more comes from it, what the server sends is lost.
    let start = w.b.now();
    let mut timed_out_at = None;
    for _ in 0..100 {
        w.b.poll();
        w.b.device.kernel_side().take_tx();
        if w.b.tcp_is_closed(server) {
            timed_out_at = Some(w.b.now());
            break;
        }
        w.b.wait_until(w.b.now() + Duration::from_millis(500));
    }
    let after = timed_out_at.expect("timed out") - start;
    // Three seconds after the last segment from the client (just before `start`).
    assert!(after > Duration::from_millis(2900) && after < Duration::from_secs(4), "{after}");
    assert_eq!(w.b.tcp_recv(server, &mut [0; 8]), Err(TcpError::TimedOut));
    let vb = assert_tcp_ledger(&mut w.b);
    assert_eq!((get(&vb, C::TcpTimedOut), get(&vb, C::TcpOpen), get(&vb, C::TcpSockets)), (1, 0, 1));
    w.b.tcp_close(server);
}

#[test]
fn keep_alive_keeps_a_quiet_living_peer_and_without_it_the_idle_timeout_ends_it() {
    for keep_alive in [Some(Duration::from_secs(1)), None] {
        let (mut mem_a, mut mem_b) = (GuestMemory::default(), GuestMemory::default());
        let mut w = World::new(&mut mem_a, &mut mem_b);
        let options = TcpOptions { idle_timeout: Some(Duration::from_secs(3)), keep_alive, ..TcpOptions::default() };
        let listener = w.b.tcp_listen_with(7, 1, options).unwrap();
        // The client has no timeout of its own: only the server decides.
        let client = w.a.tcp_connect_with((IP_B, 7), TcpOptions { idle_timeout: None, ..options }).unwrap();
        let mut server = None;
        assert!(w.run_until(50, |w| {
            server = server.or_else(|| w.b.tcp_accept(listener));
            server.is_some() && w.a.tcp_may_send(client)
        }));
        let server = server.unwrap();
        // Ten seconds in which neither app sends a byte; both stacks run.
        for _ in 0..100 {
            w.step();
            w.clock.advance(Duration::from_millis(99));
        }
        match keep_alive {
            Some(_) => assert_eq!(w.b.tcp_state(server), TcpState::Established, "probes answered"),
            None => {
                assert_eq!(w.b.tcp_recv(server, &mut [0; 4]), Err(TcpError::TimedOut));
                assert_eq!(w.a.tcp_recv(client, &mut [0; 4]), Err(TcpError::Reset), "told by the server's reset");
            }
        }
        assert_tcp_ledger(&mut w.b);
    }
}

#[test]
fn no_socket_leaks_after_many_connections() {
    const ROUNDS: usize = 25;
    const AT_ONCE: usize = 8;
    let (mut mem_a, mut mem_b) = (GuestMemory::default(), GuestMemory::default());
    let mut w = World::new(&mut mem_a, &mut mem_b);
    let listener = w.b.tcp_listen_with(7, AT_ONCE, small_buffers(2048)).unwrap();
    let mut server_conns: Vec<TcpHandle> = Vec::new();
    let mut ok = 0;
    for round in 0..ROUNDS {
        // Most connections end normally; every fifth is aborted by the client half way.
        let clients: Vec<(usize, TcpHandle)> = (0..AT_ONCE)
            .map(|i| (round * AT_ONCE + i, w.a.tcp_connect_with((IP_B, 7), small_buffers(2048)).unwrap()))
            .collect();
        let mut pending: Vec<(usize, TcpHandle, usize)> = clients.iter().map(|&(id, h)| (id, h, 0)).collect();
        let done = w.run_until(2000, |w| {
            accept_all(&mut w.b, listener, &mut server_conns);
            server_conns.retain(|&conn| match echo(&mut w.b, conn) {
                Ok(false) => true,
                Ok(true) | Err(_) => {
                    w.b.tcp_close(conn);
                    false
                }
            });
            pending.retain_mut(|(id, h, received)| {
                let message: Vec<u8> = (0..700).map(|i| pattern(*id as u64, i)).collect();
                if w.a.tcp_may_send(*h) && w.a.tcp_send_queue(*h) == 0 && *received == 0 {
                    if *id % 5 == 4 {
                        w.a.tcp_abort(*h);
                        return false;
                    }
                    assert_eq!(w.a.tcp_send(*h, &message), Ok(700));
                    w.a.tcp_shutdown(*h).unwrap();
                }
                let mut buf = [0u8; 1024];
                loop {
                    match w.a.tcp_recv(*h, &mut buf) {
                        Ok(0) => return true,
                        Ok(n) => {
                            assert_eq!(&buf[..n], &message[*received..*received + n]);
                            *received += n;
                        }
                        Err(e) => {
                            assert_eq!((e, *received), (TcpError::Finished, 700), "connection {id}");
                            w.a.tcp_close(*h);
                            ok += 1;
                            return false;
                        }
                    }
                }
            });
            pending.is_empty() && server_conns.is_empty()
        });
        let states: Vec<TcpState> = server_conns.iter().map(|&c| w.b.tcp_state(c)).collect();
        assert!(done, "round {round}: {} clients left, server connections {states:?}", pending.len());
    }
    w.run_until(20, |_| false);
    let total = (ROUNDS * AT_ONCE) as u64;
    let aborted = total / 5;
    assert_eq!(ok, total - aborted);
    let (va, vb) = (assert_tcp_ledger(&mut w.a), assert_tcp_ledger(&mut w.b));
    assert_eq!(
        (get(&va, C::TcpConnects), get(&va, C::TcpClosed), get(&va, C::TcpReset)),
        (total, total - aborted, aborted)
    );
    assert_eq!(
        (get(&vb, C::TcpAccepted), get(&vb, C::TcpClosed), get(&vb, C::TcpReset)),
        (total, total - aborted, aborted)
    );
    assert_eq!((get(&va, C::TcpOpen), get(&va, C::TcpSockets)), (0, 0));
    assert_eq!((get(&vb, C::TcpOpen), get(&vb, C::TcpSockets)), (0, AT_ONCE as u64), "only the pool");
    assert_eq!(get(&vb, C::TcpRefused), 0);
    let (records, places) = w.a.tcp.records();
    assert_eq!((records, w.b.tcp.records().0), (0, 0), "every record given back");
    assert!(places <= AT_ONCE, "places for records are reused: {places}");
}

#[test]
fn a_handle_given_back_never_names_a_newer_connection() {
    let (mut mem_a, mut mem_b) = (GuestMemory::default(), GuestMemory::default());
    let mut w = World::new(&mut mem_a, &mut mem_b);
    let _listener = w.b.tcp_listen(7, 2).unwrap();
    let old = w.a.tcp_connect((IP_B, 7)).unwrap();
    w.a.tcp_abort(old);
    let new = w.a.tcp_connect((IP_B, 7)).unwrap();
    assert_ne!(old, new);
    assert_eq!(w.a.tcp_send(old, b"x"), Err(TcpError::InvalidHandle));
    assert_eq!(w.a.tcp_recv(old, &mut [0; 1]), Err(TcpError::InvalidHandle));
    assert!(w.a.tcp_is_closed(old) && !w.a.tcp_is_closed(new));
    w.a.tcp_close(old);
    assert_eq!(w.a.tcp_state(new), TcpState::SynSent);
    assert_eq!(w.a.tcp_connect((Ipv4Address::UNSPECIFIED, 7)), Err(NetError::Unaddressable));
    assert_eq!(w.a.tcp_connect((IP_B, 0)), Err(NetError::Unaddressable));
}

/// The switch loses bursts of the server's frames (as the kernel drops frames for a guest
/// whose ring is full): the lost segments are sent again, the echo stays byte-exact, and while
/// nothing moves each stack has a deadline to wake at (no deadlock).
#[test]
fn lost_segments_are_sent_again_and_the_stream_stays_exact() {
    const TOTAL: usize = 256 * 1024;
    let (mut mem_a, mut mem_b) = (GuestMemory::default(), GuestMemory::default());
    let mut w = World::new(&mut mem_a, &mut mem_b);
    let listener = w.b.tcp_listen(7, 1).unwrap();
    let client = w.a.tcp_connect((IP_B, 7)).unwrap();
    let mut server = None;
    let (mut sent, mut received, mut lost) = (0usize, 0usize, 0);
    let mut chunk = vec![0u8; 4096];
    let mut buf = vec![0u8; 4096];
    let mut frames_from_b = 0u64;
    for _ in 0..100_000 {
        server = server.or_else(|| w.b.tcp_accept(listener));
        if let Some(conn) = server {
            echo(&mut w.b, conn).unwrap();
        }
        while sent < TOTAL {
            let len = chunk.len().min(TOTAL - sent);
            for (i, byte) in chunk[..len].iter_mut().enumerate() {
                *byte = pattern(2, sent + i);
            }
            let n = w.a.tcp_send(client, &chunk[..len]).unwrap();
            sent += n;
            if n < len {
                break;
            }
        }
        while let Ok(n @ 1..) = w.a.tcp_recv(client, &mut buf) {
            for (i, &byte) in buf[..n].iter().enumerate() {
                assert_eq!(byte, pattern(2, received + i), "echoed byte {}", received + i);
            }
            received += n;
        }
        if received == TOTAL {
            break;
        }
        w.a.poll();
        w.b.poll();
        let from_a = w.a.device.kernel_side().take_tx();
        let from_b = w.b.device.kernel_side().take_tx();
        let moved = from_a.len() + from_b.len();
        for frame in from_a {
            w.b.device.kernel_side().deliver(&frame);
        }
        for frame in from_b {
            frames_from_b += 1;
            // Three bursts of 15 lost in a row, as from a full ring (retransmissions pass).
            if [40u64, 90, 140].into_iter().any(|start| (start..start + 15).contains(&frames_from_b)) {
                lost += 1;
                continue;
            }
            w.a.device.kernel_side().deliver(&frame);
        }
        if moved == 0 {
            // Both would idle: to the earlier of their deadlines.
            let now = w.a.now();
            let delays = [w.a.iface.poll_delay(now, &w.a.sockets), w.b.iface.poll_delay(now, &w.b.sockets)];
            let next = delays.into_iter().flatten().min().expect("a deadline to wake at: the retransmission");
            w.clock.advance(next.max(Duration::from_millis(1)));
        }
    }
    assert_eq!(received, TOTAL);
    assert_eq!(lost, 45);
}

/// A peer repeats its SYN while a socket of the pool already holds its handshake, and a
/// listening socket sits earlier in the stack's socket order (a fresh one in the place a freed
/// connection left). The repeat must not start a second handshake for the same peer and port
/// (the peer would reset both): it is left out, and the one handshake completes.
#[test]
fn a_repeated_syn_does_not_start_a_second_handshake() {
    let (mut mem_a, mut mem_b) = (GuestMemory::default(), GuestMemory::default());
    let mut w = World::new(&mut mem_a, &mut mem_b);
    let listener = w.b.tcp_listen(7, 2).unwrap();
    let connect = |w: &mut World<'_>| {
        let client = w.a.tcp_connect((IP_B, 7)).unwrap();
        let mut server = None;
        assert!(w.run_until(50, |w| {
            server = server.or_else(|| w.b.tcp_accept(listener));
            server.is_some() && w.a.tcp_may_send(client)
        }));
        (client, server.unwrap())
    };
    // c1 takes the first socket (the first place of the set), and is accepted.
    let (c1, s1) = connect(&mut w);
    // c3's SYN reaches the server, which answers from its second socket; the SYN-ACK is lost.
    let c3 = w.a.tcp_connect((IP_B, 7)).unwrap();
    w.a.poll();
    let syn = w.a.device.kernel_side().take_tx();
    assert_eq!(syn.len(), 1, "the SYN");
    assert!(w.b.device.kernel_side().deliver(&syn[0]));
    w.b.poll();
    assert_eq!(w.b.device.kernel_side().take_tx().len(), 1, "the SYN-ACK, lost");
    // c1 ends and its place is freed; c5 is accepted and a fresh listening socket takes that
    // first place.
    w.a.tcp_close(c1);
    w.b.tcp_close(s1);
    w.run_until(20, |_| false);
    let (_c5, _s5) = connect(&mut w);
    w.a.poll();
    w.a.device.kernel_side().take_tx();
    let handshakes = |w: &mut World<'_>| {
        w.b.sockets.iter().filter(|(_, s)| matches!(s, Socket::Tcp(t) if t.state() == TcpState::SynReceived)).count()
    };
    assert_eq!(handshakes(&mut w), 1);
    // The client repeats its SYN.
    assert!(w.b.device.kernel_side().deliver(&syn[0]));
    w.b.poll();
    assert_eq!(handshakes(&mut w), 1, "no second handshake for the same peer");
    assert!(w.b.device.kernel_side().take_tx().is_empty(), "nothing answered for it");
    // The held handshake completes when its SYN-ACK goes again.
    let mut s3 = None;
    assert!(w.run_until(5000, |w| {
        s3 = s3.or_else(|| w.b.tcp_accept(listener));
        s3.is_some() && w.a.tcp_may_send(c3)
    }));
    assert_eq!(w.a.tcp_send(c3, b"after"), Ok(5));
    assert!(w.run_until(50, |w| w.b.tcp_recv_queue(s3.unwrap()) == 5));
    let vb = assert_tcp_ledger(&mut w.b);
    assert_eq!((get(&vb, C::TcpAccepted), get(&vb, C::TcpRefused), get(&vb, C::TcpReset)), (3, 0, 0));
}

#[test]
fn send_with_fills_the_send_buffer_in_place() {
    let (mut mem_a, mut mem_b) = (GuestMemory::default(), GuestMemory::default());
    let mut w = World::new(&mut mem_a, &mut mem_b);
    let listener = w.b.tcp_listen_with(80, 1, small_buffers(4096)).unwrap();
    let client = w.a.tcp_connect_with((IP_B, 80), small_buffers(4096)).unwrap();
    let mut called = false;
    assert_eq!(
        w.a.tcp_send_with(client, |_| {
            called = true;
            0
        }),
        Ok(0),
        "not yet established"
    );
    assert!(!called, "nothing to fill before the handshake");
    let mut conns = Vec::new();
    assert!(w.run_until(100, |w| {
        accept_all(&mut w.b, listener, &mut conns);
        !conns.is_empty()
    }));
    let server = conns[0];
    // The server streams 100 KB through its 4 KiB send buffer, generating each byte in place.
    const TOTAL: usize = 100_000;
    let (mut generated, mut received) = (0usize, Vec::new());
    assert!(w.run_until(20_000, |w| {
        while generated < TOTAL {
            let wrote = w.b.tcp_send_with(server, |room| {
                let n = room.len().min(TOTAL - generated);
                for (i, b) in room[..n].iter_mut().enumerate() {
                    *b = pattern(7, generated + i);
                }
                n
            });
            match wrote {
                Ok(0) => break,
                Ok(n) => generated += n,
                Err(e) => panic!("{e:?}"),
            }
        }
        let mut buf = [0u8; 1024];
        while let Ok(n @ 1..) = w.a.tcp_recv(client, &mut buf) {
            received.extend_from_slice(&buf[..n]);
        }
        received.len() == TOTAL
    }));
    assert!(received.iter().enumerate().all(|(i, &b)| b == pattern(7, i)), "every byte as generated, in order");
    // A fill that claims more than its room queues only the room.
    w.run_until(100, |_| false);
    let mut given = 0;
    let queued = w.b.tcp_send_with(server, |room| {
        given = room.len();
        room.len() + 10
    });
    assert!(given > 0 && queued == Ok(given), "{queued:?} for {given} bytes of room");
    w.b.tcp_shutdown(server).unwrap();
    assert_eq!(w.b.tcp_send_with(server, |room| room.len()), Err(TcpError::SendClosed));
}
