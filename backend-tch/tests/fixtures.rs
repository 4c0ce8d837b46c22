//! The tch backend against PyTorch and pytorch-grad-cam 1.5.7 on the generated model fixtures
//! (`tools/make_model_fixtures.py`): logits, activations and gradients equal PyTorch autograd, and
//! every method's CAM equals grad-cam's to 1e-4, for traced and scripted TorchScript exports.

mod common;

use backend_tch::{DeviceChoice, TorchScriptModel};
use common::{assert_close, fixtures, manifest, npy, npy_i64};
use gradcam_core::{explain, CamModel, CamOptions, LayerTensor, Method, Target};
use ndarray::Ix4;

/// The fixture file name of a method (`gradcam++` -> `gradcampp`).
fn fixture_name(m: Method) -> String {
    m.name().replace("++", "pp").replace('-', "_")
}

fn layer_array(t: &LayerTensor) -> ndarray::ArrayViewD<'_, f32> {
    match t {
        LayerTensor::Spatial(a) => a.view().into_dyn(),
        LayerTensor::Tokens(a) => a.view().into_dyn(),
    }
}

/// Every exported file kind of `key` the manifest lists (`traced`, `scripted` where timm allows).
fn exports(key: &str) -> Vec<(String, String)> {
    let manifest = manifest();
    let files = &manifest["models"][key]["files"];
    ["traced", "scripted"]
        .iter()
        .filter_map(|kind| files[*kind].as_str().map(|f| (kind.to_string(), f.to_string())))
        .collect()
}

fn check_model(key: &str) {
    let manifest = manifest();
    let entry = &manifest["models"][key];
    let input = npy("input.npy").into_dimensionality::<Ix4>().unwrap();
    let exports = exports(key);
    assert!(exports.iter().any(|(kind, _)| kind == "traced"), "{key}: no traced export in the manifest");
    for (kind, file) in exports {
        let mut model = TorchScriptModel::load(&fixtures().join(&file), DeviceChoice::Cpu).unwrap();
        for (layer, spec) in entry["layers"].as_object().unwrap() {
            let what = format!("{key} {kind} {layer}");
            let dir = spec["dir"].as_str().unwrap();

            // Capture: logits, activation and gradient against PyTorch eager + autograd.
            let capture = model.capture(input.view(), layer, Some(&Target::top_one())).unwrap();
            assert_close(
                &format!("{what} logits"),
                capture.logits.view(),
                npy(format!("{dir}/logits.npy")).view(),
                1e-4,
            );
            let classes: Vec<usize> =
                npy_i64(format!("{dir}/classes.npy")).iter().map(|&c| c as usize).collect();
            assert_eq!(capture.classes, classes, "{what}: classes");
            let act = npy(format!("{dir}/activations.npy"));
            assert_close(&format!("{what} activations"), layer_array(&capture.activation), act.view(), 1e-4);
            let grad = npy(format!("{dir}/gradients.npy"));
            let got_grad = capture.gradient.as_ref().expect("a target was given");
            assert_close(&format!("{what} gradients"), layer_array(got_grad), grad.view(), 1e-4);

            // Replacing the layer's output by itself must give the same logits (AblationCAM's pass).
            let replaced =
                model.forward_with_activation(input.view(), layer, capture.activation.view()).unwrap();
            assert_close(
                &format!("{what} forward_with_activation"),
                replaced.view(),
                capture.logits.view(),
                1e-4,
            );

            // Every method grad-cam was run with, as one explain() call (ScoreCAM only on the traced
            // export: it only uses the plain forward, the same for both).
            let methods: Vec<Method> = spec["methods"]
                .as_array()
                .unwrap()
                .iter()
                .map(|m| m.as_str().unwrap())
                .filter_map(|name| Method::ALL.into_iter().find(|m| fixture_name(*m) == name))
                .filter(|m| kind == "traced" || *m != Method::ScoreCam)
                .collect();
            assert!(methods.len() >= 8, "{what}: manifest lists too few methods: {methods:?}");
            let options = CamOptions::default();
            let explanations =
                explain(&mut model, input.view(), &[layer.as_str()], &methods, &Target::top_one(), &options)
                    .unwrap();
            for e in &explanations {
                let want = npy(format!("{dir}/cam_{}.npy", fixture_name(e.method)));
                assert_close(&format!("{what} {}", e.method), e.maps.view(), want.view(), 1e-4);
            }
        }
    }
}

#[test]
fn resnet18_matches_pytorch_grad_cam() {
    check_model("resnet18");
}

#[test]
fn vit_tiny_matches_pytorch_grad_cam() {
    check_model("vit_tiny");
}

#[test]
fn lite0_matches_pytorch_grad_cam() {
    check_model("lite0");
}
