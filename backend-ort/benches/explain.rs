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

use std::path::PathBuf;
use std::time::Instant;

use backend_ort::OnnxModel;
use gradcam_core::{explain, CamModel, CamOptions, Method, Target};
use ndarray::Array4;

const MODELS: [(&str, &str); 3] = [
    ("resnet50", "layer4"),
    ("tf_efficientnet_lite0", "blocks.6"),
    ("vit_small_patch16_224", "blocks.11.norm1"),
];

struct Args {
    models_dir: PathBuf,
    batches: Vec<usize>,
    runs: usize,
    threads: usize,
    only: Option<String>,
}

fn parse_args() -> Args {
    let mut args = Args {
        models_dir: std::env::var_os("GRADCAM_BENCH_MODELS")
            .map(PathBuf::from)
            .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target/bench-models")),
        batches: vec![1, 16],
        runs: 5,
        threads: 0,
        only: None,
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let mut value = || it.next().unwrap_or_else(|| panic!("{flag} needs a value"));
        match flag.as_str() {
            "--models-dir" => args.models_dir = value().into(),
            "--batches" => {
                args.batches = value().split(',').map(|b| b.parse().expect("batch size")).collect()
            }
            "--runs" => args.runs = value().parse().expect("--runs N"),
            "--threads" => args.threads = value().parse().expect("--threads N"),
            "--models" => args.only = Some(value()),
            _ => {} // `cargo bench` passes --bench
        }
    }
    args
}

/// Median wall time of `runs` calls after one warm-up call.
fn median_secs(runs: usize, mut f: impl FnMut()) -> f64 {
    f();
    let mut times: Vec<f64> = (0..runs)
        .map(|_| {
            let t = Instant::now();
            f();
            t.elapsed().as_secs_f64()
        })
        .collect();
    times.sort_by(f64::total_cmp);
    times[times.len() / 2]
}

fn main() {
    let args = parse_args();
    for (arch, layer) in MODELS {
        if args.only.as_deref().is_some_and(|only| !only.split(',').any(|m| m == arch)) {
            continue;
        }
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
