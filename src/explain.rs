//! `gradcam explain`: compute every map first, then render and write all files at once.

use std::io::IsTerminal;
use std::sync::Arc;

use gradcam_core::{CamOptions, Explanation, Method, Target};
use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};
use ndarray::{Array2, Array3, Array4, Axis};

use crate::assets::ClassNames;
use crate::backend::{self, LoadedModel};
use crate::cli::ExplainArgs;
use crate::error::CliError;
use crate::input::{self, Input};
use crate::output;

/// Number of predictions printed per image.
const TOP_PREDICTIONS: usize = 5;

/// One predicted class of one image.
pub struct Prediction {
    pub class: usize,
    pub logit: f32,
    pub probability: f32,
}

/// One heatmap: an image explained for a class, at one layer (or all layers combined), by
/// one method.
pub struct MapResult {
    pub image: usize,
    pub class: usize,
    /// Rank of `class` among the image's predictions when `--top` chose it.
    pub rank: Option<usize>,
    /// The layer, or `None` for the combination of several layers.
    pub layer: Option<String>,
    pub method: Method,
    /// Final map `(H_in, W_in)` in [0, 1].
    pub map: Array2<f32>,
    /// The map at the layer's own resolution (after ReLU and min-max), for the "origin" view.
    pub origin: Option<Array2<f32>>,
    /// Whether this is the map `--npy-out` writes (the single layer, or the combination).
    pub is_final: bool,
}

/// Everything computed, before anything is written.
pub struct Results {
    pub inputs: Vec<Input>,
    pub predictions: Vec<Vec<Prediction>>,
    pub class_names: ClassNames,
    pub num_classes: usize,
    pub layers: Vec<String>,
    pub auto_layer: bool,
    pub methods: Vec<Method>,
    pub maps: Vec<MapResult>,
}

pub fn run(args: ExplainArgs) -> Result<(), CliError> {
    let show_progress = !args.json && std::io::stderr().is_terminal();
    let inputs_given =
        if args.inputs.is_empty() { vec![crate::assets::shipped_images()] } else { args.inputs.clone() };
    if args.npy_out.as_ref().is_some_and(|p| p.is_dir()) {
        return Err(CliError::Usage("--npy-out names a folder; give a file name ending in .npy".into()));
    }
    let mut loaded = backend::load(&args.model)?;
    let inputs = input::gather(&inputs_given, loaded.input_size)?;
    if args.npy_out.is_some() {
        let (h, w) = input_hw(&inputs[0]);
        if let Some(other) = inputs.iter().find(|i| input_hw(i) != (h, w)) {
            return Err(CliError::Usage(format!(
                "--npy-out stacks maps of one size, but {} is {:?} and {} is {:?}",
                inputs[0].name,
                (h, w),
                other.name,
                input_hw(other)
            )));
        }
    }
    let (layers, auto_layer) = choose_layers(&mut loaded, &args.layers)?;
    let mut methods = Vec::new();
    for m in &args.methods {
        if !methods.contains(m) {
            methods.push(*m);
        }
    }

    let progress = Progress::new(show_progress, inputs.len(), &methods);
    let results = compute(&mut loaded, inputs, layers, auto_layer, methods, &args, &progress)?;
    progress.finish();

    let written = output::write_all(&results, &args)?;
    output::report(&results, &loaded, &written, &args)
}

fn input_hw(input: &Input) -> (usize, usize) {
    let (_, h, w) = input.tensor.dim();
    (h, w)
}

/// The layers to explain: those named (checked against the model's, with near matches for a
/// typo), or the model's automatic choice.
fn choose_layers(loaded: &mut LoadedModel, wanted: &[String]) -> Result<(Vec<String>, bool), CliError> {
    if wanted.is_empty() {
        return Ok((vec![loaded.model.default_layer()?], true));
    }
    let known = loaded.model.layers()?;
    let mut layers: Vec<String> = Vec::new();
    for name in wanted {
        if !known.iter().any(|l| &l.name == name) {
            let near = gradcam_core::near_matches(name, known.iter().map(|l| l.name.as_str()));
            return Err(gradcam_core::CamError::UnknownLayer { name: name.clone(), near }.into());
        }
        if !layers.contains(name) {
            layers.push(name.clone());
        }
    }
    Ok((layers, false))
}

fn compute(
    loaded: &mut LoadedModel,
    inputs: Vec<Input>,
    layers: Vec<String>,
    auto_layer: bool,
    methods: Vec<Method>,
    args: &ExplainArgs,
    progress: &Progress,
) -> Result<Results, CliError> {
    let layer_refs: Vec<&str> = layers.iter().map(String::as_str).collect();
    let options =
        CamOptions { layout: args.layout, progress: progress.passes_callback(), ..CamOptions::default() };
    let mut predictions = Vec::with_capacity(inputs.len());
    let mut maps = Vec::new();
    let mut num_classes = 0;
    for chunk in batches(&inputs, args.batch as usize) {
        let batch = stack(&inputs[chunk.clone()]);
        let logits = loaded.model.forward(batch.view())?;
        num_classes = logits.ncols();
        if let Some(class) = args.class {
            if class >= num_classes {
                return Err(gradcam_core::CamError::ClassOutOfRange { class, num_classes }.into());
            }
        }
        let top = args.top.map_or(1, |k| k as usize);
        if top > num_classes {
            return Err(CliError::Usage(format!(
                "--top {top} asks for more classes than the model's {num_classes}"
            )));
        }
        let ranked: Vec<Vec<Prediction>> = logits.outer_iter().map(|row| rank(row.to_vec())).collect();
        // One explain call per class rank: core shares one capture per layer among methods.
        let targets: Vec<(Target, Option<usize>)> = match (args.class, args.top) {
            (Some(class), _) => vec![(Target::class(class), None)],
            (None, Some(k)) => (0..k as usize)
                .map(|r| (Target::per_image(ranked.iter().map(|p| p[r].class).collect()), Some(r)))
                .collect(),
            (None, None) => vec![(Target::top_one(), None)],
        };
        for (target, rank) in targets {
            let target = if args.softmax { target.softmax() } else { target };
            let explanations = gradcam_core::explain(
                loaded.model.as_mut(),
                batch.view(),
                &layer_refs,
                &methods,
                &target,
                &options,
            )?;
            for explanation in explanations {
                collect_maps(&explanation, chunk.start, rank, &mut maps)?;
            }
        }
        predictions.extend(ranked.into_iter().map(|mut p| {
            p.truncate(TOP_PREDICTIONS.max(top));
            p
        }));
        progress.images_done(chunk.len());
    }
    Ok(Results {
        inputs,
        predictions,
        class_names: ClassNames::for_classes(num_classes),
        num_classes,
        layers,
        auto_layer,
        methods,
        maps,
    })
}

/// Splits the inputs into runs of at most `size` consecutive inputs of one tensor shape.
fn batches(inputs: &[Input], size: usize) -> Vec<std::ops::Range<usize>> {
    let mut out: Vec<std::ops::Range<usize>> = Vec::new();
    for (i, input) in inputs.iter().enumerate() {
        match out.last_mut() {
            Some(r) if r.len() < size && inputs[r.start].tensor.dim() == input.tensor.dim() => r.end = i + 1,
            _ => out.push(i..i + 1),
        }
    }
    out
}

fn stack(inputs: &[Input]) -> Array4<f32> {
    let views: Vec<_> = inputs.iter().map(|i| i.tensor.view()).collect();
    ndarray::stack(Axis(0), &views).expect("batches hold tensors of one shape")
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

/// Splits an explanation into one map per image and layer, plus the combined map when several
/// layers were explained. A layer's own map is what pytorch-grad-cam gives for that layer alone
/// (core's multi-layer aggregation over one layer: upsample, ReLU, min-max), so `--layer a
/// --layer b` shows the same per-layer pictures as two separate runs, plus their combination.
fn collect_maps(
    explanation: &Explanation,
    first_image: usize,
    rank: Option<usize>,
    maps: &mut Vec<MapResult>,
) -> Result<(), CliError> {
    let (batch, h, w) = explanation.maps.dim();
    let several = explanation.layers.len() > 1;
    let mut per_layer = Vec::with_capacity(explanation.layers.len());
    for layer in &explanation.layers {
        let own = if several {
            gradcam_core::combine_layers(&[gradcam_core::upsample_maps(layer.scaled.view(), h, w)])?
        } else {
            explanation.maps.clone()
        };
        per_layer.push(own);
    }
    for b in 0..batch {
        let class = explanation.classes[b];
        for (layer, own) in explanation.layers.iter().zip(&per_layer) {
            maps.push(MapResult {
                image: first_image + b,
                class,
                rank,
                layer: Some(layer.layer.clone()),
                method: explanation.method,
                map: own.index_axis(Axis(0), b).to_owned(),
                origin: Some(layer.scaled.index_axis(Axis(0), b).to_owned()),
                is_final: !several,
            });
        }
        if several {
            maps.push(MapResult {
                image: first_image + b,
                class,
                rank,
                layer: None,
                method: explanation.method,
                map: explanation.maps.index_axis(Axis(0), b).to_owned(),
                origin: None,
                is_final: true,
            });
        }
    }
    Ok(())
}

/// Stacks the final maps `(N, H, W)` for `--npy-out`, in the order of the summary's
/// `npy_index`: image, then class rank, then method.
pub fn final_stack(results: &Results) -> Array3<f32> {
    let views: Vec<_> = final_maps(results).map(|m| m.map.view()).collect();
    ndarray::stack(Axis(0), &views).expect("final maps share the input size")
}

/// The final maps in `--npy-out` order.
pub fn final_maps(results: &Results) -> impl Iterator<Item = &MapResult> {
    let mut order: Vec<&MapResult> = results.maps.iter().filter(|m| m.is_final).collect();
    order.sort_by_key(|m| (m.image, m.rank, results.methods.iter().position(|x| *x == m.method)));
    order.into_iter()
}

/// Progress on stderr: one bar over the images (folders, batches) and one over the extra
/// forward passes of ScoreCAM/AblationCAM. Hidden when stderr is not a terminal or with --json.
struct Progress {
    images: Option<ProgressBar>,
    passes: Option<ProgressBar>,
}

impl Progress {
    fn new(show: bool, num_images: usize, methods: &[Method]) -> Self {
        if !show {
            return Progress { images: None, passes: None };
        }
        let multi = MultiProgress::with_draw_target(ProgressDrawTarget::stderr());
        let style = |template: &str| ProgressStyle::with_template(template).expect("valid template");
        let images = (num_images > 1).then(|| {
            let bar = multi.add(ProgressBar::new(num_images as u64));
            bar.set_style(style("{prefix:>8} [{bar:30}] {pos}/{len} images ({eta} left)"));
            bar.set_prefix("explain");
            bar
        });
        let passes = methods.iter().any(|m| m.needs_forward_passes()).then(|| {
            let bar = multi.add(ProgressBar::new(0));
            bar.set_style(style("{prefix:>8} [{bar:30}] {pos}/{len} masked passes ({eta} left)"));
            bar.set_prefix("passes");
            bar
        });
        Progress { images, passes }
    }

    fn passes_callback(&self) -> Option<Arc<dyn Fn(usize, usize) + Send + Sync>> {
        let bar = self.passes.clone()?;
        Some(Arc::new(move |done, total| {
            bar.set_length(total as u64);
            bar.set_position(done as u64);
        }))
    }

    fn images_done(&self, n: usize) {
        if let Some(bar) = &self.images {
            bar.inc(n as u64);
        }
    }

    fn finish(&self) {
        for bar in self.images.iter().chain(self.passes.iter()) {
            bar.finish_and_clear();
        }
    }
}
