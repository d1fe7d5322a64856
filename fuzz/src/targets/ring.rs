//! `vnet::ring`: the tx and rx rings from the kernel's side, driven by a hostile guest.
//!
//! Each input is a sequence of events on one tx ring (copy or COW path) and one rx ring,
//! starting anywhere in the index space (often just before the 2^32 wrap): the guest writes
//! a producer index (any u32: forwards, backwards, into the in-flight window, wrapped, beyond
//! the ring) and the kernel pulls what `offered` allows; the kernel takes one more without
//! asking; the NIC completes any in-flight descriptor, in any order; something completes a
//! garbage index (never taken, already completed, just outside the window); a frame arrives
//! and takes an rx buffer. A model kept here as the list of in-flight descriptors checks that
//! the kernel never takes a descriptor twice, never holds more than the ring, never completes
//! what it did not take (nor twice), accepts exactly the producers inside its window
//! `[taken, consumer + size]`, changes nothing on a refusal, and that the consumer moves only
//! forward, only over completed descriptors; the rx ring fills posted buffers exactly once, in
//! order, never one the guest has not posted.

use crate::engine::{Target, Verdict};
use crate::features::Features;
use crate::source::Source;
use crate::{check, check_eq};
use hypercall_abi::vnic::{RX_RING_SIZE, TX_RING_SIZE};
use kernel_core::vnet::{RingIndexError, RxRing, TxRing};

pub const TARGET: Target = Target {
    name: "ring",
    checks: "tx (copy and COW) and rx rings under any producer values and completions: never a descriptor \
             taken twice, never more than the ring in flight, never a completion of what was not taken, \
             exactly the producers in [taken, consumer+size] accepted, consumer only over completed ones",
    max_len: 512,
    dictionary: &[],
    seeds,
    run,
};

const SIZE: u32 = TX_RING_SIZE;

fn seeds(_: &crate::real::RealInputs) -> Vec<Vec<u8>> {
    vec![
        // COW, start 0: produce 4, complete some, move the producer back (the reported crash).
        vec![1, 0, 0, 0, 0, 8, 4, 2, 0, 2, 1, 0, 0, 0, 0, 0, 0, 0, 4, 4, 6, 0, 0, 6],
        vec![0; 40],
        (0..=255).collect(),
    ]
}

/// The tx ring as the model sees it: the descriptors taken and not yet passed by the consumer,
/// oldest first, each with whether it has completed.
struct TxModel {
    consumer: u32,
    entries: Vec<(u32, bool)>,
}

impl TxModel {
    fn taken(&self) -> u32 {
        self.consumer.wrapping_add(self.entries.len() as u32)
    }

    /// How many descriptors `producer` offers: walk from `taken` as far as the ring has room.
    fn offered(&self, producer: u32) -> Option<u32> {
        let room = SIZE - self.entries.len() as u32;
        (0..=room).find(|&count| self.taken().wrapping_add(count) == producer)
    }

    fn complete(&mut self, index: u32) -> bool {
        let Some(entry) = self.entries.iter_mut().find(|(i, done)| *i == index && !*done) else {
            return false;
        };
        entry.1 = true;
        let passed = self.entries.iter().take_while(|(_, done)| *done).count();
        self.entries.drain(..passed);
        self.consumer = self.consumer.wrapping_add(passed as u32);
        true
    }
}

fn producer(source: &mut Source, consumer: u32, taken: u32) -> u32 {
    match source.below(5) {
        0 => source.u32_near(&[0, u32::MAX, 1 << 31, (1 << 31) - 1]),
        1 => taken.wrapping_add(source.u32_near(&[0, 1, SIZE, u32::MAX, u32::MAX - SIZE])),
        _ => consumer.wrapping_add(u32::from(source.u8()) % (3 * SIZE + 1)).wrapping_sub(SIZE),
    }
}

fn run(input: &[u8], features: &mut Features) -> Verdict {
    let mut source = Source::new(input);
    let copy_mode = source.bool();
    let start = source.u32_near(&[0, u32::MAX - 40, u32::MAX, 1 << 31, (1 << 31) - 20]);
    let mut tx = TxRing::starting_at(start);
    let mut model = TxModel { consumer: start, entries: Vec::new() };
    let rx_start = source.u32_near(&[0, u32::MAX - 40, u32::MAX, 1 << 31]);
    let mut rx = RxRing::starting_at(rx_start);
    let mut rx_producer = rx_start;
    // rx buffers filled since the guest last posted (each index at most once).
    let mut rx_filled: Vec<u32> = Vec::new();

    while !source.is_empty() {
        let consumer_before = tx.consumer();
        let event = source.below(8);
        match event {
            0..=2 => {
                // The guest writes a producer and kicks; the kernel takes what is offered.
                let producer = producer(&mut source, model.consumer, model.taken());
                let got = tx.offered(producer);
                let expected = model.offered(producer);
                let outcome = match got {
                    Ok(count) => u64::from(count),
                    Err(RingIndexError::Behind { .. }) => 100,
                    Err(RingIndexError::Beyond { .. }) => 101,
                };
                features.note("tx offered", outcome);
                check_eq!(
                    got.ok(),
                    expected,
                    "offered({producer}) with consumer {} taken {}",
                    model.consumer,
                    model.taken()
                );
                match got {
                    Ok(count) => {
                        for _ in 0..count {
                            let Some(index) = tx.take() else {
                                return Err(format!("take() refused a descriptor offered({producer}) allowed"));
                            };
                            check!(!model.entries.iter().any(|e| e.0 == index), "index {index} taken twice");
                            check_eq!(index, model.taken(), "taken out of ring order");
                            model.entries.push((index, false));
                        }
                        check_eq!(tx.taken(), producer, "after a pull the kernel has taken up to the producer");
                        if copy_mode {
                            // The copy path completes every descriptor as it takes it.
                            for index in model.entries.iter().filter(|e| !e.1).map(|e| e.0).collect::<Vec<_>>() {
                                check!(tx.complete(index), "copy completion of {index} refused");
                                model.complete(index);
                            }
                        }
                    }
                    Err(error) => check_refusal(&error, producer, &model)?,
                }
            }
            3 => {
                // The kernel takes one more without asking: only while the ring has room.
                let got = tx.take();
                features.note("tx extra take", u64::from(got.is_some()));
                if model.entries.len() < SIZE as usize {
                    check_eq!(got, Some(model.taken()), "take() with room");
                    model.entries.push((model.taken(), false));
                    if copy_mode {
                        let index = model.entries.last().map_or(0, |e| e.0);
                        check!(tx.complete(index), "copy completion refused");
                        model.complete(index);
                    }
                } else {
                    check_eq!(got, None, "take() with a full ring");
                }
            }
            4 | 5 => {
                // The NIC completes any descriptor still in flight.
                let in_flight: Vec<u32> = model.entries.iter().filter(|e| !e.1).map(|e| e.0).collect();
                if let Some(&index) = in_flight.get(source.below(in_flight.len().max(1))) {
                    check!(tx.complete(index), "completion of in-flight {index} refused");
                    model.complete(index);
                    features.note("tx completed", u64::from(tx.consumer() != consumer_before));
                }
            }
            6 => {
                // A completion of anything: garbage, just outside the window, already completed.
                let index = match source.below(4) {
                    0 => source.u32(),
                    1 => model.consumer.wrapping_sub(1 + u32::from(source.u8() % 4)),
                    2 => model.taken().wrapping_add(u32::from(source.u8() % 4)),
                    _ => model.entries.get(source.below(model.entries.len().max(1))).map_or(0, |e| e.0),
                };
                let should = model.entries.iter().any(|&(i, done)| i == index && !done);
                let before = (tx.taken(), tx.consumer());
                let got = tx.complete(index);
                features.note("tx garbage completion", u64::from(got) * 2 + u64::from(should));
                check_eq!(got, should, "complete({index}) with consumer {} taken {}", model.consumer, model.taken());
                if got {
                    model.complete(index);
                } else {
                    check_eq!((tx.taken(), tx.consumer()), before, "a refused completion changed the ring");
                }
            }
            _ => {
                // rx: the guest maybe posts (any producer), then a frame arrives.
                if source.bool() {
                    rx_producer = producer(&mut source, rx.consumer(), rx.consumer());
                    rx_filled.clear();
                }
                let consumer = rx.consumer();
                let posted = rx_producer.wrapping_sub(consumer);
                let got = rx.take(rx_producer);
                features.note("rx take", got.as_ref().map_or(2, |taken| u64::from(taken.is_some())));
                match got {
                    Ok(Some(index)) => {
                        check!((1..=RX_RING_SIZE).contains(&posted), "buffer filled with {posted} posted");
                        check_eq!(index, consumer, "rx buffers are filled in ring order");
                        check!(!rx_filled.contains(&index), "rx buffer {index} filled twice");
                        rx_filled.push(index);
                        check_eq!(rx.consumer(), consumer.wrapping_add(1), "rx consumer after a fill");
                    }
                    Ok(None) => {
                        check_eq!(posted, 0, "no buffer taken with {posted} posted");
                        check_eq!(rx.consumer(), consumer, "rx consumer moved without a fill");
                    }
                    Err(error) => {
                        check!(posted > RX_RING_SIZE, "rx producer {rx_producer} refused with {posted} posted");
                        check_eq!(rx.consumer(), consumer, "rx consumer moved on a refused producer");
                        let _ = error.to_string();
                    }
                }
                check!(rx_filled.len() as u32 <= RX_RING_SIZE, "more rx buffers filled than the ring holds");
            }
        }
        check_eq!(tx.consumer(), model.consumer, "tx consumer");
        check_eq!(tx.taken(), model.taken(), "tx taken");
        check!(tx.in_flight() <= SIZE, "{} in flight", tx.in_flight());
        check_eq!(tx.in_flight(), model.entries.len() as u32, "in flight");
        // The consumer moves forward only, never past a descriptor still in flight.
        check!(tx.consumer().wrapping_sub(consumer_before) <= SIZE, "tx consumer moved backwards");
        check!(model.entries.first().is_none_or(|e| !e.1), "consumer stopped before a completed descriptor");
        if copy_mode {
            check_eq!(tx.in_flight(), 0, "the copy path holds nothing");
        }
        features.note("tx in flight", u64::from(tx.in_flight()));
    }
    Ok(())
}

/// A refused producer: the error names it as the module documents, and nothing changed.
fn check_refusal(error: &RingIndexError, producer: u32, model: &TxModel) -> Verdict {
    let ahead = producer.wrapping_sub(model.consumer);
    let held = model.entries.len() as u32;
    // Within a ring of the consumer but behind `taken`, or wrapped more than half the index
    // space behind the consumer: backwards. Anything else is too far ahead.
    let backwards = ahead < held || ahead > u32::MAX / 2;
    match *error {
        RingIndexError::Behind { producer: p, taken } => {
            check!(backwards, "producer {producer} ({ahead} ahead of the consumer) called behind");
            check_eq!((p, taken), (producer, model.taken()), "Behind fields");
        }
        RingIndexError::Beyond { producer: p, consumer } => {
            check!(!backwards && ahead > SIZE, "producer {producer} ({ahead} ahead) called beyond");
            check_eq!((p, consumer), (producer, model.consumer), "Beyond fields");
        }
    }
    let _ = error.to_string();
    Ok(())
}
