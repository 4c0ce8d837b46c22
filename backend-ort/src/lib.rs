//! # backend-ort
//!
//! Grad-CAM for any ONNX model, on ONNX Runtime — which has no autograd. From the ONNX graph
//! itself this crate generates the backward graph of the part after the chosen layer
//! ([`onnx_graph`], always compiled: pure protobuf editing), and ONNX Runtime runs the forward
//! once, then the backward pass from core's seed on the forward's tensors ([`OnnxModel`], behind
//! the `ort` feature).
//!
//! Layers are PyTorch module paths, found in graphs from both torch exporters: node names
//! (`/layer4/layer4.1/act2/Relu`, legacy exporter) or node metadata
//! (`pkg.torch.onnx.name_scopes`, dynamo exporter, weights in an external `.onnx.data`).

pub mod onnx_graph;

#[cfg(feature = "ort")]
mod batch;
#[cfg(feature = "ort")]
mod chain;
#[cfg(feature = "ort")]
pub mod export;

#[cfg(feature = "ort")]
mod error;
#[cfg(feature = "ort")]
mod model;
#[cfg(feature = "ort")]
mod runtime;

#[cfg(feature = "ort")]
pub use error::OrtBackendError;
#[cfg(feature = "ort")]
pub use model::OnnxModel;
pub use onnx_graph::{GraphError, OnnxGraph};
