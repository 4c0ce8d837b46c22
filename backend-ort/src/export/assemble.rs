//! The explainer graph from the classifier, its probed shapes and the export plan: one backward
//! pass per layer (the generator's, seeded in the graph from the `class` input), the CAM nodes
//! ([`super::cam`]), then the public signature: inputs `input` and `class`, outputs `logits` and
//! one `cam_<method>` per method.

use std::collections::{HashMap, HashSet};

use gradcam_core::{Layout, Method, TokenGrid};
use onnx_protobuf::{
    tensor_proto::DataType, tensor_shape_proto, type_proto, StringStringEntryProto, TensorProto,
};

use super::cam::{cam_outputs, LayerTensors};
use super::optimize::optimize;
use super::{cam_output, ExportError, CLASS, INPUT, LOGITS};
use crate::onnx_graph::builder::{attr_i, Builder, FLOAT, INT64};
use crate::onnx_graph::{self, value_info, OnnxGraph, Seed, Shapes};

/// Prefix of every tensor, node and initializer the export adds.
const PREFIX: &str = "gradcam";

/// A layer to explain, resolved against the graph and the input size.
#[derive(Clone, Debug)]
pub(crate) struct PlannedLayer {
    pub name: String,
    pub tensor: String,
    pub layout: Layout,
    pub grid: Option<TokenGrid>,
    /// Native shape at the probe batch.
    pub shape: Vec<i64>,
}

/// Everything [`assemble`] needs besides the graph and the shapes.
#[derive(Clone, Debug)]
pub(crate) struct Plan {
    pub layers: Vec<PlannedLayer>,
    pub methods: Vec<Method>,
    /// Input height and width.
    pub hw: (i64, i64),
    /// Input channels.
    pub channels: i64,
    /// The batch size the source model fixes, if it does.
    pub fixed_batch: Option<i64>,
    pub num_classes: i64,
    /// Explain the softmax probability instead of the logit.
    pub softmax: bool,
    /// `metadata_props` of the explainer.
    pub metadata: Vec<(String, String)>,
}

/// The explainer: `base` (the classifier, possibly class-token pruned) with everything added.
/// `shapes` holds the probed shapes of every layer's backward tensors and of the logits.
pub(crate) fn assemble(base: &OnnxGraph, plan: &Plan, shapes: &Shapes) -> Result<OnnxGraph, ExportError> {
    let [input] = base.input_names().try_into().map_err(|names: Vec<String>| {
        ExportError::Signature(format!("expected one image input, found {names:?}"))
    })?;
    let logits = base.output_names().into_iter().next().expect("a parsed graph has an output");
    let (base_nodes, base_inits) = (base.nodes().len(), base.model().graph.initializer.len());
    let mut out = base.clone();

    // One backward pass per layer, its additions renamed apart (`gradcam/l<i>/...`); the class
    // input is shared.
    let mut layer_tensors = Vec::with_capacity(plan.layers.len());
    for (i, layer) in plan.layers.iter().enumerate() {
        let backward = base.backward_model(&layer.tensor, Seed::Classes, shapes)?;
        let graph = &backward.model().graph;
        let untouched = graph.node.len() >= base_nodes
            && graph.initializer.len() >= base_inits
            && graph.node.iter().zip(base.nodes()).all(|(a, b)| a.name == b.name && a.output == b.output);
        if !untouched {
            return Err(ExportError::Internal("the backward pass edited the forward graph".into()));
        }
        let rename = |name: &str| -> Option<String> {
            let fixed = [
                (onnx_graph::ACTIVATION, "activation"),
                (onnx_graph::GRADIENT, "gradient"),
                (onnx_graph::LOGITS, "logits"),
                (onnx_graph::CLASSES, "classes"),
            ];
            if let Some((_, short)) = fixed.iter().find(|(n, _)| *n == name) {
                return Some(format!("{PREFIX}/l{i}/{short}"));
            }
            name.strip_prefix(&format!("{PREFIX}/")).map(|rest| format!("{PREFIX}/l{i}/{rest}"))
        };
        let target = out.model_mut().graph.mut_or_insert_default();
        for node in &graph.node[base_nodes..] {
            let mut node = node.clone();
            for name in node.input.iter_mut().chain(node.output.iter_mut()) {
                if let Some(new) = rename(name) {
                    *name = new;
                }
            }
            node.name = rename(&node.name).unwrap_or_else(|| format!("{PREFIX}/l{i}/{}", node.name));
            target.node.push(node);
        }
        for init in &graph.initializer[base_inits..] {
            let mut init = init.clone();
            init.name = rename(&init.name).unwrap_or(init.name);
            target.initializer.push(init);
        }
        layer_tensors.push((format!("{PREFIX}/l{i}/activation"), format!("{PREFIX}/l{i}/gradient")));
    }

    // The CAM nodes.
    let mut b = Builder::new(base.opset(), &format!("{PREFIX}/cam"));
    let tensors: Vec<LayerTensors<'_>> = plan
        .layers
        .iter()
        .zip(&layer_tensors)
        .map(|(l, (a, g))| LayerTensors {
            activation: a,
            gradient: g,
            layout: l.layout,
            grid: l.grid,
            shape: &l.shape,
        })
        .collect();
    let maps = cam_outputs(&mut b, &tensors, &plan.methods, plan.hw);
    let graph = out.model_mut().graph.mut_or_insert_default();
    graph.node.extend(b.nodes);
    graph.initializer.extend(b.initializers);
    // The explained score: the logit, or with `softmax` its probability (a constant input).
    let mut softmax = TensorProto::new();
    softmax.name = onnx_graph::SOFTMAX.into();
    softmax.data_type = DataType::BOOL as i32;
    softmax.int32_data = vec![plan.softmax as i32];
    graph.initializer.push(softmax);

    // The signature, declared under the tensors' current names, renamed below.
    let batch = batch_dim(base, &input, plan.fixed_batch);
    let mut renames: HashMap<String, String> = HashMap::from([
        (input.clone(), INPUT.to_string()),
        (logits.clone(), LOGITS.to_string()),
        (onnx_graph::CLASS.to_string(), CLASS.to_string()),
    ]);
    graph.output = vec![declare(&logits, FLOAT, &[batch.clone(), fixed(plan.num_classes)])];
    for (map, method) in maps.iter().zip(&plan.methods) {
        renames.insert(map.clone(), cam_output(*method));
        graph.output.push(declare(map, FLOAT, &[batch.clone(), fixed(plan.hw.0), fixed(plan.hw.1)]));
    }
    graph.input.retain(|i| i.name != input);
    let image = [batch.clone(), fixed(plan.channels), fixed(plan.hw.0), fixed(plan.hw.1)];
    graph.input.insert(0, declare(&input, FLOAT, &image));
    graph.input.insert(1, declare(onnx_graph::CLASS, INT64, &[batch]));
    optimize(graph, plan.softmax, base.opset());
    onnx_graph::prune(graph);
    drop_unused_initializers(graph);
    rename_all(graph, renames);
    if let Some(b) = plan.fixed_batch {
        run_in_parts(graph, b, plan, base.opset());
    }

    let model = out.model_mut();
    for (key, value) in &plan.metadata {
        let mut entry = StringStringEntryProto::new();
        entry.key = key.clone();
        entry.value = value.clone();
        model.metadata_props.retain(|p| p.key != *key);
        model.metadata_props.push(entry);
    }
    Ok(out)
}

/// Makes the explainer of a source that fixes its batch at `b` take any batch `N`: the graph
/// becomes the body of a `Scan` over parts of `b` images, the last part padded (zero images,
/// class 0) and its extra rows dropped after. Every image goes through the same graph as in a
/// source of dynamic batch, so its maps are the same; the weights stay initializers of the outer
/// graph, which the body reads from there.
fn run_in_parts(graph: &mut onnx_protobuf::GraphProto, b: i64, plan: &Plan, opset: i64) {
    let outputs: Vec<String> = graph.output.iter().map(|o| o.name.clone()).collect();
    let inner = |name: &str| format!("{PREFIX}/part/{name}");
    let mut public: Vec<String> = vec![INPUT.into(), CLASS.into()];
    public.extend(outputs.iter().cloned());
    rename_all(graph, public.iter().map(|n| (n.clone(), inner(n))).collect());

    let mut body = onnx_protobuf::GraphProto::new();
    body.name = format!("{PREFIX}_part");
    body.node = std::mem::take(&mut graph.node);
    body.input = graph.input.drain(..2).collect();
    body.output = std::mem::take(&mut graph.output);
    body.value_info = std::mem::take(&mut graph.value_info);

    let mut parts = Builder::new(opset, &format!("{PREFIX}/parts"));
    let shape = parts.op("Shape", &[INPUT], vec![]);
    // `[0]`: the batch axis, its first row, and zero padding before it.
    let zero = parts.ints(&[0]);
    let n = parts.op("Gather", &[&shape, &zero], vec![]);
    let (mut image, mut class) = (INPUT.to_string(), CLASS.to_string());
    if b > 1 {
        // (b - N mod b) mod b rows of padding, at the end of the batch axis.
        let size = parts.ints(&[b]);
        let rest = parts.op("Mod", &[&n, &size], vec![]);
        let missing = parts.op("Sub", &[&size, &rest], vec![]);
        let pad = parts.op("Mod", &[&missing, &size], vec![]);
        let zeros3 = parts.ints(&[0, 0, 0]);
        let image_pads = parts.op("Concat", &[&zeros3, &zero, &pad, &zeros3], vec![attr_i("axis", 0)]);
        image = parts.op("Pad", &[&image, &image_pads], vec![]);
        let class_pads = parts.op("Concat", &[&zero, &pad], vec![attr_i("axis", 0)]);
        class = parts.op("Pad", &[&class, &class_pads], vec![]);
    }
    let image = parts.reshape(&image, &[-1, b, plan.channels, plan.hw.0, plan.hw.1]);
    let class = parts.reshape(&class, &[-1, b]);
    let scan = parts.op_n("Scan", &[&image, &class], outputs.len(), vec![attr_i("num_scan_inputs", 2)]);
    let mut body_attr = onnx_protobuf::AttributeProto::new();
    body_attr.name = "body".into();
    body_attr.type_ = onnx_protobuf::attribute_proto::AttributeType::GRAPH.into();
    body_attr.g = Some(body).into();
    parts.nodes.last_mut().expect("the Scan node").attribute.push(body_attr);

    let mut batch = tensor_shape_proto::Dimension::new();
    batch.value = Some(tensor_shape_proto::dimension::Value::DimParam("N".into()));
    let mut declared = Vec::new();
    for (i, (stacked, name)) in scan.iter().zip(&outputs).enumerate() {
        // (parts, b, ...) -> (parts * b, ...), then the first N rows.
        let row: Vec<i64> = if i == 0 { vec![plan.num_classes] } else { vec![plan.hw.0, plan.hw.1] };
        let mut flat_shape = vec![-1];
        flat_shape.extend(&row);
        let mut last = parts.reshape(stacked, &flat_shape);
        if b > 1 {
            last = parts.op("Slice", &[&last, &zero, &n, &zero], vec![]);
        }
        for node in parts.nodes.iter_mut().filter(|node| node.output.contains(&last)) {
            node.output = vec![name.clone()];
        }
        let mut dims = vec![batch.clone()];
        dims.extend(row.iter().map(|&d| fixed(d)));
        declared.push(declare(name, FLOAT, &dims));
    }
    graph.node = parts.nodes;
    graph.initializer.extend(parts.initializers);
    graph.output = declared;
    let image_dims = [batch.clone(), fixed(plan.channels), fixed(plan.hw.0), fixed(plan.hw.1)];
    graph.input.insert(0, declare(INPUT, FLOAT, &image_dims));
    graph.input.insert(1, declare(CLASS, INT64, &[batch]));
}

/// The batch dimension of the explainer's inputs and outputs: the source's fixed size, else its
/// symbolic name (`N` when it has none).
fn batch_dim(base: &OnnxGraph, input: &str, fixed_batch: Option<i64>) -> tensor_shape_proto::Dimension {
    if let Some(b) = fixed_batch {
        return fixed(b);
    }
    let declared = base.model().graph.input.iter().find(|i| i.name == input).and_then(|i| {
        match i.type_.as_ref()?.value.as_ref()? {
            type_proto::Value::TensorType(t) => match t.shape.as_ref()?.dim.first()?.value.as_ref()? {
                tensor_shape_proto::dimension::Value::DimParam(p) if !p.is_empty() => Some(p.clone()),
                _ => None,
            },
            _ => None,
        }
    });
    let mut dim = tensor_shape_proto::Dimension::new();
    dim.value = Some(tensor_shape_proto::dimension::Value::DimParam(declared.unwrap_or_else(|| "N".into())));
    dim
}

fn fixed(value: i64) -> tensor_shape_proto::Dimension {
    let mut dim = tensor_shape_proto::Dimension::new();
    dim.value = Some(tensor_shape_proto::dimension::Value::DimValue(value));
    dim
}

/// A graph input or output of element type `elem_type` and the given dims.
fn declare(
    name: &str,
    elem_type: i32,
    dims: &[tensor_shape_proto::Dimension],
) -> onnx_protobuf::ValueInfoProto {
    let mut vi = value_info(name, elem_type, Some(dims.len()));
    if let Some(type_proto::Value::TensorType(t)) = vi.type_.mut_or_insert_default().value.as_mut() {
        t.shape.mut_or_insert_default().dim = dims.to_vec();
    }
    vi
}

/// Drops initializers no node reads (pruned branches, the head's token index after class-token
/// pruning): ONNX Runtime warns about each, and with external data they would be copied for
/// nothing.
fn drop_unused_initializers(graph: &mut onnx_protobuf::GraphProto) {
    let mut used: HashSet<String> = HashSet::new();
    reads(&graph.node, &mut used);
    used.extend(graph.output.iter().map(|o| o.name.clone()));
    graph.initializer.retain(|t| used.contains(&t.name));
    let kept: HashSet<String> = graph.initializer.iter().map(|t| t.name.clone()).collect();
    // Old IR versions also list initializers among the inputs.
    let first_two: Vec<String> = graph.input.iter().take(2).map(|i| i.name.clone()).collect();
    graph.input.retain(|i| first_two.contains(&i.name) || used.contains(&i.name) || kept.contains(&i.name));
}

/// Every tensor the nodes read, those of subgraphs (`If`, `Loop`, `Scan` bodies) included.
fn reads(nodes: &[onnx_protobuf::NodeProto], used: &mut HashSet<String>) {
    for node in nodes {
        used.extend(node.input.iter().cloned());
        for a in &node.attribute {
            for g in a.g.as_ref().into_iter().chain(&a.graphs) {
                reads(&g.node, used);
            }
        }
    }
}

/// Renames tensors everywhere (node inputs and outputs, graph inputs and outputs, initializers,
/// value infos), all at once. A tensor that already has one of the new names, and is not itself
/// being renamed, first moves out of the way.
fn rename_all(graph: &mut onnx_protobuf::GraphProto, mut renames: HashMap<String, String>) {
    let targets: HashSet<String> = renames.values().cloned().collect();
    let mut existing: HashSet<String> = HashSet::new();
    for node in &graph.node {
        existing.extend(node.input.iter().chain(&node.output).cloned());
    }
    existing.extend(graph.initializer.iter().map(|t| t.name.clone()));
    existing.extend(graph.input.iter().map(|t| t.name.clone()));
    for name in existing {
        if targets.contains(&name) && !renames.contains_key(&name) {
            renames.insert(name.clone(), format!("{PREFIX}/renamed/{name}"));
        }
    }
    let apply = |name: &mut String| {
        if let Some(new) = renames.get(name.as_str()) {
            *name = new.clone();
        }
    };
    for node in graph.node.iter_mut() {
        node.input.iter_mut().for_each(apply);
        node.output.iter_mut().for_each(apply);
    }
    for vi in graph.input.iter_mut().chain(graph.output.iter_mut()).chain(graph.value_info.iter_mut()) {
        apply(&mut vi.name);
    }
    for t in graph.initializer.iter_mut() {
        apply(&mut t.name);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renames_move_clashing_tensors_away() {
        let mut graph = onnx_protobuf::GraphProto::new();
        let mut node = onnx_protobuf::NodeProto::new();
        node.input = vec!["x".into(), "logits".into()];
        node.output = vec!["y".into()];
        graph.node.push(node);
        rename_all(&mut graph, HashMap::from([("x".into(), "input".into()), ("y".into(), "logits".into())]));
        assert_eq!(graph.node[0].input, ["input", "gradcam/renamed/logits"]);
        assert_eq!(graph.node[0].output, ["logits"]);
    }
}
