//! FullGrad's bias layers in an ONNX graph: which nodes stand for pytorch-grad-cam's bias modules,
//! and each one's bias per channel, computed inside the model (weights may live in external data).

use super::builder::{get_f, Builder};
use super::layers::metadata_list;
use super::{value_info, OnnxGraph, Shapes};

/// Node metadata key where the dynamo exporter records the module classes, outermost first and
/// the op last.
const CLASS_HIERARCHY: &str = "pkg.torch.onnx.class_hierarchy";
const CONV2D: &str = "torch.nn.modules.conv.Conv2d";
const BATCH_NORM2D: &str = "torch.nn.modules.batchnorm.BatchNorm2d";

/// A layer whose output has a per-channel bias (FullGrad).
#[derive(Clone, Debug, PartialEq)]
pub struct BiasLayer {
    /// Its module path: the BatchNorm's where a dynamo export fused one into a convolution; the
    /// convolution's where a legacy export did (that file keeps no BatchNorm name).
    pub name: String,
    /// Its output tensor, `(B, C, h, w)`.
    pub tensor: String,
    /// `C`.
    pub channels: usize,
    bias: Bias,
}

#[derive(Clone, Debug, PartialEq)]
enum Bias {
    /// A convolution's bias input (its own, or a BatchNorm's folded in by the exporter).
    Tensor(String),
    /// A BatchNorm the dynamo exporter fused into a bias-free convolution and whose folded bias
    /// was zero, so the exporter dropped it.
    Zeros,
    /// A `BatchNormalization` node's inputs and epsilon: `B − mean · scale / √(var + ε)`.
    BatchNorm { scale: String, b: String, mean: String, var: String, epsilon: f32 },
}

impl OnnxGraph {
    /// pytorch-grad-cam's FullGrad bias layers, in graph (forward) order, among the nodes whose
    /// output `shapes` gives as 4-D: modules that are exactly `nn.Conv2d` or `nn.BatchNorm2d`
    /// and have a bias.
    ///
    /// A dynamo export records each node's module classes, so the exact-type rule holds there:
    /// a convolution stands for the BatchNorm fused into it when its module is one, and timm's
    /// `BatchNormAct2d` or `Conv2dSame` (subclasses) are left out. A legacy export keeps no
    /// classes and folds BatchNorms into the convolutions before them: there every convolution
    /// with a bias and every `BatchNormalization` counts, subclasses included, as FullGrad
    /// defines it (documented in the README).
    pub fn bias_layers(&self, shapes: &Shapes) -> Vec<BiasLayer> {
        let modules = self.node_modules();
        let mut out = Vec::new();
        for (node, module) in self.nodes().iter().zip(modules) {
            let Some(tensor) = node.output.first() else { continue };
            let Some(info) = shapes.get(tensor).filter(|t| t.shape.len() == 4) else { continue };
            let class = metadata_list(node, CLASS_HIERARCHY)
                .map(|items| items.len().checked_sub(2).map(|i| items[i].to_string()));
            if let Some(class) = &class {
                if !matches!(class.as_deref(), Some(CONV2D | BATCH_NORM2D)) {
                    continue;
                }
            }
            let input = |k: usize| node.input.get(k).filter(|i| !i.is_empty()).cloned();
            let bias = match node.op_type.as_str() {
                "Conv" => match input(2) {
                    Some(b) => Bias::Tensor(b),
                    None if class.as_ref().is_some_and(|c| c.as_deref() == Some(BATCH_NORM2D)) => Bias::Zeros,
                    None => continue,
                },
                "BatchNormalization" => match (input(1), input(2), input(3), input(4)) {
                    (Some(scale), Some(b), Some(mean), Some(var)) => {
                        Bias::BatchNorm { scale, b, mean, var, epsilon: get_f(node, "epsilon", 1e-5) }
                    }
                    _ => continue,
                },
                _ => continue,
            };
            let name = module.unwrap_or_else(|| tensor.clone());
            let channels = usize::try_from(info.shape[1]).unwrap_or(0);
            out.push(BiasLayer { name, tensor: tensor.clone(), channels, bias });
        }
        out
    }

    /// The model with each layer's bias `(C,)` as an extra output; returns the output names
    /// (`None` for a bias that is all zeros, which the file does not hold).
    pub fn with_bias_outputs(&self, layers: &[BiasLayer]) -> (OnnxGraph, Vec<Option<String>>) {
        let mut b = Builder::new(self.opset(), "gradcam_bias");
        let mut names = Vec::new();
        let mut outputs = Vec::new();
        for (k, layer) in layers.iter().enumerate() {
            let value = match &layer.bias {
                Bias::Zeros => {
                    names.push(None);
                    continue;
                }
                Bias::Tensor(t) => t.clone(),
                Bias::BatchNorm { scale, b: shift, mean, var, epsilon } => {
                    let eps = b.scalar(f64::from(*epsilon), 1);
                    let var_eps = b.op("Add", &[var, &eps], vec![]);
                    let std = b.op("Sqrt", &[&var_eps], vec![]);
                    let gain = b.op("Div", &[scale, &std], vec![]);
                    let shifted = b.op("Mul", &[mean, &gain], vec![]);
                    b.op("Sub", &[shift, &shifted], vec![])
                }
            };
            let name = format!("gradcam_bias_{k}");
            b.nodes.push(super::identity(&value, &name));
            outputs.push(value_info(&name, 1, Some(1)));
            names.push(Some(name));
        }
        let mut out = self.clone();
        let graph = out.model_mut().graph.mut_or_insert_default();
        graph.node.extend(b.nodes);
        graph.initializer.extend(b.initializers);
        graph.output.extend(outputs);
        (out, names)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::onnx_graph::TensorInfo;
    use onnx_protobuf::{ModelProto, NodeProto, StringStringEntryProto};

    fn node(op: &str, name: &str, inputs: &[&str], output: &str, classes: Option<&str>) -> NodeProto {
        let mut n = NodeProto::new();
        n.op_type = op.into();
        n.name = name.into();
        n.input = inputs.iter().map(|s| s.to_string()).collect();
        n.output = vec![output.into()];
        if let Some(classes) = classes {
            let mut p = StringStringEntryProto::new();
            p.key = CLASS_HIERARCHY.into();
            p.value = classes.into();
            n.metadata_props.push(p);
        }
        n
    }

    fn graph(nodes: Vec<NodeProto>) -> (OnnxGraph, Shapes) {
        let mut shapes = Shapes::new();
        for n in &nodes {
            shapes.insert(n.output[0].clone(), TensorInfo { dtype: 1, shape: vec![2, 8, 4, 4] });
        }
        let mut model = ModelProto::new();
        model.graph.mut_or_insert_default().node = nodes;
        (OnnxGraph::from_model(model), shapes)
    }

    fn names(layers: &[BiasLayer]) -> Vec<(&str, &Bias)> {
        layers.iter().map(|l| (l.tensor.as_str(), &l.bias)).collect()
    }

    /// Dynamo files: the exact-type rule by the recorded classes (a fused BatchNorm2d counts, with
    /// zeros when the exporter dropped its zero bias; timm's subclasses and bias-free
    /// convolutions do not).
    #[test]
    fn dynamo_classes_decide() {
        let bn = "['m.Net', 'torch.nn.modules.batchnorm.BatchNorm2d', 'aten.bn']";
        let conv = "['m.Net', 'torch.nn.modules.conv.Conv2d', 'aten.conv2d']";
        let bn_act = "['m.Net', 'timm.layers.norm_act.BatchNormAct2d', 'aten.bn']";
        let (g, shapes) = graph(vec![
            node("Conv", "a", &["x", "w"], "fused_zero", Some(bn)),
            node("Conv", "b", &["x", "w", "bias"], "fused", Some(bn)),
            node("Conv", "c", &["x", "w"], "no_bias", Some(conv)),
            node("Conv", "d", &["x", "w", "cb"], "conv", Some(conv)),
            node("Conv", "e", &["x", "w", "ab"], "bn_act", Some(bn_act)),
            node("BatchNormalization", "f", &["x", "s", "b", "m", "v"], "bn_node", Some(bn)),
            node("Relu", "g", &["x"], "relu", Some(conv)),
        ]);
        let layers = g.bias_layers(&shapes);
        let bn_node = Bias::BatchNorm {
            scale: "s".into(),
            b: "b".into(),
            mean: "m".into(),
            var: "v".into(),
            epsilon: 1e-5,
        };
        assert_eq!(
            names(&layers),
            [
                ("fused_zero", &Bias::Zeros),
                ("fused", &Bias::Tensor("bias".into())),
                ("conv", &Bias::Tensor("cb".into())),
                ("bn_node", &bn_node),
            ]
        );
        assert!(layers.iter().all(|l| l.channels == 8));
    }

    /// Legacy files keep no classes: every convolution with a bias and every BatchNorm counts;
    /// a 1-D BatchNorm's 3-D output does not.
    #[test]
    fn legacy_counts_every_bias() {
        let (g, mut shapes) = graph(vec![
            node("Conv", "/conv1/Conv", &["x", "onnx::Conv_1", "onnx::Conv_2"], "folded", None),
            node("Conv", "/conv2/Conv", &["x", "w"], "plain", None),
            node("BatchNormalization", "/bn/BatchNormalization", &["x", "s", "b", "m", "v"], "bn", None),
            node("BatchNormalization", "/bn1d/BatchNormalization", &["x", "s", "b", "m", "v"], "bn1d", None),
        ]);
        shapes.insert("bn1d".into(), TensorInfo { dtype: 1, shape: vec![2, 8, 4] });
        let layers = g.bias_layers(&shapes);
        let got: Vec<(&str, &str)> = layers.iter().map(|l| (l.name.as_str(), l.tensor.as_str())).collect();
        assert_eq!(got, [("conv1", "folded"), ("bn", "bn")]);
        let (with, outputs) = g.with_bias_outputs(&layers);
        assert_eq!(outputs, [Some("gradcam_bias_0".to_string()), Some("gradcam_bias_1".to_string())]);
        assert_eq!(with.output_names(), ["gradcam_bias_0", "gradcam_bias_1"]);
    }
}
