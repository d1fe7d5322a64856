//! Header sizes and field values of the frames the kernel parses (Ethernet, ARP, IPv4, IPv6, UDP,
//! TCP): one place for the numbers the vswitch, checksum offload and the split path each read.

/// Ethernet II header: destination, source, ethertype.
pub const ETHERNET_HEADER: usize = hypercall_abi::vnic::ETHERNET_HEADER as usize;
pub const ETHERTYPE_IPV4: u16 = 0x0800;
pub const ETHERTYPE_IPV6: u16 = 0x86dd;
pub const ETHERTYPE_ARP: u16 = 0x0806;
/// An ARP packet for IPv4 over Ethernet.
pub const ARP_IPV4: usize = 28;
/// IPv4 header without options, and IPv6's fixed header.
pub const IPV4_MIN_HEADER: usize = 20;
pub const IPV6_HEADER: usize = 40;
pub const PROTOCOL_TCP: u8 = 6;
pub const PROTOCOL_UDP: u8 = 17;
pub const UDP_HEADER: usize = 8;
/// TCP header without options.
pub const TCP_MIN_HEADER: usize = 20;
/// IPv4 flags and fragment offset: "more fragments", and the offset (non-zero in a later
/// fragment, which carries no transport header).
pub const IPV4_MORE_FRAGMENTS: u16 = 0x2000;
pub const IPV4_FRAGMENT_OFFSET: u16 = 0x1fff;
