//! `cargo xtask udp-sweep`: one datagram to each of many echo guests at consecutive addresses,
//! every answer matched to the guest it was sent to; run inside the tap namespace by the
//! density test and `bench density`. A window bounds the datagrams in flight (so neither the
//! host's socket nor the tap queue overflows however many guests there are), and a datagram
//! unanswered for a while is sent again, up to a limit; retries and guests that never answered
//! are counted, never hidden.

use anyhow::{bail, Context, Result};
use std::collections::VecDeque;
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4, UdpSocket};
use std::time::{Duration, Instant};

/// How a sweep is run.
#[derive(Clone, Copy, Debug)]
pub struct SweepPlan {
    /// The first guest's address; guest `i` is at `first + i`.
    pub first: Ipv4Addr,
    pub count: usize,
    pub port: u16,
    /// Datagrams in flight at most.
    pub window: usize,
    /// A datagram unanswered this long is sent again...
    pub retry_after: Duration,
    /// ...at most this many times.
    pub max_retries: u32,
    /// Makes this sweep's payloads differ from other sweeps'.
    pub seed: u64,
}

/// What a sweep came to.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SweepResult {
    pub count: usize,
    /// Guests whose answer matched what was sent to them.
    pub answered: usize,
    /// Datagrams that came back wrong: from the right guest with another payload, or from an
    /// address that is no guest's.
    pub corrupted: usize,
    /// Repeated answers (a retried datagram answered twice).
    pub duplicates: usize,
    pub retries: usize,
    /// Guests that never answered (the first few, by index).
    pub silent: Vec<usize>,
    /// Milliseconds from the start of the sweep to the first answer and to the last.
    pub first_answer_ms: u64,
    pub last_answer_ms: u64,
    /// Datagrams the host (this namespace) dropped for want of socket buffer room during the
    /// sweep (`RcvbufErrors`): answers that came back and were lost before the sweep read them.
    pub host_rcvbuf_errors: u64,
}

/// The payload for guest `index` in sweep `seed`.
fn payload(seed: u64, index: usize) -> Vec<u8> {
    format!("density sweep {seed} guest {index}").into_bytes()
}

/// Guest `index`'s address, or `None` beyond IPv4.
fn guest_addr(plan: &SweepPlan, index: usize) -> Option<Ipv4Addr> {
    u32::from(plan.first).checked_add(u32::try_from(index).ok()?).map(Ipv4Addr::from)
}

pub fn sweep(plan: &SweepPlan) -> Result<SweepResult> {
    if plan.window == 0 {
        bail!("a sweep needs a window of at least 1");
    }
    if guest_addr(plan, plan.count.saturating_sub(1)).is_none() {
        bail!("{} guests from {} run past the IPv4 space", plan.count, plan.first);
    }
    let socket = UdpSocket::bind("0.0.0.0:0").context("binding the sweep's socket")?;
    socket.set_read_timeout(Some(Duration::from_millis(5)))?;
    let start = Instant::now();
    let mut result = SweepResult { count: plan.count, ..SweepResult::default() };
    let rcvbuf_errors_before = crate::burst::udp_rcvbuf_errors();
    let mut answered = vec![false; plan.count];
    let mut attempts = vec![0u32; plan.count];
    // Datagrams in flight, oldest first: (guest, when sent). Answered ones are skipped lazily.
    let mut in_flight: VecDeque<(usize, Instant)> = VecDeque::new();
    let mut outstanding = 0;
    let mut next = 0;
    let mut given_up = 0;
    let mut buf = vec![0u8; 2048];
    let send = |index: usize| -> Result<()> {
        let addr = guest_addr(plan, index).context("guest address")?;
        socket.send_to(&payload(plan.seed, index), SocketAddrV4::new(addr, plan.port))?;
        Ok(())
    };
    while result.answered + given_up < plan.count {
        while outstanding < plan.window && next < plan.count {
            send(next)?;
            attempts[next] = 1;
            in_flight.push_back((next, Instant::now()));
            outstanding += 1;
            next += 1;
        }
        match socket.recv_from(&mut buf) {
            Ok((len, SocketAddr::V4(from))) => {
                let index = u32::from(*from.ip()).wrapping_sub(u32::from(plan.first)) as usize;
                match answered.get_mut(index) {
                    Some(done) if from.port() == plan.port && buf[..len] == payload(plan.seed, index)[..] => {
                        if *done {
                            result.duplicates += 1;
                        } else {
                            *done = true;
                            result.answered += 1;
                            outstanding -= 1;
                            let ms = start.elapsed().as_millis() as u64;
                            if result.answered == 1 {
                                result.first_answer_ms = ms;
                            }
                            result.last_answer_ms = ms;
                        }
                    }
                    _ => result.corrupted += 1,
                }
            }
            Ok(_) => result.corrupted += 1,
            Err(e) if matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut) => {}
            Err(e) => return Err(e).context("receiving answers"),
        }
        // Resend (or give up on) the oldest unanswered datagrams that waited too long.
        while let Some(&(index, sent_at)) = in_flight.front() {
            if answered[index] {
                in_flight.pop_front();
                continue;
            }
            if sent_at.elapsed() < plan.retry_after {
                break;
            }
            in_flight.pop_front();
            if attempts[index] > plan.max_retries {
                given_up += 1;
                outstanding -= 1;
                if result.silent.len() < 20 {
                    result.silent.push(index);
                }
                continue;
            }
            attempts[index] += 1;
            result.retries += 1;
            send(index)?;
            in_flight.push_back((index, Instant::now()));
        }
    }
    result.silent.sort_unstable();
    // Late answers to retried datagrams are duplicates, not news: wait briefly for them so
    // they are counted here rather than lost to a closed socket.
    let settle = Instant::now();
    while result.retries > 0 && settle.elapsed() < Duration::from_millis(200) {
        if let Ok((len, SocketAddr::V4(from))) = socket.recv_from(&mut buf) {
            let index = u32::from(*from.ip()).wrapping_sub(u32::from(plan.first)) as usize;
            if answered.get(index) == Some(&true) && buf[..len] == payload(plan.seed, index)[..] {
                result.duplicates += 1;
            } else {
                result.corrupted += 1;
            }
        }
    }
    result.host_rcvbuf_errors = crate::burst::udp_rcvbuf_errors().saturating_sub(rcvbuf_errors_before);
    Ok(result)
}

impl SweepResult {
    /// One line for the callers to read back ([`SweepResult::parse`]).
    pub fn line(&self) -> String {
        let silent = self.silent.iter().map(|i| i.to_string()).collect::<Vec<_>>().join(",");
        format!(
            "udp-sweep: count={} answered={} corrupted={} duplicates={} retries={} first_answer_ms={} \
             last_answer_ms={} host_rcvbuf_errors={} silent={}",
            self.count,
            self.answered,
            self.corrupted,
            self.duplicates,
            self.retries,
            self.first_answer_ms,
            self.last_answer_ms,
            self.host_rcvbuf_errors,
            if silent.is_empty() { "-" } else { &silent }
        )
    }

    pub fn parse(text: &str) -> Option<SweepResult> {
        let line = text.lines().find_map(|l| l.strip_prefix("udp-sweep:"))?;
        let field = |key: &str| line.split_whitespace().find_map(|w| w.strip_prefix(key)?.strip_prefix('='));
        let number = |key: &str| field(key)?.parse::<u64>().ok();
        let silent = match field("silent")? {
            "-" => Vec::new(),
            list => list.split(',').map(|i| i.parse().ok()).collect::<Option<Vec<usize>>>()?,
        };
        Some(SweepResult {
            count: number("count")? as usize,
            answered: number("answered")? as usize,
            corrupted: number("corrupted")? as usize,
            duplicates: number("duplicates")? as usize,
            retries: number("retries")? as usize,
            silent,
            first_answer_ms: number("first_answer_ms")?,
            last_answer_ms: number("last_answer_ms")?,
            host_rcvbuf_errors: number("host_rcvbuf_errors").unwrap_or(0),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Echo servers on 127.0.0.N for the loopback sweep: every address of 127/8 is local, so
    /// guests are stood in for by one socket per address. Guest `mute` never answers, guest
    /// `liar` answers with other bytes, and the first datagram to guest `shy` is ignored.
    fn servers(count: usize, port: u16, mute: usize, liar: usize, shy: usize) {
        for index in 0..count {
            let socket = UdpSocket::bind(SocketAddrV4::new(Ipv4Addr::new(127, 1, 0, 1 + index as u8), port)).unwrap();
            std::thread::spawn(move || {
                let mut buf = [0u8; 2048];
                let mut seen = 0;
                while let Ok((len, from)) = socket.recv_from(&mut buf) {
                    seen += 1;
                    match index {
                        i if i == mute => {}
                        i if i == shy && seen == 1 => {}
                        i if i == liar => {
                            let _ = socket.send_to(b"not what you sent", from);
                        }
                        _ => {
                            let _ = socket.send_to(&buf[..len], from);
                        }
                    }
                }
            });
        }
    }

    #[test]
    fn every_answer_is_matched_to_its_guest_and_silence_is_counted() {
        let port = 40_000 + (std::process::id() % 10_000) as u16;
        servers(8, port, 5, 6, 2);
        let plan = SweepPlan {
            first: Ipv4Addr::new(127, 1, 0, 1),
            count: 8,
            port,
            window: 3,
            retry_after: Duration::from_millis(100),
            max_retries: 2,
            seed: 7,
        };
        let result = sweep(&plan).unwrap();
        assert_eq!(result.answered, 6, "{result:?}");
        assert_eq!(result.silent, [5, 6]);
        assert_eq!(result.corrupted, 3, "the liar answers each of its 3 datagrams wrongly: {result:?}");
        // The shy guest's first datagram and the two silent guests' two retries each.
        assert_eq!(result.retries, 1 + 2 * 2, "{result:?}");
        assert!(result.last_answer_ms >= result.first_answer_ms);
        assert_eq!(SweepResult::parse(&result.line()), Some(result));
    }
}
