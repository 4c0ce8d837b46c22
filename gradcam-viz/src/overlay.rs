//! Heatmaps laid over photos, and the blocky activation-resolution view.

use gradcam_core::resize_bilinear;
use image::RgbImage;
use ndarray::{Array2, ArrayView2, ArrayView3};

use crate::{level, Colormap, VizError};

/// pytorch-grad-cam's default share of the photo in an overlay.
pub const DEFAULT_IMAGE_WEIGHT: f64 = 0.5;

/// Lays a CAM over a photo exactly like pytorch-grad-cam's
/// `show_cam_on_image(np.float32(image) / 255, cam, use_rgb=True, colormap, image_weight)`:
/// the cam is quantised to 8 bits by truncation and coloured, then
/// `(1 - image_weight) * heatmap + image_weight * photo` (f32, channels in `[0, 1]`) is divided by
/// its maximum and truncated to 8 bits. Identical bytes for the same inputs.
///
/// `cam` holds values in `[0, 1]` (what [`gradcam_core::explain`] returns). When its size differs
/// from the photo's, it is first resized to the photo with
/// [`gradcam_core::resize_bilinear`] (OpenCV `INTER_LINEAR`), so a 224 × 224 map can be shown on
/// the full-resolution photo. `image_weight` must lie in `[0, 1]` (0: heatmap only).
///
/// ```
/// use gradcam_viz::{overlay, Colormap};
/// use ndarray::Array2;
/// let photo = image::RgbImage::from_pixel(8, 6, image::Rgb([90, 90, 90]));
/// let mut cam = Array2::<f32>::zeros((6, 8));
/// cam[[2, 3]] = 1.0; // the hottest spot
/// let out = overlay(&photo, cam.view(), Colormap::Jet, 0.5).unwrap();
/// let hot = out.get_pixel(3, 2).0;
/// let cold = out.get_pixel(0, 0).0;
/// assert!(hot[0] > hot[2] && cold[2] > cold[0]); // red where the CAM is high, blue where low
/// assert!(overlay(&photo, cam.view(), Colormap::Jet, 1.5).is_err());
/// ```
pub fn overlay(
    image: &RgbImage,
    cam: ArrayView2<f32>,
    colormap: Colormap,
    image_weight: f64,
) -> Result<RgbImage, VizError> {
    let (h, w) = (image.height() as usize, image.width() as usize);
    let resized = fit(cam, h, w)?;
    let cam = resized.as_ref().map_or(cam, |r| r.view());
    let (heat_w, image_w) = weights(image_weight)?;
    // Every product numpy computes, precomputed per 8-bit value (same f32 operations, same bits).
    let photo: [f32; 256] = std::array::from_fn(|v| image_w * (v as f32 / 255.0));
    let pixels = image.as_raw().chunks_exact(3).map(|p| p.iter().map(|&v| photo[v as usize]));
    blend(cam.view(), colormap, heat_w, pixels)
}

/// [`overlay`] for a photo already in f32: `image` is `(H, W, 3)` RGB with values in `[0, 1]`
/// (for instance [`Preprocess::resized_f32`](crate::Preprocess::resized_f32), the photo the
/// model saw). Values above 1 (or NaN) are an error, as in pytorch-grad-cam.
pub fn overlay_f32(
    image: ArrayView3<f32>,
    cam: ArrayView2<f32>,
    colormap: Colormap,
    image_weight: f64,
) -> Result<RgbImage, VizError> {
    let (h, w, c) = image.dim();
    if c != 3 || h == 0 || w == 0 {
        return Err(VizError::Shape {
            what: "image (H, W, 3)",
            expected: vec![h, w, 3],
            found: vec![h, w, c],
        });
    }
    if image.iter().any(|&v| v > 1.0 || v.is_nan()) {
        return Err(VizError::Invalid("the image must be f32 in [0, 1]".into()));
    }
    let resized = fit(cam, h, w)?;
    let cam = resized.as_ref().map_or(cam, |r| r.view());
    let (heat_w, image_w) = weights(image_weight)?;
    let pixels = image.as_standard_layout();
    let flat = pixels.as_slice().ok_or_else(|| VizError::Invalid("image not contiguous".into()))?;
    blend(cam.view(), colormap, heat_w, flat.chunks_exact(3).map(|p| p.iter().map(|&v| image_w * v)))
}

/// The two blend weights as numpy sees them: Python computes `1 - w` in f64, numpy rounds each
/// scalar to f32 before multiplying the f32 arrays.
fn weights(image_weight: f64) -> Result<(f32, f32), VizError> {
    if !(0.0..=1.0).contains(&image_weight) {
        return Err(VizError::Invalid(format!(
            "image_weight should be in the range [0, 1], got {image_weight}"
        )));
    }
    Ok(((1.0 - image_weight) as f32, image_weight as f32))
}

/// The cam resized to `h × w`, or `None` when it already has that size.
fn fit(cam: ArrayView2<f32>, h: usize, w: usize) -> Result<Option<Array2<f32>>, VizError> {
    let (ch, cw) = cam.dim();
    if ch == 0 || cw == 0 {
        return Err(VizError::Invalid("the CAM is empty".into()));
    }
    if h == 0 || w == 0 {
        return Err(VizError::Invalid("the image is empty (0 pixels)".into()));
    }
    Ok(((ch, cw) != (h, w)).then(|| resize_bilinear(cam, h, w)))
}

/// The shared second half of the overlays; `photo` yields `image_weight * image` for each
/// pixel's three channels, in the cam's row-major order.
fn blend<P: Iterator<Item = f32>>(
    cam: ArrayView2<f32>,
    colormap: Colormap,
    heat_w: f32,
    photo: impl Iterator<Item = P>,
) -> Result<RgbImage, VizError> {
    let (h, w) = cam.dim();
    let heat: [[f32; 3]; 256] =
        std::array::from_fn(|l| colormap.lut()[l].map(|c| heat_w * (c as f32 / 255.0)));
    let cam = cam.as_standard_layout();
    let cam = cam.as_slice().ok_or_else(|| VizError::Invalid("CAM not contiguous".into()))?;
    let mut sum = vec![0.0f32; h * w * 3];
    for ((&v, rgb), pixel) in cam.iter().zip(sum.chunks_exact_mut(3)).zip(photo) {
        let colour = &heat[level(v) as usize];
        for ((s, c), p) in rgb.iter_mut().zip(colour).zip(pixel) {
            *s = c + p;
        }
    }
    let max = max_of(&sum);
    let mut out = RgbImage::new(w as u32, h as u32);
    // numpy: `np.uint8(255 * (cam / np.max(cam)))`; a black result (max 0) stays black.
    for (o, &x) in out.as_mut().iter_mut().zip(&sum) {
        *o = (255.0f32 * (x / max)) as u8;
    }
    Ok(out)
}

/// The largest value, in 8 independent lanes so the compiler can vectorise it.
fn max_of(values: &[f32]) -> f32 {
    let mut lanes = [f32::NEG_INFINITY; 8];
    let chunks = values.chunks_exact(8);
    let rest = chunks.remainder();
    for chunk in chunks {
        for (m, &v) in lanes.iter_mut().zip(chunk) {
            *m = if v > *m { v } else { *m };
        }
    }
    rest.iter().chain(&lanes).fold(f32::NEG_INFINITY, |m, &v| if v > m { v } else { m })
}

/// Enlarges a map by nearest neighbour: output pixel `(y, x)` takes source cell
/// `(y * h / out_h, x * w / out_w)`, so each activation cell becomes a visible block.
///
/// ```
/// use ndarray::array;
/// let big = gradcam_viz::resize_nearest(array![[0.0f32, 1.0]].view(), 2, 4).unwrap();
/// assert_eq!(big, array![[0.0f32, 0.0, 1.0, 1.0], [0.0, 0.0, 1.0, 1.0]]);
/// ```
pub fn resize_nearest(map: ArrayView2<f32>, out_h: usize, out_w: usize) -> Result<Array2<f32>, VizError> {
    let (h, w) = map.dim();
    if h == 0 || w == 0 || out_h == 0 || out_w == 0 {
        return Err(VizError::Invalid(format!("cannot resize {h}x{w} to {out_h}x{out_w}")));
    }
    let cols: Vec<usize> = (0..out_w).map(|x| x * w / out_w).collect();
    Ok(Array2::from_shape_fn((out_h, out_w), |(y, x)| map[[y * h / out_h, cols[x]]]))
}

/// The "origin" view: a map at activation resolution (say 7 × 7, values in `[0, 1]`), coloured
/// and enlarged to `out_h × out_w` by nearest neighbour so every cell stays a sharp block —
/// what the layer actually saw, before any smoothing by upsampling.
///
/// ```
/// use gradcam_viz::{origin_view, Colormap};
/// use ndarray::array;
/// let view = origin_view(array![[0.0f32, 1.0]].view(), 4, 4, Colormap::Jet).unwrap();
/// assert_eq!(view.get_pixel(0, 3).0, Colormap::Jet.color(0));
/// assert_eq!(view.get_pixel(3, 0).0, Colormap::Jet.color(255));
/// ```
pub fn origin_view(
    map: ArrayView2<f32>,
    out_h: usize,
    out_w: usize,
    colormap: Colormap,
) -> Result<RgbImage, VizError> {
    let (h, w) = map.dim();
    if h == 0 || w == 0 || out_h == 0 || out_w == 0 {
        return Err(VizError::Invalid(format!("cannot resize {h}x{w} to {out_h}x{out_w}")));
    }
    let lut = colormap.lut();
    let mut out = RgbImage::new(out_w as u32, out_h as u32);
    let mut row = vec![0u8; 3 * out_w];
    let mut last = usize::MAX;
    // Same cell choice as `resize_nearest`; each distinct source row is coloured once.
    for (y, dst) in out.as_mut().chunks_exact_mut(3 * out_w).enumerate() {
        let sy = y * h / out_h;
        if sy != last {
            for (x, px) in row.chunks_exact_mut(3).enumerate() {
                px.copy_from_slice(&lut[level(map[[sy, x * w / out_w]]) as usize]);
            }
            last = sy;
        }
        dst.copy_from_slice(&row);
    }
    Ok(out)
}
