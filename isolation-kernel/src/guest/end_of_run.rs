//! The end of the run: every guest's `summary:` line against its expectation, the transmit-path reports, the `stats:` line, and the exit status.

use super::*;

/// Prints every guest's end against its expectation, the stats line, and ends the machine:
/// with success only if every expectation holds.
pub fn finish_run(why: &str) -> ! {
    let mut all_met = true;
    with_guests(|g| {
        log::info!("run over: {why}");
        for (id, guest) in g.list.iter_mut().enumerate() {
            let (summary, met) = match &guest.end {
                Some(end) => (end.to_string(), end.meets(guest.expect)),
                None => {
                    flush_console(id, guest, true);
                    ("still running".to_string(), matches!(guest.expect, Expect::Running | Expect::Any))
                }
            };
            all_met &= met;
            let verdict = if met { "as expected" } else { "EXPECTATION FAILED" };
            let pages = guest.space.as_ref().map(AddressSpace::page_counts).or(guest.pages_at_end).unwrap_or_default();
            let mut page_pairs = String::new();
            for page_use in PageUse::ALL {
                let _ = core::fmt::Write::write_fmt(
                    &mut page_pairs,
                    format_args!(" pages_{}={}", page_use.name(), pages.get(page_use)),
                );
            }
            console_write_fmt(format_args!(
                "summary: guest {id} {}: {summary}; expected {} ({verdict}); cpu {} ms; cpu_us={} virtual_instructions={} pages={}{page_pairs}\n",
                guest.name,
                guest.expect,
                ticks_to(guest.cpu_ticks, 1_000, g.tsc_hz),
                ticks_to(guest.cpu_ticks, 1_000_000, g.tsc_hz),
                guest.virtual_instructions,
                pages.total(),
            ));
        }
    });
    with_guests(|g| {
        use hypercall_abi::vnic::stamps::{quantiles, write_stages, TX_STAGES};
        for (len, samples) in &g.net.tx_stage_samples {
            let mut line = format!("dispatch: dir=tx mode={:?} frame={len} samples={}", g.net.mode, samples.len());
            let _ = write_stages(&mut line, &TX_STAGES, samples, &mut alloc::vec![0; samples.len()]);
            console_write_fmt(format_args!("{line}\n"));
        }
        for line in g.net.timeline_report() {
            console_write_fmt(format_args!("{line}\n"));
        }
        if !g.kick_samples.is_empty() {
            let n = g.kick_samples.len();
            let (median, p10, p90) = quantiles(&mut g.kick_samples);
            let cn = g.net.completion_samples.len();
            let (cmedian, _, _) = quantiles(&mut g.net.completion_samples);
            console_write_fmt(format_args!(
                "kick: tx={:?} one-packet doorbells={n} ticks trap-to-notify median={median} p10={p10} p90={p90}; \
                 zero-copy completion batches={cn} ticks per packet median={cmedian}\n",
                g.net.mode
            ));
        }
    });
    crate::stats::print_stats_with(stats_pairs());
    with_guests(|g| reports::print_per_guest(g));
    if all_met {
        log::info!("every guest met its expectation");
        power_off(KernelExit::Success)
    } else {
        log::error!("some guests did not meet their expectations");
        power_off(KernelExit::Failure)
    }
}
