//! # backend-candle
//!
//! The candle backend of gradcam-rs: runs a candle model, makes the output of a named layer a
//! gradient leaf, runs the rest of the model from it and back-propagates the target score to
//! that leaf only — no parameter gradients, nothing below the cut. The result goes to
//! [`gradcam_core`], which turns it into a heatmap.
//!
//! - [`CandleModel::from_safetensors`] loads timm checkpoints (state-dict names) of the
//!   [`ARCHITECTURES`]: ResNet (basic/bottleneck, plain/deep/tiered stems, ResNet-D
//!   downsample), EfficientNet-Lite (TF "SAME" and PyTorch padding), ViT and DeiT (distilled);
//!   classifiers of any class count, one-logit models, and headless (`num_classes=0`) embedding
//!   models, whose output is timm's pooled features; and torchvision's FCN segmenters
//!   (`fcn_resnet50`, `fcn_resnet101`), whose output is `(B, classes, H, W)`.
//! - [`CandleModel::from_net`] wraps your own network: implement [`CandleCamNet`], passing each
//!   named module output through [`Taps`].
//!
//! Layer names are PyTorch module paths, nested ones included (`layer4`, `layer4.1.conv2`,
//! `blocks.6.0`, `blocks.11.norm1`). Everything here needs the crate feature `candle`; without
//! it the crate is empty, so a workspace build needs no candle.
#![cfg(feature = "candle")]

mod error;
mod model;
mod ops;
mod taps;
mod weights;
mod zoo;

pub use error::CandleError;
pub use model::{CandleCamNet, CandleModel};
pub use taps::Taps;
pub use zoo::ARCHITECTURES;
