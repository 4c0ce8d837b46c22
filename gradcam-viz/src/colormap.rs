//! Colormaps as precomputed 256-entry RGB tables, so colouring a map is one lookup per pixel.

use std::fmt;
use std::str::FromStr;

use image::RgbImage;
use ndarray::ArrayView2;

use crate::colormap_tables::{INFERNO, TURBO, VIRIDIS};
use crate::VizError;

/// How map values become colours. Low values map to the first colour of the table (blue for jet
/// and turbo, dark for viridis, inferno and gray), high values to the last (red for jet).
///
/// The names accepted by [`FromStr`] and printed by [`Display`](fmt::Display) are
/// `jet, turbo, viridis, inferno, gray`:
///
/// ```
/// use gradcam_viz::Colormap;
/// let cmap: Colormap = "viridis".parse().unwrap();
/// assert_eq!(cmap, Colormap::Viridis);
/// assert_eq!(cmap.to_string(), "viridis");
/// assert!("rainbow".parse::<Colormap>().is_err());
/// // Jet runs from dark blue to dark red, like OpenCV's COLORMAP_JET.
/// assert_eq!(Colormap::Jet.color(0), [0, 0, 128]);
/// assert_eq!(Colormap::Jet.color(255), [128, 0, 0]);
/// ```
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum Colormap {
    /// OpenCV's `COLORMAP_JET`, entry for entry (pytorch-grad-cam's default).
    #[default]
    Jet,
    /// Google's Turbo (OpenCV `COLORMAP_TURBO`): jet's layout, perceptually smoother.
    Turbo,
    /// matplotlib's viridis (OpenCV `COLORMAP_VIRIDIS`): perceptually uniform, colour-blind safe.
    Viridis,
    /// matplotlib's inferno (OpenCV `COLORMAP_INFERNO`): perceptually uniform, black to yellow.
    Inferno,
    /// Grey levels: value `v` becomes `(v, v, v)`.
    Gray,
}

impl Colormap {
    /// Every colormap, in the order of their names above.
    pub const ALL: [Colormap; 5] =
        [Colormap::Jet, Colormap::Turbo, Colormap::Viridis, Colormap::Inferno, Colormap::Gray];

    /// The name used by [`FromStr`] and [`Display`](fmt::Display).
    pub fn name(self) -> &'static str {
        match self {
            Colormap::Jet => "jet",
            Colormap::Turbo => "turbo",
            Colormap::Viridis => "viridis",
            Colormap::Inferno => "inferno",
            Colormap::Gray => "gray",
        }
    }

    /// The 256 RGB colours of this map, indexed by the 8-bit level.
    pub fn lut(self) -> &'static [[u8; 3]; 256] {
        match self {
            Colormap::Jet => &JET,
            Colormap::Turbo => &TURBO,
            Colormap::Viridis => &VIRIDIS,
            Colormap::Inferno => &INFERNO,
            Colormap::Gray => &GRAY,
        }
    }

    /// The RGB colour of one 8-bit level.
    pub fn color(self, level: u8) -> [u8; 3] {
        self.lut()[level as usize]
    }

    /// Colours a map whose values lie in `[0, 1]`, pixel for pixel (no resizing). Values are
    /// quantised like pytorch-grad-cam's `np.uint8(255 * mask)` (truncation, see [`level`]).
    ///
    /// ```
    /// use gradcam_viz::Colormap;
    /// use ndarray::array;
    /// let picture = Colormap::Gray.apply(array![[0.0f32, 0.5], [1.0, 0.999]].view());
    /// assert_eq!((picture.width(), picture.height()), (2, 2));
    /// assert_eq!(picture.get_pixel(1, 0).0, [127, 127, 127]);
    /// assert_eq!(picture.get_pixel(0, 1).0, [255, 255, 255]);
    /// ```
    pub fn apply(self, map: ArrayView2<f32>) -> RgbImage {
        let (h, w) = map.dim();
        let lut = self.lut();
        let mut out = RgbImage::new(w as u32, h as u32);
        // `iter` walks the map in row-major order whatever its memory layout.
        for (px, &v) in out.as_mut().chunks_exact_mut(3).zip(map.iter()) {
            let [r, g, b] = lut[level(v) as usize];
            px[0] = r;
            px[1] = g;
            px[2] = b;
        }
        out
    }
}

/// The 8-bit level of a map value: `(255 * v)` truncated toward zero, exactly numpy's
/// `np.uint8(255 * mask)` for `v` in `[0, 1]`; below 0 (and NaN) gives 0, above 1 gives 255.
///
/// ```
/// assert_eq!(gradcam_viz::level(0.999), 254);
/// assert_eq!(gradcam_viz::level(1.0), 255);
/// assert_eq!(gradcam_viz::level(-3.0), 0);
/// ```
#[inline]
pub fn level(v: f32) -> u8 {
    // `as` saturates and maps NaN to 0.
    (255.0f32 * v) as u8
}

impl fmt::Display for Colormap {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for Colormap {
    type Err = VizError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let wanted = s.trim().to_ascii_lowercase();
        Colormap::ALL
            .into_iter()
            .find(|c| c.name() == wanted || (wanted == "grey" && *c == Colormap::Gray))
            .ok_or_else(|| VizError::UnknownColormap { name: s.to_string() })
    }
}

/// OpenCV's jet, rebuilt from its definition: each channel is a trapezoid rising and falling by
/// 4 levels per entry, with half-level corners. In units of half a level (to stay in integers):
/// `2r = 8i - 765 .. 2296 - 8i`, `2g = 8i - 256 .. 1784 - 8i`, `2b = 256 + 8i .. 1275 - 8i`,
/// clamped to `[0, 510]` and rounded half up.
const JET: [[u8; 3]; 256] = {
    const fn channel(rise: i32, fall: i32) -> u8 {
        let twice = if rise < fall { rise } else { fall };
        let twice = if twice < 0 {
            0
        } else if twice > 510 {
            510
        } else {
            twice
        };
        ((twice + 1) / 2) as u8
    }
    let mut lut = [[0u8; 3]; 256];
    let mut i = 0;
    while i < 256 {
        let k = 8 * i as i32;
        lut[i] = [channel(k - 765, 2296 - k), channel(k - 256, 1784 - k), channel(256 + k, 1275 - k)];
        i += 1;
    }
    // OpenCV's table holds 1 here where the exact trapezoid gives 1.5 (rounded to 2): float noise
    // in OpenCV's own interpolation of its table. Kept, so jet pictures match OpenCV's bit for bit.
    lut[159][2] = 1;
    lut
};

const GRAY: [[u8; 3]; 256] = {
    let mut lut = [[0u8; 3]; 256];
    let mut i = 0;
    while i < 256 {
        lut[i] = [i as u8; 3];
        i += 1;
    }
    lut
};
