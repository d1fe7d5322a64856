//! Performance isolation (issue 14), over QEMU's user network under TCG: echo guests beside
//! hogs of every kind, CPU shares under weights, a transmit rate limit under a flood. The
//! numbers come from the kernel's per-guest counters (`stats=per-guest`), not from wall time;
//! latency tails are judged in `cargo xtask bench isolation`, not here.

use super::*;
use crate::isobench;
use crate::ledger;

/// Echoes sent to each echo guest (every one must come back, with no retry).
const ECHOES_PER_GUEST: usize = 40;
/// Generous for one echo under TCG on a loaded host; a lost one fails the test.
const ECHO_TIMEOUT: Duration = Duration::from_secs(3);

fn counter(c: &ledger::Counters, key: &str) -> u64 {
    c.get(key).copied().unwrap_or(0)
}

/// Per-guest counters of `name` from the run's last `guest-stats:` lines.
fn guest_counters(outcome: &Outcome, name: &str) -> std::result::Result<ledger::Counters, Failure> {
    isobench::guest_counters(outcome, name).map_err(|e| failure(format!("{e:#}"), outcome.log.clone()))
}

/// Sends `ECHOES_PER_GUEST` echoes of 100 and 1400 bytes to each of `peers` (no retry): how
/// many came back intact, of how many sent, per peer.
fn echo_every_peer(peers: &[(String, u16)], session: &Session) -> std::result::Result<Vec<usize>, Failure> {
    let mut intact = Vec::new();
    for (i, (name, port)) in peers.iter().enumerate() {
        let peer = std::net::SocketAddr::from(([127, 0, 0, 1], *port));
        let report = udp::echo_check(peer, &[100, 1400], ECHOES_PER_GUEST / 2, 0, ECHO_TIMEOUT, 0x150 + i as u64)
            .map_err(|e| failure(format!("echoes to {name}: {e:#}"), session.log()))?;
        if report.intact != ECHOES_PER_GUEST {
            return Err(failure(
                format!("{name} via {peer}: {report:?}, {ECHOES_PER_GUEST} intact wanted"),
                session.log(),
            ));
        }
        intact.push(report.intact);
    }
    Ok(intact)
}

/// The `isolation` image: two echo guests beside a virtual-instruction storm, a transmit storm
/// and a CPU spinner, all at once. Every echo comes back intact at the first try, while each
/// hog demonstrably ran (a tenth of the CPU at least) and did its damage all along (the storm
/// 100 virtual instructions per ms of its CPU time at least, the transmit storm 5 frames); the
/// echo guests' own ledgers balance and the kernel counted their wake-ups.
pub(super) fn echo_beside_hogs(ctx: &Ctx) -> TestResult {
    let image = pack::pack_image("isolation", &ctx.artifacts, NetPlan::USER)
        .map_err(|e| failure(format!("{e:#}"), String::new()))?;
    let _sink = isobench::bind_flood_sink();
    let base = host_port_base();
    let forwards = isobench::forwards(&image, base);
    let echoes: Vec<(String, u16)> =
        forwards.iter().filter(|(name, _, _)| name.starts_with("echo")).map(|(n, p, _)| (n.clone(), *p)).collect();
    check_count(echoes.len() == 2, || format!("the isolation image should hold 2 echo guests: {echoes:?}"))?;
    let mut session = isobench::start(&image, base, 300).map_err(|e| failure(format!("{e:#}"), String::new()))?;
    wait_listening(&mut session, echoes.len())?;
    echo_every_peer(&echoes, &session)?;
    session.request_quit();
    let outcome = session.finish().map_err(|e| failure(format!("{e:#}"), String::new()))?;
    check_guest_expectations(&image, &outcome)?;
    for (name, _) in &echoes {
        let c = guest_counters(&outcome, name)?;
        let balanced = ledger::check_guest(&c);
        check(&outcome, balanced.is_ok(), || format!("{name}: {balanced:?}"))?;
        check(&outcome, counter(&c, "guest_app_echoes") == ECHOES_PER_GUEST as u64, || {
            format!("{name} echoed {} datagrams, {ECHOES_PER_GUEST} sent", counter(&c, "guest_app_echoes"))
        })?;
        check(&outcome, counter(&c, "wakes") > 0, || format!("{name}: no wake-up counted: {c:?}"))?;
    }
    // Each hog had a real part of the CPU while the echoes went on (five guests: a tenth of
    // the time at least), and did its kind of damage.
    let seconds = isobench::guests_ran_seconds(&outcome.log).unwrap_or(0.0);
    for hog in ["vi-storm", "tx-storm", "spinner"] {
        let c = guest_counters(&outcome, hog)?;
        let cpu = counter(&c, "cpu_us") as f64 / 1e6;
        check(&outcome, cpu >= 0.1 * seconds, || format!("{hog} had {cpu:.3} s of the CPU in {seconds:.3} s"))?;
    }
    // And each did its kind of damage the whole time it ran (rates per millisecond of its CPU
    // time, so the test does not depend on how long the echoes took).
    let cpu_ms = |c: &ledger::Counters| (counter(c, "cpu_us") / 1_000).max(1);
    let storm = guest_counters(&outcome, "vi-storm")?;
    let storm_vis = checks::guest_work(&outcome.log).get("vi-storm").map_or(0, |w| w.virtual_instructions);
    check(&outcome, storm_vis >= 100 * cpu_ms(&storm), || {
        format!("the storm issued {storm_vis} virtual instructions in {} ms", cpu_ms(&storm))
    })?;
    let tx_storm = guest_counters(&outcome, "tx-storm")?;
    check(&outcome, counter(&tx_storm, "tx_packets") >= 5 * cpu_ms(&tx_storm), || {
        format!("the transmit storm sent little: {tx_storm:?}")
    })?;
    let stats = final_stats(&outcome)?;
    check(&outcome, stats.get("wake_boosts").is_some_and(|&b| b > 0), || format!("no wake ran ahead: {stats:?}"))?;
    Ok(Verdict::Pass)
}

fn check_count(ok: bool, reason: impl FnOnce() -> String) -> std::result::Result<(), Failure> {
    if ok {
        Ok(())
    } else {
        Err(failure(reason(), String::new()))
    }
}

/// Seconds the weights run lasts.
const WEIGHTS_SECONDS: u64 = 4;

/// The `cpu-weights` image: two spinners of weights 1 and 3 for a few seconds; the kernel's CPU
/// time of each (its per-guest counters) is within 10% of 1:3, and together they had the CPU.
pub(super) fn cpu_weights_one_to_three(ctx: &Ctx) -> TestResult {
    let image = pack::pack_image("cpu-weights", &ctx.artifacts, NetPlan::USER)
        .map_err(|e| failure(format!("{e:#}"), String::new()))?;
    let (outcome, shares) =
        isobench::cpu_shares(&image, WEIGHTS_SECONDS).map_err(|e| failure(format!("{e:#}"), String::new()))?;
    check_guest_expectations(&image, &outcome)?;
    let find = |name: &str| shares.iter().find(|s| s.guest == name);
    let (Some(light), Some(heavy)) = (find("light"), find("heavy")) else {
        return Err(failure(format!("no CPU time for light and heavy: {shares:?}"), outcome.log));
    };
    check(&outcome, (light.cpu_weight, heavy.cpu_weight) == (1, 3), || {
        format!("the kernel reports weights {} and {}, the image says 1 and 3", light.cpu_weight, heavy.cpu_weight)
    })?;
    let ratio = heavy.cpu_us as f64 / light.cpu_us.max(1) as f64;
    check(&outcome, (ratio / 3.0 - 1.0).abs() <= 0.10, || {
        format!("CPU time heavy:light = {ratio:.3} ({} us : {} us), 3 +- 10% wanted", heavy.cpu_us, light.cpu_us)
    })?;
    let seconds = isobench::guests_ran_seconds(&outcome.log).unwrap_or(0.0);
    let busy = (light.cpu_us + heavy.cpu_us) as f64 / 1e6;
    check(&outcome, busy >= 0.9 * seconds, || format!("the spinners had {busy:.2} s of {seconds:.2} s"))?;
    println!("cpu weights 1:3: CPU time {} us : {} us = 1:{ratio:.3} over {seconds:.2} s", light.cpu_us, heavy.cpu_us);
    Ok(Verdict::Pass)
}

/// Seconds the rate-limited flood runs.
const FLOOD_SECONDS: u64 = 5;

/// The `tx-limit` image: a guest floods 1000-byte frames limited to 300,000 bytes/s and 500
/// packets/s beside an echo guest. What it sent per second (the kernel's per-guest counters,
/// over the time its guests ran) is within 10% of its byte limit and below its packet limit;
/// frames were held back (counted) and none dropped; every echo of the neighbour came back.
pub(super) fn tx_limit_holds_a_flood(ctx: &Ctx) -> TestResult {
    let image = pack::pack_image("tx-limit", &ctx.artifacts, NetPlan::USER)
        .map_err(|e| failure(format!("{e:#}"), String::new()))?;
    let limit = isobench::byte_limit(&image.manifest, "flood")
        .ok_or_else(|| failure("the tx-limit image's flood guest has no byte limit", String::new()))?;
    let packet_limit = image
        .manifest
        .guests
        .iter()
        .find_map(|g| g.tx_limit?.packets)
        .map(|b| b.size as f64 * 1000.0 / b.refill_time_ms as f64)
        .unwrap_or(f64::MAX);
    let _sink = isobench::bind_flood_sink();
    let base = host_port_base();
    let echo: Vec<(String, u16)> = isobench::forwards(&image, base)
        .into_iter()
        .filter(|(name, _, _)| name == "echo")
        .map(|(n, p, _)| (n, p))
        .collect();
    let mut session =
        isobench::start(&image, base, FLOOD_SECONDS).map_err(|e| failure(format!("{e:#}"), String::new()))?;
    wait_listening(&mut session, 1)?;
    echo_every_peer(&echo, &session)?;
    let outcome = session.finish().map_err(|e| failure(format!("{e:#}"), String::new()))?;
    check_guest_expectations(&image, &outcome)?;
    let (seconds, packets, bytes, held_back) =
        isobench::flood_rates(&outcome, "flood").map_err(|e| failure(format!("{e:#}"), outcome.log.clone()))?;
    check(&outcome, seconds >= FLOOD_SECONDS as f64 / 2.0, || format!("the guests ran only {seconds:.2} s"))?;
    check(&outcome, (bytes / limit - 1.0).abs() <= 0.10, || {
        format!("the flood sent {bytes:.0} bytes/s over {seconds:.2} s; its limit is {limit:.0} (+-10%)")
    })?;
    check(&outcome, packets <= packet_limit * 1.10, || {
        format!("the flood sent {packets:.0} packets/s; its limit is {packet_limit:.0}")
    })?;
    check(&outcome, held_back > 0, || "no frame of the flood was held back".into())?;
    let stats = final_stats(&outcome)?;
    let get = |name: &str| stats.get(name).copied().unwrap_or(0);
    check(&outcome, get("tx_held_back") == held_back, || {
        format!("stats: tx_held_back {} but the flood guest's is {held_back}", get("tx_held_back"))
    })?;
    check(&outcome, get("drops_fifo_full") == 0 && get("drops_bad_desc") == 0, || {
        format!("held frames must not be dropped: {stats:?}")
    })?;
    println!(
        "tx limit {limit:.0} B/s: the flood sent {bytes:.0} B/s ({packets:.0} packets/s) over {seconds:.2} s, \
         {held_back} frames held back"
    );
    Ok(Verdict::Pass)
}
