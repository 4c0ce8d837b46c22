//! ONNX Runtime: .onnx files from either torch exporter.

use std::path::PathBuf;

use super::{load_failed, LoadedModel, Loader, DEFAULT_SIZE};
use crate::cli::{BackendKind, DeviceKind, ModelArgs};
use crate::error::CliError;

pub struct Ort;

impl Loader for Ort {
    fn kind(&self) -> BackendKind {
        BackendKind::Ort
    }

    fn default_model(&self) -> Result<PathBuf, CliError> {
        Err(CliError::Usage("--model is required with --backend ort (an .onnx file)".into()))
    }

    fn load(&self, path: PathBuf, args: &ModelArgs) -> Result<LoadedModel, CliError> {
        if args.device == Some(DeviceKind::Cuda) {
            return Err(CliError::Usage(
                "the ort backend runs on the CPU execution provider in this build; use --device cpu".into(),
            ));
        }
        use_built_onnx_runtime();
        let threads = args.threads.map_or(0, |t| t as usize);
        let model =
            backend_ort::OnnxModel::load_with_threads(&path, threads).map_err(|e| load_failed(&path, e))?;
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
}

/// Start as built: without ORT_DYLIB_PATH, use the ONNX Runtime this binary was built next to.
/// Called before any thread starts, so setting the variable races with nothing.
pub fn use_built_onnx_runtime() {
    if std::env::var_os("ORT_DYLIB_PATH").is_none() {
        if let Some(built) = option_env!("ORT_DYLIB_PATH").filter(|p| std::path::Path::new(p).is_file()) {
            std::env::set_var("ORT_DYLIB_PATH", built);
        }
    }
}
