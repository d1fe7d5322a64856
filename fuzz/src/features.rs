//! Feedback for the mutation loop: facts about each execution that a target reports.
//!
//! Stable Rust has no coverage instrumentation for a fuzzer to read, so targets say what
//! happened instead: which error variant, how many entries parsed, which route a frame took,
//! which branch of a model ran. An input that shows a fact never seen before joins the corpus
//! and is mutated further; an input that shows nothing new is dropped. Facts are hashed into a
//! bitmap, so a target may report as many as it likes.

use crate::rng::fnv1a;

const BITS: usize = 1 << 18;

/// The facts seen so far in a run, and whether the current execution added one.
pub struct Features {
    seen: Vec<u64>,
    /// Each new fact as reported, in the order first seen (for `--features` and for tests that
    /// check a target reaches the outcomes it should; recording costs nothing per execution).
    named: Vec<(&'static str, u64)>,
    new_in_this_run: bool,
}

impl Default for Features {
    fn default() -> Self {
        Self::new()
    }
}

impl Features {
    pub fn new() -> Features {
        Features { seen: vec![0; BITS / 64], named: Vec::new(), new_in_this_run: false }
    }

    /// Records that `tag` happened with `value` (an enum discriminant, a small count, ...).
    pub fn note(&mut self, tag: &'static str, value: u64) {
        let hash = (fnv1a(tag.as_bytes()) ^ value.wrapping_mul(0x9e37_79b9_7f4a_7c15)).rotate_left(29);
        let bit = (hash ^ (hash >> 32)) as usize % BITS;
        let (word, mask) = (bit / 64, 1u64 << (bit % 64));
        if self.seen[word] & mask == 0 {
            self.seen[word] |= mask;
            self.named.push((tag, value));
            self.new_in_this_run = true;
        }
    }

    /// Records a count by its order of magnitude (0, 1, 2, 3, 4-7, 8-15, ...), so that every
    /// distinct length does not look like new behaviour.
    pub fn note_count(&mut self, tag: &'static str, count: u64) {
        let bucket = if count < 4 { count } else { 2 + u64::from(63 - count.leading_zeros()) };
        self.note(tag, bucket);
    }

    /// Starts an execution; [`Features::finish`] then says whether it showed anything new.
    pub fn start(&mut self) {
        self.new_in_this_run = false;
    }

    pub fn finish(&self) -> bool {
        self.new_in_this_run
    }

    /// Distinct facts seen so far.
    pub fn distinct(&self) -> usize {
        self.named.len()
    }

    /// The facts seen so far, as reported (counts as their bucket), in the order first seen.
    pub fn seen(&self) -> &[(&'static str, u64)] {
        &self.named
    }

    /// Whether `tag` was reported with `value` (a count's bucket for [`Features::note_count`]).
    pub fn has(&self, tag: &str, value: u64) -> bool {
        self.named.iter().any(|&(t, v)| t == tag && v == value)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_unseen_facts_are_new() {
        let mut features = Features::new();
        features.start();
        features.note("kind", 1);
        assert!(features.finish());
        features.start();
        features.note("kind", 1);
        assert!(!features.finish());
        features.note("kind", 2);
        features.note("other", 1);
        assert!(features.finish());
        assert_eq!(features.distinct(), 3);
    }

    #[test]
    fn counts_are_bucketed_by_magnitude() {
        let mut features = Features::new();
        features.note_count("n", 5);
        features.start();
        features.note_count("n", 7);
        assert!(!features.finish(), "5 and 7 share the 4-7 bucket");
        features.note_count("n", 8);
        assert!(features.finish());
        features.note_count("n", u64::MAX);
    }
}
