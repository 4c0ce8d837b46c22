//! ONNX Runtime backend for gradcam-rs: ONNX backward-graph generation
