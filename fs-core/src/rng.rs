//! A small deterministic pseudo-random generator for fault injection, workloads and tests.
//!
//! Every random decision bcsim makes (which write tears, which bit flips, which workload op runs
//! next) draws from an [`Rng`] created from a `u64` seed, so a failing run replays exactly from the
//! seed it printed. The generator is xoshiro256** with its state expanded from the seed through
//! splitmix64, as its authors recommend: fast, small, and good enough for simulation. It is not
//! cryptographic and must never be used where an adversary chooses inputs.

use std::ops::Range;

/// One step of splitmix64: used only to expand a 64-bit seed into xoshiro's 256-bit state, so that
/// nearby seeds (0, 1, 2...) still give unrelated streams and the state is never all zero.
fn splitmix64(state: &mut u64) -> u64 {
    *state = state.wrapping_add(0x9E37_79B9_7F4A_7C15);
    let mut z = *state;
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// A seeded xoshiro256** generator. Cloning it forks the stream: both copies yield the same values.
#[derive(Clone, Debug)]
pub struct Rng {
    seed: u64,
    s0: u64,
    s1: u64,
    s2: u64,
    s3: u64,
}

impl Rng {
    /// A generator whose whole stream is determined by `seed`.
    pub fn new(seed: u64) -> Rng {
        let mut sm = seed;
        Rng {
            seed,
            s0: splitmix64(&mut sm),
            s1: splitmix64(&mut sm),
            s2: splitmix64(&mut sm),
            s3: splitmix64(&mut sm),
        }
    }

    /// The seed this generator was created with: print it when a random test fails.
    pub fn seed(&self) -> u64 {
        self.seed
    }

    pub fn next_u64(&mut self) -> u64 {
        let result = self.s1.wrapping_mul(5).rotate_left(7).wrapping_mul(9);
        let t = self.s1 << 17;
        self.s2 ^= self.s0;
        self.s3 ^= self.s1;
        self.s1 ^= self.s2;
        self.s0 ^= self.s3;
        self.s2 ^= t;
        self.s3 = self.s3.rotate_left(45);
        result
    }

    /// The high half of a 64-bit draw: xoshiro's high bits are its strongest.
    pub fn next_u32(&mut self) -> u32 {
        (self.next_u64() >> 32) as u32
    }

    /// Uniform in `[0, n)`; 0 when `n` is 0.
    ///
    /// Lemire's multiply-and-reject method: the high 64 bits of `x * n` are uniform once the few
    /// low-half values that would over-represent some results are rejected.
    pub fn below(&mut self, n: u64) -> u64 {
        if n == 0 {
            return 0;
        }
        let mut m = u128::from(self.next_u64()) * u128::from(n);
        if (m as u64) < n {
            // 2^64 mod n: the number of low-half values that must be rejected for uniformity.
            let threshold = n.wrapping_neg() % n;
            while (m as u64) < threshold {
                m = u128::from(self.next_u64()) * u128::from(n);
            }
        }
        (m >> 64) as u64
    }

    /// Uniform in `r`; `r.start` when the range is empty.
    pub fn range(&mut self, r: Range<u64>) -> u64 {
        if r.end <= r.start {
            return r.start;
        }
        r.start + self.below(r.end - r.start)
    }

    /// True with probability `p`: never for `p <= 0` (or NaN), always for `p >= 1`.
    pub fn chance(&mut self, p: f64) -> bool {
        if p.is_nan() || p <= 0.0 {
            return false;
        }
        if p >= 1.0 {
            return true;
        }
        // 53 random bits scaled into [0, 1): every value is an exactly representable double.
        let unit = (self.next_u64() >> 11) as f64 * (1.0 / (1u64 << 53) as f64);
        unit < p
    }

    pub fn fill_bytes(&mut self, buf: &mut [u8]) {
        for chunk in buf.chunks_mut(8) {
            let bytes = self.next_u64().to_le_bytes();
            for (dst, src) in chunk.iter_mut().zip(bytes) {
                *dst = src;
            }
        }
    }

    /// Fisher-Yates: every permutation equally likely.
    pub fn shuffle<T>(&mut self, items: &mut [T]) {
        for i in (1..items.len()).rev() {
            let j = self.below(i as u64 + 1) as usize;
            // j <= i < len, so both indices are in bounds.
            items.swap(i, j);
        }
    }

    /// A uniformly chosen element, or `None` for an empty slice.
    pub fn choose<'a, T>(&mut self, items: &'a [T]) -> Option<&'a T> {
        if items.is_empty() {
            return None;
        }
        items.get(self.below(items.len() as u64) as usize)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Replays depend on it: the same seed yields the same stream, and a clone continues it.
    #[test]
    fn same_seed_same_stream() {
        for seed in [0u64, 1, 42, u64::MAX] {
            let mut a = Rng::new(seed);
            let mut b = Rng::new(seed);
            for i in 0..1000 {
                assert_eq!(a.next_u64(), b.next_u64(), "seed {seed}, draw {i}");
            }
            let mut c = a.clone();
            assert_eq!(a.next_u64(), c.next_u64(), "seed {seed}: clone diverged");
            assert_eq!(a.seed(), seed);
        }
    }

    /// Nearby seeds must give unrelated streams, or seeded campaigns would test the same thing.
    #[test]
    fn different_seeds_differ() {
        let streams: Vec<Vec<u64>> = (0u64..16)
            .map(|seed| {
                let mut r = Rng::new(seed);
                (0..8).map(|_| r.next_u64()).collect()
            })
            .collect();
        for (i, a) in streams.iter().enumerate() {
            for (j, b) in streams.iter().enumerate().skip(i + 1) {
                assert_ne!(a, b, "seeds {i} and {j} gave the same stream");
            }
        }
    }

    /// `below` stays in range and reaches every value of a small range; `below(0)` is 0.
    #[test]
    fn below_in_range_and_covers() {
        let seed = 7;
        let mut r = Rng::new(seed);
        assert_eq!(r.below(0), 0);
        for n in 1u64..=13 {
            let mut hit = vec![false; n as usize];
            for _ in 0..2000 {
                let v = r.below(n);
                assert!(v < n, "seed {seed}: below({n}) gave {v}");
                hit[v as usize] = true;
            }
            assert!(hit.iter().all(|&h| h), "seed {seed}: below({n}) missed a value: {hit:?}");
        }
        for _ in 0..1000 {
            let v = r.below(u64::MAX);
            assert!(v < u64::MAX, "seed {seed}");
        }
    }

    /// `range` stays inside its bounds and an empty range yields its start.
    #[test]
    fn range_bounds() {
        let seed = 11;
        let mut r = Rng::new(seed);
        for _ in 0..1000 {
            let v = r.range(100..110);
            assert!((100..110).contains(&v), "seed {seed}: {v}");
        }
        assert_eq!(r.range(5..5), 5);
        #[expect(clippy::reversed_empty_ranges, reason = "an inverted range is the case under test")]
        let inverted = r.range(9..3);
        assert_eq!(inverted, 9);
    }

    /// `chance` honours its extremes exactly and is roughly fair in between.
    #[test]
    fn chance_extremes_and_middle() {
        let seed = 3;
        let mut r = Rng::new(seed);
        assert!((0..1000).all(|_| !r.chance(0.0)), "seed {seed}");
        assert!((0..1000).all(|_| r.chance(1.0)), "seed {seed}");
        assert!((0..100).all(|_| !r.chance(f64::NAN)), "seed {seed}");
        let hits = (0..10_000).filter(|_| r.chance(0.5)).count();
        assert!((4_000..6_000).contains(&hits), "seed {seed}: {hits} of 10000 at p=0.5");
    }

    /// `fill_bytes` fills odd lengths completely and reproducibly.
    #[test]
    fn fill_bytes_deterministic() {
        let seed = 5;
        let mut a = [0u8; 37];
        let mut b = [0u8; 37];
        Rng::new(seed).fill_bytes(&mut a);
        Rng::new(seed).fill_bytes(&mut b);
        assert_eq!(a, b, "seed {seed}");
        assert!(a.iter().skip(32).any(|&x| x != 0), "seed {seed}: tail left unfilled");
    }

    /// `shuffle` permutes (nothing lost or duplicated); `choose` picks members and None on empty.
    #[test]
    fn shuffle_permutes_choose_picks() {
        let seed = 9;
        let mut r = Rng::new(seed);
        let mut v: Vec<u32> = (0..50).collect();
        r.shuffle(&mut v);
        let mut sorted = v.clone();
        sorted.sort_unstable();
        assert_eq!(sorted, (0..50).collect::<Vec<u32>>(), "seed {seed}");
        assert_ne!(v, sorted, "seed {seed}: shuffle left 50 items in order");
        let empty: [u32; 0] = [];
        assert_eq!(r.choose(&empty), None);
        for _ in 0..100 {
            let c = r.choose(&v).copied();
            assert!(c.is_some_and(|c| c < 50), "seed {seed}: {c:?}");
        }
    }
}
