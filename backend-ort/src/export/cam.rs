//! The CAM math of `gradcam_core` as standard ONNX nodes: each method's weights and weighted sum,
//! ReLU, per-image min-max, bilinear upsampling with half-pixel centres (two `MatMul`s by core's
//! interpolation matrices: ONNX Runtime's `Resize` computes the same map several times slower), the
//! mean over layers.
//!
//! Every formula is the one in `gradcam-core/src/cam.rs` (pytorch-grad-cam 1.5.7's), with the
//! same epsilons ([`GRADCAM_PP_EPS`], [`XGRADCAM_EPS`], [`SCALE_EPS`]), so the exported maps and
//! `explain`'s agree to float rounding. Two orders differ: the summation order of reductions (ONNX
//! Runtime's instead of numpy's pairwise sums), and the last min-max, which runs on the small maps
//! before they are upsampled ([`cam_outputs`]).

use gradcam_core::{
    resize_extremes, resize_matrix, Layout, Method, TokenGrid, GRADCAM_PP_EPS, SCALE_EPS, XGRADCAM_EPS,
};

use ndarray::{Array2, ArrayView2, Axis};

use crate::onnx_graph::builder::{attr_i, attr_ints, Builder, FLOAT};

/// One layer's activation and gradient, native layout, as the backward pass outputs them.
pub(crate) struct LayerTensors<'a> {
    pub activation: &'a str,
    pub gradient: &'a str,
    pub layout: Layout,
    /// Token folding (tokens only).
    pub grid: Option<TokenGrid>,
    /// The native shape (batch first; only the non-batch dims are used).
    pub shape: &'a [i64],
}

/// A layer folded to `(N, C, h, w)`, with the values several methods share built once.
struct Folded {
    a: String,
    g: String,
    /// `(h, w)`.
    map_hw: (i64, i64),
    /// `Σ_hw a` per channel `(N, C, 1, 1)` (GradCAM++ and XGradCAM).
    pixel_sum: Option<String>,
    /// `relu(g)` (GradCAM++ and LayerCAM).
    relu_g: Option<String>,
    /// `g · a` (XGradCAM, HiResCAM, GradCAM-ElementWise).
    ga: Option<String>,
}

/// Appends the CAM nodes of `methods` over `layers` to `b`; returns one `(N, H, W)` tensor name
/// per method, in order: pytorch-grad-cam's `cam(...)` output for the input size `hw`.
///
/// At the layer's resolution the methods' raw maps are stacked on the channel axis,
/// `(N, M, h, w)`, so that ReLU and the first min-max run once for all of them (each map still
/// normalised on its own); at batch 1 the per-node cost of six separate tails was a tenth of Lite0's
/// forward pass.
///
/// Nothing runs at the input's resolution but the upsampling's last product (and the sum over
/// layers, and a clip of rounding): the final min-max is affine and the upsampling's weights sum
/// to one, so it is applied to the small maps before they are upsampled, with the minimum and
/// maximum read from the few rows and columns that hold them ([`resize_extremes`]), instead of
/// four more passes over every full-size map.
pub(crate) fn cam_outputs(
    b: &mut Builder,
    layers: &[LayerTensors<'_>],
    methods: &[Method],
    hw: (i64, i64),
) -> Vec<String> {
    // Per layer, its (h, w) and the (N, M, h, w) maps after ReLU and the first min-max.
    let scaled: Vec<((usize, usize), String)> = layers
        .iter()
        .map(|l| {
            let a = fold(b, l.activation, l);
            let g = fold(b, l.gradient, l);
            let mut layer = Folded { a, g, map_hw: map_hw(l), pixel_sum: None, relu_g: None, ga: None };
            let raws: Vec<String> = methods.iter().map(|&m| raw_map(b, m, &mut layer)).collect();
            let stacked = match raws.as_slice() {
                [one] => one.clone(),
                many => {
                    let refs: Vec<&str> = many.iter().map(String::as_str).collect();
                    b.op("Concat", &refs, vec![attr_i("axis", 1)])
                }
            };
            let positive = relu(b, &stacked);
            let (h, w) = layer.map_hw;
            ((h as usize, w as usize), min_max(b, &positive, &[2, 3]))
        })
        .collect();
    let (out_h, out_w) = (hw.0 as usize, hw.1 as usize);
    let hs: Vec<usize> = scaled.iter().map(|((h, _), _)| *h).collect();
    let ws: Vec<usize> = scaled.iter().map(|((_, w), _)| *w).collect();
    let (rows, cols) = (resize_extremes(&hs, out_h), resize_extremes(&ws, out_w));
    // Per layer, core's interpolation matrices along the height and the width.
    let resize: Vec<(Array2<f32>, Array2<f32>)> =
        hs.iter().zip(&ws).map(|(&h, &w)| (resize_matrix(h, out_h), resize_matrix(w, out_w))).collect();

    // Core's `combine_layers`: ReLU (a no-op on upsampled min-max maps), mean over layers and
    // min-max, with the min and max taken from the final map's pixels on `rows` × `cols`.
    let samples: Vec<String> = scaled
        .iter()
        .zip(&resize)
        .map(|((_, map), (ry, rx))| {
            let r = constant(b, ry.select(Axis(0), &rows).view());
            let ct = constant(b, rx.select(Axis(0), &cols).t());
            let part = b.op("MatMul", &[map, &ct], vec![]);
            b.op("MatMul", &[&r, &part], vec![])
        })
        .collect();
    let sampled = mean(b, &samples);
    let min = reduce(b, "ReduceMin", &sampled, &[2, 3]);
    let shifted = b.op("Sub", &[&sampled, &min], vec![]);
    let max = reduce(b, "ReduceMax", &shifted, &[2, 3]);
    let eps = b.scalar(SCALE_EPS as f64, FLOAT);
    let mut denom = b.op("Add", &[&max, &eps], vec![]);
    if scaled.len() > 1 {
        // The mean's division by the number of layers.
        denom = b.scale(&denom, scaled.len() as f64, FLOAT);
    }

    // Each layer's maps shifted and scaled, then upsampled: rows for all methods at once, then
    // each method's columns as (N, H, W).
    let upsampled: Vec<Vec<String>> = scaled
        .iter()
        .zip(&resize)
        .map(|(&((h, _), ref map), (ry, rx))| {
            let shifted = b.op("Sub", &[map, &min], vec![]);
            let normalised = b.op("Div", &[&shifted, &denom], vec![]);
            let ct = constant(b, rx.t());
            let wide = b.op("MatMul", &[&normalised, &ct], vec![]);
            let per_method = match methods.len() {
                1 => vec![wide],
                m => {
                    let sizes = b.ints(&vec![1; m]);
                    b.op_n("Split", &[&wide, &sizes], m, vec![attr_i("axis", 1)])
                }
            };
            let r = constant(b, ry.view());
            per_method
                .iter()
                .map(|m| {
                    let m = b.reshape(m, &[0, h as i64, out_w as i64]);
                    b.op("MatMul", &[&r, &m], vec![])
                })
                .collect()
        })
        .collect();
    let (zero, one) = (b.scalar(0.0, FLOAT), b.scalar(1.0, FLOAT));
    (0..methods.len())
        .map(|m| {
            let layers: Vec<&str> = upsampled.iter().map(|maps| maps[m].as_str()).collect();
            let sum = if layers.len() == 1 { layers[0].to_string() } else { b.op("Sum", &layers, vec![]) };
            // In [0, 1] but for rounding: the min-max ran before the upsampling.
            b.op("Clip", &[&sum, &zero, &one], vec![])
        })
        .collect()
}

/// A float constant holding `m`.
fn constant(b: &mut Builder, m: ArrayView2<f32>) -> String {
    let (rows, cols) = m.dim();
    b.constant(
        "resize",
        &[rows as i64, cols as i64],
        &m.iter().map(|&v| f64::from(v)).collect::<Vec<_>>(),
        FLOAT,
    )
}

/// The mean of same-shaped tensors (the tensor itself for one).
fn mean(b: &mut Builder, xs: &[String]) -> String {
    match xs {
        [one] => one.clone(),
        many => {
            let refs: Vec<&str> = many.iter().map(String::as_str).collect();
            let sum = b.op("Sum", &refs, vec![]);
            let n = b.scalar(many.len() as f64, FLOAT);
            b.op("Div", &[&sum, &n], vec![])
        }
    }
}

/// `(h, w)` of a layer's folded map.
fn map_hw(layer: &LayerTensors<'_>) -> (i64, i64) {
    match (layer.layout, layer.grid) {
        (Layout::Nhwc, _) => (layer.shape[1], layer.shape[2]),
        (Layout::Tokens, Some(grid)) => (grid.height as i64, grid.width as i64),
        _ => (layer.shape[2], layer.shape[3]),
    }
}

/// A layer output (or its gradient) as `(N, C, h, w)`, as core's `explain` folds it.
fn fold(b: &mut Builder, x: &str, layer: &LayerTensors<'_>) -> String {
    match (layer.layout, layer.grid) {
        (Layout::Nhwc, _) => b.op("Transpose", &[x], vec![attr_ints("perm", &[0, 3, 1, 2])]),
        (Layout::Tokens, Some(grid)) => {
            // Drop the prefix tokens, then (N, hw, D) -> (N, D, hw) -> (N, D, h, w), row-major.
            let (tokens, dim) = (layer.shape[1], layer.shape[2]);
            let (start, end, axis) = (b.ints(&[grid.prefix_tokens as i64]), b.ints(&[tokens]), b.ints(&[1]));
            let patches = b.op("Slice", &[x, &start, &end, &axis], vec![]);
            let channels_first = b.op("Transpose", &[&patches], vec![attr_ints("perm", &[0, 2, 1])]);
            b.reshape(&channels_first, &[0, dim, grid.height as i64, grid.width as i64])
        }
        _ => x.to_string(),
    }
}

/// The raw map `(N, 1, h, w)` before ReLU: core's `layer_map` for one layer.
fn raw_map(b: &mut Builder, method: Method, l: &mut Folded) -> String {
    match method {
        Method::GradCam => {
            let w = reduce(b, "ReduceMean", &l.g, &[2, 3]);
            weighted_sum(b, &w, &l.a)
        }
        Method::GradCamPlusPlus => {
            // α = g² / (2g² + Σa·g³ + ε), weight Σ_hw relu(g)·α (0 when not finite).
            let s = pixel_sum(b, l);
            let g2 = b.op("Mul", &[&l.g, &l.g], vec![]);
            let g3 = b.op("Mul", &[&g2, &l.g], vec![]);
            let two_g2 = b.scale(&g2, 2.0, FLOAT);
            let s_g3 = b.op("Mul", &[&s, &g3], vec![]);
            let denom = b.op("Add", &[&two_g2, &s_g3], vec![]);
            let eps = b.scalar(GRADCAM_PP_EPS as f64, FLOAT);
            let denom = b.op("Add", &[&denom, &eps], vec![]);
            let alpha = b.op("Div", &[&g2, &denom], vec![]);
            let relu_g = relu_g(b, l);
            let terms = b.op("Mul", &[&relu_g, &alpha], vec![]);
            let w = reduce(b, "ReduceSum", &terms, &[2, 3]);
            let w = finite_or_zero(b, &w);
            weighted_sum(b, &w, &l.a)
        }
        Method::XGradCam => {
            // Σ_hw g·a / (Σ_hw a + ε) (0 when not finite).
            let s = pixel_sum(b, l);
            let eps = b.scalar(XGRADCAM_EPS as f64, FLOAT);
            let denom = b.op("Add", &[&s, &eps], vec![]);
            let ga = ga(b, l);
            let terms = b.op("Div", &[&ga, &denom], vec![]);
            let w = reduce(b, "ReduceSum", &terms, &[2, 3]);
            let w = finite_or_zero(b, &w);
            weighted_sum(b, &w, &l.a)
        }
        Method::HiResCam => {
            let ga = ga(b, l);
            reduce(b, "ReduceSum", &ga, &[1])
        }
        Method::LayerCam => {
            let relu_g = relu_g(b, l);
            let terms = b.op("Mul", &[&relu_g, &l.a], vec![]);
            reduce(b, "ReduceSum", &terms, &[1])
        }
        Method::GradCamElementWise => {
            let ga = ga(b, l);
            let terms = relu(b, &ga);
            reduce(b, "ReduceSum", &terms, &[1])
        }
        other => unreachable!("{other} is rejected before the graph is built"),
    }
}

/// `Σ_hw a` per channel, `(N, C, 1, 1)`, in numpy's (and core's) pairwise order: GradCAM++ and
/// XGradCAM divide by it, and for LayerNorm outputs it cancels down to a fraction of its terms
/// (ViT-Tiny: |Σa| from 0.13 to 400), so any other summation order moves the maps by ~1e-5.
fn pixel_sum(b: &mut Builder, l: &mut Folded) -> String {
    if l.pixel_sum.is_none() {
        let flat = b.reshape(&l.a, &[0, 0, -1]);
        let sum = pairwise_sum(b, &flat, 0, l.map_hw.0 * l.map_hw.1);
        l.pixel_sum = Some(b.unsqueeze(&sum, &[3]));
    }
    l.pixel_sum.clone().expect("set above")
}

/// numpy's pairwise summation of `x[.., start..start + n]` over the last axis of `(N, C, P)`,
/// as explicit additions in its order (core's `pairwise_sum`): fewer than 8 values one after
/// another; up to 128, 8 interleaved accumulators, `((r0+r1)+(r2+r3))+((r4+r5)+(r6+r7))`, then the
/// remainder one by one; above, the two halves (split at a multiple of 8) summed apart. Returns
/// `(N, C, 1)`.
fn pairwise_sum(b: &mut Builder, x: &str, start: i64, n: i64) -> String {
    const BLOCK: i64 = 128;
    if n > BLOCK {
        let half = (n / 2) / 8 * 8;
        let first = pairwise_sum(b, x, start, half);
        let second = pairwise_sum(b, x, start + half, n - half);
        return b.op("Add", &[&first, &second], vec![]);
    }
    let (rows, rest) = if n < 8 { (0, n) } else { (n / 8, n % 8) };
    let (from, to, axis) = (b.ints(&[start]), b.ints(&[start + n]), b.ints(&[2]));
    let block = b.op("Slice", &[x, &from, &to, &axis], vec![]);
    let sizes: Vec<i64> =
        std::iter::repeat_n(8, rows as usize).chain(std::iter::repeat_n(1, rest as usize)).collect();
    let parts = if sizes.len() == 1 {
        vec![block]
    } else {
        let split = b.ints(&sizes);
        b.op_n("Split", &[&block, &split], sizes.len(), vec![attr_i("axis", 2)])
    };
    let (chunks, singles) = parts.split_at(rows as usize);
    let mut sum = match chunks.split_first() {
        Some((first, others)) => {
            let mut r = first.clone();
            for chunk in others {
                r = b.op("Add", &[&r, chunk], vec![]);
            }
            // Adjacent pairs, three times: a sum of two is the same in any order.
            for shape in [[0, 0, 4, 2], [0, 0, 2, 2], [0, 0, 1, 2]] {
                let pairs = b.reshape(&r, &shape);
                let summed = reduce(b, "ReduceSum", &pairs, &[3]);
                r = b.reshape(&summed, &[0, 0, shape[2]]);
            }
            Some(r)
        }
        None => None,
    };
    for single in singles {
        sum = Some(match sum {
            Some(s) => b.op("Add", &[&s, single], vec![]),
            None => single.clone(),
        });
    }
    sum.expect("n > 0")
}

fn relu_g(b: &mut Builder, l: &mut Folded) -> String {
    if l.relu_g.is_none() {
        l.relu_g = Some(relu(b, &l.g));
    }
    l.relu_g.clone().expect("set above")
}

fn ga(b: &mut Builder, l: &mut Folded) -> String {
    if l.ga.is_none() {
        l.ga = Some(b.op("Mul", &[&l.g, &l.a], vec![]));
    }
    l.ga.clone().expect("set above")
}

/// `Σ_c w_c a_c`, `(N, 1, h, w)`, from weights `(N, C, 1, 1)`.
fn weighted_sum(b: &mut Builder, w: &str, a: &str) -> String {
    let terms = b.op("Mul", &[w, a], vec![]);
    reduce(b, "ReduceSum", &terms, &[1])
}

fn relu(b: &mut Builder, x: &str) -> String {
    b.op("Relu", &[x], vec![])
}

/// `x` where finite, else 0 (core's `finite_or_zero`).
fn finite_or_zero(b: &mut Builder, x: &str) -> String {
    let nan = b.op("IsNaN", &[x], vec![]);
    let inf = b.op("IsInf", &[x], vec![]);
    let bad = b.op("Or", &[&nan, &inf], vec![]);
    let zero = b.scalar(0.0, FLOAT);
    b.op("Where", &[&bad, &zero, x], vec![])
}

/// Per map `(x - min) / (max(x - min) + 1e-7)` over `axes`: core's `min_max_in_place`.
fn min_max(b: &mut Builder, x: &str, axes: &[i64]) -> String {
    let min = reduce(b, "ReduceMin", x, axes);
    let shifted = b.op("Sub", &[x, &min], vec![]);
    let max = reduce(b, "ReduceMax", &shifted, axes);
    let eps = b.scalar(SCALE_EPS as f64, FLOAT);
    let denom = b.op("Add", &[&max, &eps], vec![]);
    b.op("Div", &[&shifted, &denom], vec![])
}

/// A reduction keeping the reduced axes; axes as an input for `ReduceSum` (opset 13) and every
/// other reduction from opset 18, as an attribute before.
fn reduce(b: &mut Builder, op: &str, x: &str, axes: &[i64]) -> String {
    let keep = attr_i("keepdims", 1);
    if op == "ReduceSum" || b.opset >= 18 {
        let axes = b.ints(axes);
        b.op(op, &[x, &axes], vec![keep])
    } else {
        b.op(op, &[x], vec![attr_ints("axes", axes), keep])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reductions_follow_the_opset() {
        for (opset, inputs) in [(17, 1), (18, 2)] {
            let mut b = Builder::new(opset, "t");
            reduce(&mut b, "ReduceMax", "x", &[2, 3]);
            assert_eq!(b.nodes[0].input.len(), inputs, "opset {opset}");
            let mut b = Builder::new(opset, "t");
            reduce(&mut b, "ReduceSum", "x", &[1]);
            assert_eq!(b.nodes[0].input.len(), 2, "ReduceSum, opset {opset}");
        }
    }
}
