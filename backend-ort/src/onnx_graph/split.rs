//! The backward pass as a second model: the forward runs once, the caller computes the seed from
//! its logits, and the backward model reads the forward tensors it needs from the first run.

use std::collections::HashSet;

use onnx_protobuf::tensor_shape_proto::dimension::Value::DimValue;
use onnx_protobuf::{type_proto, GraphProto, NodeProto};

use super::backward::{GRADIENT, SEED};
use super::builder::Builder;
use super::{value_info, GraphError, OnnxGraph, Shapes};

/// A capture as two models: [`SplitModel::forward`] (the model, with the tensors the backward
/// pass reads as extra outputs) and [`SplitModel::backward`] (seed and those tensors in, gradient
/// out).
#[derive(Clone, Debug)]
pub struct SplitModel {
    /// The original graph's inputs in; its logits, the activation and every [`Self::carried`]
    /// tensor out, each under its own name.
    pub forward: OnnxGraph,
    /// Inputs: [`SEED`] (`d score / d logits`, shaped like the logits), the [`Self::carried`]
    /// tensors and the [`Self::reads_inputs`] graph inputs; output: [`GRADIENT`].
    pub backward: OnnxGraph,
    /// The logits' tensor name (an output of `forward`).
    pub logits: String,
    /// The activation's tensor name (an output of `forward`, unless it is a graph input).
    pub activation: String,
    /// Tensors `forward` outputs and `backward` takes as inputs, in a fixed order.
    pub carried: Vec<String>,
    /// Inputs of the original model that `backward` reads too (fed the same values).
    pub reads_inputs: Vec<String>,
    /// For each extra tensor asked of [`OnnxGraph::backward_split_with`], the `backward` output
    /// holding its gradient (`None` where the logits do not depend on it).
    pub extra_gradients: Vec<Option<String>>,
}

impl SplitModel {
    /// [`Self::backward`] with its inputs' shapes static where `dim(name, k)` knows dimension
    /// `k` of input `name` (the seed's is asked for under the logits' name). ONNX Runtime plans
    /// the memory of a graph with symbolic shapes in time quadratic in its depth (its
    /// buffer-reuse search cannot match sizes), and in linear time with static ones.
    pub fn backward_for(&self, dim: impl Fn(&str, usize) -> Option<i64>) -> OnnxGraph {
        let mut out = self.backward.clone();
        let graph = out.model.graph.mut_or_insert_default();
        for input in graph.input.iter_mut() {
            let name = if input.name == SEED { self.logits.clone() } else { input.name.clone() };
            let Some(type_proto::Value::TensorType(t)) = input.type_.as_mut().and_then(|t| t.value.as_mut())
            else {
                continue;
            };
            let Some(shape) = t.shape.as_mut() else { continue };
            for (k, d) in shape.dim.iter_mut().enumerate() {
                if let Some(v) = dim(&name, k) {
                    d.value = Some(DimValue(v));
                }
            }
        }
        out
    }
}

impl OnnxGraph {
    /// The backward pass from the logits to `activation` as a model of its own, next to the
    /// forward model that feeds it ([`SplitModel`]). `shapes` as for
    /// [`OnnxGraph::backward_model`]; every carried tensor must have an entry (the rules only
    /// read the inputs and outputs of the nodes [`OnnxGraph::backward_tensors`] lists).
    ///
    /// The backward model holds none of the original nodes except `Constant`s it reads, and only
    /// the weights its rules read (convolution kernels, normalisation scales).
    pub fn backward_split(&self, activation: &str, shapes: &Shapes) -> Result<SplitModel, GraphError> {
        self.backward_split_with(activation, shapes, false, &[])
    }

    /// [`OnnxGraph::backward_split`]; with `guided`, every `Relu` back-propagates only positive
    /// gradients (guided backprop; `activation` is then usually the graph's input). The
    /// gradients of the `extra` tensors on the way (FullGrad's bias layers) are outputs too:
    /// [`SplitModel::extra_gradients`].
    pub fn backward_split_with(
        &self,
        activation: &str,
        shapes: &Shapes,
        guided: bool,
        extra: &[String],
    ) -> Result<SplitModel, GraphError> {
        let logits = self.logits_name()?;
        let mut b = Builder::new(self.opset(), "gradcam");
        let (gradient, kept) =
            self.emit_backward(activation, SEED.to_string(), shapes, guided, extra, &mut b)?;
        b.nodes.push(super::identity(&gradient, GRADIENT));
        let extra_gradients: Vec<Option<String>> = kept
            .iter()
            .enumerate()
            .map(|(k, g)| {
                let name = format!("{GRADIENT}_{k}");
                g.as_ref().map(|g| {
                    b.nodes.push(super::identity(g, &name));
                    name
                })
            })
            .collect();

        let produced: HashSet<&str> =
            b.nodes.iter().flat_map(|n| n.output.iter().map(String::as_str)).collect();
        let new_inits: HashSet<&str> = b.initializers.iter().map(|t| t.name.as_str()).collect();
        let graph_inputs: HashSet<String> = self.input_names().into_iter().collect();
        let constants: std::collections::HashMap<&str, &NodeProto> = self
            .nodes()
            .iter()
            .filter(|n| n.op_type == "Constant")
            .filter_map(|n| n.output.first().map(|o| (o.as_str(), n)))
            .collect();
        let model_inits: std::collections::HashMap<&str, usize> =
            self.model.graph.initializer.iter().enumerate().map(|(i, t)| (t.name.as_str(), i)).collect();

        let mut carried = Vec::new();
        let mut reads_inputs = Vec::new();
        let mut copied_constants = Vec::new();
        let mut used_inits = Vec::new();
        let mut seen: HashSet<&str> = HashSet::new();
        for name in b.nodes.iter().flat_map(|n| n.input.iter()) {
            let name = name.as_str();
            if name.is_empty() || name == SEED || produced.contains(name) || new_inits.contains(name) {
                continue;
            }
            if !seen.insert(name) {
                continue;
            }
            if let Some(&i) = model_inits.get(name) {
                used_inits.push(i);
            } else if let Some(node) = constants.get(name) {
                copied_constants.push((*node).clone());
            } else if graph_inputs.contains(name) {
                reads_inputs.push(name.to_string());
            } else {
                carried.push(name.to_string());
            }
        }

        let mut graph = GraphProto::new();
        graph.name = "gradcam_backward".into();
        let info = |name: &str| shapes.get(name).ok_or_else(|| GraphError::MissingShape(name.into()));
        let logits_info = info(&logits)?;
        graph.input.push(value_info(SEED, logits_info.dtype, Some(logits_info.shape.len())));
        for name in carried.iter().chain(&reads_inputs) {
            let t = info(name)?;
            graph.input.push(value_info(name, t.dtype, Some(t.shape.len())));
        }
        let act = info(activation)?;
        graph.output.push(value_info(GRADIENT, act.dtype, Some(act.shape.len())));
        for (tensor, name) in extra.iter().zip(&extra_gradients) {
            if let Some(name) = name {
                let t = info(tensor)?;
                graph.output.push(value_info(name, t.dtype, Some(t.shape.len())));
            }
        }
        graph.node = copied_constants;
        graph.node.extend(b.nodes);
        used_inits.sort_unstable();
        graph.initializer = used_inits.into_iter().map(|i| self.model.graph.initializer[i].clone()).collect();
        graph.initializer.extend(b.initializers);
        let mut backward_model = onnx_protobuf::ModelProto::new();
        backward_model.ir_version = self.model.ir_version;
        backward_model.opset_import = self.model.opset_import.clone();
        backward_model.producer_name = "gradcam-rs".into();
        backward_model.graph = Some(graph).into();
        let backward = OnnxGraph { model: backward_model, dir: self.dir.clone() };

        // A graph input (guided backprop's cut) is not an output: ONNX Runtime hands back no
        // data for an input passed through.
        let mut outputs = vec![logits.clone()];
        if !graph_inputs.contains(activation) {
            outputs.push(activation.to_string());
        }
        outputs.extend(carried.iter().cloned());
        let forward = self.with_outputs(&outputs);
        Ok(SplitModel {
            forward,
            backward,
            logits,
            activation: activation.into(),
            carried,
            reads_inputs,
            extra_gradients,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use onnx_protobuf::tensor_shape_proto::dimension::Value;

    fn dims_of(g: &OnnxGraph, name: &str) -> Vec<Option<Value>> {
        let input = g.model().graph.input.iter().find(|i| i.name == name).expect("an input");
        match input.type_.as_ref().and_then(|t| t.value.as_ref()) {
            Some(type_proto::Value::TensorType(t)) => t.shape.dim.iter().map(|d| d.value.clone()).collect(),
            _ => panic!("a tensor input"),
        }
    }

    /// The backward model is committed with static input shapes (ONNX Runtime plans symbolic
    /// ones in quadratic time): the seed's from the logits' name, symbolic where unknown.
    #[test]
    fn backward_for_makes_known_dims_static() {
        let mut graph = GraphProto::new();
        graph.input.push(value_info(SEED, 1, Some(2)));
        graph.input.push(value_info("carried", 1, Some(3)));
        let mut model = onnx_protobuf::ModelProto::new();
        model.graph = Some(graph).into();
        let split = SplitModel {
            forward: OnnxGraph::from_model(Default::default()),
            backward: OnnxGraph::from_model(model),
            logits: "logits".into(),
            activation: "act".into(),
            carried: vec!["carried".into()],
            reads_inputs: vec![],
            extra_gradients: vec![],
        };
        let g = split.backward_for(|name, k| match (name, k) {
            ("logits", 0) => Some(5),
            ("logits", 1) => Some(10),
            ("carried", 1) => Some(7),
            _ => None,
        });
        assert_eq!(dims_of(&g, SEED), [Some(Value::DimValue(5)), Some(Value::DimValue(10))]);
        let carried = dims_of(&g, "carried");
        assert_eq!(carried[1], Some(Value::DimValue(7)));
        assert!(matches!(carried[0], Some(Value::DimParam(_))), "unknown dims stay symbolic");
    }
}
