//! Whole models from both torch exporters against PyTorch autograd and pytorch-grad-cam
//! (the fixtures of `tools/make_model_fixtures.py`).
#![cfg(feature = "ort")]

use std::path::PathBuf;

use backend_ort::OnnxModel;
use gradcam_core::{explain, CamModel, CamOptions, LayerTensor, Method, Target};
use ndarray::{ArrayD, Ix4};
use ndarray_npy::read_npy;

fn fixtures() -> PathBuf {
    let dir = std::env::var_os("GRADCAM_FIXTURES")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target/fixtures"));
    assert!(
        dir.join("input.npy").exists(),
        "model fixtures missing in {}: run scripts/test-all (it generates the model fixtures)",
        dir.display()
    );
    dir
}

fn npy_f32(path: PathBuf) -> ArrayD<f32> {
    read_npy(&path).unwrap_or_else(|e| {
        panic!("{}: {e} (run scripts/test-all (it generates the model fixtures))", path.display())
    })
}

/// `max |a - b| <= tol * max |b|` (relative to the reference's scale).
fn assert_close(what: &str, got: &ArrayD<f32>, want: &ArrayD<f32>, tol: f32) {
    assert_eq!(got.shape(), want.shape(), "{what}: shape");
    let scale = want.iter().fold(0f32, |m, v| m.max(v.abs())).max(f32::MIN_POSITIVE);
    let err = got.iter().zip(want).fold(0f32, |m, (a, b)| m.max((a - b).abs()));
    assert!(err <= tol * scale, "{what}: max abs error {err:e} > {tol:e} x scale {scale:e}");
}

fn dyn_of(t: &LayerTensor) -> ArrayD<f32> {
    match t {
        LayerTensor::Spatial(a) => a.clone().into_dyn(),
        LayerTensor::Tokens(a) => a.clone().into_dyn(),
    }
}

fn fixture_name(m: Method) -> String {
    m.name().replace("++", "pp").replace('-', "_")
}

/// Like [`assert_close`] for all but `ties` (a fraction) of the elements, and within 500x the
/// tolerance for those: where a pre-activation sits within float noise of a ReLU/ReLU6 kink, the
/// exported graph's own forward (BatchNorm folded differently) can flip the mask, changing the
/// gradient of everything upstream of that one position.
fn assert_close_but_ties(what: &str, got: &ArrayD<f32>, want: &ArrayD<f32>, tol: f32, ties: f64) {
    assert_eq!(got.shape(), want.shape(), "{what}: shape");
    let scale = want.iter().fold(0f32, |m, v| m.max(v.abs())).max(f32::MIN_POSITIVE);
    let off = got.iter().zip(want).filter(|(a, b)| (*a - *b).abs() > tol * scale).count();
    assert!(
        (off as f64) <= ties * want.len() as f64,
        "{what}: {off} of {} elements off by > {tol:e} x scale",
        want.len()
    );
    assert_close(what, got, want, 500.0 * tol);
}

/// Gradients, activations and logits equal PyTorch's to 1e-4 (relative to each tensor's scale;
/// `ties`: the fraction of gradient elements allowed off (by up to 5e-2) by a mask flip, see
/// [`assert_close_but_ties`]); every CAM the fixtures hold equals grad-cam's to 1e-4 (5e-3 for a layer with ties: a few pixels).
fn check(key: &str, exporter: &str, layers: &[(&str, f64)]) {
    let dir = fixtures();
    let model_path = dir.join(format!("{key}.{exporter}.onnx"));
    assert!(
        model_path.exists(),
        "{} missing: run scripts/test-all (it generates the model fixtures)",
        model_path.display()
    );
    let mut model = OnnxModel::load(&model_path).expect("load");
    let input = npy_f32(dir.join("input.npy")).into_dimensionality::<Ix4>().expect("(B, 3, H, W)");
    let names: Vec<String> = model.layers().expect("layers").into_iter().map(|l| l.name).collect();
    for &(layer, ties) in layers {
        assert!(names.iter().any(|n| n == layer), "{key}.{exporter}: layer {layer} not listed in {names:?}");
        let ref_dir = dir.join(key).join(layer);
        let capture = model.capture(input.view(), layer, Some(&Target::top_one())).expect("capture");
        let what = format!("{key}.{exporter} {layer}");
        let classes: ndarray::Array1<i64> = read_npy(ref_dir.join("classes.npy")).expect("classes.npy");
        assert_eq!(
            capture.classes,
            classes.iter().map(|&c| c as usize).collect::<Vec<_>>(),
            "{what}: classes"
        );
        assert_close(
            &format!("{what} logits"),
            &capture.logits.clone().into_dyn(),
            &npy_f32(ref_dir.join("logits.npy")),
            1e-4,
        );
        let act = dyn_of(&capture.activation);
        assert_close(&format!("{what} activations"), &act, &npy_f32(ref_dir.join("activations.npy")), 1e-4);
        let grad = dyn_of(capture.gradient.as_ref().expect("gradient"));
        assert_close_but_ties(
            &format!("{what} gradients"),
            &grad,
            &npy_f32(ref_dir.join("gradients.npy")),
            1e-4,
            ties,
        );

        let methods: Vec<Method> = Method::ALL
            .into_iter()
            .filter(|m| ref_dir.join(format!("cam_{}.npy", fixture_name(*m))).exists())
            .collect();
        assert!(methods.iter().filter(|m| m.needs_gradients()).count() >= 6, "{what}: CAM fixtures missing");
        let explanations =
            explain(&mut model, input.view(), &[layer], &methods, &Target::top_one(), &CamOptions::default())
                .expect("explain");
        for e in explanations {
            let want = npy_f32(ref_dir.join(format!("cam_{}.npy", fixture_name(e.method))));
            // A flipped mask (see `ties`) moves a few pixels of the maps by up to ~2e-3 (HiResCAM).
            let tol = if ties > 0.0 { 5e-3 } else { 1e-4 };
            assert_close(&format!("{what} {}", e.method.name()), &e.maps.into_dyn(), &want, tol);
        }
    }
}

#[test]
fn resnet18_legacy() {
    check("resnet18", "legacy", &[("layer4", 0.0), ("layer4.1", 0.0), ("layer3", 0.0)]);
}

#[test]
fn resnet18_dynamo() {
    check("resnet18", "dynamo", &[("layer4", 0.0), ("layer4.1", 0.0), ("layer3", 0.0)]);
}

#[test]
fn vit_tiny_legacy() {
    check("vit_tiny", "legacy", &[("blocks.11.norm1", 0.0)]);
}

#[test]
fn vit_tiny_dynamo() {
    check("vit_tiny", "dynamo", &[("blocks.11.norm1", 0.0)]);
}

/// The legacy export's conv_head + folded BatchNorm differs from PyTorch by 3e-5, enough to move
/// one ReLU6 pre-activation across 0 (checked with onnxruntime in Python): 320 of the 31360
/// gradient elements of blocks.6 (one position, all channels) differ.
#[test]
fn lite0_legacy() {
    check("lite0", "legacy", &[("blocks.6", 0.02), ("bn2", 0.0)]);
}

#[test]
fn lite0_dynamo() {
    check("lite0", "dynamo", &[("blocks.6", 0.0), ("bn2", 0.0)]);
}

#[test]
fn default_layers_match_the_other_backends() {
    let dir = fixtures();
    for (key, want) in [("resnet18", "layer4"), ("vit_tiny", "blocks.11.norm1"), ("lite0", "bn2")] {
        for exporter in ["legacy", "dynamo"] {
            let mut model = OnnxModel::load(&dir.join(format!("{key}.{exporter}.onnx"))).expect("load");
            assert_eq!(model.default_layer().expect("default layer"), want, "{key}.{exporter}");
        }
    }
}

/// Class-token pruning changes no number: for layers before, at and inside the pruned part of
/// vit_tiny (`blocks.11.norm2` is read by the pruned MLP), captures with and without it agree,
/// and it does fire (the generated model gathers token 0 before the last MLP); a CNN is left alone.
#[test]
fn token_pruning_changes_no_number() {
    let dir = fixtures();
    let input = npy_f32(dir.join("input.npy")).into_dimensionality::<Ix4>().expect("(B, 3, H, W)");
    let (h, w) = (input.shape()[2], input.shape()[3]);
    for exporter in ["legacy", "dynamo"] {
        let path = dir.join(format!("vit_tiny.{exporter}.onnx"));
        let mut pruned = OnnxModel::load(&path).expect("load");
        let mut full = OnnxModel::load(&path).expect("load");
        full.set_token_pruning(false);
        for layer in ["blocks.10", "blocks.11.norm1", "blocks.11.norm2", "blocks.11"] {
            let what = format!("vit_tiny.{exporter} {layer}");
            let gathers = |m: &OnnxModel| {
                let g = m.backward_graph(layer, h, w).expect("backward graph");
                g.nodes().iter().filter(|n| n.name.contains("gradcam_token_")).count()
            };
            assert!(gathers(&pruned) > 0, "{what}: nothing pruned");
            assert_eq!(gathers(&full), 0, "{what}: pruned while off");
            let target = Target::top_one();
            let a = pruned.capture(input.view(), layer, Some(&target)).expect("capture");
            let b = full.capture(input.view(), layer, Some(&target)).expect("capture");
            assert_eq!(a.classes, b.classes, "{what}: classes");
            assert_close(&format!("{what} logits"), &a.logits.into_dyn(), &b.logits.into_dyn(), 1e-5);
            assert_close(
                &format!("{what} activations"),
                &dyn_of(&a.activation),
                &dyn_of(&b.activation),
                1e-5,
            );
            let (ga, gb) = (a.gradient.expect("gradient"), b.gradient.expect("gradient"));
            assert!(dyn_of(&gb).iter().any(|&v| v != 0.0), "{what}: zero gradient");
            assert_close(&format!("{what} gradients"), &dyn_of(&ga), &dyn_of(&gb), 1e-5);
        }
    }
    let resnet = OnnxModel::load(&dir.join("resnet18.dynamo.onnx")).expect("load");
    let g = resnet.backward_graph("layer4", h, w).expect("backward graph");
    assert!(!g.nodes().iter().any(|n| n.name.contains("gradcam_token_")), "resnet18 pruned");
}
