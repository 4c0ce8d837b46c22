//! Shared helpers of the candle backend's tests: the generated model fixtures and comparisons.

#![allow(dead_code)]

use std::path::{Path, PathBuf};

use ndarray::{ArrayD, ArrayView, Dimension};
use ndarray_npy::ReadNpyExt;

/// The model fixtures folder (`$GRADCAM_FIXTURES`, else `<workspace>/target/fixtures`). Panics,
/// never skips, when they have not been generated.
pub fn fixtures() -> PathBuf {
    let dir = std::env::var_os("GRADCAM_FIXTURES")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("..").join("target").join("fixtures"));
    assert!(
        dir.join("manifest.json").is_file(),
        "model fixtures not found in {}: run scripts/test-all (it generates the model fixtures)",
        dir.display()
    );
    dir
}

/// The fixtures' manifest.
pub fn manifest() -> serde_json::Value {
    let text = std::fs::read_to_string(fixtures().join("manifest.json")).expect("manifest.json");
    serde_json::from_str(&text).expect("manifest.json is JSON")
}

/// A `.npy` file of f32 under the fixtures folder.
pub fn npy(rel: impl AsRef<Path>) -> ArrayD<f32> {
    let path = fixtures().join(rel);
    let file = std::fs::File::open(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    ArrayD::<f32>::read_npy(file).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// A `.npy` file of i64 under the fixtures folder.
pub fn npy_i64(rel: impl AsRef<Path>) -> Vec<i64> {
    let path = fixtures().join(rel);
    let file = std::fs::File::open(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    ArrayD::<i64>::read_npy(file)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
        .into_raw_vec_and_offset()
        .0
}

/// Asserts `actual` matches `expected` to `rel` relative to `expected`'s largest magnitude.
pub fn assert_close<D: Dimension, E: Dimension>(
    what: &str,
    actual: ArrayView<f32, D>,
    expected: ArrayView<f32, E>,
    rel: f32,
) {
    assert_eq!(actual.shape(), expected.shape(), "{what}: shape");
    let scale = expected.iter().fold(0f32, |m, v| m.max(v.abs())).max(1e-12);
    let (worst, at) = actual
        .iter()
        .zip(expected.iter())
        .enumerate()
        .map(|(i, (a, e))| ((a - e).abs(), i))
        .fold((0f32, 0), |best, cur| if cur.0 > best.0 || cur.0.is_nan() { cur } else { best });
    assert!(
        worst <= rel * scale,
        "{what}: max |diff| {worst:e} at flat index {at} exceeds {rel:e} x max|expected| {scale:e}"
    );
}

/// Asserts two arrays agree to an absolute tolerance (for maps in [0, 1]).
pub fn assert_abs<D: Dimension, E: Dimension>(
    what: &str,
    actual: ArrayView<f32, D>,
    expected: ArrayView<f32, E>,
    tol: f32,
) {
    assert_eq!(actual.shape(), expected.shape(), "{what}: shape");
    let worst = actual.iter().zip(expected.iter()).map(|(a, e)| (a - e).abs()).fold(0f32, f32::max);
    assert!(worst <= tol, "{what}: max |diff| {worst:e} exceeds {tol:e}");
}

/// Like [`assert_close`], for gradients through ReLU/ReLU6: a pre-activation within float
/// rounding of a threshold (the pretrained Lite0 has one 3e-6 from 0) can take the other side in
/// candle than in PyTorch, which changes the gradient at that pixel only. So at most `outliers`
/// (a fraction) of the elements may exceed `rel`, and none may exceed `outlier_rel`. Returns how
/// many did.
pub fn assert_close_but_ties<D: Dimension, E: Dimension>(
    what: &str,
    actual: ArrayView<f32, D>,
    expected: ArrayView<f32, E>,
    rel: f32,
    outliers: f64,
    outlier_rel: f32,
) -> usize {
    assert_eq!(actual.shape(), expected.shape(), "{what}: shape");
    let scale = expected.iter().fold(0f32, |m, v| m.max(v.abs())).max(1e-12);
    let diffs: Vec<f32> = actual.iter().zip(expected.iter()).map(|(a, e)| (a - e).abs() / scale).collect();
    let over = diffs.iter().filter(|d| d.is_nan() || **d > rel).count();
    let worst = diffs.iter().copied().fold(0f32, f32::max);
    assert!(
        (over as f64) <= outliers * diffs.len() as f64 && worst <= outlier_rel,
        "{what}: {over} of {} elements differ by more than {rel:e} (relative), the worst by {worst:e}",
        diffs.len()
    );
    over
}
