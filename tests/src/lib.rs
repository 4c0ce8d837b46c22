//! Cross-backend and end-to-end tests for gradcam-rs.
//!
//! This crate holds what no single crate can test alone: the same model, exported to each
//! backend's format, gives the same CAMs in every backend (`tests/cross_backend.rs`). The CLI's
//! end-to-end tests live next to it in `tests/cli/`, but belong to the root package (see there).
//!
//! The library part finds the generated model fixtures and opens each fixture model in every
//! backend compiled in.

use std::path::{Path, PathBuf};

use gradcam_core::{CamModel, Method};

/// What a test says when the generated model fixtures are missing.
pub const MISSING_FIXTURES: &str = "run scripts/test-all (it generates the model fixtures)";

/// The model fixtures folder: `$GRADCAM_FIXTURES`, else `<workspace>/target/fixtures`.
pub fn fixtures_dir() -> PathBuf {
    match std::env::var_os("GRADCAM_FIXTURES") {
        Some(dir) if !dir.is_empty() => PathBuf::from(dir),
        _ => Path::new(env!("CARGO_MANIFEST_DIR")).join("..").join("target").join("fixtures"),
    }
}

/// `path`, or a panic telling how to generate it.
pub fn require(path: PathBuf) -> PathBuf {
    assert!(path.exists(), "model fixture {} is missing: {MISSING_FIXTURES}", path.display());
    path
}

/// A fixture model: its key in the fixtures folder, its timm architecture and its layers.
#[derive(Clone, Copy, Debug)]
pub struct FixtureModel {
    pub key: &'static str,
    pub arch: &'static str,
    pub layers: &'static [&'static str],
}

pub const RESNET18: FixtureModel =
    FixtureModel { key: "resnet18", arch: "resnet18", layers: &["layer4", "layer4.1", "layer3"] };
pub const VIT_TINY: FixtureModel =
    FixtureModel { key: "vit_tiny", arch: "vit_tiny_patch16_224", layers: &["blocks.11.norm1"] };
pub const LITE0: FixtureModel =
    FixtureModel { key: "lite0", arch: "tf_efficientnet_lite0", layers: &["blocks.6", "bn2"] };

/// The fixture files' name for a method's expected CAM (`cam_<name>.npy`).
pub fn fixture_name(method: Method) -> String {
    method.name().replace("++", "pp").replace('-', "_")
}

/// One fixture model opened in one backend, e.g. `tch traced`.
pub struct Opened {
    pub label: String,
    pub model: Box<dyn CamModel>,
}

/// The fixture model in every format each compiled-in backend reads: candle (safetensors),
/// tch (traced and, where timm allows, scripted TorchScript), ort (legacy and dynamo ONNX).
/// Panics with [`MISSING_FIXTURES`] when a file a compiled-in backend needs is absent.
pub fn open_all(model: FixtureModel) -> Vec<Opened> {
    let dir = fixtures_dir();
    #[allow(unused_mut)]
    let mut opened: Vec<Opened> = Vec::new();
    #[cfg(feature = "candle")]
    {
        let path = require(dir.join(format!("{}.safetensors", model.key)));
        let m = backend_candle::CandleModel::from_safetensors(&path, model.arch)
            .unwrap_or_else(|e| panic!("candle cannot load {}: {e}", path.display()));
        opened.push(Opened { label: "candle".into(), model: Box::new(m) });
    }
    #[cfg(feature = "tch")]
    {
        for kind in ["traced", "scripted"] {
            let path = dir.join(format!("{}.{kind}.pt", model.key));
            if kind == "scripted" && !path.exists() {
                // timm cannot script every model; the fixture script then writes only the trace.
                continue;
            }
            let path = require(path);
            let m = backend_tch::TorchScriptModel::load(&path, backend_tch::DeviceChoice::Cpu)
                .unwrap_or_else(|e| panic!("tch cannot load {}: {e}", path.display()));
            opened.push(Opened { label: format!("tch {kind}"), model: Box::new(m) });
        }
    }
    #[cfg(feature = "ort")]
    {
        for kind in ["legacy", "dynamo"] {
            let path = require(dir.join(format!("{}.{kind}.onnx", model.key)));
            let m = backend_ort::OnnxModel::load(&path)
                .unwrap_or_else(|e| panic!("ort cannot load {}: {e}", path.display()));
            opened.push(Opened { label: format!("ort {kind}"), model: Box::new(m) });
        }
    }
    let _ = (&dir, model);
    opened
}

/// Largest absolute difference of two arrays of one shape.
pub fn max_abs_diff<D: ndarray::Dimension>(a: &ndarray::Array<f32, D>, b: &ndarray::Array<f32, D>) -> f32 {
    assert_eq!(a.shape(), b.shape(), "shapes differ");
    a.iter().zip(b).map(|(x, y)| (x - y).abs()).fold(0.0, f32::max)
}
