//! Pillow's `Image.resize(size, BILINEAR)` on 8-bit RGB, bit for bit: a triangle filter widened
//! by the scale factor when shrinking (so every source pixel counts), in Pillow's fixed-point
//! arithmetic, horizontal pass then vertical, each rounded to `u8`. This is the resize of
//! torchvision's and timm's default pipelines, i.e. what ImageNet models were evaluated with.

use image::RgbImage;

/// Pillow's `PRECISION_BITS` for 8-bit images.
const PRECISION_BITS: u32 = 32 - 8 - 2;

/// One output pixel's taps: the first source index and fixed-point weights.
struct Taps {
    start: usize,
    weights: Vec<i32>,
}

/// Pillow's `precompute_coeffs` + `normalize_coeffs_8bpc` for a bilinear (support 1) filter.
fn taps(in_size: usize, out_size: usize) -> Vec<Taps> {
    let scale = in_size as f64 / out_size as f64;
    let filter_scale = scale.max(1.0);
    let support = filter_scale;
    (0..out_size)
        .map(|xx| {
            let center = (xx as f64 + 0.5) * scale;
            let xmin = ((center - support + 0.5) as i64).max(0) as usize;
            let xmax = ((center + support + 0.5) as i64).min(in_size as i64) as usize;
            let raw: Vec<f64> = (xmin..xmax)
                .map(|x| (1.0 - ((x as f64 - center + 0.5) / filter_scale).abs()).max(0.0))
                .collect();
            let total: f64 = raw.iter().sum();
            let weights = raw
                .iter()
                .map(|w| {
                    let k = if total != 0.0 { w / total } else { *w };
                    let fixed = k * f64::from(1u32 << PRECISION_BITS);
                    (if fixed < 0.0 { fixed - 0.5 } else { fixed + 0.5 }) as i32
                })
                .collect();
            Taps { start: xmin, weights }
        })
        .collect()
}

fn clip8(acc: i32) -> u8 {
    (acc >> PRECISION_BITS).clamp(0, 255) as u8
}

/// Resizes like Pillow's `BILINEAR` (antialiased when shrinking).
pub(crate) fn resize_like_pillow(image: &RgbImage, out_w: u32, out_h: u32) -> RgbImage {
    let (in_w, in_h) = image.dimensions();
    let horizontal = if in_w == out_w { image.clone() } else { resample_rows(image, out_w) };
    if in_h == out_h {
        horizontal
    } else {
        transpose(&resample_rows(&transpose(&horizontal), out_h))
    }
}

/// Resamples every row of `image` to `out_w` pixels.
fn resample_rows(image: &RgbImage, out_w: u32) -> RgbImage {
    let (in_w, h) = image.dimensions();
    let taps = taps(in_w as usize, out_w as usize);
    let mut out = RgbImage::new(out_w, h);
    let src = image.as_raw();
    let dst: &mut [u8] = &mut out;
    for y in 0..h as usize {
        let row = &src[y * in_w as usize * 3..(y + 1) * in_w as usize * 3];
        let out_row = &mut dst[y * out_w as usize * 3..(y + 1) * out_w as usize * 3];
        for (x, tap) in taps.iter().enumerate() {
            let mut acc = [1i32 << (PRECISION_BITS - 1); 3];
            for (i, &w) in tap.weights.iter().enumerate() {
                let px = &row[(tap.start + i) * 3..(tap.start + i) * 3 + 3];
                for c in 0..3 {
                    acc[c] += i32::from(px[c]) * w;
                }
            }
            for c in 0..3 {
                out_row[x * 3 + c] = clip8(acc[c]);
            }
        }
    }
    out
}

fn transpose(image: &RgbImage) -> RgbImage {
    let (w, h) = image.dimensions();
    RgbImage::from_fn(h, w, |x, y| *image.get_pixel(y, x))
}
