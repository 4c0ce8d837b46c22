//! Explain latency (Grad-CAM, default layer, top-1 target) against candle's own forward-only
//! time on the same model, at batch 1 and 16, for the shipped EfficientNet-Lite0 and a
//! randomly initialised ResNet-50. Goal: explain / forward <= 1.10. Also `--aug-smooth`'s
//! explain against the plain one: goal 6x (six augmented passes) and no more.
//!
//! `cargo bench -p backend-candle --features candle --bench explain [-- FILTER]`

use std::collections::HashMap;
use std::path::Path;
use std::time::{Duration, Instant};

use backend_candle::CandleModel;
use candle_core::{DType, Device, Tensor};
use gradcam_core::{explain, CamModel, CamOptions, Method, Target};
use ndarray::Array4;

/// A timm `resnet50` state dict with random (He-normal) convolutions and identity batch norms.
fn random_resnet50() -> candle_core::Result<HashMap<String, Tensor>> {
    let dev = Device::Cpu;
    let mut t = HashMap::new();
    let conv = |t: &mut HashMap<String, Tensor>, name: &str, o: usize, i: usize, k: usize| {
        let std = (2.0 / (i * k * k) as f64).sqrt();
        t.insert(format!("{name}.weight"), Tensor::randn(0f32, std as f32, (o, i, k, k), &dev)?);
        candle_core::Result::Ok(())
    };
    let bn = |t: &mut HashMap<String, Tensor>, name: &str, c: usize| -> candle_core::Result<()> {
        for (p, v) in [("weight", 1.0), ("bias", 0.0), ("running_mean", 0.0), ("running_var", 1.0)] {
            t.insert(format!("{name}.{p}"), Tensor::full(v as f32, c, &Device::Cpu)?);
        }
        Ok(())
    };
    conv(&mut t, "conv1", 64, 3, 7)?;
    bn(&mut t, "bn1", 64)?;
    let mut inplanes = 64;
    for (s, (planes, blocks)) in [(64, 3), (128, 4), (256, 6), (512, 3)].into_iter().enumerate() {
        for b in 0..blocks {
            let n = format!("layer{}.{b}", s + 1);
            conv(&mut t, &format!("{n}.conv1"), planes, inplanes, 1)?;
            bn(&mut t, &format!("{n}.bn1"), planes)?;
            conv(&mut t, &format!("{n}.conv2"), planes, planes, 3)?;
            bn(&mut t, &format!("{n}.bn2"), planes)?;
            conv(&mut t, &format!("{n}.conv3"), planes * 4, planes, 1)?;
            bn(&mut t, &format!("{n}.bn3"), planes * 4)?;
            if b == 0 {
                conv(&mut t, &format!("{n}.downsample.0"), planes * 4, inplanes, 1)?;
                bn(&mut t, &format!("{n}.downsample.1"), planes * 4)?;
            }
            inplanes = planes * 4;
        }
    }
    t.insert("fc.weight".into(), Tensor::randn(0f32, 0.01, (1000, 2048), &dev)?);
    t.insert("fc.bias".into(), Tensor::zeros(1000, DType::F32, &dev)?);
    Ok(t)
}

/// CPU time of every thread of this process so far (`/proc/self/task/*/schedstat`, Linux),
/// which a machine shared with other work disturbs far less than wall time.
fn cpu_time() -> Duration {
    let tasks =
        std::fs::read_dir("/proc/self/task").map(|d| d.flatten().collect::<Vec<_>>()).unwrap_or_default();
    let ns: u64 = tasks
        .iter()
        .filter_map(|t| std::fs::read_to_string(t.path().join("schedstat")).ok())
        .filter_map(|s| s.split_whitespace().next().and_then(|v| v.parse::<u64>().ok()))
        .sum();
    Duration::from_nanos(ns)
}

/// One run's (wall, cpu) time.
fn measure(f: &mut impl FnMut()) -> (Duration, Duration) {
    let (wall, cpu) = (Instant::now(), cpu_time());
    f();
    (wall.elapsed(), cpu_time().saturating_sub(cpu))
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn bench(name: &str, model: &mut CandleModel, reps: [usize; 2]) {
    let layer = model.default_layer().expect("default layer");
    for (batch, reps) in [1usize, 16].into_iter().zip(reps) {
        let input = Array4::from_shape_fn((batch, 3, 224, 224), |(b, c, y, x)| {
            (((b * 7 + c * 13 + y * 3 + x * 5) % 255) as f32 / 127.5) - 1.0
        });
        let tensor =
            Tensor::from_slice(input.as_slice().expect("standard layout"), input.shape(), &Device::Cpu)
                .expect("input tensor");
        let target = Target::top_one();
        let options = CamOptions::default();
        let smooth = CamOptions { aug_smooth: true, ..CamOptions::default() };
        // Warm-up.
        std::hint::black_box(model.forward_tensor(&tensor).expect("forward"));
        let mut fwd = Vec::new();
        let mut exp = Vec::new();
        let mut aug = Vec::new();
        // Interleaved, so that load changes on a shared machine hit both alike.
        for _ in 0..reps {
            fwd.push(measure(&mut || {
                std::hint::black_box(model.forward_tensor(&tensor).expect("forward"));
            }));
            exp.push(measure(&mut || {
                let e =
                    explain(model, input.view(), &[layer.as_str()], &[Method::GradCam], &target, &options);
                std::hint::black_box(e.expect("explain"));
            }));
            if batch == 1 {
                aug.push(measure(&mut || {
                    let e =
                        explain(model, input.view(), &[layer.as_str()], &[Method::GradCam], &target, &smooth);
                    std::hint::black_box(e.expect("explain --aug-smooth"));
                }));
            }
        }
        let ms = |v: &[(Duration, Duration)], cpu: bool| {
            median(v.iter().map(|(w, c)| if cpu { c } else { w }.as_secs_f64() * 1e3).collect())
        };
        let (fw, fc, ew, ec) = (ms(&fwd, false), ms(&fwd, true), ms(&exp, false), ms(&exp, true));
        println!(
            "{name:<22} {layer:<6} b{batch:<2} | wall: forward {fw:>8.1} ms, explain {ew:>8.1} ms, ratio {:.3} \
             | cpu: forward {fc:>8.1} ms, explain {ec:>8.1} ms, ratio {:.3}",
            ew / fw,
            ec / fc
        );
        if !aug.is_empty() {
            let (aw, ac) = (ms(&aug, false), ms(&aug, true));
            println!(
                "{name:<22} {layer:<6} b{batch:<2} | aug-smooth: wall {aw:>8.1} ms ({:.2}x explain), \
                 cpu {ac:>8.1} ms ({:.2}x explain; goal 6)",
                aw / ew,
                ac / ec
            );
        }
    }
}

fn main() {
    let filter = std::env::args().skip(1).find(|a| !a.starts_with('-')).unwrap_or_default();
    // GRADCAM_ROOT: the workspace, when the binary runs elsewhere than where it was built.
    let root = std::env::var_os("GRADCAM_ROOT")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join(".."));
    if "tf_efficientnet_lite0".contains(&filter) {
        let path = root.join("assets/models/tf_efficientnet_lite0.safetensors");
        let mut lite = CandleModel::from_safetensors(&path, "tf_efficientnet_lite0").expect("shipped Lite0");
        bench("tf_efficientnet_lite0", &mut lite, [21, 5]);
    }
    if "resnet50".contains(&filter) {
        let dir = std::env::temp_dir().join(format!("gradcam-candle-bench-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("temp dir");
        let path = dir.join("resnet50.safetensors");
        candle_core::safetensors::save(&random_resnet50().expect("random weights"), &path).expect("save");
        let mut r50 = CandleModel::from_safetensors(&path, "resnet50").expect("resnet50");
        std::fs::remove_dir_all(&dir).ok();
        bench("resnet50 (random init)", &mut r50, [11, 3]);
    }
}
