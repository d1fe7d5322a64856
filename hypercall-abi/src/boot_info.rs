//! The boot-info page: read-only, at [`crate::layout::BOOT_INFO_ADDR`] in every guest.
//!
//! Encoded little-endian at fixed offsets (below), written by the kernel with [`BootInfo::encode`]
//! and read by the guest runtime with [`BootInfo::decode`], so neither side needs `unsafe` casts.
//!
//! | offset | size | field |
//! | --- | --- | --- |
//! | 0 | 8 | magic [`MAGIC`] |
//! | 8 | 4 | ABI version ([`crate::ABI_VERSION`]) |
//! | 12 | 4 | guest id |
//! | 16 | 8 | TSC frequency, Hz |
//! | 24 | 8 | heap base |
//! | 32 | 8 | heap size, bytes |
//! | 40 | 8 | stack top |
//! | 48 | 8 | stack size, bytes |
//! | 56 | 2 | name length |
//! | 58 | 2 | arguments length |
//! | 64 | 64 | name (UTF-8) |
//! | 128 | 1024 | arguments (UTF-8, words separated by single spaces) |
//! | 1152 | 1 | 1 if the guest has a virtual NIC, else 0 |
//! | 1153 | 1 | IPv4 prefix length |
//! | 1154 | 2 | MTU |
//! | 1156 | 6 | MAC address |
//! | 1162 | 4 | IPv4 address |
//! | 1166 | 4 | IPv4 gateway (0.0.0.0: none) |

/// "BOOTINFO" read as a little-endian u64.
pub const MAGIC: u64 = u64::from_le_bytes(*b"BOOTINFO");
pub const MAX_NAME_LEN: usize = 64;
pub const MAX_ARGS_LEN: usize = 1024;
/// Bytes of the page that the encoding uses.
pub const ENCODED_SIZE: usize = NET_OFFSET + 18;

const NAME_OFFSET: usize = 64;
const ARGS_OFFSET: usize = 128;
const NET_OFFSET: usize = ARGS_OFFSET + MAX_ARGS_LEN;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BootInfo<'a> {
    pub abi_version: u32,
    pub guest_id: u32,
    pub tsc_hz: u64,
    pub heap_base: u64,
    pub heap_size: u64,
    pub stack_top: u64,
    pub stack_size: u64,
    pub name: &'a str,
    pub args: &'a str,
    /// The virtual NIC's configuration, if the guest has one.
    pub net: Option<crate::vnic::NetConfig>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BootInfoError {
    /// The buffer is smaller than [`ENCODED_SIZE`].
    BufferTooSmall,
    BadMagic,
    NameTooLong,
    ArgsTooLong,
    NotUtf8,
}

fn put(buf: &mut [u8], offset: usize, bytes: &[u8]) {
    buf[offset..offset + bytes.len()].copy_from_slice(bytes);
}

fn get<const N: usize>(buf: &[u8], offset: usize) -> [u8; N] {
    let mut out = [0u8; N];
    out.copy_from_slice(&buf[offset..offset + N]);
    out
}

impl<'a> BootInfo<'a> {
    /// Writes the encoding into the start of `page`.
    pub fn encode(&self, page: &mut [u8]) -> Result<(), BootInfoError> {
        if page.len() < ENCODED_SIZE {
            return Err(BootInfoError::BufferTooSmall);
        }
        if self.name.len() > MAX_NAME_LEN {
            return Err(BootInfoError::NameTooLong);
        }
        if self.args.len() > MAX_ARGS_LEN {
            return Err(BootInfoError::ArgsTooLong);
        }
        page[..ENCODED_SIZE].fill(0);
        put(page, 0, &MAGIC.to_le_bytes());
        put(page, 8, &self.abi_version.to_le_bytes());
        put(page, 12, &self.guest_id.to_le_bytes());
        put(page, 16, &self.tsc_hz.to_le_bytes());
        put(page, 24, &self.heap_base.to_le_bytes());
        put(page, 32, &self.heap_size.to_le_bytes());
        put(page, 40, &self.stack_top.to_le_bytes());
        put(page, 48, &self.stack_size.to_le_bytes());
        put(page, 56, &(self.name.len() as u16).to_le_bytes());
        put(page, 58, &(self.args.len() as u16).to_le_bytes());
        put(page, NAME_OFFSET, self.name.as_bytes());
        put(page, ARGS_OFFSET, self.args.as_bytes());
        if let Some(net) = &self.net {
            page[NET_OFFSET] = 1;
            page[NET_OFFSET + 1] = net.prefix_len;
            put(page, NET_OFFSET + 2, &net.mtu.to_le_bytes());
            put(page, NET_OFFSET + 4, &net.mac);
            put(page, NET_OFFSET + 10, &net.ipv4);
            put(page, NET_OFFSET + 14, &net.gateway);
        }
        Ok(())
    }

    /// Reads an encoding made by [`BootInfo::encode`].
    pub fn decode(page: &'a [u8]) -> Result<BootInfo<'a>, BootInfoError> {
        if page.len() < ENCODED_SIZE {
            return Err(BootInfoError::BufferTooSmall);
        }
        if u64::from_le_bytes(get(page, 0)) != MAGIC {
            return Err(BootInfoError::BadMagic);
        }
        let name_len = usize::from(u16::from_le_bytes(get(page, 56)));
        let args_len = usize::from(u16::from_le_bytes(get(page, 58)));
        if name_len > MAX_NAME_LEN {
            return Err(BootInfoError::NameTooLong);
        }
        if args_len > MAX_ARGS_LEN {
            return Err(BootInfoError::ArgsTooLong);
        }
        let text = |offset: usize, len: usize| {
            core::str::from_utf8(&page[offset..offset + len]).map_err(|_| BootInfoError::NotUtf8)
        };
        Ok(BootInfo {
            abi_version: u32::from_le_bytes(get(page, 8)),
            guest_id: u32::from_le_bytes(get(page, 12)),
            tsc_hz: u64::from_le_bytes(get(page, 16)),
            heap_base: u64::from_le_bytes(get(page, 24)),
            heap_size: u64::from_le_bytes(get(page, 32)),
            stack_top: u64::from_le_bytes(get(page, 40)),
            stack_size: u64::from_le_bytes(get(page, 48)),
            name: text(NAME_OFFSET, name_len)?,
            args: text(ARGS_OFFSET, args_len)?,
            net: (page[NET_OFFSET] == 1).then(|| crate::vnic::NetConfig {
                prefix_len: page[NET_OFFSET + 1],
                mtu: u16::from_le_bytes(get(page, NET_OFFSET + 2)),
                mac: get(page, NET_OFFSET + 4),
                ipv4: get(page, NET_OFFSET + 10),
                gateway: get(page, NET_OFFSET + 14),
            }),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> BootInfo<'static> {
        BootInfo {
            abi_version: crate::ABI_VERSION,
            guest_id: 7,
            tsc_hz: 2_450_000_000,
            heap_base: 0x1000_0000,
            heap_size: 65536,
            stack_top: 0x7fff_0000,
            stack_size: 65536,
            name: "hello-7",
            args: "one two",
            net: Some(crate::vnic::NetConfig {
                mac: [2, 0, 0, 0, 0, 7],
                ipv4: [10, 0, 2, 23],
                prefix_len: 24,
                gateway: [10, 0, 2, 2],
                mtu: 1500,
            }),
        }
    }

    #[test]
    fn round_trips() {
        let mut page = [0xaau8; 4096];
        sample().encode(&mut page).unwrap();
        assert_eq!(BootInfo::decode(&page).unwrap(), sample());
        let without_net = BootInfo { net: None, ..sample() };
        without_net.encode(&mut page).unwrap();
        assert_eq!(BootInfo::decode(&page).unwrap(), without_net);
    }

    #[test]
    fn bad_pages_are_refused() {
        let mut page = [0u8; 4096];
        assert_eq!(BootInfo::decode(&page), Err(BootInfoError::BadMagic));
        assert_eq!(sample().encode(&mut page[..100]), Err(BootInfoError::BufferTooSmall));
        let long = "x".repeat(MAX_ARGS_LEN + 1);
        assert_eq!(BootInfo { args: &long, ..sample() }.encode(&mut page), Err(BootInfoError::ArgsTooLong));
        sample().encode(&mut page).unwrap();
        page[56] = 200; // name length beyond the field
        assert_eq!(BootInfo::decode(&page), Err(BootInfoError::NameTooLong));
        page[56] = 2;
        page[NAME_OFFSET] = 0xff;
        assert_eq!(BootInfo::decode(&page), Err(BootInfoError::NotUtf8));
    }
}
