//! One ONNX Runtime run of the classifier on zeros, reading the types and shapes the backward
//! rules and the CAM folding need.
//!
//! Kept apart from `OnnxModel`'s probe so that the export does not reach into the model's private
//! state; the environment (ort allows one per process), the session for a graph in memory and
//! `tensor_info` are `runtime.rs`'s.

use ort::value::Tensor;

use crate::onnx_graph::{OnnxGraph, Shapes, TensorInfo};
pub(crate) use crate::runtime::environment;
use crate::runtime::{commit_once, tensor_info};
use crate::OrtBackendError;

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
    let mut session = commit_once(&graph.with_outputs(names), threads)?;
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
