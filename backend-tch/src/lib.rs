//! libtorch (tch) backend for gradcam-rs: Grad-CAM and its family for TorchScript models.
//!
//! A PyTorch model exported once with `torch.jit.trace` or `torch.jit.script` can be explained at
//! any module path (`layer4`, `layer4.1`, `blocks.11.norm1`) without a Python wrapper:
//!
//! ```no_run
//! # #[cfg(feature = "tch")] {
//! use backend_tch::{DeviceChoice, TorchScriptModel};
//! use gradcam_core::{CamModel, Target};
//!
//! let mut model = TorchScriptModel::load("resnet18.traced.pt".as_ref(), DeviceChoice::Auto)?;
//! let layer = model.default_layer()?; // "layer4"
//! let input = ndarray::Array4::<f32>::zeros((1, 3, 224, 224));
//! let capture = model.capture(input.view(), &layer, Some(&Target::top_one()))?;
//! assert_eq!(capture.activation.shape(), capture.gradient.unwrap().shape());
//! # }
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
//!
//! tch cannot reach inside a TorchScript module, so a small C++ shim (`shim/shim.cpp`, built by
//! `build.rs` against libtorch) inlines the module's `forward` graph and exposes the chosen
//! module's output. One forward returns the logits and the activation, the activation being a
//! leaf that requires grad, so the backward runs through the part after the layer only and no
//! parameter ever gets a gradient. Guided backprop ([`gradcam_core::CamModel::input_gradient`])
//! differentiates the whole forward down to the input instead, nothing frozen, every ReLU of the
//! graph guided (`shim/guided.cpp`).
//!
//! Everything lives behind the `tch` cargo feature; without it this crate is empty and the
//! workspace builds without libtorch.

#![cfg_attr(not(feature = "tch"), allow(unused))]

#[cfg(feature = "tch")]
mod device;
#[cfg(feature = "tch")]
mod error;
#[cfg(feature = "tch")]
mod ffi;
#[cfg(feature = "tch")]
mod model;

#[cfg(feature = "tch")]
pub use device::{cuda_available, DeviceChoice};
#[cfg(feature = "tch")]
pub use error::TchError;
#[cfg(feature = "tch")]
pub use model::TorchScriptModel;
#[cfg(feature = "tch")]
pub use tch;
