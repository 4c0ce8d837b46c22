//! candle: timm state dicts from safetensors.

use std::path::{Path, PathBuf};

use super::{load_failed, LoadedModel, Loader};
use crate::assets;
use crate::cli::{BackendKind, DeviceKind, ModelArgs};
use crate::error::CliError;

pub struct Candle;

impl Loader for Candle {
    fn kind(&self) -> BackendKind {
        BackendKind::Candle
    }

    fn default_model(&self) -> Result<PathBuf, CliError> {
        Ok(assets::shipped_model())
    }

    fn load(&self, path: PathBuf, args: &ModelArgs) -> Result<LoadedModel, CliError> {
        if args.device == Some(DeviceKind::Cuda) {
            return Err(CliError::Usage(
                "the candle backend runs on the CPU in this build; use --device cpu, or --backend tch for CUDA"
                    .into(),
            ));
        }
        if let Some(threads) = args.threads {
            // candle sizes its thread pool from this variable when it first runs; nothing else
            // runs yet, so setting it here races with no other thread.
            std::env::set_var("RAYON_NUM_THREADS", threads.to_string());
        }
        let arch = arch(&path, args.arch.as_deref(), backend_candle::ARCHITECTURES)?;
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
}

/// The architecture named by `--arch`, else the file's stem when it names one we know
/// (`resnet18.safetensors`), else the shipped model's.
fn arch(path: &Path, arch: Option<&str>, known: &[&str]) -> Result<String, CliError> {
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
