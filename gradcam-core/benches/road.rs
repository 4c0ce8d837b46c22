//! ROAD's noisy linear imputer on one 3x224x224 image: the sparse system solved for the pixels a
//! percentile of a smooth, off-centre map removes, most and least relevant first. `road-combined`
//! runs 18 of these per image (percentiles 10..90, both orders).
//!
//! `cargo bench -p gradcam-core --bench road`. The channels of a mask that removes more than 4096
//! pixels are solved on threads of their own, which the default measurement (the calling
//! thread's CPU time, as `cam_math`) does not see: use `GRADCAM_BENCH_WALL=1` on an idle machine.
//!
//! Measured single-threaded (CPU time, release, shared 2-core machine): 1.2 s to remove 90 % most
//! relevant first (45k unknowns, 3 channels), 0.36 s at 50 %, 34 ms at 10 %; all 18 of
//! `road-combined` 9.0 s. pytorch-grad-cam 1.5.7 (SciPy `spsolve`, same map): 1.3 s, 0.48 s,
//! 67 ms, 11.6 s.

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
