//! Bilinear resizing: OpenCV's `INTER_LINEAR` (half-pixel centres) for the final maps, and
//! PyTorch's `UpsamplingBilinear2d` (`align_corners=True`) for ScoreCAM's masks.

use ndarray::{Array2, ArrayView2, ArrayViewMut2};

/// One output coordinate of a linear resize: the two source indices and their weights.
#[derive(Clone, Copy, Debug)]
struct Tap {
    i0: usize,
    i1: usize,
    w0: f32,
    w1: f32,
}

/// OpenCV `INTER_LINEAR` taps: source `(d + 0.5) * in/out - 0.5` in `f64`, its fraction rounded
/// to `f32` as OpenCV does, clamped to the border (the border pixel repeats).
fn half_pixel_taps(n_in: usize, n_out: usize) -> Vec<Tap> {
    let scale = n_in as f64 / n_out as f64;
    (0..n_out)
        .map(|d| {
            // OpenCV 5 keeps the source position in f64 and rounds only the fraction to f32
            // (rounding the position first is off by up to 2.5e-5 when shrinking).
            let f = (d as f64 + 0.5) * scale - 0.5;
            let floor = f.floor();
            let (mut i0, mut frac) = (floor as isize, (f - floor) as f32);
            if i0 < 0 {
                i0 = 0;
                frac = 0.0;
            }
            if i0 as usize >= n_in - 1 {
                i0 = n_in as isize - 1;
                frac = 0.0;
            }
            let i0 = i0 as usize;
            Tap { i0, i1: (i0 + 1).min(n_in - 1), w0: 1.0 - frac, w1: frac }
        })
        .collect()
}

/// PyTorch `align_corners=True` taps: source `d * (in - 1) / (out - 1)` in `f32`.
fn corner_taps(n_in: usize, n_out: usize) -> Vec<Tap> {
    let scale = if n_out > 1 { (n_in - 1) as f32 / (n_out - 1) as f32 } else { 0.0 };
    (0..n_out)
        .map(|d| {
            let src = scale * d as f32;
            let i0 = (src as usize).min(n_in - 1);
            let frac = src - i0 as f32;
            Tap { i0, i1: if i0 < n_in - 1 { i0 + 1 } else { i0 }, w0: 1.0 - frac, w1: frac }
        })
        .collect()
}

/// Separable resize: rows first (into a `(in_h, out_w)` buffer), then columns, the order and
/// `f32` arithmetic of OpenCV's `HResizeLinear`/`VResizeLinear`.
fn resize_separable(map: ArrayView2<f32>, xs: &[Tap], ys: &[Tap], mut out: ArrayViewMut2<f32>) {
    let (in_h, _) = map.dim();
    let out_w = xs.len();
    let mut rows = vec![0.0f32; in_h * out_w];
    for (y, row) in map.outer_iter().enumerate() {
        let dst = &mut rows[y * out_w..(y + 1) * out_w];
        for (d, t) in dst.iter_mut().zip(xs) {
            *d = row[t.i0] * t.w0 + row[t.i1] * t.w1;
        }
    }
    for (mut dst, t) in out.outer_iter_mut().zip(ys) {
        let r0 = &rows[t.i0 * out_w..(t.i0 + 1) * out_w];
        let r1 = &rows[t.i1 * out_w..(t.i1 + 1) * out_w];
        for ((d, a), b) in dst.iter_mut().zip(r0).zip(r1) {
            *d = a * t.w0 + b * t.w1;
        }
    }
}

/// Resizes a map with bilinear interpolation exactly like OpenCV's
/// `cv2.resize(map, (out_w, out_h), interpolation=cv2.INTER_LINEAR)`: half-pixel centres,
/// border pixels repeated, no anti-aliasing. This is the one bilinear resize of the project.
///
/// ```
/// use gradcam_core::resize_bilinear;
/// use ndarray::array;
/// let up = resize_bilinear(array![[0.0f32, 1.0]].view(), 1, 4);
/// assert_eq!(up, array![[0.0f32, 0.25, 0.75, 1.0]]);
/// ```
///
/// # Panics
/// When `map` is empty or an output side is zero.
pub fn resize_bilinear(map: ArrayView2<f32>, out_h: usize, out_w: usize) -> Array2<f32> {
    let (in_h, in_w) = map.dim();
    assert!(in_h > 0 && in_w > 0 && out_h > 0 && out_w > 0, "cannot resize {in_h}x{in_w} to {out_h}x{out_w}");
    let mut out = Array2::zeros((out_h, out_w));
    resize_bilinear_into(map, out.view_mut());
    out
}

/// [`resize_bilinear`] into an existing `(out_h, out_w)` array.
pub fn resize_bilinear_into(map: ArrayView2<f32>, out: ArrayViewMut2<f32>) {
    let (in_h, in_w) = map.dim();
    let (out_h, out_w) = out.dim();
    let xs = half_pixel_taps(in_w, out_w);
    let ys = half_pixel_taps(in_h, out_h);
    resize_separable(map, &xs, &ys, out);
}

/// The `(n_out, n_in)` matrix of [`resize_bilinear`] along one axis: its rows hold the two taps'
/// weights, so `R_h · map · R_wᵀ` is the resized map (up to the order of the two roundings per
/// axis). Graphs that have `MatMul` but a slower or different `Resize` upsample with it.
///
/// ```
/// use gradcam_core::resize_matrix;
/// let r = resize_matrix(2, 4);
/// assert_eq!(r.row(1).to_vec(), vec![0.75f32, 0.25]);
/// assert!(r.rows().into_iter().all(|row| (row.sum() - 1.0).abs() < 1e-6));
/// ```
pub fn resize_matrix(n_in: usize, n_out: usize) -> Array2<f32> {
    let mut m = Array2::zeros((n_out, n_in));
    for (d, t) in half_pixel_taps(n_in, n_out).iter().enumerate() {
        m[[d, t.i0]] += t.w0;
        m[[d, t.i1]] += t.w1;
    }
    m
}

/// The output indices, in order, that hold the extremes of every [`resize_bilinear`] along one
/// axis from each of the sizes `n_ins` to `n_out`, and of any weighted sum of such resizes (the
/// mean over several layers): a min-max over these rows × columns of the resized maps is the
/// min-max over all pixels.
///
/// Between two neighbours that interpolate the same source pixels (in every resize), an output
/// is an affine function of its index, so it lies between them; only the others can be extreme.
/// From a 7×7 map to 224×224 that is 16 rows and 16 columns.
///
/// ```
/// use gradcam_core::resize_extremes;
/// assert_eq!(resize_extremes(&[2], 4), vec![0, 1, 2, 3]);
/// assert_eq!(resize_extremes(&[7], 224).len(), 16);
/// ```
pub fn resize_extremes(n_ins: &[usize], n_out: usize) -> Vec<usize> {
    let supports: Vec<Vec<(usize, usize)>> = n_ins
        .iter()
        .map(|&n_in| {
            half_pixel_taps(n_in, n_out)
                .iter()
                .map(|t| {
                    if t.w1 == 0.0 {
                        (t.i0, t.i0)
                    } else if t.w0 == 0.0 {
                        (t.i1, t.i1)
                    } else {
                        (t.i0, t.i1)
                    }
                })
                .collect()
        })
        .collect();
    let same = |a: usize, b: usize| supports.iter().all(|s| s[a] == s[b]);
    (0..n_out).filter(|&d| d == 0 || d + 1 == n_out || !same(d - 1, d) || !same(d, d + 1)).collect()
}

/// Resizes like PyTorch's `UpsamplingBilinear2d` (bilinear, `align_corners=True`): the corner
/// pixels of input and output coincide. ScoreCAM upsamples its masks this way.
///
/// ```
/// use gradcam_core::upsample_align_corners;
/// use ndarray::array;
/// let up = upsample_align_corners(array![[0.0f32, 1.0]].view(), 1, 5);
/// assert_eq!(up, array![[0.0f32, 0.25, 0.5, 0.75, 1.0]]);
/// ```
pub fn upsample_align_corners(map: ArrayView2<f32>, out_h: usize, out_w: usize) -> Array2<f32> {
    let (in_h, in_w) = map.dim();
    assert!(in_h > 0 && in_w > 0 && out_h > 0 && out_w > 0, "cannot resize {in_h}x{in_w} to {out_h}x{out_w}");
    let mut out = Array2::zeros((out_h, out_w));
    let (xs, ys) = (corner_taps(in_w, out_w), corner_taps(in_h, out_h));
    resize_separable(map, &xs, &ys, out.view_mut());
    out
}
