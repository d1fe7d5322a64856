//! Transmit rate limits: token buckets for packets and bytes per guest, as Firecracker's rate
//! limiters have them (a `size`, a `refill_time` from empty to full, an optional one-time
//! burst; [`BucketSpec`]).
//!
//! The kernel asks [`GuestTx::admit`] before it takes a frame from a guest's tx ring. Without
//! tokens the frame stays in the ring (backpressure, never a drop): the kernel counts it as held
//! back once, stops taking from that ring and learns when the tokens will be there; it takes
//! from the ring again at that deadline (a deadline heap, see `backlog`), not by looking at every
//! guest. Tokens refill continuously and exactly (the remainder of each division is kept), so
//! over time a busy guest sends at its limit, whatever the moments the kernel looks.
//!
//! A frame larger than a bucket's `size` would never fit: it is admitted when the bucket is
//! full, and the tokens go below zero by the difference (a debt the refill pays first), so the
//! rate still holds. Times are TSC ticks; all arithmetic is checked or saturating, in 128 bits
//! where a product could overflow.

use hypercall_abi::initrd::{BucketSpec, TxLimits};

const MILLIS_PER_SECOND: u128 = 1000;

/// One token bucket, in TSC time.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TokenBucket {
    /// Tokens when full (at least 1).
    size: u64,
    /// TSC ticks to refill from empty to full (at least 1).
    refill_ticks: u64,
    /// Tokens now: at most `size`, below zero after an oversized frame.
    tokens: i64,
    /// `elapsed * size` not yet turned into a whole token (below `refill_ticks`).
    remainder: u64,
    /// The one-time burst left (used before `tokens`, never refilled).
    burst: u64,
    /// When `tokens` was last brought up to date.
    updated: u64,
}

impl TokenBucket {
    /// A full bucket at `now`; `None` if the refill time is zero ticks or does not fit 64 bits.
    pub fn new(spec: BucketSpec, tsc_hz: u64, now: u64) -> Option<TokenBucket> {
        if !spec.is_valid() {
            return None;
        }
        let ticks = u128::from(spec.refill_time_ms).checked_mul(u128::from(tsc_hz))? / MILLIS_PER_SECOND;
        let refill_ticks = u64::try_from(ticks).ok().filter(|&t| t > 0)?;
        Some(TokenBucket {
            size: spec.size,
            refill_ticks,
            tokens: i64::try_from(spec.size).ok()?,
            remainder: 0,
            burst: spec.one_time_burst,
            updated: now,
        })
    }

    fn size_i64(&self) -> i64 {
        i64::try_from(self.size).unwrap_or(i64::MAX)
    }

    /// Adds the tokens earned since the last update (a clock that went backwards earns none).
    fn refill(&mut self, now: u64) {
        let elapsed = now.saturating_sub(self.updated);
        self.updated = self.updated.max(now);
        if self.tokens >= self.size_i64() {
            self.remainder = 0;
            return;
        }
        let earned =
            u128::from(elapsed).saturating_mul(u128::from(self.size)).saturating_add(u128::from(self.remainder));
        let refill = u128::from(self.refill_ticks);
        let whole = earned.checked_div(refill).unwrap_or(0);
        self.remainder = u64::try_from(earned.checked_rem(refill).unwrap_or(0)).unwrap_or(0);
        let whole = i64::try_from(whole).unwrap_or(i64::MAX);
        self.tokens = self.tokens.saturating_add(whole);
        if self.tokens >= self.size_i64() {
            self.tokens = self.size_i64();
            self.remainder = 0;
        }
    }

    /// Tokens a request of `need` must find: `need`, or a full bucket if it is larger.
    fn threshold(&self, need: u64) -> i64 {
        i64::try_from(need.min(self.size)).unwrap_or(i64::MAX)
    }

    /// Brings the bucket up to `now`; `Ok` if `need` tokens may be taken, else the time at
    /// which they will be there (after `now`).
    pub fn check(&mut self, now: u64, need: u64) -> Result<(), u64> {
        self.refill(now);
        let available = self.tokens.saturating_add(i64::try_from(self.burst).unwrap_or(i64::MAX));
        let missing = self.threshold(need).saturating_sub(available);
        if missing <= 0 {
            return Ok(());
        }
        // Ticks until `missing` tokens are earned: ceil((missing * refill - remainder) / size).
        let missing = u128::from(missing.unsigned_abs());
        let numerator =
            missing.saturating_mul(u128::from(self.refill_ticks)).saturating_sub(u128::from(self.remainder));
        let size = u128::from(self.size);
        let ticks = numerator.saturating_add(size.saturating_sub(1)).checked_div(size).unwrap_or(u128::MAX);
        let ticks = u64::try_from(ticks).unwrap_or(u64::MAX).max(1);
        Err(self.updated.saturating_add(ticks))
    }

    /// Takes `need` tokens (after a [`TokenBucket::check`] that said yes): the burst first, then
    /// the bucket, which may go below zero for an oversized frame.
    pub fn take(&mut self, need: u64) {
        let from_burst = need.min(self.burst);
        self.burst = self.burst.saturating_sub(from_burst);
        let rest = i64::try_from(need.saturating_sub(from_burst)).unwrap_or(i64::MAX);
        self.tokens = self.tokens.saturating_sub(rest);
    }

    /// Tokens now (below zero: owed), as of the last update.
    pub fn tokens(&self) -> i64 {
        self.tokens
    }

    /// The one-time burst left.
    pub fn burst(&self) -> u64 {
        self.burst
    }
}

/// The packet and byte buckets of one guest.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RateLimiter {
    packets: Option<TokenBucket>,
    bytes: Option<TokenBucket>,
}

impl RateLimiter {
    /// The limiter of `limits` at `now`; `None` if there is no limit (or a bucket's refill time
    /// is zero TSC ticks, which only a TSC under 1 kHz would make).
    pub fn new(limits: &TxLimits, tsc_hz: u64, now: u64) -> Option<RateLimiter> {
        let bucket = |spec: Option<BucketSpec>| match spec {
            None => Some(None),
            Some(spec) => TokenBucket::new(spec, tsc_hz, now).map(Some),
        };
        let limiter = RateLimiter { packets: bucket(limits.packets)?, bytes: bucket(limits.bytes)? };
        (limiter.packets.is_some() || limiter.bytes.is_some()).then_some(limiter)
    }

    /// Whether one frame of `len` bytes may go now; else when it may (the later of the buckets).
    pub fn check(&mut self, now: u64, len: u64) -> Result<(), u64> {
        let packets = self.packets.as_mut().map_or(Ok(()), |b| b.check(now, 1));
        let bytes = self.bytes.as_mut().map_or(Ok(()), |b| b.check(now, len));
        match (packets, bytes) {
            (Ok(()), Ok(())) => Ok(()),
            (Err(at), Ok(())) | (Ok(()), Err(at)) => Err(at),
            (Err(a), Err(b)) => Err(a.max(b)),
        }
    }

    /// Takes the tokens of one frame of `len` bytes.
    pub fn take(&mut self, len: u64) {
        if let Some(bucket) = self.packets.as_mut() {
            bucket.take(1);
        }
        if let Some(bucket) = self.bytes.as_mut() {
            bucket.take(len);
        }
    }

    pub fn packets(&self) -> Option<&TokenBucket> {
        self.packets.as_ref()
    }

    pub fn bytes(&self) -> Option<&TokenBucket> {
        self.bytes.as_ref()
    }
}

/// What the kernel keeps of one guest's transmissions: its limiter (boxed, so an unlimited
/// guest pays one pointer) and its counters.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct GuestTx {
    limiter: Option<alloc::boxed::Box<RateLimiter>>,
    /// The ring position of the frame last counted as held back (each frame counts once,
    /// however often the kernel finds it still without tokens).
    held_at: Option<u32>,
    /// Frames taken from the ring and queued to be sent, and their bytes.
    pub packets: u64,
    pub bytes: u64,
    /// Frames that found no tokens when their turn came (held in the ring until there were).
    pub held_back: u64,
}

/// A frame the limiter holds back.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Held {
    /// When the tokens will be there (TSC).
    pub until: u64,
    /// Whether this frame was held back for the first time (the counters went up).
    pub first: bool,
}

impl GuestTx {
    pub fn new(limiter: Option<RateLimiter>) -> GuestTx {
        GuestTx { limiter: limiter.map(alloc::boxed::Box::new), ..GuestTx::default() }
    }

    pub fn is_limited(&self) -> bool {
        self.limiter.is_some()
    }

    pub fn limiter(&self) -> Option<&RateLimiter> {
        self.limiter.as_deref()
    }

    /// Whether the frame of `len` bytes at ring position `position` may be taken now; `clock`
    /// is read only for a limited guest.
    pub fn admit(&mut self, len: u64, position: u32, clock: impl FnOnce() -> u64) -> Result<(), Held> {
        let Some(limiter) = self.limiter.as_mut() else { return Ok(()) };
        match limiter.check(clock(), len) {
            Ok(()) => Ok(()),
            Err(until) => {
                let first = self.held_at != Some(position);
                if first {
                    self.held_at = Some(position);
                    self.held_back = self.held_back.saturating_add(1);
                }
                Err(Held { until, first })
            }
        }
    }

    /// A frame of `len` bytes was taken and queued: its tokens are used, and it is counted.
    pub fn sent(&mut self, len: u64) {
        if let Some(limiter) = self.limiter.as_mut() {
            limiter.take(len);
        }
        self.packets = self.packets.saturating_add(1);
        self.bytes = self.bytes.saturating_add(len);
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing, clippy::arithmetic_side_effects)]
mod tests {
    use super::*;

    const HZ: u64 = 1_000_000; // a TSC of 1 MHz: 1 ms = 1,000 ticks

    fn spec(size: u64, refill_time_ms: u64, one_time_burst: u64) -> BucketSpec {
        BucketSpec { size, refill_time_ms, one_time_burst }
    }

    /// A guest that offers a frame of `len` bytes whenever the limiter lets it, checking at
    /// the deadlines it is given (or every `poll` ticks, whichever is later) until `end`:
    /// frames sent.
    fn flood(limiter: &mut RateLimiter, len: u64, end: u64, poll: u64) -> u64 {
        let (mut now, mut sent) = (0, 0);
        while now < end {
            match limiter.check(now, len) {
                Ok(()) => {
                    limiter.take(len);
                    sent += 1;
                }
                Err(at) => {
                    assert!(at > now, "a deadline in the past: {at} at {now}");
                    now = at.max(now + poll);
                }
            }
        }
        sent
    }

    #[test]
    fn a_flood_is_held_to_the_packet_rate() {
        // 1,000 packets per second (a bucket of 100 refilled in 100 ms), for 10 s.
        for poll in [1, 7, 10_000] {
            let limits = TxLimits { packets: Some(spec(100, 100, 0)), bytes: None };
            let mut limiter = RateLimiter::new(&limits, HZ, 0).unwrap();
            let sent = flood(&mut limiter, 1500, 10 * HZ, poll);
            // The bucket starts full: 100 at once, then 1,000 per second.
            assert!((10_000..=10_101).contains(&sent), "poll {poll}: {sent}");
        }
    }

    #[test]
    fn a_flood_is_held_to_the_byte_rate_and_the_later_bucket_decides() {
        // 1,000,000 bytes per second, 1,000-byte frames: 1,000 frames per second; a packet bucket
        // of 5,000 per second does not bind.
        let limits = TxLimits { packets: Some(spec(500, 100, 0)), bytes: Some(spec(100_000, 100, 0)) };
        let mut limiter = RateLimiter::new(&limits, HZ, 0).unwrap();
        let sent = flood(&mut limiter, 1000, 5 * HZ, 1);
        assert!((5_000..=5_101).contains(&sent), "{sent}");
        // Now the packet bucket binds: 100-byte frames at 5,000 per second.
        let mut limiter = RateLimiter::new(&limits, HZ, 0).unwrap();
        let sent = flood(&mut limiter, 100, 2 * HZ, 1);
        assert!((10_000..=10_501).contains(&sent), "{sent}");
    }

    #[test]
    fn refills_are_exact_however_often_the_bucket_is_asked() {
        // 3 tokens per 7 ms: a rate with a remainder on every refill.
        let mut bucket = TokenBucket::new(spec(3, 7, 0), HZ, 0).unwrap();
        bucket.take(3);
        let mut taken = 0;
        for now in 0..70_000 {
            if bucket.check(now, 1).is_ok() {
                bucket.take(1);
                taken += 1;
            }
        }
        // 70 ms at 3 per 7 ms: 30 tokens, minus the partial last one.
        assert!((29..=30).contains(&taken), "{taken}");
    }

    #[test]
    fn the_deadline_is_when_the_tokens_are_there() {
        let mut bucket = TokenBucket::new(spec(10, 10, 0), HZ, 0).unwrap(); // 1 token per ms
        bucket.take(10);
        assert_eq!(bucket.check(0, 1), Err(1_000));
        assert_eq!(bucket.check(999, 1), Err(1_000));
        assert_eq!(bucket.check(1_000, 1), Ok(()));
        assert_eq!(bucket.check(1_000, 4), Err(4_000));
        assert_eq!(bucket.check(4_000, 4), Ok(()));
        // A clock that goes backwards earns nothing and breaks nothing.
        bucket.take(4);
        assert_eq!(bucket.check(10, 1), Err(5_000));
    }

    #[test]
    fn the_one_time_burst_goes_first_and_never_comes_back() {
        let mut bucket = TokenBucket::new(spec(10, 1_000, 25), HZ, 0).unwrap();
        let mut sent = 0;
        while bucket.check(0, 1).is_ok() {
            bucket.take(1);
            sent += 1;
        }
        assert_eq!(sent, 35, "size plus burst at once");
        assert_eq!(bucket.burst(), 0);
        // A whole refill time later only the size is back.
        let mut later = 0;
        while bucket.check(10 * HZ, 1).is_ok() {
            bucket.take(1);
            later += 1;
        }
        assert_eq!(later, 10);
    }

    #[test]
    fn an_oversized_frame_waits_for_a_full_bucket_and_leaves_a_debt() {
        // 1,000 bytes per second, 1,500-byte frames: one per 1.5 s over time.
        let mut bucket = TokenBucket::new(spec(1_000, 1_000, 0), HZ, 0).unwrap();
        assert_eq!(bucket.check(0, 1_500), Ok(()));
        bucket.take(1_500);
        assert_eq!(bucket.tokens(), -500);
        assert_eq!(bucket.check(0, 1_500), Err(1_500_000));
        let limits = TxLimits { packets: None, bytes: Some(spec(1_000, 1_000, 0)) };
        let mut limiter = RateLimiter::new(&limits, HZ, 0).unwrap();
        let sent = flood(&mut limiter, 1_500, 30 * HZ, 1);
        assert!((20..=21).contains(&sent), "{sent}");
    }

    #[test]
    fn extreme_values_do_not_overflow() {
        let max = hypercall_abi::initrd::MAX_BUCKET_TOKENS;
        let huge = spec(max, hypercall_abi::initrd::MAX_REFILL_TIME_MS, max);
        let mut bucket = TokenBucket::new(huge, u64::MAX / 1_000_000, 0).unwrap();
        assert_eq!(bucket.check(u64::MAX, u64::MAX), Ok(()));
        bucket.take(u64::MAX);
        assert!(bucket.tokens() < 0);
        assert!(bucket.check(u64::MAX, u64::MAX).is_err());
        assert!(bucket.check(0, 1).is_err());
        // A refill time that is no tick at all, and invalid specs.
        assert!(TokenBucket::new(spec(1, 1, 0), 999, 0).is_none());
        assert!(TokenBucket::new(spec(0, 1, 0), HZ, 0).is_none());
        assert!(RateLimiter::new(&TxLimits::default(), HZ, 0).is_none());
    }

    #[test]
    fn a_held_frame_counts_once_and_an_unlimited_guest_never_reads_the_clock() {
        let limits = TxLimits { packets: Some(spec(2, 1_000, 0)), bytes: None };
        let mut tx = GuestTx::new(RateLimiter::new(&limits, HZ, 0));
        for position in 0..2 {
            assert_eq!(tx.admit(100, position, || 0), Ok(()));
            tx.sent(100);
        }
        let held = tx.admit(100, 2, || 0).unwrap_err();
        assert_eq!(held, Held { until: 500_000, first: true });
        assert!(!tx.admit(100, 2, || 10).unwrap_err().first, "the same frame again");
        assert_eq!((tx.packets, tx.bytes, tx.held_back), (2, 200, 1));
        assert_eq!(tx.admit(100, 2, || 500_000), Ok(()));
        tx.sent(100);
        assert!(tx.admit(100, 3, || 500_000).unwrap_err().first);
        assert_eq!(tx.held_back, 2);

        let mut free = GuestTx::new(None);
        assert!(!free.is_limited());
        assert_eq!(free.admit(9_000, 0, || panic!("the clock was read")), Ok(()));
    }
}
