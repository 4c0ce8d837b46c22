//! The metrics and ROAD's imputer against pytorch-grad-cam 1.5.7 (fixtures written by
//! tools/make_metric_fixtures.py on a tiny conv model mirrored here), and the imputer's
//! properties against plain f64 arithmetic.

use std::path::{Path, PathBuf};

use gradcam_core::{
    evaluate, impute, road_keep_mask, CamError, CamModel, Capture, LayerInfo, LayerView, Metric,
    MetricOptions, Target, ROAD_NEIGHBOURS,
};
use ndarray::{Array1, Array2, Array3, Array4, ArrayView4};
use ndarray_npy::read_npy;
use proptest::prelude::*;
use serde_json::Value;

const TOLERANCE: f32 = 1e-4;

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/metrics")
}

fn load<A: ndarray_npy::ReadableElement, D: ndarray::Dimension>(name: &str) -> ndarray::Array<A, D> {
    read_npy(fixtures().join(name)).unwrap_or_else(|e| panic!("{name}: {e}"))
}

/// tools/make_metric_fixtures.py's `Tiny`: Conv2d(3, 4, 3, padding=1) → ReLU → mean over the
/// pixels → Linear(4, 5), in f64 loops. Counts its forward passes.
struct Tiny {
    conv_weight: Array4<f32>,
    conv_bias: Array1<f32>,
    fc_weight: Array2<f32>,
    fc_bias: Array1<f32>,
    forwards: usize,
}

impl Tiny {
    fn load() -> Self {
        Tiny {
            conv_weight: load("conv_weight.npy"),
            conv_bias: load("conv_bias.npy"),
            fc_weight: load("fc_weight.npy"),
            fc_bias: load("fc_bias.npy"),
            forwards: 0,
        }
    }
}

impl CamModel for Tiny {
    fn layers(&mut self) -> Result<Vec<LayerInfo>, CamError> {
        Ok(vec![])
    }

    fn capture(
        &mut self,
        _: ArrayView4<f32>,
        _: &str,
        _: Option<&dyn gradcam_core::Seed>,
    ) -> Result<Capture, CamError> {
        Err(CamError::Unsupported("the metrics only run forward".into()))
    }

    fn forward(&mut self, input: ArrayView4<f32>) -> Result<Array2<f32>, CamError> {
        self.forwards += 1;
        let (batch, channels, h, w) = input.dim();
        let (outs, classes) = (self.conv_weight.dim().0, self.fc_weight.nrows());
        let mut logits = Array2::zeros((batch, classes));
        for b in 0..batch {
            let mut pooled = vec![0.0f64; outs];
            for (o, sum) in pooled.iter_mut().enumerate() {
                for y in 0..h as isize {
                    for x in 0..w as isize {
                        let mut v = f64::from(self.conv_bias[o]);
                        for c in 0..channels {
                            for ky in 0..3 {
                                for kx in 0..3 {
                                    let (iy, ix) = (y + ky as isize - 1, x + kx as isize - 1);
                                    if iy >= 0 && ix >= 0 && iy < h as isize && ix < w as isize {
                                        v += f64::from(self.conv_weight[[o, c, ky, kx]])
                                            * f64::from(input[[b, c, iy as usize, ix as usize]]);
                                    }
                                }
                            }
                        }
                        *sum += v.max(0.0);
                    }
                }
                *sum /= (h * w) as f64;
            }
            for k in 0..classes {
                let v: f64 = (0..outs).map(|o| f64::from(self.fc_weight[[k, o]]) * pooled[o]).sum();
                logits[[b, k]] = (v + f64::from(self.fc_bias[k])) as f32;
            }
        }
        Ok(logits)
    }

    fn forward_with_activation(
        &mut self,
        _: ArrayView4<f32>,
        _: &str,
        _: LayerView<'_>,
    ) -> Result<Array2<f32>, CamError> {
        Err(CamError::Unsupported("the metrics only run forward".into()))
    }
}

#[test]
fn the_mirrored_model_gives_the_fixture_logits() {
    let input: Array4<f32> = load("input.npy");
    let expected: Array2<f32> = load("logits.npy");
    let logits = Tiny::load().forward(input.view()).unwrap();
    for (a, b) in logits.iter().zip(&expected) {
        assert!((a - b).abs() < 1e-5, "{a} vs {b}");
    }
}

#[test]
fn every_metric_matches_pytorch_grad_cam() {
    let input: Array4<f32> = load("input.npy");
    let cams: Array3<f32> = load("cams.npy");
    let reference: Value =
        serde_json::from_str(&std::fs::read_to_string(fixtures().join("metrics.json")).unwrap()).unwrap();
    let cases = reference["cases"].as_array().unwrap();
    assert_eq!(cases.len(), 3);
    for case in cases {
        let classes: Vec<usize> =
            case["classes"].as_array().unwrap().iter().map(|c| c.as_u64().unwrap() as usize).collect();
        let target = match case["score"].as_str().unwrap() {
            "logit" => Target::per_image(classes.clone()),
            _ => Target::per_image(classes.clone()).softmax(),
        };
        let options = MetricOptions {
            road_noise: case["noise"].as_f64().unwrap() as f32,
            seed: case["seed"].as_u64().unwrap() as u32,
        };
        let mut model = Tiny::load();
        let got = evaluate(&mut model, input.view(), cams.view(), &target, &classes, &Metric::ALL, &options)
            .unwrap();
        for values in got {
            let expected: Vec<f32> = case["values"][values.metric.name()]
                .as_array()
                .unwrap()
                .iter()
                .map(|v| v.as_f64().unwrap() as f32)
                .collect();
            assert_eq!(values.values.len(), expected.len());
            for (g, e) in values.values.iter().zip(&expected) {
                assert!(
                    (g - e).abs() < TOLERANCE,
                    "{} ({}, noise {}): {:?} vs pytorch-grad-cam {:?}",
                    values.metric,
                    case["score"],
                    options.road_noise,
                    values.values,
                    expected
                );
            }
        }
    }
}

#[test]
fn imputer_and_masks_match_pytorch_grad_cam() {
    let input: Array4<f32> = load("input.npy");
    let cams: Array3<f32> = load("cams.npy");
    for (name, most, percentile, noise, seed) in [
        ("most50", true, 50.0, 0.0, 0),
        ("least30", false, 30.0, 0.0, 0),
        ("most80_noisy", true, 80.0, 0.01, 7),
    ] {
        let keep = road_keep_mask(cams.index_axis(ndarray::Axis(0), 0), percentile, most);
        let expected_keep: Array2<f32> = load(&format!("keep_{name}.npy"));
        assert_eq!(keep.mapv(|k| if k { 1.0 } else { 0.0 }), expected_keep, "{name}: mask");
        let filled = impute(input.index_axis(ndarray::Axis(0), 0), keep.view(), noise, seed).unwrap();
        let expected: Array3<f32> = load(&format!("impute_{name}.npy"));
        let worst = filled.iter().zip(&expected).map(|(a, b)| (a - b).abs()).fold(0.0f32, f32::max);
        assert!(worst < 1e-5, "{name}: imputed values differ by {worst}");
    }
}

#[test]
fn shared_perturbations_run_once() {
    let input: Array4<f32> = load("input.npy");
    let cams: Array3<f32> = load("cams.npy");
    let classes = [0, 1];
    let target = Target::per_image(classes.to_vec());
    let options = MetricOptions { road_noise: 0.0, seed: 0 };
    let mut model = Tiny::load();
    let metrics = [Metric::ConfidenceChange, Metric::Drop, Metric::Increase];
    evaluate(&mut model, input.view(), cams.view(), &target, &classes, &metrics, &options).unwrap();
    assert_eq!(model.forwards, 2, "the original batch, and input x cam once for all three");
    let mut model = Tiny::load();
    let metrics = [Metric::RoadCombined, Metric::RoadMost, Metric::RoadLeast];
    let got = evaluate(&mut model, input.view(), cams.view(), &target, &classes, &metrics, &options).unwrap();
    assert_eq!(model.forwards, 1 + 18, "road-most and road-least are among road-combined's 18");
    // road-combined is (mean LeRF - mean MoRF) / 2: with only the 80 / 20 pair it is not, in general.
    let pair: Vec<f32> = got[2].values.iter().zip(&got[1].values).map(|(l, m)| (l - m) / 2.0).collect();
    assert!(pair.iter().zip(&got[0].values).any(|(p, c)| (p - c).abs() > 1e-3));
}

#[test]
fn bad_arguments_are_typed_errors() {
    let input: Array4<f32> = load("input.npy");
    let cams: Array3<f32> = load("cams.npy");
    let target = Target::top_one();
    let mut model = Tiny::load();
    let run = |model: &mut Tiny, maps: ndarray::ArrayView3<f32>, classes: &[usize], noise: f32| {
        let options = MetricOptions { road_noise: noise, seed: 0 };
        evaluate(model, input.view(), maps, &target, classes, &[Metric::RoadMost], &options)
    };
    assert!(matches!(run(&mut model, cams.view(), &[0, 1], -1.0), Err(CamError::Unsupported(_))));
    assert!(matches!(run(&mut model, cams.view(), &[0, 1], f32::INFINITY), Err(CamError::Unsupported(_))));
    assert!(matches!(run(&mut model, cams.view(), &[0], 0.0), Err(CamError::Shape(_))));
    assert!(matches!(
        run(&mut model, cams.slice(ndarray::s![.., ..20, ..]), &[0, 1], 0.0),
        Err(CamError::Shape(_))
    ));
    let mut nan = cams.clone();
    nan[[1, 3, 3]] = f32::NAN;
    assert!(matches!(run(&mut model, nan.view(), &[0, 1], 0.0), Err(CamError::Unsupported(_))));
    assert_eq!(model.forwards, 0, "every check comes before the model runs");
    // The class is checked against the logits of the first forward pass.
    assert!(matches!(
        run(&mut model, cams.view(), &[0, 9], 0.0),
        Err(CamError::ClassOutOfRange { class: 9, .. })
    ));
}

// ---------- the imputer's properties ----------

/// An image `(C, H, W)` and a keep mask `(H, W)` of the same size.
fn image_and_mask() -> impl Strategy<Value = (Array3<f32>, Array2<bool>)> {
    (1usize..3, 1usize..9, 1usize..9).prop_flat_map(|(c, h, w)| {
        (
            proptest::collection::vec(-3.0f32..3.0, c * h * w),
            proptest::collection::vec(proptest::bool::weighted(0.6), h * w),
        )
            .prop_map(move |(v, k)| {
                (Array3::from_shape_vec((c, h, w), v).unwrap(), Array2::from_shape_vec((h, w), k).unwrap())
            })
    })
}

proptest! {
    #[test]
    fn keeping_everything_returns_the_image((image, _) in image_and_mask(), noise in 0.0f32..1.0) {
        let keep = Array2::from_elem((image.dim().1, image.dim().2), true);
        prop_assert_eq!(impute(image.view(), keep.view(), noise, 0).unwrap(), image);
    }

    /// Kept pixels are untouched; every removed one is the weighted mean of its in-bounds
    /// neighbours (the system holds, in f64); and so it lies within the image's range.
    #[test]
    fn the_solution_satisfies_the_system((image, keep) in image_and_mask()) {
        prop_assume!(keep.iter().any(|&k| k));
        let out = impute(image.view(), keep.view(), 0.0, 0).unwrap();
        let (channels, h, w) = image.dim();
        let (lo, hi) = image.iter().fold((f32::INFINITY, f32::NEG_INFINITY), |(l, u), &v| (l.min(v), u.max(v)));
        for c in 0..channels {
            for y in 0..h {
                for x in 0..w {
                    if keep[[y, x]] {
                        prop_assert_eq!(out[[c, y, x]], image[[c, y, x]]);
                        continue;
                    }
                    let (mut sum, mut weights) = (0.0f64, 0.0f64);
                    for ((dy, dx), weight) in ROAD_NEIGHBOURS {
                        let (ny, nx) = (y as isize + dy, x as isize + dx);
                        if ny >= 0 && nx >= 0 && (ny as usize) < h && (nx as usize) < w {
                            sum += weight * f64::from(out[[c, ny as usize, nx as usize]]);
                            weights += weight;
                        }
                    }
                    let v = out[[c, y, x]];
                    prop_assert!((f64::from(v) - sum / weights).abs() < 1e-4, "({c}, {y}, {x}): {v} vs {}", sum / weights);
                    prop_assert!(v >= lo - 1e-4 && v <= hi + 1e-4);
                }
            }
        }
    }

    /// Without noise the imputation is linear in the image.
    #[test]
    fn linear_in_the_image((a, keep) in image_and_mask(), scale in -2.0f32..2.0, shift in -1.0f32..1.0) {
        let b = a.mapv(|v| (v * 1.7 + shift).sin());
        let mixed = &a * scale + &b;
        let fa = impute(a.view(), keep.view(), 0.0, 0).unwrap();
        let fb = impute(b.view(), keep.view(), 0.0, 0).unwrap();
        let fm = impute(mixed.view(), keep.view(), 0.0, 0).unwrap();
        for ((m, x), y) in fm.iter().zip(&fa).zip(&fb) {
            prop_assert!((m - (scale * x + y)).abs() < 1e-4, "{m} vs {}", scale * x + y);
        }
    }

    /// The noise is added to the removed pixels only, and is the seed's.
    #[test]
    fn noise_touches_only_removed_pixels((image, keep) in image_and_mask(), seed in 0u32..100) {
        let clean = impute(image.view(), keep.view(), 0.0, seed).unwrap();
        let noisy = impute(image.view(), keep.view(), 0.5, seed).unwrap();
        prop_assert_eq!(&noisy, &impute(image.view(), keep.view(), 0.5, seed).unwrap());
        for ((c, y, x), v) in noisy.indexed_iter() {
            if keep[[y, x]] {
                prop_assert_eq!(*v, clean[[c, y, x]]);
            }
        }
    }
}

/// A map that is 0 everywhere (a Grad-CAM map after ReLU of all-negative weights) removes every
/// pixel at every ROAD percentile: pytorch-grad-cam's solve is singular there (NaN); ours
/// imputes the minimum-norm 0 and every metric stays finite.
#[test]
fn an_all_zero_map_keeps_every_metric_finite() {
    let input: Array4<f32> = load("input.npy");
    let (batch, _, h, w) = input.dim();
    let zeros = Array3::<f32>::zeros((batch, h, w));
    let classes = [0, 1];
    let target = Target::per_image(classes.to_vec());
    for noise in [0.0, 0.01] {
        let options = MetricOptions { road_noise: noise, seed: 0 };
        let got = evaluate(
            &mut Tiny::load(),
            input.view(),
            zeros.view(),
            &target,
            &classes,
            &Metric::ALL,
            &options,
        )
        .unwrap();
        for values in got {
            assert!(values.values.iter().all(|v| v.is_finite()), "{}: {:?}", values.metric, values.values);
        }
    }
}
