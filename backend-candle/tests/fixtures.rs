//! candle against PyTorch and pytorch-grad-cam on the generated model fixtures
//! ([`tests::check_model`]: logits, activations and gradients to 1e-4 relative, every method's
//! CAM to 1e-4), plus what only candle's own forward shows.
#![cfg(feature = "candle")]

use backend_candle::CandleModel;
use gradcam_core::{CamModel, LayerTensor};
use ndarray::Axis;
use tests::{assert_close, check_model, input, manifest, npy, require};

fn load(key: &str) -> CandleModel {
    let arch = manifest()["models"][key]["arch"].as_str().expect("arch").to_string();
    CandleModel::from_safetensors(&require(format!("{key}.safetensors")), &arch)
        .unwrap_or_else(|e| panic!("{key}: {e}"))
}

fn check(key: &str) {
    let mut model = load(key);
    if let Some(prefix) = manifest()["models"][key]["prefix_tokens"].as_u64() {
        assert_eq!(model.prefix_tokens(), prefix as usize, "{key}: prefix tokens");
    }
    check_model("candle", &mut model, key, |_| true);
}

#[test]
fn resnet18_matches_pytorch_and_grad_cam() {
    check("resnet18");
}

#[test]
fn vit_tiny_matches_pytorch_and_grad_cam() {
    check("vit_tiny");
}

#[test]
fn lite0_matches_pytorch_and_grad_cam() {
    check("lite0");
}

/// The shipped pretrained Lite0 on chelsea: class 285 (Egyptian cat) with PyTorch's probability
/// (0.772 with the fixtures' non-antialiased resize; 0.80 with PIL's, see assets/README.md).
#[test]
fn pretrained_lite0_sees_an_egyptian_cat() {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../assets/models/tf_efficientnet_lite0.safetensors");
    let mut model = CandleModel::from_safetensors(&path, "tf_efficientnet_lite0").unwrap();
    let x = input();
    let chelsea = x.index_axis(Axis(0), 0).insert_axis(Axis(0)).to_owned();
    let probs = gradcam_core::softmax_rows(model.forward(chelsea.view()).unwrap().view());
    assert_eq!(gradcam_core::argmax(probs.row(0).iter().copied()), 285);
    let p = probs[[0, 285]];
    assert!((0.75..0.85).contains(&p), "p(285) = {p}");
    let torch = npy::<f32>("lite0/bn2/logits.npy").into_dimensionality::<ndarray::Ix2>().unwrap();
    let p_torch = gradcam_core::softmax_rows(torch.view())[[0, 285]];
    assert!((p - p_torch).abs() < 1e-4, "p(285) = {p}, PyTorch {p_torch}");
}

/// AblationCAM's path: replacing a layer's output by itself changes nothing, whether the layer is
/// a sequential step (the forward starts there) or nested (it restarts from the cached step
/// before it).
#[test]
fn forward_with_unchanged_activation_is_the_forward() {
    for (key, layers) in [
        ("resnet18", &["layer4", "layer4.1.conv2", "layer3.0.downsample"][..]),
        ("vit_tiny", &["blocks.11.norm1", "blocks.5"][..]),
    ] {
        let mut model = load(key);
        let x = input();
        let logits = model.forward(x.view()).unwrap();
        for layer in layers {
            let capture = model.capture(x.view(), layer, None).unwrap();
            assert!(capture.gradient.is_none());
            assert_close(
                &format!("{key}/{layer}: capture logits"),
                capture.logits.view(),
                logits.view(),
                1e-5,
            );
            // Twice: the second run hits the below-cut cache.
            for _ in 0..2 {
                let again =
                    model.forward_with_activation(x.view(), layer, capture.activation.view()).unwrap();
                assert_close(&format!("{key}/{layer}: replaced"), again.view(), logits.view(), 1e-5);
            }
        }
    }
}

/// Replacing a layer's output really changes what comes after it.
#[test]
fn forward_with_zeroed_activation_changes_the_logits() {
    let mut model = load("resnet18");
    let x = input();
    let capture = model.capture(x.view(), "layer4.0", None).unwrap();
    let zeros =
        LayerTensor::from_shape_vec(capture.activation.shape(), vec![0.0; capture.activation.to_vec().len()])
            .unwrap();
    let logits = model.forward_with_activation(x.view(), "layer4.0", zeros.view()).unwrap();
    let diff = (&logits - &capture.logits).iter().fold(0f32, |m, v| m.max(v.abs()));
    assert!(diff > 1e-3, "zeroing layer4.0 changed the logits by only {diff}");
}
