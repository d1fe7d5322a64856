//! Ending the machine without QEMU's isa-debug-exit, as on Firecracker and cloud-hypervisor.

use super::*;
use crate::qemu::PowerOff;

/// Without isa-debug-exit the kernel ends the machine the way it has: ACPI S5 through QEMU
/// `pc`'s PM1a control (found in the ACPI tables, as cloud-hypervisor's sleep register would
/// be), or, with ACPI off, the i8042 reset, which `-no-reboot` turns into QEMU's exit (as
/// Firecracker). QEMU's status is then 0 and carries no verdict; the harness reads it from the
/// console, and must report each run right: `hello` passes, `hello-fails` (its guest exits 0,
/// expected to exit 1) fails, a kernel panic is a panic.
pub(super) fn power_off_without_debug_exit(ctx: &Ctx, way: PowerOff) -> TestResult {
    let failing = pack::pack_image("hello-fails", &ctx.artifacts, NetPlan::USER)
        .map_err(|e| failure(format!("{e:#}"), String::new()))?;
    let (ended_by, not_used, found) = match way {
        PowerOff::Acpi => (
            "power-off: no isa-debug-exit; ACPI S5",
            "power-off: i8042 reset",
            "power-off: ACPI S5 (PM1 control): io port 0x604 <- 0x2000",
        ),
        PowerOff::I8042 => (
            "power-off: i8042 reset",
            "power-off: no isa-debug-exit; ACPI S5",
            "power-off: no ACPI way (no ACPI tables",
        ),
        PowerOff::DebugExit => return Err(failure("this test is for machines without isa-debug-exit", String::new())),
    };
    let runs = [
        (&ctx.hello, "", KernelExit::Success),
        (&failing, "", KernelExit::Failure),
        (&ctx.empty, "test_fault=panic", KernelExit::Panic),
    ];
    for (image, extra, want) in runs {
        let append = format!("{}=info {}=60 {extra}", keys::LOG, keys::SHUTDOWN_AFTER);
        let config = QemuConfig { power_off: way, ..QemuConfig::for_image(image, Accel::Tcg, append) };
        let outcome = qemu::run_captured(config.command(), TCG_TIMEOUT, false)
            .map_err(|e| failure(format!("{e:#}"), String::new()))?;
        let what = format!("{} {extra}", image.name);
        check(&outcome, outcome.status == Some(0), || {
            format!("{what}: QEMU's status {:?}, 0 expected without isa-debug-exit", outcome.status)
        })?;
        check(&outcome, outcome.exit() == Some(want), || {
            format!("{what}: the harness read {:?} from the console, {want:?} expected", outcome.exit())
        })?;
        expect_line(&outcome, found)?;
        expect_line(&outcome, &format!("{ended_by}\n"))?;
        check(&outcome, !outcome.log.contains(&format!("{not_used}\n")), || {
            format!("{what}: `{not_used}` was tried: `{ended_by}` should have ended the machine")
        })?;
        match want {
            KernelExit::Success => check_guest_expectations(image, &outcome)?,
            _ => {
                // The failing guest's summary says so; a panicking kernel prints none.
                let summaries = outcome.log.lines().filter(|l| l.starts_with("summary: guest ")).count();
                let failed_summaries = outcome.log.matches("(EXPECTATION FAILED);").count();
                let want_failed = usize::from(want == KernelExit::Failure);
                check(&outcome, summaries == want_failed && failed_summaries == want_failed, || {
                    format!("{what}: {summaries} summary lines, {failed_summaries} failed; {want_failed} expected")
                })?;
            }
        }
    }
    Ok(Verdict::Pass)
}
