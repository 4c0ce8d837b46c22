//! ONNX Runtime plumbing: the environment, sessions for generated models, and conversions
//! between host arrays and ONNX Runtime values.

use std::path::Path;
use std::sync::OnceLock;

use gradcam_core::LayerTensor;
use ndarray::{Array2, ArrayD, ArrayView, Dimension, IxDyn};
use ort::environment::Environment;
use ort::session::{Session, SessionInputValue};
use ort::value::{DynValue, Tensor, TensorElementType};

use crate::onnx_graph::{OnnxGraph, TensorInfo};
use crate::OrtBackendError;

/// ONNX Runtime's session option for external data of a model loaded from memory.
const EXTERNAL_DATA_DIR: &str = "session.model_external_initializers_file_folder_path";
/// ONNX Runtime's `kOrtSessionOptionsConfigForceSpinningStop`.
const FORCE_SPINNING_STOP: &str = "session.force_spinning_stop";

/// The process's one ONNX Runtime environment (ort allows one per process; the export shares it).
pub(crate) fn environment() -> Result<&'static Environment, OrtBackendError> {
    static ENV: OnceLock<Environment> = OnceLock::new();
    if let Some(env) = ENV.get() {
        return Ok(env);
    }
    // ort panics when the library is missing; loading it first makes that an error.
    let path = std::env::var_os("ORT_DYLIB_PATH")
        .filter(|p| !p.is_empty())
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| {
            format!("{}onnxruntime{}", std::env::consts::DLL_PREFIX, std::env::consts::DLL_SUFFIX).into()
        });
    let env = ort::init_from(&path)
        .map_err(|e| OrtBackendError::Library { path: path.display().to_string(), reason: e.to_string() })?
        .with_name("gradcam-rs")
        .build()
        .map_err(OrtBackendError::ort("start ONNX Runtime"))?;
    if let Some(limit) = memory_limit() {
        limit_memory(&env, limit)?;
    }
    Ok(ENV.get_or_init(|| env))
}

/// The most memory ONNX Runtime's tensors may take: `GRADCAM_ORT_MEMORY` (bytes) when set, else
/// three quarters of the memory this process may use (the smaller of Linux' `MemTotal` and the
/// cgroup's `memory.max`, as in a container; no limit where neither can be read). A damaged or
/// hostile model can make a kernel ask for gigabytes (the fuzz harness found one case peaking at
/// 15.7 GB, and a run that the OOM killer ended): past the limit that is a typed error instead.
pub(crate) fn memory_limit() -> Option<usize> {
    if let Some(bytes) = std::env::var("GRADCAM_ORT_MEMORY").ok().and_then(|v| v.trim().parse().ok()) {
        return Some(bytes);
    }
    let read = |path: &str| std::fs::read_to_string(path).ok();
    let total = read("/proc/meminfo").and_then(|info| {
        let kib: usize = info
            .lines()
            .find_map(|l| l.strip_prefix("MemTotal:"))?
            .trim()
            .strip_suffix("kB")?
            .trim()
            .parse()
            .ok()?;
        Some(kib.saturating_mul(1024))
    });
    // cgroup v2; "max" (no limit) does not parse.
    let cgroup = read("/sys/fs/cgroup/memory.max").and_then(|v| v.trim().parse::<usize>().ok());
    let bytes = match (total, cgroup) {
        (Some(a), Some(b)) => a.min(b),
        (a, b) => a.or(b)?,
    };
    Some(bytes / 4 * 3)
}

/// Registers a CPU arena of at most `bytes` with the environment, for every session to share
/// ([`builder`] sets `session.use_env_allocators`); requests past it fail as errors.
fn limit_memory(env: &Environment, bytes: usize) -> Result<(), OrtBackendError> {
    use ort::memory::{AllocationDevice, AllocatorType, MemoryInfo, MemoryType};
    use ort::AsPointer;
    let info = MemoryInfo::new(AllocationDevice::CPU, 0, AllocatorType::Arena, MemoryType::Default)
        .map_err(OrtBackendError::ort("describe the CPU arena"))?;
    let api = ort::api();
    let keys = [c"max_mem".as_ptr(), c"arena_extend_strategy".as_ptr()];
    // 1: kSameAsRequested, so that the arena does not round a request up past the limit.
    let values: [usize; 2] = [bytes, 1];
    let mut cfg: *mut ort::sys::OrtArenaCfg = std::ptr::null_mut();
    // SAFETY: `keys` and `values` are arrays of the length passed, the keys NUL-terminated
    // static strings; `cfg` is written by ONNX Runtime before it is read, and released below.
    let status = unsafe { (api.CreateArenaCfgV2)(keys.as_ptr(), values.as_ptr(), keys.len(), &mut cfg) };
    check(status, "configure the CPU arena")?;
    // SAFETY: `env` and `info` are live objects of this ONNX Runtime (their pointers are
    // non-null while they live, and both outlive the call); `cfg` is the valid config created
    // above. ONNX Runtime copies what it needs, so the config is released right after.
    let status = unsafe { (api.CreateAndRegisterAllocator)(env.ptr().cast_mut(), info.ptr(), cfg) };
    // SAFETY: `cfg` came from CreateArenaCfgV2 and is released once.
    unsafe { (api.ReleaseArenaCfg)(cfg) };
    check(status, "register the CPU arena")
}

/// An ONNX Runtime status as a result (the status released).
fn check(status: ort::sys::OrtStatusPtr, what: &str) -> Result<(), OrtBackendError> {
    if status.0.is_null() {
        return Ok(());
    }
    let api = ort::api();
    // SAFETY: a non-null status from ONNX Runtime: its message is a NUL-terminated string that
    // lives until the status is released, which happens once, after the message is copied.
    let message = unsafe {
        let text = std::ffi::CStr::from_ptr((api.GetErrorMessage)(status.0)).to_string_lossy().into_owned();
        (api.ReleaseStatus)(status.0);
        text
    };
    Err(OrtBackendError::Signature(format!("ONNX Runtime could not {what}: {message}")))
}

/// A session builder with the model's external-data directory set.
pub(crate) fn builder(
    graph: &OnnxGraph,
    threads: usize,
) -> Result<ort::session::builder::SessionBuilder, OrtBackendError> {
    let mut b = Session::builder(environment()?).map_err(OrtBackendError::ort("create a session"))?;
    if memory_limit().is_some() {
        b = b.with_env_allocators().map_err(OrtBackendError::ort("share the CPU arena"))?;
    }
    if threads > 0 {
        b = b.with_intra_threads(threads).map_err(OrtBackendError::ort("set the number of threads"))?;
    }
    // A capture runs several sessions in turn (the model up to the layer, the backward pass, a
    // chain's links), each with its own thread pool. ONNX Runtime's workers spin for a while
    // after a run ends, and on a machine with few cores they take those cores from the next
    // session's threads; stopping the spin when a run returns leaves it on within runs.
    b = b
        .with_config_entry(FORCE_SPINNING_STOP, "1")
        .map_err(OrtBackendError::ort("stop idle threads spinning between runs"))?;
    if let Some(dir) = graph.external_data_dir().filter(|_| graph.has_external_data()) {
        let dir = if dir.as_os_str().is_empty() { Path::new(".") } else { dir };
        b = b
            .with_config_entry(EXTERNAL_DATA_DIR, dir.to_string_lossy())
            .map_err(OrtBackendError::ort("set the external data directory"))?;
    }
    Ok(b)
}

/// A session for a generated model (external weights still read from the original directory).
pub(crate) fn commit(graph: &OnnxGraph, threads: usize) -> Result<Session, OrtBackendError> {
    builder(graph, threads)?
        .commit_from_memory(&graph.to_bytes())
        .map_err(OrtBackendError::ort("load a generated model"))
}

/// A session for a model that runs once or twice (a shape probe): without ONNX Runtime's graph
/// optimizations, which cost more than such a run and grow faster than the graph's depth.
pub(crate) fn commit_once(graph: &OnnxGraph, threads: usize) -> Result<Session, OrtBackendError> {
    builder(graph, threads)?
        .with_optimization_level(ort::session::builder::GraphOptimizationLevel::Disable)
        .map_err(OrtBackendError::ort("turn off graph optimizations"))?
        .commit_from_memory(&graph.to_bytes())
        .map_err(OrtBackendError::ort("load a generated model"))
}

/// An f32 tensor holding `array`.
pub(crate) fn tensor<D: Dimension>(
    array: ArrayView<f32, D>,
    what: &str,
) -> Result<SessionInputValue<'static>, OrtBackendError> {
    Ok(value(array, what)?.into())
}

/// An f32 value holding `array`.
pub(crate) fn value<D: Dimension>(array: ArrayView<f32, D>, what: &str) -> Result<DynValue, OrtBackendError> {
    let shape: Vec<i64> = array.shape().iter().map(|&d| d as i64).collect();
    let value = Tensor::from_array((shape, array.iter().copied().collect::<Vec<f32>>()))
        .map_err(OrtBackendError::ort(format!("make the {what}")))?;
    Ok(value.into_dyn())
}

/// Element type and shape of a value.
pub(crate) fn tensor_info(value: &DynValue) -> Option<TensorInfo> {
    let ty = value.dtype();
    Some(TensorInfo { dtype: element_type(ty.tensor_type()?), shape: ty.tensor_shape()?.to_vec() })
}

/// The ONNX `TensorProto` data type of an element type (0: one the rules do not handle).
pub(crate) fn element_type(ty: TensorElementType) -> i32 {
    match ty {
        TensorElementType::Float32 => 1,
        TensorElementType::Float64 => 11,
        TensorElementType::Float16 => 10,
        TensorElementType::Int64 => 7,
        TensorElementType::Int32 => 6,
        TensorElementType::Bool => 9,
        _ => 0,
    }
}

/// The f32 contents of a value.
pub(crate) fn array(value: &DynValue, name: &str) -> Result<ArrayD<f32>, OrtBackendError> {
    let (shape, data) =
        value.try_extract_tensor::<f32>().map_err(OrtBackendError::ort(format!("read {name}")))?;
    let shape: Vec<usize> = shape.iter().map(|&d| d.max(0) as usize).collect();
    ArrayD::from_shape_vec(IxDyn(&shape), data.to_vec())
        .map_err(|e| OrtBackendError::Signature(e.to_string()))
}

/// The model's first output flattened per image to `(B, D)`, and its per-image shape (`[K]`
/// for class logits, `[C, H, W]` for a segmentation, `[]` for one score per image).
pub(crate) fn logits(array: ArrayD<f32>) -> Result<(Array2<f32>, Vec<usize>), OrtBackendError> {
    let shape = array.shape().to_vec();
    let Some((&batch, per_image)) = shape.split_first() else {
        return Err(OrtBackendError::Signature(format!(
            "the model's first output is a scalar {shape:?}: gradcam needs an output per image (batch first)"
        )));
    };
    let width: usize = per_image.iter().product();
    let rows = array
        .as_standard_layout()
        .into_owned()
        .into_shape_with_order((batch, width))
        .map_err(|e| OrtBackendError::Signature(e.to_string()))?;
    Ok((rows, per_image.to_vec()))
}

/// A layer output `(B, C, H, W)` or `(B, N, D)` from an array.
pub(crate) fn layer(array: ArrayD<f32>) -> Result<LayerTensor, OrtBackendError> {
    let shape = array.shape().to_vec();
    LayerTensor::from_shape_vec(&shape, array.into_iter().collect())
        .map_err(|e| OrtBackendError::Signature(e.to_string()))
}
