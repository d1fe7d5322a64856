//! The network scheduler: decides whose queued packets go to the NIC next.
//!
//! Guests with packets waiting are served round-robin, at most `budget` packets per turn, so a
//! guest flooding the network gets its share of the NIC and no more: everyone else's packets
//! interleave with its bursts. Turns are byte-fair too (deficit round robin): each turn adds a
//! byte quantum to the guest's deficit, a packet goes only if the deficit covers it, and what is
//! left carries to its next turn (and is forgotten when its FIFO empties), so a guest sending
//! 9000-byte frames gets the bytes per turn of one sending 1514-byte frames, not six times them. Only guests with a non-empty FIFO are in the rotation, so idle
//! guests cost nothing (as in [`crate::guest::sched`]). When the NIC is full the scheduler stops and
//! remembers how far the current guest's turn got, so a NIC that takes only a few packets at a
//! time still sees the guests take turns in the same order as a fast one would.

use super::fifo::{Packet, TxFifo};
use crate::guest::queue::IdQueue;

#[derive(Debug)]
pub struct NetScheduler {
    /// Guests with packets waiting, in the order they will be served; the front one is serving
    /// its turn. Each guest is in it at most once; joining, leaving and the membership test are
    /// O(1) whatever the number of guests.
    active: IdQueue,
    /// Packets a guest may send per turn (at least 1).
    budget: usize,
    /// Packets the front guest has sent in its current turn (a turn cut short by a full NIC
    /// continues on the next `serve`).
    spent: usize,
    /// Bytes added to a guest's deficit per turn (deficit round robin).
    quantum_bytes: u32,
    /// Each guest's deficit: bytes it may still send (carried between turns while it stays in
    /// the rotation).
    deficits: alloc::vec::Vec<u32>,
    /// The front guest's turn has had its quantum.
    credited: bool,
}

impl NetScheduler {
    /// A scheduler for guests `0..guest_count`, none ready. A budget of 0 is taken as 1, since a
    /// turn that sends nothing would never end.
    pub fn new(guest_count: usize, budget_per_turn: usize) -> Self {
        Self {
            active: IdQueue::with_ids(guest_count),
            budget: budget_per_turn.max(1),
            spent: 0,
            quantum_bytes: u32::MAX,
            deficits: alloc::vec![0; guest_count],
            credited: false,
        }
    }

    /// Makes turns byte-fair: `bytes` added to a guest's deficit each turn (at least 1; a
    /// packet larger than it waits for the deficit of several turns).
    pub fn with_byte_quantum(mut self, bytes: u32) -> Self {
        self.quantum_bytes = bytes.max(1);
        self
    }

    /// Reserves room for `additional` more guests now, fallibly (false: the heap is short), so
    /// that registering them later does not grow storage.
    pub fn try_reserve(&mut self, additional: usize) -> bool {
        self.active.try_reserve(additional) && self.deficits.try_reserve(additional).is_ok()
    }

    /// Registers one more guest (not ready) and returns its id, the next in order. Grows the
    /// rotation's storage now, so that `mark_ready` never allocates.
    pub fn add_guest(&mut self) -> usize {
        self.deficits.push(0);
        self.active.register()
    }

    /// The guest's FIFO became non-empty: it joins the back of the rotation unless it is in it
    /// already. O(1) and idempotent; an unknown guest id is ignored.
    pub fn mark_ready(&mut self, guest: usize) {
        self.active.push_back(guest);
    }

    /// Whether the guest is in the rotation.
    pub fn is_ready(&self, guest: usize) -> bool {
        self.active.contains(guest)
    }

    /// Guests in the rotation.
    pub fn ready_count(&self) -> usize {
        self.active.len()
    }

    pub fn guest_count(&self) -> usize {
        self.active.ids()
    }

    /// Rotation entries visited so far (the scheduler's work, for tests).
    pub fn work(&self) -> u64 {
        self.active.visits()
    }

    pub fn budget(&self) -> usize {
        self.budget
    }

    /// Hands queued packets to `send` (the NIC), guest by guest, until every FIFO is empty or
    /// `send` refuses a packet by giving it back. A refused packet returns to the head of its
    /// guest's FIFO and that guest resumes its turn on the next call, so nothing is lost or
    /// reordered. `fifos[g]` is guest `g`'s FIFO; a guest without one leaves the rotation.
    /// Returns the number of packets sent.
    pub fn serve(&mut self, fifos: &mut [TxFifo], mut send: impl FnMut(usize, Packet) -> Result<(), Packet>) -> usize {
        let mut sent: usize = 0;
        while let Some(guest) = self.active.front() {
            let mut fifo = fifos.get_mut(guest);
            let quantum = self.quantum_bytes;
            let mut deficit = self.deficits.get(guest).copied().unwrap_or(0);
            if !core::mem::replace(&mut self.credited, true) {
                deficit = deficit.saturating_add(quantum);
            }
            if let Some(fifo) = fifo.as_deref_mut() {
                while self.spent < self.budget {
                    let Some(packet) = fifo.pop() else { break };
                    if packet.len > deficit {
                        // Not this turn: it waits at the head for more deficit.
                        let restored = fifo.push_front(packet);
                        debug_assert!(restored.is_ok(), "no room to return a popped packet");
                        break;
                    }
                    let len = packet.len;
                    match send(guest, packet) {
                        Ok(()) => {
                            sent = sent.saturating_add(1);
                            self.spent = self.spent.saturating_add(1);
                            deficit = deficit.saturating_sub(len);
                        }
                        Err(packet) => {
                            // Cannot fail: the pop just made room.
                            let restored = fifo.push_front(packet);
                            debug_assert!(restored.is_ok(), "no room to return a popped packet");
                            if let Some(d) = self.deficits.get_mut(guest) {
                                *d = deficit;
                            }
                            return sent;
                        }
                    }
                }
            }
            // The turn is over: back of the rotation if more is waiting (keeping what is left
            // of its deficit), else out of it (and the deficit forgotten).
            self.spent = 0;
            self.credited = false;
            self.active.pop_front();
            let more = fifo.is_some_and(|f| !f.is_empty());
            if let Some(d) = self.deficits.get_mut(guest) {
                *d = if more { deficit } else { 0 };
            }
            if more {
                self.active.push_back(guest);
            }
        }
        sent
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing, clippy::arithmetic_side_effects)]
mod tests {
    use super::*;
    use crate::vnet::pool::BufId;

    /// Packet `n` of guest `g` carries buffer `g * 1000 + n`, so the sends can be checked for
    /// order and completeness.
    fn fill(fifo: &mut TxFifo, guest: usize, count: u32) {
        for n in 0..count {
            fifo.push(Packet::pooled(BufId(guest as u32 * 1000 + n), 60)).unwrap();
        }
    }

    /// Guest 0 floods (a full FIFO of 64), guests 1..=3 have 2 packets each; all ready, the
    /// flooder first.
    fn flood_setup(budget: usize) -> (NetScheduler, Vec<TxFifo>) {
        let mut sched = NetScheduler::new(4, budget);
        let mut fifos: Vec<TxFifo> = (0..4).map(|_| TxFifo::new(64)).collect();
        fill(&mut fifos[0], 0, 64);
        assert!(fifos[0].is_full());
        for (g, fifo) in fifos.iter_mut().enumerate().skip(1) {
            fill(fifo, g, 2);
        }
        for g in 0..4 {
            sched.mark_ready(g);
        }
        (sched, fifos)
    }

    /// A NIC that takes at most `per_call` packets per `serve`, recording `(guest, buf)`.
    fn serve_limited(
        sched: &mut NetScheduler,
        fifos: &mut [TxFifo],
        per_call: usize,
        log: &mut Vec<(usize, u32)>,
    ) -> usize {
        let mut taken = 0;
        sched.serve(fifos, |guest, packet| {
            if taken == per_call {
                return Err(packet);
            }
            taken += 1;
            log.push((guest, packet.pool_buf().unwrap().0));
            Ok(())
        })
    }

    /// Each guest's packets were sent once each, in order, and all of them.
    fn assert_complete_and_ordered(log: &[(usize, u32)], counts: &[u32]) {
        for (g, &count) in counts.iter().enumerate() {
            let bufs: Vec<u32> = log.iter().filter(|(guest, _)| *guest == g).map(|&(_, b)| b).collect();
            let want: Vec<u32> = (0..count).map(|n| g as u32 * 1000 + n).collect();
            assert_eq!(bufs, want, "guest {g}");
        }
        assert_eq!(log.len(), counts.iter().sum::<u32>() as usize);
    }

    #[test]
    fn a_flooding_guest_cannot_starve_light_guests() {
        let budget = 4;
        let (mut sched, mut fifos) = flood_setup(budget);
        let mut log = Vec::new();
        let sent = serve_limited(&mut sched, &mut fifos, 20, &mut log);
        assert_eq!(sent, 20);
        assert_eq!(log.len(), 20);
        // Every light guest is done after one call though the flooder still has packets.
        for (g, fifo) in fifos.iter().enumerate().skip(1) {
            assert!(fifo.is_empty(), "guest {g} still has {} packets", fifo.len());
            assert!(!sched.is_ready(g));
        }
        assert_eq!(fifos[0].len(), 64 - 14);
        assert!(sched.is_ready(0));
        let order: Vec<usize> = log.iter().map(|&(g, _)| g).collect();
        assert_eq!(&order[..10], &[0, 0, 0, 0, 1, 1, 2, 2, 3, 3]);
        // While any light guest still had packets to send, the flooder never sent more than
        // `budget` in a row.
        let last_light = order.iter().rposition(|&g| g != 0).unwrap();
        let mut run = 0;
        for &g in &order[..=last_light] {
            run = if g == 0 { run + 1 } else { 0 };
            assert!(run <= budget, "flooder sent {run} in a row: {order:?}");
        }
        // Later calls drain the flooder; nothing is lost or reordered.
        while serve_limited(&mut sched, &mut fifos, 20, &mut log) > 0 {}
        assert_complete_and_ordered(&log, &[64, 2, 2, 2]);
        assert_eq!(sched.ready_count(), 0);
        assert!(fifos.iter().all(TxFifo::is_empty));
    }

    #[test]
    fn light_guests_interleave_with_the_flooder_in_every_round() {
        // Light guests that keep sending: the flooder gets at most `budget` between their packets.
        let budget = 3;
        let mut sched = NetScheduler::new(3, budget);
        let mut fifos: Vec<TxFifo> = (0..3).map(|_| TxFifo::new(64)).collect();
        fill(&mut fifos[0], 0, 60);
        fill(&mut fifos[1], 1, 6);
        fill(&mut fifos[2], 2, 6);
        (0..3).for_each(|g| sched.mark_ready(g));
        let mut log = Vec::new();
        assert_eq!(serve_limited(&mut sched, &mut fifos, usize::MAX, &mut log), 72);
        let order: Vec<usize> = log.iter().map(|&(g, _)| g).collect();
        assert_eq!(&order[..18], &[0, 0, 0, 1, 1, 1, 2, 2, 2, 0, 0, 0, 1, 1, 1, 2, 2, 2]);
        assert!(order[18..].iter().all(|&g| g == 0));
        assert_complete_and_ordered(&log, &[60, 6, 6]);
    }

    #[test]
    fn a_full_nic_loses_nothing_and_keeps_the_turn_order() {
        // The same workload through a generous NIC and through one that takes one packet per
        // call: the stingy NIC must see exactly the same sequence of sends.
        let (mut sched, mut fifos) = flood_setup(4);
        let mut generous = Vec::new();
        assert_eq!(serve_limited(&mut sched, &mut fifos, usize::MAX, &mut generous), 70);
        assert_complete_and_ordered(&generous, &[64, 2, 2, 2]);

        let (mut sched, mut fifos) = flood_setup(4);
        let mut stingy = Vec::new();
        let mut calls = 0;
        while sched.ready_count() > 0 {
            assert_eq!(serve_limited(&mut sched, &mut fifos, 1, &mut stingy), 1);
            calls += 1;
            assert!(calls <= 70, "no progress");
        }
        assert_eq!(stingy, generous);
        assert!(fifos.iter().all(TxFifo::is_empty));
        assert_eq!(serve_limited(&mut sched, &mut fifos, 1, &mut stingy), 0);
    }

    #[test]
    fn a_nic_that_takes_nothing_leaves_everything_queued() {
        let (mut sched, mut fifos) = flood_setup(4);
        for _ in 0..3 {
            assert_eq!(sched.serve(&mut fifos, |_, packet| Err(packet)), 0);
        }
        assert_eq!(fifos.iter().map(TxFifo::len).collect::<Vec<_>>(), [64, 2, 2, 2]);
        assert_eq!(sched.ready_count(), 4);
        // The refused packet went back to the head.
        assert_eq!(fifos[0].pop().and_then(|p| p.pool_buf()), Some(BufId(0)));
    }

    #[test]
    fn varying_nic_capacity_loses_nothing() {
        let (mut sched, mut fifos) = flood_setup(5);
        let mut log = Vec::new();
        let mut total = 0;
        for per_call in [0, 3, 1, 7, 0, 2, 11, 5].into_iter().cycle().take(200) {
            total += serve_limited(&mut sched, &mut fifos, per_call, &mut log);
        }
        assert_eq!(total, 70);
        assert_complete_and_ordered(&log, &[64, 2, 2, 2]);
    }

    #[test]
    fn mark_ready_is_idempotent() {
        let mut sched = NetScheduler::new(2, 8);
        let mut fifos = [TxFifo::new(4), TxFifo::new(4)];
        fill(&mut fifos[1], 1, 3);
        for _ in 0..5 {
            sched.mark_ready(1);
        }
        assert_eq!(sched.ready_count(), 1);
        assert!(sched.is_ready(1) && !sched.is_ready(0));
        let mut log = Vec::new();
        assert_eq!(serve_limited(&mut sched, &mut fifos, usize::MAX, &mut log), 3);
        assert_eq!(log, [(1, 1000), (1, 1001), (1, 1002)]);
        assert!(!sched.is_ready(1));
        // Ready again once drained: it rejoins.
        fill(&mut fifos[1], 1, 1);
        sched.mark_ready(1);
        sched.mark_ready(1);
        assert_eq!(sched.ready_count(), 1);
        assert_eq!(serve_limited(&mut sched, &mut fifos, usize::MAX, &mut log), 1);
    }

    /// Guest 0 floods 9000-byte frames, guest 1 1514-byte ones, guest 2 100-byte ones (64 of
    /// each queued): bytes sent per guest by the time each has sent half its packets.
    #[test]
    fn turns_are_byte_fair_across_frame_sizes() {
        let sizes = [9_000u32, 1_514, 100];
        let mut sched = NetScheduler::new(3, 8).with_byte_quantum(8 * 1_514);
        let mut fifos: Vec<TxFifo> = (0..3).map(|_| TxFifo::new(64)).collect();
        for (g, &size) in sizes.iter().enumerate() {
            for n in 0..64 {
                fifos[g].push(Packet::pooled(BufId(g as u32 * 1000 + n), size)).unwrap();
            }
            sched.mark_ready(g);
        }
        // The NIC takes 40 packets: the jumbo sender gets about the bytes of the 1514-byte one.
        let mut bytes = [0u64; 3];
        let mut log = Vec::new();
        let mut taken = 0;
        sched.serve(&mut fifos, |g, packet| {
            if taken == 40 {
                return Err(packet);
            }
            taken += 1;
            bytes[g] += u64::from(packet.len);
            log.push((g, packet.pool_buf().unwrap().0));
            Ok(())
        });
        let ratio = bytes[0] as f64 / bytes[1] as f64;
        assert!((0.7..=1.3).contains(&ratio), "jumbo {} bytes, full-size {} bytes", bytes[0], bytes[1]);
        // Packet-fair (the budget alone) would have given the jumbo sender six times the bytes.
        let mut packet_fair = NetScheduler::new(3, 8);
        let mut fifos2: Vec<TxFifo> = (0..3).map(|_| TxFifo::new(64)).collect();
        for (g, &size) in sizes.iter().enumerate() {
            for n in 0..64 {
                fifos2[g].push(Packet::pooled(BufId(g as u32 * 1000 + n), size)).unwrap();
            }
            packet_fair.mark_ready(g);
        }
        let (mut bytes2, mut taken2) = ([0u64; 3], 0);
        packet_fair.serve(&mut fifos2, |g, packet| {
            if taken2 == 40 {
                return Err(packet);
            }
            taken2 += 1;
            bytes2[g] += u64::from(packet.len);
            Ok(())
        });
        assert!(bytes2[0] as f64 / bytes2[1] as f64 > 4.0, "{bytes2:?}");
        // Everything still goes, in order, with nothing lost.
        while sched.serve(&mut fifos, |g, packet| {
            log.push((g, packet.pool_buf().unwrap().0));
            Ok(())
        }) > 0
        {}
        assert_complete_and_ordered(&log, &[64, 64, 64]);
        assert_eq!(sched.ready_count(), 0);
    }

    #[test]
    fn a_frame_larger_than_the_quantum_goes_after_enough_turns() {
        let mut sched = NetScheduler::new(2, 8).with_byte_quantum(1_000);
        let mut fifos: Vec<TxFifo> = (0..2).map(|_| TxFifo::new(8)).collect();
        fifos[0].push(Packet::pooled(BufId(0), 2_500)).unwrap();
        fifos[1].push(Packet::pooled(BufId(1000), 100)).unwrap();
        fifos[1].push(Packet::pooled(BufId(1001), 100)).unwrap();
        sched.mark_ready(0);
        sched.mark_ready(1);
        let mut log = Vec::new();
        sched.serve(&mut fifos, |g, packet| {
            log.push((g, packet.pool_buf().unwrap().0));
            Ok(())
        });
        assert_eq!(log, [(1, 1000), (1, 1001), (0, 0)], "the big frame after 3 turns' deficit");
        assert_eq!(sched.ready_count(), 0);
    }

    #[test]
    fn empty_scheduler_serves_nothing() {
        let mut sched = NetScheduler::new(0, 4);
        let mut called = false;
        assert_eq!(
            sched.serve(&mut [], |_, _| {
                called = true;
                Ok(())
            }),
            0
        );
        assert!(!called);
        // Guests but none ready, or ready with nothing queued.
        let mut sched = NetScheduler::new(3, 4);
        let mut fifos = [TxFifo::new(4), TxFifo::new(4), TxFifo::new(4)];
        assert_eq!(sched.serve(&mut fifos, |_, _| Ok(())), 0);
        sched.mark_ready(2);
        assert_eq!(sched.serve(&mut fifos, |_, _| Ok(())), 0);
        assert_eq!(sched.ready_count(), 0);
        assert!(!sched.is_ready(2));
    }

    #[test]
    fn add_guest_hands_out_ids_in_order() {
        let mut sched = NetScheduler::new(2, 4);
        assert_eq!(sched.guest_count(), 2);
        assert_eq!(sched.add_guest(), 2);
        assert_eq!(sched.add_guest(), 3);
        assert_eq!(sched.guest_count(), 4);
        for g in 0..4 {
            sched.mark_ready(g);
        }
        assert_eq!(sched.ready_count(), 4);
        let mut empty = NetScheduler::new(0, 1);
        assert_eq!(empty.add_guest(), 0);
    }

    #[test]
    fn unknown_guests_and_missing_fifos_do_not_panic() {
        let mut sched = NetScheduler::new(3, 4);
        sched.mark_ready(3);
        sched.mark_ready(usize::MAX);
        assert_eq!(sched.ready_count(), 0);
        assert!(!sched.is_ready(usize::MAX));
        // Guest 2 is ready but the caller passes only two FIFOs: it leaves the rotation.
        let mut fifos = [TxFifo::new(4), TxFifo::new(4)];
        fill(&mut fifos[0], 0, 2);
        sched.mark_ready(2);
        sched.mark_ready(0);
        let mut log = Vec::new();
        assert_eq!(serve_limited(&mut sched, &mut fifos, usize::MAX, &mut log), 2);
        assert_eq!(sched.ready_count(), 0);
        assert!(!sched.is_ready(2));
    }

    #[test]
    fn zero_budget_is_taken_as_one() {
        let mut sched = NetScheduler::new(2, 0);
        assert_eq!(sched.budget(), 1);
        let mut fifos = [TxFifo::new(4), TxFifo::new(4)];
        fill(&mut fifos[0], 0, 2);
        fill(&mut fifos[1], 1, 2);
        sched.mark_ready(0);
        sched.mark_ready(1);
        let mut log = Vec::new();
        assert_eq!(serve_limited(&mut sched, &mut fifos, usize::MAX, &mut log), 4);
        assert_eq!(log, [(0, 0), (1, 1000), (0, 1), (1, 1001)]);
    }

    #[test]
    fn ten_thousand_idle_guests_cost_nothing_per_serve() {
        // One guest sends a packet per round; the others never do. The rotation's work per
        // round is the same with 2 guests as with 10,000.
        let work = |guests: usize| {
            let mut sched = NetScheduler::new(guests, 8);
            let mut fifos: Vec<TxFifo> = (0..guests).map(|_| TxFifo::new(4)).collect();
            let sender = guests / 2;
            let before = sched.work();
            for round in 0..100 {
                fifos[sender].push(Packet::pooled(BufId(round), 60)).unwrap();
                sched.mark_ready(sender);
                assert_eq!(sched.serve(&mut fifos, |_, _| Ok(())), 1);
            }
            sched.work() - before
        };
        assert_eq!(work(2), work(10_000));
        assert!(work(10_000) <= 100 * 8, "{}", work(10_000));
    }
}
