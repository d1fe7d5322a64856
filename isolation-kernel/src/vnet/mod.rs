//! The kernel side of guests' virtual NICs: the doorbell (validate, copy 1 into the guest's
//! FIFO, source-MAC check), the network scheduler's hand-off to the vswitch, delivery into
//! guests' posted rx buffers, and the physical NIC's receive path.
//!
//! Everything the guest writes in its shared page is read once, checked against the kernel's
//! own ring state ([`kernel_core::vnet::ring`]) and never trusted again; the lints below
//! keep guest values away from panics, unchecked indexing and unchecked arithmetic.

#![deny(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing, clippy::arithmetic_side_effects)]

use crate::drivers::virtio_net::TxCookie;
use crate::drivers::virtio_net::VirtioNet;
use crate::guest::space::{copy_into_run, AddressSpace};
use crate::guest::Guest;
use crate::mm::phys::phys_to_virt;
use alloc::collections::VecDeque;
use alloc::vec::Vec;
use core::sync::atomic::Ordering;
use hypercall_abi::layout::{VNIC_RX_AREA_ADDR, VNIC_SHARED_ADDR, VNIC_TX_AREA_ADDR};
use hypercall_abi::vi::VirtualInterrupts;
use hypercall_abi::vnic::stamps::TX_STAMPS;
use hypercall_abi::vnic::{
    max_frame, slot_size, DescStatus, NetConfig, VnicShared, RX_RING_SIZE, RX_SLOTS, SLOT_SIZE, TX_RING_SIZE, TX_SLOTS,
};
use kernel_core::boot::cmdline::TxMode;
use kernel_core::guest::mem::Access;
use kernel_core::guest::sched::{GuestId, Scheduler};
use kernel_core::mm::frame_alloc::FrameAllocator;
use kernel_core::vnet::cow::{CowSlots, Protect, Release, WriteFault};
use kernel_core::vnet::ring;
use kernel_core::vnet::{
    validate_rx_sized, validate_tx_sized, DropReason, GuestFrameRef, NetCounters, NetScheduler, Packet, PacketData,
    PacketPool, Route, RxRing, Source, TxFifo, TxRing, Vswitch,
};

const PAGE: u64 = 4096;

/// Packets a guest may have queued in the kernel.
const FIFO_CAPACITY: usize = 64;
/// Packets a guest may send per turn of the network scheduler.
const BUDGET_PER_TURN: usize = 8;
/// Kernel packet buffers (one page each) shared by all guests' FIFOs.
const POOL_BUFFERS: u32 = 512;

/// A guest's virtual NIC as the kernel sees it: the frames behind its shared page and areas
/// (reached through the direct map, never through guest addresses), and the kernel's own copy
/// of the indices it owns (the copies in the shared page are for the guest to read only).
pub struct GuestNic {
    pub config: NetConfig,
    shared_phys: u64,
    /// Bytes and pages of each tx slot and rx buffer (more than one page for jumbo frames), and
    /// the largest frame, all from the guest's MTU.
    slot_size: u64,
    slot_pages: u64,
    max_frame: u64,
    /// The frames behind the tx slots (they change when a COW fault copies one), and how many
    /// packets are in flight on each.
    cow: CowSlots,
    /// Physical address of the page-table entry of each tx slot page (`slot * slot_pages + i`;
    /// fixed for the guest's life): protecting or restoring a slot is a write per page, no walk.
    tx_pte: Vec<u64>,
    rx_frames: Vec<u64>,
    /// Descriptors taken and completed; the guest sees the completed prefix as `tx_consumer`.
    ring: TxRing,
    /// Rx buffers filled; the guest sees it as `rx_consumer`.
    rx: RxRing,
    bad_descriptor_logged: bool,
    /// Guest pages write-protected since the guest last ran: their TLB entries must go before
    /// it runs again, unless its address space is reloaded anyway.
    pub pending_flush: Vec<u64>,
}

impl GuestNic {
    /// The shared page. Not tied to `&self` so the kernel's own indices can be updated while
    /// it is in use; callers never keep it beyond the handling of one trap or interrupt.
    fn shared(&self) -> &'static VnicShared {
        // The page is freed only after `end_guest` has dropped this GuestNic, and no reference
        // outlives the current trap; the layout fits the page (checked in the ABI).
        // SAFETY: a frame this guest owns for its whole life; every field is an atomic.
        unsafe { &*phys_to_virt(self.shared_phys).as_ptr::<VnicShared>() }
    }

    /// Pending virtual-interrupt bits.
    pub fn virq(&self) -> u64 {
        self.shared().virq.0.load(Ordering::Acquire)
    }

    /// The counters the guest last published about its own receive path and apps: allegations,
    /// only ever printed (see `reports`).
    pub fn published_counters(&self) -> hypercall_abi::vnic::GuestCounterValues {
        self.shared().guest_counters.read()
    }

    /// Rx buffers posted and not yet filled (0 if the guest wrote nonsense).
    pub fn rx_posted(&self) -> u32 {
        self.rx.offered(self.shared().rx_producer.0.load(Ordering::Acquire)).unwrap_or(0)
    }

    /// Logs the first misbehaviour of this guest's vNIC; later ones are only counted.
    fn log_once(&mut self, id: GuestId, name: &str, what: core::fmt::Arguments<'_>) {
        if !core::mem::replace(&mut self.bad_descriptor_logged, true) {
            log::warn!("guest {id} {name}: {what} (further vNIC errors of this guest are only counted)");
        }
    }
}

/// Maps the shared page and the tx and rx areas into a new guest and returns its NIC.
pub fn build_nic(
    space: &mut AddressSpace,
    frames: &mut FrameAllocator<'static>,
    config: NetConfig,
    stamps: bool,
) -> Result<GuestNic, crate::guest::space::SpaceError> {
    let shared_phys = space.new_frame(frames)?;
    space.map_page(frames, VNIC_SHARED_ADDR, shared_phys, Access::READ_WRITE)?;
    space
        .map
        .add(VNIC_SHARED_ADDR, VNIC_SHARED_ADDR + SLOT_SIZE, Access::READ_WRITE)
        .map_err(|_| crate::guest::space::SpaceError::BadMapping(VNIC_SHARED_ADDR))?;
    let slot = slot_size(u64::from(config.mtu));
    let pages = slot / PAGE;
    // Each slot is a physically contiguous run of pages, so a frame is one piece for the NIC.
    // Kernel constants only (areas, slot counts, slot sizes of MTUs the image checker bounds):
    // the layout asserts in hypercall-abi prove these sums stay inside the guest's lower half.
    let mut area = |base: u64, slots: u64, space: &mut AddressSpace| {
        let mut runs = Vec::with_capacity(slots as usize);
        for index in 0..slots {
            let run = space.new_run(frames, pages)?;
            let slot_base = base.wrapping_add(index.wrapping_mul(slot));
            for (virt, phys) in page_addrs_of(slot_base, pages).zip(page_addrs_of(run, pages)) {
                space.map_page(frames, virt, phys, Access::READ_WRITE)?;
            }
            runs.push(run);
        }
        space
            .map
            .add(base, base.wrapping_add(slots.wrapping_mul(slot)), Access::READ_WRITE)
            .map_err(|_| crate::guest::space::SpaceError::BadMapping(base))?;
        Ok(runs)
    };
    let tx_frames = area(VNIC_TX_AREA_ADDR, TX_SLOTS, space)?;
    let rx_frames = area(VNIC_RX_AREA_ADDR, RX_SLOTS, space)?;
    let tx_pte = page_addrs_of(VNIC_TX_AREA_ADDR, TX_SLOTS.wrapping_mul(pages))
        .map(|page| space.leaf_pte_phys(page))
        .collect::<Option<Vec<u64>>>()
        .ok_or(crate::guest::space::SpaceError::BadMapping(VNIC_TX_AREA_ADDR))?;
    let nic = GuestNic {
        config,
        shared_phys,
        slot_size: slot,
        slot_pages: pages,
        max_frame: max_frame(u64::from(config.mtu)),
        cow: CowSlots::new(&tx_frames),
        tx_pte,
        rx_frames,
        ring: TxRing::new(),
        rx: RxRing::new(),
        bad_descriptor_logged: false,
        pending_flush: Vec::with_capacity(TX_SLOTS as usize),
    };
    nic.shared().needs_kick.0.store(1, Ordering::Release);
    nic.shared().stamps_enabled.0.store(u32::from(stamps), Ordering::Release);
    Ok(nic)
}

/// The network: physical NIC, vswitch, per-guest FIFOs, the network scheduler, the buffer pool.
pub struct Network {
    pub nic: Option<VirtioNet>,
    vswitch: Vswitch,
    sched: NetScheduler,
    fifos: Vec<TxFifo>,
    pool: PacketPool,
    /// Base of each pool buffer: a contiguous run of `pool_buffer_bytes`.
    pool_frames: Vec<u64>,
    pool_buffer_bytes: u64,
    /// Guests whose tx ring still holds packets the kernel could not take yet.
    backlog: VecDeque<GuestId>,
    pub counters: NetCounters,
    pub mode: TxMode,
    /// Zero-copy packets done with, waiting to be completed (scratch space kept between calls,
    /// so the packet path does not allocate).
    finished: Vec<(TxCookie, DescStatus)>,
    /// Slot runs of guests that ended with packets in flight on them, as (base, packets,
    /// pages): freed when the NIC is done.
    zombies: Vec<(u64, u32, u64)>,
    /// TSC ticks per zero-copy packet completed by the NIC (release, restore, ring completion),
    /// averaged over each batch the NIC hands back: the COW path's cost after the notify.
    pub completion_samples: Vec<u32>,
    /// Per-packet stage stamps (`stamps=on`): records of packets in flight through the kernel
    /// (guest send, driver, doorbell; kernel trap entry, vNIC work done), the packets handed to
    /// the NIC since the last notify, and the finished transmit records by frame length.
    pub stamps: bool,
    stamp_records: Vec<[u64; 5]>,
    next_stamp: u32,
    pending_notify: Vec<(u32, u64, u64, u32)>,
    pub tx_stage_samples: alloc::collections::BTreeMap<u32, Vec<[u32; 7]>>,
    pub stamp_records_made: u64,
}

/// Stamp records the kernel keeps for packets in flight (more than can be queued at once).
const STAMP_SLOTS: u32 = 4096;
/// Transmit records kept per frame length.
const STAMP_SAMPLES: usize = 10_240;

/// The bytes `[offset, offset + len)` of the contiguous run of `run` bytes at `phys`. Callers
/// pass ranges they checked; a range beyond the run is a kernel bug, and panics.
fn run_bytes<'p>(phys: u64, run: u64, offset: u64, len: u64) -> &'p [u8] {
    assert!(offset.checked_add(len).is_some_and(|end| end <= run), "read beyond the run");
    // SAFETY: a page in the direct map, range inside it (checked); the caller uses the slice
    // before anything can change the page (the kernel runs with interrupts off, on one CPU).
    unsafe { core::slice::from_raw_parts(phys_to_virt(phys.wrapping_add(offset)).as_ptr::<u8>(), len as usize) }
}

impl Network {
    /// The network for guests whose largest MTU is `max_mtu` (sizing the pool's buffers; 0 when
    /// no guest has a NIC, and then there are no buffers).
    pub fn new(nic: Option<VirtioNet>, mode: TxMode, max_mtu: u64, frames: &mut FrameAllocator<'static>) -> Network {
        let pool_buffer_bytes = max_frame(max_mtu).next_multiple_of(PAGE);
        let buffers = if max_mtu == 0 { 0 } else { POOL_BUFFERS };
        let mut pool_frames = Vec::with_capacity(buffers as usize);
        for _ in 0..buffers {
            match frames.allocate_contiguous(pool_buffer_bytes / PAGE, 1) {
                Some(phys) => pool_frames.push(phys),
                None => break,
            }
        }
        Network {
            nic,
            vswitch: Vswitch::new(),
            sched: NetScheduler::new(0, BUDGET_PER_TURN),
            fifos: Vec::new(),
            pool: PacketPool::new(pool_frames.len() as u32),
            pool_frames,
            pool_buffer_bytes,
            backlog: VecDeque::new(),
            counters: NetCounters::default(),
            mode,
            finished: Vec::with_capacity(256),
            zombies: Vec::new(),
            completion_samples: Vec::with_capacity(65_536),
            stamps: false,
            stamp_records: Vec::new(),
            next_stamp: 0,
            pending_notify: Vec::new(),
            tx_stage_samples: alloc::collections::BTreeMap::new(),
            stamp_records_made: 0,
        }
    }

    /// Queues a packet guest `id` sent in its FIFO (which the caller saw had room).
    fn queue(&mut self, id: GuestId, packet: Packet) {
        if let Some(fifo) = self.fifos.get_mut(id) {
            let _ = fifo.push(packet);
        }
    }

    /// Turns per-packet stage stamps on (before guests start).
    pub fn enable_stamps(&mut self) {
        self.stamps = true;
        self.stamp_records = alloc::vec![[0; 5]; STAMP_SLOTS as usize];
        self.pending_notify.reserve(256);
    }

    /// A stamp record for a packet taken from a tx slot: the guest's stamps from the slot's
    /// headroom, the trap entry, and now (its vNIC work done).
    fn start_tx_record(&mut self, slot_run: u64, slot_size: u64) -> u32 {
        if !self.stamps {
            return kernel_core::vnet::NO_STAMP;
        }
        let now = crate::arch::cpu::rdtsc_serialized();
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
    fn finish_tx_records(&mut self) {
        if self.pending_notify.is_empty() {
            return;
        }
        let notified = crate::arch::cpu::rdtsc_serialized();
        for (index, handed, queued, len) in self.pending_notify.drain(..) {
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
        }
    }

    /// Guest `id` ends: frames with packets still in flight must outlive its address space.
    pub fn orphan_in_flight(&mut self, nic: &GuestNic, space: &mut AddressSpace) {
        for (base, count) in nic.cow.frames_in_flight() {
            for page in page_addrs_of(base, nic.slot_pages) {
                space.disown(page);
            }
            self.zombies.push((base, count, nic.slot_pages));
        }
    }

    /// A zero-copy packet on `frame`, of a guest that has ended, is done with: the frame is
    /// freed after its last packet (and counted, so that a leak shows as a shortfall).
    fn release_zombie(&mut self, frame: u64) {
        let Some(index) = self.zombies.iter().position(|&(base, _, _)| base == frame) else { return };
        let Some((_, packets, _)) = self.zombies.get_mut(index) else { return };
        *packets = packets.saturating_sub(1);
        if *packets == 0 {
            let (base, _, pages) = self.zombies.swap_remove(index);
            free_run(base, pages);
            self.counters.zombies_freed = self.counters.zombies_freed.saturating_add(1);
        }
    }

    /// Registers guest `id` (every guest, with or without a NIC, so ids line up).
    pub fn add_guest(&mut self, id: GuestId, nic: Option<&GuestNic>) -> Result<(), &'static str> {
        while self.fifos.len() <= id {
            self.fifos.push(TxFifo::new(FIFO_CAPACITY));
            self.sched.add_guest();
        }
        if let Some(nic) = nic {
            self.vswitch
                .add_port(id, nic.config.mac, nic.config.ipv4)
                .map_err(|_| "its MAC or IPv4 address is already another guest's")?;
        }
        Ok(())
    }
}

/// Everything the packet path touches, borrowed from the guest table at once.
pub struct NetCtx<'a> {
    pub net: &'a mut Network,
    pub nics: &'a mut [Option<GuestNic>],
    pub sched: &'a mut Scheduler,
    pub guests: &'a mut [Guest],
}

/// The page addresses of the `pages`-page run at `base` (a kernel-made run or slot: no wrap).
fn page_addrs_of(base: u64, pages: u64) -> impl Iterator<Item = u64> + Clone {
    (0..pages).map(move |page| base.wrapping_add(page.wrapping_mul(PAGE)))
}

/// Frees a contiguous run of `pages` frames.
fn free_run(base: u64, pages: u64) {
    crate::mm::phys::with_frames(|frames| {
        for frame in page_addrs_of(base, pages) {
            let _ = frames.deallocate(frame);
        }
    });
}

impl GuestNic {
    /// Guest address of tx slot `slot` (a validated slot number: inside the tx area).
    fn slot_addr(&self, slot: u64) -> u64 {
        VNIC_TX_AREA_ADDR.wrapping_add(slot.wrapping_mul(self.slot_size))
    }

    /// Sets the writable bit of every page of tx slot `slot` (nothing for a slot that does
    /// not exist).
    fn set_slot_writable(&self, slot: usize, writable: bool) {
        let pages = self.slot_pages as usize;
        let ptes = slot.checked_mul(pages).and_then(|first| self.tx_pte.get(first..first.checked_add(pages)?));
        for pte in ptes.unwrap_or_default() {
            crate::guest::space::set_pte_writable(*pte, writable);
        }
    }
}

impl NetCtx<'_> {
    /// The doorbell of guest `id`: takes what its tx ring holds, then runs the network
    /// scheduler. Returns the number of descriptors taken.
    pub fn tx_kick(&mut self, id: GuestId) -> u64 {
        let taken = self.pull_tx(id);
        self.serve();
        taken
    }

    /// Validates the guest's pending tx descriptors and queues their frames in its FIFO: copied
    /// into a pool buffer (copy path, copy 1), or left in the write-protected slot (COW path).
    fn pull_tx(&mut self, id: GuestId) -> u64 {
        let Some(nic) = self.nics.get_mut(id).and_then(Option::as_mut) else { return 0 };
        let name = self.guests.get(id).map_or("?", |g| g.name.as_str()); // for the one log line per misbehaving guest
        let net = &mut *self.net;
        let shared = nic.shared();
        // The producer is read once and checked against the kernel's own ring state: behind what
        // the kernel has taken (moved backwards) or more than a ring past the consumer, it is
        // refused whole and nothing is taken.
        let producer = shared.tx_producer.0.load(Ordering::Acquire);
        let count = match nic.ring.offered(producer) {
            Ok(count) => count,
            Err(bad) => {
                net.counters.bad_ring_indices = net.counters.bad_ring_indices.saturating_add(1);
                nic.log_once(id, name, format_args!("tx ring: {bad}; ignored"));
                return 0;
            }
        };
        let mut taken: u64 = 0;
        let mut backlogged = false;
        for _ in 0..count {
            match take_tx(net, nic, id, name, shared) {
                Taken::Yes => taken = taken.saturating_add(1),
                Taken::Backlogged => {
                    backlogged = true;
                    break;
                }
            }
        }
        shared.tx_consumer.0.store(nic.ring.consumer(), Ordering::Release);
        shared.needs_kick.0.store(u32::from(!backlogged), Ordering::Release);
        if taken > 0 {
            shared.virq.0.fetch_or(VirtualInterrupts::TX_DONE, Ordering::AcqRel);
            // Room in its ring: a guest waiting for a free slot may go on.
            self.sched.wake(id);
        }
        if backlogged && !net.backlog.contains(&id) {
            net.backlog.push_back(id);
        }
        taken
    }

    /// A zero-copy packet of guest `id` is done with (sent, delivered or dropped): complete its
    /// descriptor, release its page, and wake the guest (it may be waiting for a free slot).
    fn complete_cow(&mut self, id: GuestId, r: GuestFrameRef, status: DescStatus) {
        let Some(nic) = self.nics.get_mut(id).and_then(Option::as_mut) else {
            // The guest has ended: its frame waits among the zombies for its last packet.
            self.net.release_zombie(r.frame);
            return;
        };
        let shared = nic.shared();
        if let Some(desc) = shared.tx.get(ring::position(r.ring_index, TX_RING_SIZE)) {
            desc.status.store(status as u32, Ordering::Relaxed);
        }
        nic.ring.complete(r.ring_index);
        match nic.cow.release(usize::from(r.slot), r.frame) {
            // No flush: a stale read-only TLB entry costs at most a spurious fault.
            Release::RestoreWrite { slot } => nic.set_slot_writable(slot, true),
            Release::FreeFrame(base) => free_run(base, nic.slot_pages),
            Release::StillInFlight | Release::Unknown => {}
        }
        shared.tx_consumer.0.store(nic.ring.consumer(), Ordering::Release);
        shared.virq.0.fetch_or(VirtualInterrupts::TX_DONE, Ordering::AcqRel);
        self.sched.wake(id);
    }

    /// Handles a write fault by guest `id` at `addr`; `Some(cause)` if it is not a COW fault
    /// the kernel resolves (then the guest is stopped).
    pub fn write_fault(&mut self, id: GuestId, addr: u64) -> Option<alloc::string::String> {
        let nic = self.nics.get_mut(id).and_then(Option::as_mut)?;
        let slot = addr
            .checked_sub(VNIC_TX_AREA_ADDR)
            .and_then(|offset| offset.checked_div(nic.slot_size))
            .filter(|&slot| slot < TX_SLOTS && self.net.mode == TxMode::Cow)
            .and_then(|slot| usize::try_from(slot).ok());
        let Some(slot) = slot else { return Some(alloc::string::String::new()) };
        let (slot_addr, run, pages) = (nic.slot_addr(slot as u64), nic.slot_size, nic.slot_pages);
        let page_addrs = (0..pages).map(move |page| slot_addr.wrapping_add(page.wrapping_mul(PAGE)));
        let Some(space) = self.guests.get_mut(id).and_then(|g| g.space.as_mut()) else {
            return Some("write fault of a guest without an address space".into());
        };
        match nic.cow.write_fault(slot) {
            Some(WriteFault::Spurious) => {
                nic.set_slot_writable(slot, true);
                self.net.counters.cow_spurious = self.net.counters.cow_spurious.saturating_add(1);
                None
            }
            Some(WriteFault::Copy { old }) => {
                // The whole slot is copied, so it stays one contiguous run for the NIC.
                let copied = crate::mm::phys::with_frames(|frames| {
                    let new = frames.allocate_contiguous(pages, 1)?;
                    copy_into_run(new, run, 0, run_bytes(old, run, 0, run));
                    for (virt, phys) in page_addrs.clone().zip(page_addrs_of(new, pages)) {
                        if space.remap_writable(frames, virt, phys).is_err() {
                            // Cannot happen (the slot's pages were mapped when the NIC was
                            // built); the guest is stopped and the copy freed with its space.
                            page_addrs_of(new, pages).for_each(|frame| space.own(frame));
                            return None;
                        }
                    }
                    Some(new)
                });
                let Some(new) = copied else {
                    return Some(alloc::format!("no memory for a copy-on-write copy of tx slot {slot}"));
                };
                // Every page of the slot now maps the copy. A read-only TLB entry of another
                // page of a multi-page slot would still point at the old run, which is freed
                // once the NIC is done with it: drop them all now (the faulting address space
                // is the active one).
                for virt in page_addrs {
                    x86_64::instructions::tlb::flush(x86_64::VirtAddr::new(virt));
                    self.net.counters.tlb_flushes = self.net.counters.tlb_flushes.saturating_add(1);
                }
                // The old run now belongs to the packets in flight; freed after the last.
                for (old_page, new_page) in page_addrs_of(old, pages).zip(page_addrs_of(new, pages)) {
                    space.disown(old_page);
                    space.own(new_page);
                }
                nic.cow.replace(slot, new);
                self.net.counters.cow_faults = self.net.counters.cow_faults.saturating_add(1);
                None
            }
            None => Some(alloc::string::String::new()),
        }
    }

    /// Runs the network scheduler: FIFOs to the vswitch, and from there to other guests or the
    /// physical NIC; then takes more from backlogged guests if room was made.
    pub fn serve(&mut self) {
        // Completions gathered while the scheduler holds the network borrowed; the vector is the
        // network's own, reused, so the packet path does not allocate.
        let mut finished = core::mem::take(&mut self.net.finished);
        for _ in 0..2 {
            {
                let NetCtx { net, nics, sched, .. } = self;
                let Network {
                    nic,
                    vswitch,
                    sched: net_sched,
                    fifos,
                    pool,
                    pool_frames,
                    pool_buffer_bytes,
                    counters,
                    stamps,
                    pending_notify,
                    ..
                } = &mut **net;
                let stamping = *stamps;
                let stamp = || if stamping { crate::arch::cpu::rdtsc_serialized() } else { 0 };
                net_sched.serve(fifos, |src, packet| {
                    let len = u64::from(packet.len);
                    let (frame, guest_frame) = match packet.data {
                        PacketData::Pool(buf) => {
                            let Some(&base) = pool_frames.get(buf.0 as usize) else {
                                return Ok(()); // not a pool buffer: cannot happen
                            };
                            (run_bytes(base, *pool_buffer_bytes, 0, len), None)
                        }
                        PacketData::GuestFrame(r) => {
                            let Some(Some(owner)) = nics.get(src) else {
                                finished.push(((src, r), DescStatus::Done)); // its guest has ended
                                return Ok(());
                            };
                            (run_bytes(r.frame, owner.slot_size, u64::from(r.offset), len), Some(r))
                        }
                    };
                    match vswitch.route(frame, Source::Guest(src)) {
                        Route::Guest(dst) => {
                            deliver(nics, sched, counters, dst, frame);
                        }
                        Route::Uplink => match (nic.as_mut(), guest_frame) {
                            (Some(nic), None) => {
                                let handed = stamp();
                                if nic.transmit(frame, |cookie| finished.push((cookie, DescStatus::Done))).is_err() {
                                    return Err(packet); // every NIC slot is in flight: retry later
                                }
                                if packet.stamp != kernel_core::vnet::NO_STAMP {
                                    pending_notify.push((packet.stamp, handed, stamp(), packet.len));
                                }
                                counters.tx_copies = counters.tx_copies.saturating_add(1); // copy 2, into the NIC's DMA buffer
                                counters.tx_bytes_copied = counters.tx_bytes_copied.saturating_add(len);
                            }
                            (Some(nic), Some(r)) => {
                                let data = r.frame.wrapping_add(u64::from(r.offset)); // inside the slot's run
                                let handed = stamp();
                                let queued = nic.transmit_zero_copy(data, packet.len, (src, r), |cookie| {
                                    finished.push((cookie, DescStatus::Done))
                                });
                                if queued.is_err() {
                                    return Err(packet);
                                }
                                if packet.stamp != kernel_core::vnet::NO_STAMP {
                                    pending_notify.push((packet.stamp, handed, stamp(), packet.len));
                                }
                                return Ok(()); // completes when the NIC is done with the page
                            }
                            (None, _) => counters.drops_unknown_mac = counters.drops_unknown_mac.saturating_add(1),
                        },
                        Route::Drop(reason) => count_drop(counters, reason),
                    }
                    match (packet.data, guest_frame) {
                        (PacketData::Pool(buf), _) => {
                            let _ = pool.release(buf);
                        }
                        (_, Some(r)) => finished.push(((src, r), DescStatus::Done)),
                        _ => {}
                    }
                    Ok(())
                });
                if let Some(nic) = nic.as_mut() {
                    nic.flush();
                }
            }
            self.net.finish_tx_records();
            for ((guest, r), status) in finished.drain(..) {
                self.complete_cow(guest, r, status);
            }
            if self.net.backlog.is_empty() {
                break;
            }
            // A guest still backlogged goes to the back again: each is pulled once per round.
            for _ in 0..self.net.backlog.len() {
                if let Some(id) = self.net.backlog.pop_front() {
                    self.pull_tx(id);
                }
            }
        }
        self.net.finished = finished;
    }

    /// Takes back what the NIC has sent, completing zero-copy packets.
    fn reclaim_nic(&mut self) {
        let mut finished = core::mem::take(&mut self.net.finished);
        if let Some(nic) = self.net.nic.as_mut() {
            nic.reclaim_tx(|cookie| finished.push((cookie, DescStatus::Done)));
        }
        if finished.is_empty() {
            self.net.finished = finished;
            return;
        }
        // With stamping on, the completion work per packet is timed for the transmit figures.
        let stamping = self.net.stamps;
        let start = if stamping { crate::arch::cpu::rdtsc_serialized() } else { 0 };
        let count = finished.len() as u64;
        for ((guest, r), status) in finished.drain(..) {
            self.complete_cow(guest, r, status);
        }
        self.net.finished = finished;
        let samples = &mut self.net.completion_samples;
        if stamping && samples.len() < samples.capacity() {
            let ticks = crate::arch::cpu::rdtsc_serialized().saturating_sub(start);
            samples.push(ticks.checked_div(count).unwrap_or(0) as u32);
        }
    }

    /// The physical NIC's receive path: every frame to the guest the vswitch names.
    pub fn receive_from_nic(&mut self) -> usize {
        let stamping = self.net.stamps;
        let stamp = || if stamping { crate::arch::cpu::rdtsc_serialized() } else { 0 };
        let (entry, handler) = (crate::arch::trap::entry_tsc(), stamp());
        self.reclaim_nic();
        let NetCtx { net, nics, sched, .. } = self;
        let Network { nic, vswitch, counters, .. } = &mut **net;
        let Some(nic) = nic.as_mut() else { return 0 };
        nic.receive_with(
            |frame| {
                let popped = stamp();
                let route = vswitch.route(frame, Source::Uplink);
                let routed = stamp();
                match route {
                    Route::Guest(dst) => {
                        deliver(nics, sched, counters, dst, frame).map(|area| (area, popped, routed, stamp()))
                    }
                    Route::Uplink => {
                        count_drop(counters, DropReason::UnknownMac);
                        None
                    }
                    Route::Drop(reason) => {
                        count_drop(counters, reason);
                        None
                    }
                }
            },
            |delivered| {
                // The receive stamps go at the end of the guest's rx buffer, once the NIC's
                // buffer is released; the guest adds its own when it takes the frame.
                if let (true, Some(((run, size), popped, routed, copied))) = (stamping, delivered) {
                    let stamps = [entry, handler, popped, routed, copied, stamp()];
                    let mut bytes = [0u8; 48];
                    for (chunk, value) in bytes.chunks_mut(8).zip(stamps) {
                        chunk.copy_from_slice(&value.to_le_bytes());
                    }
                    copy_into_run(run, size, hypercall_abi::vnic::stamps::rx_stamps_offset(size), &bytes);
                }
            },
        )
    }
}

/// Whether [`take_tx`] took the next descriptor.
enum Taken {
    /// Taken: queued, or rejected with a status the guest sees.
    Yes,
    /// Not taken: the guest's FIFO or the kernel's buffers are full; it stays in the ring.
    Backlogged,
}

/// Takes the next descriptor of guest `id`'s tx ring (which [`TxRing::offered`] said is there):
/// validates it, and queues its frame or completes it with a rejection.
fn take_tx(net: &mut Network, nic: &mut GuestNic, id: GuestId, name: &str, shared: &VnicShared) -> Taken {
    let position = nic.ring.taken();
    let Some(desc) = shared.tx.get(ring::position(position, TX_RING_SIZE)) else { return Taken::Backlogged };
    // Read each field once: the guest may change them behind our back.
    let (addr, len) = (desc.addr.load(Ordering::Relaxed), desc.len.load(Ordering::Relaxed));
    let validated = validate_tx_sized(addr, len, nic.max_frame, nic.slot_size)
        .map(|frame| (frame, usize::try_from(frame.slot).ok().and_then(|slot| nic.cow.frame(slot).map(|f| (slot, f)))));
    let (frame, slot, page) = match validated {
        Ok((frame, Some((slot, page)))) => (frame, slot, page),
        Ok((_, None)) | Err(_) => {
            if let Err(bad) = validated {
                nic.log_once(id, name, format_args!("rejected tx descriptor: {bad}"));
            }
            let Some(index) = nic.ring.take() else { return Taken::Backlogged };
            net.counters.drops_bad_desc = net.counters.drops_bad_desc.saturating_add(1);
            desc.status.store(DescStatus::RejectedBadDescriptor as u32, Ordering::Relaxed);
            nic.ring.complete(index);
            return Taken::Yes;
        }
    };
    if net.fifos.get(id).is_none_or(TxFifo::is_full) {
        return Taken::Backlogged;
    }
    // `frame.len <= max_frame <= 9014` and `frame.offset < slot_size`, so both fit a u32.
    let (frame_len, frame_offset) = (frame.len as u32, frame.offset as u32);
    match net.mode {
        TxMode::Copy => {
            let Some(buf) = net.pool.alloc() else { return Taken::Backlogged };
            let Some(&kernel_copy) = net.pool_frames.get(buf.0 as usize) else {
                let _ = net.pool.release(buf);
                return Taken::Backlogged;
            };
            let Some(index) = nic.ring.take() else {
                let _ = net.pool.release(buf);
                return Taken::Backlogged;
            };
            let bytes = run_bytes(page, nic.slot_size, frame.offset, frame.len);
            copy_into_run(kernel_copy, net.pool_buffer_bytes, 0, bytes); // copy 1
            net.counters.tx_copies = net.counters.tx_copies.saturating_add(1);
            net.counters.tx_bytes_copied = net.counters.tx_bytes_copied.saturating_add(frame.len);
            // The check runs on the kernel's copy: what is checked is what is sent.
            let status = if net.vswitch.source_is(id, run_bytes(kernel_copy, net.pool_buffer_bytes, 0, frame.len)) {
                let stamp = net.start_tx_record(page, nic.slot_size);
                net.queue(id, Packet { stamp, ..Packet::pooled(buf, frame_len) });
                net.sched.mark_ready(id);
                net.counters.tx_packets = net.counters.tx_packets.saturating_add(1);
                net.counters.tx_bytes = net.counters.tx_bytes.saturating_add(frame.len);
                DescStatus::Done
            } else {
                let _ = net.pool.release(buf);
                net.counters.drops_spoof = net.counters.drops_spoof.saturating_add(1);
                DescStatus::RejectedSpoofedSource
            };
            desc.status.store(status as u32, Ordering::Relaxed);
            nic.ring.complete(index);
        }
        TxMode::Cow => {
            let Some(index) = nic.ring.take() else { return Taken::Backlogged };
            // Protect first, check after: the guest cannot change what was checked.
            if nic.cow.protect(slot) == Some(Protect::WriteProtect) {
                nic.set_slot_writable(slot, false);
                let base = nic.slot_addr(frame.slot);
                nic.pending_flush.extend((0..nic.slot_pages).map(|page| base.wrapping_add(page.wrapping_mul(PAGE))));
                net.counters.cow_protects = net.counters.cow_protects.saturating_add(1);
            }
            if net.vswitch.source_is(id, run_bytes(page, nic.slot_size, frame.offset, frame.len)) {
                // Slot numbers are below TX_SLOTS (32).
                let reference =
                    GuestFrameRef { frame: page, offset: frame_offset, slot: slot as u16, ring_index: index };
                let stamp = net.start_tx_record(page, nic.slot_size);
                net.queue(id, Packet { data: PacketData::GuestFrame(reference), len: frame_len, stamp });
                net.sched.mark_ready(id);
                net.counters.tx_packets = net.counters.tx_packets.saturating_add(1);
                net.counters.tx_bytes = net.counters.tx_bytes.saturating_add(frame.len);
            } else {
                net.counters.drops_spoof = net.counters.drops_spoof.saturating_add(1);
                desc.status.store(DescStatus::RejectedSpoofedSource as u32, Ordering::Relaxed);
                nic.ring.complete(index);
                if let Release::RestoreWrite { .. } = nic.cow.release(slot, page) {
                    nic.set_slot_writable(slot, true);
                }
            }
        }
    }
    Taken::Yes
}

fn count_drop(counters: &mut NetCounters, reason: DropReason) {
    match reason {
        DropReason::Malformed => counters.drops_malformed = counters.drops_malformed.saturating_add(1),
        _ => counters.drops_unknown_mac = counters.drops_unknown_mac.saturating_add(1),
    }
}

/// Copies `frame` into the next rx buffer guest `dst` posted, raises its rx virtual interrupt
/// and wakes it. A frame longer than the guest's MTU allows, or with no buffer to go into, is
/// dropped and counted; a buffer the guest described badly is consumed, marked rejected and
/// counted.
/// Returns the rx buffer (run base and size) the frame went into, for the receive stamps.
fn deliver(
    nics: &mut [Option<GuestNic>],
    sched: &mut Scheduler,
    counters: &mut NetCounters,
    dst: GuestId,
    frame: &[u8],
) -> Option<(u64, u64)> {
    let Some(nic) = nics.get_mut(dst).and_then(Option::as_mut) else {
        counters.drops_unknown_mac = counters.drops_unknown_mac.saturating_add(1);
        return None;
    };
    let frame_len = frame.len() as u64;
    if frame_len > nic.max_frame {
        counters.drops_oversize = counters.drops_oversize.saturating_add(1);
        return None;
    }
    let shared = nic.shared();
    let index = match nic.rx.take(shared.rx_producer.0.load(Ordering::Acquire)) {
        Ok(Some(index)) => index,
        Ok(None) => {
            counters.drops_no_buffer = counters.drops_no_buffer.saturating_add(1);
            return None;
        }
        Err(_) => {
            counters.bad_ring_indices = counters.bad_ring_indices.saturating_add(1);
            counters.drops_bad_rx_ring = counters.drops_bad_rx_ring.saturating_add(1);
            return None;
        }
    };
    let desc = shared.rx.get(ring::position(index, RX_RING_SIZE))?;
    // Read each field once: the guest may change them behind our back.
    let (addr, capacity) = (desc.addr.load(Ordering::Relaxed), desc.len.load(Ordering::Relaxed));
    let mut delivered = None;
    let buffer = validate_rx_sized(addr, capacity, nic.slot_size)
        .ok()
        .and_then(|buffer| Some((buffer, *nic.rx_frames.get(usize::try_from(buffer.slot).ok()?)?)));
    let status = match buffer {
        Some((buffer, run))
            if buffer.offset.checked_add(frame_len).is_some_and(|end| end <= nic.slot_size)
                && frame_len <= buffer.capacity =>
        {
            copy_into_run(run, nic.slot_size, buffer.offset, frame);
            // Room for the receive stamps after the frame (they are written only when on).
            if buffer.offset.saturating_add(frame_len) <= hypercall_abi::vnic::stamps::rx_stamps_offset(nic.slot_size) {
                delivered = Some((run, nic.slot_size));
            }
            desc.len.store(frame.len() as u32, Ordering::Relaxed);
            counters.rx_copies = counters.rx_copies.saturating_add(1);
            counters.rx_packets = counters.rx_packets.saturating_add(1);
            counters.rx_bytes = counters.rx_bytes.saturating_add(frame_len);
            DescStatus::Done
        }
        Some(_) => {
            // A valid buffer, but smaller than this frame (the guest posted less than its MTU).
            counters.drops_rx_buffer_small = counters.drops_rx_buffer_small.saturating_add(1);
            DescStatus::RejectedBadDescriptor
        }
        None => {
            counters.drops_bad_desc = counters.drops_bad_desc.saturating_add(1);
            DescStatus::RejectedBadDescriptor
        }
    };
    desc.status.store(status as u32, Ordering::Relaxed);
    shared.rx_consumer.0.store(nic.rx.consumer(), Ordering::Release);
    shared.virq.0.fetch_or(VirtualInterrupts::RX, Ordering::AcqRel);
    sched.wake(dst);
    delivered
}
