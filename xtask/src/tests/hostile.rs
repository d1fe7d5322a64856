//! Hostile guests against the vNIC rings, with a physical NIC so that frames are in flight when
//! the attacks come (images/net-hostile.toml), under both transmit paths. The kernel must survive,
//! refuse and count every bad index and descriptor (its counters equal what the hostile guests
//! report, exactly), never let a foreign source MAC onto the wire, clean up after a guest that
//! exits with frames at the NIC, and keep the echo guests beside them answering the host.

use super::{
    check, check_client_results, check_guest_expectations, check_nic, check_tx_path, failure, final_stats,
    host_port_base, pcap_source_macs, start_networked_pcap, wait_listening, Ctx, Failure, TestResult, Traffic, Verdict,
    NIC_TX_DELAY, TCG_TIMEOUT,
};
use crate::checks::{self, GuestEnd};
use crate::manifest::NetPlan;
use crate::pack;
use crate::qemu::{NetBackend, NicTransport, Outcome};
use crate::udp;
use crate::TxMode;
use std::collections::BTreeMap;
use std::time::{Duration, Instant};

/// QEMU user network's host (slirp) MAC: the source of every frame the NIC receives.
const SLIRP_MAC: [u8; 6] = [0x52, 0x55, 0x0a, 0x00, 0x02, 0x02];
/// The unused MAC the tx-ring guest puts in its spoofed frames (guest-os/src/bin/ring_hostile.rs).
const UNUSED_MAC: [u8; 6] = [0x02, 0x49, 0x4b, 0xee, 0xee, 0xee];
/// Guests of the image that end by themselves, and the rounds and frames their manifest asks for.
/// Bytes of each frame tx-ring sends (guest-os/src/bin/ring_hostile.rs: a 1000-byte payload).
const TX_RING_FRAME: u64 = 1014;
/// Bytes of each frame exit-in-flight sends (a 1500-byte payload).
const EXIT_IN_FLIGHT_FRAME: u64 = 1514;
const HOSTILE_GUESTS: [&str; 4] = ["bad-descriptors", "tx-ring", "rx-ring", "exit-in-flight"];
const TX_RING_ROUNDS: u64 = 20;
const EXIT_IN_FLIGHT_FRAMES: i32 = 8;
/// What the bad-descriptors guest (guest-os/src/bin/hostile.rs) does: 4 bad descriptors, one
/// spoofed frame, one producer index beyond the ring.
const BAD_DESCRIPTORS: [(&str, u64); 3] = [("desc_rejected", 4), ("spoof_rejected", 1), ("index_rejected", 1)];
/// Bad rx descriptors the rx-ring guest posts that no kernel may accept (a seventh, unaligned
/// inside its buffer, is the kernel's choice).
const RX_BAD_DESCRIPTORS: u64 = 6;
/// How long the hostile guests may take.
const ATTACK_TIMEOUT: Duration = Duration::from_secs(90);

type Reports = BTreeMap<String, BTreeMap<String, u64>>;

fn report(outcome: &Outcome, reports: &Reports, role: &str, key: &str) -> Result<u64, Failure> {
    reports.get(role).and_then(|r| r.get(key)).copied().ok_or_else(|| {
        failure(format!("no `{key}` in the hostile-report of {role}: {:?}", reports.get(role)), outcome.log.clone())
    })
}

pub(super) fn vnic_hostile_guests(ctx: &Ctx, tx: TxMode, nic: NicTransport) -> TestResult {
    let image = pack::pack_image("net-hostile", &ctx.artifacts, NetPlan::USER)
        .map_err(|e| failure(format!("{e:#}"), String::new()))?;
    let echo: Vec<_> = image.guests.iter().filter(|g| g.app == "udp-echo").filter_map(|g| g.net).collect();
    let base = host_port_base();
    let forwards = echo.iter().enumerate().map(|(i, n)| (base + i as u16, n.ipv4, 7)).collect();
    let peers: Vec<std::net::SocketAddr> =
        (0..echo.len()).map(|i| std::net::SocketAddr::from(([127, 0, 0, 1], base + i as u16))).collect();
    let pcap = image.dir.join(format!("net-hostile-{}-{nic:?}.pcap", tx.name()));
    let _ = std::fs::remove_file(&pcap);
    let mut session = start_networked_pcap(
        &image,
        NetBackend::User { forwards, tcp_forwards: Vec::new() },
        None,
        tx,
        nic,
        Some(&pcap),
        Some(NIC_TX_DELAY),
        TCG_TIMEOUT,
    )?;
    wait_listening(&mut session, echo.len())?;

    // The host echoes through every echo guest while the hostile guests attack, and once after.
    let clients: Vec<&str> = image.guests.iter().filter(|g| g.app == "udp-client").map(|g| g.name.as_str()).collect();
    let all_ended = |log: &str| {
        let ends = checks::guest_ends(log);
        HOSTILE_GUESTS.iter().chain(&clients).all(|name| ends.contains_key(*name))
    };
    let echo_round = |round: u64, log: &dyn Fn() -> String| -> Result<(), Failure> {
        for (i, peer) in peers.iter().enumerate() {
            let seed = round << 8 | i as u64;
            let report = udp::echo_check(*peer, &udp::TEST_SIZES, 1, 3, Duration::from_secs(2), seed)
                .map_err(|e| failure(format!("echo check of guest {i}: {e:#}"), log()))?;
            if report.intact != udp::TEST_SIZES.len() {
                return Err(failure(format!("echo round {round}, guest {i} via {peer}: {report:?}"), log()));
            }
        }
        Ok(())
    };
    let start = Instant::now();
    let (mut rounds, mut rounds_during_attack) = (0, 0);
    loop {
        let log = session.log();
        if log.lines().any(|l| l.starts_with("KERNEL PANIC") || l.starts_with("KERNEL FAULT")) {
            return Err(failure("the kernel went down under the hostile guests", log));
        }
        let attacking = !all_ended(&log);
        echo_round(rounds, &|| session.log())?;
        rounds += 1;
        rounds_during_attack += u64::from(attacking);
        if !attacking {
            break;
        }
        if start.elapsed() > ATTACK_TIMEOUT {
            return Err(failure("the hostile guests and clients did not all end", session.log()));
        }
    }
    session.request_quit();
    let outcome = session.finish().map_err(|e| failure(format!("{e:#}"), String::new()))?;
    check_guest_expectations(&image, &outcome)?;
    check_nic(&outcome, nic)?;
    check(&outcome, rounds_during_attack >= 1, || "no echo round ran while the hostile guests attacked".into())?;

    // How each hostile guest ended, and what it reports.
    let ends = checks::guest_ends(&outcome.log);
    for name in ["bad-descriptors", "tx-ring", "rx-ring"].iter().chain(&clients) {
        let end = ends.get(*name).map(|(_, end)| end);
        check(&outcome, end == Some(&GuestEnd::Exited(0)), || format!("{name} ended {end:?}, not with exit 0"))?;
    }
    check_client_results(&image, &outcome)?;
    let in_flight_at_exit = match ends.get("exit-in-flight").map(|(_, end)| end) {
        Some(GuestEnd::Exited(code)) if (0..=EXIT_IN_FLIGHT_FRAMES).contains(code) => u64::from(code.unsigned_abs()),
        end => return Err(failure(format!("exit-in-flight ended {end:?}"), outcome.log.clone())),
    };
    let reports = checks::hostile_reports(&outcome.log);
    for role in ["bad-descriptors", "tx-ring", "rx-ring"] {
        let failures = report(&outcome, &reports, role, "failures")?;
        check(&outcome, failures == 0, || format!("{role} saw {failures} wrong outcomes: {:?}", reports.get(role)))?;
    }
    for (key, want) in BAD_DESCRIPTORS {
        let got = report(&outcome, &reports, "bad-descriptors", key)?;
        check(&outcome, got == want, || format!("bad-descriptors: {key}={got}, {want} expected"))?;
    }
    let tx_rounds = report(&outcome, &reports, "tx-ring", "rounds")?;
    let in_flight_rounds = report(&outcome, &reports, "tx-ring", "in_flight_rounds")?;
    let tx_spoofs = report(&outcome, &reports, "tx-ring", "spoof_rejected")?;
    let tx_sent = report(&outcome, &reports, "tx-ring", "sent")?;
    check(&outcome, tx_rounds == TX_RING_ROUNDS && tx_spoofs == 2 * tx_rounds && tx_sent == 5 * tx_rounds, || {
        format!("tx-ring: {:?}", reports.get("tx-ring"))
    })?;
    match tx {
        // Copy completes every frame inside the kick: nothing is ever in flight.
        TxMode::Copy => check(&outcome, in_flight_rounds == 0 && in_flight_at_exit == 0, || {
            format!("frames in flight under copy: {in_flight_rounds} rounds, {in_flight_at_exit} at exit")
        })?,
        // Under COW the frames wait for the NIC (which holds them NIC_TX_DELAY): the attacks met
        // frames in flight in most rounds (all but those where the host stalled QEMU that long).
        TxMode::Cow => check(&outcome, in_flight_rounds >= tx_rounds / 2 && in_flight_at_exit >= 1, || {
            format!("no frame in flight under COW: {in_flight_rounds} rounds, {in_flight_at_exit} at exit")
        })?,
        // Under split a frame waits for the NIC only if it is longer than COPY_WHOLE_MAX (then
        // as under COW); shorter ones complete inside the kick, as under copy.
        TxMode::Split => {
            let waits = |frame: u64| frame > kernel_core::vnet::split::COPY_WHOLE_MAX;
            let rounds_ok =
                if waits(TX_RING_FRAME) { in_flight_rounds >= tx_rounds / 2 } else { in_flight_rounds == 0 };
            let exit_ok = if waits(EXIT_IN_FLIGHT_FRAME) { in_flight_at_exit >= 1 } else { in_flight_at_exit == 0 };
            check(&outcome, rounds_ok && exit_ok, || {
                format!("frames in flight under split: {in_flight_rounds} rounds, {in_flight_at_exit} at exit")
            })?
        }
    }
    let rx_index_dropped = report(&outcome, &reports, "rx-ring", "index_dropped")?;
    let rx_desc_rejected = report(&outcome, &reports, "rx-ring", "desc_rejected")?;
    check(&outcome, rx_index_dropped >= 1, || "no frame arrived while rx-ring's producer index was bad".into())?;
    check(&outcome, rx_desc_rejected >= RX_BAD_DESCRIPTORS, || {
        format!("rx-ring saw {rx_desc_rejected} rx descriptors refused, at least {RX_BAD_DESCRIPTORS} are bad")
    })?;

    // The kernel counted exactly what the hostile guests saw refused: bad descriptors (tx and
    // rx), frames into rx buffers too small, refused producer indices (one per refused tx kick,
    // one per frame that met a bad rx producer, which is also a drop), spoofed frames.
    let stats = final_stats(&outcome)?;
    let get = |name: &str| stats.get(name).copied().unwrap_or(0);
    let rx_small_rejected = report(&outcome, &reports, "rx-ring", "small_rejected")?;
    let tx_index_rejected = report(&outcome, &reports, "tx-ring", "index_rejected")?;
    let expected = [
        ("drops_bad_desc", BAD_DESCRIPTORS[0].1 + rx_desc_rejected),
        ("drops_rx_buffer_small", rx_small_rejected),
        ("bad_ring_indices", BAD_DESCRIPTORS[2].1 + tx_index_rejected + rx_index_dropped),
        ("drops_bad_rx_ring", rx_index_dropped),
        // Every spoofed frame sent (one by bad-descriptors, two per tx-ring round), whatever
        // the guests saw.
        ("drops_spoof", BAD_DESCRIPTORS[1].1 + 2 * TX_RING_ROUNDS),
        // Every slot with a frame in flight when exit-in-flight ended was freed once the NIC was
        // done with it (one frame per slot): no leak, no double free.
        ("zombies_freed", in_flight_at_exit),
    ];
    for (counter, want) in expected {
        check(&outcome, get(counter) == want, || {
            format!("{counter} is {} but the hostile guests saw {want}: {reports:?}", get(counter))
        })?;
    }
    check(&outcome, rx_small_rejected == 1, || {
        format!("rx-ring: {rx_small_rejected} too-small buffers refused, 1 posted")
    })?;
    check_tx_path(&outcome, tx, &stats, Traffic::Mixed)?;
    check(&outcome, get("nic_tx_frames") >= tx_sent, || format!("the NIC sent fewer than tx-ring's {tx_sent} frames"))?;

    // Nothing with a source MAC that is not its sender's crossed the NIC.
    let macs = pcap_source_macs(&std::fs::read(&pcap).unwrap_or_default());
    let guest_mac = |name: &str| image.guests.iter().find(|g| g.name == name).and_then(|g| g.net).map(|n| n.mac);
    let feeder = guest_mac("rx-feeder");
    let known: Vec<[u8; 6]> = image.guests.iter().filter_map(|g| g.net).map(|n| n.mac).collect();
    check(&outcome, !macs.is_empty() && macs.iter().all(|m| *m == SLIRP_MAC || known.contains(m)), || {
        format!("a frame with a source MAC of no guest crossed the NIC ({} frames)", macs.len())
    })?;
    check(&outcome, !macs.iter().any(|m| *m == UNUSED_MAC || Some(*m) == feeder), || {
        "a spoofed frame (the unused MAC, or rx-feeder's, which never uses the NIC) crossed the NIC".into()
    })?;
    let tx_ring_frames = macs.iter().filter(|m| Some(**m) == guest_mac("tx-ring")).count() as u64;
    check(&outcome, tx_ring_frames == tx_sent, || {
        format!("the pcap holds {tx_ring_frames} frames from tx-ring, which sent {tx_sent}")
    })?;
    Ok(Verdict::Pass)
}
