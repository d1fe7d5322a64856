//! Byte-level mutations, AFL-style: bit flips, boundary values, arithmetic, chunk deletion,
//! insertion and duplication, splicing with another corpus input, and target dictionary tokens.
//! Several are stacked per execution.

use crate::rng::Rng;

/// Boundary values that break size and index checks: zero, one, sign bits, all ones, and the
/// sizes this kernel cares about (ring of 32, 4 KiB pages and slots, Ethernet frame limits).
const INTERESTING_8: &[u8] = &[0, 1, 2, 13, 14, 15, 16, 31, 32, 33, 63, 64, 0x7f, 0x80, 0xfe, 0xff];
const INTERESTING_16: &[u16] = &[0, 1, 56, 64, 0x7fff, 0x8000, 0xffff, 0x100, 1500, 1514, 1515, 4095, 4096, 9014];
const INTERESTING_32: &[u32] =
    &[0, 1, 31, 32, 33, 4095, 4096, 4097, 12288, 0x7fff_ffff, 0x8000_0000, 0xffff_fffe, 0xffff_ffff];
const INTERESTING_64: &[u64] = &[
    0,
    1,
    0x1000,
    hypercall_abi::layout::VNIC_TX_AREA_ADDR,
    hypercall_abi::layout::VNIC_RX_AREA_ADDR,
    hypercall_abi::layout::IMAGE_BASE,
    0x40_0000,
    0x1000_0000,
    0x1_0000_0000,
    0xffff_ffff,
    0x0000_8000_0000_0000,
    0x7fff_ffff_ffff_ffff,
    0x8000_0000_0000_0000,
    0xffff_8000_0000_0000,
    u64::MAX - 1,
    u64::MAX,
];
/// Bytes that matter in text formats (hex digits, separators), for the `ascii` mutation.
const TEXT_BYTES: &[u8] = b"0123456789abcdefABCDEF:,./=\t\n #-x";

/// Mutates inputs for one target.
#[derive(Clone, Copy, Debug)]
pub struct Mutator<'a> {
    /// Tokens of the target's format (magics, keywords, encoded boundary values).
    pub dictionary: &'a [&'a [u8]],
    /// Inputs never grow beyond this.
    pub max_len: usize,
}

impl Mutator<'_> {
    /// Applies 1, 2, 4 or 8 stacked mutations to `data`; `other` is a second corpus input
    /// to splice from.
    pub fn mutate(&self, data: &mut Vec<u8>, other: &[u8], rng: &mut Rng) {
        let rounds = 1usize << rng.below(4);
        for _ in 0..rounds {
            self.mutate_once(data, other, rng);
        }
        data.truncate(self.max_len);
    }

    fn mutate_once(&self, data: &mut Vec<u8>, other: &[u8], rng: &mut Rng) {
        if data.is_empty() {
            // Only growth makes sense.
            return self.insert(data, other, rng);
        }
        match rng.below(15) {
            0 => {
                let at = rng.below(data.len());
                data[at] ^= 1 << rng.below(8);
            }
            1 => {
                let at = rng.below(data.len());
                data[at] = rng.next_u64() as u8;
            }
            2 => {
                let at = rng.below(data.len());
                data[at] = *rng.choose(INTERESTING_8).unwrap_or(&0);
            }
            3 => {
                let value = *rng.choose(INTERESTING_16).unwrap_or(&0);
                let bytes = if rng.one_in(2) { value.to_le_bytes() } else { value.to_be_bytes() };
                overwrite(data, &bytes, rng);
            }
            4 => {
                let value = *rng.choose(INTERESTING_32).unwrap_or(&0);
                let bytes = if rng.one_in(2) { value.to_le_bytes() } else { value.to_be_bytes() };
                overwrite(data, &bytes, rng);
            }
            5 => overwrite(data, &rng.choose(INTERESTING_64).unwrap_or(&0).to_le_bytes(), rng),
            6 => add_small(data, rng),
            7 => {
                let (start, len) = chunk(data.len(), rng);
                data.drain(start..start + len);
            }
            8 => self.insert(data, other, rng),
            9 => {
                // Copy a chunk over another place of the same input.
                let (from, len) = chunk(data.len(), rng);
                let to = rng.below(data.len() - len + 1);
                data.copy_within(from..from + len, to);
            }
            10 | 11 => {
                // Splice: overwrite a chunk with a chunk of the other input.
                if other.is_empty() {
                    return;
                }
                let (from, len) = chunk(other.len(), rng);
                let len = len.min(data.len());
                let to = rng.below(data.len() - len + 1);
                data[to..to + len].copy_from_slice(&other[from..from + len]);
            }
            12 => {
                if let Some(token) = rng.choose(self.dictionary) {
                    overwrite(data, token, rng);
                }
            }
            13 => {
                let at = rng.below(data.len());
                data[at] = *rng.choose(TEXT_BYTES).unwrap_or(&b'0');
            }
            _ => {
                // Crossover: our head, the other input's tail.
                let cut = rng.below(data.len() + 1);
                let from = rng.below(other.len() + 1);
                data.truncate(cut);
                data.extend_from_slice(&other[from..]);
            }
        }
    }

    /// Inserts random bytes, a repeated byte, a chunk of `other`, a copy of a chunk of `data`,
    /// or a dictionary token, at a random place.
    fn insert(&self, data: &mut Vec<u8>, other: &[u8], rng: &mut Rng) {
        if data.len() >= self.max_len {
            return;
        }
        let at = rng.below(data.len() + 1);
        let room = self.max_len - data.len();
        let piece: Vec<u8> = match rng.below(5) {
            0 => (0..1 + rng.below(16)).map(|_| rng.next_u64() as u8).collect(),
            1 => vec![rng.next_u64() as u8; 1 + rng.below(64)],
            2 if !other.is_empty() => {
                let (from, len) = chunk(other.len(), rng);
                other[from..from + len].to_vec()
            }
            3 if !data.is_empty() => {
                let (from, len) = chunk(data.len(), rng);
                data[from..from + len].to_vec()
            }
            _ => match rng.choose(self.dictionary) {
                Some(token) => token.to_vec(),
                None => vec![rng.next_u64() as u8],
            },
        };
        let piece = &piece[..piece.len().min(room)];
        data.splice(at..at, piece.iter().copied());
    }
}

/// A random non-empty chunk `(start, len)` of a buffer of `len` bytes (`len` > 0), usually short.
fn chunk(total: usize, rng: &mut Rng) -> (usize, usize) {
    let longest = if rng.one_in(4) { total } else { total.min(16) };
    let len = 1 + rng.below(longest);
    (rng.below(total - len + 1), len)
}

/// Writes `bytes` at a random place, clipped to the input's end.
fn overwrite(data: &mut [u8], bytes: &[u8], rng: &mut Rng) {
    let at = rng.below(data.len());
    let len = bytes.len().min(data.len() - at);
    data[at..at + len].copy_from_slice(&bytes[..len]);
}

/// Adds or subtracts 1..=35 to a 1, 2, 4 or 8-byte little-endian integer.
fn add_small(data: &mut [u8], rng: &mut Rng) {
    let width = 1usize << rng.below(4);
    if data.len() < width {
        return;
    }
    let at = rng.below(data.len() - width + 1);
    let mut raw = [0u8; 8];
    raw[..width].copy_from_slice(&data[at..at + width]);
    let delta = 1 + rng.below(35) as u64;
    let value = u64::from_le_bytes(raw);
    let value = if rng.one_in(2) { value.wrapping_add(delta) } else { value.wrapping_sub(delta) };
    data[at..at + width].copy_from_slice(&value.to_le_bytes()[..width]);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mutations_respect_the_length_limit_and_change_inputs() {
        let mutator = Mutator { dictionary: &[b"TOKEN"], max_len: 64 };
        let mut rng = Rng::new(3);
        let mut changed = 0;
        for _ in 0..10_000 {
            let mut data = vec![0x41u8; rng.below(64)];
            let before = data.clone();
            mutator.mutate(&mut data, b"other input bytes", &mut rng);
            assert!(data.len() <= 64);
            changed += usize::from(data != before);
        }
        assert!(changed > 9_000, "{changed} of 10000 inputs changed");
    }

    #[test]
    fn an_empty_input_grows() {
        let mutator = Mutator { dictionary: &[], max_len: 8 };
        let mut rng = Rng::new(5);
        let mut data = Vec::new();
        mutator.mutate(&mut data, &[], &mut rng);
        assert!(!data.is_empty() && data.len() <= 8);
    }

    #[test]
    fn dictionary_tokens_appear() {
        let mutator = Mutator { dictionary: &[b"070701"], max_len: 256 };
        let mut rng = Rng::new(9);
        let found = (0..2_000).any(|_| {
            let mut data = vec![b'.'; 32];
            mutator.mutate(&mut data, &[], &mut rng);
            data.windows(6).any(|w| w == b"070701")
        });
        assert!(found);
    }
}
