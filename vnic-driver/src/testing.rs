//! A fake kernel for host tests: it plays the kernel's side of the rings on the same memory the
//! driver uses, and a switch connects several vNICs. Not for guests.

use crate::{Doorbell, Vnic};
use alloc::boxed::Box;
use alloc::collections::VecDeque;
use alloc::rc::Rc;
use alloc::vec;
use alloc::vec::Vec;
use core::cell::Cell;
use core::sync::atomic::Ordering;
use hypercall_abi::layout::{VNIC_RX_AREA_ADDR, VNIC_TX_AREA_ADDR};
use hypercall_abi::vi::VirtualInterrupts;
use hypercall_abi::vnic::{
    max_frame, ring_used, slot_size, DescStatus, VnicShared, MIN_FRAME, MTU, RX_RING_SIZE, RX_SLOTS, TX_HEADROOM,
    TX_RING_SIZE, TX_SLOTS,
};

/// The fake kernel serves standard-MTU vNICs: slots and largest frame for [`MTU`].
const STANDARD_SLOT: u64 = slot_size(MTU);
const STANDARD_MAX_FRAME: u64 = max_frame(MTU);

/// Counts doorbells; clones share the counts, so a test keeps one while the vNIC owns another.
#[derive(Clone, Debug, Default)]
pub struct CountingDoorbell {
    pub tx_kicks: Rc<Cell<u64>>,
    pub rx_posted: Rc<Cell<u64>>,
}

impl Doorbell for CountingDoorbell {
    fn tx_kick(&mut self) {
        self.tx_kicks.set(self.tx_kicks.get() + 1);
    }

    fn rx_posted(&mut self) {
        self.rx_posted.set(self.rx_posted.get() + 1);
    }
}

/// What a guest shares with the kernel: the shared page and both areas.
pub struct GuestMemory {
    pub shared: Box<VnicShared>,
    pub tx_area: Vec<u8>,
    pub rx_area: Vec<u8>,
}

impl Default for GuestMemory {
    fn default() -> Self {
        Self::with_indices(0)
    }
}

impl GuestMemory {
    /// Fresh memory with every ring index at `start` (near `u32::MAX` to test wrap-around) and
    /// `needs_kick` set, as the kernel leaves an empty ring.
    pub fn with_indices(start: u32) -> Self {
        let shared = Box::<VnicShared>::default();
        for index in [&shared.tx_producer, &shared.tx_consumer, &shared.rx_producer, &shared.rx_consumer] {
            index.0.store(start, Ordering::Relaxed);
        }
        shared.needs_kick.0.store(1, Ordering::Relaxed);
        GuestMemory {
            shared,
            tx_area: vec![0; (TX_SLOTS * STANDARD_SLOT) as usize],
            rx_area: vec![0; (RX_SLOTS * STANDARD_SLOT) as usize],
        }
    }

    pub fn vnic<D: Doorbell>(&mut self, doorbell: D) -> Vnic<'_, D> {
        Vnic::new(&self.shared, &mut self.tx_area, &mut self.rx_area, doorbell).expect("vnic")
    }
}

/// Makes `vnic` post its whole rx ring, as a guest does after the kernel has held frames for it
/// a few times (`rx_wanted` moved): for tests of what comes after the ring, not of the window.
pub fn post_whole_ring<D: Doorbell>(vnic: &mut Vnic<'_, D>) {
    while vnic.kernel_side().rx_posted() < RX_RING_SIZE {
        vnic.kernel_side().shared().rx_wanted.0.fetch_add(1, Ordering::Relaxed);
        assert!(vnic.peek_rx().is_none(), "no frame may wait while the window opens");
    }
}

/// The kernel's side of one vNIC, for the length of one borrow (see [`Vnic::kernel_side`]).
pub struct KernelSide<'v> {
    shared: &'v VnicShared,
    tx_area: &'v [u8],
    rx_area: &'v mut [u8],
    /// Frames that found no posted buffer, oldest first, as the kernel holds them.
    held: &'v mut VecDeque<Vec<u8>>,
}

impl<'v> KernelSide<'v> {
    /// The kernel's side; it looks at the ring (delivers held frames) whenever the guest lets
    /// it, as the kernel does when the guest traps.
    pub(crate) fn new(
        shared: &'v VnicShared,
        tx_area: &'v [u8],
        rx_area: &'v mut [u8],
        held: &'v mut VecDeque<Vec<u8>>,
    ) -> Self {
        KernelSide { shared, tx_area, rx_area, held }
    }

    /// Frames held for want of a posted buffer.
    pub fn held(&self) -> usize {
        self.held.len()
    }

    /// Delivers held frames, oldest first, into the buffers posted since.
    pub fn deliver_held(&mut self) {
        while self.rx_posted() > 0 {
            let Some(frame) = self.held.pop_front() else { break };
            self.fill(&frame);
        }
    }

    pub fn shared(&self) -> &VnicShared {
        self.shared
    }

    /// Tx descriptors produced and not yet completed.
    pub fn tx_pending(&self) -> u32 {
        ring_used(self.shared.tx_producer.0.load(Ordering::Acquire), self.shared.tx_consumer.0.load(Ordering::Relaxed))
    }

    /// Rx buffers posted and not yet filled.
    pub fn rx_posted(&self) -> u32 {
        ring_used(self.shared.rx_producer.0.load(Ordering::Acquire), self.shared.rx_consumer.0.load(Ordering::Relaxed))
    }

    /// Completes every produced tx descriptor: one the kernel would refuse (frame outside a
    /// slot or in its headroom, bad length) gets `RejectedBadDescriptor`, the others what `verdict` says.
    /// Returns the frames given `Done`. Panics if the driver overfilled the ring.
    pub fn complete_tx(&mut self, mut verdict: impl FnMut(&[u8]) -> DescStatus) -> Vec<Vec<u8>> {
        let producer = self.shared.tx_producer.0.load(Ordering::Acquire);
        let mut consumer = self.shared.tx_consumer.0.load(Ordering::Relaxed);
        assert!(ring_used(producer, consumer) <= TX_RING_SIZE, "tx ring overfilled: {producer} - {consumer}");
        let mut sent = Vec::new();
        let mut completed = false;
        while consumer != producer {
            let desc = &self.shared.tx[(consumer % TX_RING_SIZE) as usize];
            let status = match self.tx_frame(desc.addr.load(Ordering::Relaxed), desc.len.load(Ordering::Relaxed)) {
                Some(frame) => {
                    let status = verdict(frame);
                    if status == DescStatus::Done {
                        sent.push(frame.to_vec());
                    }
                    status
                }
                None => DescStatus::RejectedBadDescriptor,
            };
            desc.status.store(status as u32, Ordering::Relaxed);
            consumer = consumer.wrapping_add(1);
            completed = true;
        }
        self.shared.tx_consumer.0.store(consumer, Ordering::Release);
        if completed {
            self.shared.virq.0.fetch_or(VirtualInterrupts::TX_DONE, Ordering::Release);
        }
        sent
    }

    /// Completes every produced tx descriptor as sent and returns the frames.
    pub fn take_tx(&mut self) -> Vec<Vec<u8>> {
        self.complete_tx(|_| DescStatus::Done)
    }

    fn tx_frame(&self, addr: u64, len: u32) -> Option<&'v [u8]> {
        let len = u64::from(len);
        let offset = addr.checked_sub(VNIC_TX_AREA_ADDR)?;
        let in_slot = offset % STANDARD_SLOT;
        if !(MIN_FRAME..=STANDARD_MAX_FRAME).contains(&len)
            || offset >= TX_SLOTS * STANDARD_SLOT
            || in_slot < TX_HEADROOM
            || in_slot + len > STANDARD_SLOT
        {
            return None;
        }
        Some(&self.tx_area[offset as usize..(offset + len) as usize])
    }

    /// Copies `frame` into the next posted rx buffer and raises the rx virtual interrupt; with
    /// none posted (or frames held before it), holds it and moves `rx_wanted`, as the kernel
    /// does. Returns whether the frame went into a buffer intact (false: rejected descriptor).
    pub fn deliver(&mut self, frame: &[u8]) -> bool {
        self.deliver_held();
        if !self.held.is_empty() || self.rx_posted() == 0 {
            self.held.push_back(frame.to_vec());
            self.shared.rx_wanted.0.fetch_add(1, Ordering::Relaxed);
            return true;
        }
        self.fill(frame)
    }

    /// Copies `frame` into the next posted rx buffer (there is one) and raises the interrupt.
    fn fill(&mut self, frame: &[u8]) -> bool {
        let producer = self.shared.rx_producer.0.load(Ordering::Acquire);
        let consumer = self.shared.rx_consumer.0.load(Ordering::Relaxed);
        let posted = ring_used(producer, consumer);
        assert!(posted <= RX_RING_SIZE, "rx ring overfilled: {producer} - {consumer}");
        let desc = &self.shared.rx[(consumer % RX_RING_SIZE) as usize];
        let addr = desc.addr.load(Ordering::Relaxed);
        let capacity = u64::from(desc.len.load(Ordering::Relaxed));
        let offset = addr.checked_sub(VNIC_RX_AREA_ADDR);
        let status = match offset {
            Some(offset)
                if offset % STANDARD_SLOT + capacity <= STANDARD_SLOT
                    && offset < RX_SLOTS * STANDARD_SLOT
                    && frame.len() as u64 <= capacity =>
            {
                let start = offset as usize;
                self.rx_area[start..start + frame.len()].copy_from_slice(frame);
                desc.len.store(frame.len() as u32, Ordering::Relaxed);
                DescStatus::Done
            }
            _ => DescStatus::RejectedBadDescriptor,
        };
        desc.status.store(status as u32, Ordering::Relaxed);
        self.shared.rx_consumer.0.store(consumer.wrapping_add(1), Ordering::Release);
        self.shared.virq.0.fetch_or(VirtualInterrupts::RX, Ordering::Release);
        status == DescStatus::Done
    }
}

/// What one [`switch`] pass did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SwitchPass {
    /// Frames taken from the tx rings.
    pub sent: usize,
    /// Copies delivered into rx buffers.
    pub delivered: usize,
    /// Copies dropped: no buffer posted, or no port with that MAC.
    pub dropped: usize,
}

/// Takes every port's produced frames and delivers each to the port its destination MAC
/// names (group addresses: every other port), like the kernel's vswitch.
pub fn switch(ports: &mut [(&[u8; 6], KernelSide<'_>)]) -> SwitchPass {
    let mut pass = SwitchPass::default();
    let mut frames = Vec::new();
    for (from, (_, side)) in ports.iter_mut().enumerate() {
        frames.extend(side.take_tx().into_iter().map(|f| (from, f)));
    }
    pass.sent = frames.len();
    for (from, frame) in frames {
        let dst = &frame[..6];
        let group = dst[0] & 1 != 0;
        let mut matched = false;
        for (to, (mac, side)) in ports.iter_mut().enumerate() {
            if to != from && (group || dst == &mac[..]) {
                matched = true;
                if side.deliver(&frame) {
                    pass.delivered += 1;
                } else {
                    pass.dropped += 1;
                }
            }
        }
        if !matched {
            pass.dropped += 1;
        }
    }
    pass
}
