//! KPCA-CAM's projection onto the first kernel principal component.

use nalgebra::{DMatrix, SymmetricEigen};
use ndarray::{Array1, ArrayView2};

use crate::cam::pairwise_sum;

/// scikit-learn's sigmoid-kernel `coef0` default in `tanh(gamma <x, y> + coef0)`.
pub const KPCA_COEF0: f64 = 1.0;

/// One image's activations `(C, hw)` projected onto their first kernel principal component, as
/// pytorch-grad-cam's `get_2d_projection_kernel` with scikit-learn's
/// `KernelPCA(n_components=1, kernel="sigmoid")`: the pixels `x_i` (rows of the `(hw, C)`
/// matrix, NaN as 0) are centred per channel (in `f32`, as numpy), the kernel is
/// `K_ij = tanh(<x_i, x_j> / C + 1)`, centred in feature space (`KernelCenterer`), and the result
/// is `sqrt(λ) u` for its largest eigenvalue `λ` and unit eigenvector `u`, the sign of `u` chosen
/// so that its largest-magnitude component (the first on ties) is positive (`svd_flip`). A
/// non-positive `λ` gives zeros. The kernel and its eigenvectors are computed in `f64` (the
/// reference: `f32`); above 200 pixels scikit-learn switches to ARPACK, which converges to the
/// same eigenvector.
pub fn kernel_projection(activations: ArrayView2<f32>) -> Array1<f32> {
    let (channels, pixels) = activations.dim();
    if channels == 0 || pixels == 0 {
        return Array1::zeros(pixels);
    }
    // Centred channel rows (c, pixels), in f32 as numpy's `x - x.mean(axis=0)`.
    let mut centred = vec![0.0f32; channels * pixels];
    for (row, dst) in activations.outer_iter().zip(centred.chunks_exact_mut(pixels)) {
        for (d, &v) in dst.iter_mut().zip(row.iter()) {
            *d = if v.is_nan() { 0.0 } else { v };
        }
        let mean = pairwise_sum(dst) / pixels as f32;
        dst.iter_mut().for_each(|d| *d -= mean);
    }
    let gamma = 1.0 / channels as f64;
    let mut dots = DMatrix::<f64>::zeros(pixels, pixels);
    for row in centred.chunks_exact(pixels) {
        for j in 0..pixels {
            let xj = f64::from(row[j]);
            for i in 0..=j {
                dots[(i, j)] += f64::from(row[i]) * xj;
            }
        }
    }
    let mut kernel = DMatrix::<f64>::from_fn(pixels, pixels, |i, j| {
        let d = if i <= j { dots[(i, j)] } else { dots[(j, i)] };
        (gamma * d + KPCA_COEF0).tanh()
    });
    // KernelCenterer: K - row means - column means + grand mean.
    let n = pixels as f64;
    let col_means: Vec<f64> = (0..pixels).map(|j| kernel.column(j).sum() / n).collect();
    let grand = col_means.iter().sum::<f64>() / n;
    for j in 0..pixels {
        for i in 0..pixels {
            // K is symmetric: row i's mean is column i's.
            kernel[(i, j)] += grand - col_means[i] - col_means[j];
        }
    }
    let eig = SymmetricEigen::new(kernel);
    let best = eig.eigenvalues.argmax().0;
    let lambda = eig.eigenvalues[best];
    if lambda <= 0.0 || !lambda.is_finite() {
        return Array1::zeros(pixels);
    }
    let u = eig.eigenvectors.column(best);
    let mut largest = 0;
    for (i, v) in u.iter().enumerate() {
        if v.abs() > u[largest].abs() {
            largest = i;
        }
    }
    let sign = if u[largest] < 0.0 { -1.0 } else { 1.0 };
    let scale = sign * lambda.sqrt();
    u.iter().map(|&v| (v * scale) as f32).collect()
}
