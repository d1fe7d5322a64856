//! The virtual NIC: pages a guest shares with the kernel, and how packets cross them.
//!
//! Every guest with a network interface has, at fixed addresses ([`crate::layout`]):
//! - the **shared page** at `VNIC_SHARED_ADDR` (read-write for the guest): a [`VnicShared`] with
//!   the ring indices (each on a cache line of its own, written by one side only), the
//!   "needs kick" flag, the virtual-interrupt word, and the tx and rx descriptor rings;
//! - the **tx area** at `VNIC_TX_AREA_ADDR`: [`TX_SLOTS`] slots of [`slot_size`] bytes for the
//!   guest's MTU (one page at the standard MTU, three for jumbo frames), one packet per slot,
//!   the frame starting [`TX_HEADROOM`] bytes into its slot (room for the NIC's virtio-net
//!   header, so that the COW path can hand the pages to the NIC unchanged);
//! - the **rx area** at `VNIC_RX_AREA_ADDR`: [`RX_SLOTS`] receive buffers of [`slot_size`] bytes.
//!
//! **Transmit.** The guest writes a frame into a free tx slot, fills descriptor
//! `tx[tx_producer % TX_RING_SIZE]` (`addr` of the frame, `len`, `status` = [`DescStatus::Pending`])
//! and increments `tx_producer` (release). If `needs_kick` is non-zero it then issues
//! [`crate::vi::Vi::VnicTxKick`] (one kick per batch). The kernel validates each descriptor in
//! `[tx_consumer, tx_producer)`, takes the packet, writes the descriptor's final status and
//! advances `tx_consumer`; a slot is free again once `tx_consumer` has passed its descriptor.
//! A descriptor the kernel rejects gets a `Rejected*` status; the guest keeps running.
//! While the kernel cannot take more (its queue for this guest is full) it clears
//! `needs_kick` and comes back to the ring by itself; it sets it again once the ring is empty.
//!
//! **Receive.** The guest posts empty buffers: descriptor `rx[rx_producer % RX_RING_SIZE]`
//! with `addr` and `len` = capacity, then increments `rx_producer` (and may issue
//! [`crate::vi::Vi::VnicRxPosted`]). The kernel copies each arriving frame into the next posted
//! buffer, sets `len` to the frame length and `status` to [`DescStatus::Done`], advances
//! `rx_consumer`, sets [`crate::vi::VirtualInterrupts::RX`] in `virq` and wakes the guest.
//! With no buffer posted the frame is dropped and counted.
//!
//! Indices are free-running `u32`s; the slot of index `i` is `i % RING_SIZE`, and a ring holds
//! `producer - consumer` (wrapping) entries, never more than its size.

use crate::layout::PAGE_SIZE;
use core::sync::atomic::{AtomicU32, AtomicU64, Ordering};

/// Descriptors per ring (a power of two).
pub const TX_RING_SIZE: u32 = 32;
pub const RX_RING_SIZE: u32 = 32;
/// Tx slots and rx buffers: one per descriptor.
pub const TX_SLOTS: u64 = TX_RING_SIZE as u64;
pub const RX_SLOTS: u64 = RX_RING_SIZE as u64;
/// Bytes at the start of each tx slot left for the NIC's header; the frame follows.
pub const TX_HEADROOM: u64 = 64;
/// Largest IP packet (the Ethernet MTU) a guest may send.
pub const MTU: u64 = 1500;
/// Ethernet header length.
pub const ETHERNET_HEADER: u64 = 14;
/// Smallest frame a descriptor may carry: an Ethernet header.
pub const MIN_FRAME: u64 = ETHERNET_HEADER;
/// Largest MTU an image may set (jumbo frames, for guest-to-guest traffic and the tap network).
pub const MAX_MTU: u64 = 9000;
/// Smallest MTU an image may set (IPv4's minimum datagram size).
pub const MIN_MTU: u64 = 576;

/// Largest frame for an MTU: the MTU plus the Ethernet header.
pub const fn max_frame(mtu: u64) -> u64 {
    mtu + ETHERNET_HEADER
}

/// Size of each tx slot and rx buffer for an MTU: whole pages holding the headroom and the
/// largest frame (one page at the standard MTU, three for jumbo frames). A slot's pages are
/// physically contiguous, so a frame is one piece for the NIC.
pub const fn slot_size(mtu: u64) -> u64 {
    (TX_HEADROOM + max_frame(mtu)).next_multiple_of(PAGE_SIZE)
}

/// A descriptor's `status` word: the [`DescStatus`] in its low 16 bits, per-frame flags
/// ([`desc_flags`]) above them.
pub const DESC_STATUS_MASK: u32 = 0xffff;

pub mod desc_flags {
    //! Per-frame flags in the upper half of a descriptor's `status` word.
    //!
    //! **Checksum offload** is on when the kernel sets [`super::Offloads::CHECKSUM`] in the
    //! shared page's `offloads` word (kernel command line `csum=on`). Then:
    //! - transmit: a guest may leave the UDP or TCP checksum of an IPv4 frame to the kernel by
    //!   setting [`TX_CSUM_NEEDED`] in the descriptor's status (with `Pending`). The checksum
    //!   field's content is ignored. The kernel finds where the checksum goes from the headers it
    //!   parses (no offsets come from the guest): an unfragmented IPv4 packet (options allowed)
    //!   carrying UDP or TCP whose L4 header and length lie in the frame. It fills the checksum
    //!   itself or has the NIC fill it. A flagged frame it cannot parse, or any flagged frame
    //!   while offload is off, is rejected ([`super::DescStatus::RejectedChecksumRequest`]) and
    //!   counted (`drops_csum_request`).
    //! - receive: every IPv4 UDP or TCP frame the kernel delivers has had its L4 checksum
    //!   verified (by the physical NIC, or by the kernel, which computes it for another guest's
    //!   frames); one that fails, or that it cannot verify (a fragment, a length beyond the
    //!   frame), is dropped and counted (`drops_bad_checksum`). Such frames carry
    //!   [`RX_CSUM_VERIFIED`]; their checksum field may hold only a partial sum, so a guest
    //!   with offload on must not check it. Other frames (ARP, ICMP, ...) carry no flag and their
    //!   checksums are the guest's to check. IPv4 header checksums are always the guest's.

    /// Tx: the L4 checksum is left to the kernel.
    pub const TX_CSUM_NEEDED: u32 = 1 << 16;
    /// Rx: the L4 checksum was verified (data valid).
    pub const RX_CSUM_VERIFIED: u32 = 1 << 17;
}

/// Offloads the kernel offers, in the shared page's `offloads` word (written by the kernel).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Offloads;

impl Offloads {
    /// Checksum offload ([`desc_flags`]).
    pub const CHECKSUM: u32 = 1;
}

/// What became of a descriptor.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u32)]
pub enum DescStatus {
    /// Written by the guest, not yet processed.
    Pending = 0,
    /// Sent (tx) or filled (rx).
    Done = 1,
    /// The descriptor's address or length was not acceptable.
    RejectedBadDescriptor = 2,
    /// The frame's source MAC was not the guest's own.
    RejectedSpoofedSource = 3,
    /// Tx: the kernel had no memory to queue the frame, and dropped it (`drops_no_memory`).
    DroppedNoMemory = 4,
    /// Tx: [`desc_flags::TX_CSUM_NEEDED`] on a frame whose checksum the kernel cannot place (or
    /// while checksum offload is off); counted as `drops_csum_request`.
    RejectedChecksumRequest = 5,
}

impl DescStatus {
    pub fn from_u32(value: u32) -> Option<DescStatus> {
        [
            Self::Pending,
            Self::Done,
            Self::RejectedBadDescriptor,
            Self::RejectedSpoofedSource,
            Self::DroppedNoMemory,
            Self::RejectedChecksumRequest,
        ]
        .into_iter()
        .find(|s| *s as u32 == value & DESC_STATUS_MASK)
    }
}

/// One ring entry. Fields are atomics so both sides may hold a shared reference to the page;
/// ordering comes from the index updates (release by the writer, acquire by the reader).
#[repr(C)]
#[derive(Debug, Default)]
pub struct Desc {
    /// Guest address of the frame (tx) or of the empty buffer (rx).
    pub addr: AtomicU64,
    /// Frame length (tx; rx once filled) or buffer capacity (rx, when posted).
    pub len: AtomicU32,
    /// A [`DescStatus`] in the low 16 bits, [`desc_flags`] above.
    pub status: AtomicU32,
}

/// A value alone on its 64-byte cache line, so the two sides never write the same line.
#[repr(C, align(64))]
#[derive(Debug, Default)]
pub struct CacheLine<T>(pub T);

/// The shared page. Offsets are part of the ABI (checked below).
#[repr(C)]
#[derive(Debug, Default)]
pub struct VnicShared {
    /// Written by the guest: descriptors produced into the tx ring.
    pub tx_producer: CacheLine<AtomicU32>,
    /// Written by the kernel: tx descriptors processed.
    pub tx_consumer: CacheLine<AtomicU32>,
    /// Written by the guest: rx buffers posted.
    pub rx_producer: CacheLine<AtomicU32>,
    /// Written by the kernel: rx buffers filled.
    pub rx_consumer: CacheLine<AtomicU32>,
    /// Written by the kernel: non-zero when the guest must kick after producing tx descriptors.
    pub needs_kick: CacheLine<AtomicU32>,
    /// Virtual-interrupt bits ([`crate::vi::VirtualInterrupts`]): the kernel sets, the guest clears.
    pub virq: CacheLine<AtomicU64>,
    /// Written by the kernel: non-zero when per-packet stage stamps are on (see [`stamps`]).
    pub stamps_enabled: CacheLine<AtomicU32>,
    /// Written by the guest: its own counters ([`GuestCounters`]), which the kernel only reports.
    pub guest_counters: GuestCounters,
    pub tx: [Desc; TX_RING_SIZE as usize],
    _reserved_tx: [Desc; 64 - TX_RING_SIZE as usize],
    pub rx: [Desc; RX_RING_SIZE as usize],
    /// Written by the kernel: frames for this guest that found no posted rx buffer (held for
    /// it, or dropped). A guest that posts only a few buffers posts more when this moves.
    pub rx_wanted: CacheLine<AtomicU32>,
    /// Written by the kernel before the guest starts: the [`Offloads`] it offers.
    pub offloads: CacheLine<AtomicU32>,
    /// Written by the guest: non-zero while it waits for a tx descriptor to complete. A
    /// zero-copy completion (COW, split: when the NIC is done) wakes the guest only then, or
    /// when its ring was full; otherwise the guest sees the completion in `tx_consumer` when it
    /// next runs, and an echo costs no second wake-up.
    pub tx_done_wanted: CacheLine<AtomicU32>,
}

/// A counter a guest keeps about its own receive path and apps, published in its shared page
/// ([`GuestCounters`]) so that the kernel's `stats:` line can carry it (names prefixed `guest_`,
/// summed over guests). Together with the kernel's counters they account for every frame:
/// - `rx_taken = rx_datagrams + rx_tcp_segments + rx_other + drops_malformed` (each frame taken
///   from the rx ring is classified once, before the stack sees it);
/// - `rx_datagrams = udp_delivered + drops_socket_full + drops_no_socket`;
/// - `udp_delivered = app_received + udp_queued`;
/// - `app_received = app_echoes + app_consumed + app_drops + app_held`;
/// - `tcp_accepted + tcp_connects = tcp_closed + tcp_reset + tcp_timed_out + tcp_open` (every
///   connection an app got ends one way, and is freed when it ends).
///
/// Published values are allegations: the kernel prints them and never decides anything by them.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
#[repr(usize)]
pub enum GuestCounter {
    /// Frames the guest took from its rx ring (and handed to its stack).
    RxTaken,
    /// Of those, UDP datagrams addressed to the guest (its address, or broadcast).
    RxDatagrams,
    /// Of those, frames for the stack itself or for nobody here: ARP, ICMP, other protocols, IP
    /// packets addressed elsewhere.
    RxOther,
    /// Of those, frames the stack refused as malformed: too short, a bad header or checksum, a
    /// non-unicast source address.
    DropsMalformed,
    /// Datagrams queued in a socket for an app.
    UdpDelivered,
    /// Datagrams dropped because their socket's receive buffer was full.
    DropsSocketFull,
    /// Datagrams to a port no socket has (the stack answers with ICMP port unreachable).
    DropsNoSocket,
    /// Gauge: datagrams waiting in sockets' receive buffers when the guest published.
    UdpQueued,
    /// Datagrams apps took from sockets.
    AppReceived,
    /// Datagrams an app echoed (queued the echo for sending).
    AppEchoes,
    /// Datagrams an app took without echoing them (a reply a client waited for, a request).
    AppConsumed,
    /// Datagrams an app dropped (no room to send an echo in time, or an error).
    AppDrops,
    /// Gauge: datagrams apps had taken but not yet echoed, consumed or dropped.
    AppHeld,
    /// Frames the guest put into its tx ring.
    TxFrames,
    /// Frames the stack built when the tx ring had no free slot (lost).
    TxDropsRingFull,
    /// Frames the stack built longer than the MTU allows (lost).
    TxDropsTooLong,
    /// Tx descriptors the kernel completed with a rejection (the kernel counts them too).
    TxRejected,
    /// Filled rx descriptors with an error status, skipped (the kernel counts them too).
    RxDescErrors,
    /// Of the frames taken, TCP segments addressed to the guest (with a correct checksum): TCP is
    /// flow-controlled by its window, so the stack takes them whenever it can answer.
    RxTcpSegments,
    /// TCP connections apps accepted from a listener.
    TcpAccepted,
    /// TCP connections apps opened (connect), whether or not the peer answered.
    TcpConnects,
    /// Connections that ended normally (both sides closed), or that the app closed before
    /// they were established.
    TcpClosed,
    /// Connections that ended with a reset: sent by the peer (a refused connect too), or by an
    /// app's abort.
    TcpReset,
    /// Connections the guest gave up because the peer stayed silent past the idle timeout (or
    /// never answered a connect).
    TcpTimedOut,
    /// Connection requests (SYN) refused with a reset because every socket of the port's
    /// listener was taken (its backlog was full).
    TcpRefused,
    /// Gauge: connections accepted or opened that have not ended.
    TcpOpen,
    /// Gauge: TCP sockets the stack holds: its listeners' pools and connections not yet freed.
    TcpSockets,
    /// HTTP requests (well-formed heads) the guest's HTTP server answered.
    HttpRequests,
    /// HTTP responses with a 4xx or 5xx status: malformed or refused heads, unknown paths and
    /// methods, head timeouts, connections beyond the server's limit.
    HttpErrors,
    /// HTTP response body bytes handed to the sockets.
    HttpBodyBytes,
}

impl GuestCounter {
    pub const COUNT: usize = 30;
    pub const ALL: [GuestCounter; Self::COUNT] = [
        Self::RxTaken,
        Self::RxDatagrams,
        Self::RxOther,
        Self::DropsMalformed,
        Self::UdpDelivered,
        Self::DropsSocketFull,
        Self::DropsNoSocket,
        Self::UdpQueued,
        Self::AppReceived,
        Self::AppEchoes,
        Self::AppConsumed,
        Self::AppDrops,
        Self::AppHeld,
        Self::TxFrames,
        Self::TxDropsRingFull,
        Self::TxDropsTooLong,
        Self::TxRejected,
        Self::RxDescErrors,
        Self::RxTcpSegments,
        Self::TcpAccepted,
        Self::TcpConnects,
        Self::TcpClosed,
        Self::TcpReset,
        Self::TcpTimedOut,
        Self::TcpRefused,
        Self::TcpOpen,
        Self::TcpSockets,
        Self::HttpRequests,
        Self::HttpErrors,
        Self::HttpBodyBytes,
    ];

    /// The name in the kernel's `stats:` line.
    pub const fn name(self) -> &'static str {
        match self {
            Self::RxTaken => "guest_rx_taken",
            Self::RxDatagrams => "guest_rx_datagrams",
            Self::RxOther => "guest_rx_other",
            Self::DropsMalformed => "guest_drops_malformed",
            Self::UdpDelivered => "guest_udp_delivered",
            Self::DropsSocketFull => "guest_drops_socket_full",
            Self::DropsNoSocket => "guest_drops_no_socket",
            Self::UdpQueued => "guest_udp_queued",
            Self::AppReceived => "guest_app_received",
            Self::AppEchoes => "guest_app_echoes",
            Self::AppConsumed => "guest_app_consumed",
            Self::AppDrops => "guest_app_drops",
            Self::AppHeld => "guest_app_held",
            Self::TxFrames => "guest_tx_frames",
            Self::TxDropsRingFull => "guest_tx_drops_ring_full",
            Self::TxDropsTooLong => "guest_tx_drops_too_long",
            Self::TxRejected => "guest_tx_rejected",
            Self::RxDescErrors => "guest_rx_desc_errors",
            Self::RxTcpSegments => "guest_rx_tcp_segments",
            Self::TcpAccepted => "guest_tcp_accepted",
            Self::TcpConnects => "guest_tcp_connects",
            Self::TcpClosed => "guest_tcp_closed",
            Self::TcpReset => "guest_tcp_reset",
            Self::TcpTimedOut => "guest_tcp_timed_out",
            Self::TcpRefused => "guest_tcp_refused",
            Self::TcpOpen => "guest_tcp_open",
            Self::TcpSockets => "guest_tcp_sockets",
            Self::HttpRequests => "guest_http_requests",
            Self::HttpErrors => "guest_http_errors",
            Self::HttpBodyBytes => "guest_http_body_bytes",
        }
    }

    /// Whether the counter is a level that goes up and down (a gauge: datagrams queued now,
    /// connections open now) rather than a running total that only grows.
    pub const fn is_gauge(self) -> bool {
        matches!(self, Self::UdpQueued | Self::AppHeld | Self::TcpOpen | Self::TcpSockets)
    }

    /// The counter of this `stats:` name.
    pub fn from_name(name: &str) -> Option<GuestCounter> {
        Self::ALL.into_iter().find(|counter| counter.name() == name)
    }
}

/// One value per [`GuestCounter`], in its order.
pub type GuestCounterValues = [u64; GuestCounter::COUNT];

/// Adds `from` into `into`, saturating: the kernel sums values guests wrote, which may be anything.
pub fn add_guest_counters(into: &mut GuestCounterValues, from: &GuestCounterValues) {
    for (sum, value) in into.iter_mut().zip(from) {
        *sum = sum.saturating_add(*value);
    }
}

/// Slots for guest counters in each copy (room to add counters without moving anything): the
/// two copies fill the shared page up to the tx ring.
pub const GUEST_COUNTER_SLOTS: usize = 32;

/// The guest's counters in its shared page: two copies and a generation. The guest writes the
/// copy the next generation names (even or odd), then stores that generation (release); the
/// kernel reads the copy the current generation names. The kernel reads while the guest is
/// not running (one CPU), so that copy is always complete; a guest stopped halfway through a
/// publish leaves the previous copy intact.
#[repr(C, align(64))]
#[derive(Debug, Default)]
pub struct GuestCounters {
    /// Publishes so far; its low bit names the complete copy.
    pub generation: AtomicU64,
    _pad: [u64; 7],
    pub even: [AtomicU64; GUEST_COUNTER_SLOTS],
    pub odd: [AtomicU64; GUEST_COUNTER_SLOTS],
}

impl GuestCounters {
    fn copy(&self, generation: u64) -> &[AtomicU64; GUEST_COUNTER_SLOTS] {
        if generation.is_multiple_of(2) {
            &self.even
        } else {
            &self.odd
        }
    }

    /// Guest side: makes `values` the published counters.
    pub fn publish(&self, values: &GuestCounterValues) {
        let next = self.generation.load(Ordering::Relaxed).wrapping_add(1);
        for (slot, value) in self.copy(next).iter().zip(values) {
            slot.store(*value, Ordering::Relaxed);
        }
        self.generation.store(next, Ordering::Release);
    }

    /// Kernel side: the last published counters (zeros before the first publish). Untrusted.
    pub fn read(&self) -> GuestCounterValues {
        let copy = self.copy(self.generation.load(Ordering::Acquire));
        let mut values = [0; GuestCounter::COUNT];
        for (value, slot) in values.iter_mut().zip(copy) {
            *value = slot.load(Ordering::Relaxed);
        }
        values
    }
}

/// Offsets of the shared page's parts.
pub const TX_PRODUCER_OFFSET: usize = 0;
pub const TX_CONSUMER_OFFSET: usize = 64;
pub const RX_PRODUCER_OFFSET: usize = 128;
pub const RX_CONSUMER_OFFSET: usize = 192;
pub const NEEDS_KICK_OFFSET: usize = 256;
pub const VIRQ_OFFSET: usize = 320;
pub const STAMPS_ENABLED_OFFSET: usize = 384;
pub const GUEST_COUNTERS_OFFSET: usize = 448;
pub const TX_RING_OFFSET: usize = 1024;
pub const RX_RING_OFFSET: usize = 2048;
pub const RX_WANTED_OFFSET: usize = 2560;
pub const OFFLOADS_OFFSET: usize = 2624;
pub const TX_DONE_WANTED_OFFSET: usize = 2688;

const _: () = {
    assert!(core::mem::offset_of!(VnicShared, tx_producer) == TX_PRODUCER_OFFSET);
    assert!(core::mem::offset_of!(VnicShared, tx_consumer) == TX_CONSUMER_OFFSET);
    assert!(core::mem::offset_of!(VnicShared, rx_producer) == RX_PRODUCER_OFFSET);
    assert!(core::mem::offset_of!(VnicShared, rx_consumer) == RX_CONSUMER_OFFSET);
    assert!(core::mem::offset_of!(VnicShared, needs_kick) == NEEDS_KICK_OFFSET);
    assert!(core::mem::offset_of!(VnicShared, virq) == VIRQ_OFFSET);
    assert!(core::mem::offset_of!(VnicShared, stamps_enabled) == STAMPS_ENABLED_OFFSET);
    assert!(core::mem::offset_of!(VnicShared, guest_counters) == GUEST_COUNTERS_OFFSET);
    assert!(core::mem::offset_of!(GuestCounters, even) == 64);
    assert!(core::mem::offset_of!(GuestCounters, odd) == 64 + 8 * GUEST_COUNTER_SLOTS);
    assert!(GUEST_COUNTERS_OFFSET + core::mem::size_of::<GuestCounters>() <= TX_RING_OFFSET);
    assert!(GuestCounter::COUNT <= GUEST_COUNTER_SLOTS);
    assert!(core::mem::offset_of!(VnicShared, tx) == TX_RING_OFFSET);
    assert!(core::mem::offset_of!(VnicShared, rx) == RX_RING_OFFSET);
    assert!(core::mem::offset_of!(VnicShared, rx_wanted) == RX_WANTED_OFFSET);
    assert!(core::mem::offset_of!(VnicShared, offloads) == OFFLOADS_OFFSET);
    assert!(core::mem::offset_of!(VnicShared, tx_done_wanted) == TX_DONE_WANTED_OFFSET);
    assert!(core::mem::size_of::<Desc>() == 16);
    assert!(core::mem::size_of::<VnicShared>() as u64 <= PAGE_SIZE);
    assert!(TX_RING_SIZE.is_power_of_two() && RX_RING_SIZE.is_power_of_two());
    assert!(TX_HEADROOM + max_frame(MTU) <= slot_size(MTU));
    assert!(slot_size(MTU) == PAGE_SIZE);
};

/// Guest address of tx slot `slot` when slots are `slot_size` bytes ([`slot_size`]).
pub const fn tx_slot_addr_for(slot: u64, slot_size: u64) -> u64 {
    crate::layout::VNIC_TX_AREA_ADDR + slot * slot_size
}

/// Guest address of rx buffer `slot` when buffers are `slot_size` bytes.
pub const fn rx_buffer_addr_for(slot: u64, slot_size: u64) -> u64 {
    crate::layout::VNIC_RX_AREA_ADDR + slot * slot_size
}

/// Entries in a ring with these free-running indices (the producer may have wrapped).
pub const fn ring_used(producer: u32, consumer: u32) -> u32 {
    producer.wrapping_sub(consumer)
}

pub mod stamps {
    //! Per-packet stage stamps (serialised TSC reads), on only when the kernel runs with
    //! `stamps=on` and says so in `stamps_enabled`. Guest and kernel stamps meet in memory the
    //! packet already uses, so each packet's stages are joined exactly:
    //! - transmit: the guest writes [`TX_STAMPS`] u64s at the start of the tx slot (in the
    //!   headroom, which the NIC never sees): socket send, driver start, doorbell. The kernel
    //!   reads them with the descriptor and adds its own.
    //! - receive: the kernel writes [`RX_STAMPS`] u64s at [`rx_stamps_offset`] of the rx buffer
    //!   (after any frame): trap entry, handler start, frame taken from the NIC, routed, copied
    //!   into the guest, NIC buffer released. The guest adds its own.

    /// u64 stamps the guest leaves in a tx slot's headroom.
    pub const TX_STAMPS: usize = 3;
    /// u64 stamps the kernel leaves at the end of an rx buffer.
    pub const RX_STAMPS: usize = 6;
    /// Offset of the kernel's rx stamps in an rx buffer of `slot_size` bytes.
    pub const fn rx_stamps_offset(slot_size: u64) -> u64 {
        slot_size - 64
    }
    /// Stage names, in order, for each direction.
    pub const TX_STAGES: [&str; 7] =
        ["guest_stack", "guest_driver", "trap_entry", "vnic_work", "fifo_and_scheduler", "physical_driver", "notify"];
    pub const RX_STAGES: [&str; 8] = [
        "interrupt_entry",
        "physical_driver",
        "vswitch",
        "copy_into_guest",
        "buffer_release",
        "virtual_interrupt_to_guest_run",
        "guest_driver",
        "guest_stack",
    ];
    /// The app's stage: from the end of a datagram's receive stages (the app took it from its
    /// socket) to the app's next send (the start of the transmit stages). With it, the stages
    /// of an echo run unbroken from the receive interrupt to the transmit notify.
    pub const APP_STAGES: [&str; 1] = ["guest_app"];
    /// The datagram that makes a stamping `udp-echo` print its receive stages.
    pub const REPORT_REQUEST: &[u8] = b"ik-dispatch-report";

    /// Sorts `values` and returns their (median, 10th, 90th percentile); zeros when empty.
    pub fn quantiles(values: &mut [u32]) -> (u32, u32, u32) {
        values.sort_unstable();
        let at = |q: usize| values.get((values.len().max(1) - 1) * q / 100).copied().unwrap_or(0);
        (at(50), at(10), at(90))
    }

    /// The stage part of a `dispatch:` report line (the format `cargo xtask bench dispatch`
    /// reads): ` name=median/p10/p90/mean` per stage (the mean rounded down), then
    /// ` total=median` of the per-packet sums. `scratch` needs room for one value per sample.
    pub fn write_stages<const N: usize>(
        out: &mut impl core::fmt::Write,
        names: &[&str; N],
        samples: &[[u32; N]],
        scratch: &mut [u32],
    ) -> core::fmt::Result {
        let scratch = &mut scratch[..samples.len()];
        for (stage, name) in names.iter().enumerate() {
            for (value, sample) in scratch.iter_mut().zip(samples) {
                *value = sample[stage];
            }
            let mean = scratch.iter().map(|&v| u64::from(v)).sum::<u64>() / (scratch.len().max(1) as u64);
            let (median, p10, p90) = quantiles(scratch);
            write!(out, " {name}={median}/{p10}/{p90}/{mean}")?;
        }
        for (value, sample) in scratch.iter_mut().zip(samples) {
            *value = sample.iter().sum();
        }
        write!(out, " total={}", quantiles(scratch).0)
    }

    #[cfg(test)]
    mod tests {
        extern crate std;
        use super::*;
        use std::string::String;

        #[test]
        fn stage_lines_carry_quantiles_and_the_median_total() {
            let samples = [[1, 10], [2, 20], [3, 30]];
            let mut line = String::new();
            write_stages(&mut line, &["a", "b"], &samples, &mut [0; 3]).unwrap();
            assert_eq!(line, " a=2/1/2/2 b=20/10/20/20 total=22");
            let mut line = String::new();
            write_stages(&mut line, &["a"], &[[1], [1], [5]], &mut [0; 3]).unwrap();
            assert_eq!(line, " a=1/1/1/2 total=1", "the mean, rounded down, beside the median");
            assert_eq!(quantiles(&mut []), (0, 0, 0));
        }
    }
}

/// Network configuration of a guest, carried in its boot-info page.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct NetConfig {
    pub mac: [u8; 6],
    pub ipv4: [u8; 4],
    pub prefix_len: u8,
    pub gateway: [u8; 4],
    pub mtu: u16,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ring_arithmetic_wraps() {
        assert_eq!(ring_used(5, 3), 2);
        assert_eq!(ring_used(2, u32::MAX - 1), 4);
        assert_eq!(ring_used(7, 7), 0);
    }

    #[test]
    fn status_round_trips() {
        for s in [
            DescStatus::Pending,
            DescStatus::Done,
            DescStatus::RejectedBadDescriptor,
            DescStatus::RejectedSpoofedSource,
            DescStatus::DroppedNoMemory,
            DescStatus::RejectedChecksumRequest,
        ] {
            assert_eq!(DescStatus::from_u32(s as u32), Some(s));
            // Flags above the status do not change it.
            assert_eq!(DescStatus::from_u32(s as u32 | desc_flags::RX_CSUM_VERIFIED), Some(s));
        }
        assert_eq!(DescStatus::from_u32(99), None);
        assert_eq!(desc_flags::TX_CSUM_NEEDED & DESC_STATUS_MASK, 0);
        assert_eq!(desc_flags::RX_CSUM_VERIFIED & DESC_STATUS_MASK, 0);
    }

    #[test]
    fn guest_counters_publish_whole_copies() {
        let shared = VnicShared::default();
        let block = &shared.guest_counters;
        assert_eq!(block.read(), [0; GuestCounter::COUNT]);
        let first: GuestCounterValues = core::array::from_fn(|i| i as u64 + 1);
        block.publish(&first);
        assert_eq!(block.read(), first);
        // A publish cut short (only the next copy written, generation not yet stored) leaves
        // the last complete copy visible.
        for slot in &block.even {
            slot.store(999, Ordering::Relaxed);
        }
        assert_eq!(block.read(), first);
        let second: GuestCounterValues = core::array::from_fn(|i| 100 + i as u64);
        block.publish(&second);
        assert_eq!(block.read(), second);
        assert_eq!(block.generation.load(Ordering::Relaxed), 2);
    }

    #[test]
    fn guest_counter_names_are_distinct_prefixed_and_in_order() {
        for (index, counter) in GuestCounter::ALL.iter().enumerate() {
            assert_eq!(*counter as usize, index, "{counter:?}");
            assert!(counter.name().starts_with("guest_"));
        }
        let mut names: [&str; GuestCounter::COUNT] = GuestCounter::ALL.map(GuestCounter::name);
        names.sort_unstable();
        assert!(names.windows(2).all(|w| w[0] != w[1]));
        for counter in GuestCounter::ALL {
            assert_eq!(GuestCounter::from_name(counter.name()), Some(counter));
        }
        assert_eq!(GuestCounter::from_name("rx_taken"), None);
    }

    #[test]
    fn gauges_are_the_levels_the_docs_name() {
        let mut gauges = GuestCounter::ALL.into_iter().filter(|c| c.is_gauge());
        use GuestCounter::*;
        for want in [UdpQueued, AppHeld, TcpOpen, TcpSockets] {
            assert_eq!(gauges.next(), Some(want));
        }
        assert_eq!(gauges.next(), None);
    }

    #[test]
    fn summing_guest_counters_saturates() {
        let mut total = [u64::MAX - 1; GuestCounter::COUNT];
        add_guest_counters(&mut total, &[5; GuestCounter::COUNT]);
        assert_eq!(total, [u64::MAX; GuestCounter::COUNT]);
        let mut total = [1; GuestCounter::COUNT];
        add_guest_counters(&mut total, &[2; GuestCounter::COUNT]);
        assert_eq!(total, [3; GuestCounter::COUNT]);
    }

    #[test]
    fn slots_lie_in_their_areas() {
        use crate::layout::*;
        assert_eq!(tx_slot_addr_for(0, slot_size(MTU)), VNIC_TX_AREA_ADDR);
        const { assert!(VNIC_SHARED_ADDR + PAGE_SIZE <= VNIC_TX_AREA_ADDR) };
        const { assert!(tx_slot_addr_for(TX_SLOTS, slot_size(MTU)) <= VNIC_RX_AREA_ADDR) };
        const { assert!(rx_buffer_addr_for(RX_SLOTS, slot_size(MTU)) <= IMAGE_BASE) };
        // Jumbo slots fit their areas too.
        const { assert!(tx_slot_addr_for(TX_SLOTS, slot_size(MAX_MTU)) <= VNIC_RX_AREA_ADDR) };
        const { assert!(rx_buffer_addr_for(RX_SLOTS, slot_size(MAX_MTU)) <= STACK_TOP - STACK_SIZE - PAGE_SIZE) };
        assert_eq!(slot_size(MTU), PAGE_SIZE);
        assert_eq!(slot_size(MAX_MTU), 3 * PAGE_SIZE);
        // The shared page, both areas and the stack share one 2 MiB range, so one last-level
        // page table: the kernel knows where each slot's entries are before it is backed.
        const TWO_MIB: u64 = 2 << 20;
        const { assert!(VNIC_SHARED_ADDR / TWO_MIB == (STACK_TOP - 1) / TWO_MIB) };
        const { assert!(VNIC_SHARED_ADDR / TWO_MIB == BOOT_INFO_ADDR / TWO_MIB) };
    }
}
