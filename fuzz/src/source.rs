//! Reading structured values out of fuzz input bytes.
//!
//! The mutation engine only knows bytes; targets that drive an API with a sequence of
//! operations read their choices from the input through a [`Source`]. A byte flip then becomes
//! a different operation or operand, and inputs that run out read as zeros, so every byte
//! string is a valid program. Values can be drawn "near" a table of boundary values (ring
//! sizes, area starts, limits), so boundaries are hit often instead of once in 2^32 tries.

/// A cursor over fuzz input; reads past the end return zeros.
#[derive(Clone, Debug)]
pub struct Source<'a> {
    bytes: &'a [u8],
    position: usize,
}

impl<'a> Source<'a> {
    pub fn new(bytes: &'a [u8]) -> Source<'a> {
        Source { bytes, position: 0 }
    }

    /// Whether every byte has been read.
    pub fn is_empty(&self) -> bool {
        self.position >= self.bytes.len()
    }

    /// Up to `n` bytes (fewer at the end of the input).
    pub fn bytes(&mut self, n: usize) -> &'a [u8] {
        let start = self.position.min(self.bytes.len());
        let end = start.saturating_add(n).min(self.bytes.len());
        self.position = end;
        &self.bytes[start..end]
    }

    /// Everything not yet read.
    pub fn rest(&mut self) -> &'a [u8] {
        self.bytes(usize::MAX)
    }

    fn array<const N: usize>(&mut self) -> [u8; N] {
        let mut out = [0u8; N];
        let got = self.bytes(N);
        out[..got.len()].copy_from_slice(got);
        out
    }

    pub fn u8(&mut self) -> u8 {
        self.array::<1>()[0]
    }

    pub fn u16(&mut self) -> u16 {
        u16::from_le_bytes(self.array())
    }

    pub fn u32(&mut self) -> u32 {
        u32::from_le_bytes(self.array())
    }

    pub fn u64(&mut self) -> u64 {
        u64::from_le_bytes(self.array())
    }

    pub fn bool(&mut self) -> bool {
        self.u8() & 1 != 0
    }

    /// A value in `0..n` from one byte (`n` at most 256; 0 when `n` is 0).
    pub fn below(&mut self, n: usize) -> usize {
        if n == 0 {
            return 0;
        }
        usize::from(self.u8()) % n
    }

    /// One of `items`, chosen by one byte. `items` must not be empty.
    pub fn pick<T: Copy>(&mut self, items: &[T]) -> T {
        items[self.below(items.len())]
    }

    /// A u32 that is usually a boundary value: one selector byte, then
    /// - half the time an entry of `near` exactly,
    /// - a quarter of the time an entry plus a signed byte (just below and above boundaries),
    /// - a quarter of the time any u32.
    pub fn u32_near(&mut self, near: &[u32]) -> u32 {
        let selector = self.u8();
        match (selector, near.len()) {
            (_, 0) | (192.., _) => self.u32(),
            (128.., len) => {
                let delta = i32::from(self.u8() as i8);
                near[usize::from(selector) % len].wrapping_add_signed(delta)
            }
            (_, len) => near[usize::from(selector) % len],
        }
    }

    /// [`Source::u32_near`] for u64 values.
    pub fn u64_near(&mut self, near: &[u64]) -> u64 {
        let selector = self.u8();
        match (selector, near.len()) {
            (_, 0) | (192.., _) => self.u64(),
            (128.., len) => {
                let delta = i64::from(self.u8() as i8);
                near[usize::from(selector) % len].wrapping_add_signed(delta)
            }
            (_, len) => near[usize::from(selector) % len],
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_little_endian_and_zeros_past_the_end() {
        let mut s = Source::new(&[1, 2, 3, 4, 5]);
        assert_eq!(s.u16(), 0x0201);
        assert_eq!(s.u32(), 0x0005_0403);
        assert!(s.is_empty());
        assert_eq!(s.u64(), 0);
        assert_eq!(s.bytes(3), &[] as &[u8]);
    }

    #[test]
    fn near_values_are_exact_shifted_or_raw() {
        let table = [100u32, 200];
        assert_eq!(Source::new(&[0]).u32_near(&table), 100);
        assert_eq!(Source::new(&[1]).u32_near(&table), 200);
        assert_eq!(Source::new(&[128, 0xff]).u32_near(&table), 99);
        assert_eq!(Source::new(&[129, 3]).u32_near(&table), 203);
        assert_eq!(Source::new(&[192, 0x78, 0x56, 0x34, 0x12]).u32_near(&table), 0x1234_5678);
        assert_eq!(Source::new(&[128, 1]).u64_near(&[u64::MAX]), 0);
        assert_eq!(Source::new(&[5]).u32_near(&[]), 0);
    }

    #[test]
    fn below_and_pick_stay_in_range() {
        for byte in 0..=255u8 {
            assert!(Source::new(&[byte]).below(7) < 7);
            assert!([3, 4, 5].contains(&Source::new(&[byte]).pick(&[3, 4, 5])));
        }
        assert_eq!(Source::new(&[9]).below(0), 0);
    }
}
