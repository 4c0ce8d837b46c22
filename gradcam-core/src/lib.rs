//! # gradcam-core
//!
//! The backend-agnostic half of gradcam-rs: every class-activation-map method (Grad-CAM and its
//! family) as plain math on [`ndarray`], numerically identical to pytorch-grad-cam.
//!
//! A backend implements [`CamModel`] (capture a named layer's output and its gradient); this
//! crate turns that [`Capture`] into a heatmap. It depends on no ML framework.

mod cam;
mod eigen;
mod error;
mod explain;
mod layer;
mod method;
mod model;
mod resize;
mod target;
mod tokens;

pub use cam::{
    ablation_weights, combine_layers, layer_map, scale_maps, scorecam_weights, upsample_maps, weighted_sum,
    GRADCAM_PP_EPS, SCALE_EPS, XGRADCAM_EPS,
};
pub use eigen::principal_projection;
pub use error::CamError;
pub use explain::{ablation_value, explain, scorecam_mask, CamOptions, Explanation, LayerCam, Progress};
pub use layer::{near_matches, Activations, Gradients, LayerTensor, LayerView};
pub use method::Method;
pub use model::{CamModel, Capture, LayerInfo};
pub use resize::{resize_bilinear, resize_bilinear_into, upsample_align_corners};
pub use target::{argmax, softmax_rows, Classes, Target, TargetScore};
pub use tokens::{grid_to_tokens, tokens_to_grid, TokenGrid, MAX_PREFIX_TOKENS};
