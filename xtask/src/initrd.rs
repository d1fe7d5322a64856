//! Writing the initrd: a cpio "newc" archive (see `hypercall_abi::initrd`), and the broken ELF
//! files the loader tests feed the kernel.

use anyhow::{bail, Result};

/// A cpio "newc" archive writer.
#[derive(Default)]
pub struct CpioWriter {
    bytes: Vec<u8>,
    next_inode: u32,
}

fn pad4(bytes: &mut Vec<u8>) {
    while !bytes.len().is_multiple_of(4) {
        bytes.push(0);
    }
}

impl CpioWriter {
    pub fn add(&mut self, name: &str, data: &[u8], mode: u32) {
        self.next_inode += 1;
        let fields = [self.next_inode, mode, 0, 0, 1, 0, data.len() as u32, 0, 0, 0, 0, name.len() as u32 + 1, 0];
        self.bytes.extend_from_slice(b"070701");
        for field in fields {
            self.bytes.extend_from_slice(format!("{field:08x}").as_bytes());
        }
        self.bytes.extend_from_slice(name.as_bytes());
        self.bytes.push(0);
        pad4(&mut self.bytes);
        self.bytes.extend_from_slice(data);
        pad4(&mut self.bytes);
    }

    pub fn add_file(&mut self, name: &str, data: &[u8]) {
        self.add(name, data, 0o100644);
    }

    pub fn finish(mut self) -> Vec<u8> {
        self.next_inode = 0;
        self.add("TRAILER!!!", &[], 0);
        self.bytes
    }
}

fn u16_at(b: &[u8], at: usize) -> u16 {
    u16::from_le_bytes([b[at], b[at + 1]])
}

fn u64_at(b: &[u8], at: usize) -> u64 {
    u64::from_le_bytes(b[at..at + 8].try_into().expect("8 bytes"))
}

/// Offsets of the PT_LOAD program headers of a well-formed ELF64 file.
fn load_headers(elf: &[u8]) -> Result<Vec<usize>> {
    if elf.len() < 64 || &elf[..4] != b"\x7fELF" {
        bail!("not an ELF file");
    }
    let phoff = u64_at(elf, 32) as usize;
    let (phentsize, phnum) = (usize::from(u16_at(elf, 54)), usize::from(u16_at(elf, 56)));
    let headers: Vec<usize> = (0..phnum)
        .map(|i| phoff + i * phentsize)
        .filter(|&at| at + phentsize <= elf.len() && elf[at..at + 4] == 1u32.to_le_bytes())
        .collect();
    if headers.len() < 2 {
        bail!("expected at least two PT_LOAD segments");
    }
    Ok(headers)
}

fn set_vaddr(elf: &mut [u8], header: usize, vaddr: u64) {
    elf[header + 16..header + 24].copy_from_slice(&vaddr.to_le_bytes());
    elf[header + 24..header + 32].copy_from_slice(&vaddr.to_le_bytes());
}

/// A broken copy of a good ELF file, of one of `manifest::CORRUPT_KINDS`.
pub fn corrupt_elf(good: &[u8], kind: &str) -> Result<Vec<u8>> {
    let mut elf = good.to_vec();
    let headers = load_headers(&elf)?;
    match kind {
        // Cut inside the program-header table.
        "truncated" => elf.truncate(headers[0] + 20),
        // EM_386 instead of EM_X86_64.
        "wrong-machine" => elf[18..20].copy_from_slice(&3u16.to_le_bytes()),
        // The second segment placed on top of the first.
        "overlapping" => {
            let first = u64_at(&elf, headers[0] + 16);
            set_vaddr(&mut elf, headers[1], first);
        }
        // The first segment moved into the kernel half.
        "kernel-half" => set_vaddr(&mut elf, headers[0], 0xffff_8000_0040_0000),
        other => bail!("unknown corruption `{other}`"),
    }
    Ok(elf)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn archive_layout_is_newc() {
        let mut w = CpioWriter::default();
        w.add_file("image.cfg", b"abc");
        let bytes = w.finish();
        assert_eq!(&bytes[..6], b"070701");
        assert_eq!(bytes.len() % 4, 0);
        // Header 110 + name 10 -> 120 (aligned), data 3 -> padded to 124, then the trailer.
        assert_eq!(&bytes[120..123], b"abc");
        assert_eq!(&bytes[124..130], b"070701");
        assert!(bytes.windows(10).any(|w| w == b"TRAILER!!!"));
    }

    #[test]
    fn corruptions_change_what_they_say() {
        // A minimal ELF64 header with two PT_LOAD headers.
        let mut elf = vec![0u8; 64 + 2 * 56];
        elf[..4].copy_from_slice(b"\x7fELF");
        elf[18] = 62;
        elf[32..40].copy_from_slice(&64u64.to_le_bytes());
        elf[54..56].copy_from_slice(&56u16.to_le_bytes());
        elf[56..58].copy_from_slice(&2u16.to_le_bytes());
        for (i, vaddr) in [0x40_0000u64, 0x40_1000].into_iter().enumerate() {
            let at = 64 + i * 56;
            elf[at] = 1;
            set_vaddr(&mut elf, at, vaddr);
        }
        assert_eq!(corrupt_elf(&elf, "truncated").unwrap().len(), 84);
        assert_eq!(corrupt_elf(&elf, "wrong-machine").unwrap()[18], 3);
        assert_eq!(u64_at(&corrupt_elf(&elf, "overlapping").unwrap(), 120 + 16), 0x40_0000);
        assert_eq!(u64_at(&corrupt_elf(&elf, "kernel-half").unwrap(), 64 + 16), 0xffff_8000_0040_0000);
        assert!(corrupt_elf(&elf, "other").is_err());
        assert!(corrupt_elf(b"not elf", "truncated").is_err());
    }
}
