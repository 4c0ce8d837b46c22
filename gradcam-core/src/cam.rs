//! The per-layer CAM math on spatial `(B, C, h, w)` tensors, and the post-processing every method
//! shares (ReLU, min-max, upsampling, multi-layer mean). Numerics follow pytorch-grad-cam 1.5.7:
//! the sums over channels run in `f32` in channel order, and sums over pixels use numpy's pairwise
//! `f32` summation, as numpy's reductions over those axes do.

use ndarray::{Array2, Array3, ArrayView2, ArrayView3, ArrayView4, Axis, Zip};

use crate::eigen::principal_projection;
use crate::kernel::kernel_projection;
use crate::resize::resize_bilinear_into;
use crate::{CamError, Method};

/// pytorch-grad-cam's `scale_cam_image` epsilon: `(x - min) / (max + 1e-7)`.
pub const SCALE_EPS: f32 = 1e-7;
/// GradCAM++'s epsilon in `g² / (2g² + Σa·g³ + 1e-6)`.
pub const GRADCAM_PP_EPS: f32 = 1e-6;
/// XGradCAM's epsilon in `Σ g·a / (Σ a + 1e-7)`.
pub const XGRADCAM_EPS: f32 = 1e-7;

/// How the weighted activations of one image, `(C, hw)`, become its raw map: pytorch-grad-cam's
/// `get_cam_image` sums them over channels, or with `eigen_smooth=True` projects them onto their
/// first principal component.
///
/// ```
/// use gradcam_core::{layer_map_with, Method, Reduction};
/// use ndarray::Array4;
/// let a = Array4::from_shape_fn((1, 3, 2, 2), |(_, c, y, x)| (c * y + x) as f32);
/// let g = Array4::from_elem((1, 3, 2, 2), 1.0f32);
/// let smooth = layer_map_with(Method::GradCam, a.view(), Some(g.view()), Reduction::FirstComponent).unwrap();
/// // The maps' pixels differ, but their mean over the image is 0: the projection is centred.
/// assert!(smooth.sum().abs() < 1e-5);
/// assert!(Method::GradCam.supports_eigen_smooth() && !Method::EigenCam.supports_eigen_smooth());
/// ```
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum Reduction {
    /// `Σ_c` over channels.
    #[default]
    Sum,
    /// The first principal component ([`principal_projection`], EigenCAM's sign rule):
    /// `--eigen-smooth`. The methods that have no weighted activations (EigenCAM, EigenGradCAM,
    /// FEM, KPCA-CAM) ignore it, as in pytorch-grad-cam ([`Method::supports_eigen_smooth`]).
    FirstComponent,
}

/// How a method turns one layer's activations (and gradients) into a map.
enum Rule {
    /// Per-channel weights `(B, C)` from `(activations, gradients)`, then `Σ_c w_c a_c`.
    Weights(fn(&[f32], &[f32]) -> f32),
    /// `Σ_c f(g, a)` element-wise.
    Elementwise(fn(f32, f32) -> f32),
    /// The first principal component of `f(g, a)` (`None`: of the activations alone).
    Eigen(Option<fn(f32, f32) -> f32>),
    /// Per-channel weights `(B, C)` from the activations alone, then `Σ_c w_c a_c`.
    ActivationWeights(fn(&[f32]) -> f32),
    /// A projection of each image's `(C, hw)` activations (no gradients).
    Projection(fn(ArrayView2<f32>) -> ndarray::Array1<f32>),
}

fn rule(method: Method) -> Option<Rule> {
    Some(match method {
        // FinerCAM is Grad-CAM of its own gradients (`explain` captures them with `FinerSeed`).
        Method::GradCam | Method::FinerCam => Rule::Weights(|_, g| pairwise_sum(g) / g.len() as f32),
        Method::GradCamPlusPlus => Rule::Weights(gradcam_pp_weight),
        Method::XGradCam => Rule::Weights(|a, g| {
            let denom = pairwise_sum(a) + XGRADCAM_EPS;
            finite_or_zero(sum_terms(a.len(), |i| g[i] * a[i] / denom))
        }),
        Method::HiResCam => Rule::Elementwise(|g, a| g * a),
        Method::LayerCam => Rule::Elementwise(|g, a| g.max(0.0) * a),
        Method::GradCamElementWise => Rule::Elementwise(|g, a| (g * a).max(0.0)),
        Method::EigenCam => Rule::Eigen(None),
        Method::EigenGradCam => Rule::Eigen(Some(|g, a| g * a)),
        Method::Fem => Rule::ActivationWeights(fem_weight),
        Method::KpcaCam => Rule::Projection(kernel_projection),
        Method::ScoreCam | Method::AblationCam | Method::RandomCam => return None,
        Method::FullGrad | Method::GuidedBackprop | Method::GuidedGradCam => return None,
    })
}

/// numpy's pairwise summation of `f32` (8 interleaved accumulators up to 128 values, halving
/// above): the same rounding as numpy's sums over a contiguous axis, and it vectorises.
pub(crate) fn pairwise_sum(x: &[f32]) -> f32 {
    const BLOCK: usize = 128;
    let n = x.len();
    if n < 8 {
        x.iter().fold(0.0, |s, &v| s + v)
    } else if n <= BLOCK {
        let mut r = [0.0f32; 8];
        let chunks = x.chunks_exact(8);
        let tail = chunks.remainder();
        for c in chunks {
            for (ri, &ci) in r.iter_mut().zip(c) {
                *ri += ci;
            }
        }
        let mut s = ((r[0] + r[1]) + (r[2] + r[3])) + ((r[4] + r[5]) + (r[6] + r[7]));
        for &v in tail {
            s += v;
        }
        s
    } else {
        let half = (n / 2) / 8 * 8;
        pairwise_sum(&x[..half]) + pairwise_sum(&x[half..])
    }
}

/// [`pairwise_sum`] of `term(i)` for `i < n`, through a stack buffer for the usual map sizes.
fn sum_terms(n: usize, term: impl Fn(usize) -> f32) -> f32 {
    let mut small = [0.0f32; 256];
    let mut large = Vec::new();
    let buffer = if n <= small.len() {
        &mut small[..n]
    } else {
        large.resize(n, 0.0);
        &mut large[..]
    };
    for (i, b) in buffer.iter_mut().enumerate() {
        *b = term(i);
    }
    pairwise_sum(buffer)
}

fn finite_or_zero(x: f32) -> f32 {
    if x.is_finite() {
        x
    } else {
        0.0
    }
}

/// Equation 19 of Chattopadhyay et al. as pytorch-grad-cam writes it: `α = g² / (2g² + S g³ + ε)`
/// (0 where `g == 0`), weight `Σ relu(g) α`, with `S = Σ a` over the channel's pixels.
fn gradcam_pp_weight(a: &[f32], g: &[f32]) -> f32 {
    let s = pairwise_sum(a);
    // Branch-free so that it vectorises; g == 0 gives 0 / ε = 0 as the reference's `where` does.
    finite_or_zero(sum_terms(g.len(), |i| {
        let g = g[i];
        let g2 = g * g;
        g.max(0.0) * (g2 / (2.0 * g2 + s * (g2 * g) + GRADCAM_PP_EPS))
    }))
}

/// The most positions (h·w) KPCA-CAM takes: a 64×64 layer's kernel is 134 MB of f64, and its
/// eigendecomposition grows with the cube of the positions.
pub const KPCA_MAX_POSITIONS: usize = 4096;

/// FEM's `k` in the `mean + k std` threshold (pytorch-grad-cam's default).
pub const FEM_K: f32 = 2.0;

/// FEM's channel weight: the fraction of the channel's pixels strictly above `mean + 2 std`
/// (population std), with numpy's `f32` arithmetic for the mean and the std.
fn fem_weight(a: &[f32]) -> f32 {
    let n = a.len() as f32;
    let mean = pairwise_sum(a) / n;
    let var = sum_terms(a.len(), |i| {
        let d = a[i] - mean;
        d * d
    }) / n;
    let threshold = mean + FEM_K * var.sqrt();
    (a.iter().filter(|&&v| v > threshold).count() as f64 / a.len() as f64) as f32
}

/// The raw map `(B, h, w)` (before ReLU) of a gradient or eigen method for one layer:
/// what pytorch-grad-cam's `get_cam_image` returns. `activations` and `gradients` are
/// `(B, C, h, w)` (fold tokens first with [`crate::tokens_to_grid`]).
///
/// ScoreCAM and AblationCAM need extra forward passes of the model: compute their weights with
/// [`scorecam_weights`] / [`ablation_weights`] and apply them with [`weighted_sum`], or use
/// [`crate::explain`]. RandomCAM's weights come from [`crate::LegacyRandom::weights`]. For
/// FinerCAM, `gradients` must be those of [`crate::FinerSeed`]'s score.
///
/// ```
/// use gradcam_core::{layer_map, Method};
/// use ndarray::Array4;
/// let a = Array4::from_shape_fn((1, 2, 2, 2), |(_, c, y, x)| (c + y + x) as f32);
/// let g = Array4::from_elem((1, 2, 2, 2), 0.5f32);
/// let raw = layer_map(Method::GradCam, a.view(), Some(g.view())).unwrap();
/// assert_eq!(raw[[0, 1, 1]], 0.5 * 2.0 + 0.5 * 3.0);
/// ```
pub fn layer_map(
    method: Method,
    activations: ArrayView4<f32>,
    gradients: Option<ArrayView4<f32>>,
) -> Result<Array3<f32>, CamError> {
    layer_map_with(method, activations, gradients, Reduction::Sum)
}

/// [`layer_map`] with the channel reduction of pytorch-grad-cam's `eigen_smooth` flag.
pub fn layer_map_with(
    method: Method,
    activations: ArrayView4<f32>,
    gradients: Option<ArrayView4<f32>>,
    reduction: Reduction,
) -> Result<Array3<f32>, CamError> {
    let rule = rule(method).ok_or_else(|| {
        CamError::Unsupported(format!("{method} needs forward passes or a seed: use `explain`"))
    })?;
    let gradients = match (method.needs_gradients(), gradients) {
        (true, None) => return Err(CamError::Unsupported(format!("{method} needs gradients"))),
        (true, Some(g)) if g.shape() != activations.shape() => {
            return Err(CamError::Shape(format!(
                "gradients {:?} and activations {:?} differ",
                g.shape(),
                activations.shape()
            )))
        }
        (_, g) => g,
    };
    let (batch, channels, h, w) = activations.dim();
    if matches!(rule, Rule::Projection(_)) && h * w > KPCA_MAX_POSITIONS {
        // The kernel is (hw)² f64 and its eigendecomposition O((hw)³): refuse before allocating.
        return Err(CamError::Unsupported(format!(
            "{method} on a {h}x{w} layer needs a {n}x{n} kernel matrix ({mb} MB) and its \
             eigendecomposition: choose a deeper layer (at most {KPCA_MAX_POSITIONS} positions)",
            n = h * w,
            mb = (h * w) * (h * w) * 8 / 1_000_000,
        )));
    }
    let a = activations.as_standard_layout();
    let a = a.view().into_shape_with_order((batch, channels, h * w)).expect("standard layout");
    let g = gradients.as_ref().map(|g| g.as_standard_layout());
    let g = g.as_ref().map(|g| g.view().into_shape_with_order((batch, channels, h * w)).expect("standard"));
    let flat = match rule {
        Rule::Weights(weight) => {
            let g = g.expect("checked above");
            let mut weights = Array2::zeros((batch, channels));
            Zip::from(&mut weights)
                .and(a.lanes(Axis(2)))
                .and(g.lanes(Axis(2)))
                .for_each(|w, a, g| *w = weight(a.as_slice().unwrap(), g.as_slice().unwrap()));
            reduce_weighted(weights.view(), a, reduction)
        }
        Rule::Elementwise(f) if reduction == Reduction::FirstComponent => {
            let g = g.expect("checked above");
            first_components(a.dim(), |b, buffer| {
                let (a, g) = (a.index_axis(Axis(0), b), g.index_axis(Axis(0), b));
                buffer.extend(a.iter().zip(g.iter()).map(|(&a, &g)| f(g, a)));
            })
        }
        Rule::Elementwise(f) => {
            let g = g.expect("checked above");
            // Monomorphised per method (a `fn` pointer call per element would not vectorise).
            match method {
                Method::HiResCam => channel_sum(a, g, |g, a| g * a),
                Method::LayerCam => channel_sum(a, g, |g, a| g.max(0.0) * a),
                Method::GradCamElementWise => channel_sum(a, g, |g, a| (g * a).max(0.0)),
                _ => channel_sum(a, g, f),
            }
        }
        Rule::Eigen(f) => first_components(a.dim(), |b, buffer| {
            let image = a.index_axis(Axis(0), b);
            match (f, &g) {
                (Some(f), Some(g)) => {
                    let g = g.index_axis(Axis(0), b);
                    buffer.extend(image.iter().zip(g.iter()).map(|(&a, &g)| f(g, a)));
                }
                _ => buffer.extend(image.iter()),
            }
        }),
        Rule::ActivationWeights(weight) => {
            let mut weights = Array2::zeros((batch, channels));
            Zip::from(&mut weights)
                .and(a.lanes(Axis(2)))
                .for_each(|w, a| *w = weight(a.as_slice().expect("standard layout")));
            weighted_sum_flat(weights.view(), a)
        }
        Rule::Projection(project) => {
            let mut out = Array2::zeros((batch, h * w));
            for (mut out, image) in out.outer_iter_mut().zip(a.outer_iter()) {
                out.assign(&project(image));
            }
            out
        }
    };
    Ok(flat.into_shape_with_order((batch, h, w)).expect("same size"))
}

/// `Σ_c f(g, a)` over channels, in channel order, for `(B, C, hw)` tensors.
fn channel_sum(a: ArrayView3<f32>, g: ArrayView3<f32>, f: impl Fn(f32, f32) -> f32) -> Array2<f32> {
    let (batch, _, hw) = a.dim();
    let mut out = Array2::zeros((batch, hw));
    for ((mut out, a), g) in out.outer_iter_mut().zip(a.outer_iter()).zip(g.outer_iter()) {
        let out = out.as_slice_mut().expect("standard layout");
        for (a, g) in a.outer_iter().zip(g.outer_iter()) {
            let (a, g) = (a.as_slice().expect("standard layout"), g.as_slice().expect("standard layout"));
            for ((o, &a), &g) in out.iter_mut().zip(a).zip(g) {
                *o += f(g, a);
            }
        }
    }
    out
}

/// Each image's `(C, hw)` matrix, written by `fill(b, buffer)` into an empty buffer in
/// row-major order, projected onto its first principal component: `(B, hw)`.
fn first_components(
    (batch, channels, hw): (usize, usize, usize),
    mut fill: impl FnMut(usize, &mut Vec<f32>),
) -> Array2<f32> {
    let mut out = Array2::zeros((batch, hw));
    let mut buffer = Vec::with_capacity(channels * hw);
    for (b, mut row) in out.outer_iter_mut().enumerate() {
        buffer.clear();
        fill(b, &mut buffer);
        let matrix = ArrayView2::from_shape((channels, hw), &buffer).expect("fill writes C x hw values");
        row.assign(&principal_projection(matrix));
    }
    out
}

/// `Σ_c weights[b, c] * activations[b, c]` (or its first principal component), `(B, hw)`.
fn reduce_weighted(weights: ArrayView2<f32>, a: ArrayView3<f32>, reduction: Reduction) -> Array2<f32> {
    match reduction {
        Reduction::Sum => weighted_sum_flat(weights, a),
        Reduction::FirstComponent => first_components(a.dim(), |b, buffer| {
            for (channel, &w) in a.index_axis(Axis(0), b).outer_iter().zip(weights.row(b)) {
                buffer.extend(channel.iter().map(|&x| w * x));
            }
        }),
    }
}

/// `Σ_c weights[b, c] * activations[b, c]`: the map of a channel-weight method, `(B, h, w)`.
pub fn weighted_sum(weights: ArrayView2<f32>, activations: ArrayView4<f32>) -> Result<Array3<f32>, CamError> {
    weighted_map(weights, activations, Reduction::Sum)
}

/// [`weighted_sum`] with the channel reduction of pytorch-grad-cam's `eigen_smooth` flag.
pub fn weighted_map(
    weights: ArrayView2<f32>,
    activations: ArrayView4<f32>,
    reduction: Reduction,
) -> Result<Array3<f32>, CamError> {
    let (batch, channels, h, w) = activations.dim();
    if weights.dim() != (batch, channels) {
        return Err(CamError::Shape(format!(
            "weights {:?} do not fit activations {:?}",
            weights.shape(),
            activations.shape()
        )));
    }
    let a = activations.as_standard_layout();
    let a = a.view().into_shape_with_order((batch, channels, h * w)).expect("standard layout");
    Ok(reduce_weighted(weights, a, reduction).into_shape_with_order((batch, h, w)).expect("same size"))
}

fn weighted_sum_flat(weights: ArrayView2<f32>, a: ArrayView3<f32>) -> Array2<f32> {
    let (batch, _, hw) = a.dim();
    let mut out = Array2::zeros((batch, hw));
    for ((mut out, a), weights) in out.outer_iter_mut().zip(a.outer_iter()).zip(weights.outer_iter()) {
        let out = out.as_slice_mut().unwrap();
        for (a, &wc) in a.outer_iter().zip(weights) {
            for (o, &a) in out.iter_mut().zip(a.as_slice().unwrap()) {
                *o += wc * a;
            }
        }
    }
    out
}

/// ScoreCAM's channel weights: the softmax over channels of each masked input's target score,
/// `scores` `(B, C)`.
pub fn scorecam_weights(scores: ArrayView2<f32>) -> Array2<f32> {
    crate::softmax_rows(scores)
}

/// AblationCAM's channel weights `(y - y_k) / y`, with `y` the target score of image `b`
/// (`original[b]`) and `y_k` its score with channel `k` ablated (`ablated[[b, k]]`). A zero
/// original score gives zero weights instead of infinities.
pub fn ablation_weights(original: &[f32], ablated: ArrayView2<f32>) -> Array2<f32> {
    let mut weights = ablated.to_owned();
    for (mut row, &y) in weights.outer_iter_mut().zip(original) {
        row.mapv_inplace(|yk| finite_or_zero((y - yk) / y));
    }
    weights
}

/// ReLU, then per-image min-max `(x - min) / (max + 1e-7)`: pytorch-grad-cam's
/// `scale_cam_image` without resizing. A map that is all zero stays all zero; NaN becomes 0.
pub fn scale_maps(raw: ArrayView3<f32>) -> Array3<f32> {
    let mut out = raw.mapv(|v| v.max(0.0));
    for mut map in out.outer_iter_mut() {
        min_max_in_place(map.as_slice_mut().expect("standard layout"));
    }
    out
}

pub(crate) fn min_max_in_place(map: &mut [f32]) {
    let min = map.iter().copied().fold(f32::INFINITY, f32::min);
    for v in map.iter_mut() {
        *v -= min;
    }
    let max = map.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let denom = max + SCALE_EPS;
    for v in map.iter_mut() {
        *v /= denom;
    }
}

/// Resizes every map `(B, h, w)` to `(B, out_h, out_w)` with [`crate::resize_bilinear`].
pub fn upsample_maps(maps: ArrayView3<f32>, out_h: usize, out_w: usize) -> Array3<f32> {
    let mut out = Array3::zeros((maps.len_of(Axis(0)), out_h, out_w));
    for (map, dst) in maps.outer_iter().zip(out.outer_iter_mut()) {
        resize_bilinear_into(map, dst);
    }
    out
}

/// Combines the upsampled, scaled maps of several layers `[(B, H, W)]` as pytorch-grad-cam's
/// `aggregate_multi_layers` does: ReLU, mean over layers, per-image min-max.
pub fn combine_layers(per_layer: &[Array3<f32>]) -> Result<Array3<f32>, CamError> {
    let first = per_layer.first().ok_or_else(|| CamError::Shape("no layer maps to combine".into()))?;
    let mut sum = Array3::<f32>::zeros(first.raw_dim());
    for maps in per_layer {
        if maps.dim() != first.dim() {
            return Err(CamError::Shape(format!(
                "layer maps {:?} and {:?} differ",
                first.shape(),
                maps.shape()
            )));
        }
        Zip::from(&mut sum).and(maps).for_each(|s, &m| *s += m.max(0.0));
    }
    let n = per_layer.len() as f32;
    sum.mapv_inplace(|v| v / n);
    for mut map in sum.outer_iter_mut() {
        min_max_in_place(map.as_slice_mut().expect("standard layout"));
    }
    Ok(sum)
}
