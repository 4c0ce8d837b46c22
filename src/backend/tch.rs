//! libtorch: TorchScript files.

use std::path::PathBuf;

use backend_tch::DeviceChoice;

use super::{load_failed, LoadedModel, Loader, DEFAULT_SIZE};
use crate::cli::{BackendKind, DeviceKind, ModelArgs};
use crate::error::CliError;

pub struct Tch;

impl Loader for Tch {
    fn kind(&self) -> BackendKind {
        BackendKind::Tch
    }

    fn default_model(&self) -> Result<PathBuf, CliError> {
        Err(CliError::Usage("--model is required with --backend tch (a TorchScript .pt file)".into()))
    }

    fn load(&self, path: PathBuf, args: &ModelArgs) -> Result<LoadedModel, CliError> {
        let choice = match args.device {
            Some(DeviceKind::Cpu) => DeviceChoice::Cpu,
            Some(DeviceKind::Cuda) => DeviceChoice::Cuda,
            None => DeviceChoice::Auto,
        };
        if let Some(threads) = args.threads {
            backend_tch::tch::set_num_threads(threads as i32);
        }
        let mut model =
            backend_tch::TorchScriptModel::load(&path, choice).map_err(|e| load_failed(&path, e))?;
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
}
