//! Lazily backed guest memory: pages cost a frame only once touched, and every frame returns.

use super::*;
use std::collections::BTreeMap;

/// Pages beyond what `mem-probe grow` writes that the runtime may touch itself (its first heap
/// page for the allocator's bookkeeping; its first stack page for `_start` and `main`).
const RUNTIME_HEAP_PAGES: u64 = 2;
const RUNTIME_STACK_PAGES: u64 = 2;

/// `summary:` fields of one guest, as numbers (`pages_heap=...` and the like).
pub(super) fn summary_numbers(log: &str, name: &str) -> BTreeMap<String, u64> {
    fn of_guest<'a>(line: &'a str, name: &str) -> Option<&'a str> {
        let (_id, rest) = line.strip_prefix("summary: guest ")?.split_once(' ')?;
        rest.strip_prefix(name)?.strip_prefix(": ")
    }
    log.lines()
        .filter_map(|line| of_guest(line, name))
        .flat_map(|l| l.split_whitespace())
        .filter_map(|word| {
            let (key, value) = word.split_once('=')?;
            Some((key.to_string(), value.trim_end_matches(';').parse().ok()?))
        })
        .collect()
}

/// The number after `label` on the kernel's log line that has it.
fn logged_number(log: &str, label: &str) -> Option<u64> {
    let rest = &log[log.find(label)? + label.len()..];
    rest.split(|c: char| !c.is_ascii_digit()).find(|w| !w.is_empty())?.parse().ok()
}

/// The `lazy-memory` image: a guest that writes 256 KiB of heap (frees it and writes half again)
/// and 32 KiB of stack holds those pages and no others of its 4 MiB heap and 64 KiB stack; the
/// kernel reads an untouched page as zeros without backing it; reaching past the stack, past
/// the heap, or executing an untouched heap page stops the guest; and when every guest has
/// ended, every frame they took is free again.
pub(super) fn lazy_memory_backed_on_touch(ctx: &Ctx) -> TestResult {
    let image = pack::pack_image("lazy-memory", &ctx.artifacts, NetPlan::USER)
        .map_err(|e| failure(format!("{e:#}"), String::new()))?;
    let outcome = boot(&image, Accel::Tcg, "log=info shutdown_after=60", TCG_TIMEOUT)?;
    expect_exit(&outcome, KernelExit::Success)?;
    check_guest_expectations(&image, &outcome)?;
    let grow = summary_numbers(&outcome.log, "grow");
    let get = |numbers: &BTreeMap<String, u64>, key: &str| numbers.get(key).copied().unwrap_or(u64::MAX);
    let (heap_written, stack_written) = (256 * 1024 / 4096, 32 * 1024 / 4096);
    let heap = get(&grow, "pages_heap");
    check(&outcome, (heap_written..=heap_written + RUNTIME_HEAP_PAGES).contains(&heap), || {
        format!("grow wrote {heap_written} heap pages (of 1,024) and holds {heap}: {grow:?}")
    })?;
    let stack = get(&grow, "pages_stack");
    check(&outcome, (stack_written..=stack_written + RUNTIME_STACK_PAGES).contains(&stack), || {
        format!("grow used {stack_written} stack pages (of 16) and holds {stack}: {grow:?}")
    })?;
    // The kernel read 16 bytes of a page the guest never wrote: zeros, and no page for it.
    let untouched = summary_numbers(&outcome.log, "read-untouched");
    check(&outcome, get(&untouched, "pages_heap") <= RUNTIME_HEAP_PAGES, || {
        format!("reading an untouched page backed it: {untouched:?}")
    })?;
    expect_line(&outcome, "mem-probe: console_write of an untouched heap page returned 16")?;
    // The overflow backed every stack page before it reached the guard page below them.
    let overflow = summary_numbers(&outcome.log, "stack-overflow");
    check(&outcome, get(&overflow, "pages_stack") == 16, || format!("stack-overflow: {overflow:?}"))?;
    // The guard page's number, as the start of any address in it; the heap's addresses (it
    // follows the image) as the probe says them before it faults.
    use hypercall_abi::layout::{PAGE_SIZE, STACK_SIZE, STACK_TOP};
    let guard_page = format!("{:#x}", (STACK_TOP - STACK_SIZE - PAGE_SIZE) / PAGE_SIZE);
    let said = |what: &str| {
        let at = outcome.log.find(&format!("mem-probe: {what} 0x"))? + format!("mem-probe: {what} ").len();
        outcome.log[at..].split_whitespace().next().map(str::to_owned)
    };
    let (executed, written) = (said("executing"), said("writing"));
    check(&outcome, executed.is_some() && written.is_some(), || "the probe did not say its heap addresses".into())?;
    for (name, needle) in [
        ("stack-overflow", format!("stopped page_fault: page fault: write at {guard_page}")),
        (
            "exec-untouched-heap",
            format!(
                "stopped page_fault: page fault: instruction fetch at {} (not mapped)",
                executed.unwrap_or_default()
            ),
        ),
        (
            "beyond-heap",
            format!("stopped page_fault: page fault: write at {} (not mapped)", written.unwrap_or_default()),
        ),
    ] {
        expect_line(&outcome, &format!("{name} {needle}"))?;
    }
    // Every frame back: free at the end = free before the guests - the apps' shared pages - what
    // the kernel heap took as it grew meanwhile.
    let before = logged_number(&outcome.log, "frames free before the guests: ");
    let grown_before = logged_number(&outcome.log, "heap frames grown before the guests: ");
    let shared = outcome
        .log
        .find("pages per guest (median), ")
        .and_then(|at| logged_number(&outcome.log[at..], "pages per guest (median), "));
    let stats = final_stats(&outcome)?;
    let (after, grown_after) = (stats.get("frames_free").copied(), stats.get("heap_frames_grown").copied());
    let grown = grown_after.zip(grown_before).map(|(after, before)| after - before);
    check(
        &outcome,
        matches!((before, shared, after, grown), (Some(b), Some(s), Some(a), Some(g)) if a + s + g == b),
        || {
            format!(
                "frames free before {before:?}, shared {shared:?}, heap grew by {grown:?}, free after {after:?}: some \
                 did not come back"
            )
        },
    )?;
    Ok(Verdict::Pass)
}

/// Memory for the `many` image (10,000 guests) where the kernel heap, grown from the frame
/// allocator, holds the guest table (~20 MiB) but RAM does not hold every guest: some are refused.
/// Lower it if guests or their records get smaller.
const MANY_SHORT_MIB: u32 = 32;
/// Memory where the heap cannot even hold the table of 10,000 guests.
const MANY_TINY_MIB: u32 = 16;

/// A kernel heap too small for the image never panics the kernel: too small for the guest
/// table, the boot fails naming the reason; too small for every guest, the guests beyond it are
/// refused as `out_of_memory` (counted, named) and the rest run.
pub(super) fn kernel_heap_short_refuses_not_panics(ctx: &Ctx) -> TestResult {
    let mut image = pack::pack_image("many", &ctx.artifacts, NetPlan::USER)
        .map_err(|e| failure(format!("{e:#}"), String::new()))?;
    let total = image.guests.len() as u64;
    image.manifest.kernel.memory_mib = MANY_TINY_MIB;
    let outcome = boot(&image, Accel::Tcg, "log=warn shutdown_after=60", TCG_TIMEOUT)?;
    expect_exit(&outcome, KernelExit::Failure)?;
    expect_line(&outcome, &format!("cannot hold the table of {total} guests: give the machine more memory"))?;

    image.manifest.kernel.memory_mib = MANY_SHORT_MIB;
    let outcome = boot(&image, Accel::Tcg, "log=warn shutdown_after=120", TCG_TIMEOUT)?;
    check(&outcome, !outcome.log.contains("KERNEL PANIC"), || "the kernel panicked".into())?;
    let stats = final_stats(&outcome)?;
    let (created, refused) = (stats.get("guests_created").copied(), stats.get("guests_refused").copied());
    check(&outcome, matches!((created, refused), (Some(c), Some(r)) if r > 0 && c + r == total), || {
        format!(
            "expected some of {total} guests refused and the rest created: {created:?} created, {refused:?} refused"
        )
    })?;
    let ends = checks::guest_ends(&outcome.log);
    let out_of_memory = ends
        .values()
        .filter(|(_, end)| {
            matches!(end, checks::GuestEnd::Refused { kind, .. } if *kind == hypercall_abi::initrd::RefusalKind::OutOfMemory)
        })
        .count() as u64;
    check(&outcome, Some(out_of_memory) == refused, || {
        format!("{out_of_memory} refusals named out_of_memory, {refused:?} counted")
    })?;
    Ok(Verdict::Pass)
}
