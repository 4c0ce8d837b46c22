//! Reading images and tensors, writing pictures atomically.

use std::fs::File;
use std::io::{BufReader, Write};
use std::path::Path;

use image::codecs::jpeg::JpegEncoder;
use image::codecs::png::{CompressionType, FilterType as PngFilter, PngEncoder};
use image::metadata::Orientation;
use image::{DynamicImage, ImageDecoder, ImageReader, Limits, RgbImage};
use ndarray::Array4;

use crate::{NpyBatch, VizError};

/// JPEG quality used by [`save_image`]: high enough that heatmap edges do not smear.
pub const JPEG_QUALITY: u8 = 92;

/// Reads an image file in any format the `image` crate decodes (PNG, JPEG, BMP, GIF, TIFF,
/// WebP), recognised by content rather than extension, as 8-bit RGB (alpha is dropped, 16-bit
/// channels are scaled down), like PIL's `Image.open(path).convert("RGB")`. An EXIF orientation
/// (phone photos) is applied, so the picture is upright as image viewers show it (PIL would need
/// `ImageOps.exif_transpose` for that). Images over [`DecodeOptions::default`]'s pixel limit are
/// refused; see [`load_image_with`].
///
/// ```
/// let err = gradcam_viz::load_image("no/such/picture.png").unwrap_err();
/// assert!(err.to_string().contains("no/such/picture.png"));
/// ```
pub fn load_image(path: impl AsRef<Path>) -> Result<RgbImage, VizError> {
    load_image_with(path, &DecodeOptions::default())
}

/// Limits and shortcuts of [`load_image_with`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DecodeOptions {
    /// Largest width × height decoded; a larger image is an error raised from its header,
    /// before any pixel buffer is allocated.
    pub max_pixels: u64,
    /// When set, a JPEG is decoded at 1/2, 1/4 or 1/8 of its size (in the DCT, as Pillow's
    /// `draft` mode) when its longer side still is at least this many pixels: a 10 MP photo
    /// explained at 224 × 224 need not be decoded whole.
    pub reduce_to_long_side: Option<u32>,
}

/// Default [`DecodeOptions::max_pixels`]: 64 megapixels (8000 × 8000), above any camera's
/// photo, far below what a forged header can claim.
pub const DEFAULT_MAX_PIXELS: u64 = 64_000_000;

impl Default for DecodeOptions {
    /// [`DEFAULT_MAX_PIXELS`], full-size decoding.
    fn default() -> Self {
        DecodeOptions { max_pixels: DEFAULT_MAX_PIXELS, reduce_to_long_side: None }
    }
}

/// [`load_image`] with explicit [`DecodeOptions`]. The image's size is read from its header and
/// checked against `max_pixels` before decoding; the decoder's allocations are capped too
/// (`image::Limits`), so a 70-byte file that claims 60000 × 60000 pixels costs nothing.
///
/// ```
/// use gradcam_viz::{load_image_with, DecodeOptions, VizError};
/// let dir = std::env::temp_dir().join(format!("gradcam-viz-limits-doc-{}", std::process::id()));
/// std::fs::create_dir_all(&dir).unwrap();
/// let path = dir.join("big.png");
/// image::RgbImage::new(300, 200).save(&path).unwrap();
/// let small = DecodeOptions { max_pixels: 10_000, ..DecodeOptions::default() };
/// assert!(matches!(load_image_with(&path, &small), Err(VizError::TooLarge { width: 300, height: 200, .. })));
/// assert_eq!(load_image_with(&path, &DecodeOptions::default()).unwrap().dimensions(), (300, 200));
/// std::fs::remove_dir_all(&dir).unwrap();
/// ```
pub fn load_image_with(path: impl AsRef<Path>, options: &DecodeOptions) -> Result<RgbImage, VizError> {
    let path = path.as_ref();
    let open = |source| VizError::Open { path: path.to_path_buf(), source };
    let mut reader = ImageReader::new(BufReader::new(File::open(path).map_err(open)?))
        .with_guessed_format()
        .map_err(open)?;
    if reader.format() == Some(image::ImageFormat::Jpeg) {
        if let Some(long_side) = options.reduce_to_long_side {
            if let Some(picture) = crate::jpeg::decode_reduced(path, long_side, options.max_pixels)? {
                return Ok(picture);
            }
        }
    }
    let mut limits = Limits::default();
    // The largest decoder buffer: 16-bit RGBA (8 bytes a pixel), plus the RGB8 copy.
    // (At least 256 MiB, so that a small limit is reported as such, from the header, below.)
    limits.max_alloc = Some(options.max_pixels.saturating_mul(11).max(256 << 20));
    reader.limits(limits);
    let decode_err = |source| VizError::Decode { path: path.to_path_buf(), source };
    let mut decoder = reader.into_decoder().map_err(decode_err)?;
    let (width, height) = decoder.dimensions();
    check_pixels(path, width, height, options.max_pixels)?;
    // A broken EXIF block is no reason to refuse the pixels: keep them as stored.
    let orientation = decoder.orientation().unwrap_or(Orientation::NoTransforms);
    let mut decoded = DynamicImage::from_decoder(decoder).map_err(decode_err)?;
    decoded.apply_orientation(orientation);
    Ok(decoded.into_rgb8())
}

/// [`VizError::TooLarge`] when `width × height` exceeds `max_pixels`.
pub(crate) fn check_pixels(path: &Path, width: u32, height: u32, max_pixels: u64) -> Result<(), VizError> {
    if width as u64 * height as u64 > max_pixels {
        return Err(VizError::TooLarge { path: path.to_path_buf(), width, height, max_pixels });
    }
    Ok(())
}

/// A picture encoded as PNG or JPEG bytes, for writing elsewhere ([`save_image`] writes one to
/// a file). PNGs use fast compression: heatmaps are smooth, and encoding time matters when
/// thousands of pictures are written.
pub fn encode_picture(picture: &RgbImage, format: PictureFormat) -> Result<Vec<u8>, image::ImageError> {
    let mut out = Vec::with_capacity(picture.as_raw().len() / 2 + 1024);
    match format {
        PictureFormat::Png => picture.write_with_encoder(PngEncoder::new_with_quality(
            &mut out,
            CompressionType::Fast,
            PngFilter::Adaptive,
        ))?,
        PictureFormat::Jpeg => {
            picture.write_with_encoder(JpegEncoder::new_with_quality(&mut out, JPEG_QUALITY))?
        }
    }
    Ok(out)
}

/// Reads a `.npy` model input as it is (no resizing, no normalisation): a little-endian f32
/// array of shape `(N, 3, H, W)`, or `(3, H, W)` read as a batch of one. The header is checked
/// against the file's length first ([`NpyBatch::open`]), so a corrupt header never allocates what
/// it declares.
pub fn load_npy_batch(path: impl AsRef<Path>) -> Result<Array4<f32>, VizError> {
    let batch = NpyBatch::open(path)?;
    let (h, w) = batch.image_hw();
    let mut out = Array4::zeros((batch.len(), 3, h, w));
    for (i, mut slot) in out.outer_iter_mut().enumerate() {
        slot.assign(&batch.read(i)?);
    }
    Ok(out)
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
    let bytes = encode_picture(picture, format)
        .map_err(|source| VizError::Encode { path: path.to_path_buf(), source })?;
    tmp.as_file().write_all(&bytes).map_err(write_err)?;
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
