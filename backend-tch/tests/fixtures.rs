//! The tch backend against PyTorch and pytorch-grad-cam 1.5.7 on the generated model fixtures
//! ([`tests::check_model`]: logits, activations and gradients equal PyTorch autograd, every
//! method's CAM equals grad-cam's), for traced and scripted TorchScript exports.

use backend_tch::{DeviceChoice, TorchScriptModel};
use gradcam_core::Method;
use tests::{check_model, manifest, require};

fn check(key: &str) {
    let manifest = manifest();
    let files = &manifest["models"][key]["files"];
    assert!(files["traced"].is_string(), "{key}: no traced export in the manifest");
    for kind in ["traced", "scripted"] {
        // timm does not script every model; the manifest then says why.
        let Some(file) = files[kind].as_str() else { continue };
        let path = require(file);
        let mut model =
            TorchScriptModel::load(&path, DeviceChoice::Cpu).unwrap_or_else(|e| panic!("{file}: {e}"));
        // ScoreCAM only on the trace: it runs the plain forward only, the same for both exports.
        check_model(&format!("tch {kind}"), &mut model, key, |m| kind == "traced" || m != Method::ScoreCam);
    }
}

#[test]
fn resnet18_matches_pytorch_grad_cam() {
    check("resnet18");
}

#[test]
fn vit_tiny_matches_pytorch_grad_cam() {
    check("vit_tiny");
}

#[test]
fn lite0_matches_pytorch_grad_cam() {
    check("lite0");
}
