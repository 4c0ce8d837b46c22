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

/// The process's one ONNX Runtime environment (ort allows one per process; the export shares it).
pub(crate) fn environment() -> Result<&'static Environment, OrtBackendError> {
    static ENV: OnceLock<Environment> = OnceLock::new();
    if let Some(env) = ENV.get() {
        return Ok(env);
    }
    let env =
        ort::init().with_name("gradcam-rs").build().map_err(OrtBackendError::ort("start ONNX Runtime"))?;
    Ok(ENV.get_or_init(|| env))
}

/// A session builder with the model's external-data directory set.
pub(crate) fn builder(
    graph: &OnnxGraph,
    threads: usize,
) -> Result<ort::session::builder::SessionBuilder, OrtBackendError> {
    let mut b = Session::builder(environment()?).map_err(OrtBackendError::ort("create a session"))?;
    if threads > 0 {
        b = b.with_intra_threads(threads).map_err(OrtBackendError::ort("set the number of threads"))?;
    }
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
