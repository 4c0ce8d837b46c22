//! Guided backprop and guided Grad-CAM from both torch exporters against pytorch-grad-cam 1.5.7
//! ([`tests::guided::check_guided`]): the generated backward graph extended down to the input,
//! with the guided `Relu` rule.
#![cfg(feature = "ort")]

use backend_ort::OnnxModel;
use gradcam_core::{CamModel, ReluBackward, Target};
use tests::guided::check_guided;
use tests::{close, input, require, TOL};

fn load(key: &str, exporter: &str) -> OnnxModel {
    let path = require(format!("{key}.{exporter}.onnx"));
    OnnxModel::load(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

fn check(key: &str, exporter: &str) {
    check_guided(&format!("ort {exporter}"), &mut load(key, exporter), key);
}

tests::onnx_fixture_tests!(check);

/// The guided rule changes a ResNet's input gradient and nothing in a ViT, which has no ReLU; a
/// batch of three (a fixed part of two plus one) gives each image what it gives alone.
#[test]
fn only_relus_are_guided() {
    let input = input();
    let target = Target::top_one();
    for (key, has_relu) in [("resnet18", true), ("vit_tiny", false)] {
        let mut model = load(key, "legacy");
        let plain = model.input_gradient(input.view(), &target, ReluBackward::Plain).unwrap();
        let guided = model.input_gradient(input.view(), &target, ReluBackward::Guided).unwrap();
        assert_eq!(plain.logits, guided.logits, "{key}: the forward is the same");
        let same = close(guided.gradient.view(), plain.gradient.view(), TOL);
        assert_eq!(same.is_err(), has_relu, "{key}: guided vs plain: {same:?}");
    }
}
