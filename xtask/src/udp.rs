//! A host-side UDP echo client: random datagrams of given sizes, every echoed byte checked.

use anyhow::{bail, Result};
use std::net::{SocketAddr, UdpSocket};
use std::time::{Duration, Instant};

/// The datagram sizes the echo tests use (1472: the largest UDP payload in a 1500-byte MTU).
pub const TEST_SIZES: [usize; 6] = [1, 64, 100, 512, 1400, 1472];

/// Pseudo-random bytes (xorshift64*), seeded per datagram so each one differs.
pub fn random_bytes(seed: u64, len: usize) -> Vec<u8> {
    let mut state = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
    (0..len)
        .map(|_| {
            state ^= state >> 12;
            state ^= state << 25;
            state ^= state >> 27;
            (state.wrapping_mul(0x2545_f491_4f6c_dd1d) >> 56) as u8
        })
        .collect()
}

/// What one echo check found.
#[derive(Debug, Default)]
pub struct EchoReport {
    pub intact: usize,
    pub corrupted: usize,
    pub lost: usize,
    pub retries: usize,
    /// Round-trip times of the datagrams that came back intact at the first try.
    pub rtts: Vec<Duration>,
}

/// Sends one datagram of each size (repeated `rounds` times) to `peer` and checks each echo byte
/// for byte; a lost datagram is resent up to `retries` times.
pub fn echo_check(
    peer: SocketAddr,
    sizes: &[usize],
    rounds: usize,
    retries: usize,
    timeout: Duration,
    seed: u64,
) -> Result<EchoReport> {
    let socket = UdpSocket::bind(if peer.is_ipv4() { "0.0.0.0:0" } else { "[::]:0" })?;
    socket.set_read_timeout(Some(timeout))?;
    let mut report = EchoReport::default();
    let mut buf = vec![0u8; 65536];
    for round in 0..rounds {
        for (i, &size) in sizes.iter().enumerate() {
            let data = random_bytes(seed ^ ((round * sizes.len() + i) as u64 + 1) << 8, size);
            let mut outcome = None;
            for attempt in 0..=retries {
                if attempt > 0 {
                    report.retries += 1;
                }
                let sent_at = Instant::now();
                socket.send_to(&data, peer)?;
                // Skip stale echoes of earlier datagrams; wait for this one or the timeout.
                while outcome.is_none() {
                    match socket.recv_from(&mut buf) {
                        Ok((len, from)) if from == peer => {
                            if buf[..len] == data[..] {
                                if attempt == 0 {
                                    report.rtts.push(sent_at.elapsed());
                                }
                                outcome = Some(true);
                            } else if len == data.len() {
                                outcome = Some(false);
                            }
                        }
                        Ok(_) => {}
                        Err(_) => break,
                    }
                }
                if outcome.is_some() {
                    break;
                }
            }
            match outcome {
                Some(true) => report.intact += 1,
                Some(false) => report.corrupted += 1,
                None => report.lost += 1,
            }
        }
    }
    Ok(report)
}

/// Sizes for jumbo-frame images (8972: the largest UDP payload in a 9000-byte MTU).
pub const JUMBO_TEST_SIZES: [usize; 5] = [1, 1472, 4000, 8000, 8972];

/// A socket for [`echo_paced`] to `peer`, every path warmed (ARP, first use) with 20 echoes of
/// one byte less than each of `sizes`, which the counted windows leave out.
pub fn warmed_echo_socket(peer: SocketAddr, sizes: &[usize]) -> Result<UdpSocket> {
    let socket = UdpSocket::bind("127.0.0.1:0")?;
    // A lost datagram is resent after this; losses are rare, so short is cheap.
    socket.set_read_timeout(Some(Duration::from_millis(250)))?;
    let mut buf = [0u8; 4096];
    for size in sizes.iter().map(|s| s.saturating_sub(1)) {
        let data = random_bytes(size as u64, size);
        for _ in 0..20 {
            socket.send_to(&data, peer)?;
            let _ = socket.recv_from(&mut buf);
        }
    }
    Ok(socket)
}

/// Sends `data` to `peer` and waits for its echo, `count` times, pausing `gap` after each try
/// (at most `2 * count` tries): the instruction-counted echo windows of `bench dispatch` and
/// `bench baseline`. Fails unless all `count` came back intact.
pub fn echo_paced(socket: &UdpSocket, peer: SocketAddr, data: &[u8], count: usize, gap: Duration) -> Result<()> {
    let mut buf = vec![0u8; data.len().max(1) + 1];
    let mut echoed = 0;
    for _ in 0..count * 2 {
        socket.send_to(data, peer)?;
        if matches!(socket.recv_from(&mut buf), Ok((len, _)) if buf[..len] == data[..]) {
            echoed += 1;
            if echoed == count {
                return Ok(());
            }
        }
        std::thread::sleep(gap);
    }
    bail!("only {echoed} of {count} {}-byte datagrams came back", data.len())
}

/// `cargo xtask udp-probe ADDR`: the echo check as a command, for use inside a namespace.
pub fn probe(peer: SocketAddr, sizes: &[usize]) -> Result<()> {
    let sizes = if sizes.is_empty() { &TEST_SIZES[..] } else { sizes };
    let report = echo_check(peer, sizes, 1, 3, Duration::from_secs(2), 0x5eed)?;
    println!(
        "udp-probe {peer}: {} intact, {} corrupted, {} lost, {} retries",
        report.intact, report.corrupted, report.lost, report.retries
    );
    if report.intact != sizes.len() {
        bail!("not every datagram came back intact");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn random_bytes_differ_by_seed_and_are_stable() {
        assert_eq!(random_bytes(1, 64), random_bytes(1, 64));
        assert_ne!(random_bytes(1, 64), random_bytes(2, 64));
        let bytes = random_bytes(7, 4096);
        let distinct = bytes.iter().collect::<std::collections::BTreeSet<_>>().len();
        assert!(distinct > 200, "{distinct}");
    }

    #[test]
    fn echo_check_against_a_local_echo_server() {
        let server = UdpSocket::bind("127.0.0.1:0").unwrap();
        let addr = server.local_addr().unwrap();
        std::thread::spawn(move || {
            let mut buf = [0u8; 2048];
            let mut count = 0;
            while let Ok((len, from)) = server.recv_from(&mut buf) {
                count += 1;
                if count == 2 {
                    continue; // lose one: the client must retry
                }
                if count == 4 {
                    buf[0] ^= 0xff; // corrupt one: the client must notice
                }
                server.send_to(&buf[..len], from).unwrap();
            }
        });
        let report = echo_check(addr, &[10, 20, 30], 1, 2, Duration::from_millis(200), 1).unwrap();
        assert_eq!((report.intact, report.corrupted, report.lost, report.retries), (2, 1, 0, 1), "{report:?}");
    }
}

/// Round-trip times of `count` sequential datagrams of `size` bytes (a lost one is counted, not
/// timed, and the next is sent after the timeout).
pub fn latency(peer: SocketAddr, size: usize, count: usize, timeout: Duration) -> Result<(Vec<Duration>, usize)> {
    let socket = UdpSocket::bind("0.0.0.0:0")?;
    socket.set_read_timeout(Some(timeout))?;
    let data = random_bytes(size as u64, size);
    let mut buf = vec![0u8; 65536];
    let (mut rtts, mut lost) = (Vec::with_capacity(count), 0);
    for _ in 0..count {
        let start = Instant::now();
        socket.send_to(&data, peer)?;
        loop {
            match socket.recv_from(&mut buf) {
                Ok((len, from)) if from == peer && buf[..len] == data[..] => {
                    rtts.push(start.elapsed());
                    break;
                }
                Ok(_) => continue,
                Err(_) => {
                    lost += 1;
                    break;
                }
            }
        }
    }
    Ok((rtts, lost))
}

/// What a throughput run counted.
#[derive(Debug, Default, Clone, Copy)]
pub struct Throughput {
    pub sent: u64,
    pub received: u64,
    pub seconds: f64,
}

impl Throughput {
    pub fn echoes_per_second(&self) -> f64 {
        self.received as f64 / self.seconds
    }
}

/// Saturates each peer with a closed loop of `window` outstanding datagrams for `duration`,
/// one thread per peer; a window that times out counts its datagrams as lost and restarts.
pub fn throughput(peers: &[SocketAddr], size: usize, duration: Duration, window: usize) -> Result<Throughput> {
    let start = Instant::now();
    let seconds = duration.as_secs_f64();
    let results: Vec<Result<(u64, u64)>> = std::thread::scope(|scope| {
        let workers: Vec<_> = peers
            .iter()
            .map(|&peer| {
                scope.spawn(move || -> Result<(u64, u64)> {
                    let socket = UdpSocket::bind("0.0.0.0:0")?;
                    socket.set_read_timeout(Some(Duration::from_millis(200)))?;
                    let data = random_bytes(size as u64 + 7, size);
                    let mut buf = vec![0u8; 65536];
                    let (mut sent, mut received, mut outstanding) = (0u64, 0u64, 0usize);
                    let end = Instant::now() + duration;
                    // Takes one datagram: whether it was an echo (None: the read timed out).
                    let mut take_echo = || match socket.recv_from(&mut buf) {
                        Ok((len, from)) => Some(from == peer && len == size),
                        Err(_) => None,
                    };
                    while Instant::now() < end {
                        while outstanding < window {
                            socket.send_to(&data, peer)?;
                            sent += 1;
                            outstanding += 1;
                        }
                        match take_echo() {
                            Some(true) => {
                                received += 1;
                                outstanding -= 1;
                            }
                            Some(false) => {}
                            None => outstanding = 0, // the window's datagrams are lost
                        }
                    }
                    // Collect the echoes still in flight, so only real losses count as lost.
                    while outstanding > 0 {
                        match take_echo() {
                            Some(true) => {
                                received += 1;
                                outstanding -= 1;
                            }
                            Some(false) => {}
                            None => break,
                        }
                    }
                    Ok((sent, received))
                })
            })
            .collect();
        workers.into_iter().map(|w| w.join().unwrap_or_else(|_| Err(anyhow::anyhow!("worker panicked")))).collect()
    });
    // The rate counts the saturation period only, not the drain after it.
    let _ = start;
    let mut total = Throughput { seconds, ..Throughput::default() };
    for result in results {
        let (sent, received) = result?;
        total.sent += sent;
        total.received += received;
    }
    Ok(total)
}

/// The `p`-th percentile (0..=100) of sorted durations, in microseconds.
pub fn percentile_us(sorted: &[Duration], p: usize) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    sorted[(sorted.len() - 1) * p / 100].as_secs_f64() * 1e6
}
