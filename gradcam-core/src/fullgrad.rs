//! FullGrad: the input gradient times the input, plus every bias times its output's gradient.

use ndarray::{Array2, Array3, ArrayView4, Axis};

use crate::cam::min_max_in_place;
use crate::resize::{resize_bilinear, resize_bilinear_into};
use crate::{principal_projection, CamError, FullGradients};

/// pytorch-grad-cam's `FullGrad` map `(B, H, W)` in `[0, 1]` of `input` `(B, C, H, W)` from one
/// backward pass ([`crate::CamModel::full_gradients`]): every channel of `|input gradient ×
/// input|` and of each bias layer's `|bias × output gradient|` min-max scaled on its own (1e-7
/// as `scale_cam_image`) and resized to the input with [`crate::resize_bilinear`]; the bias
/// layers' channels summed per layer; all of it summed (input channels first, then the layers in
/// the backend's order, one after the other in f32 as numpy sums that axis); the sum min-max
/// scaled per image.
///
/// With `eigen_smooth`, FullGrad's own variant replaces the final sum: each of those terms (the
/// input's channels, one per bias layer) min-max scaled again and resized to an eighth of the
/// input's size, their first principal component ([`crate::principal_projection`], the same sign
/// rule as EigenCAM), min-max scaled and resized back to the input.
pub fn fullgrad_maps(
    input: ArrayView4<f32>,
    grads: &FullGradients,
    eigen_smooth: bool,
) -> Result<Array3<f32>, CamError> {
    let (batch, _, h, w) = input.dim();
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
    let (small_h, small_w) = (h / 8, w / 8);
    if eigen_smooth && (small_h == 0 || small_w == 0) {
        return Err(CamError::Shape(format!(
            "fullgrad's eigen-smooth works at an eighth of the input's size, and {h}x{w} has no eighth: \
             explain an input of at least 8x8 or leave eigen-smooth off"
        )));
    }
    let mut out = Array3::<f32>::zeros((batch, h, w));
    for (b, mut total) in out.outer_iter_mut().enumerate() {
        if eigen_smooth {
            let mut stack = Vec::new();
            each_term(input, grads, b, |term| {
                let mut term = term.clone();
                min_max_in_place(term.as_slice_mut().expect("standard layout"));
                stack.extend(resize_bilinear(term.view(), small_h, small_w));
            });
            let terms = stack.len() / (small_h * small_w);
            let stack = Array2::from_shape_vec((terms, small_h * small_w), stack).expect("whole planes");
            let mut projection = principal_projection(stack.view())
                .into_shape_with_order((small_h, small_w))
                .expect("one plane");
            min_max_in_place(projection.as_slice_mut().expect("standard layout"));
            resize_bilinear_into(projection.view(), total.view_mut());
        } else {
            each_term(input, grads, b, |term| total += term);
        }
        min_max_in_place(total.as_slice_mut().expect("standard layout"));
    }
    Ok(out)
}

/// Calls `each` with image `b`'s FullGrad terms at the input's size, in pytorch-grad-cam's order:
/// every input channel's `|gradient × input|`, then each bias layer's sum over its channels of
/// `|bias × gradient|`; every channel min-max scaled (and resized) first.
fn each_term(input: ArrayView4<f32>, grads: &FullGradients, b: usize, mut each: impl FnMut(&Array2<f32>)) {
    let (_, channels, h, w) = input.dim();
    for c in 0..channels {
        let mut term = (&grads.input_gradient.slice(ndarray::s![b, c, .., ..])
            * &input.slice(ndarray::s![b, c, .., ..]))
            .mapv(f32::abs);
        min_max_in_place(term.as_slice_mut().expect("standard layout"));
        each(&term);
    }
    let mut plane = Array2::<f32>::zeros((h, w));
    for layer in &grads.biases {
        let gradient = layer.gradient.index_axis(Axis(0), b);
        let mut sum = Array2::<f32>::zeros((h, w));
        for (c, g) in gradient.outer_iter().enumerate() {
            let mut term = g.mapv(|v| (layer.bias[c] * v).abs());
            min_max_in_place(term.as_slice_mut().expect("standard layout"));
            resize_bilinear_into(term.view(), plane.view_mut());
            sum += &plane;
        }
        each(&sum);
    }
}
