//! # gradcam-core
//!
//! The backend-agnostic half of gradcam-rs: every class-activation-map method (Grad-CAM and its
//! family) as plain math on [`ndarray`], numerically identical to pytorch-grad-cam.
//!
//! A backend implements [`CamModel`] (capture a named layer's output and its gradient); this
//! crate turns that [`Capture`] into a heatmap. It depends on no ML framework.

mod error;
mod layer;
mod model;
mod target;

pub use error::CamError;
pub use layer::{near_matches, Activations, Gradients, LayerTensor, LayerView};
pub use model::{CamModel, Capture, LayerInfo};
pub use target::{argmax, softmax_rows, Classes, Target, TargetScore};
