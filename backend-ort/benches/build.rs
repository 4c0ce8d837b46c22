//! Session build time against the depth after the layer: a generated model whose explained layer
//! is followed by a chain of N nodes (convolutions, activations, residual adds, scaling, slices,
//! pads, transposes, reductions), for N = 1k, 4k, 10k by default.
//!
//! ```text
//! cargo bench -p backend-ort --features ort --bench build -- [--nodes 1000,4000,10000] [--threads 2]
//! ```
//! Prints one JSON line per chain: the time to load the model, to list its layers, to generate
//! the capture's two models (`capture_models`: shape probe, folding, backward generation), the
//! first capture with a seed (all of that plus ONNX Runtime's session builds), and a second
//! capture (the run alone). Growth should be linear in N.

use std::time::Instant;

use backend_ort::{OnnxGraph, OnnxModel};
use gradcam_core::{CamModel, Target};
use onnx_protobuf::attribute_proto::AttributeType;
use onnx_protobuf::{
    tensor_proto::DataType, type_proto, AttributeProto, GraphProto, ModelProto, NodeProto,
    OperatorSetIdProto, TensorProto, TypeProto, ValueInfoProto,
};

const CHANNELS: i64 = 4;
const SIDE: i64 = 8;
const CLASSES: i64 = 3;

fn attr_int(name: &str, v: i64) -> AttributeProto {
    let mut a = AttributeProto::new();
    a.name = name.into();
    a.type_ = AttributeType::INT.into();
    a.i = v;
    a
}

fn attr_ints(name: &str, v: &[i64]) -> AttributeProto {
    let mut a = AttributeProto::new();
    a.name = name.into();
    a.type_ = AttributeType::INTS.into();
    a.ints = v.to_vec();
    a
}

fn value_info(name: &str, dims: &[Option<i64>]) -> ValueInfoProto {
    use onnx_protobuf::{tensor_shape_proto, TensorShapeProto};
    let mut t = type_proto::Tensor::new();
    t.elem_type = DataType::FLOAT as i32;
    let mut shape = TensorShapeProto::new();
    for d in dims {
        let mut dim = tensor_shape_proto::Dimension::new();
        dim.value = Some(match d {
            Some(v) => tensor_shape_proto::dimension::Value::DimValue(*v),
            None => tensor_shape_proto::dimension::Value::DimParam("batch".into()),
        });
        shape.dim.push(dim);
    }
    t.shape = Some(shape).into();
    let mut tp = TypeProto::new();
    tp.value = Some(type_proto::Value::TensorType(t));
    let mut v = ValueInfoProto::new();
    v.name = name.into();
    v.type_ = Some(tp).into();
    v
}

fn floats(name: &str, dims: &[i64], seed: usize) -> TensorProto {
    let mut t = TensorProto::new();
    t.name = name.into();
    t.data_type = DataType::FLOAT as i32;
    t.dims = dims.to_vec();
    let n: i64 = dims.iter().product();
    t.float_data = (0..n as usize).map(|i| (((i * 7 + seed * 13) % 17) as f32 - 8.0) / 40.0).collect();
    t
}

fn ints(name: &str, v: &[i64]) -> TensorProto {
    let mut t = TensorProto::new();
    t.name = name.into();
    t.data_type = DataType::INT64 as i32;
    t.dims = vec![v.len() as i64];
    t.int64_data = v.to_vec();
    t
}

/// Appends nodes named like the legacy exporter's (`/chain/chain.<i>/<Op>`).
struct Chain {
    graph: GraphProto,
    count: usize,
}

impl Chain {
    fn node(&mut self, op: &str, inputs: &[&str], attrs: Vec<AttributeProto>) -> String {
        self.count += 1;
        let block = self.count / 8;
        let mut n = NodeProto::new();
        n.op_type = op.into();
        n.name = format!("/chain/chain.{block}/{op}_{}", self.count);
        n.input = inputs.iter().map(|s| s.to_string()).collect();
        let out = format!("t{}", self.count);
        n.output = vec![out.clone()];
        n.attribute = attrs;
        self.graph.node.push(n);
        out
    }
}

/// `input (B, 4, 8, 8) → Conv ("layer") → chain of about `nodes` nodes → GAP → Gemm → logits`.
fn chain_model(nodes: usize) -> OnnxGraph {
    let mut c = Chain { graph: GraphProto::new(), count: 0 };
    c.graph.name = "chain".into();
    c.graph.input.push(value_info("input", &[None, Some(3), Some(SIDE), Some(SIDE)]));
    c.graph.output.push(value_info("logits", &[None, Some(CLASSES)]));
    c.graph.initializer.push(floats("stem.weight", &[CHANNELS, 3, 1, 1], 0));
    c.graph.initializer.push(floats("head.weight", &[CLASSES, CHANNELS], 1));
    c.graph.initializer.push(ints("slice.starts", &[1]));
    c.graph.initializer.push(ints("slice.ends", &[SIDE]));
    c.graph.initializer.push(ints("slice.axes", &[3]));
    c.graph.initializer.push(ints("pad.pads", &[0, 0, 0, 1, 0, 0, 0, 0]));
    c.graph.initializer.push(ints("mean.axes", &[1]));
    let mut half = floats("half", &[], 0);
    half.float_data = vec![0.5];
    c.graph.initializer.push(half);
    let mut stem = NodeProto::new();
    stem.op_type = "Conv".into();
    stem.name = "/layer/Conv".into();
    stem.input = vec!["input".into(), "stem.weight".into()];
    stem.output = vec!["layer_out".into()];
    c.graph.node.push(stem);
    let mut x = "layer_out".to_string();
    let mut k = 0;
    while c.count < nodes {
        k += 1;
        let w = format!("w{k}");
        c.graph.initializer.push(floats(&w, &[CHANNELS, CHANNELS, 1, 1], k));
        let conv = c.node("Conv", &[&x, &w], vec![]);
        let act = c.node("Relu", &[&conv], vec![]);
        let res = c.node("Add", &[&act, &x], vec![]);
        // Halved and centred below, so that values stay finite however deep the chain.
        let res = c.node("Mul", &[&res, "half"], vec![]);
        let sliced = c.node("Slice", &[&res, "slice.starts", "slice.ends", "slice.axes"], vec![]);
        let padded = c.node("Pad", &[&sliced, "pad.pads"], vec![]);
        let t = c.node("Transpose", &[&padded], vec![attr_ints("perm", &[0, 1, 3, 2])]);
        let back = c.node("Transpose", &[&t], vec![attr_ints("perm", &[0, 1, 3, 2])]);
        let mean = c.node("ReduceMean", &[&back, "mean.axes"], vec![attr_int("keepdims", 1)]);
        x = c.node("Sub", &[&back, &mean], vec![]);
    }
    let pooled = c.node("GlobalAveragePool", &[&x], vec![]);
    let flat = c.node("Flatten", &[&pooled], vec![attr_int("axis", 1)]);
    let mut head = NodeProto::new();
    head.op_type = "Gemm".into();
    head.name = "/head/Gemm".into();
    head.input = vec![flat, "head.weight".into()];
    head.output = vec!["logits".into()];
    head.attribute = vec![attr_int("transB", 1)];
    c.graph.node.push(head);
    let mut m = ModelProto::new();
    m.ir_version = 8;
    let mut op = OperatorSetIdProto::new();
    op.version = 18;
    m.opset_import.push(op);
    m.graph = Some(c.graph).into();
    OnnxGraph::from_model(m)
}

fn secs<T>(f: impl FnOnce() -> T) -> (T, f64) {
    let t = Instant::now();
    let out = f();
    (out, t.elapsed().as_secs_f64())
}

fn main() {
    let mut sizes = vec![1000usize, 4000, 10000];
    let mut threads = 2usize;
    let mut args = std::env::args().skip(1);
    while let Some(flag) = args.next() {
        match flag.as_str() {
            "--nodes" => {
                sizes = args
                    .next()
                    .expect("--nodes N,M")
                    .split(',')
                    .map(|n| n.parse().expect("a count"))
                    .collect()
            }
            "--threads" => threads = args.next().expect("--threads N").parse().expect("a count"),
            _ => {} // `cargo bench` passes --bench
        }
    }
    let guard = tempfile::Builder::new().prefix("gradcam-ort-build-bench-").tempdir().expect("temp dir");
    let dir = guard.path();
    for nodes in sizes {
        let path = dir.join(format!("chain{nodes}.onnx"));
        let graph = chain_model(nodes);
        let total = graph.nodes().len();
        std::fs::write(&path, graph.to_bytes()).expect("write the model");
        let (model, load_s) = secs(|| OnnxModel::load_with_threads(&path, threads).expect("load"));
        let mut model = model;
        let (layers, layers_s) = secs(|| model.layers().expect("layers"));
        assert!(layers.iter().any(|l| l.name == "layer"), "the chain's layer is listed");
        let size = SIDE as usize;
        let (split, generate_s) = secs(|| model.capture_models("layer", size, size).expect("generate"));
        if let Some(d) = std::env::var_os("DUMP") {
            let d = std::path::PathBuf::from(d);
            std::fs::write(d.join(format!("fwd{nodes}.onnx")), split.forward.to_bytes()).unwrap();
            std::fs::write(d.join(format!("bwd{nodes}.onnx")), split.backward.to_bytes()).unwrap();
            std::fs::write(d.join(format!("orig{nodes}.onnx")), model.graph().to_bytes()).unwrap();
            continue;
        }
        let input = ndarray::Array4::from_shape_fn((2, 3, size, size), |(b, c, h, w)| {
            ((b * 5 + c * 3 + h * 7 + w) % 11) as f32 / 11.0 - 0.5
        });
        let target = Target::top_one();
        let (_, first_s) = secs(|| model.capture(input.view(), "layer", Some(&target)).expect("capture"));
        let (_, second_s) = secs(|| model.capture(input.view(), "layer", Some(&target)).expect("capture"));
        println!(
            "{{\"nodes\": {total}, \"load_s\": {load_s:.3}, \"layers_s\": {layers_s:.3}, \
             \"generate_s\": {generate_s:.3}, \"first_capture_s\": {first_s:.3}, \"second_capture_s\": {second_s:.4}}}"
        );
        let _ = std::fs::remove_file(&path);
    }
}
