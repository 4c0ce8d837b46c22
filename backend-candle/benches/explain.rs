//! Explain latency (Grad-CAM, default layer, top-1 target) against candle's own forward-only
//! time on the same model, at batch 1 and 16, for the shipped EfficientNet-Lite0 and a
//! randomly initialised ResNet-50. Goal: explain / forward <= 1.10.
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
    let mut conv = |t: &mut HashMap<String, Tensor>, name: &str, o: usize, i: usize, k: usize| {
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

/// Median wall time of `reps` runs after one warm-up.
fn median(reps: usize, mut f: impl FnMut()) -> Duration {
    f();
    let mut times: Vec<Duration> = (0..reps)
        .map(|_| {
            let start = Instant::now();
            f();
            start.elapsed()
        })
        .collect();
    times.sort();
    times[reps / 2]
}

fn bench(name: &str, model: &mut CandleModel) {
    let layer = model.default_layer().expect("default layer");
    for batch in [1usize, 16] {
        let input = Array4::from_shape_fn((batch, 3, 224, 224), |(b, c, y, x)| {
            (((b * 7 + c * 13 + y * 3 + x * 5) % 255) as f32 / 127.5) - 1.0
        });
        let tensor =
            Tensor::from_slice(input.as_slice().expect("standard layout"), input.shape(), &Device::Cpu)
                .expect("input tensor");
        let reps = if batch == 1 { 11 } else { 5 };
        let forward = median(reps, || {
            std::hint::black_box(model.forward_tensor(&tensor).expect("forward"));
        });
        let target = Target::top_one();
        let options = CamOptions::default();
        let explained = median(reps, || {
            let e = explain(model, input.view(), &[layer.as_str()], &[Method::GradCam], &target, &options);
            std::hint::black_box(e.expect("explain"));
        });
        println!(
            "{name:<24} {layer:<6} batch {batch:>2}: forward {:>8.1} ms  explain {:>8.1} ms  ratio {:.3}",
            forward.as_secs_f64() * 1e3,
            explained.as_secs_f64() * 1e3,
            explained.as_secs_f64() / forward.as_secs_f64()
        );
    }
}

fn main() {
    let filter = std::env::args().skip(1).find(|a| !a.starts_with('-')).unwrap_or_default();
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    if "tf_efficientnet_lite0".contains(&filter) {
        let path = root.join("assets/models/tf_efficientnet_lite0.safetensors");
        let mut lite = CandleModel::from_safetensors(&path, "tf_efficientnet_lite0").expect("shipped Lite0");
        bench("tf_efficientnet_lite0", &mut lite);
    }
    if "resnet50".contains(&filter) {
        let dir = std::env::temp_dir().join(format!("gradcam-candle-bench-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("temp dir");
        let path = dir.join("resnet50.safetensors");
        candle_core::safetensors::save(&random_resnet50().expect("random weights"), &path).expect("save");
        let mut r50 = CandleModel::from_safetensors(&path, "resnet50").expect("resnet50");
        std::fs::remove_dir_all(&dir).ok();
        bench("resnet50 (random init)", &mut r50);
    }
}
