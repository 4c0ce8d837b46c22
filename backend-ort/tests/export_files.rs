//! Explainer exports beyond the fixture models: channels-last and token layers at a non-square
//! input size (small generated models), the files written (external weights copied or
//! referenced, movable together), and every refusal as a typed error that leaves no file behind.
#![cfg(feature = "ort")]

use std::path::Path;

use backend_ort::export::{
    export_explainer, ExplainerSession, ExportError, ExportOptions, Exported, Weights, EXPORTABLE_METHODS,
};
use backend_ort::onnx_graph::GraphError;
use backend_ort::{OnnxGraph, OnnxModel};
use gradcam_core::{argmax, explain, CamModel, CamOptions, Layout, Method, Target};
use ndarray::Array4;
use onnx_protobuf::attribute_proto::AttributeType;
use onnx_protobuf::{
    tensor_proto::DataType, tensor_shape_proto, type_proto, AttributeProto, GraphProto, ModelProto,
    NodeProto, OperatorSetIdProto, TensorProto, TensorShapeProto, TypeProto, ValueInfoProto,
};
use tests::{assert_close, require};

const TOL: f32 = tests::EXPORT_TOL;

fn out_dir(name: &str) -> tests::Scratch {
    tests::scratch_dir(env!("CARGO_TARGET_TMPDIR"), "export-files", name)
}

/// Every file in `dir`, sorted.
fn files(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .expect("list")
        .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names
}

// ---- small generated models -------------------------------------------------------------

fn node(op: &str, inputs: &[&str], output: &str, attrs: Vec<AttributeProto>) -> NodeProto {
    let mut n = NodeProto::new();
    n.op_type = op.into();
    n.name = format!("/{output}/{op}");
    n.input = inputs.iter().map(|s| s.to_string()).collect();
    n.output = vec![output.into()];
    n.attribute = attrs;
    n
}

fn ints(name: &str, values: &[i64]) -> AttributeProto {
    let mut a = AttributeProto::new();
    a.name = name.into();
    a.type_ = AttributeType::INTS.into();
    a.ints = values.to_vec();
    a
}

fn int(name: &str, value: i64) -> AttributeProto {
    let mut a = AttributeProto::new();
    a.name = name.into();
    a.type_ = AttributeType::INT.into();
    a.i = value;
    a
}

/// A float weight of `dims` with deterministic values in about [-0.5, 0.5].
fn weight(name: &str, dims: &[i64], seed: u32) -> TensorProto {
    let mut t = TensorProto::new();
    t.name = name.into();
    t.data_type = DataType::FLOAT as i32;
    t.dims = dims.to_vec();
    let n: i64 = dims.iter().product();
    t.float_data = (0..n as u32)
        .map(|i| {
            ((i.wrapping_mul(2_654_435_761).wrapping_add(seed * 40_503) >> 8) as f32 / (1u32 << 24) as f32)
                - 0.5
        })
        .collect();
    t
}

fn const_ints(name: &str, values: &[i64]) -> TensorProto {
    let mut t = TensorProto::new();
    t.name = name.into();
    t.data_type = DataType::INT64 as i32;
    t.dims = vec![values.len() as i64];
    t.int64_data = values.to_vec();
    t
}

/// A float value info of rank `rank`, every dim symbolic.
fn declared(name: &str, rank: usize) -> ValueInfoProto {
    let mut shape = TensorShapeProto::new();
    for d in 0..rank {
        let mut dim = tensor_shape_proto::Dimension::new();
        dim.value = Some(tensor_shape_proto::dimension::Value::DimParam(format!("{name}{d}")));
        shape.dim.push(dim);
    }
    let mut t = type_proto::Tensor::new();
    t.elem_type = DataType::FLOAT as i32;
    t.shape = Some(shape).into();
    let mut tp = TypeProto::new();
    tp.value = Some(type_proto::Value::TensorType(t));
    let mut vi = ValueInfoProto::new();
    vi.name = name.into();
    vi.type_ = Some(tp).into();
    vi
}

fn model(nodes: Vec<NodeProto>, initializers: Vec<TensorProto>) -> Vec<u8> {
    let mut g = GraphProto::new();
    g.name = "generated".into();
    g.input.push(declared("image", 4));
    g.output.push(declared("scores", 2));
    g.node = nodes;
    g.initializer = initializers;
    let mut m = ModelProto::new();
    m.ir_version = 8;
    let mut op = OperatorSetIdProto::new();
    op.version = 17;
    m.opset_import.push(op);
    m.graph = Some(g).into();
    OnnxGraph::from_model(m).to_bytes()
}

/// `conv = Conv(image, w1)` with a k×k kernel at stride k: non-overlapping patches.
fn patchify(k: i64) -> NodeProto {
    node("Conv", &["image", "w1"], "conv", vec![ints("strides", &[k, k]), ints("kernel_shape", &[k, k])])
}

/// Patchify (4×4 stride-4 conv, 8 channels), a channels-last block (`nhwc`: transpose to
/// (N, h, w, C), ReLU), a per-pixel MLP, mean pooling, 5 classes. Any input size divisible by 4.
fn channels_last_model() -> Vec<u8> {
    model(
        vec![
            patchify(4),
            node("Transpose", &["conv"], "hwc", vec![ints("perm", &[0, 2, 3, 1])]),
            node("Relu", &["hwc"], "nhwc", vec![]),
            node("MatMul", &["nhwc", "w2"], "mix", vec![]),
            node("Relu", &["mix"], "mix_relu", vec![]),
            node("ReduceMean", &["mix_relu"], "pooled", vec![ints("axes", &[1, 2]), int("keepdims", 0)]),
            node("MatMul", &["pooled", "w3"], "scores", vec![]),
        ],
        vec![weight("w1", &[8, 3, 4, 4], 1), weight("w2", &[8, 8], 2), weight("w3", &[8, 5], 3)],
    )
}

/// Patchify (8×8 stride-8 conv, 8 channels) into tokens, a prefix token (the mean of the patches)
/// in front, a token-wise MLP (`tokens`: its first layer's output), mean over tokens, 5 classes.
fn token_model() -> Vec<u8> {
    model(
        vec![
            patchify(8),
            node("Reshape", &["conv", "flat"], "flat_conv", vec![]),
            node("Transpose", &["flat_conv"], "patches", vec![ints("perm", &[0, 2, 1])]),
            node("ReduceMean", &["patches"], "prefix", vec![ints("axes", &[1]), int("keepdims", 1)]),
            node("Concat", &["prefix", "patches"], "sequence", vec![int("axis", 1)]),
            node("MatMul", &["sequence", "w2"], "hidden", vec![]),
            node("Relu", &["hidden"], "tokens", vec![]),
            node("MatMul", &["tokens", "w3"], "mix", vec![]),
            node("Relu", &["mix"], "mix_relu", vec![]),
            node("ReduceMean", &["mix_relu"], "pooled", vec![ints("axes", &[1]), int("keepdims", 0)]),
            node("MatMul", &["pooled", "w4"], "scores", vec![]),
        ],
        vec![
            weight("w1", &[8, 3, 8, 8], 1),
            const_ints("flat", &[0, 8, -1]),
            weight("w2", &[8, 8], 2),
            weight("w3", &[8, 8], 3),
            weight("w4", &[8, 5], 4),
        ],
    )
}

/// An int64 scalar constant.
fn scalar_int(name: &str, value: i64) -> TensorProto {
    let mut t = const_ints(name, &[value]);
    t.dims.clear();
    t
}

/// Patchify (4×4 stride-4 conv, 8 channels, ReLU: `act`), then the map flattened over the
/// whole batch and gathered back by indices computed from its size, as the dynamo exporter
/// writes an `as_strided` (timm's ConvNeXt): the index count depends on the batch. Mean pooling,
/// 5 classes.
fn flat_gather_model() -> Vec<u8> {
    model(
        vec![
            patchify(4),
            node("Relu", &["conv"], "act", vec![]),
            node("Reshape", &["act", "minus_one"], "flat", vec![]),
            node("Size", &["flat"], "count", vec![]),
            node("Range", &["zero", "count", "one"], "index", vec![]),
            node("Gather", &["flat", "index"], "gathered", vec![int("axis", 0)]),
            node("Shape", &["act"], "act_shape", vec![]),
            node("Reshape", &["gathered", "act_shape"], "back", vec![]),
            node("ReduceMean", &["back"], "pooled", vec![ints("axes", &[2, 3]), int("keepdims", 0)]),
            node("MatMul", &["pooled", "w3"], "scores", vec![]),
        ],
        vec![
            weight("w1", &[8, 3, 4, 4], 1),
            const_ints("minus_one", &[-1]),
            scalar_int("zero", 0),
            scalar_int("one", 1),
            weight("w3", &[8, 5], 3),
        ],
    )
}

/// Patchify (4×4 stride-4 conv, 8 channels, ReLU: `act`), then pooling and the head in one
/// `Einsum("bchw,ck->bk")`: the height and width are summed in one operand only.
fn einsum_head_model() -> Vec<u8> {
    let mut head = node("Einsum", &["act", "w3"], "scores", vec![]);
    let mut equation = AttributeProto::new();
    equation.name = "equation".into();
    equation.type_ = AttributeType::STRING.into();
    equation.s = b"bchw,ck->bk".to_vec();
    head.attribute.push(equation);
    model(
        vec![patchify(4), node("Relu", &["conv"], "act", vec![]), head],
        vec![weight("w1", &[8, 3, 4, 4], 1), weight("w3", &[8, 5], 3)],
    )
}

/// Patchify (4×4 stride-4 conv, 8 channels, ReLU), then cut into four rows per image (`win`,
/// `(4N, 2, h, w)`: how a Swin window attention or a MobileViT transformer lays out its output),
/// joined back, mean pooling, 5 classes. `win`'s first axis is not the image batch.
fn windowed_model() -> Vec<u8> {
    model(
        vec![
            patchify(4),
            node("Relu", &["conv"], "act", vec![]),
            node("Reshape", &["act", "windows"], "win", vec![]),
            node("Reshape", &["win", "joined"], "back", vec![]),
            node("ReduceMean", &["back"], "pooled", vec![ints("axes", &[2, 3]), int("keepdims", 0)]),
            node("MatMul", &["pooled", "w3"], "scores", vec![]),
        ],
        vec![
            weight("w1", &[8, 3, 4, 4], 1),
            const_ints("windows", &[-1, 2, 0, 0]),
            const_ints("joined", &[-1, 8, 0, 0]),
            weight("w3", &[8, 5], 3),
        ],
    )
}

fn image_batch(n: usize, h: usize, w: usize) -> Array4<f32> {
    Array4::from_shape_fn((n, 3, h, w), |(b, c, y, x)| {
        ((y as f32 * 0.37 + x as f32 * 0.11 * (b + 1) as f32 + c as f32).sin() * 1.5) + 0.1 * b as f32
    })
}

/// The explainer of `source` against `explain` at batch 1 and 3, classes −1 / 2 / 4.
fn compare_with_explain(what: &str, source: &Path, exported: &Exported) {
    let (h, w) = exported.size;
    let mut model = OnnxModel::load(source).expect("load the source");
    let mut session = ExplainerSession::load(&exported.path, 0).expect("load the explainer");
    for (input, asked) in [(image_batch(1, h, w), vec![-1i64]), (image_batch(3, h, w), vec![-1, 2, 4])] {
        let what = format!("{what} batch {}", asked.len());
        let got = session.run(input.view(), &asked).unwrap_or_else(|e| panic!("{what}: {e}"));
        let logits = model.forward(input.view()).expect("forward");
        assert_close(&format!("{what} logits"), got.logits.view(), logits.view(), TOL);
        let classes: Vec<usize> = asked
            .iter()
            .zip(logits.outer_iter())
            .map(|(&c, row)| if c < 0 { argmax(row.iter().copied()) } else { c as usize })
            .collect();
        let layers: Vec<&str> = exported.layers.iter().map(|l| l.name.as_str()).collect();
        let explained = explain(
            &mut model,
            input.view(),
            &layers,
            &exported.methods,
            &Target::per_image(classes),
            &CamOptions::default(),
        )
        .unwrap_or_else(|e| panic!("{what}: explain: {e}"));
        for e in explained {
            let name = backend_ort::export::cam_output(e.method);
            let map = got.map(&name).unwrap_or_else(|| panic!("{what}: no {name}"));
            assert_eq!(map.dim(), (asked.len(), h, w), "{what} {name}");
            assert_close(&format!("{what} {name}"), map.view(), e.maps.view(), TOL);
        }
    }
}

/// Writes generated `model` into a fresh folder `name` and exports it at `layer` with every
/// method at `size`: the folder (removed when dropped), the source and the export.
fn export_generated(
    name: &str,
    model: Vec<u8>,
    layer: &str,
    size: (usize, usize),
) -> (tests::Scratch, std::path::PathBuf, Exported) {
    let dir = out_dir(name);
    let source = dir.join(format!("{name}.onnx"));
    std::fs::write(&source, model).expect("write the model");
    let out = dir.join(format!("{name}.explainer.onnx"));
    let exported = export_explainer(&source, &out, &all_methods(layer, size)).expect("export");
    (dir, source, exported)
}

fn all_methods(layer: &str, size: (usize, usize)) -> ExportOptions {
    ExportOptions {
        layers: vec![layer.into()],
        methods: EXPORTABLE_METHODS.to_vec(),
        size: Some(size),
        ..ExportOptions::default()
    }
}

/// A channels-last layer at 96×128 is detected as such and folded as core folds it.
#[test]
fn channels_last_layer_at_a_non_square_size() {
    let (_dir, source, exported) =
        export_generated("channels-last", channels_last_model(), "nhwc", (96, 128));
    assert_eq!(exported.layers[0].layout, Layout::Nhwc);
    assert_eq!(exported.layers[0].shape, [24, 32, 8]);
    compare_with_explain("nhwc 96x128", &source, &exported);
}

/// A gather whose index count depends on the batch (dynamo's `as_strided`, ConvNeXt) is
/// differentiated for any batch, not only the one the export probed.
#[test]
fn a_gather_over_the_whole_batch_runs_at_any_batch() {
    let (_dir, source, exported) = export_generated("flat-gather", flat_gather_model(), "act", (32, 48));
    compare_with_explain("flat gather 32x48", &source, &exported);
}

/// An `Einsum` that sums the layer's height and width away (pooling and head in one) is
/// differentiated for any batch, not only the one the export probed.
#[test]
fn an_einsum_head_runs_at_any_batch() {
    let (_dir, source, exported) = export_generated("einsum-head", einsum_head_model(), "act", (32, 48));
    compare_with_explain("einsum head 32x48", &source, &exported);
}

/// A layer whose first axis holds several rows per image (windows) is refused by name, by
/// `explain` and by the export, instead of its first rows being read as the images.
#[test]
fn a_layer_without_one_row_per_image_is_refused() {
    let dir = out_dir("windowed");
    let source = dir.join("windowed.onnx");
    std::fs::write(&source, windowed_model()).expect("write the model");
    let mut model = OnnxModel::load(&source).expect("load");
    // Not offered as a layer either (`gradcam layers`, the default layer).
    let listed: Vec<String> = model.layers().expect("layers").into_iter().map(|l| l.name).collect();
    assert!(listed.contains(&"act".to_string()) && !listed.contains(&"win".to_string()), "{listed:?}");
    let input = image_batch(2, 32, 48);
    match explain(
        &mut model,
        input.view(),
        &["win"],
        &[Method::GradCam],
        &Target::top_one(),
        &CamOptions::default(),
    ) {
        Err(e) => assert!(e.to_string().contains("8 rows for 2 images"), "{e}"),
        Ok(_) => panic!("explained `win` as if its rows were the images"),
    }
    assert!(explain(
        &mut model,
        input.view(),
        &["act"],
        &[Method::GradCam],
        &Target::top_one(),
        &CamOptions::default()
    )
    .is_ok());
    let out = dir.join("windowed.explainer.onnx");
    match export_explainer(&source, &out, &all_methods("win", (32, 48))) {
        Err(e) => assert!(e.to_string().contains("rows for 2 images"), "{e}"),
        Ok(_) => panic!("exported `win` as if its rows were the images"),
    }
    assert_eq!(files(&dir), ["windowed.onnx"], "a refused export leaves no file");
}

/// A class past the model's outputs gives all-zero maps (no error: an ONNX graph cannot raise
/// one), and the other images of the batch are unaffected.
#[test]
fn a_class_out_of_range_gives_zero_maps() {
    let dir = out_dir("out-of-range");
    let source = dir.join("nhwc.onnx");
    std::fs::write(&source, channels_last_model()).expect("write the model");
    let options = all_methods("nhwc", (32, 32));
    let exported = export_explainer(&source, &dir.join("e.onnx"), &options).expect("export");
    let input = image_batch(2, 32, 32);
    let got =
        ExplainerSession::load(&exported.path, 0).expect("load").run(input.view(), &[5, -1]).expect("run");
    for (name, maps) in &got.maps {
        assert!(maps.index_axis(ndarray::Axis(0), 0).iter().all(|&v| v == 0.0), "{name}: class 5 of 5");
        assert!(maps.index_axis(ndarray::Axis(0), 1).iter().any(|&v| v > 0.5), "{name}: top-1");
    }
}

/// Tokens with a prefix token fold into the 12×16 grid of a 96×128 input.
#[test]
fn token_layer_at_a_non_square_size() {
    let (_dir, source, exported) = export_generated("tokens", token_model(), "tokens", (96, 128));
    let grid = exported.layers[0].token_grid.expect("a token grid");
    assert_eq!((grid.prefix_tokens, grid.height, grid.width), (1, 12, 16));
    compare_with_explain("tokens 96x128", &source, &exported);
}

/// The same model exported at another size is another explainer (shapes are baked in).
#[test]
fn the_size_is_the_exports() {
    let (_dir, source, exported) = export_generated("sizes", channels_last_model(), "nhwc", (64, 64));
    assert_eq!(exported.layers[0].shape, [16, 16, 8]);
    compare_with_explain("nhwc 64x64", &source, &exported);
}

/// Dynamo exports keep weights in `.onnx.data`: the explainer gets its own copy next to it, and
/// the two files still work after moving to another folder without the source.
#[test]
fn external_weights_are_copied_and_move_with_the_explainer() {
    let source = require("resnet18.dynamo.onnx");
    let dir = out_dir("copied");
    let options = ExportOptions { layers: vec!["layer4".into()], ..ExportOptions::default() };
    let exported = export_explainer(&source, &dir.join("r18.onnx"), &options).expect("export");
    assert_eq!(exported.data.as_deref(), Some(dir.join("r18.onnx.data").as_path()));
    assert_eq!(files(&dir), ["r18.onnx", "r18.onnx.data"]);
    let data_len = std::fs::metadata(dir.join("r18.onnx.data")).expect("data").len();
    assert!(data_len > 40_000_000, "resnet18's 11.7M weights are in the data file ({data_len} bytes)");
    assert!(std::fs::metadata(dir.join("r18.onnx")).expect("model").len() < 1_000_000, "weights inlined");

    let moved = out_dir("copied-moved");
    for name in ["r18.onnx", "r18.onnx.data"] {
        std::fs::rename(dir.join(name), moved.join(name)).expect("move");
    }
    let input = image_batch(2, 224, 224);
    let got = ExplainerSession::load(&moved.join("r18.onnx"), 0)
        .expect("load")
        .run(input.view(), &[-1, 3])
        .expect("run");
    let mut model = OnnxModel::load(&source).expect("load the source");
    assert_close(
        "moved explainer logits",
        got.logits.view(),
        model.forward(input.view()).expect("forward").view(),
        TOL,
    );
}

/// With `Weights::Reference`, an explainer next to the source reads the source's data file in
/// place: nothing is copied. Elsewhere it is refused, since ONNX Runtime reads external data only
/// from the model's folder or below.
#[test]
fn external_weights_can_be_referenced() {
    let fixture = require("vit_tiny.dynamo.onnx");
    let dir = out_dir("referenced");
    let source = dir.join("vit_tiny.dynamo.onnx");
    std::fs::copy(&fixture, &source).expect("copy");
    std::fs::copy(fixture.with_extension("onnx.data"), dir.join("vit_tiny.dynamo.onnx.data")).expect("copy");
    let options = ExportOptions { weights: Weights::Reference, ..ExportOptions::default() };
    let exported = export_explainer(&source, &dir.join("vit.onnx"), &options).expect("export");
    assert_eq!(exported.data, None);
    assert_eq!(files(&dir), ["vit.onnx", "vit_tiny.dynamo.onnx", "vit_tiny.dynamo.onnx.data"]);
    let input = image_batch(1, 224, 224);
    let got = ExplainerSession::load(&exported.path, 0).expect("load").run(input.view(), &[-1]).expect("run");
    let mut model = OnnxModel::load(&source).expect("load the source");
    assert_close(
        "referenced logits",
        got.logits.view(),
        model.forward(input.view()).expect("forward").view(),
        TOL,
    );

    let elsewhere = out_dir("referenced-elsewhere");
    let err =
        export_explainer(&source, &elsewhere.join("vit.onnx"), &options).expect_err("outside the folder");
    assert!(matches!(err, ExportError::Destination { .. }), "{err}");
    assert!(files(&elsewhere).is_empty());
}

/// A legacy export with inline weights gives one self-contained file.
#[test]
fn inline_weights_stay_inline() {
    let source = require("lite0.legacy.onnx");
    let dir = out_dir("inline");
    let exported =
        export_explainer(&source, &dir.join("lite0.onnx"), &ExportOptions::default()).expect("export");
    assert_eq!(exported.data, None);
    assert_eq!(files(&dir), ["lite0.onnx"]);
}

/// Every refusal is a typed error raised before anything is written: the folder keeps exactly
/// what it had (a pre-existing explainer untouched) and no temporary file.
#[test]
fn refusals_leave_every_file_as_it_was() {
    let source = require("resnet18.legacy.onnx");
    let dir = out_dir("refusals");
    let out = dir.join("explainer.onnx");
    std::fs::write(&out, b"an older explainer").expect("write");
    let export = |options: ExportOptions| export_explainer(&source, &out, &options);

    let eigen =
        ExportOptions { methods: vec![Method::GradCam, Method::EigenCam], ..ExportOptions::default() };
    let err = export(eigen).expect_err("eigencam");
    assert!(matches!(err, ExportError::Method { method: Method::EigenCam, .. }), "{err}");
    assert!(err.to_string().contains("exportable methods"), "{err}");

    let scorecam = ExportOptions { methods: vec![Method::ScoreCam], ..ExportOptions::default() };
    assert!(matches!(export(scorecam), Err(ExportError::Method { method: Method::ScoreCam, .. })));
    // The methods beyond grad-cam's classic ten are explain-only; each refusal says why.
    for (method, why) in [
        (Method::KpcaCam, "kernel PCA"),
        (Method::FinerCam, "second score"),
        (Method::Fem, "gradient-weighted methods only"),
        (Method::RandomCam, "gradient-weighted methods only"),
    ] {
        let err =
            export(ExportOptions { methods: vec![method], ..ExportOptions::default() }).expect_err("refused");
        assert!(matches!(err, ExportError::Method { method: m, .. } if m == method), "{err}");
        assert!(err.to_string().contains(why), "{err}");
    }
    assert!(matches!(
        export(ExportOptions { methods: vec![], ..ExportOptions::default() }),
        Err(ExportError::NoMethod)
    ));

    let typo = ExportOptions { layers: vec!["layr4".into()], ..ExportOptions::default() };
    match export(typo) {
        Err(ExportError::Graph(GraphError::UnknownLayer { name, near })) => {
            assert_eq!(name, "layr4");
            assert!(near.contains(&"layer4".to_string()), "{near:?}");
        }
        other => panic!("expected an unknown layer, got {other:?}"),
    }

    let size = ExportOptions { size: Some((192, 256)), ..ExportOptions::default() };
    let err = export(size).expect_err("a size the model does not take");
    assert!(matches!(err, ExportError::Size { model_h: 224, model_w: 224, h: 192, w: 256 }), "{err}");

    let onto_source =
        export_explainer(&source, &source, &ExportOptions::default()).expect_err("onto the source");
    assert!(matches!(onto_source, ExportError::Destination { .. }), "{onto_source}");
    let no_folder = export_explainer(&source, &dir.join("missing/e.onnx"), &ExportOptions::default());
    assert!(matches!(no_folder, Err(ExportError::Destination { .. })));
    let folder = export_explainer(&source, &dir, &ExportOptions::default());
    assert!(matches!(folder, Err(ExportError::Destination { .. })));

    let not_onnx = dir.join("notes.onnx");
    std::fs::write(&not_onnx, b"not a model").expect("write");
    let err =
        export_explainer(&not_onnx, &dir.join("e.onnx"), &ExportOptions::default()).expect_err("not onnx");
    assert!(matches!(err, ExportError::Graph(GraphError::NotOnnx { .. })), "{err}");

    assert_eq!(files(&dir), ["explainer.onnx", "notes.onnx"]);
    assert_eq!(std::fs::read(&out).expect("read"), b"an older explainer");
}

/// A dynamo export must not overwrite its own weights: exporting next to it under the source's
/// name plus `.data` is refused.
#[test]
fn the_sources_weights_are_never_overwritten() {
    let dir = out_dir("own-weights");
    let fixture = require("resnet18.dynamo.onnx");
    let source = dir.join("m.onnx");
    std::fs::copy(&fixture, &source).expect("copy");
    std::fs::copy(fixture.with_extension("onnx.data"), dir.join("m.onnx.data")).expect("copy");
    // The source's data file is `resnet18.dynamo.onnx.data` (its location inside the model), so
    // the clash is with an explainer named `resnet18.dynamo.onnx` in this folder.
    std::fs::rename(dir.join("m.onnx.data"), dir.join("resnet18.dynamo.onnx.data")).expect("rename");
    let before = files(&dir);
    let err = export_explainer(&source, &dir.join("resnet18.dynamo.onnx"), &ExportOptions::default())
        .expect_err("would overwrite the source's weights");
    assert!(matches!(err, ExportError::Destination { .. }), "{err}");
    assert_eq!(files(&dir), before);
}
