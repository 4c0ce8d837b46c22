//! Explain latency of the ort backend vs ONNX Runtime forward-only of the original model.
//!
//! ```text
//! cargo bench -p backend-ort --features ort --bench explain -- \
//!     [--models-dir target/bench-models] [--batches 1,16] [--runs 5] [--threads 2] [--models resnet50,...]
//! ```
//! Models: `backend-ort/bench/export_models.py` (dynamo exporter, dynamic batch, external data).
//! For each model and batch it prints one JSON line: GradCAM `explain` time (one ORT run for
//! forward + generated backward, CAM math, upsampling to 224², maps on the host) and ORT's
//! forward of the original model, medians of `--runs` calls after one warm-up, and their ratio
//! (goal <= 1.10). Layers are those tools/bench_pytorch_gradcam.py uses, so the numbers compare
//! one to one with pytorch-grad-cam (`scripts/bench-cpu` runs all of them and prints a table).

use backend_ort::OnnxModel;
use gradcam_core::{explain, CamModel, CamOptions, Method, Target};
use ndarray::Array4;

#[path = "../../bench/common.rs"]
mod common;
use common::{median_secs, Args};

fn main() {
    let args = Args::parse(0);
    for (arch, layer) in args.models() {
        let path = args.models_dir.join(format!("{arch}.onnx"));
        if !path.exists() {
            eprintln!("{} missing: run backend-ort/bench/export_models.py", path.display());
            std::process::exit(1);
        }
        let mut model = OnnxModel::load_with_threads(&path, args.threads).expect("load");
        for &batch in &args.batches {
            let input = Array4::from_shape_fn((batch, 3, 224, 224), |(b, c, h, w)| {
                ((b * 7 + c * 13 + h * 3 + w) % 17) as f32 / 17.0 - 0.5
            });
            let forward_s = median_secs(args.runs, || {
                model.forward(input.view()).expect("forward");
            });
            let options = CamOptions::default();
            let explain_s = median_secs(args.runs, || {
                let e = explain(
                    &mut model,
                    input.view(),
                    &[layer],
                    &[Method::GradCam],
                    &Target::top_one(),
                    &options,
                )
                .expect("explain");
                assert_eq!(e[0].maps.dim(), (batch, 224, 224));
            });
            println!(
                "{{\"backend\": \"ort\", \"model\": \"{arch}\", \"layer\": \"{layer}\", \"batch\": {batch}, \
                 \"threads\": {}, \"explain_s\": {explain_s:.5}, \"forward_s\": {forward_s:.5}, \"ratio\": {:.3}, \
                 \"runs\": {}}}",
                args.threads,
                explain_s / forward_s,
                args.runs
            );
        }
    }
}
