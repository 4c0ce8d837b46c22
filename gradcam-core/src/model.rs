//! The one trait a backend implements: a model that can be cut at a named layer.

use ndarray::{Array2, ArrayView4};

use crate::{Activations, CamError, Gradients, LayerTensor, LayerView, Target};

/// A layer a model offers, with the shape of its output for one image.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LayerInfo {
    /// PyTorch module path, e.g. `layer4`, `blocks.11.norm1`.
    pub name: String,
    /// Output shape for a batch of one, e.g. `[1, 512, 7, 7]` or `[1, 197, 192]`.
    pub shape: Vec<usize>,
}

/// What one forward (and backward) pass through a cut model gives back.
#[derive(Clone, Debug)]
pub struct Capture {
    /// Model outputs `(B, num_classes)`.
    pub logits: Array2<f32>,
    /// The class explained for each image (resolved from the [`Target`]).
    pub classes: Vec<usize>,
    /// The layer's output.
    pub activation: LayerTensor,
    /// `d target / d activation`, when a target was given.
    pub gradient: Option<LayerTensor>,
}

impl Activations for Capture {
    fn activations(&self) -> LayerView<'_> {
        self.activation.view()
    }
}

impl Gradients for Capture {
    /// # Panics
    /// When the capture was made without a target (no gradient).
    fn gradients(&self) -> LayerView<'_> {
        self.gradient.as_ref().expect("capture was made without a target, so it has no gradient").view()
    }
}

/// A model that can be cut at a named layer. Each backend (candle, libtorch, ONNX Runtime)
/// implements it; core's pipeline only ever talks to this trait.
///
/// Layer names are PyTorch module paths (`layer4`, `blocks.6`, `blocks.11.norm1`): the output
/// of that module is the activation.
pub trait CamModel {
    /// Every layer that can be explained, in forward order.
    fn layers(&mut self) -> Result<Vec<LayerInfo>, CamError>;

    /// The layer chosen when the user names none: the last spatial feature map before global
    /// pooling for CNNs, the last block's `norm1` for ViTs.
    fn default_layer(&mut self) -> Result<String, CamError>;

    /// Runs `input` `(B, 3, H, W)` forward, capturing the output of `layer`. With a target, also
    /// back-propagates the target's score to that output, and only to it: no parameter
    /// gradients, nothing below the cut.
    fn capture(
        &mut self,
        input: ArrayView4<f32>,
        layer: &str,
        target: Option<&Target>,
    ) -> Result<Capture, CamError>;

    /// The whole model on a batch of inputs, returning logits (ScoreCAM's masked inputs).
    fn forward(&mut self, input: ArrayView4<f32>) -> Result<Array2<f32>, CamError>;

    /// The whole model on `input` `(B, 3, H, W)` with the output of `layer` replaced by
    /// `activation` (same layout `capture` returned: tokens for ViTs), returning logits
    /// (AblationCAM). The input is needed because the part after a nested layer can still read
    /// tensors from before it (a ViT block's residual around `norm1`). Backends may skip
    /// recomputing what the replaced output makes unnecessary.
    fn forward_with_activation(
        &mut self,
        input: ArrayView4<f32>,
        layer: &str,
        activation: LayerView<'_>,
    ) -> Result<Array2<f32>, CamError>;
}
