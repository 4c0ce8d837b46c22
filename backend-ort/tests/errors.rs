//! Error cases: files that are not ONNX models, unknown layers, ops without a gradient rule.
#![cfg(feature = "ort")]

use std::path::PathBuf;

use backend_ort::onnx_graph::GraphError;
use backend_ort::{OnnxGraph, OnnxModel, OrtBackendError};
use gradcam_core::{CamError, CamModel, Target};
use onnx_protobuf::attribute_proto::AttributeType;
use onnx_protobuf::{
    tensor_proto::DataType, type_proto, AttributeProto, GraphProto, ModelProto, NodeProto,
    OperatorSetIdProto, TensorProto, TypeProto, ValueInfoProto,
};

/// `bytes` written to `name` in a fresh folder, removed when the returned guard drops.
fn temp(name: &str, bytes: &[u8]) -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::Builder::new().prefix("gradcam-ort-errors-").tempdir().unwrap();
    let path = dir.path().join(name);
    std::fs::write(&path, bytes).unwrap();
    (dir, path)
}

fn node(op: &str, name: &str, inputs: &[&str], output: &str) -> NodeProto {
    let mut n = NodeProto::new();
    n.op_type = op.into();
    n.name = name.into();
    n.input = inputs.iter().map(|s| s.to_string()).collect();
    n.output = vec![output.into()];
    n
}

fn vi(name: &str) -> ValueInfoProto {
    let mut v = ValueInfoProto::new();
    v.name = name.into();
    let mut t = type_proto::Tensor::new();
    t.elem_type = DataType::FLOAT as i32;
    let mut tp = TypeProto::new();
    tp.value = Some(type_proto::Value::TensorType(t));
    v.type_ = Some(tp).into();
    v
}

/// A tiny classifier exported "legacy style": `/layer1/conv/Conv`, `/layer1/act/Relu`, pooling,
/// and a head op `head_op` (e.g. `Asinh`, which has no gradient rule).
fn tiny_model(head_op: &str) -> Vec<u8> {
    tiny_model_on(head_op, "f")
}

/// `tiny_model` with the head reading tensor `head_input` (`r`: the 4-D feature map, as a
/// segmentation model's output).
fn tiny_model_on(head_op: &str, head_input: &str) -> Vec<u8> {
    let mut g = GraphProto::new();
    g.name = "tiny".into();
    g.input.push(vi("input"));
    g.output.push(vi("logits"));
    let mut w = TensorProto::new();
    w.name = "w".into();
    w.data_type = DataType::FLOAT as i32;
    w.dims = vec![4, 3, 1, 1];
    w.float_data = (0..12).map(|i| i as f32 * 0.1 - 0.5).collect();
    g.initializer.push(w);
    g.node.push(node("Conv", "/layer1/conv/Conv", &["input", "w"], "c"));
    g.node.push(node("Relu", "/layer1/act/Relu", &["c"], "r"));
    g.node.push(node("GlobalAveragePool", "/pool/GlobalAveragePool", &["r"], "p"));
    let mut flatten = node("Flatten", "/pool/Flatten", &["p"], "f");
    let mut axis = AttributeProto::new();
    axis.name = "axis".into();
    axis.type_ = AttributeType::INT.into();
    axis.i = 1;
    flatten.attribute.push(axis);
    g.node.push(flatten);
    g.node.push(node(head_op, &format!("/head/{head_op}"), &[head_input], "logits"));
    let mut m = ModelProto::new();
    m.ir_version = 8;
    let mut op = OperatorSetIdProto::new();
    op.version = 17;
    m.opset_import.push(op);
    m.graph = Some(g).into();
    OnnxGraph::from_model(m).to_bytes()
}

fn input() -> ndarray::Array4<f32> {
    ndarray::Array4::from_shape_fn((2, 3, 5, 4), |(b, c, h, w)| (b + c * 2 + h * 3 + w) as f32 * 0.05 - 0.4)
}

#[test]
fn a_model_that_works_is_the_baseline() {
    let (_dir, path) = temp("identity_head.onnx", &tiny_model("Identity"));
    let mut model = OnnxModel::load(&path).expect("load");
    assert_eq!(model.default_layer().unwrap(), "layer1");
    let capture = model.capture(input().view(), "layer1", Some(&Target::class(2))).expect("capture");
    // d logit_2 / d relu = 1/(H·W) at every position of channel 2, 0 elsewhere.
    let grad = capture.gradient.unwrap();
    let gradcam_core::LayerTensor::Spatial(g) = grad else { panic!("spatial") };
    for ((_, c, _, _), v) in g.indexed_iter() {
        let want = if c == 2 { 1.0 / 20.0 } else { 0.0 };
        assert!((v - want).abs() < 1e-7, "channel {c}: {v}");
    }
}

/// A model whose first output is a `(B, C, H, W)` map is captured (flattened per image, with
/// its shape); explaining a class of it is refused with that shape and the target that fits.
#[test]
fn a_four_d_output_is_captured_and_a_class_of_it_refused() {
    let (_dir, path) = temp("map_head.onnx", &tiny_model_on("Identity", "r"));
    let mut model = OnnxModel::load(&path).expect("a map head loads");
    let plain = model.capture(input().view(), "layer1", None).expect("no target, no class to resolve");
    assert_eq!((plain.logits.dim(), plain.output_shape.as_slice()), ((2, 80), &[4usize, 5, 4][..]));
    let err = model.capture(input().view(), "layer1", Some(&Target::top_one())).unwrap_err().to_string();
    assert!(err.contains("[4, 5, 4]") && err.contains("segmentation target"), "{err}");
}

#[test]
fn truncated_and_non_onnx_files_are_typed_errors() {
    let bytes = tiny_model("Identity");
    for (name, content) in [
        ("truncated.onnx", &bytes[..bytes.len() / 2]),
        ("text.onnx", b"this is not an ONNX model at all".as_slice()),
        ("empty.onnx", b"".as_slice()),
        ("png.onnx", b"\x89PNG\r\n\x1a\n\0\0\0\rIHDR".as_slice()),
    ] {
        let (_dir, path) = temp(name, content);
        let err = OnnxModel::load(&path).expect_err(name);
        assert!(matches!(err, OrtBackendError::Graph(GraphError::NotOnnx { .. })), "{name}: {err}");
        assert!(err.to_string().contains("not a valid ONNX model"), "{name}: {err}");
    }
    let err = OnnxModel::load("/nonexistent/model.onnx".as_ref()).expect_err("missing file");
    assert!(matches!(err, OrtBackendError::Graph(GraphError::Io { .. })), "{err}");
}

#[test]
fn unknown_layer_suggests_near_names() {
    let (_dir, path) = temp("unknown_layer.onnx", &tiny_model("Identity"));
    let mut model = OnnxModel::load(&path).expect("load");
    let err = model.capture(input().view(), "layr1", Some(&Target::top_one())).expect_err("unknown");
    match err {
        CamError::UnknownLayer { name, near } => {
            assert_eq!(name, "layr1");
            assert_eq!(near.first().map(String::as_str), Some("layer1"), "{near:?}");
        }
        other => panic!("expected UnknownLayer, got {other}"),
    }
}

#[test]
fn op_without_a_rule_names_op_and_node() {
    let (_dir, path) = temp("asinh_head.onnx", &tiny_model("Asinh"));
    let mut model = OnnxModel::load(&path).expect("load");
    // The forward pass is fine; only the gradient needs the missing rule.
    assert_eq!(model.forward(input().view()).unwrap().dim(), (2, 4));
    let err = model.capture(input().view(), "layer1", Some(&Target::top_one())).expect_err("no rule");
    let msg = err.to_string();
    assert!(msg.contains("`Asinh`") && msg.contains("/head/Asinh"), "{msg}");
    let CamError::Backend(inner) = err else { panic!("backend error") };
    let inner = inner.downcast::<OrtBackendError>().expect("OrtBackendError");
    assert!(
        matches!(*inner, OrtBackendError::Graph(GraphError::UnsupportedOp { ref op, ref node }) if op == "Asinh" && node == "/head/Asinh")
    );
}

#[test]
fn class_out_of_range_is_an_error() {
    let (_dir, path) = temp("range.onnx", &tiny_model("Identity"));
    let mut model = OnnxModel::load(&path).expect("load");
    let err = model.capture(input().view(), "layer1", Some(&Target::class(4))).expect_err("out of range");
    assert!(err.to_string().contains("out of range"), "{err}");
}

/// EigenCAM, ScoreCAM and AblationCAM need no backward graph, so an op without a gradient rule
/// after the layer does not stop them (and asking for a class they explain still works).
#[test]
fn gradient_free_methods_build_no_backward_graph() {
    use gradcam_core::{explain, CamOptions, Method};
    let (_dir, path) = temp("asinh_head_free.onnx", &tiny_model("Asinh"));
    let mut model = OnnxModel::load(&path).expect("load");
    let methods = [Method::EigenCam, Method::ScoreCam, Method::AblationCam];
    let e =
        explain(&mut model, input().view(), &["layer1"], &methods, &Target::class(1), &CamOptions::default())
            .expect("gradient-free methods");
    assert_eq!(e.len(), 3);
    assert!(e.iter().all(|e| e.classes == [1, 1]));
}
