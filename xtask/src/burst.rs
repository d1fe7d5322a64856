//! `cargo xtask udp-burst`: bursts of datagrams sent back to back to echo servers, every echo
//! compared byte for byte, and what the host itself dropped; run inside the tap namespace by the
//! loss tests, so that the host's counters are the namespace's.

use crate::udp::random_bytes;
use anyhow::{Context, Result};
use std::collections::HashMap;
use std::net::{SocketAddr, UdpSocket};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

/// What one peer's burst came to.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PeerResult {
    pub sent: u64,
    /// Echoes equal byte for byte to a datagram sent (each sent datagram matched once).
    pub intact: u64,
    /// Datagrams from the peer that match nothing sent (or more often than sent).
    pub corrupted: u64,
}

/// Drops on the host's side of the path, from its counters (differences over the burst).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct HostDrops {
    /// UDP datagrams the host's sockets had no buffer room for (`RcvbufErrors`).
    pub udp_rcvbuf_errors: u64,
    /// Frames the tap device dropped towards QEMU (`tx_dropped`) and from it (`rx_dropped`).
    pub tap_tx_dropped: u64,
    pub tap_rx_dropped: u64,
}

impl HostDrops {
    pub fn total(&self) -> u64 {
        self.udp_rcvbuf_errors + self.tap_tx_dropped + self.tap_rx_dropped
    }

    fn read(tap: &str) -> HostDrops {
        let stat = |name: &str| {
            std::fs::read_to_string(format!("/sys/class/net/{tap}/statistics/{name}"))
                .ok()
                .and_then(|s| s.trim().parse().ok())
                .unwrap_or(0)
        };
        HostDrops {
            udp_rcvbuf_errors: udp_rcvbuf_errors(),
            tap_tx_dropped: stat("tx_dropped"),
            tap_rx_dropped: stat("rx_dropped"),
        }
    }

    fn since(self, before: HostDrops) -> HostDrops {
        HostDrops {
            udp_rcvbuf_errors: self.udp_rcvbuf_errors.saturating_sub(before.udp_rcvbuf_errors),
            tap_tx_dropped: self.tap_tx_dropped.saturating_sub(before.tap_tx_dropped),
            tap_rx_dropped: self.tap_rx_dropped.saturating_sub(before.tap_rx_dropped),
        }
    }
}

/// `RcvbufErrors` of the `Udp:` lines of `/proc/net/snmp` (this network namespace's).
pub(crate) fn udp_rcvbuf_errors() -> u64 {
    let text = std::fs::read_to_string("/proc/net/snmp").unwrap_or_default();
    let mut udp = text.lines().filter(|l| l.starts_with("Udp:"));
    let (Some(names), Some(values)) = (udp.next(), udp.next()) else { return 0 };
    names
        .split_whitespace()
        .zip(values.split_whitespace())
        .find(|(name, _)| *name == "RcvbufErrors")
        .and_then(|(_, value)| value.parse().ok())
        .unwrap_or(0)
}

/// The payload of datagram `index` of a burst to peer `peer`: `size` bytes no other datagram of
/// the run shares (but for the shortest ones).
fn payload(burst: u64, peer: usize, index: usize, size: usize) -> Vec<u8> {
    random_bytes(burst << 32 ^ (peer as u64) << 16 ^ index as u64, size)
}

/// Sends `sizes.len()` datagrams (of those sizes, in that order) back to back to each peer in
/// turn, then collects echoes until none has come for `settle`. Sockets are opened and their
/// readers started before the first datagram goes, so echoes never wait in the host.
pub fn burst(
    peers: &[SocketAddr],
    sizes: &[usize],
    burst: u64,
    settle: Duration,
    tap: &str,
) -> Result<(Vec<PeerResult>, HostDrops)> {
    let sockets = peers
        .iter()
        .map(|_| {
            let socket = UdpSocket::bind("0.0.0.0:0")?;
            socket.set_read_timeout(Some(Duration::from_millis(20)))?;
            Ok(socket)
        })
        .collect::<Result<Vec<_>>>()
        .context("opening sockets")?;
    let before = HostDrops::read(tap);
    let sent_all = AtomicBool::new(false);
    let results = std::thread::scope(|scope| -> Result<Vec<PeerResult>> {
        let readers: Vec<_> = sockets
            .iter()
            .zip(peers)
            .enumerate()
            .map(|(p, (socket, &peer))| {
                let sent_all = &sent_all;
                scope.spawn(move || {
                    let mut expected: HashMap<Vec<u8>, u64> = HashMap::new();
                    for (index, &size) in sizes.iter().enumerate() {
                        *expected.entry(payload(burst, p, index, size)).or_default() += 1;
                    }
                    let mut result = PeerResult { sent: sizes.len() as u64, ..PeerResult::default() };
                    let mut buf = vec![0u8; 65536];
                    let mut last = Instant::now();
                    loop {
                        match socket.recv_from(&mut buf) {
                            Ok((len, from)) if from == peer => {
                                last = Instant::now();
                                match expected.get_mut(&buf[..len]) {
                                    Some(count) if *count > 0 => {
                                        *count -= 1;
                                        result.intact += 1;
                                    }
                                    _ => result.corrupted += 1,
                                }
                            }
                            Ok(_) => {}
                            Err(_) if sent_all.load(Ordering::Acquire) && last.elapsed() >= settle => break,
                            Err(_) => {}
                        }
                    }
                    result
                })
            })
            .collect();
        for (p, (socket, peer)) in sockets.iter().zip(peers).enumerate() {
            for (index, &size) in sizes.iter().enumerate() {
                socket.send_to(&payload(burst, p, index, size), peer).with_context(|| format!("sending to {peer}"))?;
            }
        }
        sent_all.store(true, Ordering::Release);
        readers.into_iter().map(|r| r.join().map_err(|_| anyhow::anyhow!("a reader panicked"))).collect()
    })?;
    Ok((results, HostDrops::read(tap).since(before)))
}

/// `cargo xtask udp-burst`: runs [`burst`] and prints one `burst-peer:` line per peer and one
/// `burst-host:` line, which the loss tests read.
pub fn command(peers: &[SocketAddr], sizes: &[usize], seed: u64, settle_ms: u64, tap: &str) -> Result<()> {
    let (results, host) = burst(peers, sizes, seed, Duration::from_millis(settle_ms), tap)?;
    for (peer, r) in peers.iter().zip(&results) {
        println!("burst-peer: peer={peer} sent={} intact={} corrupted={}", r.sent, r.intact, r.corrupted);
    }
    println!(
        "burst-host: udp_rcvbuf_errors={} tap_tx_dropped={} tap_rx_dropped={}",
        host.udp_rcvbuf_errors, host.tap_tx_dropped, host.tap_rx_dropped
    );
    Ok(())
}

/// Reads [`command`]'s output back.
pub fn parse_output(text: &str) -> Option<(Vec<(String, PeerResult)>, HostDrops)> {
    let number = |line: &str, key: &str| -> Option<u64> {
        line.split_whitespace().find_map(|w| w.strip_prefix(key)?.strip_prefix('='))?.parse().ok()
    };
    let mut peers = Vec::new();
    let mut host = None;
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix("burst-peer:") {
            let peer = rest.split_whitespace().find_map(|w| w.strip_prefix("peer="))?.to_string();
            let result = PeerResult {
                sent: number(rest, "sent")?,
                intact: number(rest, "intact")?,
                corrupted: number(rest, "corrupted")?,
            };
            peers.push((peer, result));
        } else if let Some(rest) = line.strip_prefix("burst-host:") {
            host = Some(HostDrops {
                udp_rcvbuf_errors: number(rest, "udp_rcvbuf_errors")?,
                tap_tx_dropped: number(rest, "tap_tx_dropped")?,
                tap_rx_dropped: number(rest, "tap_rx_dropped")?,
            });
        }
    }
    Some((peers, host?))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_burst_against_a_lossy_local_echo_server_is_counted_exactly() {
        let server = UdpSocket::bind("127.0.0.1:0").unwrap();
        let peer = server.local_addr().unwrap();
        std::thread::spawn(move || {
            let mut buf = [0u8; 2048];
            let mut count = 0;
            while let Ok((len, from)) = server.recv_from(&mut buf) {
                count += 1;
                match count {
                    3 | 7 => continue, // lost
                    5 => buf[0] ^= 1,  // corrupted
                    _ => {}
                }
                server.send_to(&buf[..len], from).unwrap();
            }
        });
        let sizes: Vec<usize> = (0..10).map(|i| 10 + i).collect();
        let (results, _) = burst(&[peer], &sizes, 1, Duration::from_millis(200), "lo").unwrap();
        assert_eq!(results, vec![PeerResult { sent: 10, intact: 7, corrupted: 1 }]);
    }

    #[test]
    fn output_round_trips() {
        let text = "burst-peer: peer=10.77.0.16:7 sent=32 intact=30 corrupted=1\n\
                    burst-peer: peer=10.77.0.17:7 sent=32 intact=32 corrupted=0\n\
                    burst-host: udp_rcvbuf_errors=2 tap_tx_dropped=0 tap_rx_dropped=1\n";
        let (peers, host) = parse_output(text).unwrap();
        assert_eq!(peers.len(), 2);
        assert_eq!(peers[0], ("10.77.0.16:7".to_string(), PeerResult { sent: 32, intact: 30, corrupted: 1 }));
        assert_eq!(host.total(), 3);
        assert!(parse_output("burst-peer: peer=x sent=1\n").is_none());
    }
}
