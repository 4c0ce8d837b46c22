//! PyTorch module paths in ONNX graphs from both torch exporters, and each module's output.

use std::collections::{HashMap, HashSet};

use onnx_protobuf::NodeProto;

use super::{GraphError, OnnxGraph};

/// Node metadata key where the dynamo exporter records the module stack.
const NAME_SCOPES: &str = "pkg.torch.onnx.name_scopes";

/// A module of the original PyTorch model and the tensor it outputs.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Layer {
    /// PyTorch module path, e.g. `layer4.1` or `blocks.11.norm1`.
    pub name: String,
    /// The ONNX tensor the module outputs: what its last node produces and the rest of the
    /// graph consumes.
    pub tensor: String,
    /// Index of the node producing `tensor`.
    pub node: usize,
}

/// The module stack of a node, outermost first (`["layer4", "layer4.1", "layer4.1.act2"]`).
///
/// Dynamo exporter: the `pkg.torch.onnx.name_scopes` metadata, a Python list of full paths
/// ending with the op's own name. Legacy exporter: the node name `/layer4/layer4.1/act2/Relu`,
/// whose segments are either full paths (`layer4.1`) or attribute names relative to the parent
/// (`act2`), the last one being the op.
pub fn module_paths(node: &NodeProto) -> Vec<String> {
    if let Some(scopes) = node.metadata_props.iter().find(|p| p.key == NAME_SCOPES) {
        let items: Vec<&str> = scopes
            .value
            .trim()
            .trim_start_matches('[')
            .trim_end_matches(']')
            .split(',')
            .map(|s| s.trim().trim_matches(|c| c == '\'' || c == '"'))
            .collect();
        let n = items.len().saturating_sub(1);
        return items[..n].iter().filter(|s| !s.is_empty()).map(|s| s.to_string()).collect();
    }
    let Some(rest) = node.name.strip_prefix('/') else { return Vec::new() };
    let segments: Vec<&str> = rest.split('/').collect();
    let mut paths: Vec<String> = Vec::new();
    for seg in &segments[..segments.len().saturating_sub(1)] {
        if seg.is_empty() {
            continue;
        }
        let path = match paths.last() {
            Some(parent) if !seg.starts_with(&format!("{parent}.")) => format!("{parent}.{seg}"),
            _ => seg.to_string(),
        };
        paths.push(path);
    }
    paths
}

impl OnnxGraph {
    /// Every module with an output tensor, in forward order (nested modules that end on the
    /// same tensor are listed innermost first).
    pub fn layers(&self) -> Vec<Layer> {
        let nodes = self.nodes();
        let paths: Vec<Vec<String>> = nodes.iter().map(module_paths).collect();
        let mut consumers: HashMap<&str, Vec<usize>> = HashMap::new();
        for (j, node) in nodes.iter().enumerate() {
            for input in &node.input {
                consumers.entry(input.as_str()).or_default().push(j);
            }
        }
        let graph_outputs: HashSet<String> = self.output_names().into_iter().collect();
        // For each module, the latest tensor that leaves it.
        let mut out: HashMap<&str, (usize, &str)> = HashMap::new();
        for (i, node) in nodes.iter().enumerate() {
            for o in node.output.iter().filter(|o| !o.is_empty()) {
                let users = consumers.get(o.as_str()).map(Vec::as_slice).unwrap_or(&[]);
                for m in &paths[i] {
                    let leaves = graph_outputs.contains(o) || users.iter().any(|&j| !paths[j].contains(m));
                    if leaves {
                        out.insert(m.as_str(), (i, o.as_str()));
                    }
                }
            }
        }
        let mut layers: Vec<Layer> = out
            .into_iter()
            .map(|(name, (node, tensor))| Layer { name: name.into(), tensor: tensor.into(), node })
            .collect();
        layers.sort_by(|a, b| {
            (a.node, std::cmp::Reverse(a.name.len())).cmp(&(b.node, std::cmp::Reverse(b.name.len())))
        });
        layers
    }

    /// The layer named `name`: a module path, or else the name of any tensor a node produces.
    pub fn find_layer(&self, name: &str) -> Result<Layer, GraphError> {
        let layers = self.layers();
        if let Some(layer) = layers.iter().find(|l| l.name == name) {
            return Ok(layer.clone());
        }
        if let Some(node) = self.nodes().iter().position(|n| n.output.iter().any(|o| o == name)) {
            return Ok(Layer { name: name.into(), tensor: name.into(), node });
        }
        let near = gradcam_core::near_matches(name, layers.iter().map(|l| l.name.as_str()));
        Err(GraphError::UnknownLayer { name: name.into(), near })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use onnx_protobuf::StringStringEntryProto;

    #[test]
    fn legacy_names_give_full_module_paths() {
        let mut node = NodeProto::new();
        node.name = "/layer4/layer4.1/act2/Relu".into();
        assert_eq!(module_paths(&node), ["layer4", "layer4.1", "layer4.1.act2"]);
        node.name = "/blocks/blocks.11/norm1/LayerNormalization".into();
        assert_eq!(module_paths(&node), ["blocks", "blocks.11", "blocks.11.norm1"]);
        node.name = "Identity_12".into();
        assert!(module_paths(&node).is_empty());
    }

    #[test]
    fn dynamo_metadata_wins_and_drops_the_op_name() {
        let mut node = NodeProto::new();
        node.name = "node_relu_16".into();
        let mut p = StringStringEntryProto::new();
        p.key = NAME_SCOPES.into();
        p.value = "['', 'layer4', 'layer4.1', 'layer4.1.act2', 'relu_16']".into();
        node.metadata_props.push(p);
        assert_eq!(module_paths(&node), ["layer4", "layer4.1", "layer4.1.act2"]);
    }
}
