//! Picks and loads the model on the backend the user asked for (or the model file implies).

use std::path::{Path, PathBuf};

use gradcam_core::CamModel;

use crate::assets;
use crate::cli::{BackendKind, DeviceKind, ModelArgs};
use crate::error::CliError;

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

/// Input size when neither the user nor the model says otherwise (timm's ImageNet models).
#[cfg(any(feature = "tch", feature = "ort"))]
const DEFAULT_SIZE: (usize, usize) = (224, 224);

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

/// Loads the model described by `args`.
pub fn load(args: &ModelArgs) -> Result<LoadedModel, CliError> {
    let backend = choose_backend(args);
    if !compiled(backend) {
        return Err(CliError::NotCompiled(backend));
    }
    let path = match (&args.model, backend) {
        (Some(path), _) => path.clone(),
        (None, BackendKind::Candle) => assets::shipped_model(),
        (None, BackendKind::Tch) => {
            return Err(CliError::Usage(
                "--model is required with --backend tch (a TorchScript .pt file)".into(),
            ))
        }
        (None, BackendKind::Ort) => {
            return Err(CliError::Usage("--model is required with --backend ort (an .onnx file)".into()))
        }
    };
    if !path.is_file() {
        return Err(CliError::MissingFile { what: "model", path });
    }
    if args.arch.is_some() && backend != BackendKind::Candle {
        return Err(CliError::Usage(format!(
            "--arch applies to safetensors models (candle); a {} model carries its architecture",
            backend.feature()
        )));
    }
    match backend {
        BackendKind::Candle => load_candle(path, args),
        BackendKind::Tch => load_tch(path, args),
        BackendKind::Ort => load_ort(path, args),
    }
}

/// Whether this binary was built with `backend`'s feature.
pub fn compiled(backend: BackendKind) -> bool {
    match backend {
        BackendKind::Candle => cfg!(feature = "candle"),
        BackendKind::Tch => cfg!(feature = "tch"),
        BackendKind::Ort => cfg!(feature = "ort"),
    }
}

fn load_failed(path: &Path, err: impl std::fmt::Display) -> CliError {
    CliError::Load { path: path.to_path_buf(), message: err.to_string() }
}

/// The architecture named by `--arch`, else the file's stem when it names one we know
/// (`resnet18.safetensors`), else the shipped model's.
#[cfg_attr(not(feature = "candle"), allow(dead_code))]
fn candle_arch(path: &Path, arch: Option<&str>, known: &[&str]) -> Result<String, CliError> {
    let unknown = |name: &str| CliError::UnknownArch {
        name: name.to_string(),
        near: gradcam_core::near_matches(name, known.iter().copied()),
        known: known.join(", "),
    };
    if let Some(arch) = arch {
        return if known.contains(&arch) { Ok(arch.to_string()) } else { Err(unknown(arch)) };
    }
    if path == assets::shipped_model() {
        return Ok(assets::SHIPPED_ARCH.to_string());
    }
    let stem = path.file_stem().and_then(|s| s.to_str()).unwrap_or_default();
    if let Some(arch) = known.iter().find(|a| **a == stem) {
        return Ok(arch.to_string());
    }
    Err(CliError::Usage(format!(
        "which architecture is {}? name it with --arch (one of: {})",
        path.display(),
        known.join(", ")
    )))
}

#[cfg(feature = "candle")]
fn load_candle(path: PathBuf, args: &ModelArgs) -> Result<LoadedModel, CliError> {
    if args.device == Some(DeviceKind::Cuda) {
        return Err(CliError::Usage(
            "the candle backend runs on the CPU in this build; use --device cpu, or --backend tch for CUDA"
                .into(),
        ));
    }
    let arch = candle_arch(&path, args.arch.as_deref(), backend_candle::ARCHITECTURES)?;
    let model =
        backend_candle::CandleModel::from_safetensors(&path, &arch).map_err(|e| load_failed(&path, e))?;
    let input_size = args.size.unwrap_or(model.input_size());
    Ok(LoadedModel {
        model: Box::new(model),
        backend: BackendKind::Candle,
        path,
        arch: Some(arch),
        device: "cpu",
        input_size,
    })
}

#[cfg(feature = "tch")]
fn load_tch(path: PathBuf, args: &ModelArgs) -> Result<LoadedModel, CliError> {
    use backend_tch::DeviceChoice;
    let choice = match args.device {
        Some(DeviceKind::Cpu) => DeviceChoice::Cpu,
        Some(DeviceKind::Cuda) => DeviceChoice::Cuda,
        None => DeviceChoice::Auto,
    };
    let mut model = backend_tch::TorchScriptModel::load(&path, choice).map_err(|e| load_failed(&path, e))?;
    let input_size = args.size.unwrap_or(DEFAULT_SIZE);
    // `gradcam layers` reports shapes for the input size the run would use.
    model.set_probe_size(input_size.0, input_size.1);
    let device = if model.device().is_cuda() { "cuda" } else { "cpu" };
    Ok(LoadedModel {
        model: Box::new(model),
        backend: BackendKind::Tch,
        path,
        arch: None,
        device,
        input_size,
    })
}

#[cfg(feature = "ort")]
fn load_ort(path: PathBuf, args: &ModelArgs) -> Result<LoadedModel, CliError> {
    if args.device == Some(DeviceKind::Cuda) {
        return Err(CliError::Usage(
            "the ort backend runs on the CPU execution provider in this build; use --device cpu".into(),
        ));
    }
    let model = backend_ort::OnnxModel::load(&path).map_err(|e| load_failed(&path, e))?;
    let input_size = args.size.unwrap_or(DEFAULT_SIZE);
    Ok(LoadedModel {
        model: Box::new(model),
        backend: BackendKind::Ort,
        path,
        arch: None,
        device: "cpu",
        input_size,
    })
}

#[cfg(not(feature = "candle"))]
fn load_candle(_: PathBuf, _: &ModelArgs) -> Result<LoadedModel, CliError> {
    Err(CliError::NotCompiled(BackendKind::Candle))
}

#[cfg(not(feature = "tch"))]
fn load_tch(_: PathBuf, _: &ModelArgs) -> Result<LoadedModel, CliError> {
    Err(CliError::NotCompiled(BackendKind::Tch))
}

#[cfg(not(feature = "ort"))]
fn load_ort(_: PathBuf, _: &ModelArgs) -> Result<LoadedModel, CliError> {
    Err(CliError::NotCompiled(BackendKind::Ort))
}
