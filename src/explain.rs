//! `gradcam explain`: a stream of images through four stages, each on its own threads with a
//! small bounded queue between them, so memory depends on the batch size and not on how many
//! images there are:
//!
//! read (decode + resize, [`crate::read`]) → compute (the model in batches,
//! [`crate::compute`]) → render (pictures, [`crate::render`]) → write (files placed together,
//! manifest, [`crate::write`]).

use std::collections::HashSet;
use std::io::IsTerminal;
use std::path::PathBuf;
use std::sync::mpsc::sync_channel;
use std::sync::Arc;

use gradcam_core::{CamOptions, Method};
use serde_json::json;

use crate::backend;
use crate::cli::{ExplainArgs, PictureKind};
use crate::compute::{self, Outcome, Settings, TOP_PREDICTIONS};
use crate::error::CliError;
use crate::layers::choose_layers;
use crate::manifest::{self, Manifest};
use crate::npy_out::NpyOut;
use crate::plan::{self, Plan, Source};
use crate::pool;
use crate::progress::Progress;
use crate::read::Reader;
use crate::render::Renderer;
use crate::report::{path_json, run_summary, Header, Reporter};
use crate::stop::Stop;
use crate::write::{self, Writer, Written};

/// How a run ended when it did not fail.
pub enum Ending {
    /// Every image was explained.
    Complete,
    /// A signal stopped it; the exit status to use.
    Interrupted(u8),
}

/// The header's line on smoothing (empty without it): what each flag does to these methods.
fn smoothing_note(methods: &[Method], aug: bool, eigen: bool) -> String {
    let mut parts = Vec::new();
    if aug {
        parts.push("--aug-smooth: each map is the mean over 6 augmented copies".to_string());
    }
    if eigen {
        let (smoothed, ignored): (Vec<Method>, Vec<Method>) =
            methods.iter().partition(|m| m.supports_eigen_smooth());
        let names = |list: &[Method]| list.iter().map(|m| m.name()).collect::<Vec<_>>().join(", ");
        let mut part = format!(
            "--eigen-smooth: {}",
            if smoothed.is_empty() { "no method".into() } else { names(&smoothed) }
        );
        if !ignored.is_empty() {
            part.push_str(&format!(" ({} ignore it: nothing to reduce)", names(&ignored)));
        }
        parts.push(part);
    }
    parts.join("; ")
}

pub fn run(args: ExplainArgs, stop: &Stop) -> Result<Ending, CliError> {
    let out = output_folder(&args);
    if out.exists() && !out.is_dir() {
        return Err(CliError::OutIsFile { path: out });
    }
    // --mask and --concept are read before the model loads.
    let targets = crate::targets::targets(&args.cam)?;
    let manifest = match &args.manifest {
        Some(path) => {
            let mode = match (args.resume, args.overwrite) {
                (true, _) => manifest::Mode::Append,
                (false, true) => manifest::Mode::Replace,
                (false, false) => manifest::Mode::Fresh,
            };
            Some(Manifest::prepare(path, mode)?)
        }
        None => None,
    };
    if args.resume && args.npy_out.is_some() {
        return Err(CliError::Usage(
            "--npy-out holds the maps of one run, so it cannot be combined with --resume: give each run its own --npy-out without --resume, or use the pictures".into(),
        ));
    }
    let done = match (&args.manifest, args.resume) {
        (Some(path), true) => manifest::done(path)?,
        _ => HashSet::new(),
    };
    let inputs_given =
        if args.inputs.is_empty() { vec![crate::assets::shipped_images()] } else { args.inputs.clone() };
    let plan = plan::gather(&inputs_given, &out, args.shard, &done)?;
    let mut loaded = backend::load(&args.model)?;
    let input_files: Vec<PathBuf> = unique_paths(&plan);
    let npy = match &args.npy_out {
        Some(path) => {
            let (h, w) = map_size(&plan, loaded.input_size)?;
            let shape = match npy_channels(&args.cam.methods())? {
                Some(channels) => vec![channels, h, w],
                None => vec![h, w],
            };
            Some(NpyOut::prepare(path, shape, args.overwrite, &input_files)?)
        }
        None => None,
    };
    let (layers, auto_layer) = choose_layers(&mut loaded, &args.cam.layers)?;
    let mut pictures: Vec<PictureKind> = Vec::new();
    for p in &args.pictures {
        if !pictures.contains(p) {
            pictures.push(*p);
        }
    }
    let renderer_for = |methods: &[Method]| {
        Renderer::new(
            out.clone(),
            args.colormap.colormap(),
            args.alpha,
            pictures.clone(),
            methods.to_vec(),
            layers.clone(),
            npy.is_some(),
        )
    };
    // A resumed run meets the files of an image a kill interrupted: those fail one by one.
    // Checked before `--method auto` ranks anything, for every method it may choose.
    if !args.overwrite && !args.resume {
        let possible = args.cam.methods();
        refuse_existing_outputs(&plan, &renderer_for(&possible), &layers, &possible, args.cam.top.is_some())?;
    }
    // `--method auto`: ROAD ranks the candidates on these images first (each shard on its own).
    let auto_method = match args.cam.auto_method() {
        true => Some(crate::evaluate::pick_method(&mut loaded, &plan.items, &layers, (&args.cam, &targets))?),
        false => None,
    };
    let mut methods: Vec<Method> = auto_method.iter().map(|(m, _)| *m).collect();
    for m in args.cam.named_methods() {
        if !methods.contains(&m) {
            methods.push(m);
        }
    }
    let renderer = renderer_for(&methods);

    let progress = Progress::new(!args.json && std::io::stderr().is_terminal(), plan.items.len());
    let header = Header {
        backend: loaded.backend.feature(),
        model: loaded.path.display().to_string(),
        device: loaded.device,
        auto_layer,
        methods: methods.iter().map(|m| m.to_string()).collect(),
        smoothing: smoothing_note(&methods, args.cam.aug_smooth, args.cam.eigen_smooth),
        auto_method: auto_method.map(|(m, score)| {
            format!(
                "{m} (best road-combined, {score:.4}, of {} candidates on {} images; `gradcam evaluate --method auto` shows them all)",
                args.cam.auto_candidates().len(),
                plan.items.len()
            )
        }),
    };
    let top = args.cam.top.map_or(1, |k| k as usize);
    let settings = Settings {
        layers: layers.clone(),
        methods: methods.clone(),
        targets,
        options: CamOptions {
            progress: passes_callback(&progress),
            cancel: Some(stop.cancel()),
            ..args.cam.options()
        },
        batch: args.cam.batch as usize,
        keep: TOP_PREDICTIONS.max(top),
    };
    let inputs = if args.overwrite {
        input_files.iter().filter_map(|p| write::identity(p.as_path())).collect()
    } else {
        HashSet::new()
    };
    let found = plan.found;
    let skipped = (plan.resumed, plan.own_outputs);
    let to_do = plan.items.len();
    let mut writer = Writer {
        out,
        overwrite: args.overwrite,
        manifest,
        npy,
        inputs,
        renderer: &renderer,
        reporter: Reporter::new(args.json, header, progress.clone()),
        progress: progress.clone(),
        stop: stop.clone(),
        model_size: loaded.input_size,
        written: Written::default(),
    };

    let workers = std::thread::available_parallelism().map_or(2, |n| n.get()).clamp(1, 4);
    let reader = Reader::new(loaded.input_size, args.cam.max_pixels, args.max_picture_side);
    let model = loaded.model.as_mut();
    let started = std::time::Instant::now();
    let (compute_result, write_result) = std::thread::scope(|s| {
        let feed_stop = stop.clone();
        let items = plan.items.into_iter().take_while(move |_| !feed_stop.requested());
        let loaded_items = pool::ordered(s, items, workers, move |item| reader.read(item));
        let (tx, rx) = sync_channel::<Outcome>(settings.batch);
        let renderer = &renderer;
        let rendered = pool::ordered(s, rx.into_iter(), workers, move |outcome| match outcome {
            Outcome::Done(result) => renderer.render(*result),
            Outcome::Failed(f) => Err(f),
        });
        let writer = &mut writer;
        let write_stop = stop.clone();
        let write_thread = s.spawn(move || {
            let result = writer.run(rendered);
            if result.is_err() {
                write_stop.abort();
            }
            result
        });
        let compute_result = compute::run(model, loaded_items, &settings, tx, stop);
        if compute_result.is_err() {
            stop.abort();
        }
        let write_result = write_thread.join().unwrap_or_else(|_| {
            Err(CliError::Usage("internal error: the writer stopped unexpectedly".into()))
        });
        (compute_result, write_result)
    });
    progress.finish();
    let elapsed = started.elapsed();

    let Writer { manifest, npy, reporter, written, out, .. } = writer;
    let (explain_time, compute_error) = match compute_result {
        Ok(t) => (t, None),
        Err(e) => (std::time::Duration::ZERO, Some(e)),
    };
    let failure = write_result.err().or(compute_error);
    let interrupted = stop.signal();
    // The .npy is complete only when every image was done.
    let npy_written = match (npy, &failure, interrupted) {
        (Some(npy), None, None) => npy.finish()?,
        _ => None,
    };
    if written.created_out && written.images == 0 {
        // Only removes it when empty: never anything the user put there meanwhile.
        let _ = std::fs::remove_dir(&out);
    }
    let manifest_path = manifest.as_ref().map(|m| m.path().to_path_buf());

    if let Some(err) = failure {
        if written.images > 0 {
            let record =
                manifest_path.as_ref().map_or(String::new(), |m| format!(" (listed in {})", m.display()));
            progress.eprintln(&format!(
                "note: {} of {to_do} images were written before the error{record}; they are complete",
                written.images
            ));
        }
        return Err(err);
    }
    if let Some((signal, status)) = interrupted {
        let record = match &manifest_path {
            Some(m) => format!("they are listed in {}; add --resume to continue", m.display()),
            None => "give --manifest FILE next time to be able to --resume".into(),
        };
        progress.eprintln(&format!(
            "stopped by {signal}: {} of {to_do} images written to {} ({} pictures, every image's set complete); {record}",
            written.images,
            out.display(),
            written.pictures
        ));
        return Ok(Ending::Interrupted(status));
    }

    let fields = json!({
        "aug_smooth": args.cam.aug_smooth,
        "method_chosen_automatically": auto_method.map(|(m, score)| json!({"method": m.name(), "road_combined": score})),
        // The methods --eigen-smooth changed (the others have no weighted activations).
        "eigen_smooth": methods
            .iter()
            .filter(|m| args.cam.eigen_smooth && m.supports_eigen_smooth())
            .map(|m| m.name())
            .collect::<Vec<_>>(),
        "out_dir": path_json(&out),
        "npy_out": npy_written.as_ref().map(|(p, _)| path_json(p)),
        "manifest": manifest_path.as_deref().map(path_json),
        "inputs_found": found,
        "skipped_as_done": skipped.0,
        "skipped_own_outputs": skipped.1,
        // From the first image read to the last file written (the model was loaded before), and
        // the part of it spent in the model's explain calls.
        "timing": {"seconds": elapsed.as_secs_f64(), "explain_seconds": explain_time.as_secs_f64()},
    });
    let summary =
        run_summary(&loaded, (&layers, auto_layer), &methods, crate::targets::score_name(&args.cam), fields);
    let closing = closing_text(&written, &out, &npy_written, manifest_path.as_deref(), skipped, to_do);
    reporter.finish(summary, &closing);
    if written.failed > 0 {
        return Err(CliError::SomeFailed { failed: written.failed, total: to_do });
    }
    Ok(Ending::Complete)
}

fn closing_text(
    written: &Written,
    out: &std::path::Path,
    npy: &Option<(PathBuf, usize)>,
    manifest: Option<&std::path::Path>,
    (resumed, own): (usize, usize),
    to_do: usize,
) -> String {
    let mut text =
        format!("wrote {} pictures of {} images to {}/\n", written.pictures, written.images, out.display());
    for path in &written.examples {
        text.push_str(&format!("  {}\n", path.display()));
    }
    if written.pictures > written.examples.len() {
        text.push_str(&format!("  ... and {} more\n", written.pictures - written.examples.len()));
    }
    if let Some((path, n)) = npy {
        text.push_str(&format!("wrote the final maps ({n} x H x W, f32 in [0, 1]) to {}\n", path.display()));
    }
    if let Some(m) = manifest {
        text.push_str(&format!("recorded every image in {}\n", m.display()));
    }
    if resumed > 0 {
        text.push_str(&format!("skipped {resumed} images the manifest lists as done\n"));
    }
    if own > 0 {
        text.push_str(&format!("skipped {own} pictures of earlier runs found among the inputs\n"));
    }
    if to_do == 0 {
        text.push_str("nothing left to do\n");
    }
    text
}

/// Every distinct input file.
fn unique_paths(plan: &Plan) -> Vec<PathBuf> {
    let mut seen = HashSet::new();
    plan.items.iter().filter(|i| seen.insert(i.path.clone())).map(|i| i.path.clone()).collect()
}

/// The channels of each map `--npy-out` stacks: `Some(3)` for a pixel-space method, which must
/// then be the only one (a `.npy` holds maps of one shape).
fn npy_channels(methods: &[Method]) -> Result<Option<usize>, CliError> {
    match methods {
        [only] if only.is_pixel_space() => Ok(Some(3)),
        _ if methods.iter().any(|m| m.is_pixel_space()) => Err(CliError::Usage(format!(
            "--npy-out holds maps of one shape: {} gives (3, H, W) maps and the others (H, W) ones; give it alone with --npy-out, or run the methods separately",
            methods.iter().filter(|m| m.is_pixel_space()).map(|m| m.to_string()).collect::<Vec<_>>().join(" and ")
        ))),
        _ => Ok(None),
    }
}

/// The size of every final map (the model input's), which `--npy-out` needs to be one.
fn map_size(plan: &Plan, model: (usize, usize)) -> Result<(usize, usize), CliError> {
    let hw = |item: &plan::Item| match &item.source {
        Source::Npy { batch, .. } => batch.image_hw(),
        Source::Image => model,
    };
    let Some(first) = plan.items.first() else { return Ok(model) };
    match plan.items.iter().find(|i| hw(i) != hw(first)) {
        None => Ok(hw(first)),
        Some(other) => Err(CliError::Usage(format!(
            "--npy-out stacks maps of one size, but {} is {:?} and {} is {:?}",
            first.name,
            hw(first),
            other.name,
            hw(other)
        ))),
    }
}

/// Default output folder, when `--out` is not given: `gradcam-out`, unless it already holds files
/// and the run is not meant to continue or replace them (`--resume`, `--overwrite`): then the first
/// of `gradcam-out-2`, `gradcam-out-3`, … that does not exist. So running the same command twice
/// keeps both runs' pictures.
fn output_folder(args: &ExplainArgs) -> PathBuf {
    const DEFAULT: &str = "gradcam-out";
    if let Some(out) = &args.out {
        return out.clone();
    }
    let unused = |p: &std::path::Path| match std::fs::read_dir(p) {
        Ok(mut entries) => entries.next().is_none(),
        Err(_) => std::fs::symlink_metadata(p).is_err(),
    };
    let first = PathBuf::from(DEFAULT);
    if args.resume || args.overwrite || unused(&first) {
        return first;
    }
    (2..)
        .map(|n| PathBuf::from(format!("{DEFAULT}-{n}")))
        .find(|p| std::fs::symlink_metadata(p).is_err())
        .unwrap_or(first)
}

/// Refuses before any work when outputs of the run already exist (`--overwrite` replaces them):
/// every image's grid, and without `--top` (whose names hold the class) every map's files.
fn refuse_existing_outputs(
    plan: &Plan,
    renderer: &Renderer,
    layers: &[String],
    methods: &[Method],
    top: bool,
) -> Result<(), CliError> {
    let several = layers.len() > 1;
    let map_layers: Vec<Option<&str>> =
        layers.iter().map(|l| Some(l.as_str())).chain(several.then_some(None)).collect();
    let mut existing = 0;
    let mut first = None;
    for item in &plan.items {
        let mut candidates = Vec::new();
        if renderer.pictures.contains(&PictureKind::Grid) {
            candidates.push(renderer.grid_path(&item.name));
        }
        if !top {
            for &layer in &map_layers {
                for &method in methods {
                    let layer = if method.reads_layers() { layer } else { None };
                    if method.is_pixel_space() {
                        // One picture, named by the Grad-CAM layer of guided Grad-CAM.
                        candidates.push(renderer.pixels_path(&item.name, layer, method, None));
                        continue;
                    }
                    let [overlay, heatmap] = renderer.map_paths(&item.name, layer, method, None);
                    if renderer.pictures.contains(&PictureKind::Overlay) {
                        candidates.push(overlay);
                    }
                    if renderer.pictures.contains(&PictureKind::Heatmap) {
                        candidates.push(heatmap);
                    }
                }
            }
        }
        if let Some(path) = candidates.into_iter().find(|p| std::fs::symlink_metadata(p).is_ok()) {
            existing += 1;
            first.get_or_insert(path);
        }
    }
    match first {
        None => Ok(()),
        Some(path) => Err(CliError::Exists {
            path,
            hint: format!(
                "{existing} of the {} images already have pictures in {}: add --overwrite to replace them, --manifest FILE --resume to skip images already done, or choose another --out",
                plan.items.len(),
                renderer.out.display()
            ),
        }),
    }
}

/// ScoreCAM's and AblationCAM's extra forward passes, shown next to the bar.
fn passes_callback(progress: &Progress) -> Option<gradcam_core::Progress> {
    let progress = progress.clone();
    Some(Arc::new(move |done, total| progress.message(format!("{done}/{total} masked passes"))))
}
