//! Loading checkpoints (strict, with named errors) and listing layers.
#![cfg(feature = "candle")]

use std::collections::HashMap;

use backend_candle::{CandleError, CandleModel, ARCHITECTURES};
use candle_core::{DType, Device, Tensor};
use gradcam_core::{CamError, CamModel};
use tests::fixtures_dir as fixtures;

mod common;
use common::load_modified;

fn resnet18_tensors() -> HashMap<String, Tensor> {
    candle_core::safetensors::load(fixtures().join("resnet18.safetensors"), &Device::Cpu).unwrap()
}

#[test]
fn unknown_architecture_suggests_near_names() {
    let err =
        CandleModel::from_safetensors(&fixtures().join("resnet18.safetensors"), "resnet19").unwrap_err();
    match &err {
        CandleError::UnknownArch { arch, near } => {
            assert_eq!(arch, "resnet19");
            assert!(near.iter().any(|n| n == "resnet18"), "{near:?}");
        }
        other => panic!("expected UnknownArch, got {other}"),
    }
    assert!(err.to_string().contains("resnet18"), "{err}");
}

#[test]
fn missing_file_is_a_load_error() {
    let err =
        CandleModel::from_safetensors("/nonexistent/model.safetensors".as_ref(), "resnet18").unwrap_err();
    assert!(matches!(err, CandleError::Load { .. }), "{err}");
}

#[test]
fn wrong_tensor_shape_names_the_tensor() {
    let mut tensors = resnet18_tensors();
    tensors.insert("layer2.0.bn1.weight".into(), Tensor::ones(7, DType::F32, &Device::Cpu).unwrap());
    match load_modified(&tensors, "resnet18", "shape").unwrap_err() {
        CandleError::TensorShape { name, expected, found, .. } => {
            assert_eq!(name, "layer2.0.bn1.weight");
            assert_eq!(expected, vec![128]);
            assert_eq!(found, vec![7]);
        }
        other => panic!("expected TensorShape, got {other}"),
    }
}

#[test]
fn missing_tensor_names_the_tensor() {
    let mut tensors = resnet18_tensors();
    tensors.remove("layer3.1.conv2.weight");
    match load_modified(&tensors, "resnet18", "missing").unwrap_err() {
        CandleError::MissingTensor { name, arch } => {
            assert_eq!(name, "layer3.1.conv2.weight");
            assert_eq!(arch, "resnet18");
        }
        other => panic!("expected MissingTensor, got {other}"),
    }
}

#[test]
fn another_architecture_is_refused() {
    let path = fixtures().join("resnet18.safetensors");
    // resnet10t has a deep stem: the plain 7x7 stem's tensors are not its own.
    let err = CandleModel::from_safetensors(&path, "resnet10t").unwrap_err();
    assert!(matches!(&err, CandleError::MissingTensor { name, .. } if name == "conv1.0.weight"), "{err}");
    // resnet34 needs 3 blocks in layer1.
    let err = CandleModel::from_safetensors(&path, "resnet34").unwrap_err();
    assert!(
        matches!(&err, CandleError::MissingTensor { name, .. } if name == "layer1.2.conv1.weight"),
        "{err}"
    );
    // An extra tensor is not silently ignored.
    let mut tensors = resnet18_tensors();
    tensors.insert("layer5.0.conv1.weight".into(), Tensor::ones((2, 2), DType::F32, &Device::Cpu).unwrap());
    let err = load_modified(&tensors, "resnet18", "extra").unwrap_err();
    assert!(
        matches!(&err, CandleError::UnexpectedTensor { name, .. } if name == "layer5.0.conv1.weight"),
        "{err}"
    );
}

#[test]
fn unknown_layer_lists_near_matches() {
    let mut model =
        CandleModel::from_safetensors(&fixtures().join("resnet18.safetensors"), "resnet18").unwrap();
    let x = ndarray::Array4::<f32>::zeros((1, 3, 64, 64));
    for result in [
        model.capture(x.view(), "layer5", None).map(|_| ()),
        model
            .forward_with_activation(x.view(), "layer5", gradcam_core::LayerView::Spatial(x.view()))
            .map(|_| ()),
    ] {
        match result.unwrap_err() {
            CamError::UnknownLayer { name, near } => {
                assert_eq!(name, "layer5");
                assert!(near.iter().any(|n| n == "layer4"), "{near:?}");
            }
            other => panic!("expected UnknownLayer, got {other}"),
        }
    }
}

#[test]
fn layers_are_module_paths_with_shapes() {
    let mut model =
        CandleModel::from_safetensors(&fixtures().join("resnet18.safetensors"), "resnet18").unwrap();
    let layers = model.layers().unwrap();
    let shape = |name: &str| layers.iter().find(|l| l.name == name).map(|l| l.shape.clone());
    assert_eq!(shape("layer4"), Some(vec![1, 512, 7, 7]));
    assert_eq!(shape("layer4.1"), Some(vec![1, 512, 7, 7]));
    assert_eq!(shape("layer4.1.conv2"), Some(vec![1, 512, 7, 7]));
    assert_eq!(shape("layer3.0.downsample.0"), Some(vec![1, 256, 14, 14]));
    assert_eq!(shape("maxpool"), Some(vec![1, 64, 56, 56]));
    assert_eq!(shape("fc"), None, "2-D outputs are not layers");
    // Forward order: a module is listed after everything inside it.
    let pos = |name: &str| layers.iter().position(|l| l.name == name).unwrap();
    assert!(pos("layer4.1.conv2") < pos("layer4.1") && pos("layer4.1") < pos("layer4"));
    assert_eq!(model.default_layer().unwrap(), "layer4");

    let mut vit =
        CandleModel::from_safetensors(&fixtures().join("vit_tiny.safetensors"), "vit_tiny_patch16_224")
            .unwrap();
    assert_eq!(vit.default_layer().unwrap(), "blocks.11.norm1");
    assert_eq!(vit.prefix_tokens(), 1);
    let layers = vit.layers().unwrap();
    let shape = |name: &str| layers.iter().find(|l| l.name == name).map(|l| l.shape.clone());
    assert_eq!(shape("blocks.11.norm1"), Some(vec![1, 197, 192]));
    assert_eq!(shape("blocks.3.attn.qkv"), Some(vec![1, 197, 576]));
    assert_eq!(shape("patch_embed.proj"), Some(vec![1, 192, 14, 14]));

    let mut lite =
        CandleModel::from_safetensors(&fixtures().join("lite0.safetensors"), "tf_efficientnet_lite0")
            .unwrap();
    assert_eq!(lite.default_layer().unwrap(), "bn2");
    let layers = lite.layers().unwrap();
    let shape = |name: &str| layers.iter().find(|l| l.name == name).map(|l| l.shape.clone());
    assert_eq!(shape("bn2"), Some(vec![1, 1280, 7, 7]));
    assert_eq!(shape("blocks.6"), Some(vec![1, 320, 7, 7]));
    assert_eq!(shape("blocks.6.0"), Some(vec![1, 320, 7, 7]));
    assert_eq!(shape("blocks.1.0.conv_dw"), Some(vec![1, 96, 56, 56]));
}

#[test]
fn a_vit_refuses_an_input_its_position_embedding_does_not_fit() {
    let mut vit =
        CandleModel::from_safetensors(&fixtures().join("vit_tiny.safetensors"), "vit_tiny_patch16_224")
            .unwrap();
    let x = ndarray::Array4::<f32>::zeros((1, 3, 96, 128));
    let err = vit.forward(x.view()).unwrap_err();
    assert!(err.to_string().contains("224x224"), "{err}");
}

#[test]
fn architectures_cover_the_families() {
    for arch in
        ["resnet10t", "resnet18", "resnet50", "resnet152", "tf_efficientnet_lite0", "efficientnet_lite0"]
    {
        assert!(ARCHITECTURES.contains(&arch), "{arch}");
    }
    for arch in ["vit_tiny_patch16_224", "vit_base_patch16_224", "deit_small_distilled_patch16_224"] {
        assert!(ARCHITECTURES.contains(&arch), "{arch}");
    }
}
