//! Explainers of the fixture models (ResNet-18, ViT-Tiny, Lite0 from both torch exporters) run in
//! ONNX Runtime against `gradcam_core::explain` on the same model through `OnnxModel`: every
//! exportable method, batches of 1 and 3, per-image classes with −1 (top-1) among them, to 1e-5.
#![cfg(feature = "ort")]

use backend_ort::export::{
    cam_output, check_explainer, export_explainer, map_noise, ExplainerSession, ExportError, ExportOptions,
    Exported, EXPORTABLE_METHODS,
};
use backend_ort::{OnnxGraph, OnnxModel};
use gradcam_core::{argmax, explain, CamModel, CamOptions, Layout, Method, Target};
use ndarray::{concatenate, s, Array4, ArrayView4, Axis};
use tests::{assert_close, input, require};

mod fixed_copy;

const TOL: f32 = tests::EXPORT_TOL;
/// The most float noise a map may show for the widened tolerance (maps in [0, 1]; Lite0 legacy's
/// GradCAM++ from `blocks.4` moves 2.6e-3; a wrong layer or method differs by tenths).
const MAX_NOISE: f32 = 1e-2;

fn out_dir(name: &str) -> tests::Scratch {
    tests::scratch_dir(env!("CARGO_TARGET_TMPDIR"), "export-models", name)
}

/// Three images: the fixtures' chelsea and coffee, and chelsea mirrored.
fn batch3() -> Array4<f32> {
    let x = input();
    let mirrored = x.slice(s![0..1, .., .., ..;-1]).to_owned();
    concatenate(Axis(0), &[x.view(), mirrored.view()]).expect("same shapes")
}

/// Per image: −1 for image 0, the runner-up class for image 1, class 7 for the others.
fn asked_classes(model: &mut OnnxModel, input: ArrayView4<f32>) -> Vec<i64> {
    let logits = model.forward(input).expect("forward");
    (0..input.shape()[0])
        .map(|b| match b {
            0 => -1,
            1 => {
                let row = logits.row(b);
                let top = argmax(row.iter().copied());
                argmax(row.iter().enumerate().map(|(i, &v)| if i == top { f32::NEG_INFINITY } else { v }))
                    as i64
            }
            _ => 7,
        })
        .collect()
}

/// Runs the explainer on `input` with `asked` classes and compares logits and every map with
/// `explain` over the same layers and methods.
fn compare(what: &str, exported: &Exported, model: &mut OnnxModel, input: ArrayView4<f32>, asked: &[i64]) {
    let mut session = ExplainerSession::load(&exported.path, 0).expect("load the explainer");
    let got = session.run(input, asked).unwrap_or_else(|e| panic!("{what}: run: {e}"));
    let logits = model.forward(input).expect("forward");
    assert_close(&format!("{what} logits"), got.logits.view(), logits.view(), TOL);
    let classes: Vec<usize> = asked
        .iter()
        .zip(logits.outer_iter())
        .map(|(&c, row)| if c < 0 { argmax(row.iter().copied()) } else { c as usize })
        .collect();
    let target = Target::per_image(classes.clone());
    let target = if exported.softmax { target.softmax() } else { target };
    let layers: Vec<&str> = exported.layers.iter().map(|l| l.name.as_str()).collect();
    let options = CamOptions { layout: exported.layout_override, ..CamOptions::default() };
    let explained = explain(model, input, &layers, &exported.methods, &target, &options)
        .unwrap_or_else(|e| panic!("{what}: explain: {e}"));
    assert_eq!(got.maps.len(), explained.len(), "{what}: one output per method");
    for e in explained {
        let name = cam_output(e.method);
        let map = got.map(&name).unwrap_or_else(|| panic!("{what}: no output {name}"));
        assert!(map.iter().all(|v| (0.0..=1.0).contains(v)), "{what} {name}: values outside [0, 1]");
        // A map may be legitimately all zero (no positive evidence), but not every map of a batch.
        assert!(map.outer_iter().any(|m| m.iter().any(|&v| v > 0.5)), "{what} {name}: only empty maps");
        let what = format!("{what} {name} classes {classes:?}");
        if tests::close(map.view(), e.maps.view(), TOL).is_err() {
            // `--check`'s rule: past 1e-5 only within twice the float noise of `explain`'s own map
            // (an ill-conditioned map, e.g. GradCAM++ near a pole), which must itself be small.
            let noise =
                map_noise(model, input, &layers, &[&e], &target, &options).expect("explain nudged")[0].1;
            assert!(noise <= MAX_NOISE, "{what}: explain's own map moves {noise:e} under a 1e-6 nudge");
            eprintln!("{what}: ill-conditioned: noise {noise:e}");
            assert_close(&what, map.view(), e.maps.view(), TOL.max(2.0 * noise));
        } else {
            assert_close(&what, map.view(), e.maps.view(), TOL);
        }
    }
}

/// Exports `key.exporter.onnx` at `layers` with every exportable method and compares batches of
/// 1 and 3 with `explain`; returns the export and its folder (removed when dropped).
fn check(key: &str, exporter: &str, layers: &[&str]) -> (Exported, tests::Scratch) {
    check_methods(key, exporter, layers, &EXPORTABLE_METHODS)
}

/// [`check`] with only `methods`.
fn check_methods(
    key: &str,
    exporter: &str,
    layers: &[&str],
    methods: &[Method],
) -> (Exported, tests::Scratch) {
    let source = require(format!("{key}.{exporter}.onnx"));
    let names: Vec<&str> = methods.iter().map(|m| m.name()).collect();
    let dir = out_dir(&format!("{key}-{exporter}-{}-{}", layers.join("+"), names.join("+")));
    let options = ExportOptions {
        layers: layers.iter().map(|l| l.to_string()).collect(),
        methods: methods.to_vec(),
        ..ExportOptions::default()
    };
    let exported = export_explainer(&source, &dir.join("explainer.onnx"), &options)
        .unwrap_or_else(|e| panic!("{key}.{exporter}: export: {e}"));
    let what = format!("{key}.{exporter} {layers:?}");
    // Nothing dead is left in the file (ONNX Runtime warns about each unused initializer; the
    // head's token index after class-token pruning was one).
    let graph = OnnxGraph::load(&exported.path).expect("read the explainer");
    let read: std::collections::HashSet<&str> =
        graph.nodes().iter().flat_map(|n| n.input.iter().map(String::as_str)).collect();
    let unused: Vec<&str> = graph
        .model()
        .graph
        .initializer
        .iter()
        .map(|t| t.name.as_str())
        .filter(|n| !read.contains(n))
        .collect();
    assert!(unused.is_empty(), "{what}: unused initializers {unused:?}");
    // A logit target's head gradient is a row of the head's weights, not a product.
    let products =
        graph.nodes().iter().filter(|n| n.op_type == "Gemm" && n.name.starts_with("gradcam/")).count();
    assert_eq!(products, 0, "{what}: the head's gradient is still a Gemm");
    let mut model = OnnxModel::load(&source).expect("load the source");
    let x = batch3();
    compare(&format!("{what} batch 1"), &exported, &mut model, x.slice(s![0..1, .., .., ..]), &[-1]);
    let asked = asked_classes(&mut model, x.view());
    compare(&format!("{what} batch 3"), &exported, &mut model, x.view(), &asked);
    (exported, dir)
}

#[test]
fn resnet18_legacy() {
    let (exported, _dir) = check("resnet18", "legacy", &["layer4"]);
    assert_eq!(exported.layers[0].layout, Layout::Nchw);
    assert_eq!(exported.layers[0].shape, [512, 7, 7]);
    // Class 1000 of 1000 reads the zero row appended to the head's weights: zero maps, no error.
    let x = batch3();
    let mut session = ExplainerSession::load(&exported.path, 0).expect("load");
    let got = session.run(x.slice(s![0..1, .., .., ..]), &[1000]).expect("run");
    assert!(got.maps.iter().all(|(_, m)| m.iter().all(|&v| v == 0.0)), "class 1000 gives zero maps");
}

#[test]
fn resnet18_dynamo() {
    check("resnet18", "dynamo", &["layer4.1"]);
}

#[test]
fn vit_tiny_legacy() {
    let (exported, _dir) = check("vit_tiny", "legacy", &["blocks.11.norm1"]);
    let layer = &exported.layers[0];
    assert_eq!(layer.layout, Layout::Tokens);
    let grid = layer.token_grid.expect("a token grid");
    assert_eq!((grid.prefix_tokens, grid.height, grid.width), (1, 14, 14));
    assert!(exported.pruned_nodes > 0, "the class-token pruning did not apply");
}

#[test]
fn vit_tiny_dynamo() {
    check("vit_tiny", "dynamo", &["blocks.11.norm1"]);
}

#[test]
fn lite0_legacy() {
    check("lite0", "legacy", &["blocks.6"]);
}

#[test]
fn lite0_dynamo() {
    check("lite0", "dynamo", &["blocks.6"]);
}

/// The dynamo exporter with `optimize=False`: BatchNorms kept, so a convolution followed by one
/// is a layer of its own (Lite0's `conv_head`; the random ResNet-18's inner convolutions give
/// empty maps); constants as `Constant` nodes (`value_ints`, a mean's axes as a `Reshape` of
/// two) and `CastLike`s of constants to an activation's type.
#[test]
fn unoptimised_dynamo_exports() {
    check("resnet18", "dynamo-plain", &["layer4"]);
    check("lite0", "dynamo-plain", &["conv_head"]);
    check("vit_tiny", "dynamo-plain", &["blocks.11.norm1"]);
}

/// GradCAM alone from `blocks.6`: its weights are the mean of a gradient that came back through
/// the pointwise `conv_head`, which the explainer takes before that product.
#[test]
fn lite0_gradcam_takes_the_mean_first() {
    for exporter in ["legacy", "dynamo"] {
        let (exported, _dir) = check_methods("lite0", exporter, &["blocks.6"], &[Method::GradCam]);
        let graph = OnnxGraph::load(&exported.path).expect("read the explainer");
        let products: Vec<&str> = graph
            .nodes()
            .iter()
            .filter(|n| {
                ["Conv", "ConvTranspose"].contains(&n.op_type.as_str()) && n.name.starts_with("gradcam/")
            })
            .map(|n| n.name.as_str())
            .collect();
        assert!(
            !products.is_empty() && products.iter().all(|n| n.ends_with("/after_mean")),
            "{exporter}: products of the full gradient left: {products:?}"
        );
    }
}

/// From an earlier layer the backward pass crosses depthwise and pointwise convolutions, strided
/// and not.
#[test]
fn lite0_earlier_layer() {
    check("lite0", "dynamo", &["blocks.4"]);
}

/// The TF-"same" padding before a strided depthwise convolution, between `blocks.4` and the
/// logits: an explicit `Pad` in the unoptimised dynamo export (its gradient slices every axis
/// but the batch), pads computed from the input's shape in the legacy export (folded for the
/// export's fixed height and width, the batch left dynamic).
#[test]
fn lite0_through_same_padding() {
    check("lite0", "dynamo-plain", &["blocks.4"]);
    check("lite0", "legacy", &["blocks.4"]);
}

/// Several layers are averaged as core's `combine_layers`: the two backward passes share the
/// forward graph and the class input.
#[test]
fn two_layers_are_combined_as_explain_does() {
    check("resnet18", "dynamo", &["layer3", "layer4"]);
}

/// The softmax probability's gradient, seeded in the graph, matches core's seed.
#[test]
fn softmax_target() {
    let source = require("resnet18.legacy.onnx");
    let dir = out_dir("softmax");
    let options = ExportOptions {
        layers: vec!["layer4".into()],
        methods: vec![Method::GradCam, Method::LayerCam],
        softmax: true,
        ..ExportOptions::default()
    };
    let exported = export_explainer(&source, &dir.join("explainer.onnx"), &options).expect("export");
    let mut model = OnnxModel::load(&source).expect("load");
    let x = batch3();
    let asked = asked_classes(&mut model, x.view());
    compare("resnet18 softmax", &exported, &mut model, x.view(), &asked);
}

/// The check fails an explainer that computes something else than `explain` (here: told it
/// holds `layer3` while it computes `layer4`), noise measured or not.
#[test]
fn the_check_fails_a_wrong_explainer() {
    let source = require("resnet18.legacy.onnx");
    let dir = out_dir("wrong-explainer");
    let options = ExportOptions { layers: vec!["layer4".into()], ..ExportOptions::default() };
    let mut exported = export_explainer(&source, &dir.join("explainer.onnx"), &options).expect("export");
    assert!(check_explainer(&exported, 0).expect("the true check").passed());
    exported.layers[0].name = "layer3".into();
    match check_explainer(&exported, 0) {
        Err(ExportError::CheckFailed { report, .. }) => assert!(report.contains("cam_gradcam"), "{report}"),
        other => panic!("a wrong explainer passed the check: {other:?}"),
    }
}

/// With no layer given, the export takes the model's default layer (`bn2` for Lite0); the
/// library's check passes; the file declares the signature and keeps the source's opset.
#[test]
fn default_layer_signature_and_check() {
    let source = require("lite0.dynamo.onnx");
    let dir = out_dir("default-layer");
    let options =
        ExportOptions { methods: vec![Method::GradCam, Method::GradCamPlusPlus], ..ExportOptions::default() };
    let exported = export_explainer(&source, &dir.join("lite0.explainer.onnx"), &options).expect("export");
    assert_eq!(exported.layers[0].name, "bn2");
    let report = check_explainer(&exported, 0).expect("check");
    assert!(report.passed(), "{report}");
    assert_eq!(report.maps.len(), 2);

    let graph = OnnxGraph::load(&exported.path).expect("read the explainer");
    assert_eq!(graph.opset(), OnnxGraph::load(&source).expect("read the source").opset());
    assert_eq!(graph.input_names(), ["input", "class"]);
    let dims = graph.input_dims("input").expect("input dims");
    assert_eq!(dims, [None, Some(3), Some(224), Some(224)], "N dynamic, the size fixed");
    assert_eq!(graph.input_dims("class").expect("class dims"), [None]);
    assert_eq!(graph.output_names(), ["logits", "cam_gradcam", "cam_gradcam++"]);
    let layers = graph
        .model()
        .metadata_props
        .iter()
        .find(|p| p.key == "gradcam.layers")
        .expect("metadata")
        .value
        .clone();
    assert_eq!(layers, "bn2 (nchw)");
}

/// A source that fixes its batch (what `torch.onnx.export` writes by default) still gives an
/// explainer that takes any batch, as the signature says: it runs the source's graph on
/// that many images at a time, the last part padded. Batch 3 is a multiple of neither 1 nor 2.
#[test]
fn fixed_batch_sources_take_any_batch() {
    let methods = [Method::GradCam, Method::GradCamPlusPlus, Method::LayerCam];
    for (key, exporter, layer, batch) in [
        ("resnet18", "legacy", "layer4", 1),
        ("resnet18", "legacy", "layer4", 2),
        ("vit_tiny", "dynamo", "blocks.11.norm1", 1),
    ] {
        let file = format!("{key}.{exporter}.onnx");
        let (_copy, source) = fixed_copy::with_fixed_batch(&file, batch);
        let what = format!("{file} fixed to batch {batch}");
        let dir = out_dir(&format!("fixed-{key}-{exporter}-{batch}"));
        let options = ExportOptions {
            layers: vec![layer.into()],
            methods: methods.to_vec(),
            ..ExportOptions::default()
        };
        let exported = export_explainer(&source, &dir.join("explainer.onnx"), &options)
            .unwrap_or_else(|e| panic!("{what}: export: {e}"));
        assert_eq!(exported.source_batch, Some(batch as usize), "{what}");
        let graph = OnnxGraph::load(&exported.path).expect("read the explainer");
        assert_eq!(graph.input_dims("input").expect("dims"), [None, Some(3), Some(224), Some(224)], "{what}");
        assert_eq!(graph.input_dims("class").expect("dims"), [None], "{what}");
        let mut model = OnnxModel::load(&require(&file)).expect("load the dynamic source");
        let x = batch3();
        compare(&format!("{what}, batch 1"), &exported, &mut model, x.slice(s![0..1, .., .., ..]), &[-1]);
        let asked = asked_classes(&mut model, x.view());
        compare(&format!("{what}, batch 3"), &exported, &mut model, x.view(), &asked);
        let report = check_explainer(&exported, 0).unwrap_or_else(|e| panic!("{what}: check: {e}"));
        assert!(report.passed(), "{what}: {report}");
    }
}
