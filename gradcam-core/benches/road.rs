//! ROAD's noisy linear imputer on one 3x224x224 image: the sparse system solved for the pixels a
//! percentile of a smooth, off-centre map removes, most and least relevant first. `road-combined`
//! runs 18 of these per image (percentiles 10..90, both orders).
//!
//! `cargo bench -p gradcam-core --bench road`; CPU time of the thread, as `cam_math`.

use std::hint::black_box;
use std::time::Duration;

use criterion::measurement::Measurement;
use criterion::{BenchmarkId, Criterion};
use gradcam_core::{impute, road_keep_mask, ROAD_COMBINED_PERCENTILES};
use ndarray::{Array2, Array3};

#[macro_use]
#[path = "../../bench/micro.rs"]
mod micro;
use micro::filled;

fn bench<M: Measurement>(c: &mut Criterion<M>) {
    let (h, w) = (224, 224);
    let image = Array3::from_shape_vec((3, h, w), filled(3 * h * w, 7, -2.0, 2.0)).unwrap();
    // A blob like a Grad-CAM map: peak at (80, 140), falling off over ~50 pixels.
    let cam = Array2::from_shape_fn((h, w), |(y, x)| {
        let (dy, dx) = (y as f32 - 80.0, x as f32 - 140.0);
        (-(dy * dy + dx * dx) / (2.0 * 50.0 * 50.0)).exp()
    });
    let mut group = c.benchmark_group("road imputer 3x224x224");
    for (name, most) in [("most", true), ("least", false)] {
        for p in [10, 50, 90] {
            let keep = road_keep_mask(cam.view(), f64::from(p), most);
            group.bench_function(BenchmarkId::new(name, p), |bench| {
                bench.iter(|| impute(black_box(image.view()), keep.view(), 0.01, 0).unwrap())
            });
        }
    }
    group.bench_function("road-combined: all 18", |bench| {
        bench.iter(|| {
            for p in ROAD_COMBINED_PERCENTILES {
                for most in [true, false] {
                    let keep = road_keep_mask(cam.view(), f64::from(p), most);
                    black_box(impute(image.view(), keep.view(), 0.01, 0).unwrap());
                }
            }
        })
    });
    group.finish();
}

fn config<M: Measurement>(c: Criterion<M>) -> Criterion<M> {
    c.sample_size(10).warm_up_time(Duration::from_millis(300)).measurement_time(Duration::from_secs(2))
}

thread_cpu_time_main!(bench, config);
