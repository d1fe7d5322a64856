//! TCP in the guests: echo over QEMU's user network from host clients (random sizes up to 4 MiB,
//! then 64 connections at once to one guest, every byte compared), and guest to guest through
//! the vswitch under both transmit paths. After each run, the guests' own counters must show
//! every connection ended and freed: numbers compared, not words found.

use super::*;
use crate::ledger::{self, Counters};
use hypercall_abi::vnic::GuestCounter;
use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpStream};

/// The tcp-echo port.
const ECHO_PORT: u16 = 7;
/// Connections at once to one guest, and the bytes each sends: a whole window (the image's
/// `tcp_rx_kib`), so that all of them are in flight together. (The time this takes under TCG
/// is mostly retransmission timeouts: 64 connections' segments arrive faster than a guest's
/// 32-frame receive ring holds them, and the kernel drops the rest.)
const CONCURRENT: usize = 64;
const CONCURRENT_BYTES: usize = 32 * 1024;
/// The largest transfer of the random-size connections.
const MAX_BYTES: usize = 4 << 20;
/// How long one connection may take: TCG is slow, and a lost segment costs a retransmission
/// timeout.
const CONNECTION_TIMEOUT: Duration = Duration::from_secs(60);
/// How long the guests get to finish closing after the last host connection ended, before the
/// counters are read.
const SETTLE: Duration = Duration::from_millis(1500);

/// Byte `at` of stream `stream`: a position hash, so a lost, repeated or moved byte shows.
fn pattern(stream: u64, at: usize) -> u8 {
    (((at as u64) ^ stream << 40).wrapping_mul(0x9e37_79b9_7f4a_7c15) >> 56) as u8
}

/// Connects to the echo at `peer` and has the first byte of stream `stream` echoed: the
/// connection is then through to the guest. Connections are opened one by one this way because
/// QEMU's user network takes many connects to a forwarded port at the same instant badly: 64 of
/// them took 22 s (SYNs retried by the host's TCP) and one of them was reset, where opened one
/// by one they take 0.1 s.
fn open_stream(peer: SocketAddr, stream: u64) -> Result<TcpStream, String> {
    let mut conn = TcpStream::connect_timeout(&peer, Duration::from_secs(10))
        .map_err(|e| format!("stream {stream}: connecting to {peer}: {e}"))?;
    conn.set_read_timeout(Some(CONNECTION_TIMEOUT)).map_err(|e| e.to_string())?;
    conn.set_write_timeout(Some(CONNECTION_TIMEOUT)).map_err(|e| e.to_string())?;
    let first = pattern(stream, 0);
    conn.write_all(&[first]).map_err(|e| format!("stream {stream}: sending its first byte: {e}"))?;
    let mut echoed = [0u8];
    conn.read_exact(&mut echoed).map_err(|e| format!("stream {stream}: its first byte not echoed: {e}"))?;
    if echoed[0] != first {
        return Err(format!("stream {stream}: first byte echoed as {:#x}, not {first:#x}", echoed[0]));
    }
    Ok(conn)
}

/// Sends the rest of the `len` bytes of stream `stream` on `conn` (whose first byte came back
/// already) while reading the echo back, half-closes, and expects exactly those bytes and then
/// the server's close.
fn echo_stream(conn: TcpStream, stream: u64, len: usize) -> Result<(), String> {
    let mut writer = conn.try_clone().map_err(|e| e.to_string())?;
    let sender = std::thread::spawn(move || -> std::io::Result<()> {
        let mut chunk = vec![0u8; 64 * 1024];
        let mut sent = 1;
        while sent < len {
            let n = chunk.len().min(len - sent);
            for (i, byte) in chunk[..n].iter_mut().enumerate() {
                *byte = pattern(stream, sent + i);
            }
            writer.write_all(&chunk[..n])?;
            sent += n;
        }
        writer.shutdown(Shutdown::Write)
    });
    let mut reader = conn;
    let mut buf = vec![0u8; 64 * 1024];
    let mut received = 1;
    let outcome = loop {
        match reader.read(&mut buf) {
            Ok(0) => break Ok(()),
            Ok(n) => {
                if let Some(i) = (0..n).find(|&i| buf[i] != pattern(stream, received + i)) {
                    break Err(format!("stream {stream}: byte {} echoed wrong", received + i));
                }
                received += n;
                if received > len {
                    break Err(format!("stream {stream}: {received} bytes echoed for {len} sent"));
                }
            }
            Err(e) => break Err(format!("stream {stream}: reading after {received} of {len} bytes: {e}")),
        }
    };
    let sent = sender.join().map_err(|_| format!("stream {stream}: the sender panicked"))?;
    outcome?;
    sent.map_err(|e| format!("stream {stream}: sending: {e}"))?;
    if received != len {
        return Err(format!("stream {stream}: the server closed after {received} of {len} bytes"));
    }
    Ok(())
}

/// Opens every `(peer, stream, len)` (one by one, see [`open_stream`]), then echoes all of them
/// at once; the first error, if any.
fn echo_streams(streams: &[(SocketAddr, u64, usize)]) -> Result<(), String> {
    let mut open = Vec::new();
    for &(peer, stream, len) in streams {
        open.push((open_stream(peer, stream)?, stream, len));
    }
    let workers: Vec<_> = open
        .into_iter()
        .map(|(conn, stream, len)| std::thread::spawn(move || echo_stream(conn, stream, len)))
        .collect();
    let results: Vec<_> = workers.into_iter().map(|w| w.join().unwrap_or(Err("a client panicked".into()))).collect();
    results.into_iter().collect()
}

fn tcp_counter(c: &Counters, counter: GuestCounter) -> u64 {
    c.get(counter.name()).copied().unwrap_or(0)
}

/// One guest's TCP counters: it accepted `accepted` connections (if given), every one of them
/// ended normally and was freed, none was refused or reset or timed out, and only its listener's
/// `backlog` sockets are left.
fn check_echo_counters(
    outcome: &Outcome,
    name: &str,
    c: &Counters,
    accepted: Option<u64>,
    backlog: u64,
) -> std::result::Result<(), Failure> {
    use GuestCounter::*;
    let get = |counter| tcp_counter(c, counter);
    let got = [get(TcpAccepted), get(TcpClosed), get(TcpReset), get(TcpTimedOut), get(TcpRefused), get(TcpOpen)];
    let want_accepted = accepted.unwrap_or(get(TcpAccepted));
    check(outcome, want_accepted > 0 && got == [want_accepted, want_accepted, 0, 0, 0, 0], || {
        format!(
            "{name}: accepted, closed, reset, timed out, refused, open = {got:?}; \
             {want_accepted} accepted and closed and nothing else wanted"
        )
    })?;
    check(outcome, get(TcpSockets) == backlog && get(RxTcpSegments) > 0, || {
        format!("{name}: {} TCP sockets left, only the listener's {backlog} wanted: {c:?}", get(TcpSockets))
    })?;
    ledger::check_guest(c).map_err(|e| failure(format!("{name}: {e}"), outcome.log.clone()))
}

/// The `backlog=N` of an echo guest's arguments: the sockets its listener keeps.
fn backlog_of(outcome: &Outcome, guest: &crate::manifest::Guest) -> std::result::Result<u64, Failure> {
    let backlog = guest.args.split_whitespace().find_map(|w| w.strip_prefix("backlog=")?.parse().ok());
    backlog.ok_or_else(|| failure(format!("{}: the image gives it no backlog=N", guest.name), outcome.log.clone()))
}

/// Echo over the user network: host TCP 127.0.0.1:(base+i) reaches guest i's port 7. Every
/// guest echoes a few connections of random sizes (one of exactly 4 MiB), all at once; then one
/// guest takes 64 connections at once. The guests' counters then show exactly those
/// connections accepted, closed and freed.
pub(super) fn tcp_echo_user_network(ctx: &Ctx, tx: TxMode) -> TestResult {
    let image = pack::pack_image("tcp-echo", &ctx.artifacts, NetPlan::USER)
        .map_err(|e| failure(format!("{e:#}"), String::new()))?;
    let echo: Vec<_> = image.guests.iter().filter(|g| g.app == "tcp-echo" && g.net.is_some()).collect();
    let base = host_port_base();
    let tcp_forwards = echo.iter().enumerate().filter_map(|(i, g)| Some((base + i as u16, g.net?.ipv4, ECHO_PORT)));
    let net = NetBackend::User { forwards: Vec::new(), tcp_forwards: tcp_forwards.collect() };
    let append = format!("log=info shutdown_after=300 tx={} {}=per-guest", tx.name(), keys::STATS);
    let config = QemuConfig { net: Some(net), ..QemuConfig::for_image(&image, Accel::Tcg, append) };
    let mut session = Session::start(config.command(), Duration::from_secs(240), false)
        .map_err(|e| failure(format!("{e:#}"), String::new()))?;
    let listening =
        session.wait_for(Duration::from_secs(30), |log| log.matches("tcp-echo listening on").count() >= echo.len());
    if !listening {
        return Err(failure(format!("{} tcp-echo guests did not all start listening", echo.len()), session.log()));
    }
    let peer = |i: usize| SocketAddr::from(([127, 0, 0, 1], base + i as u16));
    // Random sizes, from a seed printed for a rerun; the first stream is the largest.
    let seed =
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(1, |d| d.as_nanos() as u64) | 1;
    println!("tcp echo sizes from seed {seed:#x}");
    let mut state = seed;
    let mut random = move |below: usize| {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        (state % below as u64) as usize
    };
    let mut streams: Vec<(SocketAddr, u64, usize)> = Vec::new();
    let mut accepted = vec![0u64; echo.len()];
    for (i, count) in accepted.iter_mut().enumerate() {
        for j in 0..2 {
            let len = if i == 0 && j == 0 { MAX_BYTES } else { random(MAX_BYTES / 4) + 1 };
            streams.push((peer(i), streams.len() as u64, len));
            *count += 1;
        }
    }
    let started = Instant::now();
    echo_streams(&streams).map_err(|e| failure(format!("random sizes: {e}"), session.log()))?;
    let bytes: usize = streams.iter().map(|s| s.2).sum();
    println!(
        "tcp echo: {} connections, {bytes} bytes each way in {:.1} s",
        streams.len(),
        started.elapsed().as_secs_f64()
    );
    let busy = echo.len() - 1;
    let many: Vec<_> = (0..CONCURRENT).map(|k| (peer(busy), 1000 + k as u64, CONCURRENT_BYTES)).collect();
    let started = Instant::now();
    echo_streams(&many).map_err(|e| failure(format!("{CONCURRENT} at once: {e}"), session.log()))?;
    println!("tcp echo: {CONCURRENT} connections at once in {:.1} s", started.elapsed().as_secs_f64());
    accepted[busy] += CONCURRENT as u64;
    std::thread::sleep(SETTLE);
    session.request_quit();
    let outcome = session.finish().map_err(|e| failure(format!("{e:#}"), String::new()))?;
    check_guest_expectations(&image, &outcome)?;
    let per_guest = ledger::last_guest_stats(&outcome.log);
    for (guest, &want) in echo.iter().zip(&accepted) {
        let counters = per_guest
            .get(&guest.name)
            .ok_or_else(|| failure(format!("no counters of {}", guest.name), outcome.log.clone()))?;
        check_echo_counters(&outcome, &guest.name, counters, Some(want), backlog_of(&outcome, guest)?)?;
    }
    let stats = final_stats(&outcome)?;
    check_tx_path(&outcome, tx, &stats, Traffic::NicOnly)?;
    Ok(Verdict::Pass)
}

/// What a tcp-client guest printed: `(intact, connections, corrupted, failed, sockets freed)`.
fn tcp_client_result(line: &str) -> Option<(u64, u64, u64, u64, bool)> {
    let rest = line.split("tcp-client: ").nth(1)?;
    let (intact, rest) = rest.split_once('/')?;
    let (connections, rest) = rest.split_once(' ')?;
    let number_before = |word: &str| -> Option<u64> {
        let at = rest.find(word)?;
        rest[..at].split_whitespace().last()?.parse().ok()
    };
    let freed = rest.split("sockets freed: ").nth(1)?.trim();
    Some((
        intact.parse().ok()?,
        connections.parse().ok()?,
        number_before(" corrupted")?,
        number_before(" failed")?,
        freed == "true",
    ))
}

/// Guest to guest through the vswitch: every tcp-client guest reports all its connections echoed
/// intact and its sockets freed (numbers compared with what its arguments asked for); every echo
/// guest's counters show as many connections accepted and closed, and only its pool left.
pub(super) fn tcp_guest_to_guest(ctx: &Ctx, tx: TxMode) -> TestResult {
    let image = pack::pack_image("tcp-g2g", &ctx.artifacts, NetPlan::USER)
        .map_err(|e| failure(format!("{e:#}"), String::new()))?;
    let append = format!("log=info shutdown_after=120 tx={} {}=per-guest", tx.name(), keys::STATS);
    let outcome = boot(&image, Accel::Tcg, &append, Duration::from_secs(150))?;
    check_guest_expectations(&image, &outcome)?;
    check(&outcome, outcome.log.contains("every guest expected to end has ended"), || {
        "the run did not end with the clients".into()
    })?;
    let clients: Vec<_> = image.guests.iter().filter(|g| g.app == "tcp-client").collect();
    let mut per_echo: BTreeMap<String, u64> = BTreeMap::new();
    for client in &clients {
        let arg = |key: &str, default: u64| {
            client
                .args
                .split_whitespace()
                .find_map(|w| w.strip_prefix(key)?.strip_prefix('=')?.parse().ok())
                .unwrap_or(default)
        };
        let want = arg("conns", 1) * arg("rounds", 1);
        let line = outcome.log.lines().find(|l| l.contains(&format!(" {}: tcp-client: ", client.name)));
        let result = line.and_then(tcp_client_result);
        check(&outcome, result == Some((want, want, 0, 0, true)), || {
            format!(
                "{}: result {result:?} (intact, connections, corrupted, failed, freed); {want} intact wanted",
                client.name
            )
        })?;
        // peer={ip:tcp-echo-N}:7 was expanded: find the echo guest by its address.
        let peer_ip =
            client.args.split_whitespace().find_map(|w| w.strip_prefix("peer=")?.split(':').next()).unwrap_or("");
        let echo = image.guests.iter().find(|g| g.net.is_some_and(|n| crate::manifest::format_ip(n.ipv4) == peer_ip));
        if let Some(echo) = echo {
            *per_echo.entry(echo.name.clone()).or_default() += want;
        }
    }
    let per_guest = ledger::last_guest_stats(&outcome.log);
    for guest in image.guests.iter().filter(|g| g.app == "tcp-echo") {
        let counters = per_guest
            .get(&guest.name)
            .ok_or_else(|| failure(format!("no counters of {}", guest.name), outcome.log.clone()))?;
        let want = per_echo.get(&guest.name).copied();
        check_echo_counters(&outcome, &guest.name, counters, want, backlog_of(&outcome, guest)?)?;
    }
    let stats = final_stats(&outcome)?;
    // Summed over every guest, the clients' last reports among them.
    let sums: Counters = stats.clone().into_iter().collect();
    ledger::check_guest(&sums).map_err(|e| failure(format!("all guests: {e}"), outcome.log.clone()))?;
    let opened: u64 = per_echo.values().sum();
    let sum = |counter| tcp_counter(&sums, counter);
    check(
        &outcome,
        sum(GuestCounter::TcpConnects) == opened
            && sum(GuestCounter::TcpAccepted) == opened
            && sum(GuestCounter::TcpClosed) == 2 * opened,
        || format!("{opened} connections each side, all closed, wanted: {sums:?}"),
    )?;
    check(&outcome, !stats.contains_key("nic_tx_frames"), || "guest-to-guest ran with a physical NIC".into())?;
    check_tx_path(&outcome, tx, &stats, Traffic::GuestOnly)?;
    Ok(Verdict::Pass)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn client_result_lines_are_read_as_numbers() {
        let line = "[    3.9] INFO  guest 2 tcp-client-0: tcp-client: 8/8 connections echoed intact by 10.0.2.16:7, \
                    262144 bytes each, 0 corrupted, 0 failed, 3731 ms, 548 KiB/s, sockets freed: true";
        assert_eq!(tcp_client_result(line), Some((8, 8, 0, 0, true)));
        let bad = line.replace("8/8", "7/8").replace("0 failed", "1 failed").replace("freed: true", "freed: false");
        assert_eq!(tcp_client_result(&bad), Some((7, 8, 0, 1, false)));
        assert_eq!(tcp_client_result("tcp-client: need peer=IP:PORT"), None);
    }
}
