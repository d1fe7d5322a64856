//! Receive-side limits the kernel enforces, checked from a host on the tap network.

use super::*;

/// Pings of this payload make a 4,042-byte frame: longer than a 1500-MTU guest accepts, short
/// enough to fit the physical NIC's page-sized receive buffers, so it reaches the kernel.
const OVERSIZE_PING_PAYLOAD: &str = "4000";
const OVERSIZE_PINGS: u64 = 3;

/// A frame longer than the receiving guest's MTU is dropped by the kernel and counted in
/// `drops_oversize` (not `drops_no_buffer`); normal frames to the same guest still arrive.
pub(super) fn rx_oversize_dropped_and_counted(ctx: &Ctx) -> TestResult {
    let image = pack::pack_image("udp-echo", &ctx.artifacts, NetPlan::TAP)
        .map_err(|e| failure(format!("{e:#}"), String::new()))?;
    if let Some(why) = crate::tapnet::unavailable_reason(&["ping"]) {
        return Ok(Verdict::Skip(why));
    }
    // The host side of the tap carries jumbo frames; the guests keep MTU 1500.
    let namespace = crate::tapnet::TapNamespace::create(&NetPlan::TAP, hypercall_abi::vnic::MAX_MTU as u16)
        .map_err(|e| failure(format!("cannot create a tap device in a network namespace: {e:#}"), String::new()))?;
    let net = NetBackend::Tap { ifname: crate::tapnet::TAP_IFNAME.into() };
    let mut session = start_networked(&image, net, Some(&namespace.name), TxMode::Copy, TCG_TIMEOUT)?;
    wait_listening(&mut session, image.guests.iter().filter(|g| g.net.is_some()).count())?;
    let target =
        image.guests.iter().find_map(|g| g.net).map(|n| crate::manifest::format_ip(n.ipv4)).unwrap_or_default();
    let ping = |size: &str, count: u64| {
        namespace
            .command("ping")
            .args(["-c", &count.to_string(), "-i", "0.2", "-W", "3", "-M", "do", "-s", size, &target])
            .output()
    };
    let small =
        // Liveness only (the first may wait for ARP under TCG): any answer of three will do.
        ping("100", 3).map_err(|e| failure(format!("running ping (install iputils-ping): {e}"), session.log()))?;
    if !small.status.success() {
        return Err(failure(format!("a 100-byte ping of {target} got no answer"), session.log()));
    }
    let big = ping(OVERSIZE_PING_PAYLOAD, OVERSIZE_PINGS).map_err(|e| failure(format!("{e}"), session.log()))?;
    let big_out = String::from_utf8_lossy(&big.stdout);
    if big.status.success() || checks::ping_replies(&big_out) != Some((OVERSIZE_PINGS, 0)) {
        return Err(failure(format!("oversized pings should all go unanswered: {big_out}"), session.log()));
    }
    let after = ping("100", 3).map_err(|e| failure(format!("{e}"), session.log()))?;
    if !after.status.success() {
        return Err(failure(format!("{target} stopped answering after oversized frames"), session.log()));
    }
    session.request_quit();
    let outcome = session.finish().map_err(|e| failure(format!("{e:#}"), String::new()))?;
    check_guest_expectations(&image, &outcome)?;
    let stats = final_stats(&outcome)?;
    let get = |name: &str| stats.get(name).copied().unwrap_or(0);
    check(&outcome, get("drops_oversize") == OVERSIZE_PINGS, || {
        format!("drops_oversize should be exactly the {OVERSIZE_PINGS} oversized frames: {stats:?}")
    })?;
    check(&outcome, get("drops_no_buffer") == 0 && get("drops_rx_buffer_small") == 0, || {
        format!("an oversized frame is not a buffer shortage: {stats:?}")
    })?;
    Ok(Verdict::Pass)
}
