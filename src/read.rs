//! Stage 1, read: one item's pixels into the model input and the picture heatmaps are laid over.

use image::RgbImage;
use ndarray::Array3;

use gradcam_viz::{DecodeOptions, Preprocess};

use crate::error::CliError;
use crate::plan::{Item, Source};

/// An item ready for the model.
pub struct Loaded {
    pub item: Item,
    /// The model input `(3, H, W)`, preprocessed.
    pub tensor: Array3<f32>,
    /// The photo (at most `--max-picture-side` on its longer side), or for `.npy` inputs the
    /// tensor with the ImageNet normalisation undone.
    pub picture: RgbImage,
}

/// An item that could not be explained, and why.
pub struct Failed {
    pub item: Item,
    pub error: CliError,
}

/// How items are read.
pub struct Reader {
    preprocess: Preprocess,
    decode: DecodeOptions,
    max_picture_side: u32,
}

impl Reader {
    pub fn new(size: (usize, usize), max_pixels: u64, max_picture_side: u32) -> Self {
        let model_side = size.0.max(size.1) as u32;
        Reader {
            preprocess: Preprocess::new(size.0, size.1),
            decode: DecodeOptions {
                max_pixels,
                // Large JPEGs are decoded at 1/2, 1/4 or 1/8 scale while that still leaves more
                // than the pictures need and twice what the model sees.
                reduce_to_long_side: Some(max_picture_side.max(2 * model_side)),
            },
            max_picture_side,
        }
    }

    pub fn read(&self, item: Item) -> Result<Loaded, Failed> {
        match self.load(&item) {
            Ok((tensor, picture)) => Ok(Loaded { item, tensor, picture }),
            Err(error) => Err(Failed { item, error }),
        }
    }

    fn load(&self, item: &Item) -> Result<(Array3<f32>, RgbImage), CliError> {
        match &item.source {
            Source::Image => {
                let photo = gradcam_viz::load_image_with(&item.path, &self.decode)?;
                let tensor = self.preprocess.tensor(&photo)?;
                let picture = if photo.width().max(photo.height()) > self.max_picture_side {
                    gradcam_viz::fit_within(&photo, self.max_picture_side)
                } else {
                    photo
                };
                Ok((tensor, picture))
            }
            Source::Npy { batch, index } => {
                let tensor = batch.read(*index)?;
                if tensor.iter().any(|v| !v.is_finite()) {
                    return Err(CliError::BadNpy {
                        path: item.path.clone(),
                        message: format!("image {index} holds NaN or infinite values"),
                    });
                }
                let picture = self.preprocess.picture(tensor.view())?;
                Ok((tensor, picture))
            }
        }
    }
}
