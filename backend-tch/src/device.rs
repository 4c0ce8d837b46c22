//! Device selection, and loading libtorch's CUDA half at run time.

use std::str::FromStr;
use std::sync::Once;

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
            DeviceChoice::Cuda => Err(TchError::CudaUnavailable(
                "libtorch_cuda.so was not found or found no GPU (put a CUDA build of torch's lib/ on \
                 LD_LIBRARY_PATH)"
                    .into(),
            )),
        }
    }
}

/// Whether libtorch can use a CUDA device, after trying to load its CUDA library.
///
/// The binary links only `libtorch_cpu.so` (the linker drops the unused `libtorch_cuda.so`),
/// so the CUDA kernels are registered by loading `libtorch_cuda.so` explicitly. That fails
/// quietly on machines without the CUDA build of torch; the same binary then runs on the CPU.
pub fn cuda_available() -> bool {
    load_cuda();
    tch::Cuda::is_available()
}

fn load_cuda() {
    static LOAD: Once = Once::new();
    LOAD.call_once(|| {
        // SAFETY: dlopen with a valid C string; the handle is kept for the process' lifetime.
        unsafe {
            libc::dlopen(c"libtorch_cuda.so".as_ptr(), libc::RTLD_NOW | libc::RTLD_GLOBAL);
        }
    });
}
