//! [`OnnxModel`]: an ONNX model on ONNX Runtime, cut at any layer, with generated gradients.

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};

use gradcam_core::{
    BiasGradient, CamError, CamModel, Capture, FullGradients, InputGradient, LayerInfo, LayerView,
    ReluBackward,
};
use ndarray::{Array2, Array4, ArrayD, ArrayView4, Ix4};
use ort::session::{Session, SessionOutputs};
use ort::value::{DynValue, Tensor};

use crate::batch::{self, Part};
use crate::chain::{self, Chain};
use crate::onnx_graph::{self, BiasLayer, Dims, Layer, OnnxGraph, Seed, Shapes, SplitModel, TensorInfo};
use crate::runtime::{self, builder, commit, tensor, tensor_info};
use crate::OrtBackendError;

/// Batch size of the runs that read intermediate shapes: not 1, so that broadcasting over the
/// batch axis shows up in the shapes.
const PROBE_BATCH: i64 = 2;
/// Spatial size assumed when the model's input has symbolic height or width.
const DEFAULT_SIDE: i64 = 224;
/// The largest probe input (elements): a damaged file's input dims must not make it allocate
/// gigabytes (`(8, 3, 4096, 4096)` fits).
const MAX_PROBE_ELEMENTS: i64 = 1 << 29;

/// An ONNX image classifier (input `(B, 3, H, W)`, first output the logits `(B, K)`) that can
/// be explained at any layer.
///
/// Each layer gets, on first use, two generated models ([`SplitModel`]): the model itself with
/// the layer's output and the tensors the backward pass reads as extra outputs, and the backward
/// pass from core's seed to the layer. A capture runs the forward once, asks core for the seed
/// from its logits, and hands the forward's tensors to the backward run without copying them.
///
/// A model exported with a fixed batch size runs any number of images in parts of that size
/// (the last one padded), for every method.
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
    /// Generated forward and backward sessions by `layer@HxW`.
    captures: HashMap<String, CaptureSessions>,
    /// The original model with a layer's output as an extra output (its tensor name), by layer.
    activations: HashMap<String, (Session, String)>,
    /// Models cut at a layer (activation as input), by layer.
    cuts: HashMap<String, Session>,
    /// Whether generated models run a ViT's last layers on the class token only.
    token_pruning: bool,
    /// The most nodes one session of a generated model holds ([`OnnxModel::set_session_nodes`]).
    session_nodes: usize,
    /// Intra-op threads of every session (0: ONNX Runtime's default).
    threads: usize,
    /// The batch size the model's input fixes, if it does.
    fixed_batch: Option<usize>,
}

/// What a probe run saw: shapes at the probe's batch size, and which dimensions follow the batch.
struct Probe {
    shapes: Shapes,
    dims: Dims,
}

/// Dimension `k` of tensor `name` in a run of `batch` images, when the probe tells it: fixed,
/// or the batch itself (a varying dimension that was the probe's batch size); `None` for a
/// dimension that varies otherwise (e.g. batch × heads).
fn static_dim(shapes: &Shapes, dims: &Dims, name: &str, k: usize, batch: usize) -> Option<i64> {
    let probed = *shapes.get(name)?.shape.get(k)?;
    match dims.get(name)?.get(k)? {
        Some(d) => Some(*d),
        None if probed == PROBE_BATCH => Some(batch as i64),
        None => None,
    }
}

/// The sessions of a capture with a seed, and the names that tie them together.
struct CaptureSessions {
    forward: Chain,
    /// The generated models (the backward one is committed per batch size).
    split: SplitModel,
    /// Shapes of the backward model's inputs at the probe's batch size, and which of their
    /// dimensions vary with the batch (`None`).
    shapes: Shapes,
    dims: Dims,
    /// Backward sessions by batch size: each with static input shapes, which ONNX Runtime plans
    /// in time linear in the graph's depth ([`SplitModel::backward_for`]).
    backward: HashMap<usize, Chain>,
    /// FullGrad's bias layers, each with the forward output holding its bias (`None`: zeros),
    /// in the order of [`SplitModel::extra_gradients`].
    biases: Vec<(BiasLayer, Option<String>)>,
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
        let fixed_batch =
            graph.input_dims(&input).and_then(|d| d.first().copied().flatten()).map(|b| b as usize);
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
            session_nodes: chain::MAX_NODES,
            threads: intra_op_threads,
            fixed_batch,
        })
    }

    /// The batch size the model's input fixes, if it does (`None` for a symbolic batch). Any
    /// number of images still works: they run in parts of this size.
    pub fn fixed_batch(&self) -> Option<usize> {
        self.fixed_batch
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

    /// The most nodes one ONNX Runtime session of a generated model holds (default 2,000): a
    /// deeper one runs as a chain of sessions, since ONNX Runtime's session setup grows faster
    /// than linearly with the node count. The numbers are the same either way.
    pub fn set_session_nodes(&mut self, nodes: usize) {
        let nodes = nodes.max(1);
        if self.session_nodes != nodes {
            self.session_nodes = nodes;
            self.captures.clear();
        }
    }

    /// The parsed model.
    pub fn graph(&self) -> &OnnxGraph {
        &self.graph
    }

    /// The generated model (forward + backward in one, the seed an input: [`Seed::Tensor`]) for
    /// `layer`, e.g. to save and inspect. The rules bake in static shapes (pooling sizes,
    /// padding, broadcast axes), so the model is generated for one input height and width.
    pub fn backward_graph(
        &self,
        layer: &str,
        height: usize,
        width: usize,
    ) -> Result<OnnxGraph, OrtBackendError> {
        let layer = self.graph.find_layer(layer)?;
        let (graph, shapes, _) =
            self.prepared(&layer, Some((height as i64, width as i64)), self.token_pruning)?;
        Ok(graph.backward_model(&layer.tensor, Seed::Tensor, &shapes)?)
    }

    /// The two models a capture of `layer` with a seed runs ([`SplitModel`]), for inputs of
    /// `height × width`.
    pub fn capture_models(
        &self,
        layer: &str,
        height: usize,
        width: usize,
    ) -> Result<SplitModel, OrtBackendError> {
        let layer = self.graph.find_layer(layer)?;
        let (graph, shapes, _) =
            self.prepared(&layer, Some((height as i64, width as i64)), self.token_pruning)?;
        Ok(graph.backward_split(&layer.tensor, &shapes)?)
    }

    /// The graph to differentiate for `layer`, the shapes of the tensors the backward rules
    /// read and which of their dimensions follow the batch, for inputs of `hw`: shape arithmetic
    /// folded for that size ([`OnnxGraph::fold_shapes`]), class-token pruned with `prune`.
    fn prepared(
        &self,
        layer: &Layer,
        hw: Option<(i64, i64)>,
        prune: bool,
    ) -> Result<(OnnxGraph, Shapes, Dims), OrtBackendError> {
        let names = |graph: &OnnxGraph| -> Result<Vec<String>, OrtBackendError> {
            let mut names = graph.backward_tensors(&layer.tensor)?;
            names.extend(graph.output_names().into_iter().take(1));
            names.extend(graph.shape_reads());
            Ok(names)
        };
        let probe = self.probe(&self.graph, &names(&self.graph)?, hw)?;
        // Pads and shapes computed from the input's size (legacy TF-"same" padding) become
        // constants the rules can read.
        let (graph, _) = self.graph.fold_shapes(&probe.dims);
        // A ViT's layers after the cut run on the class token only where the head reads just it.
        let (graph, pruned) = match prune {
            true => graph.prune_tokens(&layer.tensor, &probe.shapes),
            false => (graph, 0),
        };
        let probe = if pruned > 0 { self.probe(&graph, &names(&graph)?, hw)? } else { probe };
        Ok((graph, probe.shapes, probe.dims))
    }

    /// Runs the model on zeros (of height and width `hw`, else the model's or 224²) with `names`
    /// as extra outputs and records their types and shapes; with a dynamic batch, at two batch
    /// sizes, to tell which dimensions follow the batch.
    fn probe(
        &self,
        graph: &OnnxGraph,
        names: &[String],
        hw: Option<(i64, i64)>,
    ) -> Result<Probe, OrtBackendError> {
        let dims = self.graph.input_dims(&self.input).unwrap_or_default();
        let (h, w) = hw.unwrap_or((DEFAULT_SIDE, DEFAULT_SIDE));
        let default = [PROBE_BATCH, 3, h, w];
        let shape: Vec<i64> = (0..4).map(|i| dims.get(i).copied().flatten().unwrap_or(default[i])).collect();
        let dynamic_batch = dims.first().copied().flatten().is_none();
        let elements = shape.iter().try_fold(1i64, |acc, &d| acc.checked_mul(d));
        if !elements.is_some_and(|n| n > 0 && n <= MAX_PROBE_ELEMENTS) {
            return Err(OrtBackendError::Signature(format!(
                "input `{}` of shape {shape:?} is not an image batch this tool can probe",
                self.input
            )));
        }
        let mut chain = Chain::commit(&graph.with_outputs(names), self.threads, self.session_nodes, true)?;
        let wanted: HashSet<&str> = names.iter().map(String::as_str).collect();
        let mut run = |shape: &[i64]| -> Result<Shapes, OrtBackendError> {
            let input =
                Tensor::from_array((shape.to_vec(), vec![0f32; shape.iter().product::<i64>() as usize]))
                    .map_err(OrtBackendError::ort("make the probe input"))?;
            let outputs =
                chain.run(HashMap::from([(self.input.clone(), input.into_dyn())]), "the shape probe")?;
            let mut shapes = Shapes::new();
            for (name, value) in &outputs {
                if wanted.contains(name.as_str()) {
                    if let Some(info) = tensor_info(value) {
                        shapes.insert(name.to_string(), info);
                    }
                }
            }
            // Graph inputs and initializers are not node outputs: take the input's shape
            // directly and read initializers' dims from the model.
            shapes.insert(self.input.clone(), TensorInfo { dtype: 1, shape: shape.to_vec() });
            for t in &graph.model().graph.initializer {
                shapes
                    .entry(t.name.clone())
                    .or_insert_with(|| TensorInfo { dtype: t.data_type, shape: t.dims.clone() });
            }
            Ok(shapes)
        };
        let shapes = run(&shape)?;
        let mut dims: Dims =
            shapes.iter().map(|(k, t)| (k.clone(), t.shape.iter().map(|&d| Some(d)).collect())).collect();
        if dynamic_batch {
            let mut other = shape.clone();
            other[0] += 1;
            let again = run(&other)?;
            for (name, d) in dims.iter_mut() {
                match again.get(name) {
                    Some(t) if t.shape.len() == d.len() => {
                        for (a, b) in d.iter_mut().zip(&t.shape) {
                            if *a != Some(*b) {
                                *a = None;
                            }
                        }
                    }
                    _ => d.iter_mut().for_each(|a| *a = None),
                }
            }
        }
        Ok(Probe { shapes, dims })
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
                    .filter_map(|n| n.input.first().cloned()),
            );
            names.sort();
            names.dedup();
            self.shapes = Some(self.probe(&self.graph, &names, None)?.shapes);
        }
        Ok(self.shapes.as_ref().expect("just probed"))
    }

    /// Layers whose output is a feature map `(B, C, H, W)` or tokens `(B, N, D)`, one row per
    /// image (not windows: those are refused by name, [`CamError::LayerBatch`]).
    fn explainable(&mut self) -> Result<Vec<(Layer, Vec<i64>)>, OrtBackendError> {
        let layers = self.graph.layers();
        let input = self.input.clone();
        let shapes = self.layer_shapes()?;
        let images = shapes.get(&input).and_then(|t| t.shape.first().copied());
        Ok(layers
            .into_iter()
            .filter_map(|l| {
                let info = shapes.get(&l.tensor)?;
                let per_image = images.is_none_or(|n| info.shape.first() == Some(&n));
                (info.dtype == 1 && matches!(info.shape.len(), 3 | 4) && per_image)
                    .then(|| (l, info.shape.clone()))
            })
            .collect())
    }

    /// The logits and the layer's output; with a seed, also the gradient of
    /// `Σ seed(logits) · logits` w.r.t. that output. The seed is core's, from this very run's
    /// logits: the forward model runs for every part of the batch, then the backward model.
    fn capture_inner(
        &mut self,
        input: ArrayView4<f32>,
        layer: &str,
        seed: Option<&dyn gradcam_core::Seed>,
    ) -> Result<Capture, CamError> {
        let parts = batch::parts(input.shape()[0], self.fixed_batch);
        let Some(seed) = seed else {
            // No backward graph: the original model with the layer's output as an extra output.
            if !self.activations.contains_key(layer) {
                let found = self.graph.find_layer(layer).map_err(OrtBackendError::from)?;
                let graph = self.graph.with_outputs(std::slice::from_ref(&found.tensor));
                self.activations.insert(layer.to_string(), (commit(&graph, self.threads)?, found.tensor));
            }
            let (session, tensor_name) = self.activations.get_mut(layer).expect("inserted above");
            let (mut logits, mut activations) = (Vec::new(), Vec::new());
            for part in parts {
                let feed = tensor(batch::rows(input, part, None).view(), "input")?;
                let outputs = session
                    .run(ort::inputs![self.input.as_str() => feed])
                    .map_err(OrtBackendError::ort(format!("run the model to `{layer}`")))?;
                logits.push((runtime::array(output(&outputs, 0)?, "the logits")?, part));
                let activation = runtime::array(named(&outputs, tensor_name)?, layer)?;
                one_row_per_image(layer, &activation, part)?;
                activations.push((activation, part));
            }
            let (logits, output_shape) = runtime::logits(joined(&logits)?)?;
            let activation = runtime::layer(joined(&activations)?)?;
            return Ok(Capture { logits, output_shape, activation, gradient: None });
        };

        let run = self.backward_run(input, Cut::Layer(layer), seed)?;
        let activation = runtime::layer(run.activation)?;
        let gradient = Some(runtime::layer(run.gradient)?);
        Ok(Capture { logits: run.logits, output_shape: run.output_shape, activation, gradient })
    }

    /// One seeded forward and backward pass to `cut`: the forward model runs for every part of
    /// the batch, core's seed is computed from its logits, then the backward model runs.
    fn backward_run(
        &mut self,
        input: ArrayView4<f32>,
        cut: Cut<'_>,
        seed: &dyn gradcam_core::Seed,
    ) -> Result<BackwardRun, CamError> {
        let parts = batch::parts(input.shape()[0], self.fixed_batch);
        let (h, w) = (input.shape()[2] as i64, input.shape()[3] as i64);
        let (key, what) = match cut {
            Cut::Layer(layer) => (format!("{layer}@{h}x{w}"), format!("`{layer}`")),
            // Not a layer name: module paths hold no spaces.
            Cut::Input { guided } => (format!("input guided={guided}@{h}x{w}"), "the input".to_string()),
            Cut::Biases => (format!("input biases@{h}x{w}"), "the input and the bias layers".to_string()),
        };
        if !self.captures.contains_key(&key) {
            let input_layer = Layer { name: String::new(), tensor: self.input.clone(), node: 0 };
            let (found, guided) = match cut {
                Cut::Layer(layer) => (self.graph.find_layer(layer).map_err(OrtBackendError::from)?, false),
                Cut::Input { guided } => (input_layer, guided),
                Cut::Biases => (input_layer, false),
            };
            // FullGrad reads every bias layer's gradient: nothing may run on fewer tokens.
            let prune = self.token_pruning && !matches!(cut, Cut::Biases);
            let (graph, shapes, dims) = self.prepared(&found, Some((h, w)), prune)?;
            let biases = match cut {
                Cut::Biases => graph.bias_layers(&shapes),
                _ => Vec::new(),
            };
            let extra: Vec<String> = biases.iter().map(|l| l.tensor.clone()).collect();
            let mut split = graph
                .backward_split_with(&found.tensor, &shapes, guided, &extra)
                .map_err(OrtBackendError::from)?;
            let (forward, bias_outputs) = split.forward.with_bias_outputs(&biases);
            let forward = Chain::commit(&forward, self.threads, self.session_nodes, false)?;
            // Only the backward model is committed again (per batch size).
            split.forward = OnnxGraph::from_model(Default::default());
            let biases = biases.into_iter().zip(bias_outputs).collect();
            let sessions = CaptureSessions { forward, split, shapes, dims, backward: HashMap::new(), biases };
            self.captures.insert(key.clone(), sessions);
        }
        let input_name = self.input.clone();
        let (threads, session_nodes) = (self.threads, self.session_nodes);
        let s = self.captures.get_mut(&key).expect("inserted above");
        for part in &parts {
            if !s.backward.contains_key(&part.size) {
                let graph =
                    s.split.backward_for(|name, k| static_dim(&s.shapes, &s.dims, name, k, part.size));
                s.backward.insert(part.size, Chain::commit(&graph, threads, session_nodes, false)?);
            }
        }
        let (mut logits, mut activations, mut carried) = (Vec::new(), Vec::new(), Vec::new());
        let mut bias_values: Option<Vec<Vec<f32>>> = None;
        for &part in &parts {
            let feed = runtime::value(batch::rows(input, part, None).view(), "input")?;
            let mut outputs = s
                .forward
                .run(HashMap::from([(input_name.clone(), feed)]), &format!("the model to {what}"))?;
            logits.push((runtime::array(value_of(&outputs, &s.split.logits)?, "the logits")?, part));
            if let Cut::Layer(layer) = cut {
                let activation = runtime::array(value_of(&outputs, &s.split.activation)?, &what)?;
                one_row_per_image(layer, &activation, part)?;
                activations.push((activation, part));
            }
            if bias_values.is_none() {
                let mut values = Vec::with_capacity(s.biases.len());
                for (layer, output) in &s.biases {
                    values.push(match output {
                        Some(name) => {
                            runtime::array(value_of(&outputs, name)?, &layer.name)?.iter().copied().collect()
                        }
                        None => vec![0.0; layer.channels],
                    });
                }
                bias_values = Some(values);
            }
            let values: Result<Vec<DynValue>, OrtBackendError> =
                s.split.carried.iter().map(|n| outputs.remove(n).ok_or_else(|| missing(n))).collect();
            carried.push(values?);
        }
        let (logits, output_shape) = runtime::logits(joined(&logits)?)?;
        let activation = match cut {
            Cut::Layer(_) => joined(&activations)?,
            Cut::Input { .. } | Cut::Biases => input.to_owned().into_dyn(),
        };
        // Core's seed from this very run's outputs, then the backward pass on the forward's tensors.
        let seed = seed.seed(logits.view(), &output_shape)?;
        if seed.dim() != logits.dim() {
            return Err(CamError::Shape(format!(
                "seed {:?} is not shaped like the outputs {:?}",
                seed.dim(),
                logits.dim()
            )));
        }
        // Back to the output's own shape, as the backward model's seed input is.
        let seed_shape: Vec<usize> =
            std::iter::once(logits.nrows()).chain(output_shape.iter().copied()).collect();
        let seed = seed
            .into_shape_with_order(ndarray::IxDyn(&seed_shape))
            .map_err(|e| CamError::Shape(e.to_string()))?;
        let mut gradients = Vec::new();
        let mut extra: Vec<Vec<(ArrayD<f32>, Part)>> = vec![Vec::new(); s.split.extra_gradients.len()];
        for (&part, values) in parts.iter().zip(carried) {
            let mut feeds: HashMap<String, DynValue> = HashMap::from([(
                onnx_graph::SEED.to_string(),
                runtime::value(batch::rows(seed.view(), part, Some(0.0)).view(), "seed")?,
            )]);
            feeds.extend(s.split.carried.iter().cloned().zip(values));
            for name in &s.split.reads_inputs {
                feeds.insert(name.clone(), runtime::value(batch::rows(input, part, None).view(), "input")?);
            }
            let backward = s.backward.get_mut(&part.size).expect("committed above");
            let outputs = backward.run(feeds, &format!("the backward model of {what}"))?;
            gradients
                .push((runtime::array(value_of(&outputs, onnx_graph::GRADIENT)?, "the gradient")?, part));
            for (name, parts) in s.split.extra_gradients.iter().zip(extra.iter_mut()) {
                if let Some(name) = name {
                    parts.push((runtime::array(value_of(&outputs, name)?, "a bias layer's gradient")?, part));
                }
            }
        }
        let mut biases = Vec::new();
        for (((layer, _), bias), parts) in s.biases.iter().zip(bias_values.unwrap_or_default()).zip(&extra) {
            // A layer the logits do not depend on has a zero gradient: no FullGrad term.
            if !parts.is_empty() {
                let gradient = joined(parts)?.into_dimensionality::<Ix4>().map_err(|_| {
                    CamError::Shape(format!("bias layer `{}`: its gradient is not a 4-D map", layer.name))
                })?;
                biases.push(BiasGradient { layer: layer.name.clone(), bias, gradient });
            }
        }
        Ok(BackwardRun { logits, output_shape, activation, gradient: joined(&gradients)?, biases })
    }

    fn forward_inner(&mut self, input: ArrayView4<f32>) -> Result<Array2<f32>, OrtBackendError> {
        let mut logits = Vec::new();
        for part in batch::parts(input.shape()[0], self.fixed_batch) {
            let feed = tensor(batch::rows(input, part, None).view(), "input")?;
            let outputs = self
                .forward
                .run(ort::inputs![self.input.as_str() => feed])
                .map_err(OrtBackendError::ort("run the model"))?;
            logits.push((runtime::array(output(&outputs, 0)?, "the logits")?, part));
        }
        Ok(runtime::logits(joined(&logits)?)?.0)
    }

    fn forward_with_activation_inner(
        &mut self,
        input: ArrayView4<f32>,
        layer: &str,
        activation: LayerView<'_>,
    ) -> Result<Array2<f32>, OrtBackendError> {
        let batch = input.shape()[0];
        if activation.shape().first() != Some(&batch) {
            return Err(OrtBackendError::Signature(format!(
                "{batch} images but an activation batch of shape {:?}",
                activation.shape()
            )));
        }
        if !self.cuts.contains_key(layer) {
            let found = self.graph.find_layer(layer).map_err(OrtBackendError::from)?;
            let cut = self.graph.with_activation_input(&found.tensor, activation.shape().len());
            self.cuts.insert(layer.to_string(), commit(&cut, self.threads)?);
        }
        let session = self.cuts.get_mut(layer).expect("inserted above");
        let activation = match activation {
            LayerView::Spatial(a) => a.into_dyn(),
            LayerView::Tokens(a) => a.into_dyn(),
        };
        let mut logits = Vec::new();
        for part in batch::parts(batch, self.fixed_batch) {
            let feed = tensor(batch::rows(input, part, None).view(), "input")?;
            let act = tensor(batch::rows(activation.view(), part, None).view(), "activation")?;
            let outputs = session
                .run(ort::inputs![self.input.as_str() => feed, onnx_graph::ACTIVATION => act])
                .map_err(OrtBackendError::ort(format!("run the model from `{layer}`")))?;
            logits.push((runtime::array(output(&outputs, 0)?, "the logits")?, part));
        }
        Ok(runtime::logits(joined(&logits)?)?.0)
    }
}

/// Where a seeded backward pass ends.
#[derive(Clone, Copy, Debug)]
enum Cut<'l> {
    /// A layer's output (Grad-CAM and its family).
    Layer(&'l str),
    /// The model's input (guided backprop; `guided`: ReLUs pass positive gradients only).
    Input { guided: bool },
    /// The model's input and the output of every bias layer (FullGrad).
    Biases,
}

/// What [`OnnxModel::backward_run`] gives back, the batch parts joined.
struct BackwardRun {
    logits: Array2<f32>,
    output_shape: Vec<usize>,
    activation: ArrayD<f32>,
    gradient: ArrayD<f32>,
    /// [`Cut::Biases`]: the bias layers the logits depend on, with their gradients.
    biases: Vec<BiasGradient>,
}

/// Output `index` of a run.
fn output<'a>(outputs: &'a SessionOutputs<'_>, index: usize) -> Result<&'a DynValue, OrtBackendError> {
    if index >= outputs.len() {
        return Err(OrtBackendError::Signature(format!("the model has no output {index}")));
    }
    Ok(&outputs[index])
}

/// The output called `name`.
fn named<'a>(outputs: &'a SessionOutputs<'_>, name: &str) -> Result<&'a DynValue, OrtBackendError> {
    outputs
        .get(name)
        .ok_or_else(|| OrtBackendError::Signature(format!("the generated model has no output `{name}`")))
}

/// The value called `name` among a [`Chain`]'s outputs.
fn value_of<'a>(outputs: &'a HashMap<String, DynValue>, name: &str) -> Result<&'a DynValue, OrtBackendError> {
    outputs.get(name).ok_or_else(|| missing(name))
}

fn missing(name: &str) -> OrtBackendError {
    OrtBackendError::Signature(format!("the generated model did not output `{name}`"))
}

/// A layer's output for `part` must have one row per image of it: otherwise its rows (a Swin's
/// windows) would be taken for images, or dropped as padding.
fn one_row_per_image(layer: &str, activation: &ArrayD<f32>, part: Part) -> Result<(), CamError> {
    let rows = activation.shape().first().copied().unwrap_or(0);
    match rows == part.size {
        true => Ok(()),
        false => Err(CamError::LayerBatch { layer: layer.to_string(), rows, images: part.size }),
    }
}

/// The parts' results joined along the batch axis (padding rows dropped).
fn joined(parts: &[(ArrayD<f32>, Part)]) -> Result<ArrayD<f32>, OrtBackendError> {
    batch::join(parts)
        .map_err(|e| OrtBackendError::Signature(format!("results of the batch parts do not line up: {e}")))
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

    fn why_not_a_layer(&mut self, name: &str) -> Option<CamError> {
        match self.graph.find_layer(name) {
            Err(e @ onnx_graph::GraphError::FoldedLayer { .. }) => Some(OrtBackendError::from(e).into()),
            _ => None,
        }
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
        Ok(self.forward_inner(input)?)
    }

    fn forward_with_activation(
        &mut self,
        input: ArrayView4<f32>,
        layer: &str,
        activation: LayerView<'_>,
    ) -> Result<Array2<f32>, CamError> {
        Ok(self.forward_with_activation_inner(input, layer, activation)?)
    }

    /// The generated backward graph extended down to the model's input; with
    /// [`ReluBackward::Guided`] every ONNX `Relu` passes positive gradients only. pytorch-grad-cam
    /// swaps only `nn.ReLU` modules, which an exported graph cannot tell from a functional
    /// `F.relu`: here both are guided, as guided backprop defines it (documented in the README).
    fn input_gradient(
        &mut self,
        input: ArrayView4<f32>,
        seed: &dyn gradcam_core::Seed,
        relu: ReluBackward,
    ) -> Result<InputGradient, CamError> {
        let guided = relu == ReluBackward::Guided;
        let run = self.backward_run(input, Cut::Input { guided }, seed)?;
        let gradient: Array4<f32> = run.gradient.into_dimensionality::<Ix4>().map_err(|_| {
            CamError::Shape(format!("the input gradient is not shaped like the input {:?}", input.shape()))
        })?;
        Ok(InputGradient { logits: run.logits, output_shape: run.output_shape, gradient })
    }

    /// FullGrad's one backward pass: the generated backward graph extended down to the input,
    /// with the gradients of the bias layers ([`OnnxGraph::bias_layers`]) on the way as extra
    /// outputs and their biases computed inside the forward model.
    fn full_gradients(
        &mut self,
        input: ArrayView4<f32>,
        seed: &dyn gradcam_core::Seed,
    ) -> Result<FullGradients, CamError> {
        let run = self.backward_run(input, Cut::Biases, seed)?;
        let input_gradient: Array4<f32> = run.gradient.into_dimensionality::<Ix4>().map_err(|_| {
            CamError::Shape(format!("the input gradient is not shaped like the input {:?}", input.shape()))
        })?;
        Ok(FullGradients {
            logits: run.logits,
            output_shape: run.output_shape,
            input_gradient,
            biases: run.biases,
        })
    }
}
