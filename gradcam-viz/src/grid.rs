//! Side-by-side comparison sheets: pictures in rows and columns, each under a text label.

use font8x8::{UnicodeFonts, BASIC_FONTS, GREEK_FONTS, LATIN_FONTS};
use image::RgbImage;

use crate::VizError;

/// Side of one glyph of the built-in 8 × 8 bitmap font, in pixels at scale 1.
pub const GLYPH: u32 = 8;

/// Layout of a [`grid_with`] sheet.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GridOptions {
    /// Pictures per row (at least 1).
    pub columns: usize,
    /// Space around the sheet and between cells, in pixels.
    pub padding: u32,
    /// Sheet colour (RGB).
    pub background: [u8; 3],
    /// Label colour (RGB).
    pub text: [u8; 3],
    /// Label glyph magnification; `None` picks 1 for cells narrower than 320 pixels, else 2.
    pub label_scale: Option<u32>,
}

impl Default for GridOptions {
    /// Four columns, 8 px padding, dark text on white.
    fn default() -> Self {
        GridOptions { columns: 4, padding: 8, background: [255; 3], text: [20; 3], label_scale: None }
    }
}

/// Lays `cells` (label, picture) out in rows of `columns`, each picture under its label, with
/// [`GridOptions::default`] otherwise. See [`grid_with`].
///
/// ```
/// use image::{Rgb, RgbImage};
/// let a = RgbImage::from_pixel(64, 48, Rgb([255, 0, 0]));
/// let b = RgbImage::from_pixel(64, 48, Rgb([0, 0, 255]));
/// let sheet = gradcam_viz::grid(&[("layer4 · gradcam", a), ("layer4 · gradcam++", b)], 2).unwrap();
/// assert!(sheet.width() > 128 && sheet.height() > 48);
/// ```
pub fn grid<S: AsRef<str>>(cells: &[(S, RgbImage)], columns: usize) -> Result<RgbImage, VizError> {
    grid_with(cells, &GridOptions { columns, ..GridOptions::default() })
}

/// Lays `cells` (label, picture) out left to right, top to bottom. Every cell is as wide as
/// the widest picture and as tall as the tallest; smaller pictures are centred. Labels are
/// drawn with a built-in 8 × 8 bitmap font (ASCII, Latin-1 and Greek; other characters show
/// as `?`), centred, wrapped at spaces to the cell width.
pub fn grid_with<S: AsRef<str>>(
    cells: &[(S, RgbImage)],
    options: &GridOptions,
) -> Result<RgbImage, VizError> {
    if cells.is_empty() {
        return Err(VizError::Invalid("a grid needs at least one picture".into()));
    }
    if options.columns == 0 {
        return Err(VizError::Invalid("a grid needs at least one column".into()));
    }
    let cell_w = cells.iter().map(|(_, p)| p.width()).max().unwrap_or(0).max(GLYPH);
    let pic_h = cells.iter().map(|(_, p)| p.height()).max().unwrap_or(0);
    let scale = options.label_scale.unwrap_or(if cell_w < 320 { 1 } else { 2 }).max(1);
    let max_chars = (cell_w / (GLYPH * scale)).max(1) as usize;
    let labels: Vec<Vec<String>> = cells.iter().map(|(label, _)| wrap(label.as_ref(), max_chars)).collect();
    let line_h = (GLYPH + 2) * scale;
    let label_h = labels.iter().map(Vec::len).max().unwrap_or(0) as u32 * line_h;
    let cell_h = label_h + if label_h > 0 { 2 * scale } else { 0 } + pic_h;

    let columns = options.columns.min(cells.len());
    let rows = cells.len().div_ceil(columns);
    let pad = options.padding;
    let width = pad + columns as u32 * (cell_w + pad);
    let height = pad + rows as u32 * (cell_h + pad);
    if (width as u64) * (height as u64) > (1 << 30) {
        return Err(VizError::Invalid(format!("a {width}x{height} grid is too large")));
    }
    let mut sheet = RgbImage::from_pixel(width, height, image::Rgb(options.background));
    for (i, ((_, picture), lines)) in cells.iter().zip(&labels).enumerate() {
        let x0 = pad + (i % columns) as u32 * (cell_w + pad);
        let y0 = pad + (i / columns) as u32 * (cell_h + pad);
        for (k, line) in lines.iter().enumerate() {
            let x = x0 + (cell_w - text_width(line, scale).min(cell_w)) / 2;
            draw_text(&mut sheet, x as i64, (y0 + k as u32 * line_h) as i64, line, scale, options.text);
        }
        let px = x0 + (cell_w - picture.width()) / 2;
        let py = y0 + cell_h - pic_h + (pic_h - picture.height()) / 2;
        image::imageops::replace(&mut sheet, picture, px as i64, py as i64);
    }
    Ok(sheet)
}

/// Width in pixels of `text` drawn by [`draw_text`] at `scale`.
pub fn text_width(text: &str, scale: u32) -> u32 {
    text.chars().count() as u32 * GLYPH * scale
}

/// Draws one line of text with the built-in 8 × 8 bitmap font, top-left corner at `(x, y)`,
/// each font pixel as a `scale × scale` square; parts outside the canvas are clipped.
///
/// ```
/// let mut canvas = image::RgbImage::new(40, 10);
/// gradcam_viz::draw_text(&mut canvas, 0, 0, "Hi", 1, [255, 255, 255]);
/// assert!(canvas.pixels().any(|p| p.0 == [255, 255, 255]));
/// ```
pub fn draw_text(canvas: &mut RgbImage, x: i64, y: i64, text: &str, scale: u32, color: [u8; 3]) {
    let (cw, ch) = (canvas.width() as i64, canvas.height() as i64);
    let s = scale.max(1) as i64;
    for (n, c) in text.chars().enumerate() {
        let bitmap = glyph(c);
        let gx = x + n as i64 * GLYPH as i64 * s;
        for (row, bits) in bitmap.iter().enumerate() {
            for col in 0..GLYPH as i64 {
                // font8x8 stores each row with its leftmost pixel in bit 0.
                if bits >> col & 1 == 0 {
                    continue;
                }
                for dy in 0..s {
                    for dx in 0..s {
                        let (px, py) = (gx + col * s + dx, y + row as i64 * s + dy);
                        if (0..cw).contains(&px) && (0..ch).contains(&py) {
                            canvas.put_pixel(px as u32, py as u32, image::Rgb(color));
                        }
                    }
                }
            }
        }
    }
}

fn glyph(c: char) -> [u8; 8] {
    BASIC_FONTS
        .get(c)
        .or_else(|| LATIN_FONTS.get(c))
        .or_else(|| GREEK_FONTS.get(c))
        .or_else(|| BASIC_FONTS.get('?'))
        .unwrap_or([0; 8])
}

/// Greedy word wrap to lines of at most `max_chars` characters; longer words are split.
fn wrap(text: &str, max_chars: usize) -> Vec<String> {
    let mut lines = Vec::new();
    for paragraph in text.lines() {
        let mut line = String::new();
        for word in paragraph.split_whitespace() {
            let mut word: Vec<char> = word.chars().collect();
            let len = line.chars().count();
            if len > 0 && len + 1 + word.len() <= max_chars {
                line.push(' ');
                line.extend(&word);
                continue;
            }
            if len > 0 {
                lines.push(std::mem::take(&mut line));
            }
            while word.len() > max_chars {
                lines.push(word.drain(..max_chars).collect());
            }
            line.extend(word);
        }
        if !line.is_empty() {
            lines.push(line);
        }
    }
    lines
}

#[cfg(test)]
mod tests {
    use super::wrap;

    #[test]
    fn wrap_breaks_at_spaces_and_splits_long_words() {
        assert_eq!(wrap("layer4 gradcam++ 285", 16), vec!["layer4 gradcam++", "285"]);
        assert_eq!(wrap("abcdefghij", 4), vec!["abcd", "efgh", "ij"]);
        assert_eq!(wrap("a\nb", 10), vec!["a", "b"]);
        assert!(wrap("   ", 5).is_empty());
    }
}
