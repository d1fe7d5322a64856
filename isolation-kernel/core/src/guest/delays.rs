//! A small fixed histogram of durations (TSC ticks) by powers of two: what the scheduler keeps
//! per guest of its wake-up delays, so the `stats:` output can give a median and a maximum
//! without keeping samples. 48 bytes per guest whatever it does.
//!
//! Bucket 0 holds durations below 2^[`FIRST_LOG2`] ticks; bucket `k > 0` holds
//! `[2^(FIRST_LOG2 + k - 1), 2^(FIRST_LOG2 + k))`; the last bucket also holds everything longer.
//! A quantile is reported as the upper end of its bucket (never more than the maximum seen), so
//! it is at most twice the true value. When a bucket's count would overflow, every count is
//! halved: the proportions, and so the quantiles, stay those of the samples (recent ones weigh
//! more).

/// Buckets kept.
pub const BUCKETS: usize = 16;
/// Bucket 0 is below 2^FIRST_LOG2 ticks (4,096: about 1.6 µs at 2.5 GHz); the last bucket starts
/// at 2^(FIRST_LOG2 + BUCKETS - 2) ticks (about 0.2 s at 2.5 GHz).
pub const FIRST_LOG2: u32 = 12;

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct DelayHistogram {
    counts: [u16; BUCKETS],
    /// Samples recorded (not halved).
    samples: u32,
    max: u64,
}

impl DelayHistogram {
    pub const fn new() -> Self {
        DelayHistogram { counts: [0; BUCKETS], samples: 0, max: 0 }
    }

    /// The bucket of a duration.
    pub fn bucket(ticks: u64) -> usize {
        let log2 = u64::BITS.saturating_sub(1).saturating_sub(ticks.leading_zeros()); // 0 for 0 and 1
        let index = if ticks == 0 { 0 } else { log2.saturating_add(1).saturating_sub(FIRST_LOG2) };
        (index as usize).min(BUCKETS.saturating_sub(1))
    }

    /// The upper end of bucket `index` (exclusive), in ticks; `u64::MAX` for the last.
    pub fn bucket_end(index: usize) -> u64 {
        if index.saturating_add(1) >= BUCKETS {
            return u64::MAX;
        }
        1u64.checked_shl(FIRST_LOG2.saturating_add(index as u32)).unwrap_or(u64::MAX)
    }

    pub fn record(&mut self, ticks: u64) {
        let index = Self::bucket(ticks);
        if self.counts.get(index).is_some_and(|&c| c == u16::MAX) {
            for count in &mut self.counts {
                *count /= 2;
            }
        }
        if let Some(count) = self.counts.get_mut(index) {
            *count = count.saturating_add(1);
        }
        self.samples = self.samples.saturating_add(1);
        self.max = self.max.max(ticks);
    }

    /// Samples recorded (saturating at `u32::MAX`).
    pub fn samples(&self) -> u64 {
        u64::from(self.samples)
    }

    /// The longest duration recorded (0 for none).
    pub fn max(&self) -> u64 {
        self.max
    }

    /// The `numerator/denominator` quantile (1/2: the median) as the upper end of its bucket,
    /// capped at the maximum; 0 with no samples.
    pub fn quantile(&self, numerator: u64, denominator: u64) -> u64 {
        let total: u64 = self.counts.iter().map(|&c| u64::from(c)).sum();
        if total == 0 || denominator == 0 {
            return 0;
        }
        // The first bucket where the running count reaches total * numerator / denominator.
        let wanted = u128::from(total).saturating_mul(u128::from(numerator.min(denominator)));
        let mut seen: u64 = 0;
        for (index, &count) in self.counts.iter().enumerate() {
            seen = seen.saturating_add(u64::from(count));
            if u128::from(seen).saturating_mul(u128::from(denominator)) >= wanted && count > 0 {
                return Self::bucket_end(index).min(self.max);
            }
        }
        self.max
    }

    pub fn median(&self) -> u64 {
        self.quantile(1, 2)
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing, clippy::arithmetic_side_effects)]
mod tests {
    use super::*;

    #[test]
    fn buckets_are_powers_of_two() {
        assert_eq!(DelayHistogram::bucket(0), 0);
        assert_eq!(DelayHistogram::bucket(4095), 0);
        assert_eq!(DelayHistogram::bucket(4096), 1);
        assert_eq!(DelayHistogram::bucket(8191), 1);
        assert_eq!(DelayHistogram::bucket(8192), 2);
        assert_eq!(DelayHistogram::bucket(u64::MAX), BUCKETS - 1);
        assert_eq!(DelayHistogram::bucket_end(0), 4096);
        assert_eq!(DelayHistogram::bucket_end(1), 8192);
        assert_eq!(DelayHistogram::bucket_end(BUCKETS - 1), u64::MAX);
        for ticks in [1u64, 100, 5000, 1 << 20, (1 << 30) + 7] {
            let b = DelayHistogram::bucket(ticks);
            assert!(ticks < DelayHistogram::bucket_end(b), "{ticks}");
            assert!(b == 0 || ticks >= DelayHistogram::bucket_end(b - 1), "{ticks}");
        }
    }

    #[test]
    fn median_and_max_within_a_factor_of_two() {
        let mut h = DelayHistogram::new();
        assert_eq!((h.median(), h.max(), h.samples()), (0, 0, 0));
        // 99 short delays around 10,000 ticks and one long one.
        for i in 0..99 {
            h.record(9_000 + i * 20);
        }
        h.record(50_000_000);
        let median = h.median();
        assert!((10_000..=20_000).contains(&median), "{median}");
        assert_eq!(h.max(), 50_000_000);
        assert_eq!(h.samples(), 100);
        assert_eq!(h.quantile(1, 1), 50_000_000, "the top quantile is capped at the maximum");
        // A median in the long bucket when most samples are long.
        for _ in 0..200 {
            h.record(40_000_000);
        }
        assert!((40_000_000..=2 * 40_000_000).contains(&h.median()), "{}", h.median());
    }

    #[test]
    fn a_full_bucket_halves_every_count_and_keeps_the_proportions() {
        let mut h = DelayHistogram::new();
        for _ in 0..100_000u32 {
            h.record(5_000); // bucket 1
        }
        for _ in 0..300_000u32 {
            h.record(100); // bucket 0
        }
        // Three quarters of the samples are in bucket 0: the median is there.
        assert_eq!(h.median(), 4096);
        assert_eq!(h.samples(), 400_000);
        assert!(h.counts[0] > h.counts[1], "the recent samples weigh more");
        assert!(h.counts[1] > 0, "older samples are halved, not forgotten");
    }
}
