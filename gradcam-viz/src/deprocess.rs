//! Pixel-space maps (guided backprop) as pictures.

use image::{Rgb, RgbImage};
use ndarray::ArrayView3;

use crate::VizError;

/// pytorch-grad-cam's `deprocess_image` of a pixel-space map `(3, H, W)` (guided backprop,
/// guided Grad-CAM): standardised over all its values (`(x - mean) / (std + 1e-5)`), scaled by
/// 0.1 around mid-grey, clipped to `[0, 1]` and truncated to 8 bits. The mean and standard
/// deviation are summed in f64 where numpy sums float32 pairwise: a value on an 8-bit boundary
/// can land one level off.
///
/// ```
/// use gradcam_viz::deprocess_image;
/// use ndarray::Array3;
/// let mut map = Array3::<f32>::zeros((3, 2, 4));
/// map[[0, 1, 2]] = 1.0; // one strongly positive red value
/// let picture = deprocess_image(map.view()).unwrap();
/// assert_eq!(picture.dimensions(), (4, 2));
/// // What grad-cam gives for the same values, as (H, W, 3):
/// assert_eq!(picture.get_pixel(2, 1).0, [249, 122, 122]);
/// assert_eq!(picture.get_pixel(0, 0).0, [122, 122, 122]); // the rest sits just under mid-grey
/// ```
pub fn deprocess_image(map: ArrayView3<f32>) -> Result<RgbImage, VizError> {
    let (channels, h, w) = map.dim();
    if channels != 3 || h == 0 || w == 0 {
        return Err(VizError::Invalid(format!(
            "a pixel-space map is (3, H, W) with pixels, not {:?}",
            map.shape()
        )));
    }
    let n = map.len() as f64;
    let mean = map.iter().map(|&v| v as f64).sum::<f64>() / n;
    let var = map.iter().map(|&v| (v as f64 - mean).powi(2)).sum::<f64>() / n;
    let (mean, std) = (mean as f32, var.sqrt() as f32);
    let level = |v: f32| -> u8 {
        let v = ((v - mean) / (std + 1e-5) * 0.1 + 0.5).clamp(0.0, 1.0);
        // numpy's uint8 cast truncates; NaN (a map of NaNs) becomes 0.
        (v * 255.0) as u8
    };
    let width = u32::try_from(w).map_err(|_| VizError::Invalid(format!("width {w}")))?;
    let height = u32::try_from(h).map_err(|_| VizError::Invalid(format!("height {h}")))?;
    Ok(RgbImage::from_fn(width, height, |x, y| {
        let (x, y) = (x as usize, y as usize);
        Rgb([level(map[[0, y, x]]), level(map[[1, y, x]]), level(map[[2, y, x]])])
    }))
}
