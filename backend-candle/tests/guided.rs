//! Guided backprop and guided Grad-CAM against pytorch-grad-cam 1.5.7 on the model fixtures
//! ([`tests::guided::check_guided`]), and the guided ReLU's own effect.

#![cfg(feature = "candle")]
use backend_candle::CandleModel;
use tests::guided::{check_fullgrad, check_guided, check_relus_guided, guided_file, RELU_MODELS};
use tests::{manifest, require};

fn load(key: &str) -> CandleModel {
    let arch = manifest()["models"][key]["arch"].as_str().expect("arch in manifest").to_string();
    CandleModel::from_safetensors(&require(format!("{key}.safetensors")), &arch)
        .unwrap_or_else(|e| panic!("{key}: {e}"))
}

#[test]
fn resnet18_guided_matches_grad_cam() {
    check_guided("candle", &mut load("resnet18"), "resnet18");
}

#[test]
fn vit_tiny_guided_matches_grad_cam() {
    check_guided("candle", &mut load("vit_tiny"), "vit_tiny");
}

#[test]
fn lite0_guided_matches_grad_cam() {
    check_guided("candle", &mut load("lite0"), "lite0");
}

#[test]
fn resnet18_fullgrad_matches_grad_cam() {
    check_fullgrad("candle", &mut load("resnet18"), "resnet18");
    let path = guided_file("resnet18_bn.safetensors");
    let mut with_biases = CandleModel::from_safetensors(&path, "resnet18").unwrap_or_else(|e| panic!("{e}"));
    check_fullgrad("candle", &mut with_biases, "resnet18_bn");
}

#[test]
fn vit_tiny_fullgrad_matches_grad_cam() {
    check_fullgrad("candle", &mut load("vit_tiny"), "vit_tiny");
}

#[test]
fn lite0_fullgrad_matches_grad_cam() {
    check_fullgrad("candle", &mut load("lite0"), "lite0");
}

/// The guided ReLUs change a ResNet's input gradient (so a forward that forgot them fails
/// here), and change nothing in a ViT, which has none.
#[test]
fn only_relus_are_guided() {
    for (key, _) in RELU_MODELS {
        check_relus_guided("candle", &mut load(key), key);
    }
}
