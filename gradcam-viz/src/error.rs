//! The one error type of this crate.

use std::path::PathBuf;

/// Everything that can go wrong reading, drawing or writing pictures. File errors carry the
/// path, so a message alone tells the user which file to look at.
#[derive(Debug, thiserror::Error)]
pub enum VizError {
    /// The file does not exist or could not be opened.
    #[error("cannot open {}: {source}", path.display())]
    Open {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The file exists but is not an image the `image` crate can decode.
    #[error("cannot read image {}: {source}", path.display())]
    Decode {
        /// The file.
        path: PathBuf,
        /// Why.
        source: image::ImageError,
    },
    /// An image larger than the decoder's pixel limit, refused from its header.
    #[error(
        "image {} is {width}x{height} pixels ({:.1} MP), more than the limit of {:.1} MP: raise the limit (gradcam explain --max-pixels) if the file is trusted",
        path.display(), *width as f64 * *height as f64 / 1e6, *max_pixels as f64 / 1e6
    )]
    TooLarge {
        /// The file.
        path: PathBuf,
        /// Width its header declares.
        width: u32,
        /// Height its header declares.
        height: u32,
        /// The limit.
        max_pixels: u64,
    },
    /// A `.npy` file that is not an `(N, 3, H, W)` little-endian f32 array.
    #[error("cannot read tensor {}: {message}", path.display())]
    Npy {
        /// The file.
        path: PathBuf,
        /// Why (the shape found, the dtype problem, ...).
        message: String,
    },
    /// Writing (or renaming into place) failed; nothing was left at `path`.
    #[error("cannot write {}: {source}", path.display())]
    Write {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// Encoding the picture failed; nothing was left at `path`.
    #[error("cannot encode {}: {source}", path.display())]
    Encode {
        /// The file.
        path: PathBuf,
        /// Why.
        source: image::ImageError,
    },
    /// The output file name's extension names no format this crate writes.
    #[error("cannot write {}: unknown picture format (use .png, .jpg or .jpeg)", path.display())]
    UnsupportedFormat {
        /// The file.
        path: PathBuf,
    },
    /// A colormap name that [`crate::Colormap`] does not know.
    #[error("unknown colormap `{name}` (known: jet, turbo, viridis, inferno, gray)")]
    UnknownColormap {
        /// The name given.
        name: String,
    },
    /// Two arrays or images that must agree in size do not.
    #[error("{what}: expected {expected:?}, found {found:?}")]
    Shape {
        /// Which argument.
        what: &'static str,
        /// Expected dimensions.
        expected: Vec<usize>,
        /// Dimensions found.
        found: Vec<usize>,
    },
    /// An argument outside its domain (image weight outside [0, 1], a zero size, ...).
    #[error("invalid argument: {0}")]
    Invalid(String),
}
