//! Counters of the packet path, printed in the kernel's `stats:` line as `name=value` pairs.
//! Drops are counted by cause, so a test (or a person) can tell a hostile guest's rejected
//! descriptors from a flood's full FIFOs.

#[derive(Default, Clone, Copy, Debug, PartialEq, Eq)]
pub struct NetCounters {
    /// Frames handed to the NIC or another guest, and their bytes.
    pub tx_packets: u64,
    pub tx_bytes: u64,
    /// Frames copied out of guests' tx slots, and the bytes copied.
    pub tx_copies: u64,
    pub tx_bytes_copied: u64,
    /// Frames delivered into guests' rx buffers, their bytes, and the copies that took.
    pub rx_packets: u64,
    pub rx_bytes: u64,
    pub rx_copies: u64,
    /// Tx descriptors refused by validation.
    pub drops_bad_desc: u64,
    /// Frames whose source MAC was not the sending guest's.
    pub drops_spoof: u64,
    /// Frames with no buffer to go into (pool empty, or no rx buffer posted and none could be
    /// held for the guest).
    pub drops_no_buffer: u64,
    /// Frames from the uplink to a MAC no local guest has.
    pub drops_unknown_mac: u64,
    /// Frames a guest's transmit rate limit held back in its ring until its tokens were there
    /// (each frame once; not a drop: they are sent later).
    pub tx_held_back: u64,
    /// Frames too short for their headers.
    pub drops_malformed: u64,
    /// Frames refused because the guest's transmit FIFO was full.
    pub drops_fifo_full: u64,
    /// Frames longer than the receiving guest's MTU allows (dropped before any buffer is used).
    pub drops_oversize: u64,
    /// Frames longer than the rx buffer the guest posted (the buffer is returned rejected).
    pub drops_rx_buffer_small: u64,
    /// Frames for a guest whose rx producer index was out of its window (see `bad_ring_indices`).
    pub drops_bad_rx_ring: u64,
    /// Frames dropped for want of memory: an rx buffer not backed yet when no frame was left
    /// to back it, or a tx frame whose guest's FIFO could not grow (kernel heap short).
    pub drops_no_memory: u64,
    /// Producer indices refused (moved backwards, or more than a ring ahead), tx and rx. Not a
    /// drop counter: a refused tx producer leaves the descriptors in the ring.
    pub bad_ring_indices: u64,
    /// Slot runs of ended guests freed once the NIC finished their last in-flight packet.
    pub zombies_freed: u64,
    /// COW path: tx slot pages write-protected, write faults that copied a page, write faults
    /// on a stale read-only TLB entry that needed no copy, and TLB flushes (`invlpg`s) made.
    pub cow_protects: u64,
    pub cow_faults: u64,
    pub cow_spurious: u64,
    pub tlb_flushes: u64,
    /// Frames that found no posted rx buffer and were held in a pool buffer for their guest,
    /// delivered once it posts one (backpressure, not loss); of those, how many are held now
    /// (a gauge: the receive ledger counts them beside delivered and dropped), and how many
    /// were dropped because their guest ended first.
    pub rx_held: u64,
    pub rx_held_now: u64,
    pub drops_held_guest_ended: u64,
    /// Checksum offload: tx frames flagged "checksum needed" that the kernel could not place
    /// (or sent while offload is off), rejected; rx UDP/TCP frames for a guest whose checksum
    /// failed or could not be verified, dropped.
    pub drops_csum_request: u64,
    pub drops_bad_checksum: u64,
    /// Checksum offload: L4 checksums the kernel computed (tx), left to the NIC (tx, seeded),
    /// verified itself (rx), and took as verified from the NIC (rx, `DATA_VALID`/`NEEDS_CSUM`).
    pub csum_filled: u64,
    pub csum_to_nic: u64,
    pub csum_verified: u64,
    pub csum_nic_verified: u64,
    /// Split path: frames taken with their payload left in the guest's slot (the others, no
    /// longer than their header copy, go whole as on the copy path), and the header bytes
    /// copied for them (at the doorbell, and into the NIC's buffer).
    pub split_frames: u64,
    pub split_header_bytes: u64,
    /// Split path: short frames copied once, straight into the NIC's buffer, checked there and
    /// queued from the doorbell (no FIFO was waiting: see `take_tx`); counted in `tx_copies`
    /// too, once each.
    pub tx_cut_through: u64,
}

impl NetCounters {
    /// The counters as `(name, value)` pairs, in the order they are printed.
    pub fn pairs(&self) -> [(&'static str, u64); 36] {
        [
            ("tx_packets", self.tx_packets),
            ("tx_bytes", self.tx_bytes),
            ("tx_copies", self.tx_copies),
            ("tx_bytes_copied", self.tx_bytes_copied),
            ("rx_packets", self.rx_packets),
            ("rx_bytes", self.rx_bytes),
            ("rx_copies", self.rx_copies),
            ("drops_bad_desc", self.drops_bad_desc),
            ("drops_spoof", self.drops_spoof),
            ("drops_no_buffer", self.drops_no_buffer),
            ("drops_unknown_mac", self.drops_unknown_mac),
            ("tx_held_back", self.tx_held_back),
            ("drops_malformed", self.drops_malformed),
            ("drops_fifo_full", self.drops_fifo_full),
            ("drops_oversize", self.drops_oversize),
            ("drops_rx_buffer_small", self.drops_rx_buffer_small),
            ("drops_bad_rx_ring", self.drops_bad_rx_ring),
            ("drops_no_memory", self.drops_no_memory),
            ("bad_ring_indices", self.bad_ring_indices),
            ("zombies_freed", self.zombies_freed),
            ("cow_protects", self.cow_protects),
            ("cow_faults", self.cow_faults),
            ("cow_spurious", self.cow_spurious),
            ("tlb_flushes", self.tlb_flushes),
            ("rx_held", self.rx_held),
            ("rx_held_now", self.rx_held_now),
            ("drops_held_guest_ended", self.drops_held_guest_ended),
            ("drops_csum_request", self.drops_csum_request),
            ("drops_bad_checksum", self.drops_bad_checksum),
            ("csum_filled", self.csum_filled),
            ("csum_to_nic", self.csum_to_nic),
            ("csum_verified", self.csum_verified),
            ("csum_nic_verified", self.csum_nic_verified),
            ("split_frames", self.split_frames),
            ("split_header_bytes", self.split_header_bytes),
            ("tx_cut_through", self.tx_cut_through),
        ]
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing, clippy::arithmetic_side_effects)]
mod tests {
    use super::*;

    #[test]
    fn pairs_name_every_counter_in_order() {
        // Every field set to a distinct value through the pairs' own names would be circular;
        // instead count the fields (a struct of u64s) and check each value is read once.
        const FIELDS: usize = core::mem::size_of::<NetCounters>() / core::mem::size_of::<u64>();
        let counters = NetCounters {
            tx_packets: 1,
            tx_bytes: 2,
            tx_copies: 3,
            tx_bytes_copied: 4,
            rx_packets: 5,
            rx_bytes: 6,
            rx_copies: 7,
            drops_bad_desc: 8,
            drops_spoof: 9,
            drops_no_buffer: 10,
            drops_unknown_mac: 11,
            tx_held_back: 12,
            drops_malformed: 13,
            drops_fifo_full: 14,
            drops_oversize: 15,
            drops_rx_buffer_small: 16,
            drops_bad_rx_ring: 17,
            drops_no_memory: 18,
            bad_ring_indices: 19,
            zombies_freed: 20,
            cow_protects: 21,
            cow_faults: 22,
            cow_spurious: 23,
            tlb_flushes: 24,
            rx_held: 25,
            rx_held_now: 26,
            drops_held_guest_ended: 27,
            drops_csum_request: 28,
            drops_bad_checksum: 29,
            csum_filled: 30,
            csum_to_nic: 31,
            csum_verified: 32,
            csum_nic_verified: 33,
            split_frames: 34,
            split_header_bytes: 35,
            tx_cut_through: 36,
        };
        let pairs = counters.pairs();
        assert_eq!(pairs.len(), FIELDS, "every counter is printed");
        // Distinct values in field order: each pair reads its own field.
        assert_eq!(pairs.map(|(_, v)| v), core::array::from_fn(|i| i as u64 + 1));
        let names = pairs.map(|(n, _)| n);
        assert_eq!(names[0], "tx_packets");
        assert_eq!(names[7], "drops_bad_desc");
        assert_eq!(names[11], "tx_held_back");
        assert_eq!(names[14], "drops_oversize");
        let mut sorted = names.to_vec();
        sorted.sort_unstable();
        sorted.dedup();
        assert_eq!(sorted.len(), FIELDS, "names must be distinct");
        assert!(names.iter().all(|n| !n.is_empty() && n.bytes().all(|b| b.is_ascii_lowercase() || b == b'_')));
        assert!(NetCounters::default().pairs().iter().all(|&(_, v)| v == 0));
    }
}
