//! What the gradcam-core and gradcam-viz micro-benchmarks share (included by path, like
//! `common.rs`): a criterion measurement of the calling thread's CPU time
//! (`CLOCK_THREAD_CPUTIME_ID`: the time the code ran, not the time it waited for a core, so
//! timings on a shared machine mean something; `GRADCAM_BENCH_WALL=1` measures wall time
//! instead), and deterministic inputs.

use std::time::Duration;

use criterion::measurement::{Measurement, ValueFormatter};
use criterion::Throughput;

/// CPU time of the calling thread.
pub struct ThreadCpuTime;

fn thread_cpu_now() -> Duration {
    let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: `ts` is a valid, writable timespec and the clock id a libc constant.
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
        &CpuNanos
    }
}

/// Formats nanoseconds of CPU time like criterion's wall-time formatter, marked "cpu".
struct CpuNanos;

impl ValueFormatter for CpuNanos {
    fn scale_values(&self, typical: f64, values: &mut [f64]) -> &'static str {
        let (factor, unit) = match typical {
            t if t < 1e3 => (1.0, "ns cpu"),
            t if t < 1e6 => (1e-3, "µs cpu"),
            t if t < 1e9 => (1e-6, "ms cpu"),
            _ => (1e-9, "s cpu"),
        };
        values.iter_mut().for_each(|v| *v *= factor);
        unit
    }
    fn scale_throughputs(&self, _: f64, throughput: &Throughput, values: &mut [f64]) -> &'static str {
        let per = match throughput {
            Throughput::Elements(n) | Throughput::Bytes(n) | Throughput::BytesDecimal(n) => *n as f64,
            _ => 1.0,
        };
        values.iter_mut().for_each(|v| *v = per * 1e9 / *v);
        "/s"
    }
    fn scale_for_machines(&self, _: &mut [f64]) -> &'static str {
        "ns"
    }
}

/// The benchmark's `main`: `$bench` (generic over the measurement) under `$config`, measuring
/// [`ThreadCpuTime`], or wall time when `GRADCAM_BENCH_WALL` is set.
macro_rules! thread_cpu_time_main {
    ($bench:ident, $config:ident) => {
        fn benches() {
            use criterion::measurement::WallTime;
            use criterion::Criterion;
            if std::env::var_os("GRADCAM_BENCH_WALL").is_some() {
                $bench(&mut $config(Criterion::default().with_measurement(WallTime)).configure_from_args());
            } else {
                let cpu = Criterion::default().with_measurement(crate::micro::ThreadCpuTime);
                $bench(&mut $config(cpu).configure_from_args());
            }
        }
        criterion::criterion_main!(benches);
    };
}

/// Deterministic pseudo-random values in [lo, hi) (xorshift).
pub fn filled(n: usize, seed: u64, lo: f32, hi: f32) -> Vec<f32> {
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
