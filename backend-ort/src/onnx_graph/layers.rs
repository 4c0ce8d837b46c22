//! PyTorch module paths in ONNX graphs from both torch exporters, and each module's output.

use std::collections::{HashMap, HashSet};

use onnx_protobuf::NodeProto;

use super::{GraphError, OnnxGraph};

/// Node metadata key where the dynamo exporter records the module stack.
const NAME_SCOPES: &str = "pkg.torch.onnx.name_scopes";
/// The dynamo exporter's record of the rewrites that made a node.
const REWRITES: &str = "pkg.onnxscript.rewriter.rule_name";
/// The scope torch.export records for nodes outside any module.
const NO_MODULE: &str = "_empty_nn_module_stack_from_metadata_hook";

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
/// one segment per module scope and the op last. Each segment is the module's full path from
/// its last non-numeric atom on (torch's `_unqualified_variable_name`: `layer4.1`, `act2`,
/// `downsample.0` for `layer2.0.downsample.0`), so the full path is rebuilt from the parent's
/// ([`child_path`]). A module called more than once gets `_1`, `_2`, … on its scope's last
/// segment; `repeated` (see [`OnnxGraph::layers`]) says which scopes those are and where their
/// base name ends.
fn module_paths_in(node: &NodeProto, repeated: &dyn Fn(&str) -> Option<usize>) -> Vec<String> {
    if let Some(items) = metadata_list(node, NAME_SCOPES) {
        let n = items.len().saturating_sub(1);
        // torch.export's stand-in for nodes outside any module is no module.
        let module = |s: &&&str| !s.is_empty() && !s.starts_with(NO_MODULE);
        return items[..n].iter().filter(module).map(|s| s.to_string()).collect();
    }
    let Some(scope) = legacy_scope(node) else { return Vec::new() };
    // A repeated call's scope: the same module as the first call's.
    let scope = repeated(scope).map_or(scope, |base| &scope[..base]);
    let mut paths: Vec<String> = Vec::new();
    for seg in scope.split('/').filter(|s| !s.is_empty()) {
        let path = match paths.last() {
            Some(parent) => child_path(parent, seg),
            None => seg.to_string(),
        };
        paths.push(path);
    }
    paths
}

/// A node's metadata entry `key` that holds a Python list of strings (the dynamo exporter's
/// `['', 'layer4', 'relu_16']`), as its items.
pub(crate) fn metadata_list<'n>(node: &'n NodeProto, key: &str) -> Option<Vec<&'n str>> {
    let entry = node.metadata_props.iter().find(|p| p.key == key)?;
    let list = entry.value.trim().trim_start_matches('[').trim_end_matches(']');
    Some(list.split(',').map(|s| s.trim().trim_matches(|c| c == '\'' || c == '"')).collect())
}

/// The scope part of a legacy node name (`/layer4/layer4.1/act2` of `/layer4/layer4.1/act2/Relu`).
fn legacy_scope(node: &NodeProto) -> Option<&str> {
    let rest = node.name.strip_prefix('/')?;
    Some(rest.rsplit_once('/').map_or("", |(scope, _)| scope))
}

/// The full path of the module whose legacy scope segment is `seg`, under module `parent`.
///
/// A child reached by index repeats the parent's tail from its last non-numeric atom
/// (`layer4.1` under `layer4`, `downsample.0` under `layer2.0.downsample`, `features.0.0` under
/// `features.0`); any other segment is the child's attribute name (`act2` under `layer4.1`).
fn child_path(parent: &str, seg: &str) -> String {
    if let Some((head, last)) = seg.rsplit_once('.') {
        if is_index(last) && unqualified(parent) == head {
            return format!("{parent}.{last}");
        }
    }
    format!("{parent}.{seg}")
}

fn is_index(atom: &str) -> bool {
    !atom.is_empty() && atom.bytes().all(|b| b.is_ascii_digit())
}

/// A module path from its last non-numeric atom on (`layer2.0.downsample` → `downsample`,
/// `features.0` → `features.0`).
fn unqualified(path: &str) -> &str {
    let mut start = 0;
    let mut offset = 0;
    let mut found = false;
    for atom in path.split('.') {
        if !is_index(atom) {
            start = offset;
            found = true;
        }
        offset += atom.len() + 1;
    }
    if found {
        &path[start..]
    } else {
        path
    }
}

/// Where a repeated call's scope (`…/relu_1`, when `…/relu` is a scope too) ends its base name.
fn repeated_call(scope: &str, scopes: &HashSet<&str>) -> Option<usize> {
    let (base, n) = scope.rsplit_once('_')?;
    (is_index(n) && scopes.contains(base)).then_some(base.len())
}

impl OnnxGraph {
    /// Every module with an output tensor, in forward order (nested modules that end on the
    /// same tensor are listed innermost first).
    pub fn layers(&self) -> Vec<Layer> {
        let nodes = self.nodes();
        let scopes: HashSet<&str> = nodes.iter().filter_map(legacy_scope).collect();
        let repeated = |scope: &str| repeated_call(scope, &scopes);
        let folded = self.folded_convolutions();
        let paths: Vec<Vec<String>> = nodes.iter().map(|node| module_paths_in(node, &repeated)).collect();
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
        // A convolution with a BatchNorm folded in outputs the BatchNorm's result, not its own:
        // the convolution's module has no output in this file.
        out.retain(|m, (i, _)| !(folded.contains(i) && paths[*i].last().is_some_and(|p| p == m)));
        let mut layers: Vec<Layer> = out
            .into_iter()
            .map(|(name, (node, tensor))| Layer { name: name.into(), tensor: tensor.into(), node })
            .collect();
        layers.sort_by(|a, b| {
            (a.node, std::cmp::Reverse(a.name.len())).cmp(&(b.node, std::cmp::Reverse(b.name.len())))
        });
        layers
    }

    /// The innermost module of each node, in graph order (`None` outside any module).
    pub(crate) fn node_modules(&self) -> Vec<Option<String>> {
        let scopes: HashSet<&str> = self.nodes().iter().filter_map(legacy_scope).collect();
        let repeated = |scope: &str| repeated_call(scope, &scopes);
        self.nodes().iter().map(|node| module_paths_in(node, &repeated).pop()).collect()
    }

    /// Legacy-exported convolutions whose weight and bias the exporter made up (`onnx::Conv_193`,
    /// instead of `conv1.weight`) because it folded the BatchNorm after them in
    /// (`do_constant_folding`, the default): their output is the BatchNorm's, whose name the file
    /// no longer holds. Node indices.
    fn folded_convolutions(&self) -> HashSet<usize> {
        let made_up = |n: &NodeProto, i: usize| n.input.get(i).is_some_and(|w| w.starts_with("onnx::"));
        self.nodes()
            .iter()
            .enumerate()
            .filter(|(_, n)| {
                n.op_type == "Conv"
                    && legacy_scope(n).is_some_and(|s| !s.is_empty())
                    && !n.metadata_props.iter().any(|p| p.key == NAME_SCOPES)
                    && made_up(n, 1)
                    && made_up(n, 2)
            })
            .map(|(i, _)| i)
            .collect()
    }

    /// Dynamo-exported convolutions with the BatchNorm after them fused in (the exporter's
    /// default `optimize=True`): the node carries the BatchNorm's module, and only its weight's
    /// name (`conv_head.weight`) still names the convolution. Node index and that module path.
    fn fused_convolutions(&self) -> Vec<(usize, String)> {
        self.nodes()
            .iter()
            .enumerate()
            .filter(|(_, n)| {
                n.op_type == "Conv"
                    && n.metadata_props
                        .iter()
                        .any(|p| p.key == REWRITES && p.value.contains("FuseBatchNormIntoConv"))
            })
            .filter_map(|(i, n)| Some((i, n.input.get(1)?.strip_suffix(".weight")?.to_string())))
            .collect()
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
        let scopes: HashSet<&str> = self.nodes().iter().filter_map(legacy_scope).collect();
        let repeated = |scope: &str| repeated_call(scope, &scopes);
        let legacy = self
            .folded_convolutions()
            .into_iter()
            .filter_map(|i| Some((i, module_paths_in(&self.nodes()[i], &repeated).pop()?)));
        for (i, module) in legacy.chain(self.fused_convolutions()) {
            if module == name {
                // The first layer whose output is the BatchNorm's or comes after it.
                let next = layers.iter().find(|l| l.node >= i).map(|l| l.name.clone());
                return Err(GraphError::FoldedLayer { name: name.into(), next });
            }
        }
        let near = gradcam_core::near_matches(name, layers.iter().map(|l| l.name.as_str()));
        Err(GraphError::UnknownLayer { name: name.into(), near })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use onnx_protobuf::StringStringEntryProto;

    fn module_paths(node: &NodeProto) -> Vec<String> {
        module_paths_in(node, &|_| None)
    }

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
    fn legacy_indexed_children_keep_one_name() {
        let mut node = NodeProto::new();
        node.name = "/layer2/layer2.0/downsample/downsample.0/Conv".into();
        assert_eq!(
            module_paths(&node),
            ["layer2", "layer2.0", "layer2.0.downsample", "layer2.0.downsample.0"]
        );
        node.name = "/features/features.0/features.0.0/Conv".into();
        assert_eq!(module_paths(&node), ["features", "features.0", "features.0.0"]);
        node.name = "/stages/stages.0/blocks/blocks.1/conv_dw/Conv".into();
        assert_eq!(
            module_paths(&node),
            ["stages", "stages.0", "stages.0.blocks", "stages.0.blocks.1", "stages.0.blocks.1.conv_dw"]
        );
        node.name = "/trunk_output/block1/block1-0/f/a/Conv".into();
        assert_eq!(module_paths(&node).last().unwrap(), "trunk_output.block1.block1-0.f.a");
    }

    #[test]
    fn a_repeated_call_is_the_same_module() {
        let mut first = NodeProto::new();
        first.name = "/layer1/layer1.0/relu/Relu".into();
        let mut second = NodeProto::new();
        second.name = "/layer1/layer1.0/relu_1/Relu".into();
        let scopes: HashSet<&str> = [&first, &second].into_iter().filter_map(legacy_scope).collect();
        let repeated = |scope: &str| repeated_call(scope, &scopes);
        assert_eq!(module_paths_in(&second, &repeated), module_paths_in(&first, &repeated));
        // Without a first call of that name, `_1` is part of the module's name.
        let only: HashSet<&str> = [&second].into_iter().filter_map(legacy_scope).collect();
        let repeated = |scope: &str| repeated_call(scope, &only);
        assert_eq!(module_paths_in(&second, &repeated).last().unwrap(), "layer1.0.relu_1");
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
