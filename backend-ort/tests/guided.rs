//! Guided backprop, guided Grad-CAM and FullGrad from both torch exporters against
//! pytorch-grad-cam 1.5.7 ([`tests::guided::check_guided`], [`tests::guided::check_fullgrad`]):
//! the generated backward graph extended down to the input, with the guided `Relu` rule, or with
//! the bias layers' gradients on the way.
#![cfg(feature = "ort")]

use backend_ort::OnnxModel;
use gradcam_core::{CamModel, Target};
use tests::guided::{
    check_fullgrad, check_fullgrad_against, check_guided, check_relus_guided, guided_dir, guided_file,
    RELU_MODELS,
};
use tests::{read_json, require};

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

/// FullGrad: grad-cam's exact-type rule where the file records module classes (dynamo); a legacy
/// Lite0, whose timm `BatchNormAct2d`s are folded into convolutions with no class left, against
/// FullGrad's definition (every bias layer), the documented deviation.
mod fullgrad {
    use super::*;

    fn check_full(key: &str, exporter: &str) {
        let label = format!("ort {exporter}");
        let mut model = load(key, exporter);
        match (key, exporter) {
            ("lite0", "legacy") => check_fullgrad_against(&label, &mut model, key, "fullgrad_every_bias"),
            _ => check_fullgrad(&label, &mut model, key),
        }
    }

    tests::onnx_fixture_tests!(check_full);

    /// With random BatchNorm statistics: non-zero folded biases in both exporters' files, and
    /// `BatchNormalization` nodes (whose biases the model folds itself) in a legacy file exported
    /// without constant folding, under grad-cam's names there.
    #[test]
    fn resnet18_bn() {
        for exporter in ["legacy", "dynamo", "unfolded"] {
            let path = guided_file(&format!("resnet18_bn.{exporter}.onnx"));
            let mut model = OnnxModel::load(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
            check_fullgrad(&format!("ort {exporter}"), &mut model, "resnet18_bn");
        }
        let mut unfolded =
            OnnxModel::load(&guided_file("resnet18_bn.unfolded.onnx")).unwrap_or_else(|e| panic!("{e}"));
        let grads = unfolded
            .full_gradients(tests::input().view(), &Target::top_one())
            .unwrap_or_else(|e| panic!("{e}"));
        let got: Vec<String> = grads.biases.iter().map(|b| b.layer.clone()).collect();
        assert_eq!(got, bias_layers("resnet18"), "unfolded resnet18_bn: bias layers");
    }
}

/// FullGrad's bias layers: grad-cam's names in a dynamo file (a BatchNorm fused into a
/// convolution keeps its module; Lite0's `BatchNormAct2d`s are left out), grad-cam's number in a
/// legacy file of a ResNet and a ViT (a folded BatchNorm goes by its convolution's name there),
/// and Lite0's folded BatchNorms in a legacy one; one bias per channel of each gradient.
#[test]
fn fullgrad_bias_layers_are_grad_cams() {
    let input = tests::input();
    for key in ["resnet18", "vit_tiny", "lite0"] {
        let want = bias_layers(key);
        for exporter in ["legacy", "dynamo"] {
            let grads = load(key, exporter)
                .full_gradients(input.view(), &Target::top_one())
                .unwrap_or_else(|e| panic!("{key} {exporter}: {e}"));
            let got: Vec<String> = grads.biases.iter().map(|b| b.layer.clone()).collect();
            match (key, exporter) {
                (_, "dynamo") => assert_eq!(got, want, "{key} {exporter}: bias layers"),
                // Lite0's 49 convolutions each have a BatchNormAct2d folded in.
                ("lite0", _) => assert_eq!(got.len(), 49, "{key} {exporter}: bias layers {got:?}"),
                _ => assert_eq!(got.len(), want.len(), "{key} {exporter}: bias layers {got:?}"),
            }
            for b in &grads.biases {
                let (batch, channels, _, _) = b.gradient.dim();
                assert_eq!(
                    (batch, channels),
                    (2, b.bias.len()),
                    "{key} {exporter} {}: bias per channel",
                    b.layer
                );
            }
        }
    }
}

/// grad-cam's FullGrad bias layers of fixture model `key`, from the guided manifest.
fn bias_layers(key: &str) -> Vec<String> {
    let guided = read_json(&guided_dir("").join("manifest.json")).unwrap_or_else(|e| panic!("{e}"));
    guided["models"][key]["fullgrad_bias_layers"]
        .as_array()
        .unwrap_or_else(|| panic!("{key}: no fullgrad_bias_layers in the guided manifest"))
        .iter()
        .map(|v| v.as_str().expect("a layer path").to_owned())
        .collect()
}
