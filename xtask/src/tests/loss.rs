//! No silent loss: bursts of datagrams, sent back to back from the host to the four `udp-echo`
//! guests over the tap network, every echo compared byte for byte.
//!
//! - A burst as large as a guest's rx ring (32 datagrams to each guest) loses nothing, for
//!   sizes from 0 to 1472 bytes, under either transmit path: the guest takes frames from its
//!   ring only as fast as its socket holds them, and the echo waits for room to send.
//! - A burst of twice that overloads the ring: whatever is lost equals the sum of the drop
//!   counters, the kernel's and the guests' (and the host's, which must stay 0), and the
//!   ledgers of `stats:` balance at every line ([`crate::ledger`]).
//!
//! The host sends nothing else: IPv6 is off on the tap device and the guests' addresses are
//! permanent neighbour entries, so no stray frame takes a ring slot or a drop count.

use super::*;
use crate::burst::{HostDrops, PeerResult};
use crate::ledger;
use crate::tapnet::{TapNamespace, TAP_IFNAME};
use hypercall_abi::vnic::{GuestCounter, RX_RING_SIZE};

/// Datagrams per guest in a burst that fills a guest's rx ring exactly.
const RING: usize = RX_RING_SIZE as usize;
/// The largest UDP payload at the standard MTU.
const MAX_PAYLOAD: usize = 1472;
/// A burst is over when no echo has come for this long.
const SETTLE_MS: u64 = 700;

/// `count` sizes spread from 0 to [`MAX_PAYLOAD`], with 1 among them.
fn spread(count: usize) -> Vec<usize> {
    (0..count).map(|i| if i == 1 { 1 } else { i * MAX_PAYLOAD / (count - 1) }).collect()
}

/// One burst's sizes (each guest gets one datagram of each) and what came back from each guest.
struct BurstResult {
    sizes: Vec<usize>,
    peers: Vec<(String, PeerResult)>,
    host: HostDrops,
}

struct Run {
    image: Image,
    outcome: Outcome,
    bursts: Vec<BurstResult>,
}

fn setup_error(what: &str, e: impl std::fmt::Display, log: String) -> Failure {
    failure(format!("{what}: {e}"), log)
}

/// Runs `command` (in the namespace); its stdout, or a failure with its output.
fn run_in_namespace(
    mut command: Command,
    what: &str,
    log: impl Fn() -> String,
) -> std::result::Result<String, Failure> {
    let out = command.output().map_err(|e| setup_error(what, e, log()))?;
    if !out.status.success() {
        let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
        return Err(failure(format!("{what} failed: {}", text.trim()), log()));
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Boots `udp-echo` on the tap network with per-guest stats, runs a one-datagram warm-up (the
/// guests learn the host's MAC) and then each burst, and ends the run. `None`: no tap network
/// can be made here (the reason is in the error).
fn burst_run(
    ctx: &Ctx,
    tx: TxMode,
    bursts: &[Vec<usize>],
) -> std::result::Result<std::result::Result<Run, String>, Failure> {
    let image = pack::pack_image("udp-echo", &ctx.artifacts, NetPlan::TAP)
        .map_err(|e| failure(format!("{e:#}"), String::new()))?;
    let namespace = match TapNamespace::create(&NetPlan::TAP, image.manifest.kernel.mtu) {
        Ok(ns) => ns,
        Err(e) => return Ok(Err(format!("cannot create a tap device in a network namespace: {e:#}"))),
    };
    // Nothing but our datagrams may reach the guests: no IPv6 chatter, no ARP from the host.
    let ipv6 = format!("/proc/sys/net/ipv6/conf/{TAP_IFNAME}/disable_ipv6");
    let mut off = namespace.command("sh");
    off.args(["-c", &format!("[ ! -e {ipv6} ] || echo 1 > {ipv6}")]);
    run_in_namespace(off, "turning IPv6 off on the tap device", String::new)?;
    let guests: Vec<_> = image.guests.iter().filter_map(|g| g.net).collect();
    for net in &guests {
        let mac = net.mac.iter().map(|b| format!("{b:02x}")).collect::<Vec<_>>().join(":");
        let mut neigh = namespace.command("ip");
        neigh.args(["neigh", "replace", &crate::manifest::format_ip(net.ipv4), "lladdr", &mac]);
        neigh.args(["nud", "permanent", "dev", TAP_IFNAME]);
        run_in_namespace(neigh, "adding a permanent neighbour entry", String::new)?;
    }
    let append = format!("log=info shutdown_after=300 tx={} {}=per-guest", tx.name(), keys::STATS);
    let config = QemuConfig {
        net: Some(NetBackend::Tap { ifname: TAP_IFNAME.into() }),
        netns: Some(&namespace.name),
        ..QemuConfig::for_image(&image, Accel::Tcg, append)
    };
    let mut session =
        Session::start(config.command(), TCG_TIMEOUT, false).map_err(|e| failure(format!("{e:#}"), String::new()))?;
    wait_listening(&mut session, guests.len())?;
    let peers =
        guests.iter().map(|n| format!("{}:7", crate::manifest::format_ip(n.ipv4))).collect::<Vec<_>>().join(",");
    let exe = crate::setup::client_exe().map_err(|e| failure(format!("{e:#}"), String::new()))?;
    let mut results = Vec::new();
    let warm_up = vec![1];
    for (seed, sizes) in std::iter::once(&warm_up).chain(bursts).enumerate() {
        let mut client = namespace.command(&exe.to_string_lossy());
        let sizes_arg = sizes.iter().map(|s| s.to_string()).collect::<Vec<_>>().join(",");
        client.args(["udp-burst", "--peers", &peers, "--sizes", &sizes_arg, "--seed", &seed.to_string()]);
        client.args(["--settle-ms", &SETTLE_MS.to_string(), "--tap", TAP_IFNAME]);
        let text = run_in_namespace(client, "udp-burst", || session.log())?;
        let Some((peer_results, host)) = crate::burst::parse_output(&text) else {
            return Err(failure(format!("unreadable udp-burst output: {text}"), session.log()));
        };
        results.push(BurstResult { sizes: sizes.clone(), peers: peer_results, host });
    }
    session.request_quit();
    let outcome = session.finish().map_err(|e| failure(format!("{e:#}"), String::new()))?;
    drop(namespace);
    Ok(Ok(Run { image, outcome, bursts: results }))
}

/// Checks every run shares: guests as expected, the ledgers balanced at every `stats:` line and
/// on every guest's line, nothing corrupted, the transmit path the one asked for, and each
/// guest's echo count equal to the intact echoes its peer got (nothing lost after the echo).
/// Returns the final stats and the per-guest stats.
fn common_checks(run: &Run, tx: TxMode) -> std::result::Result<(ledger::Counters, BTreeMapOfGuests), Failure> {
    let outcome = &run.outcome;
    check_guest_expectations(&run.image, outcome)?;
    let balanced = ledger::check_log(&outcome.log);
    check(outcome, balanced.is_ok(), || format!("the loss ledger does not balance: {balanced:?}"))?;
    let stats = final_stats(outcome)?;
    let get = |name: &str| stats.get(name).copied().unwrap_or(0);
    match tx {
        TxMode::Copy => {
            check(outcome, get("tx_bytes_copied") == 2 * get("tx_bytes") && get("cow_protects") == 0, || {
                format!("the copy path did not copy every byte twice: {stats:?}")
            })?
        }
        TxMode::Cow => check(outcome, get("tx_bytes_copied") == 0 && get("cow_protects") > 0, || {
            format!("the COW path copied bytes or protected nothing: {stats:?}")
        })?,
        // Frames up to COPY_WHOLE_MAX (all of these: MTU 1500) are copied twice, as on the copy
        // path; longer ones would leave their payload in place.
        TxMode::Split => check(
            outcome,
            get("tx_bytes_copied") <= 2 * get("tx_bytes") && get("cow_protects") == 0 && get("tlb_flushes") == 0,
            || format!("the split path copied more than twice or protected pages: {stats:?}"),
        )?,
    }
    let guests = ledger::last_guest_stats(&outcome.log);
    let names: Vec<&String> = run.image.guests.iter().map(|g| &g.name).collect();
    check(outcome, names.iter().all(|n| guests.contains_key(*n)), || {
        format!("a guest-stats line is missing: {:?}", guests.keys().collect::<Vec<_>>())
    })?;
    for burst in &run.bursts {
        check(outcome, burst.peers.len() == names.len() && burst.peers.iter().all(|(_, r)| r.corrupted == 0), || {
            format!("burst of {:?}: corrupted echoes or peers missing: {:?}", burst.sizes, burst.peers)
        })?;
    }
    let echoes = GuestCounter::AppEchoes.name();
    for (index, name) in names.iter().enumerate() {
        let intact: u64 = run.bursts.iter().filter_map(|b| b.peers.get(index)).map(|(_, r)| r.intact).sum();
        let echoed = guests.get(*name).and_then(|g| g.get(echoes)).copied().unwrap_or(0);
        check(outcome, echoed == intact, || format!("{name} echoed {echoed} datagrams, its peer got {intact} intact"))?;
    }
    Ok((stats, guests))
}

type BTreeMapOfGuests = std::collections::BTreeMap<String, ledger::Counters>;

/// Bursts as large as the rx ring, to each of the four guests, sizes 0 to 1472: zero loss, the
/// kernel holding what finds no posted buffer.
pub(super) fn ring_burst_no_loss(ctx: &Ctx, tx: TxMode) -> TestResult {
    let mut bursts: Vec<Vec<usize>> = [0, 1, 100, 1000, MAX_PAYLOAD].iter().map(|&size| vec![size; RING]).collect();
    bursts.push(spread(RING));
    let run = match burst_run(ctx, tx, &bursts)? {
        Ok(run) => run,
        Err(reason) => return Ok(Verdict::Skip(reason)),
    };
    let (stats, guests) = common_checks(&run, tx)?;
    let outcome = &run.outcome;
    for burst in &run.bursts {
        let lost: Vec<_> = burst.peers.iter().filter(|(_, r)| r.intact != r.sent).collect();
        check(outcome, lost.is_empty(), || {
            format!("a burst of {} datagrams ({:?}) lost some: {lost:?}", burst.sizes.len(), &burst.sizes[..3])
        })?;
    }
    let host: u64 = run.bursts.iter().map(|b| b.host.total()).sum();
    check(outcome, ledger::kernel_drops(&stats) == 0 && ledger::guest_drops(&stats) == 0 && host == 0, || {
        format!("drops counted without loss (host {host}): {stats:?}")
    })?;
    // The first burst met a guest posting one rx buffer: the kernel held the rest for it (and
    // holds none at the end), so the hold, not the ring alone, made it lossless.
    let held = |name: &str| stats.get(name).copied().unwrap_or(0);
    check(outcome, held("rx_held") > 0 && held("rx_held_now") == 0, || {
        format!("expected frames held for the guests, none left held: {stats:?}")
    })?;
    let sent: u64 = run.bursts.iter().flat_map(|b| &b.peers).map(|(_, r)| r.sent).sum();
    let echoed = stats.get(GuestCounter::AppEchoes.name()).copied().unwrap_or(0);
    check(outcome, echoed == sent, || format!("{sent} datagrams sent, the guests echoed {echoed}"))?;
    check(outcome, guests.len() == run.image.guests.len(), || format!("guest-stats lines: {guests:?}"))?;
    Ok(Verdict::Pass)
}

/// Bursts of twice the ring: the loss equals the drop counters, and the ledgers balance.
pub(super) fn overload_burst_counted(ctx: &Ctx, tx: TxMode) -> TestResult {
    let bursts = vec![vec![MAX_PAYLOAD; 2 * RING], spread(2 * RING), vec![0; 2 * RING]];
    let run = match burst_run(ctx, tx, &bursts)? {
        Ok(run) => run,
        Err(reason) => return Ok(Verdict::Skip(reason)),
    };
    let (stats, _) = common_checks(&run, tx)?;
    let outcome = &run.outcome;
    let sent: u64 = run.bursts.iter().flat_map(|b| &b.peers).map(|(_, r)| r.sent).sum();
    let intact: u64 = run.bursts.iter().flat_map(|b| &b.peers).map(|(_, r)| r.intact).sum();
    let lost = sent - intact;
    let (kernel, guest) = (ledger::kernel_drops(&stats), ledger::guest_drops(&stats));
    let host: u64 = run.bursts.iter().map(|b| b.host.total()).sum();
    check(outcome, lost > 0, || format!("bursts of twice the ring lost nothing ({sent} sent): not an overload"))?;
    check(outcome, lost == kernel + guest + host, || {
        format!(
            "{lost} of {sent} datagrams lost, but the drop counters say kernel {kernel} + guests {guest} + host {host}"
        )
    })?;
    // Backpressure: the loss is at the kernel's full rings, none in the guests' sockets.
    check(outcome, guest == 0 && stats.get("drops_no_buffer") == Some(&kernel), || {
        format!("expected every loss as drops_no_buffer and none in the guests: {stats:?}")
    })?;
    Ok(Verdict::Pass)
}
