//! The guest's network: its virtual NIC (at the fixed addresses of `hypercall_abi::layout`)
//! under the smoltcp stack of the `netstack` crate, sleeping with the idle virtual instruction.

use crate::time::{duration_to_ticks, ticks, ticks_to_duration};
use core::sync::atomic::{AtomicBool, Ordering};
use hypercall_abi::initrd::{TCP_RX_KIB_ARG, TCP_TX_KIB_ARG};
use hypercall_abi::layout::{VNIC_RX_AREA_ADDR, VNIC_SHARED_ADDR, VNIC_TX_AREA_ADDR};
use hypercall_abi::vnic::{slot_size, NetConfig, VnicShared, RX_SLOTS, TX_SLOTS};
use smoltcp::time::Instant;
use vnic_driver::{Doorbell, Vnic};

pub use netstack::{AppOutcome, Duration, NetError, TcpError, TcpHandle, TcpListener, TcpOptions, TcpState, UdpHandle};
pub use smoltcp::wire::Ipv4Address;

/// The guest's network stack.
pub type Net = netstack::NetStack<'static, VirtualDoorbell, GuestPlatform>;

/// Rings the kernel with the vNIC virtual instructions.
pub struct VirtualDoorbell;

impl Doorbell for VirtualDoorbell {
    fn tx_kick(&mut self) {
        crate::vi::vnic_tx_kick();
    }

    fn rx_posted(&mut self) {
        crate::vi::vnic_rx_posted();
    }

    fn clock() -> u64 {
        crate::time::ticks_serialized()
    }
}

/// Time from the TSC; sleep with `idle_until`.
pub struct GuestPlatform;

impl netstack::Platform for GuestPlatform {
    fn now(&self) -> Instant {
        instant_of(ticks())
    }

    fn idle_until(&mut self, deadline: Option<Instant>) {
        match deadline {
            Some(deadline) => {
                let micros = deadline.total_micros().max(0) as u64;
                let ticks = duration_to_ticks(core::time::Duration::from_micros(micros));
                crate::vi::idle_until(ticks);
            }
            None => {
                crate::vi::idle();
            }
        }
    }

    fn yield_now(&mut self) {
        crate::vi::yield_now();
    }
}

static OPENED: AtomicBool = AtomicBool::new(false);

/// The network stack on this guest's virtual NIC, its TCP buffer sizes from the arguments
/// `tcp_rx_kib=N` and `tcp_tx_kib=N` (the image manifest's keys of those names; netstack's
/// defaults otherwise): `None` if the image gave it no NIC, or if it was opened before (there
/// is one NIC, so one stack).
pub fn open(env: &crate::Env) -> Option<Net> {
    let mut net = open_nic(env.net)?;
    let kib = |key| env.arg(key).and_then(|v| v.parse::<usize>().ok()).map(|k| k.saturating_mul(1024));
    let mut options = net.tcp_options();
    options.rx_buffer = kib(TCP_RX_KIB_ARG).unwrap_or(options.rx_buffer);
    options.tx_buffer = kib(TCP_TX_KIB_ARG).unwrap_or(options.tx_buffer);
    net.set_tcp_options(options);
    Some(net)
}

fn open_nic(config: Option<NetConfig>) -> Option<Net> {
    let config = config?;
    if OPENED.swap(true, Ordering::AcqRel) {
        return None;
    }
    // Slots are sized for the MTU in the boot info: the kernel mapped them the same way.
    let slot = slot_size(u64::from(config.mtu));
    // SAFETY: the kernel maps the shared page and both areas read-write at these fixed
    // addresses in every guest with a NIC (`config` is only present then), for the guest's whole
    // life; OPENED makes these the only references ever made to them in this guest.
    let (shared, tx_area, rx_area) = unsafe {
        (
            &*(VNIC_SHARED_ADDR as *const VnicShared),
            core::slice::from_raw_parts_mut(VNIC_TX_AREA_ADDR as *mut u8, (TX_SLOTS * slot) as usize),
            core::slice::from_raw_parts_mut(VNIC_RX_AREA_ADDR as *mut u8, (RX_SLOTS * slot) as usize),
        )
    };
    let device = Vnic::with_mtu(shared, tx_area, rx_area, VirtualDoorbell, config.mtu).ok()?;
    Some(netstack::NetStack::new(config, device, GuestPlatform))
}

/// The network stack's clock reading at TSC value `ticks`.
pub fn instant_of(ticks: u64) -> Instant {
    Instant::from_micros(ticks_to_duration(ticks).as_micros() as i64)
}

/// An `a.b.c.d:port` argument (a peer's address), or `None` if it is not one.
pub fn parse_endpoint(text: &str) -> Option<(Ipv4Address, u16)> {
    let endpoint: core::net::SocketAddrV4 = text.parse().ok()?;
    Some((*endpoint.ip(), endpoint.port()))
}

/// `a.b.c.d` for printing.
pub fn format_ipv4(ip: [u8; 4]) -> impl core::fmt::Display {
    Ipv4Address::new(ip[0], ip[1], ip[2], ip[3])
}
