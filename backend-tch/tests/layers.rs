//! Layer listing, default layers, nested and in-place layers, gradients checked by finite
//! differences, and the error cases.

use backend_tch::{DeviceChoice, TchError, TorchScriptModel};
use gradcam_core::{CamError, CamModel, LayerTensor, LayerView, Target};
use ndarray::Array4;
use tests::{fixtures_dir, manifest};

fn load(file: &str) -> TorchScriptModel {
    TorchScriptModel::load(&fixtures_dir().join(file), DeviceChoice::Cpu).unwrap()
}

/// Both exports of a model key when the manifest has them.
fn exports(key: &str) -> Vec<String> {
    let m = manifest();
    ["traced", "scripted"]
        .iter()
        .filter_map(|k| m["models"][key]["files"][*k].as_str().map(String::from))
        .collect()
}

fn input(batch: usize) -> Array4<f32> {
    let x = tests::input();
    x.slice(ndarray::s![..batch, .., .., ..]).to_owned()
}

fn shape_of(model: &mut TorchScriptModel, layer: &str) -> Vec<usize> {
    let layers = model.layers().unwrap();
    let info = layers.iter().find(|l| l.name == layer).unwrap_or_else(|| panic!("{layer} not listed"));
    info.shape.clone()
}

#[test]
fn layers_and_default_layers() {
    for file in exports("resnet18") {
        let mut m = load(&file);
        assert_eq!(shape_of(&mut m, "layer4"), [1, 512, 7, 7], "{file}");
        assert_eq!(shape_of(&mut m, "layer4.1"), [1, 512, 7, 7], "{file}");
        assert_eq!(shape_of(&mut m, "layer4.1.conv1"), [1, 512, 7, 7], "{file}");
        assert_eq!(shape_of(&mut m, "layer3"), [1, 256, 14, 14], "{file}");
        assert_eq!(m.default_layer().unwrap(), "layer4", "{file}");
        // Forward order: layer3 before layer4.
        let names: Vec<String> = m.layers().unwrap().into_iter().map(|l| l.name).collect();
        let pos = |n: &str| names.iter().position(|x| x == n).unwrap();
        assert!(pos("layer1") < pos("layer3") && pos("layer3") < pos("layer4"), "{file}: {names:?}");
        assert!(!names.iter().any(|n| n == "fc"), "{file}: (B, K) outputs are not explainable layers");
    }
    for file in exports("vit_tiny") {
        let mut m = load(&file);
        assert_eq!(shape_of(&mut m, "blocks.11.norm1"), [1, 197, 192], "{file}");
        assert_eq!(m.default_layer().unwrap(), "blocks.11.norm1", "{file}");
    }
    for file in exports("lite0") {
        let mut m = load(&file);
        assert_eq!(shape_of(&mut m, "blocks.6"), [1, 320, 7, 7], "{file}");
        assert_eq!(m.default_layer().unwrap(), "bn2", "{file}");
    }
}

/// `d score / d activation` against a central finite difference along the gradient itself,
/// through `forward_with_activation`: checks the backward without trusting autograd's setup.
fn check_gradient_by_finite_difference(model: &mut TorchScriptModel, layer: &str) -> LayerTensor {
    let x = input(1);
    let target = Target::top_one();
    let capture = model.capture(x.view(), layer, Some(&target)).unwrap();
    let class = target.resolve(capture.logits.view()).unwrap()[0];
    let LayerTensor::Spatial(act) = &capture.activation else { panic!("{layer}: expected a feature map") };
    let LayerTensor::Spatial(grad) = capture.gradient.as_ref().unwrap() else { panic!("spatial gradient") };
    let norm = grad.iter().map(|g| g * g).sum::<f32>().sqrt();
    assert!(norm > 0.0, "{layer}: zero gradient");
    let eps = 1e-2;
    let mut score = |sign: f32| {
        let moved = act + &(grad * (sign * eps / norm));
        let logits =
            model.forward_with_activation(x.view(), layer, LayerView::Spatial(moved.view())).unwrap();
        logits[[0, class]]
    };
    let numeric = (score(1.0) - score(-1.0)) / (2.0 * eps);
    assert!(
        (numeric - norm).abs() <= 0.02 * norm,
        "{layer}: finite difference {numeric} vs |gradient| {norm}"
    );
    capture.activation
}

#[test]
fn nested_layers_gradients_match_finite_differences() {
    // (timm's random-init ResNet zero-initialises each block's last BN, so layers inside a residual
    // branch before bn2 have a zero gradient; these all have a real one.)
    for file in exports("resnet18") {
        let mut m = load(&file);
        for layer in
            ["layer4", "layer4.1", "layer4.1.bn2", "layer4.1.act2", "layer4.0.downsample", "layer3.0"]
        {
            check_gradient_by_finite_difference(&mut m, layer);
        }
    }
}

#[test]
fn in_place_ops_after_the_layer_do_not_touch_the_captured_output() {
    // BasicBlock: x = bn2(conv2(..)); x += shortcut (in place); x = act2(x) (ReLU in place).
    // The captured bn2 output must be bn2's own output: act2 == relu(bn2 + layer4.0's output).
    for file in exports("resnet18") {
        let mut m = load(&file);
        let x = input(1);
        let get = |m: &mut TorchScriptModel, layer: &str| {
            let c = m.capture(x.view(), layer, Some(&Target::top_one())).unwrap();
            assert!(c.gradient.is_some());
            match c.activation {
                LayerTensor::Spatial(a) => a,
                LayerTensor::Tokens(_) => panic!("spatial"),
            }
        };
        let bn2 = get(&mut m, "layer4.1.bn2");
        let shortcut = get(&mut m, "layer4.0");
        let act2 = get(&mut m, "layer4.1.act2");
        let expected = (&bn2 + &shortcut).mapv(|v| v.max(0.0));
        let diff = (&expected - &act2).iter().fold(0.0f32, |a, v| a.max(v.abs()));
        assert!(diff < 1e-4, "{file}: captured bn2 output was modified in place (diff {diff})");
        assert!(shortcut.iter().any(|&v| v > 0.0));
    }
}

#[test]
fn capture_without_target_has_no_gradient_and_the_same_activation() {
    let file = &exports("resnet18")[0];
    let mut m = load(file);
    let x = input(2);
    let with = m.capture(x.view(), "layer4.1", Some(&Target::class(3))).unwrap();
    let without = m.capture(x.view(), "layer4.1", None).unwrap();
    assert!(without.gradient.is_none());
    assert_eq!(with.activation, without.activation);
    // `forward` is optimized whole (BN folded into the last convs too), `capture` only before the
    // cut: equal up to float rounding.
    let logits = m.forward(x.view()).unwrap();
    let scale = with.logits.iter().fold(0.0f32, |a, v| a.max(v.abs()));
    let diff = (&logits - &with.logits).iter().fold(0.0f32, |a, v| a.max(v.abs()));
    assert!(diff <= 1e-5 * scale.max(1.0), "forward vs capture logits differ by {diff} (scale {scale})");
}

#[test]
fn softmax_target_gradient_matches_finite_differences() {
    // The seed for a softmax-probability target is p_c (delta_cj - p_j), not one-hot: check the
    // resulting gradient along itself against a finite difference of the probability.
    let file = &exports("resnet18")[0];
    let mut m = load(file);
    let x = input(1);
    let target = Target::class(1).softmax();
    let capture = m.capture(x.view(), "layer4", Some(&target)).unwrap();
    let LayerTensor::Spatial(act) = &capture.activation else { panic!("spatial") };
    let LayerTensor::Spatial(grad) = capture.gradient.as_ref().unwrap() else { panic!("spatial") };
    let norm = grad.iter().map(|g| g * g).sum::<f32>().sqrt();
    assert!(norm > 0.0);
    let eps = 1e-1;
    let mut prob = |sign: f32| {
        let moved = act + &(grad * (sign * eps / norm));
        let logits = m.forward_with_activation(x.view(), "layer4", LayerView::Spatial(moved.view())).unwrap();
        gradcam_core::softmax_rows(logits.view())[[0, 1]] as f64
    };
    let numeric = ((prob(1.0) - prob(-1.0)) / (2.0 * eps as f64)) as f32;
    assert!((numeric - norm).abs() <= 0.02 * norm, "finite difference {numeric} vs |gradient| {norm}");
    // And it is not the logit gradient.
    let logit = m.capture(x.view(), "layer4", Some(&Target::class(1))).unwrap();
    assert_ne!(logit.gradient, capture.gradient);
}

#[test]
fn unknown_layer_is_a_typed_error_with_suggestions() {
    let mut m = load(&exports("resnet18")[0]);
    let x = input(1);
    match m.capture(x.view(), "layer5", Some(&Target::top_one())) {
        Err(CamError::UnknownLayer { name, near }) => {
            assert_eq!(name, "layer5");
            assert!(near.iter().any(|n| n == "layer4"), "suggestions {near:?}");
        }
        other => panic!("expected UnknownLayer, got {:?}", other.map(|c| c.logits.dim())),
    }
    let err = m.forward_with_activation(
        x.view(),
        "layer4.9",
        LayerView::Spatial(Array4::zeros((1, 512, 7, 7)).view()),
    );
    assert!(matches!(err, Err(CamError::UnknownLayer { .. })), "{err:?}");
}

#[test]
fn a_file_that_is_not_torchscript_is_rejected() {
    let dir = std::env::temp_dir().join(format!("backend-tch-test-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let bogus = dir.join("not-a-model.pt");
    std::fs::write(&bogus, b"this is not a zip archive").unwrap();
    let err = TorchScriptModel::load(&bogus, DeviceChoice::Cpu).unwrap_err();
    assert!(matches!(err, TchError::NotTorchScript { .. }), "{err}");
    assert!(err.to_string().contains("not a TorchScript module"), "{err}");

    let missing = dir.join("missing.pt");
    let err = TorchScriptModel::load(&missing, DeviceChoice::Cpu).unwrap_err();
    assert!(matches!(err, TchError::Io { .. }), "{err}");
    std::fs::remove_dir_all(&dir).ok();
}

#[test]
fn device_choice_parses_and_cpu_resolves() {
    assert_eq!("cpu".parse::<DeviceChoice>().unwrap(), DeviceChoice::Cpu);
    assert_eq!("CUDA".parse::<DeviceChoice>().unwrap(), DeviceChoice::Cuda);
    assert!("tpu".parse::<DeviceChoice>().is_err());
    assert_eq!(DeviceChoice::Cpu.resolve().unwrap(), backend_tch::tch::Device::Cpu);
    // Auto is CUDA exactly when CUDA is available; Cuda fails cleanly without it.
    let cuda = backend_tch::cuda_available();
    assert_eq!(DeviceChoice::Auto.resolve().unwrap().is_cuda(), cuda);
    assert_eq!(DeviceChoice::Cuda.resolve().is_ok(), cuda);
    if !cuda {
        // The reason says which half failed: loading libtorch_cuda.so, or finding a device.
        let err = DeviceChoice::Cuda.resolve().unwrap_err();
        let message = err.to_string();
        assert!(matches!(err, TchError::CudaUnavailable(_)), "{message}");
        assert!(
            message.contains("could not be loaded (") || message.contains("finds no CUDA device"),
            "{message}"
        );
    }
}

/// Class-token pruning changes no number: for layers before, at and inside the pruned part of
/// vit_tiny (`blocks.11.norm2` is read by the pruned MLP), captures with and without it agree; it
/// fires on the traced export (the scripted one pools in a function call the shim does not
/// inline, so its head's select is out of sight and nothing is pruned); a CNN is left alone.
#[test]
fn token_pruning_changes_no_number() {
    let x = input(2);
    let max_abs = |a: &LayerTensor| a.to_vec().iter().fold(0.0f32, |m, v| m.max(v.abs()));
    let max_diff = |a: &LayerTensor, b: &LayerTensor| {
        a.to_vec().iter().zip(b.to_vec()).fold(0.0f32, |m, (p, q)| m.max((p - q).abs()))
    };
    for file in exports("vit_tiny") {
        let mut pruned = load(&file);
        let mut full = load(&file);
        full.set_token_pruning(false);
        for layer in ["blocks.10", "blocks.11.norm1", "blocks.11.norm2", "blocks.11"] {
            let what = format!("{file} {layer}");
            if file.contains("traced") {
                assert!(pruned.pruned_nodes(layer).unwrap() > 0, "{what}: nothing pruned");
            }
            assert_eq!(full.pruned_nodes(layer).unwrap(), 0, "{what}: pruned while off");
            let target = Target::top_one();
            let a = pruned.capture(x.view(), layer, Some(&target)).unwrap();
            let b = full.capture(x.view(), layer, Some(&target)).unwrap();
            let scale = b.logits.iter().fold(0.0f32, |m, v| m.max(v.abs()));
            let diff = (&a.logits - &b.logits).iter().fold(0.0f32, |m, v| m.max(v.abs()));
            assert!(diff <= 1e-5 * scale, "{what}: logits differ by {diff}");
            assert_eq!(a.activation, b.activation, "{what}: activations");
            let (ga, gb) = (a.gradient.unwrap(), b.gradient.unwrap());
            assert!(max_abs(&gb) > 0.0, "{what}: zero gradient");
            let diff = max_diff(&ga, &gb);
            assert!(diff <= 1e-5 * max_abs(&gb), "{what}: gradients differ by {diff}");
        }
    }
    for file in exports("resnet18") {
        assert_eq!(load(&file).pruned_nodes("layer4").unwrap(), 0, "{file}: a CNN pruned");
    }
}
