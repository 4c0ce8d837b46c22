//! Picks and loads the model on the backend the user asked for (or the model file implies).
//!
//! Each compiled-in backend is one [`Loader`]; a backend left out of the build is simply absent
//! from [`loaders`], and asking for it says how to get it.

use std::path::{Path, PathBuf};

use gradcam_core::CamModel;

use crate::cli::{BackendKind, Command, ModelArgs};
use crate::error::CliError;

#[cfg(feature = "candle")]
mod candle;
#[cfg(feature = "ort")]
pub mod ort;
#[cfg(feature = "tch")]
mod tch;

/// A model ready to explain, with what the summary reports about it.
pub struct LoadedModel {
    pub model: Box<dyn CamModel>,
    pub backend: BackendKind,
    pub path: PathBuf,
    /// The timm architecture (candle only).
    pub arch: Option<String>,
    /// Where it runs, as the user would write it (`cpu`, `cuda`).
    pub device: &'static str,
    /// The input size images are resized to.
    pub input_size: (usize, usize),
}

/// One backend's way of loading a model file.
pub trait Loader: Sync {
    /// Which backend this is.
    fn kind(&self) -> BackendKind;
    /// The model used when `--model` is not given, or what to give when there is none.
    fn default_model(&self) -> Result<PathBuf, CliError>;
    /// Loads the model at `path` (an existing file) as `args` say.
    fn load(&self, path: PathBuf, args: &ModelArgs) -> Result<LoadedModel, CliError>;
}

/// Input size when neither the user nor the model says otherwise (timm's ImageNet models).
#[cfg(any(feature = "tch", feature = "ort"))]
const DEFAULT_SIZE: (usize, usize) = (224, 224);

/// The loaders compiled into this binary.
// One `push` per feature: the list depends on the build, so it cannot be one `vec![]`.
#[allow(clippy::vec_init_then_push)]
fn loaders() -> Vec<&'static dyn Loader> {
    #[allow(unused_mut)]
    let mut all: Vec<&'static dyn Loader> = Vec::new();
    #[cfg(feature = "candle")]
    all.push(&candle::Candle);
    #[cfg(feature = "tch")]
    all.push(&tch::Tch);
    #[cfg(feature = "ort")]
    all.push(&ort::Ort);
    all
}

/// The backend named by `--backend`, else the one the model's extension implies, else candle.
pub fn choose_backend(args: &ModelArgs) -> BackendKind {
    if let Some(kind) = args.backend {
        return kind;
    }
    let ext = args.model.as_deref().and_then(Path::extension).and_then(|e| e.to_str());
    match ext.map(str::to_ascii_lowercase).as_deref() {
        Some("pt" | "pth" | "ts" | "torchscript") => BackendKind::Tch,
        Some("onnx") => BackendKind::Ort,
        _ => BackendKind::Candle,
    }
}

/// Settles what a backend's native library reads only as the process starts, for the backend
/// `command` will use: first thing in `main`, before any thread exists.
pub fn prepare_process(command: &Command) {
    let model = match command {
        Command::Explain(args) => Some(&args.model),
        Command::Evaluate(args) => Some(&args.model),
        Command::Layers(model) => Some(model),
        Command::Export(_) => None,
    };
    #[cfg(all(feature = "tch", unix))]
    if model.is_some_and(|m| choose_backend(m) == BackendKind::Tch) {
        tch::restart_with_short_spins();
    }
    let _ = model;
}

/// Loads the model described by `args`.
pub fn load(args: &ModelArgs) -> Result<LoadedModel, CliError> {
    let backend = choose_backend(args);
    let loader = loaders().into_iter().find(|l| l.kind() == backend).ok_or(CliError::NotCompiled(backend))?;
    let path = match &args.model {
        Some(path) => path.clone(),
        None => loader.default_model()?,
    };
    crate::plan::check_regular_file("model", &path)?;
    if args.arch.is_some() && backend != BackendKind::Candle {
        return Err(CliError::Usage(format!(
            "--arch applies to safetensors models (candle); a {} model carries its architecture",
            backend.feature()
        )));
    }
    loader.load(path, args)
}

/// A backend's error while loading, with the file it was loading.
#[cfg_attr(not(any(feature = "candle", feature = "tch", feature = "ort")), allow(dead_code))]
fn load_failed(path: &Path, err: impl std::fmt::Display) -> CliError {
    CliError::Load { path: path.to_path_buf(), message: err.to_string() }
}
