//! JPEGs decoded at reduced size in the DCT (1/2, 1/4, 1/8), as Pillow's `draft` mode: a large
//! photo explained at 224 × 224 costs a fraction of its full decode in time and memory.

use std::fs::File;
use std::io::BufReader;
use std::path::Path;

use image::metadata::Orientation;
use image::{DynamicImage, RgbImage};
use jpeg_decoder::{Decoder, PixelFormat};

use crate::files::check_pixels;
use crate::VizError;

/// The photo decoded at the smallest DCT scale whose longer side is still at least `long_side`,
/// or `None` when no reduction applies (small photo, or a colour model left to the full decoder).
pub(crate) fn decode_reduced(
    path: &Path,
    long_side: u32,
    max_pixels: u64,
) -> Result<Option<RgbImage>, VizError> {
    let open = |source| VizError::Open { path: path.to_path_buf(), source };
    let mut decoder = Decoder::new(BufReader::new(File::open(path).map_err(open)?));
    // Anything odd in the header: let the full decoder report it in its own words.
    if decoder.read_info().is_err() {
        return Ok(None);
    }
    let Some(info) = decoder.info() else { return Ok(None) };
    let (w, h) = (info.width as u32, info.height as u32);
    if !matches!(info.pixel_format, PixelFormat::RGB24 | PixelFormat::L8) {
        return Ok(None);
    }
    let long = w.max(h);
    let Some(k) = [8u32, 4, 2].into_iter().find(|k| long.div_ceil(*k) >= long_side.max(1)) else {
        return Ok(None);
    };
    let (sw, sh) = (w.div_ceil(k), h.div_ceil(k));
    check_pixels(path, sw, sh, max_pixels)?;
    let scaled = decoder.scale(sw as u16, sh as u16);
    let Ok((dw, dh)) = scaled else { return Ok(None) };
    let decode_err = |e: jpeg_decoder::Error| VizError::Decode {
        path: path.to_path_buf(),
        source: image::ImageError::Decoding(image::error::DecodingError::new(
            image::ImageFormat::Jpeg.into(),
            e,
        )),
    };
    let pixels = decoder.decode().map_err(decode_err)?;
    let (dw, dh) = (dw as u32, dh as u32);
    let rgb = match info.pixel_format {
        PixelFormat::L8 => pixels.iter().flat_map(|&v| [v, v, v]).collect(),
        _ => pixels,
    };
    let Some(picture) = RgbImage::from_raw(dw, dh, rgb) else { return Ok(None) };
    let orientation = decoder.exif_data().and_then(Orientation::from_exif_chunk);
    Ok(Some(match orientation {
        Some(o) if o != Orientation::NoTransforms => {
            let mut image = DynamicImage::ImageRgb8(picture);
            image.apply_orientation(o);
            image.into_rgb8()
        }
        _ => picture,
    }))
}
