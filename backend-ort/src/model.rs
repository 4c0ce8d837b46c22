//! [`OnnxModel`]: an ONNX model on ONNX Runtime, cut at any layer, with generated gradients.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use gradcam_core::{CamError, CamModel, Capture, LayerInfo, LayerTensor, LayerView};
use ndarray::{Array2, ArrayView4};
use ort::environment::Environment;
use ort::session::{Session, SessionOutputs};
use ort::value::{DynValue, Tensor, TensorElementType};

use crate::onnx_graph::{self, Layer, OnnxGraph, Seed, Shapes, TensorInfo};
use crate::OrtBackendError;

/// Batch size of the runs that read intermediate shapes: not 1, so that broadcasting over the
/// batch axis shows up in the shapes.
const PROBE_BATCH: i64 = 2;
/// Spatial size assumed when the model's input has symbolic height or width.
const DEFAULT_SIDE: i64 = 224;
/// ONNX Runtime's session option for external data of a model loaded from memory.
const EXTERNAL_DATA_DIR: &str = "session.model_external_initializers_file_folder_path";

/// The process's one ONNX Runtime environment (ort allows one per process; the export shares it).
pub(crate) fn environment() -> Result<&'static Environment, OrtBackendError> {
    static ENV: OnceLock<Environment> = OnceLock::new();
    if let Some(env) = ENV.get() {
        return Ok(env);
    }
    let env =
        ort::init().with_name("gradcam-rs").build().map_err(OrtBackendError::ort("start ONNX Runtime"))?;
    Ok(ENV.get_or_init(|| env))
}

/// An ONNX image classifier (input `(B, 3, H, W)`, first output the logits `(B, K)`) that can
/// be explained at any layer.
///
/// Each layer gets, on first use, a generated model computing the logits, the layer's output
/// and the gradient of the target score with respect to it in one ONNX Runtime run; the class
/// is an input of that model, so one session serves every class and batch size.
///
/// ```no_run
/// use backend_ort::OnnxModel;
/// use gradcam_core::{CamModel, Target};
/// # fn main() -> Result<(), Box<dyn std::error::Error>> {
/// let mut model = OnnxModel::load("resnet18.onnx".as_ref())?;
/// let layer = model.default_layer()?;
/// let input = ndarray::Array4::<f32>::zeros((1, 3, 224, 224));
/// let capture = model.capture(input.view(), &layer, Some(&Target::top_one()))?;
/// assert_eq!(capture.gradient.unwrap().shape(), capture.activation.shape());
/// # Ok(())
/// # }
/// ```
pub struct OnnxModel {
    graph: OnnxGraph,
    path: PathBuf,
    input: String,
    forward: Session,
    /// `(dtype, shape)` of layer outputs and the logits at batch [`PROBE_BATCH`].
    shapes: Option<Shapes>,
    /// Generated forward + backward sessions by `layer@HxW`.
    captures: HashMap<String, Session>,
    /// The original model with a layer's output as an extra output (its tensor name), by layer.
    activations: HashMap<String, (Session, String)>,
    /// Models cut at a layer (activation as input), by layer.
    cuts: HashMap<String, Session>,
    /// Whether generated models run a ViT's last layers on the class token only.
    token_pruning: bool,
    /// Intra-op threads of every session (0: ONNX Runtime's default).
    threads: usize,
}

impl std::fmt::Debug for OnnxModel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OnnxModel")
            .field("path", &self.path)
            .field("input", &self.input)
            .finish_non_exhaustive()
    }
}

impl OnnxModel {
    /// Loads an ONNX model exported by either torch exporter (or any ONNX image classifier).
    /// External weights (`<file>.onnx.data`) stay on disk, read by ONNX Runtime from the
    /// model's directory.
    pub fn load(path: &Path) -> Result<OnnxModel, OrtBackendError> {
        Self::load_with_threads(path, 0)
    }

    /// [`OnnxModel::load`] with the number of threads each ONNX Runtime session uses within an
    /// operator (0: ONNX Runtime's default, one per physical core).
    pub fn load_with_threads(path: &Path, intra_op_threads: usize) -> Result<OnnxModel, OrtBackendError> {
        let graph = OnnxGraph::load(path)?;
        let inputs = graph.input_names();
        let [input] = inputs.as_slice() else {
            return Err(OrtBackendError::Signature(format!("expected one image input, found {inputs:?}")));
        };
        let input = input.clone();
        let forward = builder(&graph, intra_op_threads)?
            .commit_from_file(path)
            .map_err(OrtBackendError::ort(format!("load {}", path.display())))?;
        Ok(OnnxModel {
            graph,
            path: path.into(),
            input,
            forward,
            shapes: None,
            captures: HashMap::new(),
            activations: HashMap::new(),
            cuts: HashMap::new(),
            token_pruning: true,
            threads: intra_op_threads,
        })
    }

    /// The input height and width the model fixes, if it does (`None` for symbolic sizes).
    pub fn input_hw(&self) -> Option<(usize, usize)> {
        let dims = self.graph.input_dims(&self.input)?;
        match dims.as_slice() {
            [_, _, Some(h), Some(w)] => Some((*h as usize, *w as usize)),
            _ => None,
        }
    }

    /// Whether the generated models run the layers after the cut that feed only the head's
    /// class token on that token alone ([`OnnxGraph::prune_tokens`]; on by default). Logits,
    /// activations and gradients are the same either way; off, a ViT's capture costs about
    /// 10% more.
    pub fn set_token_pruning(&mut self, on: bool) {
        if self.token_pruning != on {
            self.token_pruning = on;
            self.captures.clear();
        }
    }

    /// The parsed model.
    pub fn graph(&self) -> &OnnxGraph {
        &self.graph
    }

    /// The generated model (forward + backward) used for `layer`, e.g. to save and inspect.
    /// The rules bake in static shapes (pooling sizes, padding, broadcast axes), so the model
    /// is generated for one input height and width.
    pub fn backward_graph(
        &self,
        layer: &str,
        height: usize,
        width: usize,
    ) -> Result<OnnxGraph, OrtBackendError> {
        let layer = self.graph.find_layer(layer)?;
        self.backward_for(&layer, Some((height as i64, width as i64)))
    }

    fn backward_for(&self, layer: &Layer, hw: Option<(i64, i64)>) -> Result<OnnxGraph, OrtBackendError> {
        let names = |graph: &OnnxGraph| -> Result<Vec<String>, OrtBackendError> {
            let mut names = graph.backward_tensors(&layer.tensor)?;
            names.extend(graph.output_names().into_iter().take(1));
            Ok(names)
        };
        let shapes = self.probe(&self.graph, &names(&self.graph)?, hw)?;
        // A ViT's layers after the cut run on the class token only where the head reads just it.
        let (graph, pruned) = match self.token_pruning {
            true => self.graph.prune_tokens(&layer.tensor, &shapes),
            false => (self.graph.clone(), 0),
        };
        let shapes = if pruned > 0 { self.probe(&graph, &names(&graph)?, hw)? } else { shapes };
        Ok(graph.backward_model(&layer.tensor, Seed::Tensor, &shapes)?)
    }

    /// Runs the model once on zeros (of height and width `hw`, else the model's or 224²) with
    /// `names` as extra outputs and records their types and shapes.
    fn probe(
        &self,
        graph: &OnnxGraph,
        names: &[String],
        hw: Option<(i64, i64)>,
    ) -> Result<Shapes, OrtBackendError> {
        let dims = self.graph.input_dims(&self.input).unwrap_or_default();
        let (h, w) = hw.unwrap_or((DEFAULT_SIDE, DEFAULT_SIDE));
        let default = [PROBE_BATCH, 3, h, w];
        let shape: Vec<i64> = (0..4).map(|i| dims.get(i).copied().flatten().unwrap_or(default[i])).collect();
        let input = Tensor::from_array((shape.clone(), vec![0f32; shape.iter().product::<i64>() as usize]))
            .map_err(OrtBackendError::ort("make the probe input"))?;
        let probe = graph.with_outputs(names);
        let mut session = commit(&probe, self.threads)?;
        let outputs = session
            .run(ort::inputs![self.input.as_str() => input])
            .map_err(OrtBackendError::ort("run the shape probe"))?;
        let mut shapes = Shapes::new();
        for name in names {
            if let Some(value) = outputs.get(name.as_str()) {
                if let Some(info) = tensor_info(value) {
                    shapes.insert(name.clone(), info);
                }
            }
        }
        // Graph inputs and initializers are not node outputs: take the input's shape directly
        // and read initializers' dims from the model.
        shapes.insert(self.input.clone(), TensorInfo { dtype: 1, shape });
        for t in &graph.model().graph.initializer {
            shapes
                .entry(t.name.clone())
                .or_insert_with(|| TensorInfo { dtype: t.data_type, shape: t.dims.clone() });
        }
        Ok(shapes)
    }

    /// Shapes of every layer's output, the logits and global-pooling inputs (probed once).
    fn layer_shapes(&mut self) -> Result<&Shapes, OrtBackendError> {
        if self.shapes.is_none() {
            let mut names: Vec<String> = self.graph.layers().into_iter().map(|l| l.tensor).collect();
            names.extend(self.graph.output_names().into_iter().take(1));
            names.extend(
                self.graph
                    .nodes()
                    .iter()
                    .filter(|n| n.op_type.starts_with("Global") || n.op_type.starts_with("Reduce"))
                    .map(|n| n.input[0].clone()),
            );
            names.sort();
            names.dedup();
            self.shapes = Some(self.probe(&self.graph, &names, None)?);
        }
        Ok(self.shapes.as_ref().expect("just probed"))
    }

    /// Layers whose output is a feature map `(B, C, H, W)` or tokens `(B, N, D)`.
    fn explainable(&mut self) -> Result<Vec<(Layer, Vec<i64>)>, OrtBackendError> {
        let layers = self.graph.layers();
        let shapes = self.layer_shapes()?;
        Ok(layers
            .into_iter()
            .filter_map(|l| {
                let info = shapes.get(&l.tensor)?;
                (info.dtype == 1 && matches!(info.shape.len(), 3 | 4)).then(|| (l, info.shape.clone()))
            })
            .collect())
    }

    fn input_tensor(input: ArrayView4<f32>) -> Result<Tensor<f32>, OrtBackendError> {
        let shape: Vec<i64> = input.shape().iter().map(|&d| d as i64).collect();
        Tensor::from_array((shape, input.iter().copied().collect::<Vec<f32>>()))
            .map_err(OrtBackendError::ort("make the input tensor"))
    }

    /// The logits and the layer's output; with a seed, also the gradient of
    /// `Σ seed(logits) · logits` w.r.t. that output. The seed is core's (from this run's logits),
    /// so the generated model takes it as an input ([`Seed::Tensor`]).
    fn capture_inner(
        &mut self,
        input: ArrayView4<f32>,
        layer: &str,
        seed: Option<&dyn gradcam_core::Seed>,
    ) -> Result<Capture, CamError> {
        let (h, w) = (input.shape()[2] as i64, input.shape()[3] as i64);
        let Some(seed) = seed else {
            // No backward graph: the original model with the layer's output as an extra output.
            let key = layer.to_string();
            if !self.activations.contains_key(&key) {
                let found = self.graph.find_layer(layer).map_err(OrtBackendError::from)?;
                let graph = self.graph.with_outputs(std::slice::from_ref(&found.tensor));
                self.activations.insert(key.clone(), (commit(&graph, self.threads)?, found.tensor));
            }
            let (session, tensor) = self.activations.get_mut(&key).expect("inserted above");
            let outputs = session
                .run(ort::inputs![self.input.as_str() => Self::input_tensor(input)?])
                .map_err(OrtBackendError::ort(format!("run the model to `{layer}`")))?;
            let logits = logits_of(&outputs, 0)?;
            let activation = layer_tensor(&outputs, tensor.as_str())?;
            return Ok(Capture { logits, activation, gradient: None });
        };
        // The seed needs this input's logits before the backward run.
        let seed = seed.seed(self.forward(input)?.view())?;
        let key = format!("{layer}@{h}x{w}");
        if !self.captures.contains_key(&key) {
            let found = self.graph.find_layer(layer).map_err(OrtBackendError::from)?;
            let session = commit(&self.backward_for(&found, Some((h, w)))?, self.threads)?;
            self.captures.insert(key.clone(), session);
        }
        let session = self.captures.get_mut(&key).expect("inserted above");
        let seed_shape: Vec<i64> = seed.shape().iter().map(|&d| d as i64).collect();
        let seed = Tensor::from_array((seed_shape, seed.iter().copied().collect::<Vec<f32>>()))
            .map_err(OrtBackendError::ort("make the seed"))?;
        let outputs = session
            .run(ort::inputs![
                self.input.as_str() => Self::input_tensor(input)?,
                onnx_graph::SEED => seed,
            ])
            .map_err(OrtBackendError::ort(format!("run the backward model of `{layer}`")))?;
        let logits = logits_of(&outputs, onnx_graph::LOGITS)?;
        let activation = layer_tensor(&outputs, onnx_graph::ACTIVATION)?;
        let gradient = Some(layer_tensor(&outputs, onnx_graph::GRADIENT)?);
        Ok(Capture { logits, activation, gradient })
    }

    fn forward_with_activation_inner(
        &mut self,
        input: ArrayView4<f32>,
        layer: &str,
        activation: LayerView<'_>,
    ) -> Result<Array2<f32>, OrtBackendError> {
        if !self.cuts.contains_key(layer) {
            let found = self.graph.find_layer(layer).map_err(OrtBackendError::from)?;
            let cut = self.graph.with_activation_input(&found.tensor, activation.shape().len());
            self.cuts.insert(layer.to_string(), commit(&cut, self.threads)?);
        }
        let session = self.cuts.get_mut(layer).expect("inserted above");
        let act = activation.to_owned();
        let shape: Vec<i64> = act.shape().iter().map(|&d| d as i64).collect();
        let act =
            Tensor::from_array((shape, act.to_vec())).map_err(OrtBackendError::ort("make the activation"))?;
        let outputs = session
            .run(ort::inputs![self.input.as_str() => Self::input_tensor(input)?, onnx_graph::ACTIVATION => act])
            .map_err(OrtBackendError::ort(format!("run the model from `{layer}`")))?;
        logits_of(&outputs, 0)
    }
}

/// A session builder with the model's external-data directory set.
fn builder(
    graph: &OnnxGraph,
    threads: usize,
) -> Result<ort::session::builder::SessionBuilder, OrtBackendError> {
    let mut b = Session::builder(environment()?).map_err(OrtBackendError::ort("create a session"))?;
    if threads > 0 {
        b = b.with_intra_threads(threads).map_err(OrtBackendError::ort("set the number of threads"))?;
    }
    if let Some(dir) = graph.external_data_dir().filter(|_| graph.has_external_data()) {
        let dir = if dir.as_os_str().is_empty() { Path::new(".") } else { dir };
        b = b
            .with_config_entry(EXTERNAL_DATA_DIR, dir.to_string_lossy())
            .map_err(OrtBackendError::ort("set the external data directory"))?;
    }
    Ok(b)
}

/// A session for a generated model (external weights still read from the original directory).
fn commit(graph: &OnnxGraph, threads: usize) -> Result<Session, OrtBackendError> {
    builder(graph, threads)?
        .commit_from_memory(&graph.to_bytes())
        .map_err(OrtBackendError::ort("load a generated model"))
}

fn tensor_info(value: &DynValue) -> Option<TensorInfo> {
    let ty = value.dtype();
    let dtype = match ty.tensor_type()? {
        TensorElementType::Float32 => 1,
        TensorElementType::Float64 => 11,
        TensorElementType::Float16 => 10,
        TensorElementType::Int64 => 7,
        TensorElementType::Int32 => 6,
        TensorElementType::Bool => 9,
        _ => 0,
    };
    Some(TensorInfo { dtype, shape: ty.tensor_shape()?.to_vec() })
}

fn logits_of<K: OutputKey>(outputs: &SessionOutputs<'_>, key: K) -> Result<Array2<f32>, OrtBackendError> {
    let array = key
        .get(outputs)
        .try_extract_array::<f32>()
        .map_err(OrtBackendError::ort("read the logits"))?
        .to_owned();
    array.into_dimensionality().map_err(|e| OrtBackendError::Signature(format!("logits must be (B, K): {e}")))
}

fn layer_tensor(outputs: &SessionOutputs<'_>, name: &str) -> Result<LayerTensor, OrtBackendError> {
    let (shape, data) =
        outputs[name].try_extract_tensor::<f32>().map_err(OrtBackendError::ort(format!("read {name}")))?;
    let shape: Vec<usize> = shape.iter().map(|&d| d as usize).collect();
    LayerTensor::from_shape_vec(&shape, data.to_vec()).map_err(|e| OrtBackendError::Signature(e.to_string()))
}

/// An output by index or name.
trait OutputKey {
    fn get<'a>(&self, outputs: &'a SessionOutputs<'_>) -> &'a DynValue;
}

impl OutputKey for usize {
    fn get<'a>(&self, outputs: &'a SessionOutputs<'_>) -> &'a DynValue {
        &outputs[*self]
    }
}

impl OutputKey for &str {
    fn get<'a>(&self, outputs: &'a SessionOutputs<'_>) -> &'a DynValue {
        &outputs[*self]
    }
}

impl CamModel for OnnxModel {
    fn layers(&mut self) -> Result<Vec<LayerInfo>, CamError> {
        let layers = self.explainable()?;
        Ok(layers
            .into_iter()
            .map(|(l, mut shape)| {
                shape[0] = 1;
                LayerInfo { name: l.name, shape: shape.into_iter().map(|d| d as usize).collect() }
            })
            .collect())
    }

    fn capture(
        &mut self,
        input: ArrayView4<f32>,
        layer: &str,
        seed: Option<&dyn gradcam_core::Seed>,
    ) -> Result<Capture, CamError> {
        self.capture_inner(input, layer, seed)
    }

    fn forward(&mut self, input: ArrayView4<f32>) -> Result<Array2<f32>, CamError> {
        let input = Self::input_tensor(input)?;
        let outputs = self
            .forward
            .run(ort::inputs![self.input.as_str() => input])
            .map_err(OrtBackendError::ort("run the model"))?;
        Ok(logits_of(&outputs, 0)?)
    }

    fn forward_with_activation(
        &mut self,
        input: ArrayView4<f32>,
        layer: &str,
        activation: LayerView<'_>,
    ) -> Result<Array2<f32>, CamError> {
        Ok(self.forward_with_activation_inner(input, layer, activation)?)
    }
}
