//! The kernel side of guests' virtual NICs, the hardware half of [`kernel_core::vnet`]: here
//! the NIC set-up (a guest's shared page and slot areas, the network's pool) and the state
//! both directions share; [`tx`] the doorbell and the network scheduler's hand-off, [`rx`]
//! delivery into guests' posted rx buffers and the physical NIC's receive path, [`cow`] the
//! copy-on-write transmit slots, [`stamps`] the per-packet stage stamps.
//!
//! Everything the guest writes in its shared page is read once, checked against the kernel's
//! own ring state ([`kernel_core::vnet::ring`]) and never trusted again; the lints below
//! keep guest values away from panics, unchecked indexing and unchecked arithmetic.

#![deny(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing, clippy::arithmetic_side_effects)]

mod cow;
mod rx;
mod stamps;
mod tx;

pub use stamps::Stamps;

use crate::drivers::virtio_net::TxCookie;
use crate::drivers::virtio_net::VirtioNet;
use crate::guest::space::{AddressSpace, PageUse};
use crate::guest::Guest;
use crate::mm::phys::phys_to_virt;
use alloc::vec::Vec;
use core::sync::atomic::Ordering;
use hypercall_abi::layout::PAGE_SIZE as PAGE;
use hypercall_abi::layout::{VNIC_RX_AREA_ADDR, VNIC_SHARED_ADDR, VNIC_TX_AREA_ADDR};
use hypercall_abi::vnic::{max_frame, slot_size, DescStatus, NetConfig, VnicShared, RX_SLOTS, TX_SLOTS};
use kernel_core::boot::cmdline::TxMode;
use kernel_core::guest::mem::Access;
use kernel_core::guest::sched::{GuestId, Scheduler};
use kernel_core::mm::frame_alloc::FrameAllocator;
use kernel_core::trap::fault::GuestFault;
use kernel_core::vnet::cow::CowSlots;
use kernel_core::vnet::{
    DropReason, GuestTx, NetCounters, NetScheduler, Packet, PacketPool, RxRing, TxBacklog, TxFifo, TxRing, Vswitch,
};

/// Packets a guest may have queued in the kernel.
const FIFO_CAPACITY: usize = 64;
/// Packets a guest may send per turn of the network scheduler.
const BUDGET_PER_TURN: usize = 8;
/// Bytes a guest may send per turn of the network scheduler (deficit round robin): the budget's
/// worth of full-size Ethernet frames, whatever the guest's MTU.
const BYTES_PER_TURN: u32 = BUDGET_PER_TURN as u32 * 1_514;
/// Kernel packet buffers (one page each) shared by all guests' FIFOs.
const POOL_BUFFERS: u32 = 512;
/// Frames the kernel holds for a guest that has no rx buffer posted: a ring's worth, so a guest
/// posting few buffers loses nothing to a burst its ring could have taken.
const RX_HOLD_LIMIT: usize = hypercall_abi::vnic::RX_RING_SIZE as usize;
/// Pool buffers holding received frames never take the last quarter of the pool, which stays
/// for transmit: a guest that stops reading slows only itself.
const POOL_KEPT_FOR_TX_DIVISOR: usize = 4;

/// A frame held for a guest in a pool buffer: the buffer, the frame's length, and whether its
/// L4 checksum was verified (checksum offload).
#[derive(Clone, Copy, Debug)]
struct HeldFrame {
    buf: kernel_core::vnet::BufId,
    len: u32,
    verified: bool,
}

/// Checksum offload (`csum=on`), fixed at boot before the NIC and the guests are set up.
static CHECKSUM_OFFLOAD: core::sync::atomic::AtomicBool =
    core::sync::atomic::AtomicBool::new(hypercall_abi::cmdline::CSUM_DEFAULT);

/// Sets checksum offload from the command line (before the network is set up).
pub fn set_checksum_offload(on: bool) {
    CHECKSUM_OFFLOAD.store(on, Ordering::Relaxed);
}

/// Whether checksum offload is on: the vNICs offer it and the physical NIC is asked for it.
pub fn checksum_offload() -> bool {
    CHECKSUM_OFFLOAD.load(Ordering::Relaxed)
}

/// The network's packet pool and the memory behind it, as the receive path borrows them to
/// hold frames (the transmit path reaches the same fields of [`Network`] directly).
pub(super) struct PoolMemory<'p> {
    pool: &'p mut PacketPool,
    frames: &'p [u64],
    buffer_bytes: u64,
}

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
    /// The frames behind the rx buffers, once backed.
    rx_frames: Vec<Option<u64>>,
    /// Descriptors taken and completed; the guest sees the completed prefix as `tx_consumer`.
    ring: TxRing,
    /// Rx buffers filled; the guest sees it as `rx_consumer`.
    rx: RxRing,
    bad_descriptor_logged: bool,
    /// Frames that found no posted rx buffer, oldest first: delivered before any newer frame
    /// once the guest posts buffers (see `rx::deliver`, `NetCtx::deliver_held`).
    held: alloc::collections::VecDeque<HeldFrame>,
    /// Guest pages write-protected since the guest last ran: their TLB entries must go before
    /// it runs again, unless its address space is reloaded anyway.
    pub pending_flush: Vec<u64>,
    /// Its transmit rate limit and what it sent and had held back.
    pub tx: GuestTx,
}

impl GuestNic {
    /// Kernel bytes this vNIC holds: the struct and its vectors.
    pub fn kernel_bytes(&self) -> usize {
        let u64s = self.tx_pte.capacity().saturating_add(self.pending_flush.capacity());
        let rx_frames = self.rx_frames.capacity().saturating_mul(core::mem::size_of::<Option<u64>>());
        let held = self.held.capacity().saturating_mul(core::mem::size_of::<HeldFrame>());
        core::mem::size_of::<GuestNic>()
            .saturating_add(u64s.saturating_mul(core::mem::size_of::<u64>()))
            .saturating_add(rx_frames)
            .saturating_add(held)
            .saturating_add(self.cow.heap_bytes())
            .saturating_add(if self.tx.is_limited() {
                core::mem::size_of::<kernel_core::vnet::RateLimiter>()
            } else {
                0
            })
    }

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

    /// Whether the guest produced tx descriptors the kernel has not taken (a nonsense producer
    /// counts too: taking it refuses and counts it).
    pub fn tx_produced(&self) -> bool {
        self.ring.offered(self.shared().tx_producer.0.load(Ordering::Acquire)) != Ok(0)
    }

    /// Whether every tx slot is the kernel's (produced and not completed): the guest can only
    /// wait for a completion.
    pub fn tx_ring_full(&self) -> bool {
        hypercall_abi::vnic::ring_used(self.shared().tx_producer.0.load(Ordering::Acquire), self.ring.consumer())
            >= hypercall_abi::vnic::TX_RING_SIZE
    }

    /// Logs the first misbehaviour of this guest's vNIC; later ones are only counted.
    fn log_once(&mut self, id: GuestId, name: &str, what: core::fmt::Arguments<'_>) {
        if !core::mem::replace(&mut self.bad_descriptor_logged, true) {
            log::warn!("guest {id} {name}: {what} (further vNIC errors of this guest are only counted)");
        }
    }
}

/// Maps the shared page into a new guest and reserves its tx and rx areas, and returns its NIC.
/// The areas are backed lazily, a whole slot (a physically contiguous run, so a frame is one
/// piece for the NIC) at a time: by the guest's first touch ([`back_slot`] from its page
/// fault) or, for an rx buffer, by the kernel's first delivery into it. A tx slot posted
/// without ever having been written is refused as a bad descriptor.
pub fn build_nic(
    space: &mut AddressSpace,
    frames: &mut FrameAllocator<'static>,
    config: NetConfig,
    stamps: bool,
) -> Result<GuestNic, crate::guest::space::SpaceError> {
    use crate::guest::space::SpaceError;
    let shared_phys = space.new_frame(frames, PageUse::Vnic)?;
    space.map_page(frames, VNIC_SHARED_ADDR, shared_phys, Access::READ_WRITE)?;
    space
        .map
        .add(VNIC_SHARED_ADDR, VNIC_SHARED_ADDR + PAGE, Access::READ_WRITE)
        .map_err(|_| SpaceError::BadMapping(VNIC_SHARED_ADDR))?;
    let slot = slot_size(u64::from(config.mtu));
    let pages = slot / PAGE;
    // Kernel constants only (areas, slot counts, slot sizes of MTUs the image checker bounds):
    // the layout asserts in hypercall-abi prove these stay inside the guest's lower half.
    space.reserve_lazy(VNIC_TX_AREA_ADDR, TX_SLOTS.wrapping_mul(pages), Access::READ_WRITE, PageUse::Vnic)?;
    space.reserve_lazy(VNIC_RX_AREA_ADDR, RX_SLOTS.wrapping_mul(pages), Access::READ_WRITE, PageUse::Vnic)?;
    // The areas share the shared page's last-level table (the layout asserts it), so their
    // entries' places are known now, backed or not: consecutive pages, consecutive entries.
    let first_pte = space.leaf_pte_phys(VNIC_TX_AREA_ADDR).ok_or(SpaceError::BadMapping(VNIC_TX_AREA_ADDR))?;
    let tx_pte: Vec<u64> =
        (0..TX_SLOTS.wrapping_mul(pages)).map(|page| first_pte.wrapping_add(page.wrapping_mul(8))).collect();
    let nic = GuestNic {
        config,
        shared_phys,
        slot_size: slot,
        slot_pages: pages,
        max_frame: max_frame(u64::from(config.mtu)),
        cow: CowSlots::unbacked(TX_SLOTS as usize),
        tx_pte,
        rx_frames: alloc::vec![None; RX_SLOTS as usize],
        ring: TxRing::new(),
        rx: RxRing::new(),
        bad_descriptor_logged: false,
        held: alloc::collections::VecDeque::new(),
        pending_flush: Vec::with_capacity(TX_SLOTS as usize),
        tx: GuestTx::default(),
    };
    nic.shared().needs_kick.0.store(1, Ordering::Release);
    nic.shared().stamps_enabled.0.store(u32::from(stamps), Ordering::Release);
    let offloads = if checksum_offload() { hypercall_abi::vnic::Offloads::CHECKSUM } else { 0 };
    nic.shared().offloads.0.store(offloads, Ordering::Release);
    Ok(nic)
}

/// Which of a vNIC's areas holds a guest address, and the slot there.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum AreaSlot {
    Tx(usize),
    Rx(usize),
}

impl GuestNic {
    /// The tx slot or rx buffer holding guest address `addr`, if any.
    fn area_slot(&self, addr: u64) -> Option<AreaSlot> {
        let slot_of = |base: u64, slots: u64| {
            let slot = addr.checked_sub(base)?.checked_div(self.slot_size)?;
            (slot < slots).then_some(usize::try_from(slot).ok()?)
        };
        slot_of(VNIC_TX_AREA_ADDR, TX_SLOTS)
            .map(AreaSlot::Tx)
            .or_else(|| slot_of(VNIC_RX_AREA_ADDR, RX_SLOTS).map(AreaSlot::Rx))
    }

    fn slot_backing(&self, area_slot: AreaSlot) -> Option<u64> {
        match area_slot {
            AreaSlot::Tx(slot) => self.cow.frame(slot),
            AreaSlot::Rx(slot) => self.rx_frames.get(slot).copied().flatten(),
        }
    }
}

/// Backs the tx slot or rx buffer holding guest address `addr` with a zeroed run of frames
/// owned by `space`, mapped read-write: the first touch of a vNIC slot, by the guest (its page
/// fault) or by the kernel (a delivery). `NotLazy` if `addr` is in no slot or the slot is
/// backed already (the fault is then the guest's).
pub fn back_slot(nic: &mut GuestNic, space: &mut AddressSpace, addr: u64) -> crate::guest::space::LazyFault {
    use crate::guest::space::LazyFault;
    let Some(area_slot) = nic.area_slot(addr) else { return LazyFault::NotLazy };
    if nic.slot_backing(area_slot).is_some() {
        return LazyFault::NotLazy;
    }
    let (base, slot) = match area_slot {
        AreaSlot::Tx(slot) => (VNIC_TX_AREA_ADDR, slot),
        AreaSlot::Rx(slot) => (VNIC_RX_AREA_ADDR, slot),
    };
    // A slot number below its area's count: inside the area, no wrap.
    let slot_base = base.wrapping_add((slot as u64).wrapping_mul(nic.slot_size));
    let backed = crate::mm::phys::with_frames(|frames| {
        let run = space.new_run(frames, nic.slot_pages, PageUse::Vnic).ok()?;
        for (virt, phys) in page_addrs_of(slot_base, nic.slot_pages).zip(page_addrs_of(run, nic.slot_pages)) {
            space.map_page(frames, virt, phys, Access::READ_WRITE).ok()?;
        }
        Some(run)
    });
    // A run that could not be mapped stays owned by the space and is freed with it.
    let Some(run) = backed else { return LazyFault::OutOfMemory };
    match area_slot {
        AreaSlot::Tx(slot) => {
            nic.cow.back(slot, run);
        }
        AreaSlot::Rx(slot) => {
            if let Some(entry) = nic.rx_frames.get_mut(slot) {
                *entry = Some(run);
            }
        }
    }
    LazyFault::Backed
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
    /// Guests whose tx ring still holds packets the kernel could not take yet, by what they
    /// wait for (so a doorbell looks only at guests that can go on).
    backlog: TxBacklog,
    pub counters: NetCounters,
    pub mode: TxMode,
    /// Checksum offload ([`checksum_offload`]), read once.
    csum_offload: bool,
    /// Zero-copy packets done with, waiting to be completed (scratch space kept between calls,
    /// so the packet path does not allocate).
    finished: Vec<(TxCookie, DescStatus)>,
    /// Slot runs of guests that ended with packets in flight on them: freed when the NIC is
    /// done.
    zombies: Vec<cow::Zombie>,
    /// TSC ticks per zero-copy packet completed by the NIC (release, restore, ring completion),
    /// averaged over each batch the NIC hands back: the COW path's cost after the notify.
    pub completion_samples: Vec<u32>,
    /// Per-packet stage stamps (`stamps=on`): records of packets in flight through the kernel
    /// (guest send, driver, doorbell; kernel trap entry, vNIC work done), the packets handed to
    /// the NIC since the last notify, and the finished transmit records by frame length.
    pub stamps: Stamps,
    stamp_records: Vec<[u64; 5]>,
    next_stamp: u32,
    pending_notify: Vec<stamps::PendingNotify>,
    pub tx_stage_samples: alloc::collections::BTreeMap<u32, Vec<[u32; 7]>>,
    pub stamp_records_made: u64,
    /// Where every tick goes outside the stamped stages (`stamps=on`): see [`stamps`].
    pub timeline: kernel_core::vnet::timeline::Timeline,
}

/// The bytes `[offset, offset + len)` of the contiguous run of `run` bytes at `phys`. Callers
/// pass ranges they checked; a range beyond the run is a kernel bug, and panics.
#[inline(always)] // on the doorbell path: see tx::take_tx
fn run_bytes<'p>(phys: u64, run: u64, offset: u64, len: u64) -> &'p [u8] {
    assert!(offset.checked_add(len).is_some_and(|end| end <= run), "read beyond the run");
    // SAFETY: a page in the direct map, range inside it (checked); the caller uses the slice
    // before anything can change the page (the kernel runs with interrupts off, on one CPU).
    unsafe { core::slice::from_raw_parts(phys_to_virt(phys.wrapping_add(offset)).as_ptr::<u8>(), len as usize) }
}

/// [`run_bytes`], writable: for the kernel's own copy of a frame, or a guest frame the guest
/// cannot write while it is in flight (a write-protected COW slot).
#[inline(always)]
fn run_bytes_mut<'p>(phys: u64, run: u64, offset: u64, len: u64) -> &'p mut [u8] {
    assert!(offset.checked_add(len).is_some_and(|end| end <= run), "write beyond the run");
    // SAFETY: as for `run_bytes`; the caller holds no other slice of these bytes while it
    // writes (each use ends before the next slice of the run is made).
    unsafe { core::slice::from_raw_parts_mut(phys_to_virt(phys.wrapping_add(offset)).as_mut_ptr::<u8>(), len as usize) }
}

impl Network {
    /// Whether a guest held back by its rate limit has its tokens by `now` (the kernel then
    /// runs the network scheduler, which takes its frames, even while every guest idles).
    pub fn rate_limited_due(&self, now: u64) -> bool {
        self.backlog.next_deadline().is_some_and(|at| at <= now)
    }

    /// When the first guest held back by its rate limit has its tokens (the tickless timer
    /// brings the kernel in then).
    pub fn rate_limit_deadline(&self) -> Option<u64> {
        self.backlog.next_deadline()
    }

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
            sched: NetScheduler::new(0, BUDGET_PER_TURN).with_byte_quantum(BYTES_PER_TURN),
            fifos: Vec::new(),
            pool: PacketPool::new(pool_frames.len() as u32),
            pool_frames,
            pool_buffer_bytes,
            backlog: TxBacklog::new(),
            counters: NetCounters::default(),
            mode,
            csum_offload: checksum_offload(),
            finished: Vec::with_capacity(256),
            zombies: Vec::new(),
            // Benchmark records: room made only when stamps are on (`enable_stamps`).
            completion_samples: Vec::new(),
            stamps: Stamps::OFF,
            stamp_records: Vec::new(),
            next_stamp: 0,
            pending_notify: Vec::new(),
            tx_stage_samples: alloc::collections::BTreeMap::new(),
            stamp_records_made: 0,
            timeline: kernel_core::vnet::timeline::Timeline::default(),
        }
    }

    /// Frees the frames held for a guest that has ended, counting them as dropped.
    pub fn drop_held(&mut self, nic: &mut GuestNic) {
        for frame in nic.held.drain(..) {
            let _ = self.pool.release(frame.buf);
            self.counters.rx_held_now = self.counters.rx_held_now.saturating_sub(1);
            self.counters.drops_held_guest_ended = self.counters.drops_held_guest_ended.saturating_add(1);
        }
    }

    /// Queues a packet guest `id` sent in its FIFO (which the caller saw had room).
    fn queue(&mut self, id: GuestId, packet: Packet) {
        if let Some(fifo) = self.fifos.get_mut(id) {
            let _ = fifo.push(packet);
        }
    }

    /// Kernel bytes the network keeps for each guest, NIC or not (its transmit FIFO, empty
    /// while the guest sends nothing).
    pub fn kernel_bytes_per_guest(&self) -> usize {
        core::mem::size_of::<TxFifo>()
    }

    /// Reserves the per-guest records of `additional` more guests now, fallibly (false: the
    /// kernel heap is short), so that adding them does not grow storage.
    pub fn try_reserve(&mut self, additional: usize) -> bool {
        self.fifos.try_reserve(additional).is_ok()
            && self.sched.try_reserve(additional)
            && self.backlog.try_reserve(additional)
            && self.vswitch.try_reserve(additional)
    }

    /// Registers guest `id` (every guest, with or without a NIC, so ids line up).
    pub fn add_guest(&mut self, id: GuestId, nic: Option<&GuestNic>) -> Result<(), &'static str> {
        while self.fifos.len() <= id {
            self.fifos.push(TxFifo::new(FIFO_CAPACITY));
            self.sched.add_guest();
            self.backlog.register();
        }
        if let Some(nic) = nic {
            self.vswitch.add_port(id, nic.config.mac, nic.config.ipv4).map_err(|e| match e {
                kernel_core::vnet::vswitch::VswitchError::NoMemory => "no kernel memory for its switch port",
                _ => "its MAC or IPv4 address is already another guest's",
            })?;
        }
        Ok(())
    }
}

/// What a guest's write fault was.
pub enum WriteFaultVerdict {
    /// A copy-on-write fault the kernel resolved (a copy, or a stale read-only TLB entry).
    Resolved,
    /// Not on an in-flight tx slot: an ordinary page fault.
    NotCopyOnWrite,
    /// A copy-on-write fault that cannot be resolved: the guest is stopped.
    Stop(GuestFault),
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
    #[inline(always)] // on the doorbell path: see tx::take_tx
    fn set_slot_writable(&self, slot: usize, writable: bool) {
        let pages = self.slot_pages as usize;
        let ptes = slot.checked_mul(pages).and_then(|first| self.tx_pte.get(first..first.checked_add(pages)?));
        for pte in ptes.unwrap_or_default() {
            crate::guest::space::set_pte_writable(*pte, writable);
        }
    }
}

fn count_drop(counters: &mut NetCounters, reason: DropReason) {
    match reason {
        DropReason::Malformed => counters.drops_malformed = counters.drops_malformed.saturating_add(1),
        _ => counters.drops_unknown_mac = counters.drops_unknown_mac.saturating_add(1),
    }
}
