//! FullGrad: the input gradient times the input, plus every bias times its output's gradient.

use ndarray::{Array2, Array3, ArrayView4, Axis};

use crate::cam::min_max_in_place;
use crate::resize::resize_bilinear_into;
use crate::{CamError, FullGradients};

/// pytorch-grad-cam's `FullGrad` map `(B, H, W)` in `[0, 1]` of `input` `(B, C, H, W)` from one
/// backward pass ([`crate::CamModel::full_gradients`]): every channel of `|input gradient ×
/// input|` and of each bias layer's `|bias × output gradient|` min-max scaled on its own (1e-7
/// as `scale_cam_image`) and resized to the input with [`crate::resize_bilinear`]; the bias
/// layers' channels summed per layer; all of it summed (input channels first, then the layers in
/// the backend's order, one after the other in f32 as numpy sums that axis); the sum min-max
/// scaled per image.
pub fn fullgrad_maps(input: ArrayView4<f32>, grads: &FullGradients) -> Result<Array3<f32>, CamError> {
    let (batch, channels, h, w) = input.dim();
    if grads.input_gradient.dim() != input.dim() {
        return Err(CamError::Shape(format!(
            "input gradient {:?} for an input {:?}",
            grads.input_gradient.shape(),
            input.shape()
        )));
    }
    for layer in &grads.biases {
        let (b, c, lh, lw) = layer.gradient.dim();
        if b != batch || c != layer.bias.len() || lh == 0 || lw == 0 {
            return Err(CamError::Shape(format!(
                "bias layer `{}`: gradient {:?} with {} biases for a batch of {batch}",
                layer.layer,
                layer.gradient.shape(),
                layer.bias.len()
            )));
        }
    }
    let mut out = Array3::<f32>::zeros((batch, h, w));
    let mut plane = Array2::<f32>::zeros((h, w));
    for (b, mut total) in out.outer_iter_mut().enumerate() {
        for c in 0..channels {
            let mut term = (&grads.input_gradient.slice(ndarray::s![b, c, .., ..])
                * &input.slice(ndarray::s![b, c, .., ..]))
                .mapv(f32::abs);
            min_max_in_place(term.as_slice_mut().expect("standard layout"));
            total += &term;
        }
        for layer in &grads.biases {
            let gradient = layer.gradient.index_axis(Axis(0), b);
            let mut sum = Array2::<f32>::zeros((h, w));
            for (c, g) in gradient.outer_iter().enumerate() {
                let mut term = g.mapv(|v| (layer.bias[c] * v).abs());
                min_max_in_place(term.as_slice_mut().expect("standard layout"));
                resize_bilinear_into(term.view(), plane.view_mut());
                sum += &plane;
            }
            total += &sum;
        }
        min_max_in_place(total.as_slice_mut().expect("standard layout"));
    }
    Ok(out)
}
