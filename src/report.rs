//! What the run tells: per image as it is done (text on stdout, or kept for the final JSON), the
//! manifest's records, errors and warnings on stderr, and the closing summary.

use std::io::Write;
use std::path::Path;

use gradcam_core::Method;
use serde_json::{json, Map, Value};

use crate::assets::ClassNames;
use crate::backend::LoadedModel;
use crate::compute::TOP_PREDICTIONS;
use crate::progress::Progress;
use crate::read::Failed;
use crate::render::Rendered;

/// A path as JSON: a string, lossily converted when it is not UTF-8 (never a panic).
pub fn path_json(path: &Path) -> Value {
    Value::String(path.to_string_lossy().into_owned())
}

/// One image's record: what the manifest line and the JSON summary say about it.
/// `npy_first` is the `--npy-out` index of its first final map.
pub fn image_record(
    r: &Rendered,
    names: &ClassNames,
    npy_first: Option<usize>,
    input_hw: (usize, usize),
) -> Value {
    let predictions: Vec<Value> = r
        .predictions
        .iter()
        .take(TOP_PREDICTIONS.max(r.maps.iter().filter_map(|m| m.rank).max().map_or(0, |k| k + 1)))
        .map(|p| json!({"class": p.class, "name": names.get(p.class), "logit": p.logit, "probability": p.probability}))
        .collect();
    let mut next_npy = npy_first;
    let maps: Vec<Value> = r
        .maps
        .iter()
        .map(|m| {
            let npy_index = if m.is_final {
                let i = next_npy;
                next_npy = next_npy.map(|n| n + 1);
                i
            } else {
                None
            };
            json!({
                "class": m.class,
                "class_name": names.get(m.class),
                "rank": m.rank,
                "layer": m.layer.as_ref().map(|(l, _)| l),
                "layout": m.layer.as_ref().map(|(_, layout)| layout.name()),
                "method": m.method.name(),
                "overlay": m.overlay.as_deref().map(path_json),
                "heatmap": m.heatmap.as_deref().map(path_json),
                "pixels": m.pixels.as_deref().map(path_json),
                "npy_index": npy_index,
            })
        })
        .collect();
    let files: Vec<Value> = r.files.iter().map(|(p, _)| path_json(p)).collect();
    json!({
        "name": r.item.name,
        "input": r.item.input(),
        "npy_index": r.item.npy_index(),
        "input_size": [input_hw.0, input_hw.1],
        "predictions": predictions,
        "target_score": r.target_score,
        "layers": r.layouts.iter().map(|(l, layout)| json!({"layer": l, "layout": layout.name()})).collect::<Vec<_>>(),
        "maps": maps,
        "grid": r.grid.as_deref().map(path_json),
        "files": files,
        "warnings": r.warnings,
    })
}

/// The run's header facts, printed once the first image is done (the layouts are known then).
pub struct Header {
    pub backend: &'static str,
    pub model: String,
    pub device: &'static str,
    pub auto_layer: bool,
    pub methods: Vec<String>,
    /// What --aug-smooth / --eigen-smooth do in this run (empty without them).
    pub smoothing: String,
    /// `--method auto`'s choice, said.
    pub auto_method: Option<String>,
}

/// A command's JSON summary: the fields `explain` and `evaluate` share (what ran, on which layers,
/// with which methods, for which score), then the command's own `fields`.
pub fn run_summary(
    loaded: &LoadedModel,
    (layers, auto_layer): (&[String], bool),
    methods: &[Method],
    target: &str,
    fields: Value,
) -> Value {
    let shared = json!({
        "backend": loaded.backend.feature(),
        "model": path_json(&loaded.path),
        "arch": loaded.arch,
        "device": loaded.device,
        "layers": layers,
        "layer_chosen_automatically": auto_layer,
        "methods": methods.iter().map(|m| m.name()).collect::<Vec<_>>(),
        "target": target,
    });
    let mut summary = match shared {
        Value::Object(map) => map,
        _ => Map::new(),
    };
    if let Value::Object(fields) = fields {
        summary.extend(fields);
    }
    Value::Object(summary)
}

/// Where the per-image output goes.
pub struct Reporter {
    json: bool,
    header: Header,
    header_done: bool,
    progress: Progress,
    pub images: Vec<Value>,
    pub failed: Vec<Value>,
    pub layouts: Vec<(String, String)>,
}

impl Reporter {
    pub fn new(json: bool, header: Header, progress: Progress) -> Self {
        Reporter {
            json,
            header,
            header_done: false,
            progress,
            images: Vec::new(),
            failed: Vec::new(),
            layouts: Vec::new(),
        }
    }

    fn out(&self, text: &str) {
        self.progress.suspend(|| {
            // A closed stdout (`| head`) must not end the run half-way: the files are what counts.
            let _ = std::io::stdout().lock().write_all(text.as_bytes());
        });
    }

    /// One image done: its record (already written to the manifest) and its text.
    pub fn image(&mut self, r: &Rendered, record: Value, names: &ClassNames) {
        for w in &r.warnings {
            self.progress.eprintln(&format!("warning: {w}"));
        }
        if self.layouts.is_empty() {
            self.layouts =
                r.layouts.iter().map(|(l, layout)| (l.clone(), layout.name().to_string())).collect();
        }
        if self.json {
            self.images.push(record);
            return;
        }
        let mut text = String::new();
        if !self.header_done {
            text.push_str(&self.header_text());
            self.header_done = true;
        }
        text.push('\n');
        match r.item.npy_index() {
            Some(i) => text.push_str(&format!("{}  ({} [{i}])\n", r.item.name, r.item.path.display())),
            None => text.push_str(&format!("{}  ({})\n", r.item.name, r.item.path.display())),
        }
        if let Some(score) = &r.target_score {
            text.push_str(&format!("  {score}\n"));
        }
        for p in r.predictions.iter().take(TOP_PREDICTIONS) {
            let name = names.get(p.class).unwrap_or("");
            text.push_str(&format!(
                "  {:>5}  {:<32} {:>6.2}%  logit {:.3}\n",
                p.class,
                name,
                100.0 * p.probability,
                p.logit
            ));
        }
        let pictures = r.files.len();
        if let Some(grid) = &r.grid {
            text.push_str(&format!("  wrote {pictures} pictures, all side by side in {}\n", grid.display()));
        } else if let Some((first, _)) = r.files.first() {
            text.push_str(&format!("  wrote {pictures} pictures, e.g. {}\n", first.display()));
        }
        self.out(&text);
    }

    fn header_text(&self) -> String {
        let h = &self.header;
        let mut text = format!("{} backend, model {} on {}\n", h.backend, h.model, h.device);
        let layers: Vec<String> = self.layouts.iter().map(|(l, layout)| format!("{l} [{layout}]")).collect();
        if h.auto_layer {
            text.push_str(&format!(
                "layer    {} (chosen automatically; `gradcam layers` lists the others, --layer picks one)\n",
                layers.join(", ")
            ));
        } else {
            text.push_str(&format!("layers   {}\n", layers.join(", ")));
        }
        text.push_str(&format!("methods  {}\n", h.methods.join(", ")));
        if let Some(auto) = &h.auto_method {
            text.push_str(&format!("auto     {auto}\n"));
        }
        if !h.smoothing.is_empty() {
            text.push_str(&format!("smooth   {}\n", h.smoothing));
        }
        text
    }

    /// One image failed: said on stderr at once, listed in the JSON.
    pub fn failed(&mut self, f: &Failed) {
        self.progress.eprintln(&format!("error: {}", crate::error_chain(&f.error)));
        self.failed.push(failure_json(f));
    }

    /// The closing lines (text), or the whole JSON document.
    pub fn finish(mut self, summary: Value, closing: &str) {
        if self.json {
            let mut doc = summary;
            if let Some(map) = doc.as_object_mut() {
                let layouts: serde_json::Map<String, Value> = std::mem::take(&mut self.layouts)
                    .into_iter()
                    .map(|(l, layout)| (l, Value::String(layout)))
                    .collect();
                map.insert("layouts".into(), Value::Object(layouts));
                map.insert("images".into(), Value::Array(std::mem::take(&mut self.images)));
                map.insert("failed".into(), Value::Array(std::mem::take(&mut self.failed)));
            }
            let text = serde_json::to_string_pretty(&doc).unwrap_or_default();
            self.out(&format!("{text}\n"));
        } else {
            let mut text = String::new();
            if !self.header_done && !self.layouts.is_empty() {
                text.push_str(&self.header_text());
            }
            text.push('\n');
            text.push_str(closing);
            self.out(&text);
        }
    }
}

/// An image that failed, as the JSON summaries list it under `"failed"`.
pub fn failure_json(f: &Failed) -> Value {
    json!({
        "name": f.item.name,
        "input": f.item.input(),
        "npy_index": f.item.npy_index(),
        "error": crate::error_chain(&f.error),
    })
}
