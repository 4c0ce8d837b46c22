//! A generated model as a chain of ONNX Runtime sessions of at most [`MAX_NODES`] nodes each.
//!
//! ONNX Runtime's session setup grows faster than linearly with a graph's node count once it
//! holds several thousand nodes (even with every graph optimization off), and a backward graph
//! is half again as deep as the part of the model it differentiates. Consecutive slices of the
//! node list, each its own session, keep the setup linear in the depth; each slice reads the
//! tensors earlier slices made, without copies. A graph this small is one session, as before.

use std::borrow::Cow;
use std::collections::{HashMap, HashSet};

use onnx_protobuf::tensor_shape_proto::dimension::Value as Dim;
use onnx_protobuf::{type_proto, GraphProto, ValueInfoProto};
use ort::session::{Session, SessionInputValue};
use ort::value::{DynValue, ValueType};

use crate::onnx_graph::OnnxGraph;
use crate::runtime::{commit, commit_once, element_type};
use crate::OrtBackendError;

/// The most nodes one session holds: where ONNX Runtime's setup time is still linear (measured
/// by `cargo bench -p backend-ort --features ort --bench build`).
pub(crate) const MAX_NODES: usize = 2000;

/// One session of the chain, the tensors it reads from the chain and those it hands on.
struct Link {
    session: Session,
    inputs: Vec<String>,
    outputs: Vec<String>,
    /// Tensors no later link reads: dropped after this one runs.
    last_use: Vec<String>,
}

/// A model run as consecutive sessions ([`Chain::commit`], [`Chain::run`]).
pub(crate) struct Chain {
    links: Vec<Link>,
    outputs: HashSet<String>,
}

impl Chain {
    /// Sessions for `graph` in slices of at most `max_nodes` nodes, committed in order: each
    /// slice's inputs are typed from the sessions before it (ONNX Runtime's inferred output types
    /// and shapes). A graph with subgraphs (`If`, `Loop`), which read outer tensors by name,
    /// stays whole. `once`: the chain runs once or twice (a shape probe), so its sessions skip
    /// ONNX Runtime's graph optimizations ([`commit_once`]).
    pub(crate) fn commit(
        graph: &OnnxGraph,
        threads: usize,
        max_nodes: usize,
        once: bool,
    ) -> Result<Chain, OrtBackendError> {
        let commit =
            |graph: &OnnxGraph| if once { commit_once(graph, threads) } else { commit(graph, threads) };
        let g = &graph.model().graph;
        let outputs: HashSet<String> = g.output.iter().map(|o| o.name.clone()).collect();
        let nested = g.node.iter().any(|n| n.attribute.iter().any(|a| a.g.is_some() || !a.graphs.is_empty()));
        if g.node.len() <= max_nodes || nested {
            let inputs = g.input.iter().map(|i| i.name.clone()).collect();
            let session = commit(graph)?;
            let link = Link { session, inputs, outputs: outputs.iter().cloned().collect(), last_use: vec![] };
            return Ok(Chain { links: vec![link], outputs });
        }
        let slices: Vec<std::ops::Range<usize>> =
            (0..g.node.len()).step_by(max_nodes).map(|s| s..(s + max_nodes).min(g.node.len())).collect();
        let initializers: HashMap<&str, usize> =
            g.initializer.iter().enumerate().map(|(i, t)| (t.name.as_str(), i)).collect();
        // Which slice makes each node output, and the last slice that reads it (the graph's
        // outputs are read after the last one).
        let mut made_in: HashMap<&str, usize> = HashMap::new();
        let mut read_until: HashMap<&str, usize> = HashMap::new();
        for (k, slice) in slices.iter().enumerate() {
            for node in &g.node[slice.clone()] {
                for i in node.input.iter().filter(|i| !i.is_empty()) {
                    read_until.insert(i, k);
                }
                for o in node.output.iter().filter(|o| !o.is_empty()) {
                    made_in.insert(o, k);
                }
            }
        }
        for o in &outputs {
            read_until.insert(o.as_str(), slices.len());
        }
        let mut known: HashMap<String, ValueInfoProto> =
            g.input.iter().map(|i| (i.name.clone(), i.clone())).collect();
        let mut links = Vec::with_capacity(slices.len());
        for (k, slice) in slices.iter().enumerate() {
            let nodes = &g.node[slice.clone()];
            let mut inputs: Vec<String> = Vec::new();
            let mut used_inits: Vec<usize> = Vec::new();
            let mut seen: HashSet<&str> = HashSet::new();
            for i in nodes.iter().flat_map(|n| &n.input).filter(|i| !i.is_empty()) {
                if !seen.insert(i) || made_in.get(i.as_str()) == Some(&k) {
                    continue;
                }
                if let Some(&t) = initializers.get(i.as_str()) {
                    used_inits.push(t);
                } else {
                    inputs.push(i.clone());
                }
            }
            let link_outputs: Vec<String> = nodes
                .iter()
                .flat_map(|n| &n.output)
                .filter(|o| !o.is_empty() && read_until.get(o.as_str()).is_some_and(|&r| r > k))
                .cloned()
                .collect();
            let mut part = GraphProto::new();
            part.name = format!("{}_{k}", g.name);
            for name in &inputs {
                let info = known.get(name).ok_or_else(|| {
                    OrtBackendError::Signature(format!("tensor `{name}` is read before any node makes it"))
                })?;
                part.input.push(info.clone());
            }
            part.output = link_outputs.iter().map(|o| untyped(o)).collect();
            part.node = nodes.to_vec();
            used_inits.sort_unstable();
            part.initializer = used_inits.into_iter().map(|t| g.initializer[t].clone()).collect();
            // Not `graph.clone()`: that would copy every weight of the model once per link.
            let session = commit(&graph.with_graph(part))?;
            for outlet in session.outputs() {
                known.insert(outlet.name().to_string(), typed(outlet.name(), outlet.dtype()));
            }
            let last_use = inputs
                .iter()
                .filter(|i| read_until.get(i.as_str()).is_some_and(|&r| r == k))
                .cloned()
                .collect();
            links.push(Link { session, inputs, outputs: link_outputs, last_use });
        }
        Ok(Chain { links, outputs })
    }

    /// Runs the chain on `feeds` (the graph's inputs by name); returns its outputs by name.
    pub(crate) fn run(
        &mut self,
        mut values: HashMap<String, DynValue>,
        what: &str,
    ) -> Result<HashMap<String, DynValue>, OrtBackendError> {
        for link in &mut self.links {
            let made: Vec<(String, DynValue)> = {
                let mut feeds: Vec<(Cow<'_, str>, SessionInputValue<'_>)> =
                    Vec::with_capacity(link.inputs.len());
                for name in &link.inputs {
                    let value = values.get(name).ok_or_else(|| {
                        OrtBackendError::Signature(format!("{what}: no value for input `{name}`"))
                    })?;
                    feeds.push((name.as_str().into(), value.into()));
                }
                let outputs = link.session.run(feeds).map_err(OrtBackendError::ort(format!("run {what}")))?;
                let wanted: HashSet<&str> = link.outputs.iter().map(String::as_str).collect();
                outputs
                    .into_iter()
                    .filter(|(n, _)| wanted.contains(n))
                    .map(|(n, v)| (n.to_string(), v))
                    .collect()
            };
            for name in &link.last_use {
                values.remove(name);
            }
            values.extend(made);
        }
        values.retain(|name, _| self.outputs.contains(name));
        Ok(values)
    }

    /// How many sessions the chain has.
    #[cfg(test)]
    fn len(&self) -> usize {
        self.links.len()
    }
}

/// An output declaration without a type: ONNX Runtime infers it.
fn untyped(name: &str) -> ValueInfoProto {
    let mut vi = ValueInfoProto::new();
    vi.name = name.into();
    vi
}

/// An input declaration with the element type and shape ONNX Runtime inferred for `name` (dims
/// it could not tell stay symbolic).
fn typed(name: &str, dtype: &ValueType) -> ValueInfoProto {
    let mut vi = untyped(name);
    if let ValueType::Tensor { ty, shape, dimension_symbols } = dtype {
        let mut tensor = type_proto::Tensor::new();
        tensor.elem_type = element_type(*ty);
        let mut dims = onnx_protobuf::TensorShapeProto::new();
        for (k, &d) in shape.iter().enumerate() {
            let mut dim = onnx_protobuf::tensor_shape_proto::Dimension::new();
            // ONNX Runtime's own symbol where it has one (`batch`): one shared symbol lets it
            // plan memory across the link's tensors, a made-up one per input does not.
            let symbol = dimension_symbols.get(k).filter(|s| !s.is_empty());
            dim.value = Some(match (d, symbol) {
                (d, _) if d >= 0 => Dim::DimValue(d),
                (_, Some(symbol)) => Dim::DimParam(symbol.clone()),
                _ => Dim::DimParam(format!("{name}_d{k}")),
            });
            dims.dim.push(dim);
        }
        tensor.shape = Some(dims).into();
        let mut tp = onnx_protobuf::TypeProto::new();
        tp.value = Some(type_proto::Value::TensorType(tensor));
        vi.type_ = Some(tp).into();
    }
    vi
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::onnx_graph::builder::{attr_i, Builder};
    use onnx_protobuf::ModelProto;
    use ort::value::Tensor;

    /// `x` (float (2, 3)) through 12 nodes: a skip connection read five links later, an int64
    /// shape path (Shape → Reshape) crossing links, a weight read in two links, two outputs.
    fn model() -> OnnxGraph {
        let mut b = Builder::new(17, "t");
        let w = b.scalar(0.5, 1);
        let a = b.op("Mul", &["x", &w], vec![]);
        let shape = b.op("Shape", &["x"], vec![]);
        let r = b.op("Relu", &[&a], vec![]);
        let s = b.op("Sigmoid", &[&r], vec![]);
        let t = b.op("Tanh", &[&s], vec![]);
        let u = b.op("Mul", &[&t, &w], vec![]);
        let flat = b.op("Flatten", &[&u], vec![attr_i("axis", 0)]);
        let back = b.op("Reshape", &[&flat, &shape], vec![]);
        let v = b.op("Add", &[&back, &a], vec![]);
        let y = b.op("Neg", &[&v], vec![]);
        let z = b.op("Softmax", &[&y], vec![attr_i("axis", 1)]);
        b.nodes.push(crate::onnx_graph::identity(&z, "z"));
        b.nodes.push(crate::onnx_graph::identity(&r, "r"));
        let mut model = ModelProto::new();
        model.ir_version = 8;
        let mut opset = onnx_protobuf::OperatorSetIdProto::new();
        opset.version = 17;
        model.opset_import.push(opset);
        let graph = model.graph.mut_or_insert_default();
        graph.name = "t".into();
        graph.node = b.nodes;
        graph.initializer = b.initializers;
        graph.input.push(crate::onnx_graph::value_info("x", 1, Some(2)));
        graph.output = vec![untyped("z"), untyped("r")];
        OnnxGraph::from_model(model)
    }

    fn run(chain: &mut Chain) -> Vec<Vec<f32>> {
        let x =
            Tensor::from_array((vec![2i64, 3], vec![-1.0f32, 0.5, 2.0, 3.0, -0.25, 1.5])).unwrap().into_dyn();
        let out = chain.run(HashMap::from([("x".to_string(), x)]), "the test model").unwrap();
        ["z", "r"].iter().map(|n| out[*n].try_extract_tensor::<f32>().unwrap().1.to_vec()).collect()
    }

    /// Sliced every 3 nodes (5 links), the chain gives what the whole graph gives, bit for bit.
    #[test]
    fn slices_compute_what_the_whole_graph_does() {
        let graph = model();
        let mut whole = Chain::commit(&graph, 1, 1000, false).unwrap();
        let mut sliced = Chain::commit(&graph, 1, 3, true).unwrap();
        assert_eq!((whole.len(), sliced.len()), (1, 5));
        let want = run(&mut whole);
        assert!(want[0].iter().all(|v| v.is_finite() && *v > 0.0), "{want:?}");
        assert_eq!(run(&mut sliced), want);
    }
}
