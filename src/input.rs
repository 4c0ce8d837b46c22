//! Turns the INPUT arguments into model-ready tensors, reading everything before any work starts
//! so that a bad file fails the run before anything is computed or written.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use image::RgbImage;
use ndarray::{Array3, Axis};

use crate::error::CliError;
use gradcam_viz::Preprocess;

/// Extensions looked for in folders.
const IMAGE_EXTENSIONS: &[&str] = &["png", "jpg", "jpeg", "bmp", "gif", "tif", "tiff", "webp"];

/// One image to explain.
pub struct Input {
    /// Unique short name used in output file names (`chelsea`, `batch.0`).
    pub name: String,
    /// The file it came from.
    pub source: PathBuf,
    /// Index inside a `.npy` batch, when it came from one.
    pub npy_index: Option<usize>,
    /// The model input `(3, H, W)`, preprocessed.
    pub tensor: Array3<f32>,
    /// The picture the heatmap is laid over: the photo at its own resolution, or for `.npy`
    /// inputs the tensor with the ImageNet normalisation undone.
    pub picture: RgbImage,
}

/// Reads every input: image files, folders of images (sorted, not recursive) and `.npy`
/// tensors `(N, 3, H, W)` used as they are. Images are resized to `size` and normalised.
pub fn gather(paths: &[PathBuf], size: (usize, usize)) -> Result<Vec<Input>, CliError> {
    let mut files = Vec::new();
    for path in paths {
        if path.is_dir() {
            let mut found: Vec<PathBuf> = std::fs::read_dir(path)
                .map_err(|source| CliError::ReadFolder { path: path.clone(), source })?
                .filter_map(|entry| entry.ok().map(|e| e.path()))
                .filter(|p| p.is_file() && has_extension(p, IMAGE_EXTENSIONS))
                .collect();
            if found.is_empty() {
                return Err(CliError::NoImages { path: path.clone() });
            }
            found.sort();
            files.extend(found);
        } else if path.is_file() {
            files.push(path.clone());
        } else {
            return Err(CliError::MissingFile { what: "input", path: path.clone() });
        }
    }
    let preprocess = Preprocess::new(size.0, size.1);
    let mut inputs = Vec::new();
    for file in files {
        if has_extension(&file, &["npy"]) {
            inputs.extend(read_npy(&file, &preprocess)?);
        } else {
            let (picture, tensor) = preprocess.load(&file)?;
            inputs.push(Input { name: stem(&file), source: file, npy_index: None, tensor, picture });
        }
    }
    make_names_unique(&mut inputs);
    Ok(inputs)
}

/// A `.npy` batch, used as it is; its pictures are the tensors with the normalisation undone.
fn read_npy(path: &Path, preprocess: &Preprocess) -> Result<Vec<Input>, CliError> {
    let array = gradcam_viz::load_npy_batch(path)?;
    if array.iter().any(|v| !v.is_finite()) {
        return Err(CliError::BadNpy {
            path: path.to_path_buf(),
            message: "it holds NaN or infinite values".into(),
        });
    }
    let n = array.len_of(Axis(0));
    let base = stem(path);
    array
        .axis_iter(Axis(0))
        .enumerate()
        .map(|(i, t)| {
            Ok(Input {
                name: if n == 1 { base.clone() } else { format!("{base}.{i}") },
                source: path.to_path_buf(),
                npy_index: Some(i),
                picture: preprocess.picture(t)?,
                tensor: t.to_owned(),
            })
        })
        .collect()
}

fn has_extension(path: &Path, extensions: &[&str]) -> bool {
    path.extension()
        .and_then(|e| e.to_str())
        .is_some_and(|e| extensions.iter().any(|x| x.eq_ignore_ascii_case(e)))
}

fn stem(path: &Path) -> String {
    path.file_stem().map(|s| s.to_string_lossy().into_owned()).unwrap_or_else(|| "input".into())
}

/// Two inputs called `cat.png` in different folders must not overwrite each other's pictures:
/// the second becomes `cat-2`.
fn make_names_unique(inputs: &mut [Input]) {
    let mut seen: HashMap<String, usize> = HashMap::new();
    for input in inputs.iter_mut() {
        let count = seen.entry(input.name.clone()).or_insert(0);
        *count += 1;
        if *count > 1 {
            input.name = format!("{}-{count}", input.name);
        }
    }
}
