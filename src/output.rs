//! Renders and writes the pictures, and reports what was done (text or JSON on stdout).

use std::path::{Path, PathBuf};

use image::RgbImage;
use serde_json::{json, Value};

use crate::backend::LoadedModel;
use crate::cli::ExplainArgs;
use crate::error::CliError;
use crate::explain::{final_maps, final_stack, MapResult, Results};

/// Paths written, in the order of `Results::maps` / `Results::inputs`.
pub struct Written {
    /// `(overlay, heatmap)` per map.
    pub maps: Vec<(PathBuf, PathBuf)>,
    /// One comparison grid per input.
    pub grids: Vec<PathBuf>,
    pub npy: Option<PathBuf>,
}

/// File name stem of a map: `chelsea.blocks.6.gradcam`, with `.combined` in place of the layer
/// for the combination of several layers, and `.c285` appended when `--top` chose the class.
fn map_stem(results: &Results, map: &MapResult) -> String {
    let layer = map.layer.as_deref().unwrap_or("combined");
    let class = map.rank.map(|_| format!(".c{}", map.class)).unwrap_or_default();
    format!("{}.{layer}.{}{class}", results.inputs[map.image].name, map.method)
}

/// Renders every picture in memory, then writes them all; when a write fails, the files
/// already written are removed again, so a failed run leaves nothing behind.
pub fn write_all(results: &Results, args: &ExplainArgs) -> Result<Written, CliError> {
    let colormap = args.colormap.colormap();
    let mut files: Vec<(PathBuf, RgbImage)> = Vec::new();
    let mut written = Written { maps: Vec::new(), grids: Vec::new(), npy: args.npy_out.clone() };
    let mut overlays: Vec<RgbImage> = Vec::with_capacity(results.maps.len());
    for map in &results.maps {
        let input = &results.inputs[map.image];
        let overlay = gradcam_viz::overlay(&input.picture, map.map.view(), colormap, args.alpha)?;
        let heatmap = match &map.origin {
            Some(origin) => {
                let (h, w) = map.map.dim();
                gradcam_viz::origin_view(origin.view(), h, w, colormap)?
            }
            None => colormap.apply(map.map.view()),
        };
        let stem = map_stem(results, map);
        let paths =
            (args.out.join(format!("{stem}.overlay.png")), args.out.join(format!("{stem}.heatmap.png")));
        files.push((paths.0.clone(), overlay.clone()));
        files.push((paths.1.clone(), heatmap));
        overlays.push(overlay);
        written.maps.push(paths);
    }
    for (index, input) in results.inputs.iter().enumerate() {
        // One row per class and layer (the combination last): the photo labelled with both,
        // then one overlay per method.
        let mut rows: Vec<(Option<usize>, Option<&str>)> = Vec::new();
        for map in results.maps.iter().filter(|m| m.image == index) {
            let key = (map.rank, map.layer.as_deref());
            if !rows.contains(&key) {
                rows.push(key);
            }
        }
        rows.sort_by_key(|(rank, layer)| {
            (*rank, layer.map_or(usize::MAX, |l| results.layers.iter().position(|x| x == l).unwrap_or(0)))
        });
        let mut cells = Vec::new();
        for (rank, layer) in rows {
            let in_row = |m: &&(&MapResult, &RgbImage)| {
                m.0.image == index && m.0.rank == rank && m.0.layer.as_deref() == layer
            };
            let row: Vec<(&MapResult, &RgbImage)> = results.maps.iter().zip(&overlays).collect();
            let row: Vec<&(&MapResult, &RgbImage)> = row.iter().filter(in_row).collect();
            let class = row[0].0.class;
            let class_label = match results.class_names.get(class) {
                Some(name) => format!("{class} {name}"),
                None => format!("class {class}"),
            };
            cells.push((
                format!("{}: {} | {class_label}", input.name, layer.unwrap_or("combined")),
                input.picture.clone(),
            ));
            for method in &results.methods {
                if let Some((_, overlay)) = row.iter().find(|(m, _)| m.method == *method) {
                    cells.push((method.to_string(), (*overlay).clone()));
                }
            }
        }
        let grid = gradcam_viz::grid(&cells, results.methods.len() + 1)?;
        let path = args.out.join(format!("{}.grid.png", input.name));
        files.push((path.clone(), grid));
        written.grids.push(path);
    }

    let out_existed = args.out.is_dir();
    std::fs::create_dir_all(&args.out)
        .map_err(|source| CliError::Write { path: args.out.clone(), source })?;
    let mut done: Vec<PathBuf> = Vec::new();
    let result = (|| {
        for (path, picture) in &files {
            gradcam_viz::save_image(path, picture)?;
            done.push(path.clone());
        }
        if let Some(path) = &args.npy_out {
            write_npy_atomic(path, &final_stack(results))?;
        }
        Ok(())
    })();
    if let Err(err) = result {
        for path in &done {
            let _ = std::fs::remove_file(path);
        }
        if !out_existed {
            // Only removes it when empty: never anything the user put there meanwhile.
            let _ = std::fs::remove_dir(&args.out);
        }
        return Err(err);
    }
    Ok(written)
}

/// Writes to a temporary file next to `path`, then renames it into place.
fn write_npy_atomic(path: &Path, array: &ndarray::Array3<f32>) -> Result<(), CliError> {
    let write_err = |source| CliError::Write { path: path.to_path_buf(), source };
    if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
        std::fs::create_dir_all(parent).map_err(write_err)?;
    }
    let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    let tmp = path.with_file_name(format!(".{name}.{}.tmp", std::process::id()));
    let result = ndarray_npy::write_npy(&tmp, array)
        .map_err(|e| std::io::Error::other(e.to_string()))
        .and_then(|()| std::fs::rename(&tmp, path));
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result.map_err(write_err)
}

/// Prints the summary: human-readable text, or with `--json` one JSON document and nothing else.
pub fn report(
    results: &Results,
    loaded: &LoadedModel,
    written: &Written,
    args: &ExplainArgs,
) -> Result<(), CliError> {
    if args.json {
        println!("{}", serde_json::to_string_pretty(&summary(results, loaded, written, args)).expect("json"));
        return Ok(());
    }
    let model_name = loaded.arch.as_deref().unwrap_or("model");
    println!(
        "model    {model_name} on {} ({}): {}",
        loaded.backend.feature(),
        loaded.device,
        loaded.path.display()
    );
    if results.auto_layer {
        println!(
            "layer    {} (chosen automatically; `gradcam layers` lists the others, --layer picks one)",
            results.layers[0]
        );
    } else {
        println!("layers   {}", results.layers.join(", "));
    }
    let methods: Vec<String> = results.methods.iter().map(|m| m.to_string()).collect();
    println!("methods  {}", methods.join(", "));
    for (input, predictions) in results.inputs.iter().zip(&results.predictions) {
        println!();
        match input.npy_index {
            Some(i) => println!("{}  ({} [{i}])", input.name, input.source.display()),
            None => println!("{}  ({})", input.name, input.source.display()),
        }
        for p in predictions.iter().take(5) {
            let name = results.class_names.get(p.class).unwrap_or("");
            println!("  {:>5}  {:<32} {:>6.2}%  logit {:.3}", p.class, name, 100.0 * p.probability, p.logit);
        }
    }
    println!();
    let count = 2 * written.maps.len() + written.grids.len();
    println!("wrote {count} pictures to {}/", args.out.display());
    for grid in &written.grids {
        println!("  {}  (every map side by side)", grid.display());
    }
    let shown = 8;
    for (overlay, heatmap) in written.maps.iter().take(shown) {
        println!("  {}  {}", overlay.display(), heatmap.display());
    }
    if written.maps.len() > shown {
        println!("  ... and {} more overlay/heatmap pairs", written.maps.len() - shown);
    }
    if let Some(npy) = &written.npy {
        println!(
            "wrote the final maps ({} x H x W, f32 in [0, 1]) to {}",
            final_maps(results).count(),
            npy.display()
        );
    }
    Ok(())
}

fn summary(results: &Results, loaded: &LoadedModel, written: &Written, args: &ExplainArgs) -> Value {
    let npy_index = |map: &MapResult| final_maps(results).position(|m| std::ptr::eq(m, map));
    let images: Vec<Value> = results
        .inputs
        .iter()
        .enumerate()
        .map(|(index, input)| {
            let predictions: Vec<Value> = results.predictions[index]
                .iter()
                .take(5)
                .map(|p| {
                    json!({"class": p.class, "name": results.class_names.get(p.class),
                           "logit": p.logit, "probability": p.probability})
                })
                .collect();
            let maps: Vec<Value> = results
                .maps
                .iter()
                .zip(&written.maps)
                .filter(|(m, _)| m.image == index)
                .map(|(m, (overlay, heatmap))| {
                    json!({"class": m.class, "class_name": results.class_names.get(m.class),
                           "layer": m.layer, "method": m.method.name(),
                           "overlay": overlay, "heatmap": heatmap,
                           "npy_index": if written.npy.is_some() { npy_index(m) } else { None }})
                })
                .collect();
            json!({"name": input.name, "input": input.source, "npy_index": input.npy_index,
                   "input_size": [input.tensor.dim().1, input.tensor.dim().2],
                   "predictions": predictions, "maps": maps, "grid": written.grids[index]})
        })
        .collect();
    json!({
        "backend": loaded.backend.feature(),
        "model": loaded.path,
        "arch": loaded.arch,
        "device": loaded.device,
        "num_classes": results.num_classes,
        "layers": results.layers,
        "layer_chosen_automatically": results.auto_layer,
        "methods": results.methods.iter().map(|m| m.name()).collect::<Vec<_>>(),
        "target": if args.softmax { "softmax" } else { "logit" },
        "out_dir": args.out,
        "npy_out": written.npy,
        "images": images,
    })
}
