//! End-to-end cost of one explained 224² image once the backend has captured the layer:
//! gradcam-core's Grad-CAM math (weights, weighted sum, ReLU, min-max, bilinear upsampling) on a
//! `(1, 1280, 7, 7)` capture (EfficientNet-Lite0's last feature map) or `(1, 2048, 7, 7)`
//! (ResNet-50 `layer4`), then colormap and pytorch-grad-cam's overlay. Target: < 3 ms per image.
//! Stages are also timed alone.
//!
//! `cargo bench -p gradcam-viz` reports the CPU time of the benchmarking thread, which stays
//! meaningful on a machine shared with other work; `GRADCAM_BENCH_WALL=1` reports wall time.

use std::hint::black_box;
use std::path::Path;
use std::time::Duration;

use criterion::measurement::Measurement;
use criterion::Criterion;
use gradcam_core::{
    explain, layer_map, scale_maps, upsample_maps, CamError, CamModel, CamOptions, Capture, LayerInfo,
    LayerTensor, LayerView, Method, Target,
};
use gradcam_viz::{load_image, origin_view, overlay, Colormap, Preprocess};
use image::RgbImage;
use ndarray::{Array2, Array4, ArrayView4};

#[macro_use]
#[path = "../../bench/micro.rs"]
mod micro;
use micro::filled;

/// A "model" whose capture is already done: hands out a recorded capture, so `explain` runs its
/// whole pipeline with no network in the way.
struct Recorded(Capture);

impl CamModel for Recorded {
    fn layers(&mut self) -> Result<Vec<LayerInfo>, CamError> {
        Ok(vec![LayerInfo { name: "bn2".into(), shape: self.0.activation.shape().to_vec() }])
    }
    fn default_layer(&mut self) -> Result<String, CamError> {
        Ok("bn2".into())
    }
    fn capture(
        &mut self,
        _: ArrayView4<f32>,
        _: &str,
        _: Option<&dyn gradcam_core::Seed>,
    ) -> Result<Capture, CamError> {
        Ok(self.0.clone())
    }
    fn forward(&mut self, _: ArrayView4<f32>) -> Result<Array2<f32>, CamError> {
        Ok(self.0.logits.clone())
    }
    fn forward_with_activation(
        &mut self,
        _: ArrayView4<f32>,
        _: &str,
        _: LayerView<'_>,
    ) -> Result<Array2<f32>, CamError> {
        Ok(self.0.logits.clone())
    }
}

fn capture(channels: usize) -> Capture {
    let n = channels * 49;
    let activation = Array4::from_shape_vec((1, channels, 7, 7), filled(n, 1, 0.0, 3.0)).unwrap();
    let gradient = Array4::from_shape_vec((1, channels, 7, 7), filled(n, 2, -1e-3, 1e-3)).unwrap();
    Capture {
        logits: Array2::from_shape_vec((1, 1000), filled(1000, 3, -5.0, 5.0)).unwrap(),
        output_shape: vec![1000],
        activation: LayerTensor::Spatial(activation),
        gradient: Some(LayerTensor::Spatial(gradient)),
    }
}

fn photo() -> RgbImage {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../assets/images/chelsea.png");
    load_image(&path).unwrap_or_else(|_| {
        RgbImage::from_fn(451, 300, |x, y| {
            image::Rgb([(x % 256) as u8, (y % 256) as u8, ((x * y) % 256) as u8])
        })
    })
}

fn bench<M: Measurement>(c: &mut Criterion<M>) {
    let full = photo();
    let input = Preprocess::default().tensor(&full).unwrap().insert_axis(ndarray::Axis(0));
    // The photo as the model saw it, 224², for the overlay.
    let plain = Preprocess { mean: [0.0; 3], std: [1.0; 3], ..Preprocess::default() };
    let picture = plain.picture(plain.tensor(&full).unwrap().view()).unwrap();
    let target = Target::top_one();
    let options = CamOptions::default();

    let mut group = c.benchmark_group("end to end, one 224x224 image");
    for (name, channels) in [("lite0 1x1280x7x7", 1280), ("resnet50 1x2048x7x7", 2048)] {
        let recorded = capture(channels);
        let mut model = Recorded(recorded.clone());
        group.bench_function(format!("explain(GradCAM) + jet overlay, {name}"), |b| {
            b.iter(|| {
                let explanation = explain(
                    &mut model,
                    black_box(input.view()),
                    &["bn2"],
                    &[Method::GradCam],
                    &target,
                    &options,
                )
                .unwrap();
                let map = explanation[0].maps.index_axis(ndarray::Axis(0), 0);
                overlay(&picture, map, Colormap::Jet, 0.5).unwrap()
            })
        });
        let (LayerTensor::Spatial(a), Some(LayerTensor::Spatial(g))) =
            (&recorded.activation, &recorded.gradient)
        else {
            unreachable!()
        };
        group.bench_function(format!("core math + upsample + jet overlay, {name}"), |b| {
            b.iter(|| {
                let raw = layer_map(Method::GradCam, black_box(a.view()), Some(g.view())).unwrap();
                let maps = upsample_maps(scale_maps(raw.view()).view(), 224, 224);
                overlay(&picture, maps.index_axis(ndarray::Axis(0), 0), Colormap::Jet, 0.5).unwrap()
            })
        });
    }
    group.finish();

    let cam = Array2::from_shape_vec((224, 224), filled(224 * 224, 4, 0.0, 1.0)).unwrap();
    let cell = Array2::from_shape_vec((7, 7), filled(49, 5, 0.0, 1.0)).unwrap();
    let mut group = c.benchmark_group("stages");
    group.bench_function("overlay 224x224 (jet, weight 0.5)", |b| {
        b.iter(|| overlay(black_box(&picture), cam.view(), Colormap::Jet, 0.5).unwrap())
    });
    group.bench_function("colormap apply 224x224 (viridis)", |b| {
        b.iter(|| Colormap::Viridis.apply(black_box(cam.view())))
    });
    group.bench_function("origin view 7x7 -> 224x224", |b| {
        b.iter(|| origin_view(black_box(cell.view()), 224, 224, Colormap::Jet).unwrap())
    });
    group.bench_function(
        format!("overlay on the {}x{} photo (cam resized from 224)", full.width(), full.height()),
        |b| b.iter(|| overlay(black_box(&full), cam.view(), Colormap::Jet, 0.5).unwrap()),
    );
    group.bench_function(
        format!("preprocess {}x{} photo -> (3, 224, 224)", full.width(), full.height()),
        |b| b.iter(|| Preprocess::default().tensor(black_box(&full)).unwrap()),
    );
    group.finish();
}

fn config<M: Measurement>(c: Criterion<M>) -> Criterion<M> {
    // Short runs: the machine is shared, and these timings settle well within this.
    c.sample_size(30).warm_up_time(Duration::from_secs(1)).measurement_time(Duration::from_secs(3))
}

thread_cpu_time_main!(bench, config);
