//! EigenCAM's projection onto the first principal component, in pure Rust (nalgebra).

use nalgebra::{DMatrix, DVector, SymmetricEigen};
use ndarray::{Array1, ArrayView2};

/// Up to this size the Gram matrix is diagonalised outright; above, Lanczos finds the top pair.
const DIRECT_EIGEN_MAX: usize = 24;
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
    // Centred rows, one per channel, in f64 (row c = channel c over the pixels).
    let mut x = vec![0.0f64; channels * pixels];
    let mut mean = DVector::<f64>::zeros(channels);
    for (c, (row, dst)) in activations.outer_iter().zip(x.chunks_exact_mut(pixels)).enumerate() {
        for (d, &v) in dst.iter_mut().zip(row.iter()) {
            *d = if v.is_nan() { 0.0 } else { f64::from(v) };
        }
        let m = dst.iter().sum::<f64>() / pixels as f64;
        mean[c] = m;
        dst.iter_mut().for_each(|d| *d -= m);
    }
    let v = if pixels <= channels {
        // G = X Xᵀ (pixels x pixels) as a sum of rank-one updates, one per channel row; upper half.
        let mut gram = DMatrix::<f64>::zeros(pixels, pixels);
        let g = gram.as_mut_slice(); // column-major: g[j * n + i] = G[i, j]
                                     // Four channel rows per pass over G: a quarter of the memory traffic on G (a ViT's
                                     // 196 x 196 Gram matrix lives in L2, not L1).
        let mut rows = x.chunks_exact(4 * pixels);
        for block in &mut rows {
            let (r0, rest) = block.split_at(pixels);
            let (r1, rest) = rest.split_at(pixels);
            let (r2, r3) = rest.split_at(pixels);
            for j in 0..pixels {
                let (a, b, c, d) = (r0[j], r1[j], r2[j], r3[j]);
                let col = &mut g[j * pixels..j * pixels + j + 1];
                for (i, gi) in col.iter_mut().enumerate() {
                    *gi += (r0[i] * a + r1[i] * b) + (r2[i] * c + r3[i] * d);
                }
            }
        }
        for row in rows.remainder().chunks_exact(pixels) {
            for (j, &xj) in row.iter().enumerate() {
                let col = &mut g[j * pixels..j * pixels + j + 1];
                for (gi, &xi) in col.iter_mut().zip(&row[..=j]) {
                    *gi += xi * xj;
                }
            }
        }
        gram.fill_lower_triangle_with_upper_triangle();
        let (lambda, u) = top_eigenpair(gram);
        if lambda <= 0.0 {
            return Array1::zeros(pixels);
        }
        // v = Xᵀ u / σ
        let sigma = lambda.sqrt();
        DVector::from_iterator(
            channels,
            x.chunks_exact(pixels)
                .map(|row| row.iter().zip(u.iter()).map(|(a, b)| a * b).sum::<f64>() / sigma),
        )
    } else {
        let mut gram = DMatrix::<f64>::zeros(channels, channels);
        for i in 0..channels {
            let ri = &x[i * pixels..(i + 1) * pixels];
            for j in i..channels {
                let rj = &x[j * pixels..(j + 1) * pixels];
                gram[(i, j)] = ri.iter().zip(rj).map(|(a, b)| a * b).sum();
            }
        }
        gram.fill_lower_triangle_with_upper_triangle();
        let (lambda, v) = top_eigenpair(gram);
        if lambda <= 0.0 {
            return Array1::zeros(pixels);
        }
        v
    };
    let v = orient(v, &mean);
    let mut projection = vec![0.0f64; pixels];
    for (row, &vc) in x.chunks_exact(pixels).zip(v.iter()) {
        for (p, &a) in projection.iter_mut().zip(row) {
            *p += a * vc;
        }
    }
    projection.into_iter().map(|p| p as f32).collect()
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
    if gram.nrows() > DIRECT_EIGEN_MAX {
        if let Some(pair) = lanczos(&gram) {
            return pair;
        }
    }
    let eig = SymmetricEigen::new(gram);
    let best = eig.eigenvalues.argmax().0;
    (eig.eigenvalues[best], eig.eigenvectors.column(best).into_owned())
}

/// Top eigenpair by Lanczos with full reorthogonalisation, restarted from the current Ritz vector;
/// `None` when it does not converge (the caller then diagonalises outright).
fn lanczos(gram: &DMatrix<f64>) -> Option<(f64, DVector<f64>)> {
    const STEPS: usize = 40;
    const RESTARTS: usize = 8;
    let n = gram.nrows();
    let steps = STEPS.min(n);
    let scale = gram.diagonal().sum();
    if scale <= 0.0 {
        return Some((0.0, DVector::zeros(n)));
    }
    // Start from G·1 plus the heaviest column: both lean towards the dominant direction.
    let heaviest = gram.diagonal().argmax().0;
    let mut start = gram * DVector::from_element(n, 1.0) + gram.column(heaviest);
    start += DVector::from_fn(n, |i, _| 1e-3 * (1.0 + (i as f64 * 0.618).fract()));
    for _ in 0..RESTARTS {
        let mut basis: Vec<DVector<f64>> = Vec::with_capacity(steps);
        let (mut alpha, mut beta): (Vec<f64>, Vec<f64>) =
            (Vec::with_capacity(steps), Vec::with_capacity(steps));
        let mut q = start.normalize();
        for k in 0..steps {
            let mut w = gram * &q;
            let a = q.dot(&w);
            w.axpy(-a, &q, 1.0);
            if let Some(b) = beta.last() {
                w.axpy(-*b, &basis[k - 1], 1.0);
            }
            basis.push(q.clone());
            alpha.push(a);
            // Full reorthogonalisation (twice is enough) keeps the basis orthonormal.
            for _ in 0..2 {
                for b in &basis {
                    let d = b.dot(&w);
                    w.axpy(-d, b, 1.0);
                }
            }
            let b = w.norm();
            if b <= 1e-14 * scale || k + 1 == steps {
                break;
            }
            beta.push(b);
            q = w / b;
        }
        let m = alpha.len();
        let t = DMatrix::from_fn(m, m, |i, j| match i.abs_diff(j) {
            0 => alpha[i],
            1 => beta[i.min(j)],
            _ => 0.0,
        });
        let eig = SymmetricEigen::new(t);
        let best = eig.eigenvalues.argmax().0;
        let lambda = eig.eigenvalues[best];
        let y = eig.eigenvectors.column(best);
        let mut ritz = DVector::zeros(n);
        for (b, &yi) in basis.iter().zip(y.iter()) {
            ritz.axpy(yi, b, 1.0);
        }
        let ritz = ritz.normalize();
        let residual = (gram * &ritz - &ritz * lambda).norm();
        if residual <= 1e-10 * scale {
            return Some((lambda, ritz));
        }
        start = ritz;
    }
    None
}
