//! Label text: an embedded subset of DejaVu Sans (`fonts/README.md`), rasterised with anti-aliased
//! edges by `ab_glyph` and blended into the picture.

use std::sync::OnceLock;

use ab_glyph::{point, Font, FontRef, PxScale, ScaleFont};
use image::RgbImage;

static FONT_BYTES: &[u8] = include_bytes!("../fonts/DejaVuSans-subset.ttf");

/// The parsed font. `None` only if the embedded file were broken, which a unit test rules out;
/// text is then simply not drawn, rather than a panic in the middle of writing pictures.
fn font() -> Option<&'static FontRef<'static>> {
    static FONT: OnceLock<Option<FontRef<'static>>> = OnceLock::new();
    FONT.get_or_init(|| FontRef::try_from_slice(FONT_BYTES).ok()).as_ref()
}

/// Height in pixels of one line of text at `size` (the font's pixel size): ascent to descent.
///
/// ```
/// assert!(gradcam_viz::line_height(14.0) >= 14);
/// ```
pub fn line_height(size: f32) -> u32 {
    match font() {
        Some(f) => {
            let s = f.as_scaled(PxScale::from(size));
            (s.ascent() - s.descent()).ceil().max(1.0) as u32
        }
        None => size.ceil() as u32,
    }
}

/// Width in pixels of `text` drawn by [`draw_text`] at `size`, kerning included.
///
/// ```
/// assert!(gradcam_viz::text_width("gradcam", 14.0) > gradcam_viz::text_width("cam", 14.0));
/// assert_eq!(gradcam_viz::text_width("", 14.0), 0);
/// ```
pub fn text_width(text: &str, size: f32) -> u32 {
    let Some(f) = font() else { return 0 };
    let s = f.as_scaled(PxScale::from(size));
    let mut width = 0.0f32;
    let mut last = None;
    for c in text.chars() {
        let id = s.glyph_id(c);
        if let Some(prev) = last {
            width += s.kern(prev, id);
        }
        width += s.h_advance(id);
        last = Some(id);
    }
    width.ceil().max(0.0) as u32
}

/// Draws one line of `text` at pixel size `size`, the top-left corner of its line box at
/// `(x, y)`, in `color`, with anti-aliased edges blended over what is there. Characters the font
/// lacks show as its missing-glyph box; parts outside the canvas are clipped.
///
/// ```
/// let mut canvas = image::RgbImage::new(60, 20);
/// gradcam_viz::draw_text(&mut canvas, 2, 2, "Hi", 14.0, [255, 255, 255]);
/// assert!(canvas.pixels().any(|p| p.0[0] > 200), "the stems are inked");
/// assert!(canvas.pixels().any(|p| p.0[0] > 0 && p.0[0] < 255), "edges are anti-aliased");
/// ```
pub fn draw_text(canvas: &mut RgbImage, x: i64, y: i64, text: &str, size: f32, color: [u8; 3]) {
    let Some(f) = font() else { return };
    let scale = PxScale::from(size);
    let s = f.as_scaled(scale);
    let (cw, ch) = (canvas.width() as i64, canvas.height() as i64);
    let mut caret = x as f32;
    let baseline = y as f32 + s.ascent();
    let mut last = None;
    for c in text.chars() {
        let id = s.glyph_id(c);
        if let Some(prev) = last {
            caret += s.kern(prev, id);
        }
        last = Some(id);
        let glyph = id.with_scale_and_position(scale, point(caret, baseline));
        caret += s.h_advance(id);
        let Some(outline) = f.outline_glyph(glyph) else { continue };
        let bounds = outline.px_bounds();
        let (gx, gy) = (bounds.min.x as i64, bounds.min.y as i64);
        outline.draw(|dx, dy, coverage| {
            let (px, py) = (gx + dx as i64, gy + dy as i64);
            if !(0..cw).contains(&px) || !(0..ch).contains(&py) {
                return;
            }
            let a = coverage.clamp(0.0, 1.0);
            let pixel = canvas.get_pixel_mut(px as u32, py as u32);
            for (p, c) in pixel.0.iter_mut().zip(color) {
                *p = (*p as f32 * (1.0 - a) + c as f32 * a).round() as u8;
            }
        });
    }
}

/// Greedy word wrap to lines at most `max_width` pixels wide at `size`; a word wider than that
/// is split between characters.
pub(crate) fn wrap(text: &str, size: f32, max_width: u32) -> Vec<String> {
    let fits = |s: &str| text_width(s, size) <= max_width;
    let mut lines = Vec::new();
    for paragraph in text.lines() {
        let mut line = String::new();
        for word in paragraph.split_whitespace() {
            let joined = if line.is_empty() { word.to_string() } else { format!("{line} {word}") };
            if fits(&joined) {
                line = joined;
                continue;
            }
            if !line.is_empty() {
                lines.push(std::mem::take(&mut line));
            }
            for c in word.chars() {
                line.push(c);
                if !fits(&line) && line.chars().count() > 1 {
                    line.pop();
                    lines.push(std::mem::take(&mut line));
                    line.push(c);
                }
            }
        }
        if !line.is_empty() {
            lines.push(line);
        }
    }
    lines
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_embedded_font_parses_and_has_the_label_characters() {
        let f = font().expect("the embedded font parses");
        for c in "Egyptian cat 285 · gradcam++ × αβ – é…".chars().filter(|c| !c.is_whitespace()) {
            assert_ne!(f.glyph_id(c).0, 0, "no glyph for {c:?}");
        }
    }

    #[test]
    fn wrap_breaks_at_spaces_and_splits_long_words() {
        let w = text_width("layer4 gradcam++", 12.0);
        assert_eq!(wrap("layer4 gradcam++ 285", 12.0, w), vec!["layer4 gradcam++", "285"]);
        let narrow = wrap("abcdefghij", 12.0, text_width("abcd", 12.0));
        assert_eq!(narrow.concat(), "abcdefghij");
        assert!(narrow.len() >= 3 && narrow.iter().all(|l| text_width(l, 12.0) <= text_width("abcd", 12.0)));
        assert_eq!(wrap("a\nb", 12.0, 100), vec!["a", "b"]);
        assert!(wrap("   ", 12.0, 50).is_empty());
        // Not even one character fits: one character per line, never an endless loop.
        assert_eq!(wrap("ab", 12.0, 1), vec!["a", "b"]);
    }
}
