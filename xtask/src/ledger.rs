//! The accounting of lost packets, read from the kernel's log: every frame the NIC handed over
//! is delivered into a guest or counted by a kernel drop counter, and every datagram a guest
//! took is echoed, consumed, still waiting, or counted by one of its own drop counters.
//!
//! The kernel's `stats:` line carries its own counters and the guests' (`guest_*`, summed over
//! guests); with `stats=per-guest` a `guest-stats:` line per guest follows it.

use hypercall_abi::cmdline::{GUEST_STATS_PREFIX, STATS_PREFIX};
use hypercall_abi::vnic::GuestCounter;
use std::collections::BTreeMap;

pub type Counters = BTreeMap<String, u64>;

/// `name=value` pairs of a line (words without `=`, or with a value that is not a number, are
/// skipped: `name=udp-echo-0`).
fn pairs(text: &str) -> Counters {
    text.split_whitespace()
        .filter_map(|pair| {
            let (name, value) = pair.split_once('=')?;
            Some((name.to_string(), value.parse().ok()?))
        })
        .collect()
}

/// Every `stats:` line of the log, in order.
pub fn all_stats(log: &str) -> Vec<Counters> {
    log.lines().filter_map(|l| l.strip_prefix(STATS_PREFIX)).map(pairs).collect()
}

/// The last `stats:` line of the log (found from the end: the log of a long run is large).
pub fn last_stats(log: &str) -> Option<Counters> {
    let start = last_stats_start(log)?;
    log[start..].lines().next()?.strip_prefix(STATS_PREFIX).map(pairs)
}

/// Where the last `stats:` line starts.
fn last_stats_start(log: &str) -> Option<usize> {
    match log.rfind(&format!("\n{STATS_PREFIX}")) {
        Some(at) => Some(at + 1),
        None => log.starts_with(STATS_PREFIX).then_some(0),
    }
}

/// The `guest-stats:` lines after the last `stats:` line, by guest name.
pub fn last_guest_stats(log: &str) -> BTreeMap<String, Counters> {
    let start = last_stats_start(log).unwrap_or(0);
    log[start..]
        .lines()
        .filter_map(|l| l.strip_prefix(GUEST_STATS_PREFIX))
        .filter_map(|rest| {
            let name = rest.split_whitespace().find_map(|w| w.strip_prefix("name="))?;
            Some((name.to_string(), pairs(rest)))
        })
        .collect()
}

fn get(c: &Counters, name: &str) -> u64 {
    c.get(name).copied().unwrap_or(0)
}

fn guest(c: &Counters, counter: GuestCounter) -> u64 {
    get(c, counter.name())
}

/// Sum of the kernel's drop counters (every `drops_*` name; the guests' are `guest_drops_*`).
pub fn kernel_drops(c: &Counters) -> u64 {
    c.iter().filter(|(name, _)| name.starts_with("drops_")).map(|(_, v)| v).sum()
}

/// Sum of a guest's drop counters: its stack's, its apps', and frames its driver lost.
pub fn guest_drops(c: &Counters) -> u64 {
    use GuestCounter::*;
    [DropsMalformed, DropsSocketFull, DropsNoSocket, AppDrops, TxDropsRingFull, TxDropsTooLong]
        .iter()
        .map(|&counter| guest(c, counter))
        .sum()
}

/// The kernel's receive ledger: frames the NIC handed over (`nic_rx_frames`) = delivered into
/// guests (`rx_packets`) + each kernel drop counter + frames held for guests now (`rx_held_now`). Exact for images whose guests send nothing
/// the kernel drops (drops on the transmit side share these counters) and nothing to each
/// other (guest-to-guest frames are delivered too): the echo images.
pub fn check_kernel(c: &Counters) -> Result<(), String> {
    let (handed, delivered, drops) = (get(c, "nic_rx_frames"), get(c, "rx_packets"), kernel_drops(c));
    // Frames held for a guest that had no rx buffer posted are neither yet.
    let held = get(c, "rx_held_now");
    if handed != delivered + drops + held {
        return Err(format!(
            "kernel: nic_rx_frames={handed} but rx_packets={delivered} + drops={drops} + rx_held_now={held}"
        ));
    }
    Ok(())
}

/// The ledgers of a guest's own counters (one guest's, or the sums over guests):
/// frames taken = datagrams + TCP segments + other frames + malformed; datagrams = delivered to sockets +
/// socket full + no socket; delivered = taken by apps + still queued; taken by apps = echoed +
/// consumed + app drops + held; and so datagrams = echoed + consumed + queued + held + each
/// guest drop counter of the receive path. And TCP connections: accepted + opened = closed +
/// reset + timed out + still open.
pub fn check_guest(c: &Counters) -> Result<(), String> {
    use GuestCounter::*;
    let g = |counter| guest(c, counter);
    let ledgers = [
        ("rx_taken", g(RxTaken), g(RxDatagrams) + g(RxTcpSegments) + g(RxOther) + g(DropsMalformed)),
        ("rx_datagrams", g(RxDatagrams), g(UdpDelivered) + g(DropsSocketFull) + g(DropsNoSocket)),
        ("udp_delivered", g(UdpDelivered), g(AppReceived) + g(UdpQueued)),
        ("app_received", g(AppReceived), g(AppEchoes) + g(AppConsumed) + g(AppDrops) + g(AppHeld)),
        (
            "tcp_accepted+tcp_connects",
            g(TcpAccepted) + g(TcpConnects),
            g(TcpClosed) + g(TcpReset) + g(TcpTimedOut) + g(TcpOpen),
        ),
    ];
    for (name, total, parts) in ledgers {
        if total != parts {
            return Err(format!("guest: {name}={total} but its parts add up to {parts}"));
        }
    }
    Ok(())
}

/// Every ledger at every `stats:` line of the log, and on each guest's line after the last.
pub fn check_log(log: &str) -> Result<(), String> {
    let lines = all_stats(log);
    if lines.is_empty() {
        return Err("no stats line".into());
    }
    for (i, line) in lines.iter().enumerate() {
        check_kernel(line).and_then(|()| check_guest(line)).map_err(|e| format!("stats line {}: {e}", i + 1))?;
    }
    for (name, line) in last_guest_stats(log) {
        check_guest(&line).map_err(|e| format!("{name}: {e}"))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const BALANCED: &str = "stats: uptime_ms=1 nic_rx_frames=100 rx_packets=90 drops_no_buffer=7 \
        drops_unknown_mac=3 drops_spoof=0 guest_rx_taken=90 guest_rx_datagrams=80 guest_rx_other=6 guest_rx_tcp_segments=2 \
        guest_drops_malformed=2 guest_udp_delivered=77 guest_drops_socket_full=1 guest_drops_no_socket=2 \
        guest_udp_queued=3 guest_app_received=74 guest_app_echoes=70 guest_app_consumed=1 guest_app_drops=2 \
        guest_app_held=1 guest_tx_drops_ring_full=4 guest_tcp_accepted=5 guest_tcp_connects=2 \
        guest_tcp_closed=3 guest_tcp_reset=1 guest_tcp_timed_out=1 guest_tcp_open=2";

    #[test]
    fn balanced_counters_pass_and_sums_read_right() {
        let c = pairs(BALANCED.trim_start_matches(STATS_PREFIX));
        assert_eq!(check_kernel(&c), Ok(()));
        assert_eq!(check_guest(&c), Ok(()));
        assert_eq!(kernel_drops(&c), 10);
        assert_eq!(guest_drops(&c), 2 + 1 + 2 + 2 + 4);
    }

    #[test]
    fn each_imbalance_is_named() {
        for (from, to, what) in [
            ("drops_no_buffer=7", "drops_no_buffer=6", "nic_rx_frames=100"),
            ("guest_rx_other=6", "guest_rx_other=7", "rx_taken=90"),
            ("guest_drops_socket_full=1", "guest_drops_socket_full=0", "rx_datagrams=80"),
            ("guest_udp_queued=3", "guest_udp_queued=4", "udp_delivered=77"),
            ("guest_app_held=1", "guest_app_held=0", "app_received=74"),
            ("guest_rx_tcp_segments=2", "guest_rx_tcp_segments=3", "rx_taken=90"),
            ("guest_tcp_open=2", "guest_tcp_open=1", "tcp_accepted+tcp_connects=7"),
        ] {
            let line = BALANCED.replace(from, to);
            let c = pairs(line.trim_start_matches(STATS_PREFIX));
            let error = check_kernel(&c).and_then(|()| check_guest(&c)).unwrap_err();
            assert!(error.contains(what), "{from} -> {to}: {error}");
        }
    }

    #[test]
    fn per_guest_lines_after_the_last_stats_line() {
        let log = format!(
            "{BALANCED}\nguest-stats: id=0 name=old guest_rx_taken=5\n{BALANCED}\n\
             guest-stats: id=0 name=udp-echo-0 guest_rx_taken=2 guest_rx_other=2\n\
             guest-stats: id=1 name=udp-echo-1 guest_rx_taken=3 guest_rx_datagrams=2 guest_rx_other=1\n"
        );
        let guests = last_guest_stats(&log);
        assert_eq!(guests.keys().collect::<Vec<_>>(), ["udp-echo-0", "udp-echo-1"]);
        assert_eq!(guests["udp-echo-1"]["guest_rx_taken"], 3);
        assert_eq!(all_stats(&log).len(), 2);
        assert_eq!(last_stats(&log).as_ref(), all_stats(&log).last());
        assert_eq!(last_stats(BALANCED).map(|c| c["nic_rx_frames"]), Some(100));
        assert_eq!(last_stats("no stats\nstats-like: x=1"), None);
        // udp-echo-1 took 2 datagrams that went nowhere.
        let error = check_log(&log).unwrap_err();
        assert!(error.starts_with("udp-echo-1: guest: rx_datagrams=2"), "{error}");
        assert_eq!(check_log("no stats"), Err("no stats line".into()));
    }
}
