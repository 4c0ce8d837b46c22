//! Regression tests on the small committed models of `tests/models/` (made by its `make.py`, with
//! PyTorch's references): fused attention after the cut, models traced at a fixed input size, and
//! the errors a user sees.

use std::path::{Path, PathBuf};

use backend_tch::{DeviceChoice, TorchScriptModel};
use gradcam_core::{CamError, CamModel, Target};
use ndarray::{ArrayD, Ix4};
use serde_json::Value;
use tests::{assert_close, layer_view, TOL};

fn dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests").join("models")
}

fn manifest() -> Value {
    let path = dir().join("manifest.json");
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

fn npy(path: impl AsRef<Path>) -> ArrayD<f32> {
    tests::npy(dir().join(path))
}

/// The class every reference back-propagates (not the top-1 one).
fn class() -> usize {
    manifest()["class"].as_u64().expect("manifest class") as usize
}

/// (kind, model) for each export of `name`.
fn exports(name: &str) -> Vec<(String, TorchScriptModel)> {
    let m = manifest();
    let files =
        m["models"][name]["files"].as_object().unwrap_or_else(|| panic!("{name}: not in the manifest"));
    files
        .iter()
        .map(|(kind, file)| {
            let path = dir().join(file.as_str().expect("a file name"));
            let model =
                TorchScriptModel::load(&path, DeviceChoice::Cpu).unwrap_or_else(|e| panic!("{name}: {e}"));
            (kind.clone(), model)
        })
        .collect()
}

fn layers_of(name: &str) -> Vec<String> {
    manifest()["models"][name]["layers"]
        .as_array()
        .expect("layers")
        .iter()
        .map(|l| l.as_str().expect("a layer").to_owned())
        .collect()
}

/// Logits, activation and gradient of every reference layer of `name`, in every export, against
/// PyTorch's eager autograd; the capture's logits also against the model's own forward.
fn check_against_pytorch(name: &str) {
    let input = npy(format!("{name}/input.npy")).into_dimensionality::<Ix4>().expect("(B, 3, H, W)");
    for (kind, mut model) in exports(name) {
        let forward = model.forward(input.view()).unwrap_or_else(|e| panic!("{name} {kind}: forward: {e}"));
        for layer in layers_of(name) {
            let what = format!("{name} {kind} {layer}");
            let capture = model
                .capture(input.view(), &layer, Some(&Target::class(class())))
                .unwrap_or_else(|e| panic!("{what}: {e}"));
            let reference = |file: &str| npy(format!("{name}/{layer}/{file}.npy"));
            assert_close(&format!("{what} logits"), capture.logits.view(), reference("logits").view(), TOL);
            assert_close(&format!("{what} logits vs forward"), capture.logits.view(), forward.view(), TOL);
            assert_close(
                &format!("{what} activation"),
                layer_view(&capture.activation),
                reference("activation").view(),
                TOL,
            );
            let gradient = capture.gradient.unwrap_or_else(|| panic!("{what}: no gradient"));
            assert!(layer_view(&gradient).iter().any(|&g| g != 0.0), "{what}: zero gradient");
            assert_close(
                &format!("{what} gradient"),
                layer_view(&gradient),
                reference("gradient").view(),
                TOL,
            );
        }
    }
}

/// torchvision's ViT, traced, runs nn.MultiheadAttention's fused op, which libtorch cannot
/// differentiate ("derivative for aten::_native_multi_head_attention is not implemented").
#[test]
fn torchvision_vit_with_fused_attention_matches_pytorch() {
    check_against_pytorch("tv_vit");
}

/// The fused op with every mask it is given (key padding, attention masks, both merged) and with its
/// attention weights (per head and averaged) read by the rest of the model.
#[test]
fn fused_attention_masks_and_weights_match_pytorch() {
    check_against_pytorch("attn_masks");
}

/// A model traced at 24x40 runs at that size only. Shapes are probed at the input's size.
#[test]
fn a_model_traced_at_a_fixed_size_is_probed_at_the_input_size() {
    check_against_pytorch("fixed_size");
    let input = npy("fixed_size/input.npy").into_dimensionality::<Ix4>().unwrap();
    let shapes = |model: &mut TorchScriptModel| -> Vec<(String, Vec<usize>)> {
        model.layers().unwrap().into_iter().map(|l| (l.name, l.shape)).collect()
    };
    let want: Vec<(String, Vec<usize>)> =
        [("stem", vec![1, 8, 12, 20]), ("mix", vec![1, 4, 60, 8]), ("conv", vec![1, 16, 12, 20])]
            .into_iter()
            .map(|(name, shape)| (name.to_owned(), shape))
            .collect();
    // Shapes for the size set...
    let (_, mut model) = exports("fixed_size").swap_remove(0);
    model.set_probe_size(24, 40);
    assert_eq!(shapes(&mut model), want);
    // ...and after a capture, for the size of its input: 224x224 fails in this model, so the probe
    // must have moved to the input's 24x40.
    let (_, mut model) = exports("fixed_size").swap_remove(0);
    model.capture(input.view(), "conv", Some(&Target::top_one())).unwrap();
    assert_eq!(shapes(&mut model), want, "after a 24x40 capture");
}

/// At a size the model cannot run at, the error names the size and what to do; no C++ backtrace.
#[test]
fn probing_at_a_size_the_model_cannot_run_says_so() {
    let (_, mut model) = exports("fixed_size").swap_remove(0);
    let message = model.layers().unwrap_err().to_string();
    assert_short(&message);
    assert!(message.contains("224x224"), "{message}");
    assert!(message.contains("input size"), "{message}");
}

fn assert_short(message: &str) {
    assert!(
        !message.contains("frame #") && !message.contains("Exception raised from"),
        "backtrace: {message}"
    );
    assert!(
        message.lines().count() <= 4 && message.len() <= 600,
        "too long ({} bytes): {message}",
        message.len()
    );
}

/// nn.TransformerEncoderLayer's fast path (aten::_transformer_encoder_layer_fwd) has no derivative:
/// the error is short, names the op and says what to do; the capture without gradients works.
#[test]
fn an_op_without_derivative_after_the_layer_is_a_short_error() {
    let (_, mut model) = exports("encoder_layer").swap_remove(0);
    let input = npy("encoder_layer/input.npy").into_dimensionality::<Ix4>().unwrap();
    let err = model.capture(input.view(), "embed", Some(&Target::top_one())).unwrap_err();
    let message = err.to_string();
    assert!(matches!(err, CamError::Backend(_)), "{message}");
    assert_short(&message);
    assert!(message.contains("aten::_transformer_encoder_layer_fwd"), "{message}");
    assert!(message.contains("`embed`"), "names the layer: {message}");
    assert!(message.contains("later layer") && message.contains("scorecam"), "says what to do: {message}");
    let plain = model.capture(input.view(), "embed", None).unwrap();
    assert!(plain.gradient.is_none());
}

/// A class past the logits is core's error, raised by the seed, in tch as in every backend.
#[test]
fn a_class_out_of_range_is_cores_error() {
    let (_, mut model) = exports("tv_vit").swap_remove(0);
    let input = npy("tv_vit/input.npy").into_dimensionality::<Ix4>().unwrap();
    let err =
        model.capture(input.view(), "encoder.layers.encoder_layer_1", Some(&Target::class(10))).unwrap_err();
    assert!(matches!(err, CamError::ClassOutOfRange { class: 10, num_classes: 10 }), "{err}");
}

/// A forward that returns a tuple is explained through its first element, the logits: torchvision's
/// scripted GoogLeNet and Inception3 return (logits, aux2, aux1) even in eval mode.
#[test]
fn a_forward_returning_a_tuple_is_explained_through_its_first_element() {
    check_against_pytorch("tuple_output");
}
