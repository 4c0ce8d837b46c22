//! Stage 2, compute: the model on batches of read items, one `explain` call per class rank, each
//! capture's forward pass giving the logits too (no separate forward).

use std::sync::mpsc::SyncSender;
use std::time::{Duration, Instant};

use gradcam_core::{CamError, CamModel, CamOptions, Explanation, Layout, Method, Target};
use image::RgbImage;
use ndarray::{Array2, Array3, Array4, Axis};

use crate::error::CliError;
use crate::plan::Item;
use crate::read::{Failed, Loaded};
use crate::stop::Stop;

/// Number of predictions kept per image (more with a larger `--top`).
pub const TOP_PREDICTIONS: usize = 5;

/// One predicted class of one image.
#[derive(Clone, Debug)]
pub struct Prediction {
    pub class: usize,
    pub logit: f32,
    pub probability: f32,
}

/// One heatmap: an image explained for a class, at one layer (or all layers combined), by one
/// method.
pub struct MapResult {
    pub class: usize,
    /// Rank of `class` among the image's predictions when `--top` chose it.
    pub rank: Option<usize>,
    /// The layer and how its output was read, or `None` for the combination of several layers.
    pub layer: Option<(String, Layout)>,
    pub method: Method,
    /// Final map `(H_in, W_in)` in [0, 1].
    pub map: Array2<f32>,
    /// The map at the layer's own resolution (after ReLU and min-max), for the heatmap.
    pub origin: Option<Array2<f32>>,
    /// Whether this is the map `--npy-out` writes (the single layer, or the combination).
    pub is_final: bool,
    /// A pixel-space method's map `(3, H_in, W_in)` (guided backprop): drawn as
    /// pytorch-grad-cam's `deprocess_image`, and what `--npy-out` writes for it.
    pub pixels: Option<Array3<f32>>,
}

/// Everything computed for one image.
pub struct ImageResult {
    pub item: Item,
    pub picture: RgbImage,
    pub num_classes: usize,
    /// Best first (none for a model that is not a classifier).
    pub predictions: Vec<Prediction>,
    /// What a non-classifier's target score was (`--target binary|segmentation|similarity`).
    pub target_score: Option<String>,
    pub maps: Vec<MapResult>,
    /// Each explained layer with the layout it was read in, in the order given.
    pub layouts: Vec<(String, Layout)>,
    pub warnings: Vec<String>,
}

/// What the compute stage hands on, in input order.
pub enum Outcome {
    Done(Box<ImageResult>),
    Failed(Failed),
}

/// What to explain.
pub struct Settings {
    pub layers: Vec<String>,
    pub methods: Vec<Method>,
    /// One target per `explain` call, with the class rank it stands for under `--top`.
    pub targets: Vec<(Target, Option<usize>)>,
    pub options: CamOptions,
    pub batch: usize,
    /// Predictions kept per image.
    pub keep: usize,
}

/// Runs the model over `loaded` in batches of images of one size, sending every item's outcome
/// to `out` in input order, and returns the time spent in `explain` calls. Returns at the end of the input, when `stop` is requested (after the
/// batch at hand), when the next stage has hung up, or with an error that ends the run (an
/// image's own trouble, like NaN logits, only fails that image).
pub fn run(
    model: &mut dyn CamModel,
    loaded: impl Iterator<Item = Result<Loaded, Failed>>,
    settings: &Settings,
    out: SyncSender<Outcome>,
    stop: &Stop,
) -> Result<Duration, CliError> {
    // Pending items in order; read failures wait their turn so output order is input order.
    let mut pending: Vec<Result<Loaded, Failed>> = Vec::new();
    let mut ready = 0;
    let mut shape = None;
    let mut spent = Duration::ZERO;
    for item in loaded {
        if stop.requested() {
            return Ok(spent);
        }
        if let Ok(l) = &item {
            let dim = l.tensor.dim();
            if ready == settings.batch || shape.is_some_and(|s| s != dim) {
                if !flush(model, std::mem::take(&mut pending), settings, &out, &mut spent)? {
                    return Ok(spent);
                }
                ready = 0;
            }
            shape = Some(dim);
            ready += 1;
        }
        pending.push(item);
    }
    if !stop.requested() {
        flush(model, pending, settings, &out, &mut spent)?;
    }
    Ok(spent)
}

/// Explains the loaded items of `pending` as one batch and sends every outcome; `false` when the
/// next stage is gone or a stop cut the batch short.
fn flush(
    model: &mut dyn CamModel,
    pending: Vec<Result<Loaded, Failed>>,
    settings: &Settings,
    out: &SyncSender<Outcome>,
    spent: &mut Duration,
) -> Result<bool, CliError> {
    let mut outcomes: Vec<Option<Outcome>> = Vec::with_capacity(pending.len());
    let mut batch: Vec<(usize, Loaded)> = Vec::new();
    for (pos, item) in pending.into_iter().enumerate() {
        match item {
            Ok(l) => {
                batch.push((pos, l));
                outcomes.push(None);
            }
            Err(f) => outcomes.push(Some(Outcome::Failed(f))),
        }
    }
    while !batch.is_empty() {
        let tensors: Vec<_> = batch.iter().map(|(_, l)| l.tensor.view()).collect();
        let input: Array4<f32> =
            ndarray::stack(Axis(0), &tensors).map_err(|e| CamError::Shape(e.to_string()))?;
        let started = Instant::now();
        let explained = explain_all(model, &input, settings);
        *spent += started.elapsed();
        match explained {
            Ok(per_target) => {
                for (b, (pos, loaded)) in batch.drain(..).enumerate() {
                    let result = image_result(loaded, b, &per_target, settings);
                    outcomes[pos] = Some(Outcome::Done(Box::new(result)));
                }
            }
            // One image's logits are not finite: fail it alone, explain the others.
            Err(CamError::NonFiniteLogits { image }) if image < batch.len() => {
                let (pos, loaded) = batch.remove(image);
                let error = CliError::NonFinite { name: loaded.item.label() };
                outcomes[pos] = Some(Outcome::Failed(Failed { item: loaded.item, error }));
            }
            // A stop was requested in the middle of a long method: this batch is not done.
            Err(CamError::Cancelled) => return Ok(false),
            Err(e) => return Err(e.into()),
        }
    }
    for outcome in outcomes.into_iter().flatten() {
        if out.send(outcome).is_err() {
            return Ok(false);
        }
    }
    Ok(true)
}

/// Each target's class rank (under `--top`) with its explanations, one per method.
type PerTarget = Vec<(Option<usize>, Vec<Explanation>)>;

/// One `explain` per target; the first one's logits are the predictions.
fn explain_all(
    model: &mut dyn CamModel,
    input: &Array4<f32>,
    settings: &Settings,
) -> Result<PerTarget, CamError> {
    let layers: Vec<&str> = settings.layers.iter().map(String::as_str).collect();
    settings
        .targets
        .iter()
        .map(|(target, rank)| {
            gradcam_core::explain(model, input.view(), &layers, &settings.methods, target, &settings.options)
                .map(|e| (*rank, e))
        })
        .collect()
}

/// Image `b` of the batch: its predictions and maps.
fn image_result(
    loaded: Loaded,
    b: usize,
    per_target: &[(Option<usize>, Vec<Explanation>)],
    settings: &Settings,
) -> ImageResult {
    let first = per_target.first().and_then(|(_, e)| e.first());
    let (predictions, num_classes) = match first {
        Some(e) if !e.target.is_classifier() => (Vec::new(), e.logits.ncols()),
        Some(e) => {
            let mut ranked = rank(e.logits.row(b).to_vec());
            ranked.truncate(settings.keep);
            (ranked, e.logits.ncols())
        }
        None => (Vec::new(), 0),
    };
    let layouts =
        first.map(|e| e.layers.iter().map(|l| (l.layer.clone(), l.layout)).collect()).unwrap_or_default();
    let mut maps = Vec::new();
    let mut warnings = Vec::new();
    for (rank, explanations) in per_target {
        for e in explanations {
            collect_maps(e, b, *rank, &mut maps);
            for layer in &e.layers {
                let scaled = layer.scaled.index_axis(Axis(0), b);
                if scaled.iter().all(|v| *v == 0.0) {
                    warnings.push(format!(
                        "{}: the {} map of class {} at layer {} is all zero: nothing there raises the class's score; try another --layer or --method",
                        loaded.item.name, e.method, e.classes[b], layer.layer
                    ));
                }
            }
        }
    }
    ImageResult {
        target_score: first.and_then(|e| crate::targets::describe(e, b)),
        item: loaded.item,
        picture: loaded.picture,
        num_classes,
        predictions,
        maps,
        layouts,
        warnings,
    }
}

/// Classes sorted by logit, best first, with softmax probabilities.
fn rank(logits: Vec<f32>) -> Vec<Prediction> {
    let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let sum: f32 = logits.iter().map(|v| (v - max).exp()).sum();
    let mut out: Vec<Prediction> = logits
        .iter()
        .enumerate()
        .map(|(class, &logit)| Prediction { class, logit, probability: (logit - max).exp() / sum })
        .collect();
    out.sort_by(|a, b| b.logit.total_cmp(&a.logit).then(a.class.cmp(&b.class)));
    out
}

/// Image `b`'s maps of one explanation: one per layer, plus the combination when there are
/// several. A layer's own map is what pytorch-grad-cam gives for that layer alone (upsample,
/// ReLU, min-max), so `--layer a --layer b` shows the same per-layer pictures as two separate
/// runs, plus their combination.
fn collect_maps(explanation: &Explanation, b: usize, rank: Option<usize>, maps: &mut Vec<MapResult>) {
    let several = explanation.layers.len() > 1;
    let class = explanation.classes[b];
    // The explanation's final map, with no layer of its own unless said.
    let whole = |layer: Option<(String, Layout)>, pixels: Option<Array3<f32>>| MapResult {
        class,
        rank,
        layer,
        method: explanation.method,
        map: explanation.maps.index_axis(Axis(0), b).to_owned(),
        origin: None,
        is_final: true,
        pixels,
    };
    if let Some(pixels) = &explanation.pixels {
        // One picture: guided Grad-CAM's names its Grad-CAM layer when there is one.
        let layer = match explanation.layers.as_slice() {
            [only] => Some((only.layer.clone(), only.layout)),
            _ => None,
        };
        maps.push(whole(layer, Some(pixels.index_axis(Axis(0), b).to_owned())));
        return;
    }
    for layer in &explanation.layers {
        let origin = layer.scaled.index_axis(Axis(0), b).to_owned();
        // Core's own map of the layer (smoothed under --aug-smooth, like the combination).
        let map = layer.map.index_axis(Axis(0), b).to_owned();
        maps.push(MapResult {
            class,
            rank,
            layer: Some((layer.layer.clone(), layer.layout)),
            method: explanation.method,
            map,
            origin: Some(origin),
            is_final: !several,
            pixels: None,
        });
    }
    // The combination of several layers, or FullGrad's map of the whole model (no layer).
    if several || explanation.layers.is_empty() {
        maps.push(whole(None, None));
    }
}
