//! The kernel's packet path for guests' virtual NICs, as portable logic.
//!
//! A guest's tx descriptors are hostile input: [`ring`] takes the guest's ring indices and
//! [`desc`] checks each descriptor against the fixed vNIC layout (slots of
//! `hypercall_abi::vnic::slot_size(mtu)` bytes) before the kernel reads a byte. There are two
//! transmit paths: Denali's copy path copies accepted frames into buffers of a fixed [`pool`];
//! the copy-on-write path ([`cow`]) write-protects the guest's slot and hands its pages on
//! without a copy; the split path copies only the headers ([`split`] says where they end) and
//! hands the NIC that copy chained with the payload in the guest's slot. Either way the packet is queued in the guest's bounded [`fifo`] and handed to
//! the NIC by the [`netsched`] network scheduler, round-robin with a per-turn budget so one flooding guest cannot starve
//! the others; a guest whose frames do not fit waits in the [`backlog`], and so does a guest
//! whose transmit rate limit ([`ratelimit`]) holds its next frame back. The [`vswitch`] decides where a frame goes (another guest, the uplink, or
//! nowhere), and [`counters`] count what happened for the `stats:` line.
//!
//! Everything allocates at construction time only; the per-packet operations never allocate and
//! never panic on guest-controlled values; the lints below hold every module here to that.

pub mod backlog;
pub mod counters;
pub mod cow;
pub mod csum;
pub mod desc;
pub mod fifo;
pub mod netsched;
pub mod pool;
pub mod ratelimit;
pub mod ring;
pub mod split;
pub mod timeline;
pub mod vswitch;
pub mod wire;

pub use backlog::{TxBacklog, Wait};
pub use counters::NetCounters;
pub use csum::{CsumRequest, TxChecksum};
pub use desc::{pending, validate_rx, validate_tx, BadDescriptor, BadIndex, RxBuffer, TxFrame};
pub use fifo::{GuestFrameRef, Packet, PacketData, SplitFrame, TxFifo, NO_STAMP};
pub use netsched::NetScheduler;
pub use pool::{BufId, PacketPool, PoolError};
pub use ratelimit::{GuestTx, Held, RateLimiter, TokenBucket};
pub use ring::{RingIndexError, RxRing, TxRing};
pub use vswitch::{DropReason, Ipv4, Mac, Route, Source, Vswitch, VswitchError, BROADCAST};
