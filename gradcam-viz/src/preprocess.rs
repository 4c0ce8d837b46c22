//! Photos to model inputs: RGB → resize → `[0, 1]` → mean/std normalisation → CHW.

use std::path::Path;

use gradcam_core::resize_bilinear;
use image::RgbImage;
use ndarray::{Array3, Array4, ArrayView3, Axis};

use crate::{load_image, VizError};

/// ImageNet channel means (RGB), the torchvision/timm default.
pub const IMAGENET_MEAN: [f32; 3] = [0.485, 0.456, 0.406];
/// ImageNet channel standard deviations (RGB), the torchvision/timm default.
pub const IMAGENET_STD: [f32; 3] = [0.229, 0.224, 0.225];

/// How photos are resized to the model input.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum ResizeFilter {
    /// Pillow's `BILINEAR` on the 8-bit photo, antialiased when shrinking: torchvision's and
    /// timm's default, so ImageNet models see what they were evaluated on (the shipped Lite0 gives
    /// chelsea p = 0.80 with it, 0.77 with [`ResizeFilter::Linear`]).
    #[default]
    Antialiased,
    /// OpenCV `INTER_LINEAR` on the `[0, 1]` floats (no antialiasing): the preprocessing of
    /// pytorch-grad-cam's examples and of this project's model fixtures.
    Linear,
}

/// How a photo becomes a model input: resize ([`ResizeFilter`]) to `height × width`, scale to
/// `[0, 1]`, subtract `mean`, divide by `std`, transpose to `(3, H, W)`. With
/// [`ResizeFilter::Linear`] this is exactly
/// `(cv2.resize(rgb / 255, (W, H), INTER_LINEAR) - mean) / std` in f32.
///
/// ```
/// use gradcam_viz::Preprocess;
/// let photo = image::RgbImage::from_pixel(40, 30, image::Rgb([255, 128, 0]));
/// let x = Preprocess::default().tensor(&photo).unwrap();
/// assert_eq!(x.dim(), (3, 224, 224));
/// assert!((x[[0, 0, 0]] - (1.0 - 0.485) / 0.229).abs() < 1e-6);
///
/// let small = Preprocess { height: 96, width: 128, ..Preprocess::default() };
/// assert_eq!(small.batch(&[photo.clone(), photo]).unwrap().dim(), (2, 3, 96, 128));
/// ```
#[derive(Clone, Debug, PartialEq)]
pub struct Preprocess {
    /// Model input height.
    pub height: usize,
    /// Model input width.
    pub width: usize,
    /// Per-channel mean (RGB) subtracted after scaling to `[0, 1]`.
    pub mean: [f32; 3],
    /// Per-channel standard deviation (RGB) divided by after subtracting the mean.
    pub std: [f32; 3],
    /// The resize filter.
    pub filter: ResizeFilter,
}

impl Default for Preprocess {
    /// 224 × 224, ImageNet mean and standard deviation.
    fn default() -> Self {
        Preprocess {
            height: 224,
            width: 224,
            mean: IMAGENET_MEAN,
            std: IMAGENET_STD,
            filter: ResizeFilter::default(),
        }
    }
}

impl Preprocess {
    /// Model input of `height × width` with the ImageNet statistics.
    pub fn new(height: usize, width: usize) -> Self {
        Preprocess { height, width, ..Preprocess::default() }
    }

    fn check(&self) -> Result<(), VizError> {
        if self.height == 0 || self.width == 0 {
            return Err(VizError::Invalid(format!(
                "model input size {}x{} is empty",
                self.height, self.width
            )));
        }
        if self.std.iter().any(|s| *s == 0.0 || !s.is_finite()) || self.mean.iter().any(|m| !m.is_finite()) {
            return Err(VizError::Invalid(format!(
                "normalisation mean {:?} / std {:?} must be finite with std non-zero",
                self.mean, self.std
            )));
        }
        Ok(())
    }

    /// The `(3, height, width)` model input for one photo.
    pub fn tensor(&self, image: &RgbImage) -> Result<Array3<f32>, VizError> {
        let mut out = self.resized_planes(image)?;
        for (c, mut plane) in out.outer_iter_mut().enumerate() {
            let (mean, std) = (self.mean[c], self.std[c]);
            plane.mapv_inplace(|x| (x - mean) / std);
        }
        Ok(out)
    }

    /// The photo resized to the model input, before normalisation: `(height, width, 3)` RGB in
    /// `[0, 1]`, the `rgb_img` pytorch-grad-cam's examples pass to `show_cam_on_image`. With
    /// [`overlay_f32`](crate::overlay_f32) it gives their overlay at model resolution.
    ///
    /// ```
    /// use gradcam_viz::{overlay_f32, Colormap, Preprocess};
    /// let photo = image::RgbImage::from_pixel(300, 200, image::Rgb([200, 100, 50]));
    /// let rgb = Preprocess::default().resized_f32(&photo).unwrap();
    /// assert_eq!(rgb.dim(), (224, 224, 3));
    /// let cam = ndarray::Array2::<f32>::zeros((7, 7));
    /// let picture = overlay_f32(rgb.view(), cam.view(), Colormap::Jet, 0.5).unwrap();
    /// assert_eq!(picture.dimensions(), (224, 224));
    /// ```
    pub fn resized_f32(&self, image: &RgbImage) -> Result<Array3<f32>, VizError> {
        Ok(self.resized_planes(image)?.permuted_axes([1, 2, 0]).as_standard_layout().into_owned())
    }

    /// `(3, height, width)` planes in `[0, 1]`, resized with the chosen [`ResizeFilter`].
    fn resized_planes(&self, image: &RgbImage) -> Result<Array3<f32>, VizError> {
        self.check()?;
        if self.filter == ResizeFilter::Antialiased && image.width() > 0 && image.height() > 0 {
            let (w, h) = (self.width as u32, self.height as u32);
            return rgb_planes(&crate::antialias::resize_like_pillow(image, w, h));
        }
        let planes = rgb_planes(image)?;
        let mut out = Array3::zeros((3, self.height, self.width));
        for (plane, mut dst) in planes.outer_iter().zip(out.outer_iter_mut()) {
            dst.assign(&resize_bilinear(plane, self.height, self.width));
        }
        Ok(out)
    }

    /// The `(N, 3, height, width)` model input for several photos (of any sizes).
    pub fn batch(&self, images: &[RgbImage]) -> Result<Array4<f32>, VizError> {
        self.check()?;
        let mut out = Array4::zeros((images.len(), 3, self.height, self.width));
        for (mut slot, image) in out.outer_iter_mut().zip(images) {
            slot.assign(&self.tensor(image)?);
        }
        Ok(out)
    }

    /// Reads an image file ([`load_image`]) and returns it together with its model input.
    pub fn load(&self, path: impl AsRef<Path>) -> Result<(RgbImage, Array3<f32>), VizError> {
        let image = load_image(path)?;
        let tensor = self.tensor(&image)?;
        Ok((image, tensor))
    }

    /// Undoes the normalisation of a `(3, H, W)` model input: the picture it shows (rounded,
    /// clamped to `[0, 255]`), for laying heatmaps over inputs that came as `.npy` tensors.
    ///
    /// ```
    /// use gradcam_viz::Preprocess;
    /// let p = Preprocess::default();
    /// let photo = image::RgbImage::from_pixel(224, 224, image::Rgb([10, 200, 255]));
    /// assert_eq!(p.picture(p.tensor(&photo).unwrap().view()).unwrap(), photo);
    /// ```
    pub fn picture(&self, tensor: ArrayView3<f32>) -> Result<RgbImage, VizError> {
        let (c, h, w) = tensor.dim();
        if c != 3 || h == 0 || w == 0 {
            return Err(VizError::Shape {
                what: "model input (3, H, W)",
                expected: vec![3, h, w],
                found: vec![c, h, w],
            });
        }
        let mut out = RgbImage::new(w as u32, h as u32);
        for (ch, plane) in tensor.axis_iter(Axis(0)).enumerate() {
            let (mean, std) = (self.mean[ch], self.std[ch]);
            for (px, &x) in out.as_mut().chunks_exact_mut(3).zip(plane.iter()) {
                px[ch] = ((x * std + mean) * 255.0).round().clamp(0.0, 255.0) as u8;
            }
        }
        Ok(out)
    }
}

/// An RGB image as `(3, H, W)` f32 planes in `[0, 1]` (`value / 255`, in f32 like numpy's
/// `np.float32(image) / 255`).
pub fn rgb_planes(image: &RgbImage) -> Result<Array3<f32>, VizError> {
    let (w, h) = (image.width() as usize, image.height() as usize);
    if w == 0 || h == 0 {
        return Err(VizError::Invalid("the image is empty (0 pixels)".into()));
    }
    let scaled: [f32; 256] = std::array::from_fn(|v| v as f32 / 255.0);
    let n = w * h;
    let mut data = vec![0.0f32; 3 * n];
    let (r, rest) = data.split_at_mut(n);
    let (g, b) = rest.split_at_mut(n);
    for (i, px) in image.as_raw().chunks_exact(3).enumerate() {
        r[i] = scaled[px[0] as usize];
        g[i] = scaled[px[1] as usize];
        b[i] = scaled[px[2] as usize];
    }
    Array3::from_shape_vec((3, h, w), data).map_err(|e| VizError::Invalid(e.to_string()))
}
