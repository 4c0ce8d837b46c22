//! candle on models that are not classifiers against pytorch-grad-cam 1.5.7's targets for them
//! ([`tests::targets`]): the zoo reads the target fixtures' state dicts (timm: one logit, and
//! headless `num_classes=0` embeddings; torchvision's FCN segmenter); plus what a headless
//! checkpoint is and is not.
#![cfg(feature = "candle")]

use std::collections::HashMap;
use std::path::Path;

use backend_candle::{CandleError, CandleModel};
use candle_core::{DType, Device, IndexOp, Tensor};
use gradcam_core::CamModel;
use ndarray::Ix4;
use tests::targets::{check_targets, target_model};

mod common;
use common::load_modified as load;

/// Every target model with a timm state dict, ScoreCAM and AblationCAM included (one file per
/// model). The FCN segmenter is no timm architecture: the zoo must refuse it by name, not skip it.
fn check(key: &str) {
    let reference = target_model(key);
    let Some(arch) = &reference.arch else {
        assert_eq!(key, "fcn", "{key}: the manifest gives no timm arch; candle would not be checked on it");
        let err = CandleModel::from_safetensors(&reference.file("traced"), "fcn").unwrap_err();
        assert!(matches!(&err, CandleError::UnknownArch { arch, .. } if arch == "fcn"), "{err}");
        return;
    };
    let path = reference.file("safetensors");
    let mut model =
        CandleModel::from_safetensors(&path, arch).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    check_targets("candle safetensors", &mut model, &reference, true);
}

tests::target_tests!(check);

/// torchvision's FCN segmenter (`fcn_resnet50`: a dilated ResNet-50 trunk, `FCNHead`, bilinear
/// upsampling to the input) from its state dict, `backbone.layer4` explained for a mask and for
/// the argmax region, every gradient method.
#[test]
fn segmentation_torchvision_fcn() {
    let reference = target_model("fcn_resnet50");
    let arch = reference.arch.clone().expect("fcn_resnet50 names its arch");
    let path = reference.file("safetensors");
    let mut model =
        CandleModel::from_safetensors(&path, &arch).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    assert_eq!(model.default_layer().unwrap(), "backbone.layer4");
    check_targets("candle safetensors", &mut model, &reference, false);
}

fn tensors(key: &str) -> HashMap<String, Tensor> {
    candle_core::safetensors::load(target_model(key).file("safetensors"), &Device::Cpu).unwrap()
}

/// The ViT embedding's weights as a headless distilled DeiT-Tiny: a distillation token, and a
/// position embedding for it after the class token's.
fn headless_deit() -> HashMap<String, Tensor> {
    let mut t = tensors("vit_embed");
    let dev = Device::Cpu;
    t.insert("dist_token".into(), Tensor::randn(0f32, 0.02, (1, 1, 192), &dev).unwrap());
    let pos = &t["pos_embed"];
    let extra = Tensor::randn(0f32, 0.02, (1, 1, 192), &dev).unwrap();
    let pos = Tensor::cat(&[&pos.i((.., ..1)).unwrap(), &extra, &pos.i((.., 1..)).unwrap()], 1).unwrap();
    t.insert("pos_embed".into(), pos);
    t
}

/// `prefix` as an identity `Linear` over `dim` features, zero bias.
fn identity_head(t: &mut HashMap<String, Tensor>, prefix: &str, dim: usize) {
    let dev = Device::Cpu;
    t.insert(format!("{prefix}.weight"), Tensor::eye(dim, DType::F32, &dev).unwrap());
    t.insert(format!("{prefix}.bias"), Tensor::zeros(dim, DType::F32, &dev).unwrap());
}

/// A headless checkpoint gives what its classifier head would read: the same checkpoint with
/// identity heads gives the same output (timm's `forward_head(pre_logits=True)` is the classifier
/// path without its `Linear`s), for the families the target fixtures do not hold: EfficientNet-Lite
/// (the shipped Lite0 without `classifier`) and distilled DeiT, whose head averages the class and
/// distillation tokens' heads.
#[test]
fn headless_output_is_what_the_head_reads() {
    let input = tests::npy::<f32>(target_model("vit_embed").input).into_dimensionality::<Ix4>().unwrap();
    let lite0 =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../assets/models/tf_efficientnet_lite0.safetensors");
    let mut lite0 = candle_core::safetensors::load(lite0, &Device::Cpu).unwrap();
    lite0.remove("classifier.weight");
    lite0.remove("classifier.bias");
    let cases = [
        ("tf_efficientnet_lite0", lite0, &["classifier"][..], 1280),
        ("deit_tiny_distilled_patch16_224", headless_deit(), &["head", "head_dist"], 192),
    ];
    for (arch, headless, heads, dim) in cases {
        let mut model = load(&headless, arch, "headless").unwrap_or_else(|e| panic!("{arch}: {e}"));
        let features = model.forward(input.view()).unwrap();
        assert_eq!(features.dim(), (2, dim), "{arch}: (B, D) features");
        let mut with_heads = headless.clone();
        for head in heads {
            identity_head(&mut with_heads, head, dim);
        }
        let logits = load(&with_heads, arch, "identity").unwrap().forward(input.view()).unwrap();
        tests::assert_close(arch, features.view(), logits.view(), 1e-6);
    }
}

/// Some of a head's tensors but not all is a typed error naming what is there and what is not,
/// for a single head and for DeiT's pair.
#[test]
fn a_partial_head_is_refused_by_name() {
    let mut resnet = tensors("resnet18_binary");
    resnet.remove("fc.weight");
    let mut vit = tensors("vit_binary");
    vit.remove("head.bias");
    let mut deit = headless_deit();
    identity_head(&mut deit, "head", 192);
    let cases = [
        (resnet, "resnet18", vec!["fc.bias"], vec!["fc.weight"]),
        (vit, "vit_tiny_patch16_224", vec!["head.weight"], vec!["head.bias"]),
        (
            deit,
            "deit_tiny_distilled_patch16_224",
            vec!["head.weight", "head.bias"],
            vec!["head_dist.weight", "head_dist.bias"],
        ),
    ];
    for (tensors, arch, want_found, want_missing) in cases {
        let err = load(&tensors, arch, "partial").unwrap_err();
        let text = err.to_string();
        match err {
            CandleError::PartialHead { arch: a, found, missing } => {
                assert_eq!(a, arch);
                assert_eq!(found, want_found, "{arch}");
                assert_eq!(missing, want_missing, "{arch}");
                assert!(text.contains("num_classes=0"), "{text}");
            }
            other => panic!("{arch}: expected PartialHead, got {other}"),
        }
    }
}
