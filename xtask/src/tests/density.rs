//! Density: a thousand `udp-echo` guests on one kernel over the tap network (`echo-1k`). A
//! client in the namespace sends one datagram to every guest; every guest must answer its own,
//! byte for byte, with nothing dropped anywhere and the loss ledgers balanced, and the kernel's
//! report of private pages per guest is within the target (and printed).

use super::*;
use crate::density::{self, Creation, PageReport};
use crate::ledger;

/// Guests of the image.
const GUESTS: usize = 1_000;
/// Creating 1,000 guests and letting each start its stack under TCG takes some seconds (see the
/// figures the test prints); this is a generous bound.
const BOOT_TIMEOUT: Duration = Duration::from_secs(180);

pub(super) fn echo_1k_every_guest_answers(ctx: &Ctx) -> TestResult {
    let image = pack::pack_image("echo-1k", &ctx.artifacts, NetPlan::TAP)
        .map_err(|e| failure(format!("{e:#}"), String::new()))?;
    if let Some(why) = crate::tapnet::unavailable_reason(&[]) {
        return Ok(Verdict::Skip(why));
    }
    let run = density::run_echo_over_tap(&image, TxMode::Copy, BOOT_TIMEOUT)
        .map_err(|e| failure(format!("{:#}", e.error), e.log))?;
    let outcome = &run.outcome;
    check(outcome, run.guests == GUESTS, || format!("echo-1k has {} guests with a NIC, not {GUESTS}", run.guests))?;
    let creation = Creation::from_log(&outcome.log);
    check(outcome, creation.as_ref().is_some_and(|c| c.created == GUESTS as u64 && c.refused == 0), || {
        format!("the kernel should create all {GUESTS} guests: {creation:?}")
    })?;
    check_guest_expectations(&image, outcome)?;
    let sweep = &run.sweep;
    check(outcome, sweep.answered == GUESTS && sweep.silent.is_empty() && sweep.corrupted == 0, || {
        format!("every guest must answer its own datagram intact: {sweep:?}")
    })?;
    let stats = final_stats(outcome)?;
    let get = |name: &str| stats.get(name).copied().unwrap_or(0);
    // Each datagram a guest got, it echoed; each echo reached the client (answers, and repeated
    // answers to retried datagrams), and the kernel dropped nothing.
    check(outcome, get("guest_app_echoes") == (sweep.answered + sweep.duplicates) as u64, || {
        format!("the guests echoed {} datagrams, the client got {sweep:?}", get("guest_app_echoes"))
    })?;
    check(outcome, ledger::kernel_drops(&stats) == 0 && ledger::guest_drops(&stats) == 0, || {
        format!("nothing may be dropped: {stats:?}")
    })?;
    let balanced = ledger::check_log(&outcome.log);
    check(outcome, balanced.is_ok(), || format!("the loss ledger does not balance: {balanced:?}"))?;
    let pages = PageReport::from_log(&outcome.log);
    check(outcome, pages.guests == GUESTS && pages.get("pages").is_some_and(|(median, _)| median > 0), || {
        format!("a summary with pages per guest for each of the {GUESTS} guests: {pages:?}")
    })?;
    // Every guest, having answered, within the target: page tables, stack, heap, vNIC and all.
    check(outcome, pages.get("pages").is_some_and(|(_, max)| max <= crate::tests::GUEST_PAGES_TARGET), || {
        format!("a guest holds more than {} private pages: {}", crate::tests::GUEST_PAGES_TARGET, pages.describe())
    })?;
    let creation = creation.unwrap_or_default();
    println!(
        "density: {GUESTS} guests listening {:.1} s after QEMU started, all answered {:.1} s after (sweep {} ms, \
         {} retries); creating one: {} TSC ticks (median), kernel heap {} bytes per guest; QEMU RSS {} MiB of {} MiB",
        run.listening_after.as_secs_f64(),
        run.answered_after.as_secs_f64(),
        sweep.last_answer_ms,
        sweep.retries,
        creation.ticks_median,
        creation.kernel_bytes_median,
        run.qemu_rss_kib.map_or("?".into(), |kib| (kib / 1024).to_string()),
        image.manifest.kernel.memory_mib,
    );
    println!("density: {}; {} pages shared", pages.describe(), creation.shared_pages);
    Ok(Verdict::Pass)
}
