//! Side-by-side comparison sheets: pictures in rows and columns, each under a text label, with
//! an optional colorbar that says what the colours mean.

use image::RgbImage;

use crate::text::{draw_text, line_height, text_width, wrap};
use crate::{Colormap, VizError};

/// Layout of a [`grid_with`] sheet.
#[derive(Clone, Debug, PartialEq)]
pub struct GridOptions {
    /// Pictures per row (at least 1).
    pub columns: usize,
    /// Space around the sheet and between cells, in pixels.
    pub padding: u32,
    /// Sheet colour (RGB).
    pub background: [u8; 3],
    /// Label colour (RGB).
    pub text: [u8; 3],
    /// Label font size in pixels; `None` scales it with the cell width (12 to 24 px).
    pub label_size: Option<f32>,
    /// A colorbar of this colormap under the cells, from 0 (low) to 1 (high).
    pub colorbar: Option<Colormap>,
}

impl Default for GridOptions {
    /// Four columns, 8 px padding, dark text on white, no colorbar.
    fn default() -> Self {
        GridOptions {
            columns: 4,
            padding: 8,
            background: [255; 3],
            text: [20; 3],
            label_size: None,
            colorbar: None,
        }
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
/// drawn in an embedded anti-aliased font (DejaVu Sans: Latin, Greek, common punctuation),
/// centred and wrapped at spaces to the cell width. With [`GridOptions::colorbar`], a labelled
/// bar of the colormap runs under the cells.
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
    let cell_w = cells.iter().map(|(_, p)| p.width()).max().unwrap_or(0).max(16);
    let pic_h = cells.iter().map(|(_, p)| p.height()).max().unwrap_or(0);
    let size = options.label_size.unwrap_or((cell_w as f32 / 20.0).clamp(12.0, 24.0)).max(1.0);
    let labels: Vec<Vec<String>> =
        cells.iter().map(|(label, _)| wrap(label.as_ref(), size, cell_w)).collect();
    let line_h = line_height(size) + 2;
    let label_h = labels.iter().map(Vec::len).max().unwrap_or(0) as u32 * line_h;
    let gap = if label_h > 0 { 4 } else { 0 };
    let cell_h = label_h + gap + pic_h;

    let columns = options.columns.min(cells.len());
    let rows = cells.len().div_ceil(columns);
    let pad = options.padding;
    let width = pad as u64 + columns as u64 * (cell_w as u64 + pad as u64);
    let bar = options.colorbar.map(|colormap| Colorbar::new(colormap, width as u32, pad, size));
    let height = pad as u64
        + rows as u64 * (cell_h as u64 + pad as u64)
        + bar.as_ref().map_or(0, |b| b.height as u64 + pad as u64);
    if width * height > (1 << 30) || width > u32::MAX as u64 || height > u32::MAX as u64 {
        return Err(VizError::Invalid(format!("a {width}x{height} grid is too large")));
    }
    let (width, height) = (width as u32, height as u32);
    let mut sheet = RgbImage::from_pixel(width, height, image::Rgb(options.background));
    for (i, ((_, picture), lines)) in cells.iter().zip(&labels).enumerate() {
        let x0 = pad + (i % columns) as u32 * (cell_w + pad);
        let y0 = pad + (i / columns) as u32 * (cell_h + pad);
        for (k, line) in lines.iter().enumerate() {
            let x = x0 + (cell_w - text_width(line, size).min(cell_w)) / 2;
            draw_text(&mut sheet, x as i64, (y0 + k as u32 * line_h) as i64, line, size, options.text);
        }
        let px = x0 + (cell_w - picture.width()) / 2;
        let py = y0 + cell_h - pic_h + (pic_h - picture.height()) / 2;
        image::imageops::replace(&mut sheet, picture, px as i64, py as i64);
    }
    if let Some(bar) = bar {
        let top = pad + rows as u32 * (cell_h + pad);
        bar.draw(&mut sheet, top, options.text);
    }
    Ok(sheet)
}

/// A horizontal colour scale with its ends and middle labelled.
struct Colorbar {
    colormap: Colormap,
    x0: u32,
    width: u32,
    bar_h: u32,
    size: f32,
    height: u32,
}

impl Colorbar {
    fn new(colormap: Colormap, sheet_w: u32, pad: u32, size: f32) -> Self {
        let inner = sheet_w.saturating_sub(2 * pad).max(1);
        let width = inner.min(512).max(inner.min(128));
        let bar_h = (size * 0.9).round().max(6.0) as u32;
        let height = bar_h + 3 + line_height(size) + 2;
        Colorbar { colormap, x0: pad + (inner - width) / 2, width, bar_h, size, height }
    }

    fn draw(&self, sheet: &mut RgbImage, top: u32, text: [u8; 3]) {
        let lut = self.colormap.lut();
        for dx in 0..self.width {
            let level = (dx as u64 * 255 / (self.width.max(2) - 1) as u64).min(255) as usize;
            for dy in 0..self.bar_h {
                sheet.put_pixel(self.x0 + dx, top + dy, image::Rgb(lut[level]));
            }
        }
        let y = (top + self.bar_h + 3) as i64;
        let labels = ["0 (low)", "0.5", "1 (high)"];
        let widths = labels.map(|l| text_width(l, self.size));
        let right = self.x0 + self.width;
        let xs =
            [self.x0, self.x0 + (self.width - widths[1].min(self.width)) / 2, right - widths[2].min(right)];
        for (label, x) in labels.iter().zip(xs) {
            draw_text(sheet, x as i64, y, label, self.size, text);
        }
    }
}
