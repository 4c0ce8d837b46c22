//! ROAD (Rong et al., "A Consistent and Efficient Evaluation Strategy for Attribution Methods"):
//! which pixels a percentile of the map removes, and the noisy linear imputer that fills them,
//! as pytorch-grad-cam 1.5.7's `metrics/road.py` (`NoisyLinearImputer`) and
//! `metrics/perturbation_confidence.py` (`RemoveMostRelevantFirst`) do it.

use ndarray::{Array2, Array3, ArrayView2, ArrayView3, Axis};

use crate::{CamError, LegacyRandom};

/// pytorch-grad-cam's default noise of the imputer (`NoisyLinearImputer(noise=0.01)`).
pub const ROAD_NOISE: f32 = 0.01;

/// The neighbours of a pixel and their weights in the imputer's equations (`neighbors_weights`):
/// `1/6` for the 4 direct neighbours, `1/12` for the diagonals; they sum to 1.
pub const ROAD_NEIGHBOURS: [((isize, isize), f64); 8] = [
    ((1, 1), 1.0 / 12.0),
    ((0, 1), 1.0 / 6.0),
    ((-1, 1), 1.0 / 12.0),
    ((1, -1), 1.0 / 12.0),
    ((0, -1), 1.0 / 6.0),
    ((-1, -1), 1.0 / 12.0),
    ((1, 0), 1.0 / 6.0),
    ((-1, 0), 1.0 / 6.0),
];

/// Relative residual at which the conjugate-gradient solve stops: far below what an `f32` image
/// can tell, so the result is the exact solution (SciPy's direct `spsolve`) to `f32` precision.
const CG_TOLERANCE: f64 = 1e-11;

/// Removed pixels from which the channels are solved on threads of their own.
const PARALLEL_UNKNOWNS: usize = 4096;

/// The over-relaxation of the SSOR preconditioner: on 224x224 maps it needs 2.7x fewer
/// iterations than 1 (symmetric Gauss-Seidel), and fewer than 1.5, 1.9 or 1.95.
const SSOR_OMEGA: f64 = 1.8;

/// The `q`-th percentile (0..=100) of `values`, exactly as numpy's `np.percentile` (method
/// `linear`) computes it on a `float32` array: the virtual index `(n - 1) q / 100` in `f64`,
/// then the interpolation between its two neighbours in `f32`. `None` for no values.
///
/// ```
/// use gradcam_core::percentile;
/// assert_eq!(percentile(&[3.0, 1.0, 2.0, 4.0], 50.0), Some(2.5));
/// assert_eq!(percentile(&[3.0, 1.0, 2.0, 4.0], 100.0), Some(4.0));
/// ```
pub fn percentile(values: &[f32], q: f64) -> Option<f32> {
    if values.is_empty() {
        return None;
    }
    let mut sorted = values.to_vec();
    sorted.sort_by(f32::total_cmp);
    let n = sorted.len();
    let q = q / 100.0;
    // numpy: n * q + (alpha + q * (1 - alpha - beta)) - 1 with alpha = beta = 1.
    let virtual_index = n as f64 * q + (1.0 - q) - 1.0;
    let (below, above) = if virtual_index >= (n - 1) as f64 {
        (n - 1, n - 1)
    } else if virtual_index < 0.0 {
        (0, 0)
    } else {
        let floor = virtual_index.floor() as usize;
        (floor, floor + 1)
    };
    let gamma = virtual_index - below as f64;
    let (a, b) = (sorted[below], sorted[above]);
    let diff = b - a;
    // numpy's `_lerp`, in the array's dtype: from the nearer end, for symmetry.
    Some(if gamma >= 0.5 { b - diff * (1.0 - gamma) as f32 } else { a + diff * gamma as f32 })
}

/// Which pixels ROAD keeps (`true`) for one map `(H, W)`: pytorch-grad-cam's
/// `RemoveMostRelevantFirst(percentile)` keeps `cam < np.percentile(cam, percentile)`, so it
/// removes the most relevant `100 - percentile` %; `RemoveLeastRelevantFirst(percentile)` does
/// the same on `1 - cam` (computed in `f32`), removing the least relevant ones. Ties at the
/// threshold are removed, as there.
pub fn road_keep_mask(cam: ArrayView2<f32>, percentile_q: f64, most_relevant_first: bool) -> Array2<bool> {
    let scores = if most_relevant_first { cam.to_owned() } else { cam.mapv(|c| 1.0 - c) };
    let flat: Vec<f32> = scores.iter().copied().collect();
    match percentile(&flat, percentile_q) {
        Some(threshold) => scores.mapv(|s| s < threshold),
        None => Array2::from_elem(cam.raw_dim(), false),
    }
}

/// Standard normal draws as numpy's legacy `RandomState.standard_normal` (the polar method over
/// [`LegacyRandom`]), so that `np.random.RandomState(seed).randn(n)` reproduces them.
#[derive(Clone, Debug)]
pub struct LegacyNormal {
    uniform: LegacyRandom,
    spare: Option<f64>,
}

impl LegacyNormal {
    /// The generator after `np.random.seed(seed)`.
    ///
    /// ```
    /// use gradcam_core::LegacyNormal;
    /// // np.random.RandomState(0).randn(2)
    /// let mut g = LegacyNormal::new(0);
    /// assert!((g.next_f64() - 1.764052345967664).abs() < 1e-12);
    /// assert!((g.next_f64() - 0.4001572083672233).abs() < 1e-12);
    /// ```
    pub fn new(seed: u32) -> Self {
        LegacyNormal { uniform: LegacyRandom::new(seed), spare: None }
    }

    /// The next draw (numpy's `legacy_gauss`).
    pub fn next_f64(&mut self) -> f64 {
        if let Some(spare) = self.spare.take() {
            return spare;
        }
        loop {
            let x1 = 2.0 * self.uniform.next_f64() - 1.0;
            let x2 = 2.0 * self.uniform.next_f64() - 1.0;
            let r2 = x1 * x1 + x2 * x2;
            if r2 < 1.0 && r2 != 0.0 {
                let f = (-2.0 * r2.ln() / r2).sqrt();
                self.spare = Some(f * x1);
                return f * x2;
            }
        }
    }
}

/// The imputer's equations for one mask: one unknown per removed pixel, in row-major order.
/// Unknown `i` satisfies `s_i x_i - Σ_{removed j ~ i} w_ij x_j = Σ_{kept j ~ i} w_ij img_j`,
/// with `s_i` the sum of the weights of `i`'s in-bounds neighbours: pytorch-grad-cam's system
/// times -1, which makes it symmetric positive definite (when some pixel is kept).
struct System {
    /// Flat pixel index of each unknown.
    pixels: Vec<usize>,
    /// `s_i`.
    diagonal: Vec<f64>,
    /// Removed neighbours of unknown `i` before it: `lower[lower_offsets[i]..lower_offsets[i + 1]]`,
    /// as (unknown index, weight); and after it, in `upper` likewise.
    lower_offsets: Vec<usize>,
    lower: Vec<(usize, f64)>,
    upper_offsets: Vec<usize>,
    upper: Vec<(usize, f64)>,
    /// Kept neighbours: (flat pixel index, weight), same offsets scheme.
    known_offsets: Vec<usize>,
    known: Vec<(usize, f64)>,
}

impl System {
    fn new(keep: ArrayView2<bool>) -> Self {
        let (h, w) = keep.dim();
        let keep_flat: Vec<bool> = keep.iter().copied().collect();
        let pixels: Vec<usize> = (0..h * w).filter(|&p| !keep_flat[p]).collect();
        let mut unknown_index = vec![usize::MAX; h * w];
        for (i, &p) in pixels.iter().enumerate() {
            unknown_index[p] = i;
        }
        let mut system = System {
            diagonal: Vec::with_capacity(pixels.len()),
            lower_offsets: vec![0],
            lower: Vec::new(),
            upper_offsets: vec![0],
            upper: Vec::new(),
            known_offsets: vec![0],
            known: Vec::new(),
            pixels: Vec::new(),
        };
        for &p in &pixels {
            let (y, x) = ((p / w) as isize, (p % w) as isize);
            let mut sum = 0.0;
            for &((dy, dx), weight) in &ROAD_NEIGHBOURS {
                let (ny, nx) = (y + dy, x + dx);
                if ny < 0 || nx < 0 || ny >= h as isize || nx >= w as isize {
                    continue;
                }
                sum += weight;
                let q = ny as usize * w + nx as usize;
                if keep_flat[q] {
                    system.known.push((q, weight));
                } else if q < p {
                    system.lower.push((unknown_index[q], weight));
                } else {
                    system.upper.push((unknown_index[q], weight));
                }
            }
            system.diagonal.push(sum);
            system.lower_offsets.push(system.lower.len());
            system.upper_offsets.push(system.upper.len());
            system.known_offsets.push(system.known.len());
        }
        system.pixels = pixels;
        system
    }

    fn len(&self) -> usize {
        self.pixels.len()
    }

    /// `Σ w_ij x_j` over the removed neighbours `j` of unknown `i` that come before it.
    fn lower_sum(&self, i: usize, x: &[f64]) -> f64 {
        self.lower[self.lower_offsets[i]..self.lower_offsets[i + 1]].iter().map(|&(j, w)| w * x[j]).sum()
    }

    /// The same over those after it.
    fn upper_sum(&self, i: usize, x: &[f64]) -> f64 {
        self.upper[self.upper_offsets[i]..self.upper_offsets[i + 1]].iter().map(|&(j, w)| w * x[j]).sum()
    }

    /// `out = M x`.
    fn apply(&self, x: &[f64], out: &mut [f64]) {
        for (i, o) in out.iter_mut().enumerate() {
            *o = self.diagonal[i] * x[i] - self.lower_sum(i, x) - self.upper_sum(i, x);
        }
    }

    /// The right-hand side for one channel `(H * W)` of the image.
    fn rhs(&self, channel: &[f64]) -> Vec<f64> {
        (0..self.len())
            .map(|i| {
                self.known[self.known_offsets[i]..self.known_offsets[i + 1]]
                    .iter()
                    .map(|&(q, w)| w * channel[q])
                    .sum()
            })
            .collect()
    }

    /// Solves `M x = b` by conjugate gradients preconditioned with symmetric successive
    /// over-relaxation (SSOR, [`SSOR_OMEGA`]). `M` is symmetric positive definite when some
    /// pixel is kept; when none is, `b = 0` and the answer is the minimum-norm solution 0 (SciPy's
    /// `spsolve` reports a singular matrix and gives NaN).
    fn solve(&self, b: &[f64]) -> Result<Vec<f64>, CamError> {
        let n = self.len();
        let mut x = vec![0.0; n];
        let b_norm = norm(b);
        if b_norm == 0.0 {
            return Ok(x);
        }
        let mut r = b.to_vec();
        let mut z = vec![0.0; n];
        self.precondition(&r, &mut z);
        let mut p = z.clone();
        let mut rz = dot(&r, &z);
        let mut q = vec![0.0; n];
        // CG ends in at most n steps in exact arithmetic; rounding may need a few more.
        let max_iterations = 2 * n + 100;
        for _ in 0..max_iterations {
            self.apply(&p, &mut q);
            let alpha = rz / dot(&p, &q);
            for i in 0..n {
                x[i] += alpha * p[i];
                r[i] -= alpha * q[i];
            }
            if norm(&r) <= CG_TOLERANCE * b_norm {
                return Ok(x);
            }
            self.precondition(&r, &mut z);
            let rz_next = dot(&r, &z);
            let beta = rz_next / rz;
            rz = rz_next;
            for i in 0..n {
                p[i] = z[i] + beta * p[i];
            }
        }
        Err(CamError::Unsupported(format!(
            "ROAD's imputer did not converge in {max_iterations} iterations for {n} removed pixels: check that the image's values are finite"
        )))
    }

    /// `z = P⁻¹ r` for the SSOR preconditioner `P = (D/ω + L) (D/ω)⁻¹ (D/ω + Lᵀ)` (up to a
    /// constant factor, which CG ignores): a forward then a backward over-relaxed sweep.
    fn precondition(&self, r: &[f64], z: &mut [f64]) {
        let n = self.len();
        // Forward: (D/ω + L) y = r, L = the strictly lower part of M (-w for removed neighbours
        // of lower index).
        for i in 0..n {
            z[i] = (r[i] + self.lower_sum(i, z)) * SSOR_OMEGA / self.diagonal[i];
        }
        // (D/ω) y, then backward: (D/ω + U) z = that.
        for i in (0..n).rev() {
            z[i] += self.upper_sum(i, z) * SSOR_OMEGA / self.diagonal[i];
        }
    }
}

fn dot(a: &[f64], b: &[f64]) -> f64 {
    a.iter().zip(b).map(|(a, b)| a * b).sum()
}

fn norm(a: &[f64]) -> f64 {
    dot(a, a).sqrt()
}

/// pytorch-grad-cam's `NoisyLinearImputer`: every pixel of `image` `(C, H, W)` where `keep`
/// `(H, W)` is `false` is replaced by the weighted mean of its 8 neighbours ([`ROAD_NEIGHBOURS`],
/// those outside the image left out), all removed pixels at once: the sparse linear system
/// solved exactly (in `f64`, by SSOR-preconditioned conjugate gradients to a relative residual of
/// 1e-11, where pytorch-grad-cam uses SciPy's direct `spsolve`), per channel (the channels on
/// threads of their own for large masks). Then `noise` times a standard
/// normal draw is added to each imputed value: pytorch-grad-cam draws it with `torch.randn_like`,
/// which cannot be reproduced; here it is `np.random.RandomState(seed).randn(C, removed)`
/// ([`LegacyNormal`]), a fresh generator for every call, so every map of an image gets the same
/// noise. When no pixel is kept, the imputed values are 0 plus the noise (the system is singular;
/// its minimum-norm solution is 0).
///
/// ```
/// use gradcam_core::impute;
/// use ndarray::{array, Array3};
/// let image = Array3::from_shape_fn((1, 3, 3), |(_, y, x)| (y * 3 + x) as f32);
/// let mut keep = ndarray::Array2::from_elem((3, 3), true);
/// keep[[1, 1]] = false;
/// let filled = impute(image.view(), keep.view(), 0.0, 0).unwrap();
/// // The centre becomes the weighted mean of its neighbours: 4 by symmetry.
/// assert!((filled[[0, 1, 1]] - 4.0).abs() < 1e-6);
/// assert_eq!(filled[[0, 0, 0]], 0.0);
/// ```
pub fn impute(
    image: ArrayView3<f32>,
    keep: ArrayView2<bool>,
    noise: f32,
    seed: u32,
) -> Result<Array3<f32>, CamError> {
    let (channels, h, w) = image.dim();
    if keep.dim() != (h, w) {
        return Err(CamError::Shape(format!("ROAD mask {:?} for an image of {h}x{w}", keep.dim())));
    }
    if !noise.is_finite() || noise < 0.0 {
        return Err(CamError::Unsupported(format!(
            "ROAD's noise must be a finite number of at least 0, not {noise}"
        )));
    }
    if image.iter().any(|v| !v.is_finite()) {
        return Err(CamError::Unsupported(
            "ROAD cannot impute an image holding NaN or infinite values".into(),
        ));
    }
    let mut out = image.to_owned();
    let system = System::new(keep);
    let n = system.len();
    if n == 0 {
        return Ok(out);
    }
    // Drawn first, in numpy's order (channel by channel), so that the channels can be solved at
    // the same time.
    let draws: Vec<f32> = if noise == 0.0 {
        vec![0.0; channels * n]
    } else {
        let mut normal = LegacyNormal::new(seed);
        (0..channels * n).map(|_| normal.next_f64() as f32).collect()
    };
    let solve = |c: usize| {
        let values: Vec<f64> = image.index_axis(Axis(0), c).iter().map(|&v| f64::from(v)).collect();
        system.solve(&system.rhs(&values))
    };
    let solutions: Vec<Result<Vec<f64>, CamError>> = if n < PARALLEL_UNKNOWNS || channels == 1 {
        (0..channels).map(solve).collect()
    } else {
        std::thread::scope(|scope| {
            let solve = &solve;
            let handles: Vec<_> = (0..channels).map(|c| scope.spawn(move || solve(c))).collect();
            handles
                .into_iter()
                .map(|h| {
                    h.join().unwrap_or_else(|_| {
                        Err(CamError::Unsupported("ROAD's imputer thread panicked".into()))
                    })
                })
                .collect()
        })
    };
    for ((c, mut channel), solution) in out.axis_iter_mut(Axis(0)).enumerate().zip(solutions) {
        let solution = solution?;
        let draws = &draws[c * n..(c + 1) * n];
        for ((&pixel, &value), &draw) in system.pixels.iter().zip(&solution).zip(draws) {
            channel[[pixel / w, pixel % w]] = value as f32 + noise * draw;
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use ndarray::Array2;

    #[test]
    fn percentile_matches_numpy_examples() {
        // np.percentile(np.float32([0.1, 0.7, 0.3, 0.9, 0.5]), q) for q in (0, 100, 20, 90)
        let v = [0.1f32, 0.7, 0.3, 0.9, 0.5];
        assert_eq!(percentile(&v, 0.0), Some(0.1));
        assert_eq!(percentile(&v, 100.0), Some(0.9));
        assert!((percentile(&v, 20.0).unwrap() - 0.26).abs() < 1e-7);
        assert!((percentile(&v, 90.0).unwrap() - 0.82).abs() < 1e-7);
        assert_eq!(percentile(&[], 50.0), None);
        assert_eq!(percentile(&[2.0], 37.0), Some(2.0));
    }

    #[test]
    fn keep_masks_remove_the_right_end() {
        let cam = Array2::from_shape_fn((2, 5), |(y, x)| (y * 5 + x) as f32 / 9.0);
        let most = road_keep_mask(cam.view(), 80.0, true);
        assert_eq!(most.iter().filter(|&&k| !k).count(), 2, "MoRF 80 removes the top 20 %");
        assert!(!most[[1, 4]] && !most[[1, 3]]);
        let least = road_keep_mask(cam.view(), 20.0, false);
        assert_eq!(least.iter().filter(|&&k| k).count(), 2, "LeRF 20 keeps the top 20 %");
        assert!(least[[1, 4]] && least[[1, 3]]);
        // A constant map: nothing is below its own percentile, everything is removed.
        let flat = Array2::<f32>::zeros((3, 3));
        assert!(road_keep_mask(flat.view(), 50.0, true).iter().all(|&k| !k));
    }

    #[test]
    fn nothing_kept_imputes_zero_plus_noise() {
        let image = Array3::from_elem((2, 4, 4), 5.0f32);
        let keep = Array2::from_elem((4, 4), false);
        let out = impute(image.view(), keep.view(), 0.0, 0).unwrap();
        assert!(out.iter().all(|&v| v == 0.0));
        let noisy = impute(image.view(), keep.view(), 0.5, 3).unwrap();
        assert!(noisy.iter().all(|v| v.is_finite()) && noisy.iter().any(|&v| v != 0.0));
        assert_eq!(noisy, impute(image.view(), keep.view(), 0.5, 3).unwrap(), "seeded");
    }

    #[test]
    fn bad_noise_and_shapes_are_errors() {
        let image = Array3::<f32>::zeros((1, 2, 2));
        let keep = Array2::from_elem((2, 2), true);
        assert!(matches!(impute(image.view(), keep.view(), -0.1, 0), Err(CamError::Unsupported(_))));
        assert!(matches!(impute(image.view(), keep.view(), f32::NAN, 0), Err(CamError::Unsupported(_))));
        let wrong = Array2::from_elem((3, 2), true);
        assert!(matches!(impute(image.view(), wrong.view(), 0.0, 0), Err(CamError::Shape(_))));
    }
}
