//! Open-loop UDP echo throughput (`bench echo`, `bench baseline`): datagrams at a fixed rate,
//! paced in 1 ms ticks, for a few seconds, whether or not echoes come back (a closed loop waits
//! for them and so never overloads the server); the highest rate with under 1% loss, found by
//! doubling and then bisecting; and, at the lowest rate that lost more, where the datagrams
//! went: never reached the server's kernel, dropped (and counted) by its kernel, dropped by the
//! echo server (our guest; Linux's UDP socket), or echoed and lost on the way back.
//!
//! Wall-clock rates: under TCG they are emulator speed, to compare between systems measured one
//! after the other in the same session, not across machines.

use crate::burst::HostDrops;
use crate::ledger::{self, Counters};
use crate::qemu::Session;
use crate::tapnet::TapNamespace;
use crate::udp::random_bytes;
use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::net::{SocketAddr, UdpSocket};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

/// The pacing tick: each tick sends what the rate owes by its end.
pub const TICK: Duration = Duration::from_millis(1);
/// A rate passes with less than this share of its datagrams lost.
pub const LOSS_LIMIT: f64 = 0.01;
/// The datagram that makes the Linux baseline's `/init` answer with its counters.
pub const LINUX_STATS_REQUEST: &[u8] = b"ik-linux-stats";

/// How a search runs.
#[derive(Clone, Copy, Debug)]
pub struct Plan {
    /// Length of one trial.
    pub trial: Duration,
    /// The first rate tried, and the highest (datagrams per second).
    pub start_rate: u64,
    pub max_rate: u64,
    /// Bisection ends when the failing rate is within 1/`resolution` of the passing one, or
    /// `min_step` datagrams per second; rates tried are multiples of `min_step`.
    pub resolution: u64,
    pub min_step: u64,
    /// How long to wait for echoes after the last send, at most.
    pub drain: Duration,
    /// A failing rate is tried once more and fails only if it fails again: on two cores shared
    /// with QEMU, one hiccup of the host would otherwise end the doubling early.
    pub retry_failures: bool,
}

pub const FULL: Plan = Plan {
    trial: Duration::from_secs(4),
    start_rate: 1_000,
    max_rate: 256_000,
    resolution: 32,
    min_step: 125,
    drain: Duration::from_secs(2),
    retry_failures: true,
};
pub const QUICK: Plan = Plan {
    trial: Duration::from_millis(500),
    start_rate: 1_000,
    max_rate: 64_000,
    resolution: 4,
    min_step: 500,
    drain: Duration::from_secs(1),
    retry_failures: true,
};

/// One trial: datagrams sent at `rate` per second, echoes received.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Trial {
    pub rate: u64,
    pub sent: u64,
    pub received: u64,
}

impl Trial {
    /// Share of the datagrams sent that did not come back.
    pub fn loss(&self) -> f64 {
        self.sent.saturating_sub(self.received) as f64 / self.sent.max(1) as f64
    }

    pub fn passes(&self) -> bool {
        self.sent > 0 && self.loss() < LOSS_LIMIT
    }
}

/// What a search found.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Search {
    /// Every trial, in the order run.
    pub trials: Vec<Trial>,
    /// The highest rate that passed, and the lowest that failed (None: none did).
    pub best: Option<Trial>,
    pub lowest_failing: Option<Trial>,
    /// First trials of rates that failed and were tried again (not in `trials`).
    #[serde(default)]
    pub retried: Vec<Trial>,
}

/// Doubles the rate from `plan.start_rate` while trials pass (up to `plan.max_rate`; halving
/// instead when the first fails), then bisects between the highest passing rate and the lowest
/// failing one until they are within the plan's resolution.
pub fn search(plan: &Plan, mut run_once: impl FnMut(u64) -> Result<Trial>) -> Result<Search> {
    let mut out = Search::default();
    let mut tried = Vec::new();
    // A failure tried again (the plan says so); the rate's verdict is the second trial's.
    let mut run = |rate: u64| -> Result<Trial> {
        let first = run_once(rate)?;
        if first.passes() || !plan.retry_failures {
            return Ok(first);
        }
        tried.push(first);
        run_once(rate)
    };
    let record = |out: &mut Search, trial: Trial| {
        out.trials.push(trial);
        if trial.passes() {
            if out.best.is_none_or(|b| trial.rate > b.rate) {
                out.best = Some(trial);
            }
        } else if out.lowest_failing.is_none_or(|f| trial.rate < f.rate) {
            out.lowest_failing = Some(trial);
        }
    };
    let step = plan.min_step.max(1);
    let mut rate = plan.start_rate.max(step);
    loop {
        let trial = run(rate)?;
        record(&mut out, trial);
        if !trial.passes() || rate >= plan.max_rate {
            break;
        }
        rate = rate.saturating_mul(2).min(plan.max_rate);
    }
    if out.best.is_none() {
        // Even the first rate failed: halve until one passes.
        while out.best.is_none() && rate / 2 >= step {
            rate /= 2;
            let trial = run(rate)?;
            record(&mut out, trial);
        }
    }
    while let (Some(pass), Some(fail)) = (out.best, out.lowest_failing) {
        let gap = fail.rate.saturating_sub(pass.rate);
        if gap <= (pass.rate / plan.resolution.max(1)).max(step) {
            break;
        }
        let mid = (pass.rate + gap / 2) / step * step;
        if mid <= pass.rate || mid >= fail.rate {
            break;
        }
        let trial = run(mid)?;
        record(&mut out, trial);
    }
    out.retried = tried;
    Ok(out)
}

/// The receive buffer asked for the client's socket: the echoes of a burst wait in it while
/// the reader thread shares two cores with QEMU (the default, ~200 KiB, overflowed at 20,000
/// echoes of 1400 bytes a second: a loss at the client, not in the system measured). Linux
/// grants up to `net.core.rmem_max` (4 MiB here), and doubles it.
const CLIENT_RECEIVE_BUFFER: i32 = 4 << 20;

/// Asks for a receive buffer of `bytes` on `socket` (`SO_RCVBUF`); what Linux grants is capped
/// at `net.core.rmem_max`, and a refusal only leaves the default.
fn grow_receive_buffer(socket: &UdpSocket, bytes: i32) {
    use std::os::fd::AsRawFd;
    extern "C" {
        fn setsockopt(fd: i32, level: i32, name: i32, value: *const std::ffi::c_void, len: u32) -> i32;
    }
    const SOL_SOCKET: i32 = 1;
    const SO_RCVBUF: i32 = 8;
    // SAFETY: the descriptor is the open socket's, the value points at an i32 that lives
    // across the call and the length is its size; setsockopt only reads it.
    let _ = unsafe {
        setsockopt(
            socket.as_raw_fd(),
            SOL_SOCKET,
            SO_RCVBUF,
            (&raw const bytes).cast(),
            std::mem::size_of::<i32>() as u32,
        )
    };
}

/// Sends `size`-byte datagrams to `peer` at `rate` per second for `duration` (what each 1 ms
/// tick owes, then a sleep to the next tick), counting the echoes as they come, then for at
/// most `drain` until none has come for a fifth of it. A fresh socket per trial, so that late
/// echoes of an earlier trial are not counted.
pub fn paced(peer: SocketAddr, size: usize, rate: u64, duration: Duration, drain: Duration) -> Result<Trial> {
    let socket = UdpSocket::bind(if peer.is_ipv4() { "0.0.0.0:0" } else { "[::]:0" })?;
    socket.set_read_timeout(Some(Duration::from_millis(20)))?;
    grow_receive_buffer(&socket, CLIENT_RECEIVE_BUFFER);
    let data = random_bytes(rate ^ (size as u64) << 32, size);
    let sending = AtomicBool::new(true);
    let quiet = drain / 5;
    let ticks = (duration.as_micros() / TICK.as_micros()).max(1) as u64;
    let ticks_per_second = (Duration::from_secs(1).as_micros() / TICK.as_micros()) as u64;
    std::thread::scope(|scope| -> Result<Trial> {
        let reader = scope.spawn(|| {
            let mut buf = vec![0u8; 65536];
            let mut received = 0u64;
            let mut last = Instant::now();
            let mut stopped: Option<Instant> = None;
            loop {
                match socket.recv_from(&mut buf) {
                    Ok((len, from)) if from == peer && len == size => {
                        received += 1;
                        last = Instant::now();
                    }
                    Ok(_) => {}
                    Err(_) => {}
                }
                if stopped.is_none() && !sending.load(Ordering::Acquire) {
                    stopped = Some(Instant::now());
                }
                if let Some(at) = stopped {
                    if at.elapsed() >= drain || last.max(at).elapsed() >= quiet {
                        return received;
                    }
                }
            }
        });
        let start = Instant::now();
        let mut sent = 0u64;
        let mut result = Ok(());
        for tick in 1..=ticks {
            let owed = rate * tick / ticks_per_second;
            while sent < owed {
                if let Err(e) = socket.send_to(&data, peer) {
                    result = Err(e).with_context(|| format!("sending to {peer}"));
                    break;
                }
                sent += 1;
            }
            if let Some(wait) = (start + TICK * tick as u32).checked_duration_since(Instant::now()) {
                std::thread::sleep(wait);
            }
        }
        sending.store(false, Ordering::Release);
        let received = reader.join().map_err(|_| anyhow::anyhow!("the reader panicked"))?;
        result?;
        Ok(Trial { rate, sent, received })
    })
}

/// A trial and what the host itself dropped meanwhile (its socket's receive buffer, the tap
/// device towards QEMU): what `open-loop-client` prints.
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct ClientTrial {
    pub trial: Trial,
    pub host: HostDrops,
}

/// [`paced`] with the host's drop counters around it (`tap`'s, if it exists here).
pub fn client_trial(peer: SocketAddr, size: usize, rate: u64, plan: &Plan, tap: &str) -> Result<ClientTrial> {
    let before = HostDrops::read(tap);
    let trial = paced(peer, size, rate, plan.trial, plan.drain)?;
    Ok(ClientTrial { trial, host: HostDrops::read(tap).since(before) })
}

/// Sends [`LINUX_STATS_REQUEST`] to the Linux baseline and returns its answer's counters.
pub fn linux_stats(peer: SocketAddr) -> Result<Counters> {
    let socket = UdpSocket::bind("0.0.0.0:0")?;
    socket.set_read_timeout(Some(Duration::from_millis(500)))?;
    let mut buf = vec![0u8; 4096];
    for _ in 0..10 {
        socket.send_to(LINUX_STATS_REQUEST, peer)?;
        if let Ok((len, from)) = socket.recv_from(&mut buf) {
            let text = String::from_utf8_lossy(&buf[..len]);
            if let (true, Some(rest)) = (from == peer, text.strip_prefix("linux-stats:")) {
                return Ok(ledger::pairs(rest));
            }
        }
    }
    bail!("the Linux VM at {peer} did not answer the stats request")
}

/// Where a trial is run from: this process, or `cargo xtask open-loop-client` in the tap
/// namespace.
#[derive(Clone, Copy)]
pub enum Client<'a> {
    Here,
    Namespace(&'a TapNamespace),
}

impl Client<'_> {
    pub fn network(&self) -> &'static str {
        match self {
            Client::Here => "user",
            Client::Namespace(_) => "tap",
        }
    }

    fn run(&self, args: &[String]) -> Result<String> {
        let Client::Namespace(ns) = self else { bail!("only the namespace runs the client as a command") };
        let exe = crate::setup::client_exe()?;
        let out = ns.command(&exe.to_string_lossy()).arg("open-loop-client").args(args).output()?;
        if !out.status.success() {
            bail!("open-loop-client failed: {}", String::from_utf8_lossy(&out.stderr).trim());
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    pub fn trial(&self, peer: SocketAddr, size: usize, rate: u64, plan: &Plan) -> Result<ClientTrial> {
        match self {
            Client::Here => client_trial(peer, size, rate, plan, crate::tapnet::TAP_IFNAME),
            Client::Namespace(_) => {
                let args = [
                    format!("--peer={peer}"),
                    format!("--size={size}"),
                    format!("--rate={rate}"),
                    format!("--trial-ms={}", plan.trial.as_millis()),
                    format!("--drain-ms={}", plan.drain.as_millis()),
                ];
                let out = self.run(&args)?;
                serde_json::from_str(out.trim()).with_context(|| format!("open-loop-client printed {out:?}"))
            }
        }
    }

    pub fn linux_stats(&self, peer: SocketAddr) -> Result<Counters> {
        match self {
            Client::Here => linux_stats(peer),
            Client::Namespace(_) => {
                let out = self.run(&[format!("--peer={peer}"), "--linux-stats".into()])?;
                Ok(ledger::pairs(out.trim().strip_prefix("linux-stats:").unwrap_or(out.trim())))
            }
        }
    }
}

/// Where the datagrams of one trial went, from the system's counters over it.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Where {
    pub sent: u64,
    pub received: u64,
    /// Frames the system's NIC handed to its kernel.
    pub reached_kernel: u64,
    /// Dropped and counted by the kernel (ours: `drops_*`; Linux: eth0's rx drops).
    pub kernel_drops: u64,
    /// Handed to the echo server (ours: delivered into the guest; Linux: to the UDP layer).
    pub reached_server: u64,
    /// Dropped and counted there (ours: the guest's drop counters; Linux: UDP `InErrors`,
    /// socket buffer full).
    pub server_drops: u64,
    /// Echoes the server sent.
    pub echoed: u64,
    /// What the host dropped itself.
    pub host: HostDrops,
    /// Every drop (or hold) counter of the system that moved, by name: which drop it was.
    pub counters: BTreeMap<String, u64>,
}

/// The counters named like drops or holds that grew from `before` to `after`, and by how much.
fn moved_drop_counters(before: &Counters, after: &Counters) -> BTreeMap<String, u64> {
    after
        .iter()
        .filter(|(name, _)| ["drop", "held", "Errors", "fifo", "full"].iter().any(|w| name.contains(w)))
        .filter_map(|(name, &value)| {
            let grew = value.saturating_sub(get(before, name));
            (grew > 0 && !name.ends_with("_now")).then(|| (name.clone(), grew))
        })
        .collect()
}

impl Where {
    /// Sent but never handed to the system's kernel (lost in the host, QEMU's network backend
    /// or the NIC; other frames, ARP, make it a little lower).
    pub fn never_reached_kernel(&self) -> i64 {
        self.sent as i64 - self.reached_kernel as i64
    }

    /// Reached the kernel, neither handed on nor counted.
    pub fn kernel_uncounted(&self) -> i64 {
        self.reached_kernel as i64 - self.kernel_drops as i64 - self.reached_server as i64
    }

    /// Reached the server, neither echoed nor counted (still queued, or lost uncounted).
    pub fn server_uncounted(&self) -> i64 {
        self.reached_server as i64 - self.server_drops as i64 - self.echoed as i64
    }

    /// Echoed but not received by the host.
    pub fn lost_after_echo(&self) -> i64 {
        self.echoed as i64 - self.received as i64
    }

    /// The biggest share of the loss, named.
    pub fn main_place(&self) -> &'static str {
        let places = [
            (self.never_reached_kernel(), "never reached the kernel"),
            (self.kernel_drops as i64 + self.kernel_uncounted(), "in the kernel"),
            (self.server_drops as i64 + self.server_uncounted(), "in the echo server"),
            (self.lost_after_echo(), "after the echo"),
        ];
        places.iter().max_by_key(|(n, _)| *n).map_or("nowhere", |(n, name)| if *n > 0 { name } else { "nowhere" })
    }

    /// Ours, from the kernel's `stats:` lines before and after.
    pub fn ours(trial: &ClientTrial, before: &Counters, after: &Counters) -> Where {
        let delta = |name: &str| get(after, name).saturating_sub(get(before, name));
        use hypercall_abi::vnic::GuestCounter;
        Where {
            sent: trial.trial.sent,
            received: trial.trial.received,
            reached_kernel: delta("nic_rx_frames"),
            kernel_drops: ledger::kernel_drops(after).saturating_sub(ledger::kernel_drops(before)),
            reached_server: delta("rx_packets"),
            server_drops: ledger::guest_drops(after).saturating_sub(ledger::guest_drops(before)),
            echoed: delta(GuestCounter::AppEchoes.name()),
            host: trial.host,
            counters: moved_drop_counters(before, after),
        }
    }

    /// The Linux VM, from its `/init`'s answers before and after (`/proc/net/snmp`, `/proc/net/dev`).
    pub fn linux(trial: &ClientTrial, before: &Counters, after: &Counters) -> Where {
        let delta = |name: &str| get(after, name).saturating_sub(get(before, name));
        Where {
            sent: trial.trial.sent,
            received: trial.trial.received,
            reached_kernel: delta("eth0_rx_packets"),
            kernel_drops: delta("eth0_rx_drop") + delta("eth0_rx_fifo"),
            reached_server: delta("udp_InDatagrams") + delta("udp_InErrors"),
            server_drops: delta("udp_InErrors"),
            echoed: delta("udp_OutDatagrams"),
            host: trial.host,
            counters: moved_drop_counters(before, after),
        }
    }
}

fn get(c: &Counters, name: &str) -> u64 {
    c.get(name).copied().unwrap_or(0)
}

/// The kernel's counters once it has been quiet for a while: its `stats:` line comes every
/// 5 s of its clock while counters change (about 7 s of wall time under TCG here), so the last
/// one after 12 s of quiet is the state now.
pub fn settled_stats(session: &Session) -> Result<Counters> {
    std::thread::sleep(Duration::from_secs(12));
    ledger::last_stats(&session.log()).context("the kernel printed no stats line")
}

/// Which system a cell measured.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum System {
    Ours,
    Linux,
}

impl System {
    pub fn name(self) -> &'static str {
        match self {
            System::Ours => "ours",
            System::Linux => "linux",
        }
    }
}

/// One search: a system, a network, a datagram size.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Cell {
    pub system: System,
    /// `user` or `tap`.
    pub network: String,
    /// UDP payload, bytes.
    pub size: usize,
    /// The highest rate with under 1% loss, echoes per second (0: not even the lowest tried).
    pub rate: u64,
    pub search: Search,
    /// The lowest failing rate run once more with the system's counters read around it.
    pub lost_at: Option<Where>,
}

/// Searches each size against one echo server of a running system, then runs the lowest
/// failing rate once more between two readings of the system's counters (`counters`).
pub fn measure(
    system: System,
    client: Client,
    peer: SocketAddr,
    sizes: &[usize],
    plan: &Plan,
    mut counters: impl FnMut() -> Result<Counters>,
) -> Result<Vec<Cell>> {
    let mut cells = Vec::new();
    for &size in sizes {
        warm_up(client, peer, size)?;
        let search = search(plan, |rate| Ok(client.trial(peer, size, rate, plan)?.trial))?;
        let lost_at = match search.lowest_failing {
            Some(failing) => {
                let before = counters()?;
                let trial = client.trial(peer, size, failing.rate, plan)?;
                let after = counters()?;
                Some(match system {
                    System::Ours => Where::ours(&trial, &before, &after),
                    System::Linux => Where::linux(&trial, &before, &after),
                })
            }
            None => None,
        };
        let rate = search.best.map_or(0, |b| b.rate);
        println!(
            "open loop: {} {} {size} B: {rate} echoes/s at < 1% loss ({} trials){}",
            system.name(),
            client.network(),
            search.trials.len(),
            lost_at
                .as_ref()
                .map_or(String::new(), |w| format!("; run again at that rate, lost mostly {}", w.main_place()))
        );
        cells.push(Cell { system, network: client.network().into(), size, rate, search, lost_at });
    }
    Ok(cells)
}

/// Short slow trials until one gets every echo back: the server has answered ARP and taken a
/// datagram of this size once, so the search's first trial measures the rate, not the start.
fn warm_up(client: Client, peer: SocketAddr, size: usize) -> Result<()> {
    let plan = Plan { trial: Duration::from_millis(200), drain: Duration::from_millis(500), ..FULL };
    for _ in 0..100 {
        let trial = client.trial(peer, size, 50, &plan)?.trial;
        if trial.sent > 0 && trial.received == trial.sent {
            return Ok(());
        }
    }
    bail!("{peer} never echoed all of 10 {size}-byte datagrams in 100 tries")
}

/// Prints the cells: the rates, then where the lowest failing rate lost its datagrams.
pub fn print(cells: &[Cell], plan: &Plan) {
    if cells.is_empty() {
        return;
    }
    println!(
        "open loop: highest rate with < 1% loss, echoes/s, one guest, {:.1} s per trial in {} ms ticks (TCG, wall clock):",
        plan.trial.as_secs_f64(),
        TICK.as_millis()
    );
    println!(
        "{:<6} {:<5} {:>5} {:>9} {:>9} {:>7} | at the lowest failing rate: {:>8} {:>8} {:>8} {:>8} {:>8} {:>8} {:>8} {:>8}",
        "system",
        "net",
        "size",
        "rate",
        "failing",
        "loss%",
        "sent",
        "recvd",
        "no-kern",
        "kern",
        "kern-?",
        "server",
        "server-?",
        "after"
    );
    for c in cells {
        let failing = c.search.lowest_failing;
        print!(
            "{:<6} {:<5} {:>5} {:>9} {:>9} {:>7}",
            c.system.name(),
            c.network,
            c.size,
            c.rate,
            failing.map_or("-".into(), |f| f.rate.to_string()),
            failing.map_or("-".into(), |f| format!("{:.1}", f.loss() * 100.0))
        );
        match &c.lost_at {
            Some(w) => {
                let moved: Vec<String> = w.counters.iter().map(|(k, v)| format!("{k}={v}")).collect();
                let h = w.host;
                println!(
                    " | {:>35} {:>8} {:>8} {:>8} {:>8} {:>8} {:>8} {:>8}  {} host: rcvbuf={} tap_tx={} tap_rx={}",
                    w.sent,
                    w.received,
                    w.never_reached_kernel(),
                    w.kernel_drops,
                    w.kernel_uncounted(),
                    w.server_drops,
                    w.server_uncounted(),
                    w.lost_after_echo(),
                    moved.join(" "),
                    h.udp_rcvbuf_errors,
                    h.tap_tx_dropped,
                    h.tap_rx_dropped
                )
            }
            None => println!(" |"),
        }
    }
    println!(
        "(no-kern: sent but never handed to the kernel; kern: dropped and counted by the kernel; kern-?: reached it, \
         neither handed on nor counted; server: counted drops of the echo server (our guest, Linux's UDP socket); \
         server-?: reached it, neither echoed nor counted; after: echoed, never received)"
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A server that echoes up to `capacity` datagrams per second of the trial.
    fn server(capacity: u64, rates: &mut Vec<u64>) -> impl FnMut(u64) -> Result<Trial> + '_ {
        move |rate| {
            rates.push(rate);
            let sent = rate * 4;
            Ok(Trial { rate, sent, received: sent.min(capacity * 4) })
        }
    }

    const ONCE: Plan = Plan { retry_failures: false, ..FULL };

    #[test]
    fn the_search_doubles_then_bisects_to_the_plan_s_resolution() {
        let mut rates = Vec::new();
        let found = search(&ONCE, server(11_300, &mut rates)).unwrap();
        assert_eq!(rates, [1_000, 2_000, 4_000, 8_000, 16_000, 12_000, 10_000, 11_000, 11_500, 11_250]);
        assert_eq!(found.best.map(|t| t.rate), Some(11_250));
        assert_eq!(found.lowest_failing.map(|t| t.rate), Some(11_500));
        assert_eq!(found.trials.len(), rates.len());
    }

    #[test]
    fn a_rate_just_over_the_capacity_passes_within_the_loss_limit() {
        let t = Trial { rate: 10_000, sent: 40_000, received: 39_601 };
        assert!(t.passes(), "{}", t.loss());
        assert!(!Trial { received: 39_600, ..t }.passes());
        assert!(!Trial::default().passes(), "nothing sent is no pass");
    }

    #[test]
    fn a_first_rate_that_fails_is_halved_then_bisected() {
        let mut rates = Vec::new();
        let found = search(&ONCE, server(300, &mut rates)).unwrap();
        assert_eq!(rates, [1_000, 500, 250, 375]);
        assert_eq!((found.best.map(|t| t.rate), found.lowest_failing.map(|t| t.rate)), (Some(250), Some(375)));
        let mut rates = Vec::new();
        let found = search(&ONCE, server(0, &mut rates)).unwrap();
        assert_eq!(rates, [1_000, 500, 250, 125]);
        assert_eq!(found.best, None);
    }

    #[test]
    fn a_failure_is_tried_again_and_a_hiccup_does_not_end_the_doubling() {
        // The trial at 4,000/s hits a hiccup the first time only.
        let mut rates = Vec::new();
        let mut hiccup = true;
        let found = search(&FULL, |rate| {
            rates.push(rate);
            let sent = rate * 4;
            let received = if rate == 4_000 && std::mem::take(&mut hiccup) { sent / 2 } else { sent.min(11_300 * 4) };
            Ok(Trial { rate, sent, received })
        })
        .unwrap();
        assert_eq!(
            rates,
            [1_000, 2_000, 4_000, 4_000, 8_000, 16_000, 16_000, 12_000, 12_000, 10_000, 11_000, 11_500, 11_500, 11_250]
        );
        assert_eq!(found.best.map(|t| t.rate), Some(11_250));
        assert_eq!(found.retried.iter().map(|t| t.rate).collect::<Vec<_>>(), [4_000, 16_000, 12_000, 11_500]);
        assert_eq!(found.trials.len(), 10, "one verdict per rate");
    }

    #[test]
    fn a_server_faster_than_the_plan_stops_at_its_highest_rate() {
        let mut rates = Vec::new();
        let found = search(&QUICK, server(1_000_000, &mut rates)).unwrap();
        assert_eq!(rates, [1_000, 2_000, 4_000, 8_000, 16_000, 32_000, 64_000]);
        assert_eq!((found.best.map(|t| t.rate), found.lowest_failing), (Some(64_000), None));
    }

    #[test]
    fn paced_trials_against_a_local_echo_server_count_every_echo() {
        let server = UdpSocket::bind("127.0.0.1:0").unwrap();
        let peer = server.local_addr().unwrap();
        std::thread::spawn(move || {
            let mut buf = [0u8; 2048];
            let mut count = 0u64;
            while let Ok((len, from)) = server.recv_from(&mut buf) {
                count += 1;
                if !count.is_multiple_of(10) {
                    server.send_to(&buf[..len], from).unwrap(); // one in ten lost
                }
            }
        });
        let t = paced(peer, 100, 2_000, Duration::from_millis(100), Duration::from_millis(300)).unwrap();
        assert_eq!(t.sent, 200, "2,000/s for 100 ms");
        assert_eq!(t.received, 180);
        assert!(!t.passes());
    }

    #[test]
    fn where_the_datagrams_went_adds_up() {
        let before: Counters = ledger::pairs("nic_rx_frames=10 rx_packets=10 drops_no_buffer=1 guest_app_echoes=9");
        let after: Counters = ledger::pairs(
            "nic_rx_frames=1010 rx_packets=900 drops_no_buffer=51 drops_fifo_full=10 guest_drops_socket_full=40 \
             guest_app_echoes=809",
        );
        let trial = ClientTrial { trial: Trial { rate: 250, sent: 1_100, received: 790 }, host: HostDrops::default() };
        let w = Where::ours(&trial, &before, &after);
        assert_eq!(
            (w.reached_kernel, w.kernel_drops, w.reached_server, w.server_drops, w.echoed),
            (1000, 60, 890, 40, 800)
        );
        assert_eq!(
            (w.never_reached_kernel(), w.kernel_uncounted(), w.server_uncounted(), w.lost_after_echo()),
            (100, 50, 50, 10)
        );
        assert_eq!(w.main_place(), "in the kernel");
        let moved: Vec<(&str, u64)> = w.counters.iter().map(|(k, v)| (k.as_str(), *v)).collect();
        assert_eq!(moved, [("drops_fifo_full", 10), ("drops_no_buffer", 50), ("guest_drops_socket_full", 40)]);
        let linux = Where::linux(
            &trial,
            &ledger::pairs("eth0_rx_packets=5 udp_InDatagrams=5 udp_OutDatagrams=5"),
            &ledger::pairs(
                "eth0_rx_packets=705 eth0_rx_drop=0 udp_InDatagrams=605 udp_InErrors=100 udp_OutDatagrams=605",
            ),
        );
        assert_eq!(linux.never_reached_kernel(), 400);
        assert_eq!((linux.reached_server, linux.server_drops, linux.server_uncounted()), (700, 100, 0));
        assert_eq!(linux.main_place(), "never reached the kernel");
    }
}
