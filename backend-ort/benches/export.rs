//! Latency of exported explainers vs the original model's forward, both in ONNX Runtime.
//!
//! ```text
//! cargo bench -p backend-ort --features ort --bench export -- \
//!     [--models-dir target/bench-models] [--batches 1,16] [--runs 5] [--threads 2] [--models resnet50,...]
//! ```
//! Models: `backend-ort/bench/export_models.py` (timm, random weights, dynamo exporter, dynamic
//! batch, external data); layers as `benches/explain.rs`. For each model it exports two explainers
//! (GradCAM alone, and all six exportable methods) into a temporary folder, then for each batch
//! times one run of the original model and one run of each explainer, each in the same kind of
//! plain ONNX Runtime session ([`plain_session`]: input copied in, outputs copied out; the explainer
//! through `ExplainerSession::run`, class −1: forward, in-graph seed, backward to the layer, CAM,
//! upsampling to 224², maps on the host), medians of `--runs` rounds after one warm-up round (each
//! round runs the three in turn, so that load changes on a shared machine hit them alike), and prints
//! one JSON line per model, batch and explainer with the ratio explainer ÷ forward (goal <= 1.15),
//! then a table.
//!
//! `--cpu-time` measures the calling thread's CPU time instead of wall time: with `--threads 1`
//! ONNX Runtime runs every node on that thread, so the ratio holds on a machine whose cores are
//! shared (time spent waiting for a core is not counted).

use backend_ort::export::{
    export_explainer, plain_session, ExplainerSession, ExportOptions, EXPORTABLE_METHODS,
};
use gradcam_core::Method;
use ndarray::Array4;

#[path = "../../bench/common.rs"]
#[allow(dead_code)] // its wall-time median: this benchmark interleaves its own
mod common;
use common::Args;

/// CPU time of the calling thread.
fn thread_cpu_secs() -> f64 {
    let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: `ts` is a valid, writable timespec; the clock id is a constant Linux supports.
    let rc = unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
    assert_eq!(rc, 0, "clock_gettime(CLOCK_THREAD_CPUTIME_ID) failed");
    ts.tv_sec as f64 + ts.tv_nsec as f64 * 1e-9
}

/// Median time of each of `jobs` over `runs` rounds after one warm-up round; every round runs
/// each job once, in turn, so that a change of load on a shared machine hits all of them alike.
fn interleaved_medians(runs: usize, cpu_time: bool, jobs: &mut [&mut dyn FnMut()]) -> Vec<f64> {
    let clock = std::time::Instant::now();
    let now = || if cpu_time { thread_cpu_secs() } else { clock.elapsed().as_secs_f64() };
    let mut times = vec![Vec::with_capacity(runs); jobs.len()];
    for round in 0..=runs {
        for (job, t) in jobs.iter_mut().zip(times.iter_mut()) {
            let start = now();
            job();
            if round > 0 {
                t.push(now() - start);
            }
        }
    }
    times
        .into_iter()
        .map(|mut t| {
            t.sort_by(f64::total_cmp);
            t[t.len() / 2]
        })
        .collect()
}

fn main() {
    let args = Args::parse(2);
    let cpu_time = std::env::args().any(|a| a == "--cpu-time");
    let dir = std::env::temp_dir().join(format!("gradcam-export-bench-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("create a temporary folder");
    let mut rows = Vec::new();
    for (arch, layer) in args.models() {
        let path = args.models_dir.join(format!("{arch}.onnx"));
        if !path.exists() {
            eprintln!("{} missing: run backend-ort/bench/export_models.py", path.display());
            std::process::exit(1);
        }
        // The source in the same kind of session as the explainers: ONNX Runtime's defaults.
        let mut source = plain_session(&path, args.threads).expect("load");
        let (input_name, logits_name) =
            (source.inputs()[0].name().to_string(), source.outputs()[0].name().to_string());
        let variants: [(&str, Vec<Method>); 2] =
            [("gradcam", vec![Method::GradCam]), ("all six", EXPORTABLE_METHODS.to_vec())];
        let mut explainers = Vec::new();
        for (label, methods) in variants {
            let options = ExportOptions {
                layers: vec![layer.into()],
                methods,
                threads: args.threads,
                ..ExportOptions::default()
            };
            let out = dir.join(format!("{arch}.{}.onnx", label.replace(' ', "_")));
            let exported = export_explainer(&path, &out, &options).expect("export");
            explainers
                .push((label, ExplainerSession::load(&exported.path, args.threads).expect("load explainer")));
        }
        for &batch in &args.batches {
            let input = Array4::from_shape_fn((batch, 3, 224, 224), |(b, c, h, w)| {
                ((b * 7 + c * 13 + h * 3 + w) % 17) as f32 / 17.0 - 0.5
            });
            let classes = vec![-1i64; batch];
            // As `ExplainerSession::run` does: the input copied in, the logits copied out.
            let mut forward = || {
                let shape: Vec<i64> = input.shape().iter().map(|&d| d as i64).collect();
                let image =
                    ort::value::Tensor::from_array((shape, input.iter().copied().collect::<Vec<f32>>()))
                        .expect("make the input");
                let outputs = source.run(ort::inputs![input_name.as_str() => image]).expect("forward");
                let logits = outputs.get(logits_name.as_str()).expect("the logits");
                logits.try_extract_array::<f32>().expect("read the logits").to_owned();
            };
            let [(one_label, one), (six_label, six)] = &mut explainers[..] else {
                unreachable!("two explainers")
            };
            let mut run_one = || {
                let out = one.run(input.view(), &classes).expect("run the explainer");
                assert_eq!(out.maps[0].1.dim(), (batch, 224, 224));
            };
            let mut run_six = || {
                six.run(input.view(), &classes).expect("run the explainer");
            };
            let times =
                interleaved_medians(args.runs, cpu_time, &mut [&mut forward, &mut run_one, &mut run_six]);
            let forward_s = times[0];
            for (label, explainer_s) in [(*one_label, times[1]), (*six_label, times[2])] {
                println!(
                    "{{\"model\": \"{arch}\", \"layer\": \"{layer}\", \"methods\": \"{label}\", \"batch\": {batch}, \
                     \"threads\": {}, \"explainer_s\": {explainer_s:.5}, \"forward_s\": {forward_s:.5}, \
                     \"ratio\": {:.3}, \"runs\": {}, \"clock\": \"{}\"}}",
                    args.threads,
                    explainer_s / forward_s,
                    args.runs,
                    if cpu_time { "thread cpu" } else { "wall" }
                );
                rows.push((arch, layer, label, batch, explainer_s, forward_s));
            }
        }
    }
    let _ = std::fs::remove_dir_all(&dir);
    println!("\n| model, layer | batch | forward | explainer (GradCAM) | ÷ forward | explainer (all six) | ÷ forward |");
    println!("|---|---|---|---|---|---|---|");
    for pair in rows.chunks(2) {
        let [(arch, layer, _, batch, one, forward), (_, _, _, _, six, _)] = pair else { continue };
        println!(
            "| {arch}, `{layer}` | {batch} | {forward:.4} s | {one:.4} s | {:.2} | {six:.4} s | {:.2} |",
            one / forward,
            six / forward
        );
    }
    println!(
        "goal: explainer <= 1.15x the original model's forward (ONNX Runtime, {} threads)",
        args.threads
    );
}
