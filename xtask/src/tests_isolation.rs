//! QEMU tests that no register state passes between guests: the `fpu-probe` guests of the
//! `fpu-save` and `fpu-fault` images, under the kernel's two floating-point policies.

use super::{boot, check, check_guest_expectations, expect_line, failure, Ctx, TestResult, Verdict, TCG_TIMEOUT};
use crate::checks::{self, GuestEnd};
use crate::manifest::{Guest, NetPlan};
use crate::pack;
use crate::qemu::{Accel, Outcome};
use hypercall_abi::cmdline as keys;
use hypercall_abi::initrd::StopKind;
use kernel_core::trap::exceptions::FPU_FAULT_CAUSE;

/// Rounds a probe runs when its args do not say (guest-os/src/bin/fpu_probe.rs).
const DEFAULT_ROUNDS: u64 = 16;

/// The value of `key=` in a guest's args.
fn arg<'a>(guest: &'a Guest, key: &str) -> Option<&'a str> {
    guest.args.split_whitespace().find_map(|w| w.strip_prefix(key)?.strip_prefix('='))
}

/// The counts of one probe report, `fpu-probe KIND: rounds=R before: own=.. initial=.. peer=..
/// other=..; after: own=.. initial=.. peer=.. other=..; ...`.
#[derive(Debug, PartialEq, Eq)]
struct ProbeReport {
    rounds: u64,
    before_peer: u64,
    after_own: u64,
    after_peer: u64,
}

fn probe_report(outcome: &Outcome, id: u32, guest: &str, kind: &str) -> Option<ProbeReport> {
    let prefix = format!("guest {id} {guest}: fpu-probe {kind}: ");
    let line = outcome.log.lines().find_map(|l| Some(&l[l.find(&prefix)? + prefix.len()..]))?;
    let (rounds, rest) = line.strip_prefix("rounds=")?.split_once(' ')?;
    let (before, after) = rest.strip_prefix("before: ")?.split_once("; after: ")?;
    let count = |part: &str, key: &str| -> Option<u64> {
        let value = part.split([' ', ';']).find_map(|w| w.strip_prefix(key)?.strip_prefix('='))?;
        value.parse().ok()
    };
    Some(ProbeReport {
        rounds: rounds.parse().ok()?,
        before_peer: count(before, "peer")?,
        after_own: count(after, "own")?,
        after_peer: count(after, "peer")?,
    })
}

/// Boots `fpu-POLICY` with `fpu=POLICY`: every guest ends as its manifest expects; every probe
/// that runs to its end reports, for each kind of state, that no read showed the other probe's
/// pattern and every read after a yield gave back its own; every probe expected to be stopped is
/// stopped with exactly the floating-point cause before it could report, while the guests beside
/// it run on to their end.
pub(super) fn fpu_state_isolated(ctx: &Ctx, policy: &str) -> TestResult {
    let image = pack::pack_image(&format!("fpu-{policy}"), &ctx.artifacts, NetPlan::USER)
        .map_err(|e| failure(format!("{e:#}"), String::new()))?;
    if image.manifest.kernel.fpu != policy {
        return Err(failure(
            format!("image fpu-{policy} declares fpu = {:?}", image.manifest.kernel.fpu),
            String::new(),
        ));
    }
    let append = format!("{}=info {}=120 {}={policy}", keys::LOG, keys::SHUTDOWN_AFTER, keys::FPU);
    let outcome = boot(&image, Accel::Tcg, &append, TCG_TIMEOUT)?;
    check_guest_expectations(&image, &outcome)?;
    expect_line(&outcome, &format!("fpu: {policy} ("))?;
    let ends = checks::guest_ends(&outcome.log);
    let mut sides = Vec::new();
    let mut last_stop = 0;
    for guest in image.guests.iter().filter(|g| g.app == "fpu-probe") {
        let Some((id, end)) = ends.get(&guest.name) else {
            return Err(failure(format!("no end line for {}", guest.name), outcome.log.clone()));
        };
        let kinds: Vec<&str> = arg(guest, "kinds").unwrap_or("").split(',').filter(|k| !k.is_empty()).collect();
        if guest.expect.starts_with("stopped:") {
            let fpu_stop = |kind: &StopKind, cause: &str| *kind == StopKind::FloatingPoint && cause == FPU_FAULT_CAUSE;
            check(&outcome, matches!(end, GuestEnd::Stopped { kind, cause, .. } if fpu_stop(kind, cause)), || {
                format!("{} should be stopped as floating_point, `{FPU_FAULT_CAUSE}`: {end:?}", guest.name)
            })?;
            let reported = kinds.iter().any(|k| probe_report(&outcome, *id, &guest.name, k).is_some());
            check(&outcome, !reported, || format!("{} ran its probe although it was to be stopped", guest.name))?;
            let stop_line = format!("guest {id} {} stopped ", guest.name);
            last_stop = last_stop.max(outcome.log.find(&stop_line).unwrap_or(usize::MAX));
            continue;
        }
        let rounds = arg(guest, "rounds").map_or(Ok(DEFAULT_ROUNDS), str::parse).unwrap_or(0);
        for kind in &kinds {
            let report = probe_report(&outcome, *id, &guest.name, kind);
            let want = ProbeReport { rounds, before_peer: 0, after_own: rounds, after_peer: 0 };
            check(&outcome, rounds > 0 && report.as_ref() == Some(&want), || {
                format!("{} {kind}: expected {want:?}, got {report:?}", guest.name)
            })?;
        }
        sides.extend(arg(guest, "side"));
    }
    // Both directions: each side wrote its own pattern and read the other's.
    sides.sort_unstable();
    check(&outcome, sides == ["a", "b"], || format!("expected one probe per side, got {sides:?}"))?;
    // The guests beside the stopped ones ran on: every hello ended after the last stop.
    for guest in image.guests.iter().filter(|g| g.app == "hello") {
        let exit =
            ends.get(&guest.name).and_then(|(id, _)| outcome.log.find(&format!("guest {id} {} exited 0", guest.name)));
        check(&outcome, exit.is_some_and(|at| at > last_stop || last_stop == 0), || {
            format!("{} did not exit 0 after the floating-point guests were stopped", guest.name)
        })?;
    }
    Ok(Verdict::Pass)
}
