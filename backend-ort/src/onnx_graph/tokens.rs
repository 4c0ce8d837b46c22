//! Class-token pruning: a ViT's head reads one token (`x[:, 0]`, a `Gather` on axis 1), yet the
//! layers after the last attention (output projection, residual adds, norm, MLP, final norm) run on
//! every token. Those layers treat tokens independently, so the `Gather` can move up in front of
//! them: they then run on one token instead of 197, in the forward and in the backward pass, and
//! the logits and the gradient reaching any layer before them are unchanged.

use std::collections::{HashMap, HashSet};

use onnx_protobuf::NodeProto;

use super::builder::{attr_i, get_i, get_ints};
use super::rules::{self, Tokens};
use super::{OnnxGraph, Shapes};

impl OnnxGraph {
    /// The graph with every `Gather(x, k, axis=1)` (scalar constant `k`, `x` of shape
    /// `(B, N, D)`) moved up in front of the token-wise nodes that only feed it, and the number
    /// of nodes that now run on one token. `keep` (the activation) is never pruned: its
    /// consumers read a gathered copy. `shapes` must hold the probed shapes of the tensors
    /// between `keep` and the logits ([`OnnxGraph::backward_tensors`]); nodes whose shapes are
    /// unknown are left alone.
    pub fn prune_tokens(&self, keep: &str, shapes: &Shapes) -> (OnnxGraph, usize) {
        let nodes = self.nodes();
        let outputs: HashSet<String> = self.output_names().into_iter().collect();
        let mut consumers: HashMap<&str, Vec<usize>> = HashMap::new();
        for (i, node) in nodes.iter().enumerate() {
            for input in node.input.iter().filter(|s| !s.is_empty()) {
                consumers.entry(input.as_str()).or_default().push(i);
            }
        }
        let constants = self.constants();
        let tokens_of = |name: &str| match shapes.get(name).map(|t| t.shape.as_slice()) {
            Some([_, n, _]) => Some(*n),
            _ => None,
        };
        // The token index a node picks, when it is one of the gathers this pass moves.
        let picked = |node: &NodeProto| -> Option<i64> {
            let (data, index) = (node.input.first()?, node.input.get(1)?);
            if node.op_type != "Gather" || get_i(node, "axis", 0) != 1 || tokens_of(data).is_none() {
                return None;
            }
            let index = constants.get(index.as_str()).filter(|t| t.dims.is_empty())?;
            super::tensor_ints(index)?.first().copied()
        };

        // Tensors that may hold only token k, decided consumers first (reverse graph order):
        // a `(B, N, D)` tensor whose every consumer is a gather of token k, or a token-wise node
        // that reads it as a token input and whose outputs may hold only token k too.
        for k in nodes.iter().filter_map(picked).collect::<HashSet<_>>() {
            let mut one_token: HashSet<&str> = HashSet::new();
            let mut pruned: Vec<usize> = Vec::new();
            for (i, node) in nodes.iter().enumerate().rev() {
                let Some(token_in) = token_inputs(node, shapes, &tokens_of) else { continue };
                let used: Vec<&String> =
                    node.output.iter().filter(|o| consumers.contains_key(o.as_str())).collect();
                if used.len() != 1 || used[0] != &node.output[0] {
                    continue;
                }
                let out = node.output[0].as_str();
                if out == keep || outputs.contains(out) || tokens_of(out).is_none() {
                    continue;
                }
                let fine = consumers[out].iter().all(|&c| {
                    let consumer = &nodes[c];
                    if picked(consumer) == Some(k) && consumer.input[1] != out {
                        return true;
                    }
                    consumer.output.first().is_some_and(|o| one_token.contains(o.as_str()))
                        && consumer
                            .input
                            .iter()
                            .zip(token_inputs(consumer, shapes, &tokens_of).unwrap_or_default())
                            .all(|(name, is_token)| name != out || is_token)
                });
                if fine && token_in.iter().any(|&t| t) {
                    one_token.insert(out);
                    pruned.push(i);
                }
            }
            if pruned.is_empty() {
                continue;
            }
            return self.apply_pruning(k, &pruned, shapes, &tokens_of);
        }
        (self.clone(), 0)
    }

    /// Rewrites `pruned` (node indices, any order) to run on token `k` only.
    fn apply_pruning(
        &self,
        k: i64,
        pruned: &[usize],
        shapes: &Shapes,
        tokens_of: &dyn Fn(&str) -> Option<i64>,
    ) -> (OnnxGraph, usize) {
        let mut out = self.clone();
        let pruned: HashSet<usize> = pruned.iter().copied().collect();
        let sliced: HashSet<String> = pruned.iter().map(|&i| self.nodes()[i].output[0].clone()).collect();
        let index_name = format!("gradcam_token_{k}");
        let graph = out.model.graph.mut_or_insert_default();
        let mut index = super::builder::tensor_i64(&index_name, &[k]);
        index.dims.clear();
        graph.initializer.push(index);
        let mut gathered: HashMap<String, String> = HashMap::new();
        let mut new_nodes: Vec<NodeProto> = Vec::with_capacity(graph.node.len() + 8);
        for (i, mut node) in std::mem::take(&mut graph.node).into_iter().enumerate() {
            if pruned.contains(&i) {
                let token_in = token_inputs(&node, shapes, tokens_of).expect("checked");
                for (input, is_token) in node.input.iter_mut().zip(token_in) {
                    if !is_token || sliced.contains(input) {
                        continue;
                    }
                    // A tensor from before the pruned part: gather token k once, where it is read.
                    let name = gathered.entry(input.clone()).or_insert_with(|| {
                        let name = format!("{input}/gradcam_token_{k}");
                        let mut gather = NodeProto::new();
                        gather.op_type = "Gather".into();
                        gather.name = name.clone();
                        gather.input = vec![input.clone(), index_name.clone()];
                        gather.output = vec![name.clone()];
                        gather.attribute.push(attr_i("axis", 1));
                        new_nodes.push(gather);
                        name
                    });
                    *input = name.clone();
                }
                drop_token_axis(&mut node);
            } else if node.op_type == "Gather" && node.input.first().is_some_and(|i| sliced.contains(i)) {
                // The head's own gather: its input already holds token k only.
                node.op_type = "Identity".into();
                node.input.truncate(1);
                node.attribute.clear();
            }
            new_nodes.push(node);
        }
        graph.node = new_nodes;
        // Their declared shapes (the dynamo exporter writes them) still have the token axis.
        graph.value_info.retain(|vi| !sliced.contains(&vi.name));
        (out, pruned.len())
    }
}

/// For a node that treats tokens independently, which of its inputs carry the token axis
/// (`(B, N, D)`, gathered when it is pruned) and which do not (weights, biases, scalars).
/// `None` when the node is not token-wise.
fn token_inputs(
    node: &NodeProto,
    shapes: &Shapes,
    tokens_of: &dyn Fn(&str) -> Option<i64>,
) -> Option<Vec<bool>> {
    let op = node.op_type.as_str();
    let out_tokens = tokens_of(node.output.first()?)?;
    let rank = |name: &str| shapes.get(name).map(|t| t.shape.len());
    // A broadcast operand must not reach the token axis: rank <= 1 aligns with the last axis only.
    let classify = |name: &String| -> Option<bool> {
        if name.is_empty() {
            return Some(false);
        }
        match tokens_of(name) {
            Some(n) if n == out_tokens => Some(true),
            Some(_) => None,
            None => (rank(name)? <= 1).then_some(false),
        }
    };
    let axis_after_tokens = |axis: i64| axis == -1 || axis == 2;
    let first = node.input.first()?;
    let inputs = match rules::tokens(op) {
        Tokens::No => return None,
        // Clip's min/max, Dropout's ratio, biases: scalars or per-feature vectors.
        Tokens::Elementwise => node.input.iter().map(classify).collect::<Option<Vec<bool>>>()?,
        Tokens::MatMul => {
            let weight = rank(node.input.get(1)?)? == 2;
            (weight && classify(first)?).then(|| vec![true, false])?
        }
        Tokens::LastAxis if op == "Softmax" => {
            axis_after_tokens(get_i(node, "axis", -1)).then(|| vec![classify(first) == Some(true)])?
        }
        Tokens::LastAxis => {
            if !axis_after_tokens(get_i(node, "axis", -1)) {
                return None;
            }
            node.input.iter().map(classify).collect::<Option<Vec<bool>>>()?
        }
        Tokens::Reduce => {
            // Only with keepdims and axes (attribute) after the token axis.
            if get_i(node, "keepdims", 1) != 1 {
                return None;
            }
            let axes = get_ints(node, "axes")?;
            (!axes.is_empty() && axes.iter().all(|&a| axis_after_tokens(a)) && node.input.len() == 1)
                .then(|| vec![classify(first) == Some(true)])?
        }
    };
    // At least one token input, and every token input must really be one.
    inputs.iter().any(|&t| t).then_some(inputs)
}

/// Attribute axes that counted the token axis (positive ones after it) move down by one.
fn drop_token_axis(node: &mut NodeProto) {
    for a in node.attribute.iter_mut() {
        match a.name.as_str() {
            "axis" if a.i > 1 => a.i -= 1,
            "axes" => a.ints.iter_mut().filter(|x| **x > 1).for_each(|x| *x -= 1),
            _ => {}
        }
    }
}
