//! numpy's legacy global generator (`np.random.seed(s)`; `np.random.uniform`), bit for bit, so
//! that RandomCAM's weights are the ones pytorch-grad-cam draws after `np.random.seed(s)`.

use ndarray::Array2;

const N: usize = 624;
const M: usize = 397;

/// MT19937 seeded as numpy's `RandomState.seed(int)` (`init_genrand`), drawing doubles as its
/// `random_sample` (53 bits from two 32-bit outputs).
///
/// ```
/// use gradcam_core::LegacyRandom;
/// // np.random.seed(0); np.random.random_sample()
/// assert_eq!(LegacyRandom::new(0).next_f64(), 0.5488135039273248);
/// ```
#[derive(Clone, Debug)]
pub struct LegacyRandom {
    state: [u32; N],
    index: usize,
}

impl LegacyRandom {
    /// The generator after `np.random.seed(seed)`.
    pub fn new(seed: u32) -> Self {
        let mut state = [0u32; N];
        state[0] = seed;
        for i in 1..N {
            let prev = state[i - 1];
            state[i] = 1_812_433_253u32.wrapping_mul(prev ^ (prev >> 30)).wrapping_add(i as u32);
        }
        LegacyRandom { state, index: N }
    }

    fn twist(&mut self) {
        const UPPER: u32 = 0x8000_0000;
        const LOWER: u32 = 0x7fff_ffff;
        const MATRIX_A: u32 = 0x9908_b0df;
        for i in 0..N {
            let y = (self.state[i] & UPPER) | (self.state[(i + 1) % N] & LOWER);
            let mag = if y & 1 == 1 { MATRIX_A } else { 0 };
            self.state[i] = self.state[(i + M) % N] ^ (y >> 1) ^ mag;
        }
        self.index = 0;
    }

    /// The next 32-bit output (`genrand_int32`).
    pub fn next_u32(&mut self) -> u32 {
        if self.index >= N {
            self.twist();
        }
        let mut y = self.state[self.index];
        self.index += 1;
        y ^= y >> 11;
        y ^= (y << 7) & 0x9d2c_5680;
        y ^= (y << 15) & 0xefc6_0000;
        y ^ (y >> 18)
    }

    /// numpy's `random_sample()`: a double in `[0, 1)` from 53 random bits.
    pub fn next_f64(&mut self) -> f64 {
        let a = f64::from(self.next_u32() >> 5);
        let b = f64::from(self.next_u32() >> 6);
        (a * 67_108_864.0 + b) / 9_007_199_254_740_992.0
    }

    /// numpy's `uniform(low, high)`: `low + (high - low) * random_sample()`.
    pub fn uniform(&mut self, low: f64, high: f64) -> f64 {
        low + (high - low) * self.next_f64()
    }

    /// Draws and discards `n` doubles: the stream position after `n` calls of
    /// [`LegacyRandom::next_f64`] (RandomCAM's earlier passes under `aug_smooth`).
    pub fn skip(&mut self, n: usize) {
        for _ in 0..n {
            self.next_f64();
        }
    }

    /// `np.random.uniform(-1, 1, size=(rows, cols))` in row-major order, as `f32`: RandomCAM's
    /// channel weights for a batch of `rows` images with `cols` channels.
    pub fn weights(&mut self, rows: usize, cols: usize) -> Array2<f32> {
        Array2::from_shape_simple_fn((rows, cols), || self.uniform(-1.0, 1.0) as f32)
    }
}

#[cfg(test)]
mod tests {
    use super::LegacyRandom;

    /// Values printed by numpy 2.4 (`np.random.seed(s); np.random.uniform(-1, 1, size=...)`).
    #[test]
    fn matches_numpy_legacy_stream() {
        let w = LegacyRandom::new(0).weights(2, 3);
        let want = [
            0.0976270078546495,
            0.43037873274483895,
            0.20552675214328775,
            0.08976636599379373,
            -0.15269040132219058,
            0.29178822613331223,
        ];
        for (got, want) in w.iter().zip(want) {
            assert_eq!(*got, want as f32);
        }
        // Past the first twist (624 words = 312 doubles) and beyond.
        let mut r = LegacyRandom::new(12345);
        let v: Vec<f64> = (0..2000).map(|_| r.uniform(-1.0, 1.0)).collect();
        assert_eq!(v[0], 0.8592321856342957);
        assert_eq!(v[700], -0.8695358595706901);
        assert_eq!(v[1999], 0.25790161257925304);
        assert_eq!(LegacyRandom::new(u32::MAX).uniform(-1.0, 1.0), -0.8047359420119724);
    }
}
