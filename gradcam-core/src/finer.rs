//! FinerCAM's target: the explained class against the classes the model confuses it with.

use ndarray::{Array2, ArrayView1, ArrayView2};

use crate::{CamError, Seed, Target};

/// How many of the closest classes FinerCAM compares against (pytorch-grad-cam's
/// `DEFAULT_COMPARISON_CATEGORIES = (1, 2, 3)`).
pub const FINER_COMPARISONS: usize = 3;

/// pytorch-grad-cam's `FinerWeightedTarget` epsilon in `Σ p_j (y_c - α y_j) / (Σ p_j + 1e-9)`.
pub const FINER_EPS: f64 = 1e-9;

/// The seed of FinerCAM: for each image, with `c` its class (resolved by `target`: top-1,
/// rank or given) and `J` the [`FINER_COMPARISONS`] other classes whose logits are closest to
/// `y_c` ([`finer_comparisons`]), the score is pytorch-grad-cam's `FinerWeightedTarget`
/// `S = Σ_{j∈J} p_j (y_c - α y_j) / (Σ_{j∈J} p_j + 1e-9)` with `p = softmax(y)`. Like the
/// reference, the gradient also flows through the softmax weights. The score is the logit's:
/// `target.score` (softmax or not) plays no part.
///
/// ```
/// use gradcam_core::{FinerSeed, Seed, Target};
/// use ndarray::array;
/// let logits = array![[5.0f32, 1.0, 4.0]];
/// let seed = FinerSeed { target: &Target::top_one(), alpha: 0.0 }.seed(logits.view(), &[3]).unwrap();
/// // alpha = 0: the score is y_0 itself, whatever the weights.
/// assert!((seed[[0, 0]] - 1.0).abs() < 1e-6 && seed[[0, 1]].abs() < 1e-6);
/// ```
#[derive(Clone, Copy, Debug)]
pub struct FinerSeed<'t> {
    /// Which class each image is explained for.
    pub target: &'t Target,
    /// How strongly the compared classes' logits are subtracted (pytorch-grad-cam's `alpha`).
    pub alpha: f32,
}

/// The classes FinerCAM compares class `main` of one row of logits with: the
/// [`FINER_COMPARISONS`] others (fewer when the model has fewer) with the smallest
/// `|y_j - y_main|` (computed in `f32` as the reference), nearest first, ties to the lower
/// index. pytorch-grad-cam sorts with numpy's unstable `argsort` and takes positions 1..=3
/// after the main class; only exact ties in the distances can order differently.
pub fn finer_comparisons(row: ArrayView1<f32>, main: usize) -> Vec<usize> {
    let anchor = row[main];
    let mut others: Vec<(f32, usize)> =
        row.iter().enumerate().filter(|&(j, _)| j != main).map(|(j, &y)| ((y - anchor).abs(), j)).collect();
    others.sort_by(|a, b| a.0.total_cmp(&b.0).then(a.1.cmp(&b.1)));
    others.into_iter().take(FINER_COMPARISONS).map(|(_, j)| j).collect()
}

impl FinerSeed<'_> {
    /// Refuses a non-finite `alpha`; [`crate::explain`] calls it before capturing anything.
    pub fn check(&self) -> Result<(), CamError> {
        if self.alpha.is_finite() {
            Ok(())
        } else {
            Err(CamError::Unsupported(format!(
                "FinerCAM's alpha must be a finite number, not {}",
                self.alpha
            )))
        }
    }

    /// `d S / d y` for one row of logits (see [`FinerSeed`]), in `f64`.
    fn row_seed(&self, row: ArrayView1<f32>, main: usize) -> Vec<f64> {
        let y: Vec<f64> = row.iter().map(|&v| f64::from(v)).collect();
        let max = y.iter().copied().fold(f64::NEG_INFINITY, f64::max);
        let e: Vec<f64> = y.iter().map(|v| (v - max).exp()).collect();
        let total: f64 = e.iter().sum();
        let p: Vec<f64> = e.iter().map(|v| v / total).collect();
        let alpha = f64::from(self.alpha);
        let compared = finer_comparisons(row, main);
        // S = N / D, N = Σ_j p_j (y_c - α y_j), D = Σ_j p_j + ε; dp_j / dy_k = p_j (δ_jk - p_k).
        let numerator: f64 = compared.iter().map(|&j| p[j] * (y[main] - alpha * y[j])).sum();
        let mass: f64 = compared.iter().map(|&j| p[j]).sum();
        let denominator = mass + FINER_EPS;
        (0..y.len())
            .map(|k| {
                let in_j = compared.contains(&k);
                // d N / d y_k: through the softmax weights, then through the logits themselves.
                let mut dn = -p[k] * numerator;
                let mut dd = -p[k] * mass;
                if in_j {
                    dn += p[k] * (y[main] - alpha * y[k]) - alpha * p[k];
                    dd += p[k];
                }
                if k == main {
                    dn += mass;
                }
                (dn * denominator - numerator * dd) / (denominator * denominator)
            })
            .collect()
    }
}

impl Seed for FinerSeed<'_> {
    fn seed(&self, logits: ArrayView2<f32>, shape: &[usize]) -> Result<Array2<f32>, CamError> {
        self.check()?;
        if !self.target.is_classifier() {
            return Err(CamError::Unsupported("FinerCAM explains classifiers only".into()));
        }
        let classes = self.target.resolve_output(logits, shape)?;
        let mut seed = Array2::zeros(logits.raw_dim());
        for ((mut out, row), &main) in seed.outer_iter_mut().zip(logits.outer_iter()).zip(&classes) {
            for (o, v) in out.iter_mut().zip(self.row_seed(row, main)) {
                *o = v as f32;
            }
        }
        Ok(seed)
    }
}
