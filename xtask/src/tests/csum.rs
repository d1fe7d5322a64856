//! Checksum offload (`csum=on`, `hypercall_abi::vnic::desc_flags`): the echo, guest-to-guest,
//! TCP and HTTP tests again with the guests leaving UDP and TCP checksums to the kernel, and a
//! guest asking for checksums the kernel cannot place.
//!
//! Over the user network QEMU offers no checksum offload (slirp has no virtio-net header), so
//! the kernel computes every checksum the guests leave and verifies every frame it delivers;
//! slirp checks UDP and TCP checksums and drops bad ones, so an answered echo proves the
//! kernel's. Over tap the device agrees to `CSUM` and `GUEST_CSUM`: the kernel hands the NIC
//! seeded checksums with their offsets and takes the host's `NEEDS_CSUM`/`DATA_VALID` frames as
//! verified. Between guests the kernel computes every checksum a sender left, so the receiver
//! gets a verified frame.

use super::{
    check, check_guest_expectations, failure, final_stats, host_port_base, start_networked_pcap, wait_listening, Ctx,
    Failure, TestResult, Verdict, LEGACY, TCG_TIMEOUT,
};
use crate::checks::{self, GuestEnd};
use crate::manifest::NetPlan;
use crate::pack;
use crate::qemu::{self, NetBackend, Outcome};
use crate::udp;
use crate::TxMode;
use std::cell::Cell;
use std::collections::BTreeMap;
use std::time::Duration;

/// Where the checksums of a test's traffic are made and checked.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Expect {
    /// A NIC without checksum offload (user network): the kernel fills and verifies.
    Kernel,
    /// A NIC with both offloads (tap): it finishes what the kernel seeds, and vouches for
    /// what it hands over.
    Nic,
    /// No NIC: the kernel fills every checksum a guest left, for the guest receiving it.
    BetweenGuests,
    /// Offload off (`csum=off`): the guests make and check every checksum, the NIC is asked for
    /// nothing, and the kernel touches none.
    Off,
}

thread_local! {
    static EXPECT: Cell<Option<Expect>> = const { Cell::new(None) };
}

/// Runs `test` with `csum=on` on every kernel it boots, and [`check_stats`] held to `expect` on
/// every final `stats:` line it reads.
pub(super) fn with_offload(expect: Expect, test: impl FnOnce() -> TestResult) -> TestResult {
    EXPECT.with(|e| e.set(Some(expect)));
    let on_off = if expect == Expect::Off { "off" } else { "on" };
    let result = qemu::with_kernel_args(&format!("{}={on_off}", hypercall_abi::cmdline::CSUM), test);
    EXPECT.with(|e| e.set(None));
    result
}

/// Under [`with_offload`]: the kernel ran with checksum offload, the NIC agreed to what the
/// network offers, the checksums were made where [`Expect`] says, and no frame failed its
/// checksum. Called from `final_stats`; does nothing outside [`with_offload`].
pub(super) fn check_stats(outcome: &Outcome, stats: &BTreeMap<String, u64>) -> Result<(), Failure> {
    let Some(expect) = EXPECT.with(Cell::get) else { return Ok(()) };
    let get = |name: &str| stats.get(name).copied().unwrap_or(0);
    let nic_line = |line: &str| outcome.log.lines().any(|l| l.ends_with(line));
    if expect == Expect::Off {
        let touched: Vec<_> = stats.iter().filter(|(name, value)| name.contains("csum") && **value > 0).collect();
        let nic_asked =
            outcome.log.lines().any(|l| l.contains("nic: checksum offload:") && !l.ends_with("tx off rx off"));
        return check(outcome, nic_line("checksum offload: off") && !nic_asked && touched.is_empty(), || {
            format!("checksum offload off, yet the NIC took offloads or the kernel counted {touched:?}")
        });
    }
    check(outcome, outcome.log.contains("checksum offload: on"), || {
        "the kernel did not turn checksum offload on".into()
    })?;
    check(outcome, get("drops_bad_checksum") == 0, || format!("frames failed their checksum: {stats:?}"))?;
    let (filled, to_nic, verified, nic_verified) =
        (get("csum_filled"), get("csum_to_nic"), get("csum_verified"), get("csum_nic_verified"));
    let ok = match expect {
        Expect::Kernel => {
            nic_line("nic: checksum offload: tx off rx off")
                && filled > 0
                && verified > 0
                && to_nic == 0
                && nic_verified == 0
        }
        Expect::Nic => nic_line("nic: checksum offload: tx on rx on") && to_nic > 0 && nic_verified > 0,
        Expect::BetweenGuests => !stats.contains_key("nic_tx_frames") && filled > 0 && to_nic == 0,
        Expect::Off => unreachable!("returned above"),
    };
    check(outcome, ok, || {
        format!(
            "{expect:?}: csum_filled={filled} csum_to_nic={to_nic} csum_verified={verified} \
             csum_nic_verified={nic_verified}, or the NIC's offloads are not as the network offers"
        )
    })
}

/// Frames the bad-checksum-requests guest (guest-os/src/bin/hostile.rs) flags that cannot be
/// placed, each to be refused.
const BAD_REQUESTS: u64 = 8;

/// A guest flags frames whose checksum cannot be placed (no IPv4, ICMP, a fragment, bad header,
/// total and UDP lengths, a cut header): each is refused and counted, the guest survives, and
/// the echo guests beside it answer the host, every byte intact.
pub(super) fn hostile_requests(ctx: &Ctx, tx: TxMode) -> TestResult {
    with_offload(Expect::Kernel, || {
        let image = pack::pack_image("csum-hostile", &ctx.artifacts, NetPlan::USER)
            .map_err(|e| failure(format!("{e:#}"), String::new()))?;
        let echo: Vec<_> = image.guests.iter().filter(|g| g.app == "udp-echo").filter_map(|g| g.net).collect();
        let base = host_port_base();
        let forwards = echo.iter().enumerate().map(|(i, n)| (base + i as u16, n.ipv4, 7)).collect();
        let net = NetBackend::User { forwards, tcp_forwards: Vec::new() };
        let mut session = start_networked_pcap(&image, net, None, tx, LEGACY, None, None, TCG_TIMEOUT)?;
        wait_listening(&mut session, echo.len())?;
        if !session
            .wait_for(Duration::from_secs(30), |log| checks::guest_ends(log).contains_key("bad-checksum-requests"))
        {
            return Err(failure("the bad-checksum-requests guest did not end", session.log()));
        }
        for i in 0..echo.len() {
            let peer = std::net::SocketAddr::from(([127, 0, 0, 1], base + i as u16));
            let report = udp::echo_check(peer, &udp::TEST_SIZES, 1, 3, Duration::from_secs(2), i as u64)
                .map_err(|e| failure(format!("echo check of guest {i}: {e:#}"), session.log()))?;
            if report.intact != udp::TEST_SIZES.len() {
                return Err(failure(format!("guest {i} via {peer}: {report:?}"), session.log()));
            }
        }
        session.request_quit();
        let outcome = session.finish().map_err(|e| failure(format!("{e:#}"), String::new()))?;
        check_guest_expectations(&image, &outcome)?;
        let end = checks::guest_ends(&outcome.log).get("bad-checksum-requests").map(|(_, end)| end.clone());
        check(&outcome, end == Some(GuestEnd::Exited(0)), || format!("bad-checksum-requests ended {end:?}"))?;
        let reports = checks::hostile_reports(&outcome.log);
        let report = reports.get("bad-checksum-requests");
        let value = |key: &str| report.and_then(|r| r.get(key)).copied();
        check(&outcome, value("csum_rejected") == Some(BAD_REQUESTS) && value("failures") == Some(0), || {
            format!("bad-checksum-requests reports {report:?}: {BAD_REQUESTS} refusals and no failure wanted")
        })?;
        let stats = final_stats(&outcome)?;
        let refused = stats.get("drops_csum_request").copied().unwrap_or(0);
        check(&outcome, refused == BAD_REQUESTS, || {
            format!("drops_csum_request={refused}, {BAD_REQUESTS} wanted (one per bad request): {stats:?}")
        })?;
        check(&outcome, outcome.log.contains("tx checksum request refused: "), || {
            "the first refusal was not logged with its reason".into()
        })?;
        if tx == TxMode::Cow {
            // Each refused frame was protected first, as every frame taken.
            super::check_tx_path(&outcome, tx, &stats, super::Traffic::NicOnly)?;
        }
        Ok(Verdict::Pass)
    })
}
