//! Shared by the tch backend's tests: where the model fixtures are, and comparisons.

#![allow(dead_code)]

use std::path::{Path, PathBuf};

use ndarray::{ArrayD, ArrayView, Dimension};

/// `$GRADCAM_FIXTURES`, else `<workspace>/target/fixtures`. Panics (never skips) when absent.
pub fn fixtures() -> PathBuf {
    let dir = std::env::var_os("GRADCAM_FIXTURES")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/fixtures"));
    assert!(
        dir.join("manifest.json").is_file(),
        "model fixtures missing in {}: run scripts/test-all (it generates the model fixtures)",
        dir.display()
    );
    dir
}

/// The fixtures' manifest.
pub fn manifest() -> serde_json::Value {
    let text = std::fs::read_to_string(fixtures().join("manifest.json")).expect("read manifest.json");
    serde_json::from_str(&text).expect("parse manifest.json")
}

/// Reads an f32 `.npy` fixture.
pub fn npy(path: impl AsRef<Path>) -> ArrayD<f32> {
    let path = fixtures().join(path);
    ndarray_npy::read_npy(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// Reads an int64 `.npy` fixture.
pub fn npy_i64(path: impl AsRef<Path>) -> ArrayD<i64> {
    let path = fixtures().join(path);
    ndarray_npy::read_npy(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// Largest absolute difference; panics on a shape mismatch.
pub fn max_abs_diff<D: Dimension, E: Dimension>(got: ArrayView<f32, D>, want: ArrayView<f32, E>) -> f32 {
    assert_eq!(got.shape(), want.shape(), "shapes differ");
    got.iter().zip(want.iter()).map(|(a, b)| (a - b).abs()).fold(0.0, f32::max)
}

/// Asserts `|got - want| <= tol * max(1, max|want|)` everywhere.
pub fn assert_close<D: Dimension, E: Dimension>(
    what: &str,
    got: ArrayView<f32, D>,
    want: ArrayView<f32, E>,
    tol: f32,
) {
    let scale = want.iter().fold(1.0f32, |m, v| m.max(v.abs()));
    let diff = max_abs_diff(got, want);
    assert!(diff <= tol * scale, "{what}: max |diff| {diff} > {tol} x {scale}");
}
