//! How to power the machine off through ACPI, read from the firmware's tables: the RSDP (where
//! the PVH start info says, else in the BIOS areas), the XSDT or RSDT, the FADT and the S5 sleep
//! type of the DSDT's `_S5` package. Two kinds of machine:
//! - hardware-reduced ACPI (cloud-hypervisor, QEMU `microvm`): the FADT's sleep control
//!   register takes `SLP_TYP << 2 | SLP_EN` (cloud-hypervisor: I/O port 0x600, S5 = 5);
//! - the fixed hardware (QEMU `pc`'s PIIX4): the PM1a (and PM1b) control block takes
//!   `SLP_TYP << 10 | SLP_EN` (QEMU: I/O port 0x604, S5 = 0).
//!
//! Firecracker's FADT is hardware-reduced without a sleep register: it has no ACPI power-off
//! (it watches the i8042 reset instead). The tables come from the VMM, not from a guest, but are
//! read as carefully as anything else: every address is checked against what the reader can
//! reach, lengths are bounded, checksums must hold, and nothing here panics.

use crate::boot::pvh::{PhysRead, Unreadable};

/// The RSDP's signature.
pub const RSDP_SIGNATURE: &[u8; 8] = b"RSD PTR ";
/// Bytes of an ACPI 1.0 RSDP (what its first checksum covers) and of the ACPI 2.0+ one.
const RSDP_V1_LEN: usize = 20;
const RSDP_V2_LEN: usize = 36;
/// The BIOS area searched for the RSDP on a 16-byte boundary, and where the EBDA's segment is.
const BIOS_AREA: (u64, u64) = (0xE_0000, 0x10_0000);
const EBDA_SEGMENT_AT: u64 = 0x40E;
/// Bytes of a table header.
const HEADER_LEN: usize = 36;
/// Longest FADT and DSDT read (QEMU's DSDT is ~8 KiB; cloud-hypervisor's smaller).
const MAX_FADT_LEN: u32 = 4096;
const MAX_DSDT_LEN: u32 = 1 << 20;
/// Most root-table entries looked at.
const MAX_ROOT_ENTRIES: usize = 64;
/// FADT fields used (offsets in bytes).
const FADT_DSDT: usize = 40;
const FADT_PM1A_CNT_BLK: usize = 64;
const FADT_PM1B_CNT_BLK: usize = 68;
const FADT_FLAGS: usize = 112;
const FADT_X_DSDT: usize = 140;
const FADT_X_PM1A_CNT_BLK: usize = 172;
const FADT_X_PM1B_CNT_BLK: usize = 184;
const FADT_SLEEP_CONTROL_REG: usize = 244;
/// The FADT bytes read (up to the sleep status register).
const FADT_READ_LEN: usize = 268;
/// FADT flag: hardware-reduced ACPI.
const HW_REDUCED_ACPI: u32 = 1 << 20;
/// SLP_EN in PM1 control (bit 13) and in the sleep control register (bit 5).
const PM1_SLP_EN: u32 = 1 << 13;
const SLEEP_CONTROL_SLP_EN: u32 = 1 << 5;

/// Where a register lives.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Space {
    Io,
    Memory,
}

/// A register the power-off writes, and the width of the write.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Register {
    pub space: Space,
    pub address: u64,
    /// 1, 2 or 4.
    pub bytes: u8,
}

/// What to write to power off: one or two registers (PM1a, PM1b), in order.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PowerOff {
    pub writes: [Option<(Register, u32)>; 2],
    /// Through the sleep control register (hardware-reduced) rather than PM1 control.
    pub hardware_reduced: bool,
    /// The S5 sleep type from `_S5` (PM1a's).
    pub s5: u8,
}

/// Why the tables offer no ACPI power-off.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum NoPowerOff {
    /// No valid RSDP where the start info points nor in the BIOS areas (QEMU `acpi=off`).
    NoRsdp,
    /// A table could not be read (beyond what the boot mappings reach, or too long).
    Unreadable { what: &'static str, phys: u64 },
    /// A table's signature or checksum is wrong.
    BadTable { what: &'static str, phys: u64 },
    /// No FADT among the root table's entries.
    NoFadt,
    /// A hardware-reduced FADT without a sleep control register (Firecracker's).
    NoSleepRegister,
    /// The DSDT has no `_S5` package the kernel can read.
    NoS5,
    /// A register in an address space other than memory or I/O, or an I/O port beyond 0xffff.
    UnusableRegister,
}

impl core::fmt::Display for NoPowerOff {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            Self::NoRsdp => write!(f, "no ACPI tables (no RSDP)"),
            Self::Unreadable { what, phys } => write!(f, "the {what} at {phys:#x} cannot be read"),
            Self::BadTable { what, phys } => write!(f, "the {what} at {phys:#x} has a bad signature or checksum"),
            Self::NoFadt => write!(f, "no FADT"),
            Self::NoSleepRegister => write!(f, "hardware-reduced ACPI without a sleep control register"),
            Self::NoS5 => write!(f, "no _S5 sleep type in the DSDT"),
            Self::UnusableRegister => write!(f, "the sleep register is in an address space the kernel does not use"),
        }
    }
}

fn read(mem: &impl PhysRead, phys: u64, buf: &mut [u8], what: &'static str) -> Result<(), NoPowerOff> {
    mem.read(phys, buf).map_err(|Unreadable| NoPowerOff::Unreadable { what, phys })
}

fn le_u16(bytes: &[u8], at: usize) -> u16 {
    u16::from_le_bytes(bytes.get(at..).and_then(<[u8]>::first_chunk).copied().unwrap_or_default())
}

fn le_u32(bytes: &[u8], at: usize) -> u32 {
    u32::from_le_bytes(bytes.get(at..).and_then(<[u8]>::first_chunk).copied().unwrap_or_default())
}

fn le_u64(bytes: &[u8], at: usize) -> u64 {
    u64::from_le_bytes(bytes.get(at..).and_then(<[u8]>::first_chunk).copied().unwrap_or_default())
}

fn sums_to_zero(bytes: &[u8]) -> bool {
    bytes.iter().fold(0u8, |sum, &b| sum.wrapping_add(b)) == 0
}

/// The root table an RSDP at `phys` names, if it is a valid RSDP: `(address, entry size)`.
fn rsdp_root(mem: &impl PhysRead, phys: u64) -> Option<(u64, usize)> {
    let mut rsdp = [0u8; RSDP_V2_LEN];
    mem.read(phys, &mut rsdp[..RSDP_V1_LEN]).ok()?;
    if rsdp.get(..8) != Some(&RSDP_SIGNATURE[..]) || !sums_to_zero(rsdp.get(..RSDP_V1_LEN)?) {
        return None;
    }
    let revision = rsdp.get(15).copied().unwrap_or(0);
    if revision >= 2 && mem.read(phys, &mut rsdp).is_ok() && sums_to_zero(&rsdp) {
        let xsdt = le_u64(&rsdp, 24);
        if xsdt != 0 {
            return Some((xsdt, 8));
        }
    }
    let rsdt = u64::from(le_u32(&rsdp, 16));
    (rsdt != 0).then_some((rsdt, 4))
}

/// The RSDP's root table: at `hint` (the start info's `rsdp_paddr`, 0 if none), else in the
/// EBDA's first KiB, else in the BIOS area.
fn find_root(mem: &impl PhysRead, hint: u64) -> Option<(u64, usize)> {
    if hint != 0 {
        if let Some(root) = rsdp_root(mem, hint) {
            return Some(root);
        }
    }
    let mut segment = [0u8; 2];
    let ebda = mem.read(EBDA_SEGMENT_AT, &mut segment).ok().map(|()| u64::from(u16::from_le_bytes(segment)) << 4);
    let ebda_area = ebda.filter(|&at| (0x8_0000..0xA_0000).contains(&at)).map(|at| (at, at.saturating_add(1024)));
    [ebda_area, Some(BIOS_AREA)]
        .into_iter()
        .flatten()
        .flat_map(|(start, end)| (start..end).step_by(16))
        .find_map(|at| rsdp_root(mem, at))
}

/// Checks the header of the table at `phys` (signature `signature`, length at most `max`,
/// checksum over the whole length) and returns its length.
fn check_table(
    mem: &impl PhysRead,
    phys: u64,
    signature: &[u8; 4],
    max: u32,
    what: &'static str,
) -> Result<u32, NoPowerOff> {
    let mut header = [0u8; HEADER_LEN];
    read(mem, phys, &mut header, what)?;
    let len = le_u32(&header, 4);
    if header.get(..4) != Some(&signature[..]) || (len as usize) < HEADER_LEN {
        return Err(NoPowerOff::BadTable { what, phys });
    }
    if len > max {
        return Err(NoPowerOff::Unreadable { what, phys });
    }
    let mut sum = 0u8;
    let mut chunk = [0u8; 512];
    let mut done = 0u32;
    while done < len {
        let n = len.saturating_sub(done).min(chunk.len() as u32);
        let part = chunk.get_mut(..n as usize).ok_or(NoPowerOff::Unreadable { what, phys })?;
        let at = phys.checked_add(u64::from(done)).ok_or(NoPowerOff::Unreadable { what, phys })?;
        read(mem, at, part, what)?;
        sum = part.iter().fold(sum, |s, &b| s.wrapping_add(b));
        done = done.saturating_add(n);
    }
    if sum != 0 {
        return Err(NoPowerOff::BadTable { what, phys });
    }
    Ok(len)
}

/// The FADT's address, from the root table's entries.
fn find_fadt(mem: &impl PhysRead, root: u64, entry_size: usize) -> Result<u64, NoPowerOff> {
    let signature = if entry_size == 8 { b"XSDT" } else { b"RSDT" };
    let len = check_table(mem, root, signature, MAX_FADT_LEN.saturating_mul(4), "root table")?;
    let entries = (len as usize).saturating_sub(HEADER_LEN).checked_div(entry_size).unwrap_or(0);
    for index in 0..entries.min(MAX_ROOT_ENTRIES) {
        let offset = HEADER_LEN.saturating_add(index.saturating_mul(entry_size)) as u64;
        let at = root.checked_add(offset).ok_or(NoPowerOff::Unreadable { what: "root table", phys: root })?;
        let mut entry = [0u8; 8];
        read(mem, at, entry.get_mut(..entry_size).unwrap_or(&mut []), "root table")?;
        let table = le_u64(&entry, 0);
        let mut signature = [0u8; 4];
        if table != 0 && mem.read(table, &mut signature).is_ok() && &signature == b"FACP" {
            return Ok(table);
        }
    }
    Err(NoPowerOff::NoFadt)
}

/// A Generic Address Structure at `at` of the FADT: `None` if its address is 0.
fn gas(fadt: &[u8], at: usize) -> Result<Option<Register>, NoPowerOff> {
    let address = le_u64(fadt, at.saturating_add(4));
    if address == 0 {
        return Ok(None);
    }
    let space = match fadt.get(at).copied() {
        Some(0) => Space::Memory,
        Some(1) => Space::Io,
        _ => return Err(NoPowerOff::UnusableRegister),
    };
    let bytes = match (fadt.get(at.saturating_add(3)).copied(), fadt.get(at.saturating_add(1)).copied()) {
        // Access size 1, 2, 3: byte, word, dword; else the register's bit width.
        (Some(1), _) | (Some(0) | None, Some(8)) => 1,
        (Some(2), _) | (Some(0) | None, Some(16)) => 2,
        (Some(3), _) | (Some(0) | None, Some(32)) => 4,
        _ => 1,
    };
    if space == Space::Io && address > u64::from(u16::MAX) {
        return Err(NoPowerOff::UnusableRegister);
    }
    Ok(Some(Register { space, address, bytes }))
}

/// A PM1 control block: the extended GAS if it has an address, else the 32-bit I/O port.
fn pm1_block(fadt: &[u8], len: usize, x_at: usize, port_at: usize) -> Result<Option<Register>, NoPowerOff> {
    if len >= x_at.saturating_add(12) {
        if let Some(register) = gas(fadt, x_at)? {
            return Ok(Some(Register { bytes: 2, ..register }));
        }
    }
    match le_u32(fadt, port_at) {
        0 => Ok(None),
        port => u16::try_from(port)
            .map(|port| Some(Register { space: Space::Io, address: u64::from(port), bytes: 2 }))
            .map_err(|_| NoPowerOff::UnusableRegister),
    }
}

/// An AML integer at the start of `aml`: `Zero`, `One`, or a byte, word or dword constant.
fn aml_integer(aml: &[u8]) -> Option<u32> {
    match *aml.first()? {
        0x00 => Some(0),
        0x01 => Some(1),
        0x0A => aml.get(1).copied().map(u32::from),
        0x0B => Some(u32::from(le_u16(aml, 1))).filter(|_| aml.len() >= 3),
        0x0C => Some(le_u32(aml, 1)).filter(|_| aml.len() >= 5),
        _ => None,
    }
}

/// The size in bytes of the AML integer at the start of `aml`.
fn aml_integer_len(aml: &[u8]) -> usize {
    match aml.first() {
        Some(0x0A) => 2,
        Some(0x0B) => 3,
        Some(0x0C) => 5,
        _ => 1,
    }
}

/// The sleep types of `Name(_S5_, Package(){a, b, ...})` if `aml` starts just after `_S5_`:
/// PackageOp, PkgLength (1 to 4 bytes), NumElements, then the elements.
fn s5_package(aml: &[u8]) -> Option<(u8, u8)> {
    if *aml.first()? != 0x12 {
        return None;
    }
    let length_bytes = usize::from(aml.get(1)? >> 6);
    let elements = aml.get(length_bytes.checked_add(3)?..)?;
    let a = aml_integer(elements)?;
    let b = elements.get(aml_integer_len(elements)..).and_then(aml_integer).unwrap_or(0);
    Some(((a & 7) as u8, (b & 7) as u8))
}

/// The S5 sleep types from the DSDT at `phys` (`len` bytes, checked): the first `_S5_` name
/// (`NameOp`, optionally a root prefix, `_S5_`) followed by a package of integers.
fn find_s5(mem: &impl PhysRead, phys: u64, len: u32) -> Result<(u8, u8), NoPowerOff> {
    const PATTERN: &[u8; 4] = b"_S5_";
    // Chunks overlap by enough bytes for the name, its prefix and the package's start.
    const OVERLAP: usize = 16;
    let mut chunk = [0u8; 512];
    let mut start = HEADER_LEN as u32;
    while start < len {
        let n = len.saturating_sub(start).min(chunk.len() as u32) as usize;
        let at = phys.checked_add(u64::from(start)).ok_or(NoPowerOff::NoS5)?;
        let part = chunk.get_mut(..n).ok_or(NoPowerOff::NoS5)?;
        read(mem, at, part, "DSDT")?;
        for (i, _) in part.windows(4).enumerate().filter(|(_, w)| w == PATTERN) {
            let before = i.checked_sub(1).and_then(|j| part.get(j)).copied();
            let before2 = i.checked_sub(2).and_then(|j| part.get(j)).copied();
            let named = before == Some(0x08) || (before == Some(b'\\') && before2 == Some(0x08));
            if let Some(types) = part.get(i.saturating_add(4)..).and_then(s5_package).filter(|_| named) {
                return Ok(types);
            }
        }
        if n < chunk.len() {
            break;
        }
        start = start.saturating_add(n.saturating_sub(OVERLAP) as u32);
    }
    Err(NoPowerOff::NoS5)
}

/// How to power off through ACPI, from the tables reachable through `mem` (`rsdp_hint`: the
/// start info's RSDP address, 0 if none).
pub fn find_power_off(mem: &impl PhysRead, rsdp_hint: u64) -> Result<PowerOff, NoPowerOff> {
    let (root, entry_size) = find_root(mem, rsdp_hint).ok_or(NoPowerOff::NoRsdp)?;
    let fadt_at = find_fadt(mem, root, entry_size)?;
    let fadt_len = check_table(mem, fadt_at, b"FACP", MAX_FADT_LEN, "FADT")? as usize;
    let mut fadt = [0u8; FADT_READ_LEN];
    let fadt_bytes = fadt.get_mut(..fadt_len.min(FADT_READ_LEN)).unwrap_or(&mut []);
    read(mem, fadt_at, fadt_bytes, "FADT")?;
    let hardware_reduced = fadt_len >= FADT_FLAGS + 4 && le_u32(&fadt, FADT_FLAGS) & HW_REDUCED_ACPI != 0;
    let sleep_control = if hardware_reduced && fadt_len >= FADT_SLEEP_CONTROL_REG + 12 {
        gas(&fadt, FADT_SLEEP_CONTROL_REG)?
    } else {
        None
    };
    if hardware_reduced && sleep_control.is_none() {
        return Err(NoPowerOff::NoSleepRegister);
    }
    let x_dsdt = if fadt_len >= FADT_X_DSDT + 8 { le_u64(&fadt, FADT_X_DSDT) } else { 0 };
    let dsdt = if x_dsdt != 0 { x_dsdt } else { u64::from(le_u32(&fadt, FADT_DSDT)) };
    let dsdt_len = check_table(mem, dsdt, b"DSDT", MAX_DSDT_LEN, "DSDT")?;
    let (s5a, s5b) = find_s5(mem, dsdt, dsdt_len)?;
    let writes = match sleep_control {
        Some(register) => [Some((register, u32::from(s5a) << 2 | SLEEP_CONTROL_SLP_EN)), None],
        None => {
            let pm1a = pm1_block(&fadt, fadt_len, FADT_X_PM1A_CNT_BLK, FADT_PM1A_CNT_BLK)?;
            let pm1b = pm1_block(&fadt, fadt_len, FADT_X_PM1B_CNT_BLK, FADT_PM1B_CNT_BLK)?;
            let Some(pm1a) = pm1a else { return Err(NoPowerOff::NoSleepRegister) };
            [
                Some((pm1a, u32::from(s5a) << 10 | PM1_SLP_EN)),
                pm1b.map(|register| (register, u32::from(s5b) << 10 | PM1_SLP_EN)),
            ]
        }
    };
    Ok(PowerOff { writes, hardware_reduced, s5: s5a })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Physical memory at 0.., as a byte vector.
    struct Memory(Vec<u8>);

    impl PhysRead for Memory {
        fn read(&self, phys: u64, buf: &mut [u8]) -> Result<(), Unreadable> {
            let start = usize::try_from(phys).map_err(|_| Unreadable)?;
            let src = self.0.get(start..start.checked_add(buf.len()).ok_or(Unreadable)?).ok_or(Unreadable)?;
            buf.copy_from_slice(src);
            Ok(())
        }
    }

    impl Memory {
        fn put(&mut self, at: usize, bytes: &[u8]) {
            self.0[at..at + bytes.len()].copy_from_slice(bytes);
        }
    }

    fn fix_checksum(bytes: &mut [u8], at: usize, len: usize) {
        bytes[at] = 0;
        let sum = bytes[..len].iter().fold(0u8, |s, &b| s.wrapping_add(b));
        bytes[at] = 0u8.wrapping_sub(sum);
    }

    fn table(signature: &[u8; 4], body: &[u8]) -> Vec<u8> {
        let mut t = vec![0u8; HEADER_LEN];
        t[..4].copy_from_slice(signature);
        t.extend_from_slice(body);
        let len = t.len() as u32;
        t[4..8].copy_from_slice(&len.to_le_bytes());
        t[8] = 2;
        let n = t.len();
        fix_checksum(&mut t, 9, n);
        t
    }

    fn rsdp(root: u64, xsdt: bool) -> Vec<u8> {
        let mut r = vec![0u8; RSDP_V2_LEN];
        r[..8].copy_from_slice(RSDP_SIGNATURE);
        if xsdt {
            r[15] = 2;
            r[20..24].copy_from_slice(&(RSDP_V2_LEN as u32).to_le_bytes());
            r[24..32].copy_from_slice(&root.to_le_bytes());
        } else {
            r[16..20].copy_from_slice(&(root as u32).to_le_bytes());
        }
        fix_checksum(&mut r, 8, RSDP_V1_LEN);
        fix_checksum(&mut r, 32, RSDP_V2_LEN);
        r
    }

    /// A DSDT whose body holds `Name(_S5_, Package(n){...})` as `s5` encodes it, after filler.
    fn dsdt(s5: &[u8]) -> Vec<u8> {
        let mut body = vec![0x5B; 700]; // filler spanning a chunk boundary
        body.extend_from_slice(b"\x08_S5_");
        body.extend_from_slice(s5);
        table(b"DSDT", &body)
    }

    /// A FADT of `len` bytes with `fields` written at their offsets.
    fn fadt(len: usize, fields: &[(usize, &[u8])]) -> Vec<u8> {
        let mut body = vec![0u8; len - HEADER_LEN];
        for (at, bytes) in fields {
            body[at - HEADER_LEN..at - HEADER_LEN + bytes.len()].copy_from_slice(bytes);
        }
        table(b"FACP", &body)
    }

    fn gas_bytes(space: u8, width: u8, access: u8, address: u64) -> Vec<u8> {
        let mut g = vec![space, width, 0, access];
        g.extend_from_slice(&address.to_le_bytes());
        g
    }

    /// Lays out RSDP (in the BIOS area unless `hint`), root table, FADT and DSDT.
    fn machine(fadt_fields: &[(usize, &[u8])], fadt_len: usize, s5: &[u8], xsdt: bool, hint: bool) -> (Memory, u64) {
        let mut mem = Memory(vec![0; 0x10_0000]);
        let (root_at, fadt_at, dsdt_at) = (0x7_0000usize, 0x7_1000usize, 0x7_2000usize);
        let mut fields: Vec<(usize, &[u8])> = fadt_fields.to_vec();
        let dsdt32 = (dsdt_at as u32).to_le_bytes();
        fields.push((FADT_DSDT, &dsdt32));
        mem.put(fadt_at, &fadt(fadt_len, &fields));
        mem.put(dsdt_at, &dsdt(s5));
        let root = if xsdt {
            table(b"XSDT", &[0x7_5000u64.to_le_bytes(), (fadt_at as u64).to_le_bytes()].concat())
        } else {
            table(b"RSDT", &[0x7_5000u32.to_le_bytes(), (fadt_at as u32).to_le_bytes()].concat())
        };
        mem.put(root_at, &root);
        mem.put(0x7_5000, &table(b"APIC", &[0; 8]));
        let rsdp_at = if hint { 0x9_0000 } else { 0xF_5A40 };
        mem.put(rsdp_at, &rsdp(root_at as u64, xsdt));
        (mem, if hint { rsdp_at as u64 } else { 0 })
    }

    #[test]
    fn cloud_hypervisor_sleep_control_register() {
        let flags = HW_REDUCED_ACPI.to_le_bytes();
        let sleep = gas_bytes(1, 8, 0, 0x600);
        // Name(_S5_, Package(1){5}): PackageOp, PkgLength 4, one element, BytePrefix 5.
        let (mem, hint) = machine(
            &[(FADT_FLAGS, &flags), (FADT_SLEEP_CONTROL_REG, &sleep)],
            276,
            b"\x12\x04\x01\x0a\x05",
            true,
            true,
        );
        let off = find_power_off(&mem, hint).unwrap();
        let register = Register { space: Space::Io, address: 0x600, bytes: 1 };
        assert_eq!(off, PowerOff { writes: [Some((register, 0x34)), None], hardware_reduced: true, s5: 5 });
    }

    #[test]
    fn qemu_pc_pm1a_control_found_by_scanning() {
        let pm1a = 0x604u32.to_le_bytes();
        // QEMU pc: Name(_S5, Package(4){Zero, Zero, Zero, Zero}).
        let (mut mem, hint) =
            machine(&[(FADT_PM1A_CNT_BLK, &pm1a)], 244, b"\x12\x06\x04\x00\x00\x00\x00", false, false);
        assert_eq!(hint, 0);
        let off = find_power_off(&mem, hint).unwrap();
        let register = Register { space: Space::Io, address: 0x604, bytes: 2 };
        assert_eq!(off, PowerOff { writes: [Some((register, 0x2000)), None], hardware_reduced: false, s5: 0 });
        // A wrong hint falls back to the scan.
        assert_eq!(find_power_off(&mem, 0x1234).unwrap(), off);
        // Without the RSDP there is nothing.
        mem.put(0xF_5A40, b"RSD QTR ");
        assert_eq!(find_power_off(&mem, 0), Err(NoPowerOff::NoRsdp));
    }

    #[test]
    fn pm1b_and_extended_blocks_and_word_sleep_types() {
        let x_pm1a = gas_bytes(1, 16, 2, 0xB004);
        let pm1b = 0x608u32.to_le_bytes();
        let (mem, hint) = machine(
            &[(FADT_X_PM1A_CNT_BLK, &x_pm1a), (FADT_PM1B_CNT_BLK, &pm1b)],
            244,
            b"\x12\x08\x02\x0b\x07\x00\x0a\x06",
            true,
            true,
        );
        let off = find_power_off(&mem, hint).unwrap();
        let a = Register { space: Space::Io, address: 0xB004, bytes: 2 };
        let b = Register { space: Space::Io, address: 0x608, bytes: 2 };
        assert_eq!(off.writes, [Some((a, 7 << 10 | 0x2000)), Some((b, 6 << 10 | 0x2000))]);
    }

    #[test]
    fn memory_sleep_register_of_qemu_microvm() {
        let flags = HW_REDUCED_ACPI.to_le_bytes();
        let sleep = gas_bytes(0, 8, 0, 0xFEA0_0202);
        let (mem, hint) = machine(
            &[(FADT_FLAGS, &flags), (FADT_SLEEP_CONTROL_REG, &sleep)],
            276,
            b"\x12\x04\x01\x0a\x05",
            true,
            true,
        );
        let register = Register { space: Space::Memory, address: 0xFEA0_0202, bytes: 1 };
        assert_eq!(find_power_off(&mem, hint).unwrap().writes[0], Some((register, 0x34)));
    }

    #[test]
    fn what_is_missing_is_named() {
        let flags = HW_REDUCED_ACPI.to_le_bytes();
        let s5 = b"\x12\x04\x01\x0a\x05";
        // Firecracker: hardware-reduced, no sleep register.
        let (mem, hint) = machine(&[(FADT_FLAGS, &flags)], 276, s5, true, true);
        assert_eq!(find_power_off(&mem, hint), Err(NoPowerOff::NoSleepRegister));
        // No _S5 package in the DSDT (a name without a package does not count).
        let sleep = gas_bytes(1, 8, 0, 0x600);
        let fields: [(usize, &[u8]); 2] = [(FADT_FLAGS, &flags), (FADT_SLEEP_CONTROL_REG, &sleep)];
        let (mem, hint) = machine(&fields, 276, b"\x10\x04", true, true);
        assert_eq!(find_power_off(&mem, hint), Err(NoPowerOff::NoS5));
        // An I/O port beyond 16 bits, an unknown address space.
        let far = gas_bytes(1, 8, 0, 0x1_0000);
        let (mem, hint) = machine(&[(FADT_FLAGS, &flags), (FADT_SLEEP_CONTROL_REG, &far)], 276, s5, true, true);
        assert_eq!(find_power_off(&mem, hint), Err(NoPowerOff::UnusableRegister));
        let pci = gas_bytes(2, 8, 0, 0x600);
        let (mem, hint) = machine(&[(FADT_FLAGS, &flags), (FADT_SLEEP_CONTROL_REG, &pci)], 276, s5, true, true);
        assert_eq!(find_power_off(&mem, hint), Err(NoPowerOff::UnusableRegister));
        // A FADT whose checksum is off.
        let (mut mem, hint) = machine(&fields, 276, s5, true, true);
        mem.0[0x7_1000 + 100] ^= 1;
        assert_eq!(find_power_off(&mem, hint), Err(NoPowerOff::BadTable { what: "FADT", phys: 0x7_1000 }));
        // A DSDT beyond what the reader reaches (X_DSDT wins over DSDT), or longer than read.
        let far = 0x20_0000u64.to_le_bytes();
        let (mem, hint) = machine(&[fields[0], fields[1], (FADT_X_DSDT, &far)], 276, s5, true, true);
        assert_eq!(find_power_off(&mem, hint), Err(NoPowerOff::Unreadable { what: "DSDT", phys: 0x20_0000 }));
        let (mut mem, hint) = machine(&fields, 276, s5, true, true);
        mem.put(0x7_2004, &(MAX_DSDT_LEN + 1).to_le_bytes());
        assert_eq!(find_power_off(&mem, hint), Err(NoPowerOff::Unreadable { what: "DSDT", phys: 0x7_2000 }));
    }

    #[test]
    fn the_s5_name_may_span_chunks() {
        // Place `_S5_` so that it straddles the first 512-byte read of the DSDT body.
        let flags = HW_REDUCED_ACPI.to_le_bytes();
        let sleep = gas_bytes(1, 8, 0, 0x600);
        for (filler, name) in
            [470, 474, 476, 478, 480, 500].into_iter().flat_map(|f| [(f, &b"\x08_S5_"[..]), (f, b"\x08\\_S5_")])
        {
            let mut mem = Memory(vec![0; 0x10_0000]);
            let mut body = vec![0x5Bu8; filler];
            body.extend_from_slice(name);
            body.extend_from_slice(b"\x12\x04\x01\x0a\x05");
            mem.put(0x7_2000, &table(b"DSDT", &body));
            let dsdt32 = 0x7_2000u32.to_le_bytes();
            mem.put(
                0x7_1000,
                &fadt(276, &[(FADT_FLAGS, &flags), (FADT_SLEEP_CONTROL_REG, &sleep), (FADT_DSDT, &dsdt32)]),
            );
            mem.put(0x7_0000, &table(b"RSDT", &0x7_1000u32.to_le_bytes()));
            mem.put(0x9_0000, &rsdp(0x7_0000, false));
            assert_eq!(find_power_off(&mem, 0x9_0000).map(|p| p.s5), Ok(5), "filler {filler}, name {name:?}");
        }
    }

    #[test]
    fn s5_packages_decode() {
        assert_eq!(s5_package(b"\x12\x06\x04\x00\x00\x00\x00"), Some((0, 0)));
        assert_eq!(s5_package(b"\x12\x04\x01\x0a\x05"), Some((5, 0)));
        assert_eq!(s5_package(b"\x12\x04\x02\x01\x0a"), Some((1, 0)), "a cut-short second element reads as 0");
        assert_eq!(s5_package(b"\x12\x46\x00\x02\x0a\x07\x01"), Some((7, 1)), "two-byte PkgLength");
        assert_eq!(s5_package(b"\x12\x04\x01\x0c\x05\x00"), None, "a cut-short dword");
        assert_eq!(s5_package(b"\x13\x04\x01\x0a\x05"), None);
        assert_eq!(s5_package(b""), None);
    }
}
