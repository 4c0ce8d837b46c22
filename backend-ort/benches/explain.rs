//! Explain latency (Grad-CAM, default layer, top-1 target) against ONNX Runtime forward-only of
//! the original model, at batch 1 and 16, for resnet50, EfficientNet-Lite0 and ViT-S/16.
//! Goal: explain / forward <= 1.10.
//!
//! Models: `python backend-ort/bench/export_models.py` (writes `target/bench-models`, or set
//! `GRADCAM_BENCH_MODELS`). Run: `cargo bench -p backend-ort --features ort --bench explain [-- FILTER]`.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use backend_ort::OnnxModel;
use gradcam_core::{explain, CamModel, CamOptions, Method, Target};
use ndarray::Array4;

/// Median wall time of `reps` runs after one warm-up.
fn median(reps: usize, mut f: impl FnMut()) -> Duration {
    f();
    let mut times: Vec<Duration> = (0..reps)
        .map(|_| {
            let start = Instant::now();
            f();
            start.elapsed()
        })
        .collect();
    times.sort();
    times[reps / 2]
}

fn main() {
    let dir = std::env::var_os("GRADCAM_BENCH_MODELS")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target/bench-models"));
    let filter: Option<String> = std::env::args().skip(1).find(|a| !a.starts_with('-'));
    println!(
        "| model | layer | batch | ORT forward | capture (fwd+bwd) | explain (GradCAM) | explain / forward |"
    );
    println!("|---|---|---|---|---|---|---|");
    for name in ["resnet50", "tf_efficientnet_lite0", "vit_small_patch16_224"] {
        if filter.as_ref().is_some_and(|f| !name.contains(f.as_str())) {
            continue;
        }
        let path = dir.join(format!("{name}.onnx"));
        if !path.exists() {
            eprintln!("{} missing: run python backend-ort/bench/export_models.py", path.display());
            std::process::exit(1);
        }
        let mut model = OnnxModel::load(&path).expect("load");
        let layer = model.default_layer().expect("default layer");
        for batch in [1usize, 16] {
            let input = Array4::from_shape_fn((batch, 3, 224, 224), |(b, c, h, w)| {
                ((b * 7 + c * 13 + h * 3 + w) % 17) as f32 / 17.0 - 0.5
            });
            let reps = if batch == 1 { 15 } else { 5 };
            let forward = median(reps, || {
                model.forward(input.view()).expect("forward");
            });
            let capture = median(reps, || {
                model.capture(input.view(), &layer, Some(&Target::top_one())).expect("capture");
            });
            let options = CamOptions::default();
            let cam = median(reps, || {
                explain(
                    &mut model,
                    input.view(),
                    &[&layer],
                    &[Method::GradCam],
                    &Target::top_one(),
                    &options,
                )
                .expect("explain");
            });
            println!(
                "| {name} | {layer} | {batch} | {:.1} ms | {:.1} ms | {:.1} ms | {:.2} |",
                forward.as_secs_f64() * 1e3,
                capture.as_secs_f64() * 1e3,
                cam.as_secs_f64() * 1e3,
                cam.as_secs_f64() / forward.as_secs_f64()
            );
        }
    }
}
