//! What a run explains: the INPUT arguments expanded into one item per image, each named uniquely
//! within the run, then narrowed by `--shard` and `--resume`. Only file names and `.npy` headers
//! are read here; pixels are read later, a few at a time ([`crate::read`]).

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use gradcam_viz::NpyBatch;

use crate::cli::{Shard, MAX_INPUT_SIDE};
use crate::error::CliError;

/// Extensions looked for in folders.
const IMAGE_EXTENSIONS: &[&str] = &["png", "jpg", "jpeg", "bmp", "gif", "tif", "tiff", "webp"];

/// Endings of the pictures this tool writes: skipped when a folder input is the output folder.
pub const OUTPUT_ENDINGS: &[&str] = &[".overlay.png", ".heatmap.png", ".grid.png", ".pixels.png"];

/// Where an item's pixels come from.
#[derive(Clone, Debug)]
pub enum Source {
    /// An image file.
    Image,
    /// Image `index` of a `.npy` batch, used as it is.
    Npy { batch: Arc<NpyBatch>, index: usize },
}

/// One image to explain.
#[derive(Clone, Debug)]
pub struct Item {
    /// Short name, unique in the run, that starts every output file's name (`chelsea`, `batch.0`).
    pub name: String,
    /// The file it comes from.
    pub path: PathBuf,
    pub source: Source,
}

impl Item {
    /// Index inside a `.npy` batch, when it comes from one.
    pub fn npy_index(&self) -> Option<usize> {
        match self.source {
            Source::Image => None,
            Source::Npy { index, .. } => Some(index),
        }
    }

    /// The input as the manifest records it (paths that are not UTF-8 are written lossily).
    pub fn input(&self) -> String {
        self.path.to_string_lossy().into_owned()
    }

    /// The input as messages name it: `photo.jpg`, or `batch.npy [3]`.
    pub fn label(&self) -> String {
        match self.npy_index() {
            Some(i) => format!("{} [{i}]", self.path.display()),
            None => self.path.display().to_string(),
        }
    }

    /// The key `--resume` and `--shard` identify the item by: its input path and `.npy` index.
    pub fn key(&self) -> String {
        key(&self.input(), self.npy_index())
    }
}

/// The identity of an input: path and `.npy` index.
pub fn key(input: &str, npy_index: Option<usize>) -> String {
    match npy_index {
        Some(i) => format!("{input}#{i}"),
        None => input.to_string(),
    }
}

/// The inputs of a run, and what was set aside.
pub struct Plan {
    /// The items this run explains, in input order.
    pub items: Vec<Item>,
    /// Every input found, before `--shard` and `--resume`.
    pub found: usize,
    /// Inputs `--resume` skipped because the manifest lists them.
    pub resumed: usize,
    /// Files in the output folder that are this tool's own pictures, not inputs.
    pub own_outputs: usize,
}

/// Expands the INPUT arguments: image files, folders of images (sorted, not recursive) and
/// `.npy` tensors `(N, 3, H, W)`; names the items; keeps `shard`'s share and drops `done`.
pub fn gather(
    paths: &[PathBuf],
    out_dir: &Path,
    shard: Option<Shard>,
    done: &HashSet<String>,
) -> Result<Plan, CliError> {
    let out_dir = std::fs::canonicalize(out_dir).ok();
    let mut files = Vec::new();
    let mut own_outputs = 0;
    for path in paths {
        let meta = std::fs::metadata(path).map_err(|e| missing("input", path, e))?;
        if meta.is_dir() {
            let is_out = out_dir.is_some() && std::fs::canonicalize(path).ok() == out_dir;
            let mut found = Vec::new();
            let entries = std::fs::read_dir(path)
                .map_err(|source| CliError::ReadFolder { path: path.clone(), source })?;
            for entry in entries {
                let entry = entry.map_err(|source| CliError::ReadFolder { path: path.clone(), source })?;
                let file = entry.path();
                // FIFOs, devices and sub-folders in a folder are not inputs.
                if !file.is_file() || !has_extension(&file, IMAGE_EXTENSIONS) {
                    continue;
                }
                if is_out && is_own_output(&file) {
                    own_outputs += 1;
                    continue;
                }
                found.push(file);
            }
            if found.is_empty() && own_outputs == 0 {
                return Err(CliError::NoImages { path: path.clone() });
            }
            found.sort();
            files.extend(found);
        } else {
            check_regular_file("input", path)?;
            files.push(path.clone());
        }
    }

    let mut items = Vec::new();
    for file in files {
        if has_extension(&file, &["npy"]) {
            let batch = NpyBatch::open(&file)?;
            let (h, w) = batch.image_hw();
            if h > MAX_INPUT_SIDE || w > MAX_INPUT_SIDE {
                return Err(CliError::BadNpy {
                    path: file,
                    message: format!(
                        "its images are {h}x{w}; at most {MAX_INPUT_SIDE} on a side is explained"
                    ),
                });
            }
            let batch = Arc::new(batch);
            let base = stem(&file);
            let n = batch.len();
            for index in 0..n {
                let name = if n == 1 { base.clone() } else { format!("{base}.{index}") };
                items.push(Item {
                    name,
                    path: file.clone(),
                    source: Source::Npy { batch: batch.clone(), index },
                });
            }
        } else {
            items.push(Item { name: stem(&file), path: file, source: Source::Image });
        }
    }
    make_names_unique(&mut items);

    let found = items.len();
    if let Some(shard) = shard {
        items.retain(|item| fnv1a(item.key().as_bytes()) % shard.count == shard.index);
    }
    let before = items.len();
    items.retain(|item| !done.contains(&item.key()));
    Ok(Plan { resumed: before - items.len(), items, found, own_outputs })
}

/// An error unless `path` is a regular file (or a link to one), saying what it is instead.
pub fn check_regular_file(what: &'static str, path: &Path) -> Result<(), CliError> {
    let meta = std::fs::metadata(path).map_err(|e| missing(what, path, e))?;
    if meta.is_file() {
        return Ok(());
    }
    let kind = file_kind(&meta);
    let hint = if what == "input" {
        "give an image file, a folder of images or a .npy tensor"
    } else {
        "give the model file"
    };
    Err(CliError::NotAFile { what, path: path.to_path_buf(), kind, hint })
}

fn file_kind(meta: &std::fs::Metadata) -> &'static str {
    #[cfg(unix)]
    {
        use std::os::unix::fs::FileTypeExt;
        let t = meta.file_type();
        if t.is_fifo() {
            return "a FIFO (named pipe)";
        }
        if t.is_char_device() || t.is_block_device() {
            return "a device";
        }
        if t.is_socket() {
            return "a socket";
        }
    }
    if meta.is_dir() {
        "a folder"
    } else {
        "not a regular file"
    }
}

fn missing(what: &'static str, path: &Path, err: std::io::Error) -> CliError {
    if err.kind() == std::io::ErrorKind::NotFound {
        CliError::MissingFile { what, path: path.to_path_buf() }
    } else {
        CliError::Read { path: path.to_path_buf(), source: err }
    }
}

fn is_own_output(path: &Path) -> bool {
    let name = path.file_name().map(|n| n.to_string_lossy().to_ascii_lowercase()).unwrap_or_default();
    OUTPUT_ENDINGS.iter().any(|e| name.ends_with(e))
}

fn has_extension(path: &Path, extensions: &[&str]) -> bool {
    path.extension()
        .and_then(|e| e.to_str())
        .is_some_and(|e| extensions.iter().any(|x| x.eq_ignore_ascii_case(e)))
}

fn stem(path: &Path) -> String {
    path.file_stem().map(|s| s.to_string_lossy().into_owned()).unwrap_or_else(|| "input".into())
}

/// Names every item uniquely (ignoring case, for case-insensitive file systems): the first
/// `chelsea` keeps its name, later ones become `chelsea-2`, `chelsea-3`, … skipping any name
/// another input already has (`d1/chelsea.png d2/chelsea.png d1/chelsea-2.png` gives
/// `chelsea`, `chelsea-3`, `chelsea-2`).
fn make_names_unique(items: &mut [Item]) {
    let mut count: HashMap<String, usize> = HashMap::new();
    for item in items.iter() {
        *count.entry(item.name.to_lowercase()).or_insert(0) += 1;
    }
    let mut taken: HashSet<String> = HashSet::new();
    for item in items.iter_mut() {
        let base = item.name.to_lowercase();
        if taken.insert(base.clone()) {
            continue;
        }
        let mut n = 2;
        loop {
            let candidate = format!("{}-{n}", item.name);
            let key = candidate.to_lowercase();
            if !count.contains_key(&key) && taken.insert(key) {
                item.name = candidate;
                break;
            }
            n += 1;
        }
    }
}

/// FNV-1a, 64 bits: a hash that is the same on every machine and in every version.
fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325u64, |h, &b| (h ^ b as u64).wrapping_mul(0x0100_0000_01b3))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn item(path: &str) -> Item {
        let path = PathBuf::from(path);
        Item { name: stem(&path), path, source: Source::Image }
    }

    #[test]
    fn names_are_unique_even_against_names_that_look_like_suffixes() {
        let mut items = vec![item("d1/chelsea.png"), item("d2/chelsea.png"), item("d1/chelsea-2.png")];
        make_names_unique(&mut items);
        let names: Vec<&str> = items.iter().map(|i| i.name.as_str()).collect();
        assert_eq!(names, ["chelsea", "chelsea-3", "chelsea-2"]);
        let mut items = vec![item("a/Cat.png"), item("b/cat.png")];
        make_names_unique(&mut items);
        assert_eq!(items[1].name, "cat-2", "names differing only in case collide on some file systems");
    }

    #[test]
    fn shards_split_the_inputs_without_overlap() {
        let keys: Vec<String> = (0..1000).map(|i| format!("photos/{i}.jpg")).collect();
        let mut seen = vec![0; 4];
        for k in &keys {
            seen[(fnv1a(k.as_bytes()) % 4) as usize] += 1;
        }
        assert_eq!(seen.iter().sum::<usize>(), 1000);
        assert!(seen.iter().all(|&n| (200..300).contains(&n)), "{seen:?}");
        assert_eq!(fnv1a(b"a"), 0xaf63_dc4c_8601_ec8c, "the published FNV-1a test vector");
    }
}
