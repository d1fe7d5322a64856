//! Per-packet stage stamps (`stamps=on`): a record per packet taken from a tx slot (the guest's
//! own stamps, the trap entry, the vNIC work done), completed after the notify that covered it.

use super::{run_bytes, Network};
use hypercall_abi::vnic::stamps::TX_STAMPS;
use kernel_core::vnet::{ring, Packet};

/// Stamp records the kernel keeps for packets in flight (more than can be queued at once).
const STAMP_SLOTS: u32 = 4096;
/// Completion timings kept (one per NIC completion batch).
const COMPLETION_SAMPLES: usize = 65_536;
/// Transmit records kept per frame length.
const STAMP_SAMPLES: usize = 10_240;

/// Whether stage stamping is on (`stamps=on`, fixed before guests start). Every TSC read the
/// packet path makes for the stamps goes through here: when off, [`Stamps::now`] reads nothing
/// and is 0. In a kernel built without the `stamps` feature [`Stamps::on`] is constant false,
/// so every stamp and every record compiles to nothing; with it, the path pays one test of a
/// flag kept in a register.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Stamps {
    on: bool,
}

impl Stamps {
    pub const OFF: Stamps = Stamps { on: false };
    pub const ON: Stamps = Stamps { on: true };

    /// Whether stamps are taken.
    #[inline(always)]
    pub fn on(self) -> bool {
        cfg!(feature = "stamps") && self.on
    }

    /// The serialized TSC when stamping, 0 (and no read) when off.
    #[inline(always)]
    pub fn now(self) -> u64 {
        if self.on {
            crate::arch::cpu::rdtsc_serialized()
        } else {
            0
        }
    }
}

/// A packet handed to the NIC since the last notify, with its stamp record and the kernel's
/// stamps taken while handing it over.
pub(super) struct PendingNotify {
    /// Its stamp record (an index into the network's records).
    pub stamp: u32,
    /// TSC before the driver took it.
    pub handed: u64,
    /// TSC once it was in the NIC's ring.
    pub queued: u64,
    /// Frame length: the transmit records are kept per length.
    pub len: u32,
}

impl PendingNotify {
    /// Notes a stamped packet handed to the NIC at `handed` and queued at `queued`, to be
    /// completed by the next notify (unstamped packets are not recorded).
    pub(super) fn record(pending: &mut alloc::vec::Vec<PendingNotify>, packet: &Packet, handed: u64, queued: u64) {
        Self::record_stamp(pending, packet.stamp, packet.len, handed, queued);
    }

    /// [`Self::record`] for stamp record `stamp` of a frame of `len` bytes.
    pub(super) fn record_stamp(
        pending: &mut alloc::vec::Vec<PendingNotify>,
        stamp: u32,
        len: u32,
        handed: u64,
        queued: u64,
    ) {
        if cfg!(feature = "stamps") && stamp != kernel_core::vnet::NO_STAMP {
            pending.push(PendingNotify { stamp, handed, queued, len });
        }
    }
}

impl Network {
    /// Turns per-packet stage stamps on (before guests start).
    pub fn enable_stamps(&mut self) {
        self.stamps = Stamps::ON;
        self.stamp_records = alloc::vec![[0; 5]; STAMP_SLOTS as usize];
        self.completion_samples.reserve(COMPLETION_SAMPLES);
        self.pending_notify.reserve(256);
    }

    /// A stamp record for a packet taken from a tx slot: the guest's stamps from the slot's
    /// headroom, the trap entry, and now (its vNIC work done).
    #[inline(always)] // on the doorbell path: see take_tx
    pub(super) fn start_tx_record(&mut self, slot_run: u64, slot_size: u64) -> u32 {
        if !self.stamps.on() {
            return kernel_core::vnet::NO_STAMP;
        }
        let now = self.stamps.now();
        // The guest's own stamps, from the headroom it writes: any values at all.
        let mut guest = [0u64; TX_STAMPS];
        for (word, bytes) in guest.iter_mut().zip(run_bytes(slot_run, slot_size, 0, 24).chunks_exact(8)) {
            *word = u64::from_le_bytes(bytes.try_into().unwrap_or_default());
        }
        let index = ring::position(self.next_stamp, STAMP_SLOTS);
        self.next_stamp = self.next_stamp.wrapping_add(1);
        let [send, driver, kick] = guest;
        if let Some(record) = self.stamp_records.get_mut(index) {
            *record = [send, driver, kick, crate::arch::trap::entry_tsc(), now];
        }
        index as u32
    }

    /// After a notify: the transmit records of the packets it covered are complete.
    pub(super) fn finish_tx_records(&mut self) {
        if self.pending_notify.is_empty() {
            return;
        }
        let notified = self.stamps.now();
        let mut recorded = false;
        for PendingNotify { stamp: index, handed, queued, len } in self.pending_notify.drain(..) {
            let Some(&[send, driver, kick, trap, vnic]) = self.stamp_records.get(ring::position(index, STAMP_SLOTS))
            else {
                continue;
            };
            if send == 0 || driver < send || kick < driver || trap < kick {
                continue; // the guest does not stamp (or stamped nonsense): no record
            }
            // In order (checked above for the guest's stamps; the kernel's are its own).
            let stages = [
                driver.saturating_sub(send),
                kick.saturating_sub(driver),
                trap.saturating_sub(kick),
                vnic.saturating_sub(trap),
                handed.saturating_sub(vnic),
                queued.saturating_sub(handed),
                notified.saturating_sub(queued),
            ];
            let samples = self.tx_stage_samples.entry(len).or_default();
            if samples.len() < STAMP_SAMPLES {
                samples.push(stages.map(|t| t.min(u64::from(u32::MAX)) as u32));
                self.stamp_records_made = self.stamp_records_made.saturating_add(1);
            }
            recorded = true;
        }
        if recorded {
            self.timeline.staged_transmit(notified);
        }
    }

    /// The whole-echo timeline as `dispatch: dir=timeline` lines, one per frame length: the
    /// echoes, `ticks:stretches` of each activity, and the kernel's and the guest's total ticks.
    pub fn timeline_report(&self) -> alloc::vec::Vec<alloc::string::String> {
        use core::fmt::Write;
        use kernel_core::vnet::timeline::Activity;
        self.timeline
            .rows()
            .iter()
            .map(|row| {
                let mut line = alloc::format!("dispatch: dir=timeline frame={} echoes={}", row.key, row.echoes);
                for ((activity, ticks), stretches) in Activity::COUNTED.iter().zip(row.ticks).zip(row.stretches) {
                    let _ = write!(line, " {}={ticks}:{stretches}", activity.name());
                }
                let _ = write!(line, " kernel={} guest={}", row.kernel, row.guest);
                line
            })
            .collect()
    }
}
