//! `gradcam evaluate`: which map to trust. Every method's map of every image, at every layer, is
//! scored by pytorch-grad-cam's faithfulness metrics ([`gradcam_core::evaluate`]); the table
//! ranks the method × layer rows by their mean over the images, best first.
//!
//! Inputs are planned and read as `explain` does ([`crate::plan`], [`crate::read`]) and the model
//! loaded by [`crate::backend`]; nothing is written but stdout.

use std::collections::HashSet;
use std::io::IsTerminal;
use std::path::Path;

use gradcam_core::{CamModel, CamOptions, Method, Metric, MetricOptions, Target};
use ndarray::{Array3, Axis};
use serde_json::{json, Map, Value};

use crate::backend;
use crate::backend::LoadedModel;
use crate::cli::{CamArgs, EvaluateArgs};
use crate::error::CliError;
use crate::layers::choose_layers;
use crate::plan::{self, Item};
use crate::progress::Progress;
use crate::read::{Failed, Reader};
use crate::report::{failure_json, path_json, run_summary};

/// One method at one layer: the sum of each metric over the images so far.
struct Row {
    method: Method,
    /// None for a method that reads no layer (FullGrad): one row, whatever `--layer` says.
    layer: Option<String>,
    sums: Vec<f64>,
    count: usize,
}

impl Row {
    fn means(&self) -> Vec<f64> {
        self.sums.iter().map(|s| s / self.count.max(1) as f64).collect()
    }
}

/// One image's values for one method, layer and class.
struct Record {
    item: Item,
    class: usize,
    rank: Option<usize>,
    method: Method,
    layer: Option<String>,
    values: Vec<f32>,
}

pub fn run(args: EvaluateArgs) -> Result<(), CliError> {
    let metrics = unique(if args.metrics.is_empty() { Metric::ALL.to_vec() } else { args.metrics.clone() });
    let methods = args.cam.methods();
    if let Some(pixel) = methods.iter().find(|m| m.is_pixel_space()) {
        return Err(CliError::Usage(format!(
            "{pixel} maps pixels, not a heatmap, and pytorch-grad-cam's metrics score heatmaps: evaluate another --method (gradcam, ...)"
        )));
    }
    // --mask and --concept are read before the model loads.
    let targets = crate::targets::targets(&args.cam)?;
    // No output folder: every image in a folder is an input.
    let plan = plan::gather(&args.inputs, Path::new(""), None, &HashSet::new())?;
    let mut loaded = backend::load(&args.model)?;
    let (layers, auto_layer) = choose_layers(&mut loaded, &args.cam.layers)?;
    let progress = Progress::new(!args.json && std::io::stderr().is_terminal(), plan.items.len());
    let metric_options = MetricOptions { road_noise: args.road_noise, seed: args.cam.seed };
    let Scores { rows, records, ranked_by, failed } = score_items(
        &mut loaded,
        &plan.items,
        &layers,
        &methods,
        &metrics,
        (&args.cam, &targets),
        metric_options,
        &progress,
    )?;
    progress.finish();
    for f in &failed {
        eprintln!("error: {}", crate::error_chain(&f.error));
    }
    let scored = plan.items.len() - failed.len();

    if args.json {
        let named = |values: Vec<f64>| -> Value {
            Value::Object(
                metrics
                    .iter()
                    .zip(values)
                    .map(|(m, v)| (m.name().to_string(), json!(v)))
                    .collect::<Map<_, _>>(),
            )
        };
        let fields = json!({
            "metrics": metrics.iter().map(|m| json!({"name": m.name(), "higher_is_better": m.higher_is_better()})).collect::<Vec<_>>(),
            "ranked_by": metrics[ranked_by].name(),
            "road_noise": args.road_noise,
            "seed": args.cam.seed,
            "images": scored,
            "failed": failed.iter().map(failure_json).collect::<Vec<_>>(),
            "rows": rows.iter().map(|r| json!({
                "method": r.method.name(),
                "layer": r.layer,
                "count": r.count,
                "mean": named(r.means()),
            })).collect::<Vec<_>>(),
            "per_image": records.iter().map(|r| json!({
                "input": path_json(&r.item.path),
                "npy_index": r.item.npy_index(),
                "name": r.item.name,
                "class": r.class,
                "rank": r.rank,
                "method": r.method.name(),
                "layer": r.layer,
                "values": named(r.values.iter().map(|&v| f64::from(v)).collect()),
            })).collect::<Vec<_>>(),
        });
        let summary = run_summary(
            &loaded,
            (&layers, auto_layer),
            &methods,
            crate::targets::score_name(&args.cam),
            fields,
        );
        let text = serde_json::to_string_pretty(&summary)
            .map_err(|e| CliError::Usage(format!("internal error: cannot write the JSON summary: {e}")))?;
        println!("{text}");
    } else {
        print!("{}", table(&rows, &metrics, ranked_by, scored, &args));
    }
    if !failed.is_empty() {
        return Err(CliError::SomeFailed { failed: failed.len(), total: plan.items.len() });
    }
    Ok(())
}

/// Every method's map at every layer of every image in `items`, scored: the rows (one per method
/// and layer) best first by `metrics[ranked_by]` (road-combined when asked for, else the first).
struct Scores {
    rows: Vec<Row>,
    records: Vec<Record>,
    ranked_by: usize,
    /// The images that could not be read (not in any mean).
    failed: Vec<Failed>,
}

#[allow(clippy::too_many_arguments)]
fn score_items(
    loaded: &mut LoadedModel,
    items: &[Item],
    layers: &[String],
    methods: &[Method],
    metrics: &[Metric],
    (cam, targets): (&CamArgs, &[(Target, Option<usize>)]),
    metric_options: MetricOptions,
    progress: &Progress,
) -> Result<Scores, CliError> {
    // The reader also makes the picture `explain` draws on; here it is dropped, so keep it small.
    let model_side = loaded.input_size.0.max(loaded.input_size.1) as u32;
    let reader = Reader::new(loaded.input_size, cam.max_pixels, model_side);
    let mut scorer = Scorer {
        model: loaded.model.as_mut(),
        layers: layers.to_vec(),
        methods: methods.to_vec(),
        metrics: metrics.to_vec(),
        targets: targets.to_vec(),
        options: cam.options(),
        metric_options,
        rows: methods
            .iter()
            .flat_map(|&method| {
                let layers: Vec<Option<String>> = match method.reads_layers() {
                    true => layers.iter().cloned().map(Some).collect(),
                    false => vec![None],
                };
                layers.into_iter().map(move |layer| Row {
                    method,
                    layer,
                    sums: vec![0.0; metrics.len()],
                    count: 0,
                })
            })
            .collect(),
        records: Vec::new(),
    };

    // Batches of at most --batch images of one size, in input order. An image that cannot be
    // read fails alone, as in `explain`: every mean is over the images that were read.
    let batch_size = cam.batch as usize;
    let mut pending: Vec<(Item, Array3<f32>)> = Vec::new();
    let mut failed = Vec::new();
    for item in items.iter().cloned() {
        let loaded = match reader.read(item) {
            Ok(loaded) => loaded,
            Err(f) => {
                failed.push(f);
                continue;
            }
        };
        if pending.len() == batch_size || pending.first().is_some_and(|(_, t)| t.dim() != loaded.tensor.dim())
        {
            scorer.score(std::mem::take(&mut pending), progress)?;
        }
        pending.push((loaded.item, loaded.tensor));
    }
    if !pending.is_empty() {
        scorer.score(pending, progress)?;
    }
    if !failed.is_empty() && failed.len() == items.len() {
        // Nothing to rank: the first error is the answer.
        return Err(failed.swap_remove(0).error);
    }

    let Scorer { mut rows, records, .. } = scorer;
    let ranked_by = metrics.iter().position(|&m| m == Metric::RoadCombined).unwrap_or(0);
    let higher = metrics[ranked_by].higher_is_better();
    rows.sort_by(|a, b| {
        let (x, y) = (a.means()[ranked_by], b.means()[ranked_by]);
        if higher {
            y.total_cmp(&x)
        } else {
            x.total_cmp(&y)
        }
    });
    Ok(Scores { rows, records, ranked_by, failed })
}

/// `explain --method auto`'s choice: the method of [`CamArgs::auto_candidates`] whose maps score best by
/// road-combined on `items` (mean over the images and `layers`), and that mean.
pub fn pick_method(
    loaded: &mut LoadedModel,
    items: &[Item],
    layers: &[String],
    (cam, targets): (&CamArgs, &[(Target, Option<usize>)]),
) -> Result<(Method, f64), CliError> {
    let metric_options = MetricOptions { seed: cam.seed, ..MetricOptions::default() };
    let quiet = Progress::new(false, items.len());
    let candidates = cam.auto_candidates();
    let scores = score_items(
        loaded,
        items,
        layers,
        &candidates,
        &[Metric::RoadCombined],
        (cam, targets),
        metric_options,
        &quiet,
    )?;
    // Each candidate's mean over the layers, best first; ties to the earlier candidate.
    let mut best: Option<(Method, f64)> = None;
    for method in candidates {
        let means: Vec<f64> =
            scores.rows.iter().filter(|r| r.method == method).map(|r| r.means()[0]).collect();
        let mean = means.iter().sum::<f64>() / means.len().max(1) as f64;
        if best.is_none_or(|(_, b)| mean > b) {
            best = Some((method, mean));
        }
    }
    best.ok_or_else(|| CliError::Usage("internal error: no candidate method".into()))
}

/// The model and what to score with it, and the scores so far.
struct Scorer<'m> {
    model: &'m mut dyn CamModel,
    layers: Vec<String>,
    methods: Vec<Method>,
    metrics: Vec<Metric>,
    /// One target per class rank (`--top`), else one.
    targets: Vec<(Target, Option<usize>)>,
    options: CamOptions,
    metric_options: MetricOptions,
    /// One per method and layer.
    rows: Vec<Row>,
    records: Vec<Record>,
}

impl Scorer<'_> {
    /// Explains one batch of images of one size with every method at every layer (one layer per
    /// `explain` call: each row is that layer's own map; a method that reads no layer, with the
    /// first) and scores every map.
    fn score(&mut self, batch: Vec<(Item, Array3<f32>)>, progress: &Progress) -> Result<(), CliError> {
        let views: Vec<_> = batch.iter().map(|(_, t)| t.view()).collect();
        let input =
            ndarray::stack(Axis(0), &views).map_err(|e| CliError::Usage(format!("internal error: {e}")))?;
        for (target, rank) in &self.targets {
            for (index, layer) in self.layers.iter().enumerate() {
                let methods: Vec<Method> =
                    self.methods.iter().copied().filter(|m| index == 0 || m.reads_layers()).collect();
                if methods.is_empty() {
                    continue;
                }
                let explanations = gradcam_core::explain(
                    self.model,
                    input.view(),
                    &[layer.as_str()],
                    &methods,
                    target,
                    &self.options,
                )?;
                for e in explanations {
                    let layer = e.method.reads_layers().then(|| layer.clone());
                    let values = gradcam_core::evaluate(
                        self.model,
                        input.view(),
                        e.maps.view(),
                        &e.target,
                        &e.classes,
                        &self.metrics,
                        &self.metric_options,
                    )?;
                    let row = self
                        .rows
                        .iter_mut()
                        .find(|r| r.method == e.method && r.layer == layer)
                        .ok_or_else(|| CliError::Usage("internal error: no row for a map".into()))?;
                    for (i, ((item, _), &class)) in batch.iter().zip(&e.classes).enumerate() {
                        for (sum, v) in row.sums.iter_mut().zip(&values) {
                            *sum += f64::from(v.values[i]);
                        }
                        row.count += 1;
                        self.records.push(Record {
                            item: item.clone(),
                            class,
                            rank: *rank,
                            method: e.method,
                            layer: layer.clone(),
                            values: values.iter().map(|v| v.values[i]).collect(),
                        });
                    }
                }
            }
        }
        for _ in &batch {
            progress.inc();
        }
        Ok(())
    }
}

/// The table: one line per method and layer, best first, each metric's direction under its name.
fn table(rows: &[Row], metrics: &[Metric], ranked_by: usize, images: usize, args: &EvaluateArgs) -> String {
    let mut cells: Vec<Vec<String>> = vec![
        std::iter::once("method".to_string())
            .chain(std::iter::once("layer".to_string()))
            .chain(metrics.iter().map(|m| m.name().to_string()))
            .collect(),
        ["", ""]
            .into_iter()
            .map(String::from)
            .chain(metrics.iter().map(|m| if m.higher_is_better() { "higher" } else { "lower" }.to_string()))
            .collect(),
    ];
    for r in rows {
        cells.push(
            [r.method.name().to_string(), r.layer.clone().unwrap_or_else(|| "-".into())]
                .into_iter()
                .chain(r.means().iter().map(|v| format!("{v:.4}")))
                .collect(),
        );
    }
    let widths: Vec<usize> = (0..cells[0].len())
        .map(|c| cells.iter().map(|row| row[c].chars().count()).max().unwrap_or(0))
        .collect();
    let mut out = String::new();
    for row in &cells {
        let line: Vec<String> = row
            .iter()
            .zip(&widths)
            .enumerate()
            .map(|(c, (cell, w))| if c < 2 { format!("{cell:<w$}") } else { format!("{cell:>w$}") })
            .collect();
        out.push_str(line.join("  ").trim_end());
        out.push('\n');
    }
    let per = match (args.cam.class, args.cam.top) {
        _ if args.cam.target != crate::targets::TargetKind::Class => {
            format!("--target {}", crate::targets::score_name(&args.cam))
        }
        (Some(c), _) => format!("class {c}"),
        (None, Some(k)) => format!("each of the top-{k} classes"),
        (None, None) => "the top-1 class".into(),
    };
    out.push_str(&format!(
        "best first by {} ({} is better); mean over {images} images, {per} ({}); ROAD noise {}, seed {}\n",
        metrics[ranked_by],
        if metrics[ranked_by].higher_is_better() { "higher" } else { "lower" },
        if args.cam.softmax { "softmax probability" } else { "logit" },
        args.road_noise,
        args.cam.seed,
    ));
    out
}

/// `items` without repeats, in order.
fn unique<T: PartialEq>(items: Vec<T>) -> Vec<T> {
    let mut out: Vec<T> = Vec::with_capacity(items.len());
    for item in items {
        if !out.contains(&item) {
            out.push(item);
        }
    }
    out
}
