//! Rewrites of the assembled explainer that make it cheaper. The first two change no number and
//! could live in the backward generator itself (`onnx_graph`), where the ort backend would profit
//! too; the third needs the CAM's own nodes.
//!
//! - The score is fixed at export, so the generator's `Where(softmax, softmax seed, one-hot)`
//!   becomes the branch chosen, and the other one is pruned.
//! - A linear head's input gradient for a one-hot seed is a row of its weights: a `Gather`.
//! - A spatial mean of a 1×1 `Conv` (GradCAM's weights of a gradient that came through a
//!   pointwise convolution) is taken before the product, on one value per channel. The same
//!   weights up to the order of the sums.

use std::collections::HashMap;

use onnx_protobuf::{GraphProto, NodeProto, TensorProto};

use crate::onnx_graph::builder::{attr_i, attr_ints, get_f, get_i, get_ints, get_s, Builder, FLOAT};
use crate::onnx_graph::tensor_ints;
use crate::onnx_graph::SOFTMAX;

/// Applies every rewrite; returns how many nodes changed.
pub(crate) fn optimize(graph: &mut GraphProto, softmax: bool, opset: i64) -> usize {
    let mut changed = fix_score(graph, softmax);
    changed += mean_before_pointwise_conv(graph);
    let mut b = Builder::new(opset, "gradcam/optimize");
    let inits: HashMap<String, TensorProto> =
        graph.initializer.iter().map(|t| (t.name.clone(), t.clone())).collect();
    let producers: HashMap<String, NodeProto> = graph
        .node
        .iter()
        .filter(|n| n.name.starts_with("gradcam/"))
        .flat_map(|n| n.output.iter().map(move |o| (o.clone(), n.clone())))
        .collect();
    let mut nodes = Vec::with_capacity(graph.node.len());
    for node in std::mem::take(&mut graph.node) {
        match one_hot_gemm_as_gather(&node, &producers, &inits, &mut b) {
            Some(mut replacement) => {
                nodes.append(&mut replacement);
                changed += 1;
            }
            None => nodes.push(node),
        }
    }
    graph.node = nodes;
    graph.initializer.append(&mut b.initializers);
    changed
}

/// `Where(softmax, a, b)` → `Identity(a or b)`.
fn fix_score(graph: &mut GraphProto, softmax: bool) -> usize {
    let mut changed = 0;
    for node in graph
        .node
        .iter_mut()
        .filter(|n| n.op_type == "Where" && n.input.first().is_some_and(|c| c == SOFTMAX))
    {
        let chosen = node.input[if softmax { 1 } else { 2 }].clone();
        node.op_type = "Identity".into();
        node.input = vec![chosen];
        changed += 1;
    }
    changed
}

/// `Gemm(one_hot(classes), W)`, the gradient of a linear head for a logit target, as
/// `Gather(W, classes)`: the same numbers (a sum of zeros and one weight row is that row), without
/// reading the whole weight matrix (at batch 1 that product cost 3% of Lite0's forward pass). A
/// zero row is appended to `W` and the index capped at it, so that a class past the model's
/// outputs still gives a zero gradient, as `OneHot` does, instead of an error.
fn one_hot_gemm_as_gather(
    node: &NodeProto,
    producers: &HashMap<String, NodeProto>,
    inits: &HashMap<String, TensorProto>,
    b: &mut Builder,
) -> Option<Vec<NodeProto>> {
    if node.op_type != "Gemm" || node.input.len() != 2 || get_i(node, "transA", 0) != 0 {
        return None;
    }
    // The seed, through the identities the score choice left.
    let mut seed = producers.get(&node.input[0])?;
    while seed.op_type == "Identity" {
        seed = producers.get(&seed.input[0])?;
    }
    let values = inits.get(seed.input.get(2)?)?;
    if seed.op_type != "OneHot" || get_i(seed, "axis", -1) != -1 || values.float_data != [0.0, 1.0] {
        return None;
    }
    let w = inits.get(&node.input[1])?;
    let [rows, cols] = w.dims[..] else { return None };
    let trans_b = get_i(node, "transB", 0) == 1;
    let (classes, features) = if trans_b { (cols, rows) } else { (rows, cols) };
    // W with a zero row (a zero column when transposed) for out-of-range classes.
    let dims = if trans_b { [features, 1] } else { [1, features] };
    let zero_name = b.constant("zero_row", &dims, &vec![0.0; features as usize], FLOAT);
    let axis = i64::from(trans_b);
    let padded = b.op("Concat", &[&node.input[1], &zero_name], vec![attr_i("axis", axis)]);
    let last = b.ints(&[classes]);
    let index = b.op("Min", &[&seed.input[0], &last], vec![]);
    let mut rows_of = b.op("Gather", &[&padded, &index], vec![attr_i("axis", axis)]);
    if trans_b {
        rows_of = b.op("Transpose", &[&rows_of], vec![attr_ints("perm", &[1, 0])]);
    }
    let alpha = get_f(node, "alpha", 1.0);
    if alpha != 1.0 {
        rows_of = b.scale(&rows_of, alpha as f64, FLOAT);
    }
    let mut nodes = std::mem::take(&mut b.nodes);
    nodes.push(identity(&rows_of, &node.output[0], &node.name));
    Some(nodes)
}

/// `ReduceMean(Conv(g, W))` over spatial axes, for a 1×1 kernel with unit strides and no padding
/// (the backward's `Conv`, or a `ConvTranspose`), as `Conv(ReduceMean(g), W)`: the kernel treats
/// every pixel alike, so the mean commutes with it. GradCAM's weights from a gradient that came
/// back through a pointwise convolution (an EfficientNet's or MobileNet's `conv_head`) then cost
/// one product per image instead of one per pixel. Only where the mean is the product's one reader, through
/// `Identity`s; the unread product is pruned afterwards.
fn mean_before_pointwise_conv(graph: &mut GraphProto) -> usize {
    let inits: HashMap<&str, &TensorProto> = graph.initializer.iter().map(|t| (t.name.as_str(), t)).collect();
    let mut readers: HashMap<&str, usize> = HashMap::new();
    for name in graph.node.iter().flat_map(|n| &n.input).chain(graph.output.iter().map(|o| &o.name)) {
        *readers.entry(name.as_str()).or_default() += 1;
    }
    let producer: HashMap<&str, usize> = graph
        .node
        .iter()
        .enumerate()
        .flat_map(|(i, n)| n.output.iter().map(move |o| (o.as_str(), i)))
        .collect();
    let only_reader = |t: &str| readers.get(t) == Some(&1);
    let mut rewrites = Vec::new();
    for (i, mean) in graph.node.iter().enumerate().filter(|(_, n)| n.op_type == "ReduceMean") {
        // The product, through single-reader identities.
        let mut t = mean.input[0].as_str();
        let mut p = producer.get(t).map(|&k| &graph.node[k]);
        while let Some(id) = p.filter(|n| n.op_type == "Identity" && only_reader(t)) {
            t = id.input[0].as_str();
            p = producer.get(t).map(|&k| &graph.node[k]);
        }
        let products = ["ConvTranspose", "Conv"];
        let Some(conv) = p.filter(|n| products.contains(&n.op_type.as_str()) && only_reader(t)) else {
            continue;
        };
        let Some(kernel) = get_ints(conv, "kernel_shape").or_else(|| {
            let w = inits.get(conv.input.get(1)?.as_str())?;
            w.dims.get(2..).map(<[i64]>::to_vec)
        }) else {
            continue;
        };
        let rank = kernel.len() + 2;
        let ones = |name: &str, one: i64| get_ints(conv, name).is_none_or(|v| v.iter().all(|&x| x == one));
        let kernel = kernel.iter().all(|&x| x == 1);
        let plain = ones("strides", 1)
            && ones("pads", 0)
            && ones("output_padding", 0)
            && get_ints(conv, "output_shape").is_none()
            && get_s(conv, "auto_pad", "NOTSET") == "NOTSET";
        let axes = match mean.input.get(1).filter(|a| !a.is_empty()) {
            Some(a) => inits.get(a.as_str()).and_then(|t| tensor_ints(t)),
            None => get_ints(mean, "axes"),
        };
        let spatial = axes.is_some_and(|axes| {
            !axes.is_empty()
                && axes.iter().all(|&a| (2..rank as i64).contains(&if a < 0 { a + rank as i64 } else { a }))
        });
        if kernel && plain && spatial && get_i(mean, "keepdims", 1) == 1 {
            rewrites.push((i, producer[t]));
        }
    }
    for &(mean, conv) in rewrites.iter().rev() {
        let small = format!("{}/before_conv", graph.node[mean].output[0]);
        let mut after = graph.node[conv].clone();
        after.name = format!("{}/after_mean", graph.node[mean].name);
        after.input[0] = small.clone();
        after.output = vec![std::mem::replace(&mut graph.node[mean].output[0], small)];
        graph.node[mean].input[0] = graph.node[conv].input[0].clone();
        graph.node.insert(mean + 1, after);
    }
    rewrites.len()
}

fn identity(from: &str, to: &str, name: &str) -> NodeProto {
    let mut node = NodeProto::new();
    node.op_type = "Identity".into();
    node.name = format!("{name}/as_gather");
    node.input = vec![from.into()];
    node.output = vec![to.into()];
    node
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::onnx_graph::builder::tensor_i64;

    fn node(op: &str, inputs: &[&str], output: &str, attrs: Vec<onnx_protobuf::AttributeProto>) -> NodeProto {
        let mut n = NodeProto::new();
        n.op_type = op.into();
        n.name = format!("gradcam/{output}");
        n.input = inputs.iter().map(|s| s.to_string()).collect();
        n.output = vec![output.into()];
        n.attribute = attrs;
        n
    }

    /// seed = OneHot(classes) → Where(softmax, soft, seed) → Gemm(seed, W).
    fn graph(trans_b: i64) -> GraphProto {
        let mut g = GraphProto::new();
        let mut values = TensorProto::new();
        values.name = "values".into();
        values.data_type = FLOAT;
        values.dims = vec![2];
        values.float_data = vec![0.0, 1.0];
        let mut w = TensorProto::new();
        w.name = "w".into();
        w.data_type = FLOAT;
        w.dims = vec![10, 4];
        w.float_data = vec![0.5; 40];
        g.initializer = vec![values, w, tensor_i64("depth", &[10])];
        g.node = vec![
            node("OneHot", &["classes", "depth", "values"], "one_hot", vec![attr_i("axis", -1)]),
            node("Where", &[SOFTMAX, "soft", "one_hot"], "seed", vec![]),
            node("Gemm", &["seed", "w"], "dx", vec![attr_i("transB", trans_b)]),
        ];
        g
    }

    #[test]
    fn a_one_hot_product_becomes_a_gather() {
        for trans_b in [0, 1] {
            let mut g = graph(trans_b);
            assert_eq!(optimize(&mut g, false, 17), 2);
            let ops: Vec<&str> = g.node.iter().map(|n| n.op_type.as_str()).collect();
            assert!(ops.contains(&"Gather") && !ops.contains(&"Gemm"), "transB {trans_b}: {ops:?}");
            assert_eq!(g.node.last().map(|n| n.output[0].as_str()), Some("dx"));
        }
    }

    /// `g → ConvTranspose(w) → Identity → ReduceMean(axes)`, `w` of kernel `k`, plus `extra`
    /// attributes on the product.
    fn mean_of_product(k: i64, axes: &[i64], extra: Vec<onnx_protobuf::AttributeProto>) -> GraphProto {
        let mut g = GraphProto::new();
        let mut w = TensorProto::new();
        w.name = "w".into();
        w.data_type = FLOAT;
        w.dims = vec![4, 2, k, k];
        w.float_data = vec![0.5; (8 * k * k) as usize];
        g.initializer = vec![w, tensor_i64("axes", axes)];
        g.node = vec![
            node("ConvTranspose", &["g", "w"], "dx", extra),
            node("Identity", &["dx"], "gradient", vec![]),
            node("ReduceMean", &["gradient", "axes"], "weights", vec![]),
        ];
        g
    }

    #[test]
    fn a_spatial_mean_moves_before_a_pointwise_product() {
        for axes in [&[2, 3][..], &[-1], &[2]] {
            let mut g = mean_of_product(1, axes, vec![attr_ints("strides", &[1, 1])]);
            assert_eq!(optimize(&mut g, false, 18), 1, "axes {axes:?}");
            let order: Vec<(&str, &str, &str)> = g
                .node
                .iter()
                .map(|n| (n.op_type.as_str(), n.input[0].as_str(), n.output[0].as_str()))
                .collect();
            assert_eq!(
                order[2..],
                [
                    ("ReduceMean", "g", "weights/before_conv"),
                    ("ConvTranspose", "weights/before_conv", "weights")
                ]
            );
        }
    }

    #[test]
    fn a_mean_stays_after_other_products() {
        let cases: [(i64, &[i64], Vec<onnx_protobuf::AttributeProto>); 5] = [
            (3, &[2, 3], vec![]),
            (1, &[2, 3], vec![attr_ints("strides", &[2, 2])]),
            (1, &[2, 3], vec![attr_ints("pads", &[1, 1, 1, 1])]),
            (1, &[1, 2, 3], vec![]),
            (1, &[2, 3], vec![attr_ints("output_padding", &[1, 0])]),
        ];
        for (k, axes, extra) in cases {
            let mut g = mean_of_product(k, axes, extra);
            assert_eq!(optimize(&mut g, false, 18), 0, "kernel {k}, axes {axes:?}");
        }
        // A second reader of the product.
        let mut g = mean_of_product(1, &[2, 3], vec![]);
        g.node.push(node("Relu", &["dx"], "other", vec![]));
        assert_eq!(optimize(&mut g, false, 18), 0);
    }

    #[test]
    fn the_softmax_seed_keeps_its_product() {
        let mut g = graph(0);
        assert_eq!(optimize(&mut g, true, 17), 1);
        assert!(g.node.iter().any(|n| n.op_type == "Gemm"));
        assert_eq!(g.node[1].input, ["soft"]);
    }
}
