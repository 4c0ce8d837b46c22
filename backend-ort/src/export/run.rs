//! [`export_explainer`]: resolve layers, probe shapes, assemble, write.

use std::path::Path;

use gradcam_core::{CamError, CamModel, Layout, Method, TokenGrid};

use super::assemble::{assemble, Plan, PlannedLayer};
use super::files::{check_destination, write};
use super::probe::{probe, probe_dims};
use super::{ExportError, ExportOptions, Exported, ExportedLayer, EXPORTABLE_METHODS};
use crate::onnx_graph::{Dims, Layer, OnnxGraph, Shapes};
use crate::OnnxModel;

/// Batch size of the shape probe when the batch is dynamic: not 1, so that broadcasting over
/// the batch axis shows in the shapes (as `OnnxModel`'s probe).
const PROBE_BATCH: i64 = 2;
/// Input side when neither the options nor the model give one (timm's ImageNet models).
const DEFAULT_SIDE: usize = 224;

/// Exports the explainer of the classifier at `model` (`.onnx`, either torch exporter) to `out`
/// (see the [module documentation](super) for its inputs and outputs). Everything is checked
/// and built in memory first; the files are written at the end, atomically.
///
/// ```no_run
/// use backend_ort::export::{export_explainer, ExportOptions};
/// use gradcam_core::Method;
/// # fn main() -> Result<(), Box<dyn std::error::Error>> {
/// let options = ExportOptions {
///     layers: vec!["layer4".into()],
///     methods: vec![Method::GradCam, Method::LayerCam],
///     ..ExportOptions::default()
/// };
/// let exported = export_explainer("resnet50.onnx".as_ref(), "resnet50.explainer.onnx".as_ref(), &options)?;
/// println!("{:?}", exported.layers);
/// # Ok(())
/// # }
/// ```
pub fn export_explainer(model: &Path, out: &Path, options: &ExportOptions) -> Result<Exported, ExportError> {
    let methods = check_methods(&options.methods)?;
    check_destination(out, model)?;
    // Constant subgraphs (the unoptimised dynamo exporter computes a mean's axes with a
    // `Reshape` of `Constant`s) become constants the backward rules can read; nothing that
    // depends on the input's shape is folded, so the batch stays dynamic.
    let (graph, _) = OnnxGraph::load(model)?.fold_shapes(&Dims::new());
    let [input] = graph.input_names().try_into().map_err(|names: Vec<String>| {
        ExportError::Signature(format!("expected one image input, found {names:?}"))
    })?;
    let dims = graph.input_dims(&input).unwrap_or_default();
    if !dims.is_empty() && dims.len() != 4 {
        return Err(ExportError::Signature(format!(
            "the input `{input}` has rank {}, not (N, C, H, W)",
            dims.len()
        )));
    }
    let dim = |i: usize| dims.get(i).copied().flatten();
    let size = match (options.size, dim(2).zip(dim(3))) {
        (Some((h, w)), Some((mh, mw))) if (h as i64, w as i64) != (mh, mw) => {
            return Err(ExportError::Size { model_h: mh as usize, model_w: mw as usize, h, w })
        }
        (Some(size), _) => size,
        (None, Some((h, w))) => (h as usize, w as usize),
        (None, None) => (DEFAULT_SIDE, DEFAULT_SIDE),
    };
    let hw = (size.0 as i64, size.1 as i64);
    let fixed_batch = dim(0);
    let channels = dim(1).unwrap_or(3);
    let probe_shape = [fixed_batch.unwrap_or(PROBE_BATCH), channels, hw.0, hw.1];
    // Shape arithmetic that follows only the export's height and width (the legacy exporter's
    // TF-"same" pads, which the backward rules need constant) is folded; what follows a
    // dynamic batch stays computed.
    let graph = match graph.shape_reads().is_empty() {
        true => graph,
        false => {
            let dims = probe_dims(&graph, &input, &probe_shape, fixed_batch.is_none(), options.threads)?;
            graph.fold_shapes(&dims).0
        }
    };

    let layers = resolve_layers(model, &graph, options)?;
    let logits = graph.output_names().into_iter().next().expect("a parsed graph has an output");
    let probe_names = |g: &OnnxGraph| -> Result<Vec<String>, ExportError> {
        let mut names = vec![logits.clone()];
        for layer in &layers {
            names.push(layer.tensor.clone());
            names.extend(g.backward_tensors(&layer.tensor)?);
        }
        names.sort();
        names.dedup();
        Ok(names)
    };
    let shapes = probe(&graph, &input, &probe_shape, &probe_names(&graph)?, options.threads)?;
    let num_classes = match shapes.get(&logits).map(|t| (t.dtype, t.shape.as_slice())) {
        Some((1, [_, k])) => *k,
        other => {
            return Err(ExportError::Signature(format!(
                "the first output `{logits}` must be float logits (N, K), found {other:?}"
            )))
        }
    };
    let planned = plan_layers(&layers, &shapes, size, probe_shape[0] as usize, options)?;

    // A ViT's last layers on the class token only, unless that would change a layer's output.
    let (graph, shapes, pruned_nodes) = match options.token_pruning {
        true => prune(&graph, &layers, &input, &probe_shape, shapes, &probe_names, options.threads)?,
        false => (graph, shapes, 0),
    };

    let plan = Plan {
        layers: planned.clone(),
        methods: methods.clone(),
        hw,
        channels,
        fixed_batch,
        num_classes,
        softmax: options.softmax,
        metadata: metadata(model, &planned, &methods, size, options.softmax),
    };
    let explainer = assemble(&graph, &plan, &shapes)?;
    let source_dir = graph.external_data_dir().unwrap_or(Path::new(".")).to_path_buf();
    let written = write(explainer.model().clone(), &source_dir, out, options.weights)?;
    Ok(Exported {
        path: written.model,
        data: written.data,
        source: model.to_path_buf(),
        layers: planned
            .into_iter()
            .map(|l| ExportedLayer {
                name: l.name,
                tensor: l.tensor,
                shape: l.shape[1..].iter().map(|&d| d as usize).collect(),
                layout: l.layout,
                token_grid: l.grid,
            })
            .collect(),
        methods,
        size,
        channels: channels as usize,
        source_batch: fixed_batch.map(|b| b as usize),
        num_classes: num_classes as usize,
        opset: graph.opset(),
        softmax: options.softmax,
        pruned_nodes,
        layout_override: options.layout,
        token_grid_override: options.token_grid,
    })
}

/// The methods, deduplicated, each one an explainer can compute.
fn check_methods(methods: &[Method]) -> Result<Vec<Method>, ExportError> {
    let mut out: Vec<Method> = Vec::new();
    for &method in methods {
        if !EXPORTABLE_METHODS.contains(&method) {
            let reason = match method {
                Method::EigenCam | Method::EigenGradCam => {
                    "its map is a singular vector (an SVD), not an ONNX op"
                }
                Method::ScoreCam | Method::AblationCam => {
                    "it runs one extra forward pass of the model per channel"
                }
                Method::KpcaCam => "its map is a kernel PCA (an eigendecomposition), not an ONNX op",
                Method::FinerCam => {
                    "it back-propagates a second score (the nearest classes'), not yet exported"
                }
                _ => "exported explainers hold the gradient-weighted methods only",
            };
            return Err(ExportError::Method { method, reason });
        }
        if !out.contains(&method) {
            out.push(method);
        }
    }
    if out.is_empty() {
        return Err(ExportError::NoMethod);
    }
    Ok(out)
}

/// The layers asked for (deduplicated), or the model's default layer.
fn resolve_layers(
    model: &Path,
    graph: &OnnxGraph,
    options: &ExportOptions,
) -> Result<Vec<Layer>, ExportError> {
    let names: Vec<String> = if options.layers.is_empty() {
        // The one default-layer rule of every backend, over the ort backend's layer list.
        let mut onnx = OnnxModel::load_with_threads(model, options.threads)?;
        vec![onnx.default_layer()?]
    } else {
        options.layers.clone()
    };
    let mut layers: Vec<Layer> = Vec::new();
    for name in &names {
        let layer = graph.find_layer(name)?;
        if !layers.iter().any(|l| l.tensor == layer.tensor) {
            layers.push(layer);
        }
    }
    Ok(layers)
}

/// Layout and token grid of each layer at the input size, as `explain` decides them.
fn plan_layers(
    layers: &[Layer],
    shapes: &Shapes,
    size: (usize, usize),
    images: usize,
    options: &ExportOptions,
) -> Result<Vec<PlannedLayer>, ExportError> {
    layers
        .iter()
        .map(|layer| {
            let info = shapes.get(&layer.tensor).ok_or_else(|| {
                ExportError::Signature(format!(
                    "layer `{}` (tensor `{}`) has no shape",
                    layer.name, layer.tensor
                ))
            })?;
            if info.dtype != 1 {
                return Err(ExportError::Signature(format!(
                    "layer `{}` outputs ONNX element type {}, not float",
                    layer.name, info.dtype
                )));
            }
            let shape: Vec<usize> = info.shape.iter().map(|&d| d as usize).collect();
            let rows = shape.first().copied().unwrap_or(0);
            if rows != images {
                return Err(CamError::LayerBatch { layer: layer.name.clone(), rows, images }.into());
            }
            let layout = Layout::resolve(options.layout, &shape, size)?;
            let grid = match layout {
                Layout::Tokens => Some(TokenGrid::resolve(options.token_grid, shape[1], size)?),
                _ => None,
            };
            Ok(PlannedLayer {
                name: layer.name.clone(),
                tensor: layer.tensor.clone(),
                layout,
                grid,
                shape: info.shape.clone(),
            })
        })
        .collect()
}

type Pruned = (OnnxGraph, Shapes, usize);

/// Class-token pruning around the latest layer, re-probed; dropped when it would change any
/// layer's output (a layer inside the pruned part).
fn prune(
    graph: &OnnxGraph,
    layers: &[Layer],
    input: &str,
    probe_shape: &[i64],
    shapes: Shapes,
    probe_names: &dyn Fn(&OnnxGraph) -> Result<Vec<String>, ExportError>,
    threads: usize,
) -> Result<Pruned, ExportError> {
    let Some(latest) = layers.iter().max_by_key(|l| l.node) else {
        return Ok((graph.clone(), shapes, 0));
    };
    let (pruned, count) = graph.prune_tokens(&latest.tensor, &shapes);
    if count == 0 {
        return Ok((graph.clone(), shapes, 0));
    }
    let pruned_shapes = probe(&pruned, input, probe_shape, &probe_names(&pruned)?, threads)?;
    let unchanged = layers.iter().all(|l| pruned_shapes.get(&l.tensor) == shapes.get(&l.tensor));
    Ok(if unchanged { (pruned, pruned_shapes, count) } else { (graph.clone(), shapes, 0) })
}

/// The explainer's `metadata_props`: what it computes, for people and tools reading the file.
fn metadata(
    model: &Path,
    layers: &[PlannedLayer],
    methods: &[Method],
    size: (usize, usize),
    softmax: bool,
) -> Vec<(String, String)> {
    let layers: Vec<String> = layers
        .iter()
        .map(|l| match l.grid {
            Some(g) => format!(
                "{} ({}, {} prefix tokens, {}x{} grid)",
                l.name, l.layout, g.prefix_tokens, g.height, g.width
            ),
            None => format!("{} ({})", l.name, l.layout),
        })
        .collect();
    let methods: Vec<&str> = methods.iter().map(|m| m.name()).collect();
    let source = model.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    [
        ("gradcam.generator", format!("gradcam-rs {} (gradcam export)", env!("CARGO_PKG_VERSION"))),
        ("gradcam.source", source),
        ("gradcam.layers", layers.join("; ")),
        ("gradcam.methods", methods.join(",")),
        ("gradcam.input_size", format!("{}x{}", size.0, size.1)),
        ("gradcam.score", if softmax { "softmax probability" } else { "logit" }.to_string()),
        (
            "gradcam.signature",
            "inputs: input (N,C,H,W) f32, class (N,) int64 (-1 = top-1); outputs: logits (N,K), \
             cam_<method> (N,H,W) in [0,1]"
                .to_string(),
        ),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v))
    .collect()
}
