//! One ONNX Runtime run of the classifier on zeros, reading the types and shapes the backward
//! rules and the CAM folding need.
//!
//! Kept apart from `OnnxModel`'s probe so that the export does not reach into the model's private
//! state; the environment (ort allows one per process), the session for a graph in memory and
//! `tensor_info` are `runtime.rs`'s.

use ort::value::Tensor;

use crate::onnx_graph::{Dims, OnnxGraph, Shapes, TensorInfo};
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
    let mut shapes = probe_at(graph, input, &[shape], names, threads)?;
    Ok(shapes.pop().expect("one probe per shape"))
}

/// The dimensions of the tensors `graph`'s `Shape` and `Size` nodes read, for folding its
/// shape arithmetic ([`OnnxGraph::fold_shapes`]) at inputs of `shape`: with `dynamic_batch`
/// probed again with one more image, and every dimension that moved left unknown, so that what
/// follows the batch stays computed and what follows the fixed height and width (the legacy
/// exporter's TF-"same" pads) becomes constant.
pub(crate) fn probe_dims(
    graph: &OnnxGraph,
    input: &str,
    shape: &[i64],
    dynamic_batch: bool,
    threads: usize,
) -> Result<Dims, OrtBackendError> {
    let names = graph.shape_reads();
    let mut other = shape.to_vec();
    other[0] += 1;
    let shapes: Vec<&[i64]> = if dynamic_batch { vec![shape, &other] } else { vec![shape] };
    let probes = probe_at(graph, input, &shapes, &names, threads)?;
    let mut dims = Dims::new();
    for name in std::iter::once(input.to_string()).chain(names) {
        let seen: Option<Vec<&TensorInfo>> = probes.iter().map(|p| p.get(&name)).collect();
        let Some(seen) = seen else { continue };
        let first = &seen[0].shape;
        let known = |i: usize, d: i64| seen.iter().all(|t| t.shape.len() == first.len() && t.shape[i] == d);
        dims.insert(name, first.iter().enumerate().map(|(i, &d)| known(i, d).then_some(d)).collect());
    }
    Ok(dims)
}

/// [`probe`] at each of `shapes`, one session.
fn probe_at(
    graph: &OnnxGraph,
    input: &str,
    shapes: &[&[i64]],
    names: &[String],
    threads: usize,
) -> Result<Vec<Shapes>, OrtBackendError> {
    let mut session = commit_once(&graph.with_outputs(names), threads)?;
    let mut all = Vec::with_capacity(shapes.len());
    for shape in shapes {
        let zeros = Tensor::from_array((shape.to_vec(), vec![0f32; shape.iter().product::<i64>() as usize]))
            .map_err(OrtBackendError::ort("make the probe input"))?;
        let outputs =
            session.run(ort::inputs![input => zeros]).map_err(OrtBackendError::ort("run the shape probe"))?;
        let mut found = Shapes::new();
        for name in names {
            if let Some(info) = outputs.get(name.as_str()).and_then(tensor_info) {
                found.insert(name.clone(), info);
            }
        }
        found.insert(input.to_string(), TensorInfo { dtype: 1, shape: shape.to_vec() });
        for t in &graph.model().graph.initializer {
            found
                .entry(t.name.clone())
                .or_insert_with(|| TensorInfo { dtype: t.data_type, shape: t.dims.clone() });
        }
        all.push(found);
    }
    Ok(all)
}
