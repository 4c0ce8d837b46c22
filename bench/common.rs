//! What the backends' latency benchmarks share (`backend-tch/examples/bench.rs`,
//! `backend-ort/benches/explain.rs`): the models and layers, which are those
//! `tools/bench_pytorch_gradcam.py` times so the numbers compare one to one, the command line,
//! and the timing. Included by path (`#[path]`), so no crate depends on another for it.

use std::path::PathBuf;
use std::time::Instant;

/// timm architecture and the layer explained (pytorch-grad-cam's usual choice for each).
pub const MODELS: [(&str, &str); 3] = [
    ("resnet50", "layer4"),
    ("tf_efficientnet_lite0", "blocks.6"),
    ("vit_small_patch16_224", "blocks.11.norm1"),
];

/// `[--models-dir DIR] [--batches 1,16] [--runs 5] [--threads N] [--models a,b] [--layer L]
/// [--device D]`.
pub struct Args {
    pub models_dir: PathBuf,
    pub batches: Vec<usize>,
    pub runs: usize,
    /// 0: the library's default.
    pub threads: usize,
    pub only: Option<String>,
    /// Explain this layer instead of each model's usual one.
    pub layer: Option<String>,
    pub device: Option<String>,
}

impl Args {
    pub fn parse(default_threads: usize) -> Args {
        let mut args = Args {
            models_dir: std::env::var_os("GRADCAM_BENCH_MODELS")
                .map(PathBuf::from)
                .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target/bench-models")),
            batches: vec![1, 16],
            runs: 5,
            threads: default_threads,
            only: None,
            layer: None,
            device: None,
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
                "--layer" => args.layer = Some(value()),
                "--device" => args.device = Some(value()),
                _ => {} // `cargo bench` passes --bench
            }
        }
        args
    }

    /// The models to run, with their layers: all of [`MODELS`], or those `--models` names.
    pub fn models(&self) -> impl Iterator<Item = (&'static str, &str)> + '_ {
        MODELS
            .into_iter()
            .filter(|(arch, _)| self.only.as_deref().is_none_or(|only| only.split(',').any(|m| m == *arch)))
            .map(|(arch, layer)| (arch, self.layer.as_deref().unwrap_or(layer)))
    }
}

/// Median wall time of `runs` calls after one warm-up call.
pub fn median_secs(runs: usize, mut f: impl FnMut()) -> f64 {
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
