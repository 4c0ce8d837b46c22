//! One ONNX Runtime run of the classifier on zeros, reading the types and shapes the backward
//! rules and the CAM folding need.
//!
//! Kept apart from `OnnxModel`'s probe so that the export does not reach into the model's private
//! state; the environment (ort allows one per process) and `tensor_info` are `runtime.rs`'s.

use std::path::Path;

use ort::session::Session;
use ort::value::Tensor;

use crate::onnx_graph::{OnnxGraph, Shapes, TensorInfo};
pub(crate) use crate::runtime::environment;
use crate::runtime::tensor_info;
use crate::OrtBackendError;

/// ONNX Runtime's session option for external data of a model loaded from memory.
const EXTERNAL_DATA_DIR: &str = "session.model_external_initializers_file_folder_path";

/// A session for `graph` (generated or edited, so loaded from memory), reading external weights
/// from the source model's directory.
pub(crate) fn session(graph: &OnnxGraph, threads: usize) -> Result<Session, OrtBackendError> {
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
    b.commit_from_memory(&graph.to_bytes()).map_err(OrtBackendError::ort("load a generated model"))
}

/// Runs `graph` once on zeros of `shape` (fed to `input`) with `names` as extra outputs and
/// records their types and shapes, plus the input's and the initializers'.
pub(crate) fn probe(
    graph: &OnnxGraph,
    input: &str,
    shape: &[i64],
    names: &[String],
    threads: usize,
) -> Result<Shapes, OrtBackendError> {
    let zeros = Tensor::from_array((shape.to_vec(), vec![0f32; shape.iter().product::<i64>() as usize]))
        .map_err(OrtBackendError::ort("make the probe input"))?;
    let mut session = session(&graph.with_outputs(names), threads)?;
    let outputs =
        session.run(ort::inputs![input => zeros]).map_err(OrtBackendError::ort("run the shape probe"))?;
    let mut shapes = Shapes::new();
    for name in names {
        if let Some(info) = outputs.get(name.as_str()).and_then(tensor_info) {
            shapes.insert(name.clone(), info);
        }
    }
    shapes.insert(input.to_string(), TensorInfo { dtype: 1, shape: shape.to_vec() });
    for t in &graph.model().graph.initializer {
        shapes
            .entry(t.name.clone())
            .or_insert_with(|| TensorInfo { dtype: t.data_type, shape: t.dims.clone() });
    }
    Ok(shapes)
}
