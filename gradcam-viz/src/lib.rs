//! # gradcam-viz
//!
//! The picture side of gradcam-rs: everything between files on disk and the tensors
//! [`gradcam_core`] works on, and back.
//!
//! - **In**: [`load_image`] reads any common image format; [`Preprocess`] turns a photo into a
//!   model input exactly as pytorch-grad-cam's examples do (RGB / 255, OpenCV-style bilinear
//!   resize, ImageNet mean/std, CHW); [`load_npy_batch`] reads a ready `(N, 3, H, W)` tensor.
//! - **Out**: [`Colormap`] (jet, turbo, viridis, inferno, gray as 256-entry tables matching
//!   OpenCV's), [`overlay`] (byte-identical to pytorch-grad-cam's `show_cam_on_image`),
//!   [`origin_view`] (the map at activation resolution, cells kept sharp), [`grid`] (labelled
//!   comparison sheets) and [`save_image`] (PNG/JPEG, written atomically).
//!
//! Bilinear resizing is [`gradcam_core::resize_bilinear`], the project's single implementation.
//!
//! ```
//! use gradcam_viz::{overlay, Colormap, Preprocess};
//! use ndarray::Array2;
//!
//! let photo = image::RgbImage::from_pixel(300, 200, image::Rgb([120, 160, 90]));
//! let input = Preprocess::default().tensor(&photo)?; // (3, 224, 224), ready for a model
//! assert_eq!(input.dim(), (3, 224, 224));
//! // A CAM as gradcam-core returns it (values in [0, 1] at the model's input size) ...
//! let cam = Array2::from_shape_fn((224, 224), |(y, x)| ((x + y) as f32 / 446.0));
//! // ... laid over the full-size photo (the CAM is resized to 300 x 200 on the way).
//! let picture = overlay(&photo, cam.view(), Colormap::Jet, 0.5)?;
//! assert_eq!(picture.dimensions(), (300, 200));
//! # Ok::<(), gradcam_viz::VizError>(())
//! ```

#![cfg_attr(not(test), deny(clippy::unwrap_used, clippy::expect_used))]

mod antialias;
mod colormap;
mod colormap_tables;
mod deprocess;
mod error;
mod files;
mod grid;
mod jpeg;
mod npy;
mod overlay;
mod preprocess;
mod text;

pub use colormap::{level, Colormap};
pub use deprocess::deprocess_image;
pub use error::VizError;
pub use files::{
    encode_picture, load_image, load_image_with, load_npy_batch, save_image, DecodeOptions, PictureFormat,
    DEFAULT_MAX_PIXELS, JPEG_QUALITY,
};
pub use grid::{grid, grid_with, GridOptions};
pub use npy::NpyBatch;
pub use text::{draw_text, line_height, text_width};

/// `image` scaled down (never up) so that its longer side is at most `max_side`, with Pillow's
/// antialiased bilinear filter; unchanged when it already fits.
///
/// ```
/// let photo = image::RgbImage::new(4000, 3000);
/// assert_eq!(gradcam_viz::fit_within(&photo, 2048).dimensions(), (2048, 1536));
/// assert_eq!(gradcam_viz::fit_within(&photo, 5000).dimensions(), (4000, 3000));
/// ```
pub fn fit_within(image: &image::RgbImage, max_side: u32) -> image::RgbImage {
    let (w, h) = image.dimensions();
    let long = w.max(h);
    if long <= max_side || max_side == 0 {
        return image.clone();
    }
    let scale = max_side as f64 / long as f64;
    let (nw, nh) = (((w as f64 * scale).round() as u32).max(1), ((h as f64 * scale).round() as u32).max(1));
    antialias::resize_like_pillow(image, nw, nh)
}
pub use overlay::{origin_view, overlay, overlay_f32, resize_nearest, DEFAULT_IMAGE_WEIGHT};
pub use preprocess::{rgb_planes, Preprocess, ResizeFilter, IMAGENET_MEAN, IMAGENET_STD};
