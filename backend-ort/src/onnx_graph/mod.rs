//! ONNX graph surgery: the one place gradcam-rs reads, edits and writes `ModelProto`s.
//!
//! Pure protobuf editing, no ONNX Runtime needed: finding PyTorch module paths in graphs from
//! both torch exporters ([`OnnxGraph::layers`]), cutting a graph at a layer
//! ([`OnnxGraph::with_activation_input`]), adding outputs ([`OnnxGraph::with_outputs`]) and
//! generating the backward graph from the logits to a layer ([`OnnxGraph::backward_model`],
//! rules in [`rules`]) and running a ViT's last layers on the class token only
//! ([`OnnxGraph::prune_tokens`]).

mod backward;
mod biases;
pub(crate) mod builder;
mod fold;
mod layers;
pub mod rules;
mod split;
mod tokens;

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};

use onnx_protobuf::{
    tensor_proto::DataLocation, tensor_shape_proto, type_proto, Message, ModelProto, NodeProto, TensorProto,
    TensorShapeProto, TypeProto, ValueInfoProto,
};

pub use backward::{Seed, ACTIVATION, CLASS, CLASSES, GRADIENT, LOGITS, SEED, SOFTMAX};
pub use biases::BiasLayer;
pub use fold::Dims;
pub use layers::Layer;
pub use split::SplitModel;

/// Errors of graph surgery and backward-graph generation.
#[derive(Debug, thiserror::Error)]
pub enum GraphError {
    /// The model file could not be read.
    #[error("cannot read ONNX model {path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
    /// The bytes are not an ONNX `ModelProto` (truncated or another format).
    #[error("{what} is not a valid ONNX model: {reason}")]
    NotOnnx {
        /// The file (or "bytes").
        what: String,
        /// The parser's complaint.
        reason: String,
    },
    /// No module path or tensor of that name.
    #[error("unknown layer `{name}`")]
    UnknownLayer {
        /// The requested layer.
        name: String,
        /// Similar layer names.
        near: Vec<String>,
    },
    /// A module whose output the exporter folded away (a convolution with the BatchNorm after it
    /// folded in: the legacy exporter's constant folding, the dynamo exporter's optimizer).
    #[error(
        "layer `{name}` has no output of its own in this file: the exporter folded the BatchNorm after it \
         into it{}; export with `torch.onnx.export(..., dynamo=True, optimize=False)` to keep it",
        match next { Some(n) => format!(" (explain `{n}`, the first layer at or after it, instead)"), None => String::new() }
    )]
    FoldedLayer {
        /// The requested layer.
        name: String,
        /// The first listed layer after it.
        next: Option<String>,
    },
    /// An op on the path from the layer to the logits with no gradient rule.
    #[error("no gradient rule for op `{op}` (node `{node}`) on the path from the layer to the logits")]
    UnsupportedOp {
        /// The op type (with its domain when not the default one).
        op: String,
        /// The node name.
        node: String,
    },
    /// A rule that exists but cannot handle this use of the op.
    #[error("cannot differentiate `{op}` node `{node}`: {reason}")]
    Unsupported {
        /// The op type.
        op: String,
        /// The node name.
        node: String,
        /// What is missing.
        reason: String,
    },
    /// The logits do not depend on the layer.
    #[error("the model output does not depend on tensor `{0}`")]
    NoPath(String),
    /// A shape the backward rules need was not supplied.
    #[error("no static shape known for tensor `{0}`")]
    MissingShape(String),
    /// The default ONNX domain's opset is older than the rules support.
    #[error("opset {0} is not supported (need 13 or newer)")]
    Opset(i64),
}

/// Element type and shape of a tensor, as seen in one run (or from shape inference).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TensorInfo {
    /// ONNX `TensorProto.DataType` code (1 = float, 11 = double, 7 = int64, ...).
    pub dtype: i32,
    /// Dimensions.
    pub shape: Vec<i64>,
}

/// Static tensor information by tensor name.
pub type Shapes = HashMap<String, TensorInfo>;

/// An ONNX model with the directory its external data lives in.
#[derive(Clone, Debug)]
pub struct OnnxGraph {
    model: ModelProto,
    dir: Option<PathBuf>,
}

impl OnnxGraph {
    /// Reads a model file. Weights in external data files stay where they are (only their
    /// locations are read); [`OnnxGraph::external_data_dir`] says where to find them.
    pub fn load(path: &Path) -> Result<Self, GraphError> {
        let bytes = std::fs::read(path).map_err(|source| GraphError::Io { path: path.into(), source })?;
        let mut graph = Self::from_bytes(&bytes, &path.display().to_string())?;
        graph.dir = path.parent().map(Path::to_path_buf);
        Ok(graph)
    }

    /// Parses model bytes; `what` names them in errors.
    pub fn from_bytes(bytes: &[u8], what: &str) -> Result<Self, GraphError> {
        let not_onnx = |reason: String| GraphError::NotOnnx { what: what.into(), reason };
        let model = ModelProto::parse_from_bytes(bytes).map_err(|e| not_onnx(e.to_string()))?;
        // Protobuf accepts many byte strings (an empty file is a valid empty message), so also
        // check that this looks like a model.
        if model.graph.is_none() || model.graph.node.is_empty() || model.graph.output.is_empty() {
            return Err(not_onnx("no graph with nodes and outputs".into()));
        }
        let graph = OnnxGraph { model, dir: None };
        let opset = graph.opset();
        if opset < 13 {
            return Err(GraphError::Opset(opset));
        }
        Ok(graph)
    }

    /// Wraps a `ModelProto`.
    pub fn from_model(model: ModelProto) -> Self {
        OnnxGraph { model, dir: None }
    }

    /// A model with this one's header (IR version, opsets, external-data directory) around
    /// `graph`, without copying this model's graph.
    pub(crate) fn with_graph(&self, graph: onnx_protobuf::GraphProto) -> OnnxGraph {
        let mut model = ModelProto::new();
        model.ir_version = self.model.ir_version;
        model.opset_import = self.model.opset_import.clone();
        model.producer_name = self.model.producer_name.clone();
        model.functions = self.model.functions.clone();
        model.graph = Some(graph).into();
        OnnxGraph { model, dir: self.dir.clone() }
    }

    /// The model.
    pub fn model(&self) -> &ModelProto {
        &self.model
    }

    /// The model, to edit in place (keeps the external-data directory).
    pub(crate) fn model_mut(&mut self) -> &mut ModelProto {
        &mut self.model
    }

    /// The directory external data locations are relative to (the model file's directory).
    pub fn external_data_dir(&self) -> Option<&Path> {
        self.dir.as_deref()
    }

    /// Whether any initializer keeps its data in an external file.
    pub fn has_external_data(&self) -> bool {
        self.model.graph.initializer.iter().any(|t| t.data_location.value() == DataLocation::EXTERNAL as i32)
    }

    /// The default-domain opset version.
    pub fn opset(&self) -> i64 {
        self.model
            .opset_import
            .iter()
            .find(|o| o.domain.is_empty() || o.domain == "ai.onnx")
            .map_or(1, |o| o.version)
    }

    /// Names of the graph inputs that are not initializers (what a caller must feed).
    pub fn input_names(&self) -> Vec<String> {
        let inits: HashSet<&str> = self.model.graph.initializer.iter().map(|t| t.name.as_str()).collect();
        self.model
            .graph
            .input
            .iter()
            .filter(|i| !inits.contains(i.name.as_str()))
            .map(|i| i.name.clone())
            .collect()
    }

    /// Dimensions of graph input `name` (`None` for symbolic ones).
    pub fn input_dims(&self, name: &str) -> Option<Vec<Option<i64>>> {
        let input = self.model.graph.input.iter().find(|i| i.name == name)?;
        Some(value_info_dims(input))
    }

    /// Names of the graph outputs; the first is taken as the logits.
    pub fn output_names(&self) -> Vec<String> {
        self.model.graph.output.iter().map(|o| o.name.clone()).collect()
    }

    /// The nodes in graph order.
    pub fn nodes(&self) -> &[NodeProto] {
        &self.model.graph.node
    }

    /// Serialises the model.
    pub fn to_bytes(&self) -> Vec<u8> {
        self.model.write_to_bytes().expect("a parsed ModelProto serialises")
    }

    /// The same graph with `names` added as outputs (of unknown shape), e.g. to read
    /// intermediate shapes from one run.
    pub fn with_outputs(&self, names: &[String]) -> OnnxGraph {
        let mut out = self.clone();
        let existing: HashSet<String> = out.output_names().into_iter().collect();
        for name in names.iter().filter(|n| !existing.contains(*n)) {
            out.model.graph.mut_or_insert_default().output.push(value_info(name, 0, None));
        }
        out
    }

    /// Every tensor produced by a node, in graph order.
    pub fn node_outputs(&self) -> Vec<String> {
        self.nodes().iter().flat_map(|n| n.output.iter()).filter(|o| !o.is_empty()).cloned().collect()
    }

    /// The value of a constant int64 tensor (an initializer or a `Constant` node's output).
    pub fn const_ints(&self, name: &str) -> Option<Vec<i64>> {
        self.constants().get(name).and_then(|t| tensor_ints(t))
    }

    /// Every constant tensor by name: initializers and `Constant` nodes' values, in one pass (a
    /// lookup per node would make differentiating a deep graph quadratic).
    pub(crate) fn constants(&self) -> HashMap<&str, &TensorProto> {
        let graph = &self.model.graph;
        let mut out: HashMap<&str, &TensorProto> =
            graph.initializer.iter().map(|t| (t.name.as_str(), t)).collect();
        for node in graph.node.iter().filter(|n| n.op_type == "Constant") {
            if let (Some(o), Some(t)) =
                (node.output.first(), builder::attr(node, "value").and_then(|a| a.t.as_ref()))
            {
                out.insert(o.as_str(), t);
            }
        }
        out
    }

    /// The model with tensor `activation` turned into a graph input named [`ACTIVATION`]
    /// (float, given rank): every consumer reads the input instead, and nodes no longer needed
    /// for the outputs are dropped. The original inputs stay (the part after a nested layer can
    /// still read tensors from before it).
    pub fn with_activation_input(&self, activation: &str, rank: usize) -> OnnxGraph {
        let mut out = self.clone();
        let graph = out.model.graph.mut_or_insert_default();
        for node in graph.node.iter_mut() {
            for input in node.input.iter_mut().filter(|i| *i == activation) {
                *input = ACTIVATION.into();
            }
        }
        if graph.output.iter().any(|o| o.name == activation) {
            graph.node.push(identity(ACTIVATION, activation));
        }
        graph.input.push(value_info(ACTIVATION, builder::FLOAT, Some(rank)));
        prune(graph);
        out
    }
}

/// An `Identity` node `from -> to`.
pub(crate) fn identity(from: &str, to: &str) -> NodeProto {
    let mut node = NodeProto::new();
    node.op_type = "Identity".into();
    node.name = format!("gradcam/identity/{to}");
    node.input = vec![from.into()];
    node.output = vec![to.into()];
    node
}

/// Drops the nodes that no graph output depends on.
pub(crate) fn prune(graph: &mut onnx_protobuf::GraphProto) {
    let mut needed: HashSet<String> = graph.output.iter().map(|o| o.name.clone()).collect();
    let mut keep = vec![false; graph.node.len()];
    for (i, node) in graph.node.iter().enumerate().rev() {
        if node.output.iter().any(|o| needed.contains(o)) {
            keep[i] = true;
            needed.extend(node.input.iter().filter(|s| !s.is_empty()).cloned());
        }
    }
    let mut k = keep.into_iter();
    graph.node.retain(|_| k.next().unwrap_or(true));
}

/// A graph input/output declaration: element type (0 = unknown) and rank (symbolic dims).
pub(crate) fn value_info(name: &str, elem_type: i32, rank: Option<usize>) -> ValueInfoProto {
    let mut vi = ValueInfoProto::new();
    vi.name = name.into();
    if elem_type != 0 {
        let mut tensor = type_proto::Tensor::new();
        tensor.elem_type = elem_type;
        if let Some(rank) = rank {
            let mut shape = TensorShapeProto::new();
            for d in 0..rank {
                let mut dim = tensor_shape_proto::Dimension::new();
                dim.value = Some(tensor_shape_proto::dimension::Value::DimParam(format!("{name}_d{d}")));
                shape.dim.push(dim);
            }
            tensor.shape = Some(shape).into();
        }
        let mut tp = TypeProto::new();
        tp.value = Some(type_proto::Value::TensorType(tensor));
        vi.type_ = Some(tp).into();
    }
    vi
}

fn value_info_dims(vi: &ValueInfoProto) -> Vec<Option<i64>> {
    match vi.type_.as_ref().and_then(|t| t.value.as_ref()) {
        Some(type_proto::Value::TensorType(t)) => t
            .shape
            .as_ref()
            .map(|s| {
                s.dim
                    .iter()
                    .map(|d| match d.value {
                        Some(tensor_shape_proto::dimension::Value::DimValue(v)) if v > 0 => Some(v),
                        _ => None,
                    })
                    .collect()
            })
            .unwrap_or_default(),
        _ => Vec::new(),
    }
}

/// The values of an int64/int32 tensor stored inline.
pub(crate) fn tensor_ints(t: &TensorProto) -> Option<Vec<i64>> {
    use onnx_protobuf::tensor_proto::DataType;
    if t.data_location.value() == DataLocation::EXTERNAL as i32 {
        return None;
    }
    if t.data_type == DataType::INT64 as i32 {
        if !t.int64_data.is_empty() || t.raw_data.is_empty() {
            return Some(t.int64_data.clone());
        }
        return Some(
            t.raw_data.chunks_exact(8).map(|c| i64::from_le_bytes(c.try_into().expect("8 bytes"))).collect(),
        );
    }
    if t.data_type == DataType::INT32 as i32 {
        if !t.int32_data.is_empty() || t.raw_data.is_empty() {
            return Some(t.int32_data.iter().map(|&v| v as i64).collect());
        }
        return Some(
            t.raw_data
                .chunks_exact(4)
                .map(|c| i32::from_le_bytes(c.try_into().expect("4 bytes")) as i64)
                .collect(),
        );
    }
    None
}
