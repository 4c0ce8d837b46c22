//! Guided backprop and guided Grad-CAM from both torch exporters against pytorch-grad-cam 1.5.7
//! ([`tests::guided::check_guided`]): the generated backward graph extended down to the input,
//! with the guided `Relu` rule.
#![cfg(feature = "ort")]

use backend_ort::OnnxModel;
use tests::guided::{check_guided, check_relus_guided, RELU_MODELS};
use tests::require;

fn load(key: &str, exporter: &str) -> OnnxModel {
    let path = require(format!("{key}.{exporter}.onnx"));
    OnnxModel::load(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

fn check(key: &str, exporter: &str) {
    check_guided(&format!("ort {exporter}"), &mut load(key, exporter), key);
}

tests::onnx_fixture_tests!(check);

/// The guided rule changes a ResNet's input gradient and nothing in a ViT, which has no ReLU.
#[test]
fn only_relus_are_guided() {
    for (key, _) in RELU_MODELS {
        check_relus_guided("ort legacy", &mut load(key, "legacy"), key);
    }
}
