//! Models exported with a fixed batch size (what `torch.onnx.export` writes by default) explain
//! any number of images with every method: the backend runs them in parts of that size.
#![cfg(feature = "ort")]

use backend_ort::{OnnxGraph, OnnxModel};
use gradcam_core::{explain, CamModel, Method, Target};
use ndarray::{concatenate, s, Array4, Axis};
use tests::{assert_close, fixtures_dir, input, reference_options};

mod fixed_copy;
use fixed_copy::with_fixed_batch;

/// The fixtures' two images and a third (the first, mirrored): a batch no fixed size divides.
fn three_images() -> Array4<f32> {
    let two = input();
    let mirrored = two.slice(s![0..1, .., .., ..;-1]).to_owned();
    concatenate(Axis(0), &[two.view(), mirrored.view()]).expect("same shapes")
}

/// Every method in `methods` (the pixel maps of guided backprop too) agrees between the dynamic export and copies fixed to batch 1 and
/// 2, for three images, for the top class and (gradient methods) the second one.
fn check(key: &str, exporter: &str, layer: &str, methods: &[Method]) {
    let file = format!("{key}.{exporter}.onnx");
    let images = three_images();
    let mut dynamic = OnnxModel::load(&fixtures_dir().join(&file)).expect("load");
    assert_eq!(dynamic.fixed_batch(), None, "{file}: the fixture's batch is dynamic");
    let options = reference_options();
    let gradient_methods: Vec<Method> = methods.iter().copied().filter(|m| m.needs_gradients()).collect();
    let targets = [(Target::top_one(), methods.to_vec()), (Target::rank(1), gradient_methods)];
    let want: Vec<_> = targets
        .iter()
        .map(|(target, methods)| {
            explain(&mut dynamic, images.view(), &[layer], methods, target, &options).expect("dynamic")
        })
        .collect();
    let want_logits = dynamic.forward(images.view()).expect("forward");
    for batch in [1, 2] {
        let (_dir, path) = with_fixed_batch(&file, batch);
        assert_eq!(OnnxGraph::load(&path).expect("load").input_dims("input").unwrap()[0], Some(batch));
        let mut fixed = OnnxModel::load(&path).expect("load");
        assert_eq!(fixed.fixed_batch(), Some(batch as usize));
        let what = format!("{file} fixed to batch {batch}, {layer}");
        let logits = fixed.forward(images.view()).unwrap_or_else(|e| panic!("{what}: forward: {e}"));
        assert_close(&format!("{what} logits"), logits.view(), want_logits.view(), 1e-4);
        for ((target, methods), want) in targets.iter().zip(&want) {
            let got = explain(&mut fixed, images.view(), &[layer], methods, target, &options)
                .unwrap_or_else(|e| panic!("{what}: {e}"));
            for (g, w) in got.iter().zip(want) {
                assert_eq!(g.classes, w.classes, "{what} {}", g.method);
                assert_close(&format!("{what} {} {target:?}", g.method), g.maps.view(), w.maps.view(), 1e-4);
                if let (Some(got), Some(want)) = (&g.pixels, &w.pixels) {
                    assert_close(
                        &format!("{what} {} {target:?} pixels", g.method),
                        got.view(),
                        want.view(),
                        1e-4,
                    );
                }
                assert_eq!(g.pixels.is_some(), w.pixels.is_some(), "{what} {}", g.method);
            }
        }
    }
}

/// ScoreCAM's and AblationCAM's extra passes run in parts too (at `layer2`: 128 channels).
#[test]
fn resnet18_fixed_batch_every_method() {
    let methods =
        [Method::GradCam, Method::GradCamPlusPlus, Method::EigenCam, Method::ScoreCam, Method::AblationCam];
    check("resnet18", "legacy", "layer2", &methods);
}

#[test]
fn resnet18_dynamo_fixed_batch() {
    let methods = [Method::GradCam, Method::LayerCam, Method::EigenCam, Method::GuidedGradCam];
    check("resnet18", "dynamo", "layer4", &methods);
}

#[test]
fn vit_fixed_batch_every_method() {
    check("vit_tiny", "dynamo", "blocks.11.norm1", &[Method::GradCam, Method::EigenCam, Method::AblationCam]);
}

#[test]
fn vit_legacy_fixed_batch() {
    check(
        "vit_tiny",
        "legacy",
        "blocks.11.norm1",
        &[Method::GradCam, Method::HiResCam, Method::GuidedBackprop],
    );
}
