//! # gradcam-core
//!
//! The backend-agnostic half of gradcam-rs: every class-activation-map method (Grad-CAM and its
//! family) as plain math on [`ndarray`], numerically identical to pytorch-grad-cam 1.5.7.
//!
//! A backend implements [`CamModel`] (capture a named layer's output and its gradient, run the
//! model forward); [`explain`] turns that into heatmaps through one pipeline:
//!
//! capture → ViT tokens folded to a grid ([`tokens_to_grid`]) → the method's map
//! ([`layer_map`], or [`scorecam_weights`] / [`ablation_weights`] with [`weighted_sum`]) → the raw
//! map ([`LayerCam::raw`]) → ReLU + per-image min-max ([`scale_maps`]) → bilinear upsampling with
//! half-pixel centres ([`resize_bilinear`], OpenCV `INTER_LINEAR`) → mean over layers + min-max
//! ([`combine_layers`]). It depends on no ML framework.
//!
//! ```
//! use gradcam_core::{explain, CamError, CamModel, CamOptions, Capture, LayerInfo, LayerTensor, LayerView, Method, Seed, Target};
//! use ndarray::{Array2, Array4, ArrayView4, Axis};
//!
//! /// A toy "network": the layer `features` is the input itself (3 channels), the head averages
//! /// each channel over the pixels and mixes them into 2 logits.
//! struct Toy { head: Array2<f32> } // (2 classes, 3 channels)
//!
//! impl Toy {
//!     fn logits(&self, features: ArrayView4<f32>) -> Array2<f32> {
//!         let (b, c, h, w) = features.dim();
//!         let pooled = features.to_shape((b, c, h * w)).unwrap().mean_axis(Axis(2)).unwrap();
//!         pooled.dot(&self.head.t())
//!     }
//! }
//!
//! impl CamModel for Toy {
//!     fn layers(&mut self) -> Result<Vec<LayerInfo>, CamError> {
//!         Ok(vec![LayerInfo { name: "features".into(), shape: vec![1, 3, 8, 8] }])
//!     }
//!     fn default_layer(&mut self) -> Result<String, CamError> {
//!         Ok("features".into())
//!     }
//!     fn capture(&mut self, input: ArrayView4<f32>, _layer: &str, seed: Option<&dyn Seed>)
//!         -> Result<Capture, CamError> {
//!         let logits = self.logits(input);
//!         let (b, c, h, w) = input.dim();
//!         // d score / d features[b, c, y, x] = Σ_k seed[b, k] head[k, c] / (h w)
//!         let gradient = match seed {
//!             Some(seed) => {
//!                 let per_channel = seed.seed(logits.view(), &[logits.ncols()])?.dot(&self.head);
//!                 let g = Array4::from_shape_fn((b, c, h, w), |(b, c, _, _)| per_channel[[b, c]] / (h * w) as f32);
//!                 Some(LayerTensor::Spatial(g))
//!             }
//!             None => None,
//!         };
//!         let output_shape = vec![logits.ncols()];
//!         Ok(Capture { logits, output_shape, activation: LayerTensor::Spatial(input.to_owned()), gradient })
//!     }
//!     fn forward(&mut self, input: ArrayView4<f32>) -> Result<Array2<f32>, CamError> {
//!         Ok(self.logits(input))
//!     }
//!     fn forward_with_activation(&mut self, _input: ArrayView4<f32>, _layer: &str, activation: LayerView<'_>)
//!         -> Result<Array2<f32>, CamError> {
//!         match activation {
//!             LayerView::Spatial(a) => Ok(self.logits(a)),
//!             LayerView::Tokens(_) => Err(CamError::Unsupported("no tokens here".into())),
//!         }
//!     }
//! }
//!
//! let mut model = Toy { head: ndarray::array![[1.0, 0.0, 0.5], [0.0, 1.0, -0.5]] };
//! // One image whose first channel is bright in the top-left corner.
//! let input = Array4::from_shape_fn((1, 3, 8, 8), |(_, c, y, x)| if c == 0 && y < 4 && x < 4 { 2.0 } else { 0.1 });
//! let out = explain(&mut model, input.view(), &["features"], &[Method::GradCam, Method::ScoreCam],
//!                   &Target::top_one(), &CamOptions::default())?;
//! for e in &out {
//!     assert_eq!(e.classes, vec![0]);
//!     assert_eq!(e.maps.dim(), (1, 8, 8));
//!     // The map peaks where class 0's evidence is, and is in [0, 1].
//!     assert!(e.maps[[0, 1, 1]] > 0.9 && e.maps[[0, 6, 6]] < 0.1, "{}", e.method);
//!     assert_eq!(e.layers[0].raw.dim(), (1, 8, 8)); // the unnormalised map, per layer
//! }
//! # Ok::<(), CamError>(())
//! ```

mod cam;
mod eigen;
mod error;
mod explain;
mod finer;
mod fullgrad;
mod kernel;
mod layer;
mod layout;
mod method;
mod metrics;
mod model;
mod random;
mod resize;
mod road;
mod target;
mod tokens;

pub use cam::{
    ablation_weights, combine_layers, layer_map, layer_map_with, scale_maps, scorecam_weights, upsample_maps,
    weighted_map, weighted_sum, Reduction, FEM_K, GRADCAM_PP_EPS, KPCA_MAX_POSITIONS, SCALE_EPS,
    XGRADCAM_EPS,
};
pub use eigen::principal_projection;
pub use error::CamError;
pub use explain::{
    ablation_value, explain, scorecam_mask, Augmentation, CamOptions, Cancel, Explanation, LayerCam,
    Progress, AUGMENTATIONS,
};
pub use finer::{finer_comparisons, FinerSeed, FINER_COMPARISONS, FINER_EPS};
pub use fullgrad::fullgrad_maps;
pub use kernel::{kernel_projection, KPCA_COEF0};
pub use layer::{near_matches, Activations, Gradients, LayerTensor, LayerView};
pub use layout::Layout;
pub use method::Method;
pub use metrics::{
    evaluate, Metric, MetricOptions, MetricValues, ROAD_COMBINED_PERCENTILES, ROAD_LEAST_PERCENTILE,
    ROAD_MOST_PERCENTILE,
};
pub use model::{
    default_layer_among, BiasGradient, CamModel, Capture, FullGradients, InputGradient, LayerInfo,
    ReluBackward,
};
pub use random::LegacyRandom;
pub use resize::{
    resize_bilinear, resize_bilinear_into, resize_extremes, resize_matrix, upsample_align_corners,
};
pub use road::{impute, percentile, road_keep_mask, LegacyNormal, ROAD_NEIGHBOURS, ROAD_NOISE};
pub use target::{argmax, softmax_rows, Classes, Region, Seed, Target, TargetScore, COSINE_EPS};
pub use tokens::{grid_to_tokens, tokens_to_grid, TokenGrid, MAX_PREFIX_TOKENS};
