//! Explain latency of the tch backend vs libtorch forward-only on the same TorchScript model.
//!
//! ```text
//! cargo run --release -p backend-tch --features tch --example bench -- \
//!     [--models-dir target/bench-models] [--device cpu|cuda] [--batches 1,16] [--runs 5] [--threads 2]
//! ```
//! Models come from `backend-tch/bench/make_bench_models.py`. For each model and batch it prints one
//! JSON line: GradCAM `explain` time (input upload, forward, backward w.r.t. the layer, CAM math,
//! upsampling to 224², maps on the host), the no-grad forward optimized for inference (`forward_s`,
//! the goal's baseline: the part of `explain` before the layer runs the same way) and the module's
//! own `forward` as loaded (`script_forward_s`), medians of `--runs` calls after one warm-up, and
//! the ratios. Layers are those tools/bench_pytorch_gradcam.py uses, so the
//! numbers compare one to one (`scripts/bench-cpu`, `backend-tch/bench/gpu.sh`).

use backend_tch::{tch, DeviceChoice, TorchScriptModel};
use gradcam_core::{explain, CamOptions, Method, Target};
use ndarray::Array4;

#[path = "../../bench/common.rs"]
mod common;
use common::{median_secs, Args};

/// Deterministic N(0, 1)-ish input without a rand dependency (sum of uniforms).
fn input(batch: usize) -> Array4<f32> {
    let mut state = 0x2545f4914f6cdd1du64;
    let mut uniform = move || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        (state >> 40) as f32 / (1u64 << 24) as f32
    };
    Array4::from_shape_simple_fn((batch, 3, 224, 224), || (0..4).map(|_| uniform()).sum::<f32>() - 2.0)
}

pub fn main() {
    let args = Args::parse(2);
    if args.threads > 0 {
        tch::set_num_threads(args.threads as i32);
    }
    let device: DeviceChoice =
        args.device.as_deref().unwrap_or("cpu").parse().expect("--device cpu|cuda|auto");
    for (arch, layer) in args.models() {
        let path = args.models_dir.join(format!("{arch}.traced.pt"));
        let mut model = TorchScriptModel::load(&path, device)
            .unwrap_or_else(|e| panic!("{e} (run backend-tch/bench/make_bench_models.py first)"));
        let device = model.device();
        let sync = || {
            if let tch::Device::Cuda(i) = device {
                tch::Cuda::synchronize(i as i64);
            }
        };
        for &batch in &args.batches {
            let x = input(batch);
            let x_t = tch::Tensor::from_slice(x.as_slice().unwrap())
                .view([batch as i64, 3, 224, 224])
                .to_device(device);
            let forward_s = median_secs(args.runs, || {
                let _ = model.forward_tensor(&x_t).unwrap();
                sync();
            });
            let script_forward_s = median_secs(args.runs, || {
                let _ = model.script_forward_tensor(&x_t).unwrap();
                sync();
            });
            let options = CamOptions::default();
            let explain_s = median_secs(args.runs, || {
                let e =
                    explain(&mut model, x.view(), &[layer], &[Method::GradCam], &Target::top_one(), &options)
                        .unwrap();
                assert_eq!(e[0].maps.dim(), (batch, 224, 224));
            });
            println!(
                "{{\"backend\": \"tch\", \"model\": \"{arch}\", \"layer\": \"{layer}\", \"batch\": {batch}, \"device\": \"{device:?}\", \
                 \"threads\": {}, \"explain_s\": {explain_s:.5}, \"forward_s\": {forward_s:.5}, \"ratio\": {:.3}, \
                 \"script_forward_s\": {script_forward_s:.5}, \"explain_img_s\": {:.1}, \"forward_img_s\": {:.1}, \"runs\": {}}}",
                tch::get_num_threads(),
                explain_s / forward_s,
                batch as f64 / explain_s,
                batch as f64 / forward_s,
                args.runs
            );
        }
    }
}
