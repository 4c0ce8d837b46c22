//! Reading images and tensors, writing pictures atomically.

use std::fs::File;
use std::io::{BufReader, BufWriter, Write};
use std::path::Path;

use image::codecs::jpeg::JpegEncoder;
use image::codecs::png::PngEncoder;
use image::metadata::Orientation;
use image::{DynamicImage, ImageDecoder, ImageReader, RgbImage};
use ndarray::{Array4, ArrayD, Ix3, Ix4};

use crate::VizError;

/// JPEG quality used by [`save_image`]: high enough that heatmap edges do not smear.
pub const JPEG_QUALITY: u8 = 92;

/// Reads an image file in any format the `image` crate decodes (PNG, JPEG, BMP, GIF, TIFF,
/// WebP), recognised by content rather than extension, as 8-bit RGB (alpha is dropped, 16-bit
/// channels are scaled down), like PIL's `Image.open(path).convert("RGB")`. An EXIF orientation
/// (phone photos) is applied, so the picture is upright as image viewers show it (PIL would need
/// `ImageOps.exif_transpose` for that).
///
/// ```
/// let err = gradcam_viz::load_image("no/such/picture.png").unwrap_err();
/// assert!(err.to_string().contains("no/such/picture.png"));
/// ```
pub fn load_image(path: impl AsRef<Path>) -> Result<RgbImage, VizError> {
    let path = path.as_ref();
    let open = |source| VizError::Open { path: path.to_path_buf(), source };
    let reader = ImageReader::new(BufReader::new(File::open(path).map_err(open)?))
        .with_guessed_format()
        .map_err(open)?;
    let decode_err = |source| VizError::Decode { path: path.to_path_buf(), source };
    let mut decoder = reader.into_decoder().map_err(decode_err)?;
    // A broken EXIF block is no reason to refuse the pixels: keep them as stored.
    let orientation = decoder.orientation().unwrap_or(Orientation::NoTransforms);
    let mut decoded = DynamicImage::from_decoder(decoder).map_err(decode_err)?;
    decoded.apply_orientation(orientation);
    Ok(decoded.into_rgb8())
}

/// Reads a `.npy` model input as it is (no resizing, no normalisation): a little-endian f32
/// array of shape `(N, 3, H, W)`, or `(3, H, W)` read as a batch of one.
pub fn load_npy_batch(path: impl AsRef<Path>) -> Result<Array4<f32>, VizError> {
    let path = path.as_ref();
    let bad = |message: String| VizError::Npy { path: path.to_path_buf(), message };
    let file = File::open(path).map_err(|source| VizError::Open { path: path.to_path_buf(), source })?;
    let array: ArrayD<f32> = ndarray_npy::ReadNpyExt::read_npy(BufReader::new(file))
        .map_err(|e| bad(format!("{e} (expected a float32 array of shape (N, 3, H, W))")))?;
    let shape = array.shape().to_vec();
    let batch = match shape.len() {
        3 => array.into_dimensionality::<Ix3>().map(|a| a.insert_axis(ndarray::Axis(0))),
        4 => array.into_dimensionality::<Ix4>(),
        _ => return Err(bad(format!("shape {shape:?} is not (N, 3, H, W) or (3, H, W)"))),
    }
    .map_err(|e| bad(e.to_string()))?;
    let (n, c, h, w) = batch.dim();
    if n == 0 || c != 3 || h == 0 || w == 0 {
        return Err(bad(format!("shape {shape:?} is not (N, 3, H, W) with N, H, W > 0")));
    }
    Ok(batch)
}

/// The picture formats [`save_image`] writes, chosen by file extension.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PictureFormat {
    /// `.png`: lossless.
    Png,
    /// `.jpg` / `.jpeg`, quality [`JPEG_QUALITY`].
    Jpeg,
}

impl PictureFormat {
    /// The format for a file name's extension (case-insensitive), if it is one we write.
    pub fn from_path(path: &Path) -> Option<PictureFormat> {
        let ext = path.extension()?.to_str()?.to_ascii_lowercase();
        match ext.as_str() {
            "png" => Some(PictureFormat::Png),
            "jpg" | "jpeg" => Some(PictureFormat::Jpeg),
            _ => None,
        }
    }
}

/// Writes a picture as PNG or JPEG (by extension) atomically: the bytes go to a temporary file
/// in the same directory, which is renamed over `path` only once complete and flushed. On any
/// error nothing is left behind and an existing file at `path` is untouched. The directory must
/// exist.
///
/// ```
/// let dir = std::env::temp_dir().join(format!("gradcam-viz-doc-{}", std::process::id()));
/// std::fs::create_dir_all(&dir).unwrap();
/// let picture = image::RgbImage::from_pixel(4, 3, image::Rgb([255, 0, 0]));
/// gradcam_viz::save_image(dir.join("red.png"), &picture).unwrap();
/// assert_eq!(gradcam_viz::load_image(dir.join("red.png")).unwrap(), picture);
/// assert!(gradcam_viz::save_image(dir.join("red.gif"), &picture).is_err());
/// std::fs::remove_dir_all(&dir).unwrap();
/// ```
pub fn save_image(path: impl AsRef<Path>, picture: &RgbImage) -> Result<(), VizError> {
    let path = path.as_ref();
    let format = PictureFormat::from_path(path)
        .ok_or_else(|| VizError::UnsupportedFormat { path: path.to_path_buf() })?;
    let write_err = |source| VizError::Write { path: path.to_path_buf(), source };
    let dir = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    // Dropping the temporary file (any early return below) deletes it.
    let tmp = tempfile::Builder::new()
        .prefix(&format!(".{name}."))
        .suffix(".tmp")
        .tempfile_in(dir)
        .map_err(write_err)?;
    {
        let mut out = BufWriter::new(tmp.as_file());
        let encoded = match format {
            PictureFormat::Png => picture.write_with_encoder(PngEncoder::new(&mut out)),
            PictureFormat::Jpeg => {
                picture.write_with_encoder(JpegEncoder::new_with_quality(&mut out, JPEG_QUALITY))
            }
        };
        encoded.map_err(|source| VizError::Encode { path: path.to_path_buf(), source })?;
        out.flush().map_err(write_err)?;
    }
    tmp.as_file().sync_all().map_err(write_err)?;
    // tempfile creates files 0600; a picture should get the usual permissions.
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let _ = tmp.as_file().set_permissions(std::fs::Permissions::from_mode(0o644));
    }
    tmp.persist(path).map_err(|e| write_err(e.error))?;
    Ok(())
}
