//! A fixed-batch copy of a fixture model, shared by the test files that need one.

use std::path::{Path, PathBuf};

use onnx_protobuf::{tensor_shape_proto::dimension::Value as Dim, type_proto, Message, ModelProto};
use tests::require;

/// A copy of fixture `file` whose input and output declare batch size `batch` (next to its
/// external data, if any), as a fixed-batch export declares them; in a folder removed when the
/// returned guard drops.
pub fn with_fixed_batch(file: &str, batch: i64) -> (tempfile::TempDir, PathBuf) {
    let source = require(file);
    let guard = tempfile::Builder::new().prefix("gradcam-ort-fixed-").tempdir().expect("temp dir");
    let dir = guard.path();
    let mut model = ModelProto::parse_from_bytes(&std::fs::read(&source).expect("read")).expect("parse");
    let graph = model.graph.as_mut().expect("graph");
    for vi in graph.input.iter_mut().chain(graph.output.iter_mut()) {
        if let Some(type_proto::Value::TensorType(t)) = vi.type_.as_mut().and_then(|t| t.value.as_mut()) {
            if let Some(dim) = t.shape.as_mut().and_then(|s| s.dim.first_mut()) {
                dim.value = Some(Dim::DimValue(batch));
            }
        }
    }
    let path = dir.join(file);
    std::fs::write(&path, model.write_to_bytes().expect("serialise")).expect("write");
    let data = Path::new(&format!("{}.data", source.display())).to_path_buf();
    let link = dir.join(format!("{file}.data"));
    // ONNX Runtime refuses external data that resolves outside the model's folder (a symlink).
    if data.exists() && !link.exists() && std::fs::hard_link(&data, &link).is_err() {
        std::fs::copy(&data, &link).expect("copy the external data");
    }
    (guard, path)
}
