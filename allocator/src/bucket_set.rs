//! A set of bucket numbers as a two-level bitmap: one bit per bucket, and one summary bit per
//! 64-bucket word saying whether that word has any bit set.
//!
//! The free set and the set of buckets with untaken alloc-key updates are both this. A device of
//! 262144 buckets costs 32 KiB plus 512 bytes of summary, and finding the next member from any
//! point looks at one word and then at most `nbuckets / 4096` summary words, so a nearly full
//! device does not make allocation slow.

const WORD_BITS: u64 = 64;

#[derive(Clone, Debug, Default)]
pub(crate) struct BucketSet {
    words: Vec<u64>,
    /// Bit `i` is set iff `words[i] != 0`.
    summary: Vec<u64>,
    len: u64,
    nbits: u64,
}

/// Word index and bit mask of `b`, or `None` if `b` does not fit the address space.
fn locate(b: u64) -> Option<(usize, u64)> {
    let word = usize::try_from(b / WORD_BITS).ok()?;
    Some((word, 1u64 << (b % WORD_BITS)))
}

fn word_count(bits: u64) -> usize {
    // Callers size the set from a bucket count that already fits a Vec of bucket states.
    usize::try_from(bits.div_ceil(WORD_BITS)).unwrap_or(usize::MAX)
}

impl BucketSet {
    /// An empty set able to hold `0..nbits`.
    pub(crate) fn new(nbits: u64) -> BucketSet {
        let words = word_count(nbits);
        let summary = word_count(words as u64);
        BucketSet { words: vec![0; words], summary: vec![0; summary], len: 0, nbits }
    }

    pub(crate) fn len(&self) -> u64 {
        self.len
    }

    pub(crate) fn contains(&self, b: u64) -> bool {
        b < self.nbits && locate(b).and_then(|(w, m)| self.words.get(w).map(|x| x & m != 0)).unwrap_or(false)
    }

    /// Adds `b`; false if it was already there or is out of range.
    pub(crate) fn insert(&mut self, b: u64) -> bool {
        if b >= self.nbits {
            return false;
        }
        let Some((w, m)) = locate(b) else { return false };
        let Some(word) = self.words.get_mut(w) else { return false };
        if *word & m != 0 {
            return false;
        }
        *word |= m;
        self.set_summary(w, true);
        self.len += 1;
        true
    }

    /// Removes `b`; false if it was not there.
    pub(crate) fn remove(&mut self, b: u64) -> bool {
        let Some((w, m)) = locate(b) else { return false };
        let Some(word) = self.words.get_mut(w) else { return false };
        if *word & m == 0 {
            return false;
        }
        *word &= !m;
        if *word == 0 {
            self.set_summary(w, false);
        }
        self.len -= 1;
        true
    }

    fn set_summary(&mut self, word: usize, nonempty: bool) {
        let Some((s, m)) = locate(word as u64) else { return };
        if let Some(sw) = self.summary.get_mut(s) {
            if nonempty {
                *sw |= m;
            } else {
                *sw &= !m;
            }
        }
    }

    /// Sets every bit in `0..nbits`.
    pub(crate) fn fill(&mut self) {
        self.clear();
        for b in 0..self.nbits {
            self.insert(b);
        }
    }

    pub(crate) fn clear(&mut self) {
        self.words.iter_mut().for_each(|w| *w = 0);
        self.summary.iter_mut().for_each(|w| *w = 0);
        self.len = 0;
    }

    /// The smallest member `>= start`.
    pub(crate) fn next_from(&self, start: u64) -> Option<u64> {
        if start >= self.nbits {
            return None;
        }
        let (w, _) = locate(start)?;
        let here = self.words.get(w)? & (u64::MAX << (start % WORD_BITS));
        if here != 0 {
            return Some(w as u64 * WORD_BITS + u64::from(here.trailing_zeros()));
        }
        // Walk the summary from the word after `w`: it names the next nonempty word directly.
        let next_word = w as u64 + 1;
        let (mut s, _) = locate(next_word)?;
        let mut mask = u64::MAX << (next_word % WORD_BITS);
        while let Some(sw) = self.summary.get(s) {
            let hits = sw & mask;
            if hits != 0 {
                let word_idx = s as u64 * WORD_BITS + u64::from(hits.trailing_zeros());
                let word = self.words.get(usize::try_from(word_idx).ok()?)?;
                return Some(word_idx * WORD_BITS + u64::from(word.trailing_zeros()));
            }
            s += 1;
            mask = u64::MAX;
        }
        None
    }

    /// The smallest number `>= start` (and below the set's size) that is not a member: the end
    /// of a run of members starting at or before `start`.
    pub(crate) fn next_clear_from(&self, start: u64) -> u64 {
        let mut b = start;
        while b < self.nbits {
            let Some((w, _)) = locate(b) else { return self.nbits };
            let Some(word) = self.words.get(w) else { return self.nbits };
            let gaps = !*word & (u64::MAX << (b % WORD_BITS));
            if gaps != 0 {
                return (w as u64 * WORD_BITS + u64::from(gaps.trailing_zeros())).min(self.nbits);
            }
            b = (w as u64 + 1) * WORD_BITS;
        }
        self.nbits
    }

    /// The maximal runs of members inside `lo..hi`, as `start..end` ranges in order.
    pub(crate) fn runs_in(&self, lo: u64, hi: u64) -> Vec<std::ops::Range<u64>> {
        let mut out = Vec::new();
        let mut at = lo;
        while let Some(start) = self.next_from(at).filter(|&s| s < hi) {
            let end = self.next_clear_from(start).min(hi);
            out.push(start..end);
            at = end;
        }
        out
    }

    /// The first member at or after `start`, wrapping around to the start of the set.
    pub(crate) fn next_wrapping(&self, start: u64) -> Option<u64> {
        self.next_from(start).or_else(|| self.next_from(0))
    }

    /// Members in ascending order.
    pub(crate) fn iter(&self) -> impl Iterator<Item = u64> + '_ {
        let mut cursor = 0u64;
        std::iter::from_fn(move || {
            let b = self.next_from(cursor)?;
            cursor = b.saturating_add(1);
            Some(b)
        })
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use fs_core::rng::Rng;

    use super::*;

    /// The bitmap behaves as a `BTreeSet` under random inserts and removes, including
    /// `next_from` across empty words and summary words (sizes straddle 64 and 4096).
    #[test]
    fn matches_btreeset_model() {
        for seed in 0..40u64 {
            let mut rng = Rng::new(seed);
            let nbits = rng.range(1..10_000);
            let mut set = BucketSet::new(nbits);
            let mut model = BTreeSet::new();
            for step in 0..2_000 {
                let b = rng.below(nbits + 3);
                if rng.chance(0.5) {
                    assert_eq!(set.insert(b), b < nbits && model.insert(b), "seed {seed} step {step}");
                } else {
                    assert_eq!(set.remove(b), model.remove(&b), "seed {seed} step {step}");
                }
                let probe = rng.below(nbits + 1);
                assert_eq!(
                    set.next_from(probe),
                    model.range(probe..).next().copied(),
                    "seed {seed} step {step} probe {probe}"
                );
                assert_eq!(set.contains(probe), model.contains(&probe), "seed {seed} step {step}");
                assert_eq!(set.len(), model.len() as u64, "seed {seed} step {step}");
            }
            assert!(set.iter().eq(model.iter().copied()), "seed {seed}");
        }
    }

    /// Runs of members come out maximal and in order, cut at the bounds asked for; the first
    /// non-member after a point is found across full words.
    #[test]
    fn runs_and_next_clear() {
        for seed in 0..30u64 {
            let mut rng = Rng::new(seed);
            let nbits = rng.range(1..9_000);
            let mut set = BucketSet::new(nbits);
            let mut model = BTreeSet::new();
            // Long runs as well as scattered bits.
            for _ in 0..rng.range(0..20) {
                let start = rng.below(nbits);
                let len = rng.below(700);
                for b in start..(start + len).min(nbits) {
                    set.insert(b);
                    model.insert(b);
                }
            }
            let (lo, hi) = {
                let a = rng.below(nbits + 1);
                let b = rng.below(nbits + 1);
                (a.min(b), a.max(b))
            };
            let mut want = Vec::new();
            let mut cur: Option<std::ops::Range<u64>> = None;
            for b in lo..hi {
                match (&mut cur, model.contains(&b)) {
                    (Some(r), true) => r.end = b + 1,
                    (None, true) => cur = Some(b..b + 1),
                    (Some(_), false) => want.extend(cur.take()),
                    (None, false) => {}
                }
            }
            want.extend(cur);
            assert_eq!(set.runs_in(lo, hi), want, "seed {seed} {lo}..{hi}");
            let probe = rng.below(nbits + 1);
            let clear = (probe..nbits).find(|b| !model.contains(b)).unwrap_or(nbits);
            assert_eq!(set.next_clear_from(probe), clear, "seed {seed} probe {probe}");
        }
    }

    /// A lone member far from the cursor is found from either side, and wrapping finds the lowest
    /// member when none lies ahead.
    #[test]
    fn far_member_and_wrap() {
        let mut set = BucketSet::new(262_144);
        assert_eq!(set.next_wrapping(5), None);
        set.insert(200_000);
        assert_eq!(set.next_from(0), Some(200_000));
        assert_eq!(set.next_from(200_001), None);
        assert_eq!(set.next_wrapping(200_001), Some(200_000));
        set.insert(3);
        assert_eq!(set.next_wrapping(200_001), Some(3));
        set.fill();
        assert_eq!(set.len(), 262_144);
        set.clear();
        assert_eq!(set.iter().count(), 0);
    }
}
