//! The tch backend on models that are not classifiers (one binary logit, a segmentation, an
//! embedding) against pytorch-grad-cam 1.5.7's targets for them ([`tests::targets`]).

use backend_tch::{DeviceChoice, TorchScriptModel};
use tests::targets::{check_targets, target_models};

fn check(key: &str) {
    let reference = target_models().into_iter().find(|m| m.key == key).unwrap_or_else(|| panic!("no {key}"));
    let path = reference.file("traced");
    let mut model = TorchScriptModel::load(&path, DeviceChoice::Cpu).unwrap_or_else(|e| panic!("{key}: {e}"));
    check_targets("tch traced", &mut model, &reference, true);
}

#[test]
fn binary_resnet18() {
    check("resnet18_binary");
}

#[test]
fn binary_vit() {
    check("vit_binary");
}

#[test]
fn segmentation_fcn() {
    check("fcn");
}

#[test]
fn similarity_resnet18() {
    check("resnet18_embed");
}

#[test]
fn similarity_vit() {
    check("vit_embed");
}
