//! The CAM math alone (no model): every method for a ResNet-50 `layer4` batch (B=16, C=2048, 7x7)
//! and for ViT-S tokens (B=16, N=197, D=384, fold to 14x14 included), each from the captured
//! tensors to the scaled per-layer map; plus the upsampling of 16 maps to 224².
//!
//! `cargo bench -p gradcam-core`; times are per batch of 16 images. The math is single-threaded,
//! so the bench measures the thread's CPU time (equal to wall time on an idle machine, and still
//! meaningful on a shared, busy one); `GRADCAM_BENCH_WALL=1` measures wall time instead.

use std::hint::black_box;
use std::time::Duration;

use criterion::measurement::{Measurement, ValueFormatter, WallTime};
use criterion::{criterion_main, BenchmarkId, Criterion, Throughput};
use gradcam_core::{
    ablation_weights, layer_map, scale_maps, scorecam_weights, tokens_to_grid, upsample_maps, weighted_sum,
    Method,
};
use ndarray::{Array2, Array3, Array4, ArrayView4};

/// Deterministic pseudo-random values in [lo, hi).
fn filled(n: usize, seed: u64, lo: f32, hi: f32) -> Vec<f32> {
    let mut s = seed.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
    (0..n)
        .map(|_| {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            lo + (hi - lo) * ((s >> 40) as f32 / (1u64 << 24) as f32)
        })
        .collect()
}

/// One method from captured (B, C, h, w) tensors to the scaled map; the forward-pass methods start
/// from their recorded per-channel scores.
fn method_map(method: Method, a: ArrayView4<f32>, g: ArrayView4<f32>, scores: &Array2<f32>) -> Array3<f32> {
    let raw = match method {
        Method::ScoreCam => weighted_sum(scorecam_weights(scores.view()).view(), a).unwrap(),
        Method::AblationCam => {
            let original = vec![1.0; scores.nrows()];
            weighted_sum(ablation_weights(&original, scores.view()).view(), a).unwrap()
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

/// CPU time of the calling thread (`CLOCK_THREAD_CPUTIME_ID`).
struct ThreadCpuTime;

fn thread_cpu_now() -> Duration {
    let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: `ts` is a valid, writable timespec; the clock id is a constant libc knows.
    let rc = unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
    assert_eq!(rc, 0, "clock_gettime(CLOCK_THREAD_CPUTIME_ID) failed");
    Duration::new(ts.tv_sec as u64, ts.tv_nsec as u32)
}

impl Measurement for ThreadCpuTime {
    type Intermediate = Duration;
    type Value = Duration;

    fn start(&self) -> Duration {
        thread_cpu_now()
    }
    fn end(&self, start: Duration) -> Duration {
        thread_cpu_now() - start
    }
    fn add(&self, a: &Duration, b: &Duration) -> Duration {
        *a + *b
    }
    fn zero(&self) -> Duration {
        Duration::ZERO
    }
    fn to_f64(&self, value: &Duration) -> f64 {
        value.as_nanos() as f64
    }
    fn formatter(&self) -> &dyn ValueFormatter {
        &CpuFormatter
    }
}

struct CpuFormatter;

impl ValueFormatter for CpuFormatter {
    fn scale_values(&self, ns: f64, values: &mut [f64]) -> &'static str {
        let (factor, unit) = if ns < 1e3 {
            (1.0, "ns cpu")
        } else if ns < 1e6 {
            (1e-3, "µs cpu")
        } else if ns < 1e9 {
            (1e-6, "ms cpu")
        } else {
            (1e-9, "s cpu")
        };
        values.iter_mut().for_each(|v| *v *= factor);
        unit
    }
    fn scale_throughputs(&self, _typical: f64, throughput: &Throughput, values: &mut [f64]) -> &'static str {
        let per = match throughput {
            Throughput::Elements(n) | Throughput::Bytes(n) | Throughput::BytesDecimal(n) => *n as f64,
            _ => 1.0,
        };
        values.iter_mut().for_each(|v| *v = per * 1e9 / *v);
        "/s"
    }
    fn scale_for_machines(&self, _values: &mut [f64]) -> &'static str {
        "ns"
    }
}

fn config<M: Measurement>(c: Criterion<M>) -> Criterion<M> {
    c.sample_size(10).warm_up_time(Duration::from_millis(300)).measurement_time(Duration::from_secs(1))
}

fn benches() {
    if std::env::var_os("GRADCAM_BENCH_WALL").is_some() {
        bench(&mut config(Criterion::default().with_measurement(WallTime)).configure_from_args());
    } else {
        bench(&mut config(Criterion::default().with_measurement(ThreadCpuTime)).configure_from_args());
    }
}

criterion_main!(benches);
