//! Every ONNX file of the breadth fixture set loads, lists its standard layer under the PyTorch
//! module path, and differentiates there; the gradient is compared with the reference loosely
//! (the breadth suite, `tests/breadth`, compares every method strictly).
//!
//! ```text
//! GRADCAM_BREADTH=/work/fixtures-breadth cargo test -p backend-ort --features ort \
//!     --test breadth_load -- --ignored --nocapture
//! ```
//! `GRADCAM_BREADTH_ONLY=key1,key2` limits the run to those models.
//! Outside CI: the set takes minutes to generate and to run.
#![cfg(feature = "ort")]

use std::path::{Path, PathBuf};

use backend_ort::OnnxModel;
use gradcam_core::{CamModel, Target};
use ndarray::Ix4;
use tests::{close, layer_view, npy};

fn breadth_dir() -> PathBuf {
    std::env::var_os("GRADCAM_BREADTH").map(PathBuf::from).unwrap_or_else(|| "/work/fixtures-breadth".into())
}

/// Loads `file`, checks `layer` is listed, captures it with the top-1 seed and compares the
/// gradient with `reference` (`None`: no reference to compare with): the gradient and the
/// elements tied at a kink after the layer (`ties.npy`, not compared: another implementation
/// may put them on the other side).
fn check(
    file: &Path,
    layer: &str,
    input: &ndarray::Array4<f32>,
    reference: Option<&(ndarray::ArrayD<f32>, Option<ndarray::ArrayD<bool>>)>,
) -> Result<String, String> {
    let mut model = OnnxModel::load(file).map_err(|e| format!("load: {e}"))?;
    let layers = model.layers().map_err(|e| format!("layers: {e}"))?;
    if !layers.iter().any(|l| l.name == layer) {
        let names: Vec<&str> = layers.iter().map(|l| l.name.as_str()).collect();
        return Err(format!("layer `{layer}` not listed; have {names:?}"));
    }
    let capture =
        model.capture(input.view(), layer, Some(&Target::top_one())).map_err(|e| format!("capture: {e}"))?;
    let gradient = capture.gradient.as_ref().ok_or("capture: no gradient")?;
    match reference {
        Some((want, ties)) => {
            let mut got = layer_view(gradient).to_owned();
            if let Some(ties) = ties.as_ref().filter(|t| t.shape() == got.shape()) {
                ndarray::Zip::from(&mut got).and(want).and(ties).for_each(|g, &w, &t| {
                    if t {
                        *g = w;
                    }
                });
            }
            close(got.view(), want.view(), 1e-3).map(|()| "ok".into()).map_err(|e| format!("gradient: {e}"))
        }
        None => Ok("ok (no reference)".into()),
    }
}

#[test]
#[ignore]
fn every_breadth_file_loads_and_differentiates() {
    let dir = breadth_dir();
    let only: Vec<String> = std::env::var("GRADCAM_BREADTH_ONLY")
        .map(|v| v.split(',').map(str::to_string).collect())
        .unwrap_or_default();
    let mut entries: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .filter_map(|e| e.ok().map(|e| e.path().join("entry.json")))
        .filter(|p| p.exists())
        .collect();
    entries.sort();
    let mut failures = Vec::new();
    for entry in entries {
        let e: serde_json::Value =
            serde_json::from_slice(&std::fs::read(&entry).expect("read entry")).expect("entry json");
        let key = e["dir"].as_str().unwrap_or_default().to_string();
        if !only.is_empty() && !only.contains(&key) {
            continue;
        }
        let layer = e["layer"].as_str().expect("layer");
        let input = npy::<f32>(dir.join(e["input"]["file"].as_str().expect("input file")))
            .into_dimensionality::<Ix4>()
            .expect("input (B, 3, H, W)");
        let ties = dir.join(&key).join("ties.npy");
        let reference = dir.join(&key).join("top1/gradients.npy").exists().then(|| {
            let ties = ties.exists().then(|| npy::<bool>(&ties));
            (npy::<f32>(dir.join(&key).join("top1/gradients.npy")), ties)
        });
        let Some(files) = e["files"].as_object() else { continue };
        for (kind, file) in files {
            let Some(file) = file.as_str().filter(|f| f.ends_with(".onnx")) else { continue };
            let start = std::time::Instant::now();
            let result = check(&dir.join(file), layer, &input, reference.as_ref());
            let secs = start.elapsed().as_secs_f64();
            match &result {
                Ok(s) => eprintln!("{key:<24} {kind:<16} {s} ({secs:.1} s)"),
                Err(err) => {
                    eprintln!("{key:<24} {kind:<16} FAILED ({secs:.1} s): {err}");
                    failures.push(format!("{file}: {err}"));
                }
            }
        }
    }
    assert!(failures.is_empty(), "{} files failed:\n{}", failures.len(), failures.join("\n"));
}
