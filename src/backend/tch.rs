//! libtorch: TorchScript files.

use std::path::PathBuf;

use backend_tch::DeviceChoice;

use super::{load_failed, LoadedModel, Loader, DEFAULT_SIZE};
use crate::cli::{BackendKind, DeviceKind, ModelArgs};
use crate::error::CliError;

pub struct Tch;

/// How libgomp, libtorch's CPU thread pool, is told to let its idle threads sleep soon. By
/// default a thread that finishes its share of an operation spins 300,000 rounds waiting for the
/// next: whenever another thread of this process (decoding, drawing) or of another takes a core,
/// the spinning thread keeps the core the model needs. 10,000 rounds still bridge the gaps
/// between a small model's operations; sleeping at once (`OMP_WAIT_POLICY=PASSIVE`) made Lite0
/// at batch 1 twice as slow.
const SHORT_SPINS: (&str, &str) = ("GOMP_SPINCOUNT", "10000");

/// Runs this command again, at once, with [`SHORT_SPINS`] set, unless the user has chosen how
/// libgomp waits. libgomp reads its settings once, as it loads with the program (before
/// `main`), so the process must start again to change them. Returns only when it cannot (no
/// path to this program, exec refused); the run then goes on as it is, only slower.
pub fn restart_with_short_spins() {
    use std::os::unix::process::CommandExt;
    if ["OMP_WAIT_POLICY", SHORT_SPINS.0].iter().any(|v| std::env::var_os(v).is_some()) {
        return;
    }
    let Ok(exe) = std::env::current_exe() else { return };
    let mut args = std::env::args_os();
    let mut command = std::process::Command::new(exe);
    if let Some(arg0) = args.next() {
        command.arg0(arg0);
    }
    // Only returns on failure.
    let _ = command.args(args).env(SHORT_SPINS.0, SHORT_SPINS.1).exec();
}

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
