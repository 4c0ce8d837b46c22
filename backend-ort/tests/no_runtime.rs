//! Without the ONNX Runtime library, loading a model is a typed error that says what to set
//! (ort itself panics there). A test binary of its own: the library loads once per process.
#![cfg(feature = "ort")]

use backend_ort::{OnnxModel, OrtBackendError};
use tests::require;

#[test]
fn a_missing_onnx_runtime_is_an_error() {
    // Edition 2021: set_var is safe; this binary's only test sets it before ONNX Runtime loads.
    std::env::set_var("ORT_DYLIB_PATH", "/nonexistent/libonnxruntime.so");
    let err = OnnxModel::load(&require("resnet18.dynamo.onnx")).expect_err("no ONNX Runtime");
    assert!(matches!(err, OrtBackendError::Library { .. }), "{err:?}");
    let message = err.to_string();
    assert!(
        message.contains("/nonexistent/libonnxruntime.so") && message.contains("ORT_DYLIB_PATH"),
        "{message}"
    );
}
