//! Device selection, and loading libtorch's CUDA half at run time.

use std::ffi::CStr;
use std::str::FromStr;
use std::sync::OnceLock;

use crate::TchError;

/// Where the model runs.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum DeviceChoice {
    /// The CPU.
    Cpu,
    /// The first CUDA device; an error when CUDA is not available.
    Cuda,
    /// CUDA when available, else the CPU.
    #[default]
    Auto,
}

impl FromStr for DeviceChoice {
    type Err = String;

    /// `cpu`, `cuda` or `auto`.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.to_ascii_lowercase().as_str() {
            "cpu" => Ok(DeviceChoice::Cpu),
            "cuda" | "gpu" => Ok(DeviceChoice::Cuda),
            "auto" => Ok(DeviceChoice::Auto),
            other => Err(format!("unknown device `{other}` (expected cpu, cuda or auto)")),
        }
    }
}

impl DeviceChoice {
    /// The tch device this choice means on this machine.
    pub fn resolve(self) -> Result<tch::Device, TchError> {
        match self {
            DeviceChoice::Cpu => Ok(tch::Device::Cpu),
            DeviceChoice::Auto => Ok(if cuda_available() { tch::Device::Cuda(0) } else { tch::Device::Cpu }),
            DeviceChoice::Cuda if cuda_available() => Ok(tch::Device::Cuda(0)),
            DeviceChoice::Cuda => Err(TchError::CudaUnavailable(match load_cuda() {
                Err(reason) => format!(
                    "libtorch_cuda.so could not be loaded ({reason}); put the lib/ folder of a CUDA build \
                     of torch 2.11.0, the libtorch tch 0.24 links, on LD_LIBRARY_PATH"
                ),
                Ok(()) => {
                    "libtorch_cuda.so is loaded but finds no CUDA device (no GPU, or no NVIDIA driver)".into()
                }
            })),
        }
    }
}

/// Whether libtorch can use a CUDA device, after trying to load its CUDA library.
///
/// The binary links only `libtorch_cpu.so` (the linker drops the unused `libtorch_cuda.so`),
/// so the CUDA kernels are registered by loading `libtorch_cuda.so` explicitly. That fails
/// quietly on machines without the CUDA build of torch; the same binary then runs on the CPU.
pub fn cuda_available() -> bool {
    load_cuda().is_ok() && tch::Cuda::is_available()
}

/// Loads `libtorch_cuda.so` once per process; the error is the loader's reason.
fn load_cuda() -> Result<(), String> {
    static LOADED: OnceLock<Result<(), String>> = OnceLock::new();
    LOADED
        .get_or_init(|| {
            // SAFETY: dlopen with a valid C string; the handle is kept for the process' lifetime.
            // dlerror's message is copied out at once, on the thread that made the call.
            unsafe {
                if libc::dlopen(c"libtorch_cuda.so".as_ptr(), libc::RTLD_NOW | libc::RTLD_GLOBAL).is_null() {
                    let message = libc::dlerror();
                    return Err(if message.is_null() {
                        "unknown reason".into()
                    } else {
                        CStr::from_ptr(message).to_string_lossy().into_owned()
                    });
                }
            }
            Ok(())
        })
        .clone()
}
