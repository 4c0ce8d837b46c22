//! Whole models from both torch exporters against PyTorch autograd and pytorch-grad-cam
//! (the fixtures of `tools/make_model_fixtures.py`).
#![cfg(feature = "ort")]

use backend_ort::OnnxModel;
use gradcam_core::{CamModel, Capture, Target};
use tests::{assert_close, check_model, fixtures_dir, input, layer_view, require};

/// One export of fixture model `key` against PyTorch and pytorch-grad-cam
/// ([`tests::check_model`]: every layer, every method).
fn check(key: &str, exporter: &str) {
    let path = require(format!("{key}.{exporter}.onnx"));
    let mut model = OnnxModel::load(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    check_model(&format!("ort {exporter}"), &mut model, key, |_| true);
}

// The exports fold BatchNorm into the convolutions, so a ReLU6 pre-activation of Lite0 within
// float noise of a kink can fall on the other side than in PyTorch: the reference's tie mask
// covers it.
tests::onnx_fixture_tests!(check);

#[test]
fn default_layers_match_the_other_backends() {
    let dir = fixtures_dir();
    for (key, want) in [("resnet18", "layer4"), ("vit_tiny", "blocks.11.norm1"), ("lite0", "bn2")] {
        for exporter in ["legacy", "dynamo"] {
            let mut model = OnnxModel::load(&dir.join(format!("{key}.{exporter}.onnx"))).expect("load");
            assert_eq!(model.default_layer().expect("default layer"), want, "{key}.{exporter}");
        }
    }
}

/// Two captures of one layer agree within 1e-5: logits, activation and a gradient that is not zero.
fn assert_same_capture(what: &str, a: Capture, b: Capture) {
    assert_close(&format!("{what} logits"), a.logits.view(), b.logits.view(), 1e-5);
    assert_close(&format!("{what} activations"), layer_view(&a.activation), layer_view(&b.activation), 1e-5);
    let (ga, gb) = (a.gradient.expect("gradient"), b.gradient.expect("gradient"));
    assert!(layer_view(&gb).iter().any(|&v| v != 0.0), "{what}: zero gradient");
    assert_close(&format!("{what} gradients"), layer_view(&ga), layer_view(&gb), 1e-5);
}

/// Class-token pruning changes no number: for layers before, at and inside the pruned part of
/// vit_tiny (`blocks.11.norm2` is read by the pruned MLP), captures with and without it agree,
/// and it does fire (the generated model gathers token 0 before the last MLP); a CNN is left alone.
#[test]
fn token_pruning_changes_no_number() {
    let dir = fixtures_dir();
    let input = input();
    let (h, w) = (input.shape()[2], input.shape()[3]);
    for exporter in ["legacy", "dynamo"] {
        let path = dir.join(format!("vit_tiny.{exporter}.onnx"));
        let mut pruned = OnnxModel::load(&path).expect("load");
        let mut full = OnnxModel::load(&path).expect("load");
        full.set_token_pruning(false);
        for layer in ["blocks.10", "blocks.11.norm1", "blocks.11.norm2", "blocks.11"] {
            let what = format!("vit_tiny.{exporter} {layer}");
            let gathers = |m: &OnnxModel| {
                let g = m.backward_graph(layer, h, w).expect("backward graph");
                g.nodes().iter().filter(|n| n.name.contains("gradcam_token_")).count()
            };
            assert!(gathers(&pruned) > 0, "{what}: nothing pruned");
            assert_eq!(gathers(&full), 0, "{what}: pruned while off");
            let target = Target::top_one();
            let a = pruned.capture(input.view(), layer, Some(&target)).expect("capture");
            let b = full.capture(input.view(), layer, Some(&target)).expect("capture");
            assert_same_capture(&what, a, b);
        }
    }
    let resnet = OnnxModel::load(&dir.join("resnet18.dynamo.onnx")).expect("load");
    let g = resnet.backward_graph("layer4", h, w).expect("backward graph");
    assert!(!g.nodes().iter().any(|n| n.name.contains("gradcam_token_")), "resnet18 pruned");
}

/// A generated model run as a chain of small sessions ([`OnnxModel::set_session_nodes`]: 40
/// nodes each, so dozens of links in vit_tiny's backward pass from its first block) gives the
/// numbers one session gives: logits, activation and gradient, and FullGrad's bias gradients.
#[test]
fn chained_sessions_change_no_number() {
    let input = input();
    let target = Target::top_one();
    for exporter in ["legacy", "dynamo"] {
        let path = fixtures_dir().join(format!("vit_tiny.{exporter}.onnx"));
        let mut whole = OnnxModel::load(&path).expect("load");
        let mut chained = OnnxModel::load(&path).expect("load");
        chained.set_session_nodes(40);
        let what = format!("vit_tiny.{exporter} blocks.0");
        let a = chained.capture(input.view(), "blocks.0", Some(&target)).expect("chained capture");
        let b = whole.capture(input.view(), "blocks.0", Some(&target)).expect("capture");
        assert_same_capture(&what, a, b);
        let fa = chained.full_gradients(input.view(), &target).expect("chained fullgrad");
        let fb = whole.full_gradients(input.view(), &target).expect("fullgrad");
        assert_close(
            &format!("{what} input gradient"),
            fa.input_gradient.view(),
            fb.input_gradient.view(),
            1e-5,
        );
        assert_eq!(fa.biases.len(), fb.biases.len(), "{what}: bias layers");
        for (x, y) in fa.biases.iter().zip(&fb.biases) {
            assert_eq!((&x.layer, &x.bias), (&y.layer, &y.bias), "{what}: bias");
            assert_close(&format!("{what} {} gradient", x.layer), x.gradient.view(), y.gradient.view(), 1e-5);
        }
    }
}

/// A capture with a seed runs the model forward once: the forward model it runs is the model with
/// extra outputs (no gradient node), and the backward model that runs after core's seed holds no
/// node of the original model but the constants it reads, and only the weights its rules read.
#[test]
fn a_capture_runs_the_forward_once() {
    let dir = fixtures_dir();
    let input = input();
    let (h, w) = (input.shape()[2], input.shape()[3]);
    for (key, layer) in [("resnet18", "layer3"), ("vit_tiny", "blocks.11.norm1"), ("lite0", "blocks.6")] {
        for exporter in ["legacy", "dynamo"] {
            let what = format!("{key}.{exporter} {layer}");
            let model = OnnxModel::load(&dir.join(format!("{key}.{exporter}.onnx"))).expect("load");
            let original: std::collections::HashSet<&str> = model
                .graph()
                .nodes()
                .iter()
                .filter(|n| n.op_type != "Constant")
                .map(|n| n.name.as_str())
                .collect();
            let split = model.capture_models(layer, h, w).unwrap_or_else(|e| panic!("{what}: {e}"));
            let backward = split.backward.nodes();
            assert!(!backward.is_empty(), "{what}: empty backward model");
            let rerun: Vec<&str> =
                backward.iter().map(|n| n.name.as_str()).filter(|n| original.contains(n)).collect();
            assert!(
                rerun.is_empty(),
                "{what}: the backward model reruns {} original nodes: {rerun:?}",
                rerun.len()
            );
            let weights: std::collections::HashSet<&str> =
                model.graph().model().graph.initializer.iter().map(|t| t.name.as_str()).collect();
            let copied =
                split.backward.model().graph.initializer.iter().filter(|t| weights.contains(t.name.as_str()));
            assert!(copied.count() < weights.len(), "{what}: every weight copied");
            let gradient_nodes =
                split.forward.nodes().iter().filter(|n| n.name.starts_with("gradcam/")).count();
            assert_eq!(gradient_nodes, 0, "{what}: gradient nodes in the forward model");
        }
    }
}

/// One name per module: both exporters' files of each fixture model list the same module paths
/// (`layer2.0.downsample.0`, not the legacy scope's `layer2.0.downsample.downsample.0`), except the
/// BatchNorms the legacy exporter folds into the convolution before them: it keeps no trace of
/// their names, and the convolution's own name then has no output (a typed error says so).
#[test]
fn both_exporters_list_the_same_layers() {
    let dir = fixtures_dir();
    for key in ["resnet18", "vit_tiny", "lite0"] {
        let load = |exporter: &str| {
            backend_ort::OnnxGraph::load(&dir.join(format!("{key}.{exporter}.onnx"))).expect("load")
        };
        let (legacy, dynamo) = (load("legacy"), load("dynamo"));
        let names = |g: &backend_ort::OnnxGraph| -> std::collections::BTreeSet<String> {
            g.layers().into_iter().map(|l| l.name).collect()
        };
        let only_legacy: Vec<String> = names(&legacy).difference(&names(&dynamo)).cloned().collect();
        assert!(only_legacy.is_empty(), "{key}: only in the legacy export: {only_legacy:?}");
        // The module's class, from the dynamo node's scopes and classes (two aligned Python lists).
        let batch_norm = |layer: &backend_ort::onnx_graph::Layer| {
            let meta = |key: &str| -> Vec<String> {
                let props = &dynamo.nodes()[layer.node].metadata_props;
                let value = props.iter().find(|p| p.key == key).map_or("", |p| p.value.as_str());
                value.trim_matches(['[', ']']).split(", ").map(|s| s.trim_matches('\'').to_string()).collect()
            };
            let (scopes, classes) =
                (meta("pkg.torch.onnx.name_scopes"), meta("pkg.torch.onnx.class_hierarchy"));
            scopes
                .iter()
                .position(|s| *s == layer.name)
                .and_then(|i| classes.get(i))
                .is_some_and(|c| c.contains("BatchNorm"))
        };
        let legacy_names = names(&legacy);
        let missing: std::collections::BTreeSet<String> = dynamo
            .layers()
            .into_iter()
            .filter(|l| !legacy_names.contains(&l.name) && !batch_norm(l))
            .map(|l| l.name)
            .collect();
        assert!(missing.is_empty(), "{key}: only in the dynamo export: {missing:?}");
    }
    // resnet18's convolutions have their BatchNorms folded in, by the legacy exporter's constant
    // folding and by the dynamo exporter's optimizer: a typed error naming where to look instead,
    // not "unknown layer", and not bn1's map under conv1's name. The model says the same when the
    // CLI finds the name missing from its layers.
    for (file, next) in [
        ("resnet18.legacy.onnx", ["act1", "layer2.0.downsample"]),
        ("resnet18.dynamo.onnx", ["bn1", "layer2.0.downsample.1"]),
    ] {
        let graph = backend_ort::OnnxGraph::load(&dir.join(file)).expect("load");
        let mut model = OnnxModel::load(&dir.join(file)).expect("load");
        for (name, next) in ["conv1", "layer2.0.downsample.0"].into_iter().zip(next) {
            let err = graph.find_layer(name).expect_err(name);
            assert!(
                matches!(&err, backend_ort::GraphError::FoldedLayer { next: Some(n), .. } if n == next),
                "{file} {name}: {err}"
            );
            assert!(!model.layers().expect("layers").iter().any(|l| l.name == name), "{file} {name}");
            let why = model.why_not_a_layer(name).map(|e| e.to_string()).unwrap_or_default();
            assert!(why.contains(next) && why.contains("optimize=False"), "{file} {name}: {why}");
        }
        assert!(model.why_not_a_layer("layer1.0.conv9").is_none(), "{file}");
    }
}

/// Legacy TF-"same" padding computes a `Pad`'s pads from the input's shape
/// (`Shape → Gather → … → Cast`): folded for the known input size, the layers before such pads
/// differentiate, and agree with the dynamo export, whose pads are constants.
#[test]
fn legacy_same_padding_differentiates() {
    let dir = fixtures_dir();
    let input = input();
    let mut legacy = OnnxModel::load(&dir.join("lite0.legacy.onnx")).expect("load");
    let mut dynamo = OnnxModel::load(&dir.join("lite0.dynamo.onnx")).expect("load");
    for layer in ["blocks.4", "blocks.1"] {
        let target = Target::top_one();
        let a = legacy.capture(input.view(), layer, Some(&target)).unwrap_or_else(|e| panic!("{layer}: {e}"));
        let b = dynamo.capture(input.view(), layer, Some(&target)).unwrap_or_else(|e| panic!("{layer}: {e}"));
        assert_close(&format!("{layer} logits"), a.logits.view(), b.logits.view(), 1e-4);
        assert_close(
            &format!("{layer} activations"),
            layer_view(&a.activation),
            layer_view(&b.activation),
            1e-4,
        );
        // The exports fold BatchNorms differently, so ReLU6 pre-activations within float noise of
        // a kink fall on either side: elementwise they agree only roughly...
        let (ga, gb) = (a.gradient.expect("gradient"), b.gradient.expect("gradient"));
        assert_close(&format!("{layer} gradients"), layer_view(&ga), layer_view(&gb), 1e-2);
        // ...so check the legacy gradient against its own model: along the gradient's direction,
        // central differences of the explained logit through the layer.
        let g = layer_view(&ga);
        let norm = g.iter().map(|v| v * v).sum::<f32>().sqrt();
        let classes = target.resolve(a.logits.view()).expect("classes");
        let score = |logits: ndarray::Array2<f32>| -> f64 {
            classes.iter().enumerate().map(|(b, &c)| logits[[b, c]] as f64).sum()
        };
        let eps = 1e-2f32;
        let mut shifted = |sign: f32| {
            let mut act = a.activation.clone();
            let gradcam_core::LayerTensor::Spatial(x) = &mut act else { panic!("{layer}: a feature map") };
            let g4 = g.view().into_dimensionality::<ndarray::Ix4>().expect("rank 4");
            x.zip_mut_with(&g4, |x, g| *x += sign * eps * g / norm);
            score(legacy.forward_with_activation(input.view(), layer, act.view()).expect("forward"))
        };
        let fd = (shifted(1.0) - shifted(-1.0)) / (2.0 * eps as f64);
        eprintln!("{layer}: directional derivative {fd} vs |gradient| {norm}");
        assert!((fd - norm as f64).abs() <= 0.02 * norm as f64, "{layer}: finite difference {fd} vs {norm}");
    }
}
