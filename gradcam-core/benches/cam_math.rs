//! The CAM math alone (no model): every method for a ResNet-50 `layer4` batch (B=16, C=2048, 7x7)
//! and for ViT-S tokens (B=16, N=197, D=384, fold to 14x14 included), each from the captured
//! tensors to the scaled per-layer map; plus the upsampling of 16 maps to 224².
//!
//! `cargo bench -p gradcam-core`; times are per batch of 16 images. The math is single-threaded,
//! so the bench measures the thread's CPU time (equal to wall time on an idle machine, and still
//! meaningful on a shared, busy one); `GRADCAM_BENCH_WALL=1` measures wall time instead.

use std::hint::black_box;
use std::time::Duration;

use criterion::measurement::Measurement;
use criterion::{BenchmarkId, Criterion};
use gradcam_core::{
    ablation_weights, layer_map, scale_maps, scorecam_weights, tokens_to_grid, upsample_maps, weighted_sum,
    LegacyRandom, Method,
};
use ndarray::{Array2, Array3, Array4, ArrayView4};

#[macro_use]
#[path = "../../bench/micro.rs"]
mod micro;
use micro::filled;

/// One method from captured (B, C, h, w) tensors to the scaled map; the forward-pass methods start
/// from their recorded per-channel scores.
fn method_map(method: Method, a: ArrayView4<f32>, g: ArrayView4<f32>, scores: &Array2<f32>) -> Array3<f32> {
    let raw = match method {
        Method::ScoreCam => weighted_sum(scorecam_weights(scores.view()).view(), a).unwrap(),
        Method::AblationCam => {
            let original = vec![1.0; scores.nrows()];
            weighted_sum(ablation_weights(&original, scores.view()).view(), a).unwrap()
        }
        Method::RandomCam => {
            let (b, c, _, _) = a.dim();
            weighted_sum(LegacyRandom::new(0).weights(b, c).view(), a).unwrap()
        }
        _ => layer_map(method, a, Some(g)).unwrap(),
    };
    scale_maps(raw.view())
}

fn bench<M: Measurement>(c: &mut Criterion<M>) {
    let (b, ch, h, w) = (16, 2048, 7, 7);
    let a = Array4::from_shape_vec((b, ch, h, w), filled(b * ch * h * w, 1, 0.0, 3.0)).unwrap();
    let g = Array4::from_shape_vec((b, ch, h, w), filled(b * ch * h * w, 2, -1e-3, 1e-3)).unwrap();
    let scores = Array2::from_shape_vec((b, ch), filled(b * ch, 3, 0.5, 1.5)).unwrap();
    let mut group = c.benchmark_group("resnet50 layer4 B=16 C=2048 7x7");
    for method in Method::ALL {
        group.bench_function(BenchmarkId::from_parameter(method), |bench| {
            bench.iter(|| method_map(method, black_box(a.view()), black_box(g.view()), &scores))
        });
    }
    let scaled = method_map(Method::GradCam, a.view(), g.view(), &scores);
    group.bench_function("upsample 16 maps 7x7 -> 224x224", |bench| {
        bench.iter(|| upsample_maps(black_box(scaled.view()), 224, 224))
    });
    group.finish();

    let (n, d) = (197, 384);
    let ta = ndarray::Array3::from_shape_vec((b, n, d), filled(b * n * d, 4, -2.0, 2.0)).unwrap();
    let tg = ndarray::Array3::from_shape_vec((b, n, d), filled(b * n * d, 5, -1e-3, 1e-3)).unwrap();
    let vit_scores = Array2::from_shape_vec((b, d), filled(b * d, 6, 0.5, 1.5)).unwrap();
    let mut group = c.benchmark_group("vit-s tokens B=16 N=197 D=384");
    group.bench_function("tokens_to_grid (activations)", |bench| {
        bench.iter(|| tokens_to_grid(black_box(ta.view()), (224, 224), None).unwrap())
    });
    for method in Method::ALL {
        group.bench_function(BenchmarkId::from_parameter(method), |bench| {
            bench.iter(|| {
                let a = tokens_to_grid(black_box(ta.view()), (224, 224), None).unwrap();
                let g = tokens_to_grid(black_box(tg.view()), (224, 224), None).unwrap();
                method_map(method, a.view(), g.view(), &vit_scores)
            })
        });
    }
    group.finish();
}

fn config<M: Measurement>(c: Criterion<M>) -> Criterion<M> {
    c.sample_size(10).warm_up_time(Duration::from_millis(300)).measurement_time(Duration::from_secs(1))
}

thread_cpu_time_main!(bench, config);
