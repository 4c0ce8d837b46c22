//! EigenCAM's projection onto the first principal component, in pure Rust (nalgebra).

use nalgebra::{DMatrix, DVector, SymmetricEigen};
use ndarray::{Array1, ArrayView2};

/// Below this size the small Gram matrix is diagonalised outright; above, the top eigenpair
/// comes from subspace iteration (far cheaper for a 196 x 196 ViT Gram matrix).
const DIRECT_EIGEN_MAX: usize = 48;
/// Relative dot product under which the sign rule's first criterion counts as a tie.
pub(crate) const SIGN_TIE: f64 = 1e-6;

/// The projection of one image's activations `(C, hw)` onto their first principal component,
/// as pytorch-grad-cam's `get_2d_projection`: with `X` the centred `(hw, C)` matrix (each
/// channel minus its mean over pixels; NaN counted as 0), the result is `X v` for `v` the top
/// right-singular vector of `X`.
///
/// An SVD fixes `v` only up to sign, so a deterministic rule picks it: `v` is oriented so that
/// `v · m >= 0`, where `m` is the mean over pixels of the *uncentred* activations (the map then
/// correlates positively with the average activation); when `|v · m| <= 1e-6 |m|` (a tie) the
/// largest-magnitude component of `v` (first on equal magnitudes) is made positive.
///
/// `v` comes from the smaller of the two Gram matrices `X Xᵀ` (hw x hw) and `Xᵀ X` (C x C),
/// accumulated in `f64`; a rank-zero `X` gives an all-zero projection.
pub fn principal_projection(activations: ArrayView2<f32>) -> Array1<f32> {
    let (channels, pixels) = activations.dim();
    if channels == 0 || pixels == 0 {
        return Array1::zeros(pixels);
    }
    // Column-major (pixels x channels) = the reference's `reshape(C, -1).T`, without a transpose.
    let mut x = DMatrix::<f64>::zeros(pixels, channels);
    let mut mean = DVector::<f64>::zeros(channels);
    for (c, row) in activations.outer_iter().enumerate() {
        let mut col = x.column_mut(c);
        for (dst, &v) in col.iter_mut().zip(row.iter()) {
            *dst = if v.is_nan() { 0.0 } else { f64::from(v) };
        }
        let m = col.sum() / pixels as f64;
        mean[c] = m;
        col.add_scalar_mut(-m);
    }
    let v = if pixels <= channels {
        let gram = &x * x.transpose();
        let (lambda, u) = top_eigenpair(gram);
        if lambda <= 0.0 {
            return Array1::zeros(pixels);
        }
        x.tr_mul(&u) / lambda.sqrt()
    } else {
        let (lambda, v) = top_eigenpair(x.tr_mul(&x));
        if lambda <= 0.0 {
            return Array1::zeros(pixels);
        }
        v
    };
    let v = orient(v, &mean);
    let projection = &x * v;
    projection.iter().map(|&p| p as f32).collect()
}

/// The sign rule of [`principal_projection`].
fn orient(v: DVector<f64>, uncentred_mean: &DVector<f64>) -> DVector<f64> {
    let dot = v.dot(uncentred_mean);
    let flip = if dot.abs() > SIGN_TIE * uncentred_mean.norm() {
        dot < 0.0
    } else {
        let mut best = 0;
        for (i, x) in v.iter().enumerate() {
            if x.abs() > v[best].abs() {
                best = i;
            }
        }
        v[best] < 0.0
    };
    if flip {
        -v
    } else {
        v
    }
}

/// Largest eigenvalue and a unit eigenvector of a symmetric positive semi-definite matrix.
fn top_eigenpair(gram: DMatrix<f64>) -> (f64, DVector<f64>) {
    let n = gram.nrows();
    if n > DIRECT_EIGEN_MAX {
        if let Some(pair) = subspace_iteration(&gram) {
            return pair;
        }
    }
    let eig = SymmetricEigen::new(gram);
    let (mut best, mut value) = (0, f64::NEG_INFINITY);
    for (i, &l) in eig.eigenvalues.iter().enumerate() {
        if l > value {
            best = i;
            value = l;
        }
    }
    (value, eig.eigenvectors.column(best).into_owned())
}

/// Block power iteration with Rayleigh-Ritz on a few vectors; `None` when it has not converged
/// (the caller then diagonalises outright).
fn subspace_iteration(gram: &DMatrix<f64>) -> Option<(f64, DVector<f64>)> {
    const BLOCK: usize = 8;
    const MAX_ITERATIONS: usize = 300;
    let n = gram.nrows();
    let k = BLOCK.min(n);
    // Start from the columns with the largest diagonal: they span the dominant directions well.
    let mut order: Vec<usize> = (0..n).collect();
    order.sort_by(|&a, &b| gram[(b, b)].total_cmp(&gram[(a, a)]));
    let mut q = DMatrix::<f64>::zeros(n, k);
    for (j, &col) in order.iter().take(k).enumerate() {
        q.set_column(j, &gram.column(col));
        q[(col, j)] += 1.0; // keeps the block full rank when columns coincide
    }
    let scale = gram.diagonal().sum().max(f64::MIN_POSITIVE);
    for _ in 0..MAX_ITERATIONS {
        let basis = q.qr().q();
        let z = gram * &basis;
        let small = basis.tr_mul(&z);
        let eig = SymmetricEigen::new(small);
        let mut idx: Vec<usize> = (0..k).collect();
        idx.sort_by(|&a, &b| eig.eigenvalues[b].total_cmp(&eig.eigenvalues[a]));
        let lambda = eig.eigenvalues[idx[0]];
        let ritz = &basis * eig.eigenvectors.column(idx[0]);
        let residual = (&z * eig.eigenvectors.column(idx[0]) - &ritz * lambda).norm();
        if residual <= 1e-11 * scale {
            return Some((lambda, ritz.normalize()));
        }
        q = z;
    }
    None
}
