//! The one trait a backend implements: a model that can be cut at a named layer.

use ndarray::{Array2, Array4, ArrayView4};

use crate::{Activations, CamError, Gradients, LayerTensor, LayerView, Seed};

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
    /// The model's first output, flattened per image: `(B, num_classes)` for a classifier,
    /// `(B, C·H·W)` for a segmentation model.
    pub logits: Array2<f32>,
    /// The per-image shape of that output: `[num_classes]`, `[C, H, W]`, `[D]`.
    pub output_shape: Vec<usize>,
    /// The layer's output.
    pub activation: LayerTensor,
    /// `d score / d activation`, when a seed was given.
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

/// How a backward pass to the input treats the model's ReLUs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ReluBackward {
    /// Autograd's: the gradient passes where the ReLU's input was positive.
    Plain,
    /// Guided backpropagation's (Springenberg et al., pytorch-grad-cam's `GuidedBackpropReLU`):
    /// it passes where the ReLU's input was positive *and* the gradient itself is positive.
    Guided,
}

/// What a backward pass down to the input gives back ([`CamModel::input_gradient`]).
#[derive(Clone, Debug)]
pub struct InputGradient {
    /// The model's first output, flattened per image, as in [`Capture::logits`].
    pub logits: Array2<f32>,
    /// Its per-image shape, as in [`Capture::output_shape`].
    pub output_shape: Vec<usize>,
    /// `d score / d input`, shaped like the input `(B, 3, H, W)`.
    pub gradient: Array4<f32>,
}

/// A layer whose output has a per-channel bias, with that output's gradient (FullGrad).
#[derive(Clone, Debug)]
pub struct BiasGradient {
    /// The layer's module path.
    pub layer: String,
    /// Its bias per channel: a convolution's own, a BatchNorm's folded from its running
    /// statistics (`bias − mean · weight / √(var + eps)`).
    pub bias: Vec<f32>,
    /// `d score / d output`, `(B, C, h, w)`.
    pub gradient: Array4<f32>,
}

/// What one backward pass down to the input and every bias gives back
/// ([`CamModel::full_gradients`]).
#[derive(Clone, Debug)]
pub struct FullGradients {
    /// The model's first output, flattened per image, as in [`Capture::logits`].
    pub logits: Array2<f32>,
    /// Its per-image shape, as in [`Capture::output_shape`].
    pub output_shape: Vec<usize>,
    /// `d score / d input`, `(B, 3, H, W)` (plain ReLUs).
    pub input_gradient: Array4<f32>,
    /// Every layer with a bias, in forward order.
    pub biases: Vec<BiasGradient>,
}

/// A model that can be cut at a named layer. Each backend (candle, libtorch, ONNX Runtime)
/// implements it; core's pipeline only ever talks to this trait.
///
/// Layer names are PyTorch module paths (`layer4`, `blocks.6`, `blocks.11.norm1`): the output
/// of that module is the activation.
pub trait CamModel {
    /// Every layer that can be explained, in forward order.
    fn layers(&mut self) -> Result<Vec<LayerInfo>, CamError>;

    /// Why `name`, which is not among [`CamModel::layers`], cannot be explained, when the backend
    /// knows more than that it is unknown (a module whose output the exporter folded away);
    /// `None` otherwise.
    fn why_not_a_layer(&mut self, name: &str) -> Option<CamError> {
        let _ = name;
        None
    }

    /// The layer chosen when the user names none: [`default_layer_among`] the model's
    /// [`CamModel::layers`] (the last block's `norm1` for ViTs, the last spatial feature map for
    /// CNNs). Override it only for a model that knows better.
    fn default_layer(&mut self) -> Result<String, CamError> {
        default_layer_among(&self.layers()?)
    }

    /// Runs `input` `(B, 3, H, W)` forward, capturing the output of `layer`. With a seed, also
    /// back-propagates `Σ seed(logits) · logits` to that output, and only to it: no parameter
    /// gradients, nothing below the cut. The backend calls [`Seed::seed`] on the outputs of this
    /// very forward pass and passes its error on: which class and which score is core's choice
    /// ([`crate::Target`] implements [`Seed`]).
    fn capture(
        &mut self,
        input: ArrayView4<f32>,
        layer: &str,
        seed: Option<&dyn Seed>,
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

    /// Runs `input` `(B, 3, H, W)` forward and back-propagates `Σ seed(logits) · logits` down to
    /// the input itself (guided backprop, guided Grad-CAM). With [`ReluBackward::Guided`] every
    /// ReLU of the model passes only positive gradients on the way. No parameter gradients.
    ///
    /// A backend that cannot differentiate down to the input keeps this default, a typed
    /// [`CamError::Unsupported`].
    fn input_gradient(
        &mut self,
        input: ArrayView4<f32>,
        seed: &dyn Seed,
        relu: ReluBackward,
    ) -> Result<InputGradient, CamError> {
        let _ = (input, seed, relu);
        Err(CamError::Unsupported(
            "this backend cannot back-propagate to the input, which guided-backprop and guided-gradcam need; \
             use another backend or a layer method such as gradcam"
                .into(),
        ))
    }

    /// Runs `input` forward and back-propagates `Σ seed(logits) · logits` to the input and to the
    /// output of every layer with a per-channel bias, in one pass (FullGrad). Which layers have
    /// one follows pytorch-grad-cam: modules that are exactly `nn.Conv2d` or `nn.BatchNorm2d`
    /// with a bias.
    ///
    /// A backend that cannot keeps this default, a typed [`CamError::Unsupported`].
    fn full_gradients(&mut self, input: ArrayView4<f32>, seed: &dyn Seed) -> Result<FullGradients, CamError> {
        let _ = (input, seed);
        Err(CamError::Unsupported(
            "this backend cannot take the bias gradients fullgrad needs yet; use the candle or tch backend, or another method"
                .into(),
        ))
    }
}

/// The layer to explain when the user names none, among `layers` in forward order (as
/// [`CamModel::layers`] lists them), one rule for every backend:
/// 1. ViTs: the last token layer (3-D) named `….<N>.norm1`, the input of the last attention,
///    which pytorch-grad-cam's documentation recommends (`blocks.11.norm1`);
/// 2. CNNs: the last feature map with more than one pixel, the one global pooling reads, named by
///    its outermost listed module (`layer4` rather than `layer4.1` or `layer4.1.act3`, which
///    output the same tensor: a module's output comes no earlier than its children's, so a listed
///    ancestor of the last feature map with the same shape outputs that very map);
/// 3. else the last 4-D layer, else the last 3-D one.
///
/// ```
/// use gradcam_core::{default_layer_among, LayerInfo};
/// let layer = |name: &str, shape: &[usize]| LayerInfo { name: name.into(), shape: shape.to_vec() };
/// let resnet = [
///     layer("layer3", &[1, 256, 14, 14]),
///     layer("layer4", &[1, 512, 7, 7]),
///     layer("layer4.1", &[1, 512, 7, 7]),
///     layer("layer4.1.act2", &[1, 512, 7, 7]),
/// ];
/// assert_eq!(default_layer_among(&resnet).unwrap(), "layer4");
/// let vit = [layer("blocks.10.norm1", &[1, 197, 192]), layer("blocks.11.norm1", &[1, 197, 192]), layer("norm", &[1, 197, 192])];
/// assert_eq!(default_layer_among(&vit).unwrap(), "blocks.11.norm1");
/// ```
pub fn default_layer_among(layers: &[LayerInfo]) -> Result<String, CamError> {
    let is_norm1 = |name: &str| {
        let mut parts = name.rsplit('.');
        parts.next() == Some("norm1")
            && parts.next().is_some_and(|n| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()))
    };
    if let Some(l) = layers.iter().rev().find(|l| l.shape.len() == 3 && is_norm1(&l.name)) {
        return Ok(l.name.clone());
    }
    let spatial = |l: &&LayerInfo| l.shape.len() == 4 && l.shape[2] * l.shape[3] > 1;
    if let Some(last) = layers.iter().rev().find(spatial) {
        let is_ancestor = |name: &str| {
            last.name.len() > name.len()
                && last.name.starts_with(name)
                && last.name.as_bytes()[name.len()] == b'.'
        };
        let outermost = layers
            .iter()
            .filter(|l| l.shape == last.shape && is_ancestor(&l.name))
            .min_by_key(|l| l.name.len())
            .unwrap_or(last);
        return Ok(outermost.name.clone());
    }
    layers
        .iter()
        .rev()
        .find(|l| l.shape.len() == 4)
        .or_else(|| layers.iter().rev().find(|l| l.shape.len() == 3))
        .map(|l| l.name.clone())
        .ok_or_else(|| CamError::Unsupported("the model has no 4-D or 3-D layer to explain; name one".into()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn layer(name: &str, shape: &[usize]) -> LayerInfo {
        LayerInfo { name: name.into(), shape: shape.to_vec() }
    }

    #[test]
    fn cnn_default_is_the_last_map_with_pixels_under_its_outermost_name() {
        // Lite0: conv_head and bn2 are 7x7; a 1x1 squeeze-excite map after them does not count.
        let lite0 = [
            layer("blocks.6", &[1, 320, 7, 7]),
            layer("conv_head", &[1, 1280, 7, 7]),
            layer("bn2", &[1, 1280, 7, 7]),
            layer("bn2.act", &[1, 1280, 7, 7]),
            layer("head.se", &[1, 1280, 1, 1]),
        ];
        assert_eq!(default_layer_among(&lite0).unwrap(), "bn2");
        // A sibling with the same shape is not an ancestor (`layer4.1` vs `layer4.10`).
        let siblings = [layer("layer4.1", &[1, 8, 3, 3]), layer("layer4.10", &[1, 8, 3, 3])];
        assert_eq!(default_layer_among(&siblings).unwrap(), "layer4.10");
        // An ancestor listed with another shape (it pools) is not the same output.
        let pooled = [layer("features", &[1, 8, 1, 1]), layer("features.conv", &[1, 8, 3, 3])];
        assert_eq!(default_layer_among(&pooled).unwrap(), "features.conv");
    }

    #[test]
    fn vit_default_is_the_last_norm1_and_fallbacks_follow() {
        let vit = [
            layer("patch_embed", &[1, 192, 14, 14]),
            layer("blocks.0.norm1", &[1, 197, 192]),
            layer("blocks.11.norm1", &[1, 197, 192]),
            layer("blocks.11.norm2", &[1, 197, 192]),
            layer("norm", &[1, 197, 192]),
        ];
        assert_eq!(default_layer_among(&vit).unwrap(), "blocks.11.norm1");
        // `norm1` outside a numbered block does not count; a 1x1 map is still better than none.
        let other = [layer("norm1", &[1, 5, 4]), layer("x.norm1", &[1, 5, 4]), layer("pool", &[1, 4, 1, 1])];
        assert_eq!(default_layer_among(&other).unwrap(), "pool");
        assert_eq!(default_layer_among(&other[..2]).unwrap(), "x.norm1");
        assert!(matches!(default_layer_among(&[layer("head", &[1, 10])]), Err(CamError::Unsupported(_))));
    }
}
