//! Reverse-mode differentiation of an ONNX graph, emitted as ONNX nodes.
//!
//! From the first graph output (the logits) back to one tensor (the activation): every node on
//! a path between the two gets its vector-Jacobian product from [`super::rules`]; gradients
//! of tensors with several consumers are summed. The generated model computes the forward pass
//! and the backward pass in one run.

use std::collections::{HashMap, HashSet};

use super::builder::{self, attr_i, Builder, INT64};
use super::rules::{self, Ctx};
use super::{value_info, GraphError, OnnxGraph, Shapes};

/// Generated model input: `int64 (B,)`, the class to explain per image; `-1` = top-1.
pub const CLASS: &str = "gradcam_class";
/// Generated model input: `bool` scalar; `true` explains the softmax probability instead of
/// the logit.
pub const SOFTMAX: &str = "gradcam_softmax";
/// Generated model input ([`Seed::Tensor`]): `d score / d logits`, shaped like the logits.
pub const SEED: &str = "gradcam_seed";
/// Generated model output: the original model's first output.
pub const LOGITS: &str = "gradcam_logits";
/// Generated model output: the activation (and, in [`OnnxGraph::with_activation_input`], the
/// input that replaces it).
pub const ACTIVATION: &str = "gradcam_activation";
/// Generated model output: `d score / d activation`.
pub const GRADIENT: &str = "gradcam_gradient";
/// Generated model output ([`Seed::Classes`]): `int64 (B,)` the class explained per image.
pub const CLASSES: &str = "gradcam_classes";

/// Where the backward pass starts from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Seed {
    /// Inputs [`CLASS`] and [`SOFTMAX`]: the graph builds the seed itself (one-hot of the given
    /// or arg-max class, or the softmax probability's gradient), so top-1 needs one run.
    Classes,
    /// Input [`SEED`]: any `d score / d logits`, given by the caller.
    Tensor,
}

/// The part of the graph the backward pass goes through.
struct Plan {
    /// Indices of the nodes between the activation and the logits, in graph order.
    path: Vec<usize>,
    /// Tensors that depend differentiably on the activation.
    active: HashSet<String>,
}

impl OnnxGraph {
    fn plan(&self, activation: &str) -> Result<Plan, GraphError> {
        let nodes = self.nodes();
        let logits = self.logits_name()?;
        let mut active: HashSet<String> = HashSet::from([activation.to_string()]);
        for node in nodes {
            let differentiable = |(k, i): (usize, &String)| carries_gradient(node, k) && active.contains(i);
            if rules::is_non_differentiable(&node.op_type)
                || !node.input.iter().enumerate().any(differentiable)
            {
                continue;
            }
            if node.op_type == "Cast" && !is_float(builder::get_i(node, "to", 0) as i32) {
                continue;
            }
            let n = if node.op_type == "Split" { node.output.len() } else { 1 };
            active.extend(node.output.iter().take(n).filter(|o| !o.is_empty()).cloned());
        }
        if !active.contains(&logits) {
            return Err(GraphError::NoPath(activation.into()));
        }
        let mut reach: HashSet<&str> = HashSet::from([logits.as_str()]);
        let mut path = Vec::new();
        for (i, node) in nodes.iter().enumerate().rev() {
            let feeds_logits = node.output.iter().any(|o| reach.contains(o.as_str()) && active.contains(o));
            if feeds_logits && node.input.iter().any(|x| active.contains(x)) {
                path.push(i);
                reach.extend(node.input.iter().map(String::as_str));
            }
        }
        path.reverse();
        Ok(Plan { path, active })
    }

    /// The tensors whose [`super::TensorInfo`] [`OnnxGraph::backward_model`] needs: inputs and
    /// outputs of the nodes between `activation` and the logits.
    pub fn backward_tensors(&self, activation: &str) -> Result<Vec<String>, GraphError> {
        let plan = self.plan(activation)?;
        let mut names: Vec<String> = Vec::new();
        let mut seen = HashSet::new();
        for &i in &plan.path {
            let node = &self.nodes()[i];
            for t in node.input.iter().chain(&node.output) {
                if !t.is_empty() && seen.insert(t.clone()) {
                    names.push(t.clone());
                }
            }
        }
        Ok(names)
    }

    /// The model extended with the backward pass from its first output (the logits) to tensor
    /// `activation`. Outputs: [`LOGITS`], [`ACTIVATION`], [`GRADIENT`] (and [`CLASSES`] with
    /// [`Seed::Classes`]); inputs: the original ones plus the seed's. `shapes` gives static
    /// information for the tensors listed by [`OnnxGraph::backward_tensors`] (from one run with
    /// any batch size other than 1 when the batch is dynamic, so that broadcasting over the
    /// batch shows).
    ///
    /// One model computes forward and backward, so the seed must not depend on this run's
    /// logits unless the graph builds it ([`Seed::Classes`]); [`OnnxGraph::backward_split`]
    /// splits the same computation in two models around a seed computed in between.
    pub fn backward_model(
        &self,
        activation: &str,
        seed: Seed,
        shapes: &Shapes,
    ) -> Result<OnnxGraph, GraphError> {
        let logits = self.logits_name()?;
        let logits_info = shapes.get(&logits).ok_or_else(|| GraphError::MissingShape(logits.clone()))?;
        let dtype = logits_info.dtype;
        let mut b = Builder::new(self.opset(), "gradcam");
        let mut new_inputs = Vec::new();
        let mut new_outputs = vec![value_info(LOGITS, dtype, Some(logits_info.shape.len()))];
        let seed_name = match seed {
            Seed::Tensor => {
                new_inputs.push(value_info(SEED, dtype, Some(logits_info.shape.len())));
                SEED.to_string()
            }
            Seed::Classes => {
                new_inputs.push(value_info(CLASS, INT64, Some(1)));
                new_inputs.push(value_info(
                    SOFTMAX,
                    onnx_protobuf::tensor_proto::DataType::BOOL as i32,
                    Some(0),
                ));
                let (s, classes) = class_seed(&mut b, &logits, dtype);
                b.nodes.push(super::identity(&classes, CLASSES));
                s
            }
        };
        let (g, _) = self.emit_backward(activation, seed_name, shapes, false, &[], &mut b)?;
        b.nodes.push(super::identity(&logits, LOGITS));
        b.nodes.push(super::identity(activation, ACTIVATION));
        b.nodes.push(super::identity(&g, GRADIENT));
        let act_rank = shapes.get(activation).map(|t| t.shape.len());
        new_outputs.push(value_info(ACTIVATION, dtype, act_rank));
        new_outputs.push(value_info(GRADIENT, dtype, act_rank));
        if seed == Seed::Classes {
            new_outputs.push(value_info(CLASSES, INT64, Some(1)));
        }

        let mut out = self.clone();
        let graph = out.model.graph.mut_or_insert_default();
        graph.node.extend(b.nodes);
        graph.initializer.extend(b.initializers);
        graph.input.extend(new_inputs);
        graph.output = new_outputs;
        Ok(out)
    }

    /// The first graph output: the logits.
    pub(crate) fn logits_name(&self) -> Result<String, GraphError> {
        self.output_names()
            .into_iter()
            .next()
            .ok_or_else(|| GraphError::NoPath("(the model has no output)".into()))
    }

    /// Emits the vector-Jacobian products from the logits (whose gradient is tensor `seed`) back
    /// to `activation` into `b`, in an order where every node follows its inputs; returns the
    /// name of the activation's gradient, and for each tensor of `keep` the name of its whole
    /// gradient (`None` where the logits do not depend on it through `activation`). `guided`:
    /// every `Relu` back-propagates as guided backprop's.
    pub(crate) fn emit_backward(
        &self,
        activation: &str,
        seed: String,
        shapes: &Shapes,
        guided: bool,
        keep: &[String],
        b: &mut Builder,
    ) -> Result<(String, Vec<Option<String>>), GraphError> {
        let plan = self.plan(activation)?;
        let logits = self.logits_name()?;
        let dtype = shapes.get(&logits).ok_or_else(|| GraphError::MissingShape(logits.clone()))?.dtype;
        let constants = self.constants();
        let mut grads: HashMap<String, Vec<String>> = HashMap::from([(logits, vec![seed])]);
        let mut kept: HashMap<&str, String> = HashMap::new();
        let keep_set: HashSet<&str> = keep.iter().map(String::as_str).collect();
        let start = (b.nodes.len(), b.initializers.len());
        for &i in plan.path.iter().rev() {
            let node = &self.nodes()[i];
            let out_grads: Vec<Option<String>> =
                node.output.iter().map(|o| grads.remove(o).map(|g| sum(b, g))).collect();
            // A tensor's gradient is whole once its producer is reached: every consumer comes later.
            for (o, g) in node.output.iter().zip(&out_grads) {
                if let (Some(&k), Some(g)) = (keep_set.get(o.as_str()), g) {
                    kept.insert(k, g.clone());
                }
            }
            if out_grads.iter().all(Option::is_none) {
                continue;
            }
            let wants: Vec<bool> = node
                .input
                .iter()
                .enumerate()
                .map(|(k, x)| carries_gradient(node, k) && plan.active.contains(x))
                .collect();
            let rule =
                rules::rule(&node.op_type).filter(|_| node.domain.is_empty() || node.domain == "ai.onnx");
            let Some(rule) = rule else {
                let op = if node.domain.is_empty() {
                    node.op_type.clone()
                } else {
                    format!("{}.{}", node.domain, node.op_type)
                };
                return Err(GraphError::UnsupportedOp { op, node: node.name.clone() });
            };
            let mut ctx = Ctx::new(b, &constants, shapes, node, wants.clone(), dtype, guided);
            let in_grads = rule(&mut ctx, &out_grads)?;
            for (k, want) in wants.iter().enumerate() {
                match in_grads.get(k).cloned().flatten() {
                    Some(g) if *want => grads.entry(node.input[k].clone()).or_default().push(g),
                    None if *want => {
                        return Err(GraphError::Unsupported {
                            op: node.op_type.clone(),
                            node: node.name.clone(),
                            reason: format!("no gradient for input {k} (`{}`)", node.input[k]),
                        })
                    }
                    _ => {}
                }
            }
        }
        let g = grads.remove(activation).ok_or_else(|| GraphError::NoPath(activation.into()))?;
        let kept: Vec<Option<String>> = keep.iter().map(|k| kept.get(k.as_str()).cloned()).collect();
        let g = sum(b, g);
        let live: HashSet<&str> = kept.iter().flatten().chain([&g]).map(String::as_str).collect();
        drop_unread(b, start, &live);
        Ok((g, kept))
    }
}

/// The seed `d score / d logits` from the [`CLASS`] and [`SOFTMAX`] inputs; returns it and
/// the resolved classes.
fn class_seed(b: &mut Builder, logits: &str, dtype: i32) -> (String, String) {
    let argmax = b.op("ArgMax", &[logits], vec![attr_i("axis", 1), attr_i("keepdims", 0)]);
    let zero = b.ints(&[0]);
    let negative = b.op("Less", &[CLASS, &zero], vec![]);
    let classes = b.op("Where", &[&negative, &argmax, CLASS], vec![]);
    let shape = b.op("Shape", &[logits], vec![]);
    let (one, two) = (b.ints(&[1]), b.ints(&[2]));
    let depth = b.op("Slice", &[&shape, &one, &two], vec![]);
    let mut values = builder::tensor_scalar("values", 0.0, dtype);
    values.dims = vec![2];
    if dtype == builder::DOUBLE {
        values.double_data = vec![0.0, 1.0];
    } else {
        values.float_data = vec![0.0, 1.0];
    }
    let values_name = b.fresh("onehot_values");
    values.name = values_name.clone();
    b.initializers.push(values);
    let onehot = b.op("OneHot", &[&classes, &depth, &values_name], vec![attr_i("axis", -1)]);
    // Softmax score: d p_c / d z_j = p_c (δ_cj - p_j).
    let p = b.op("Softmax", &[logits], vec![attr_i("axis", 1)]);
    let p_onehot = b.op("Mul", &[&p, &onehot], vec![]);
    let pc = b.reduce_sum(&p_onehot, &[1], true);
    let diff = b.op("Sub", &[&onehot, &p], vec![]);
    let soft = b.op("Mul", &[&pc, &diff], vec![]);
    let seed = b.op("Where", &[SOFTMAX, &soft, &onehot], vec![]);
    (seed, classes)
}

/// Drops the nodes and initializers added from `start` on that nothing reads and `live` does
/// not name: some rules leave such nodes behind (an `Expand` whose input a mask broadcasts
/// instead), and ONNX Runtime runs every node of a graph.
fn drop_unread(b: &mut Builder, (nodes, inits): (usize, usize), live: &HashSet<&str>) {
    loop {
        let read: HashSet<String> = b.nodes.iter().flat_map(|n| n.input.iter().cloned()).collect();
        let unread = |o: &String| !read.contains(o) && !live.contains(o.as_str());
        let dead: Vec<usize> =
            (nodes..b.nodes.len()).filter(|&i| b.nodes[i].output.iter().all(unread)).collect();
        if dead.is_empty() {
            let mut k = 0;
            b.initializers.retain(|t| {
                k += 1;
                k <= inits || !unread(&t.name)
            });
            return;
        }
        for i in dead.into_iter().rev() {
            b.nodes.remove(i);
        }
    }
}

/// Whether input `k` of `node` can carry gradient: not `CastLike`'s second input, which gives
/// only its type (the unoptimised dynamo exporter casts constants like an activation).
fn carries_gradient(node: &onnx_protobuf::NodeProto, k: usize) -> bool {
    !(node.op_type == "CastLike" && k == 1)
}

/// The sum of gradient contributions (a `Sum` node only when there are several).
fn sum(b: &mut Builder, mut g: Vec<String>) -> String {
    if g.len() == 1 {
        return g.pop().expect("one");
    }
    let refs: Vec<&str> = g.iter().map(String::as_str).collect();
    b.op("Sum", &refs, vec![])
}

fn is_float(dtype: i32) -> bool {
    use onnx_protobuf::tensor_proto::DataType;
    [DataType::FLOAT, DataType::DOUBLE, DataType::FLOAT16, DataType::BFLOAT16]
        .iter()
        .any(|d| *d as i32 == dtype)
}
