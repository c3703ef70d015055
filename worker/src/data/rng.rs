//! A small counter-keyed random generator (SplitMix64).
//!
//! We keep our own rather than `rand::StdRng` because its stream is
//! documented to change between versions: the synthetic dataset on disk and
//! the augmentation of every batch must stay the same for a given seed.
//! Each batch and each sample derives its generator from a key
//! (seed, epoch, position) instead of drawing from a shared stream, so the
//! result does not depend on which thread gets there first.

/// SplitMix64 (Steele, Lea, Flood 2014): 64-bit state, passes BigCrush.
#[derive(Clone, Debug)]
pub struct Rng {
    state: u64,
}

const GOLDEN: u64 = 0x9E37_79B9_7F4A_7C15;

fn mix(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng { state: mix(seed) }
    }

    /// A generator for the stream named by `keys` under `seed` (e.g.
    /// `[EPOCH_SHUFFLE, epoch]`): distinct key lists give unrelated streams.
    pub fn keyed(seed: u64, keys: &[u64]) -> Rng {
        let mut h = mix(seed ^ 0x7073_666c_6f77); // "psflow"
        for &k in keys {
            h = mix(h.wrapping_add(GOLDEN) ^ mix(k.wrapping_add(GOLDEN)));
        }
        Rng { state: h }
    }

    pub fn next_u64(&mut self) -> u64 {
        self.state = self.state.wrapping_add(GOLDEN);
        mix(self.state)
    }

    /// Uniform in [0, 1) with 24 random bits.
    pub fn uniform(&mut self) -> f32 {
        (self.next_u64() >> 40) as f32 * (1.0 / (1u64 << 24) as f32)
    }

    /// Uniform in [lo, hi).
    pub fn range(&mut self, lo: f32, hi: f32) -> f32 {
        lo + (hi - lo) * self.uniform()
    }

    /// Uniform integer in [0, n) (n > 0), by Lemire's multiply-shift.
    pub fn below(&mut self, n: u64) -> u64 {
        ((self.next_u64() as u128 * n as u128) >> 64) as u64
    }

    pub fn coin(&mut self) -> bool {
        self.next_u64() >> 63 == 1
    }

    /// Standard normal (Box–Muller, one of the pair).
    pub fn normal(&mut self) -> f32 {
        let u1 = ((self.next_u64() >> 11) as f64 + 0.5) * (1.0 / (1u64 << 53) as f64);
        let u2 = (self.next_u64() >> 11) as f64 * (1.0 / (1u64 << 53) as f64);
        ((-2.0 * u1.ln()).sqrt() * (std::f64::consts::TAU * u2).cos()) as f32
    }

    /// Fisher–Yates shuffle.
    pub fn shuffle<T>(&mut self, items: &mut [T]) {
        for i in (1..items.len()).rev() {
            let j = self.below(i as u64 + 1) as usize;
            items.swap(i, j);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn streams_are_reproducible_and_distinct() {
        let a: Vec<u64> = (0..4).map(|_| Rng::keyed(1, &[2, 3]).next_u64()).collect();
        assert!(a.windows(2).all(|w| w[0] == w[1]));
        assert_ne!(
            Rng::keyed(1, &[2, 3]).next_u64(),
            Rng::keyed(1, &[3, 2]).next_u64()
        );
        assert_ne!(
            Rng::keyed(1, &[2, 3]).next_u64(),
            Rng::keyed(2, &[2, 3]).next_u64()
        );
        // The first value is pinned: the synthetic dataset on disk depends on it.
        // SplitMix64 seeded with 0 starts with 0xE220A8397B1DCDAF (the
        // published reference output); mix(0) == 0 keeps that seed.
        assert_eq!(Rng::new(0).next_u64(), 0xE220_A839_7B1D_CDAF);
    }

    #[test]
    fn uniform_ranges() {
        let mut r = Rng::new(7);
        let mut counts = [0usize; 5];
        for _ in 0..50_000 {
            let u = r.uniform();
            assert!((0.0..1.0).contains(&u));
            counts[r.below(5) as usize] += 1;
        }
        for c in counts {
            assert!((9_500..10_500).contains(&c), "{counts:?}");
        }
        let m: f64 = (0..20_000).map(|_| r.normal() as f64).sum::<f64>() / 20_000.0;
        assert!(m.abs() < 0.03, "normal mean {m}");
    }
}
