//! Properties of FEM, KPCA-CAM and FinerCAM's seed: what their definitions promise, checked
//! against plain f64 arithmetic written here.

use gradcam_core::{finer_comparisons, kernel_projection, layer_map, FinerSeed, Method, Seed, Target};
use ndarray::{Array1, Array2, Array4, ArrayView1};
use proptest::prelude::*;

/// FinerCAM's score of one row, straight from pytorch-grad-cam's `FinerWeightedTarget`, in f64.
fn finer_score(y: &[f64], main: usize, compared: &[usize], alpha: f64) -> f64 {
    let max = y.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    let e: Vec<f64> = y.iter().map(|v| (v - max).exp()).collect();
    let total: f64 = e.iter().sum();
    let p: Vec<f64> = e.iter().map(|v| v / total).collect();
    let numerator: f64 = compared.iter().map(|&j| p[j] * (y[main] - alpha * y[j])).sum();
    let denominator: f64 = compared.iter().map(|&j| p[j]).sum::<f64>() + 1e-9;
    numerator / denominator
}

proptest! {
    /// The seed is the score's gradient: central differences of the f64 score agree.
    #[test]
    fn finer_seed_is_the_score_gradient(
        logits in proptest::collection::vec(-4.0f32..4.0, 2..9),
        rank in 0usize..8,
        alpha in -2.0f32..2.0,
    ) {
        let k = logits.len();
        let rank = rank % k;
        let row = Array2::from_shape_vec((1, k), logits.clone()).unwrap();
        let target = Target::rank(rank);
        let main = target.resolve(row.view()).unwrap()[0];
        let seed = FinerSeed { target: &target, alpha }.seed(row.view(), &[row.ncols()]).unwrap();
        let compared = finer_comparisons(row.row(0), main);
        let y: Vec<f64> = logits.iter().map(|&v| f64::from(v)).collect();
        for j in 0..k {
            let h = 1e-5;
            let (mut up, mut down) = (y.clone(), y.clone());
            up[j] += h;
            down[j] -= h;
            let numeric = (finer_score(&up, main, &compared, f64::from(alpha))
                - finer_score(&down, main, &compared, f64::from(alpha))) / (2.0 * h);
            prop_assert!((f64::from(seed[[0, j]]) - numeric).abs() < 1e-4 * (1.0 + numeric.abs()),
                "class {j}: seed {} vs numeric {numeric}", seed[[0, j]]);
        }
    }

    /// The compared classes: the others, nearest logits first (ties to the lower index), at most 3.
    #[test]
    fn finer_comparisons_are_the_nearest_others(logits in proptest::collection::vec(-3i8..3, 1..9), main in 0usize..8) {
        let row = Array1::from_iter(logits.iter().map(|&v| f32::from(v)));
        let main = main % row.len();
        let got = finer_comparisons(row.view(), main);
        prop_assert_eq!(got.len(), 3.min(row.len() - 1));
        prop_assert!(!got.contains(&main));
        let distance = |j: usize| (row[j] - row[main]).abs();
        for pair in got.windows(2) {
            prop_assert!((distance(pair[0]), pair[0]) < (distance(pair[1]), pair[1]));
        }
        for j in (0..row.len()).filter(|j| *j != main && !got.contains(j)) {
            prop_assert!(got.iter().all(|&g| (distance(g), g) < (distance(j), j)));
        }
    }

    /// FEM on one channel: the map is w·a with w the fraction of pixels above mean + 2 std, which
    /// Cantelli's inequality bounds by 1 / (1 + 2²).
    #[test]
    fn fem_weight_is_a_bounded_fraction(values in proptest::collection::vec(-2.0f32..3.0, 4..60)) {
        let n = values.len();
        let a = Array4::from_shape_vec((1, 1, 1, n), values.clone()).unwrap();
        let raw = layer_map(Method::Fem, a.view(), None).unwrap();
        let mean = values.iter().map(|&v| f64::from(v)).sum::<f64>() / n as f64;
        let std = (values.iter().map(|&v| (f64::from(v) - mean).powi(2)).sum::<f64>() / n as f64).sqrt();
        // The weight from the largest |a|, where the division is best conditioned.
        let (at, big) = values.iter().enumerate().fold((0, 0.0f32), |m, (i, &v)| if v.abs() > m.1.abs() { (i, v) } else { m });
        prop_assume!(big.abs() > 1e-3);
        let w = f64::from(raw[[0, 0, at]]) / f64::from(big);
        prop_assert!(w <= 0.2 + 1e-6, "weight {w}");
        let count = w * n as f64;
        prop_assert!((count - count.round()).abs() < 1e-3, "{count} is not a count");
        // Away from the threshold the count is exact.
        let threshold = mean + 2.0 * std;
        if values.iter().all(|&v| (f64::from(v) - threshold).abs() > 1e-4) {
            let want = values.iter().filter(|&&v| f64::from(v) > threshold).count();
            prop_assert_eq!(count.round() as usize, want);
        }
    }

    /// KPCA-CAM depends on the pixels' centred features only: the order of the channels and a
    /// constant added to a channel change nothing; its largest component is positive.
    #[test]
    fn kpca_is_invariant_to_channel_order_and_offsets(
        (c, p, values) in (1usize..6, 2usize..20).prop_flat_map(|(c, p)| (Just(c), Just(p), proptest::collection::vec(-2.0f32..2.0, c * p))),
        offset in -1.0f32..1.0,
    ) {
        let a = Array2::from_shape_vec((c, p), values).unwrap();
        let base = kernel_projection(a.view());
        // The sign rule needs a strictly largest component (the reference's argmax too).
        let mut magnitudes: Vec<f32> = base.iter().map(|v| v.abs()).collect();
        magnitudes.sort_by(|x, y| y.total_cmp(x));
        prop_assume!(magnitudes[0] > 1e-3 && magnitudes[0] - magnitudes[1] > 1e-3 * magnitudes[0]);
        let mut shuffled = a.clone();
        for (i, row) in a.outer_iter().enumerate() {
            shuffled.row_mut((i + 1) % c).assign(&(&row + offset * (i as f32 % 2.0)));
        }
        let moved = kernel_projection(shuffled.view());
        let scale = base.iter().fold(0f32, |m, v| m.max(v.abs())).max(1e-6);
        prop_assert!(is_close(base.view(), moved.view(), 1e-3 * scale), "{base} vs {moved}");
        let largest = base.iter().copied().fold(0f32, |m, v| if v.abs() > m.abs() { v } else { m });
        prop_assert!(largest >= 0.0);
    }
}

fn is_close(a: ArrayView1<f32>, b: ArrayView1<f32>, tol: f32) -> bool {
    a.iter().zip(b.iter()).all(|(x, y)| (x - y).abs() <= tol)
}

/// A KPCA-CAM layer too large for its (hw)² kernel is a typed error, raised before the kernel is
/// allocated; one at the limit runs.
#[test]
fn kpca_refuses_a_layer_too_large_before_allocating() {
    let side = (gradcam_core::KPCA_MAX_POSITIONS as f64).sqrt() as usize;
    let big = Array4::<f32>::zeros((1, 2, side + 1, side));
    let err = layer_map(Method::KpcaCam, big.view(), None).expect_err("too large");
    assert!(err.to_string().contains("deeper layer"), "{err}");
    let small = Array4::<f32>::from_shape_fn((1, 2, 8, 8), |(_, c, y, x)| (c + y * x) as f32);
    assert_eq!(layer_map(Method::KpcaCam, small.view(), None).expect("runs").dim(), (1, 8, 8));
}
