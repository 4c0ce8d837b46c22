//! Which axis of a layer's output holds the channels: detected from the shape and the input size,
//! overridable.

use std::fmt;
use std::str::FromStr;

use ndarray::{Array4, ArrayView4};

use crate::tokens::stride_grids;
use crate::CamError;

/// How a layer's output is laid out. CNNs output `(B, C, H, W)`; Swin, ConvNeXt blocks and MaxViT
/// have channels-last `(B, H, W, C)` layers inside; ViTs output tokens `(B, N, D)`, which
/// [`crate::TokenGrid`] folds into a grid.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Layout {
    /// `(batch, channels, height, width)`.
    Nchw,
    /// `(batch, height, width, channels)`: folded as pytorch-grad-cam's Swin `reshape_transform`
    /// (a permutation to `(B, C, H, W)`).
    Nhwc,
    /// `(batch, tokens, dim)`.
    Tokens,
}

impl Layout {
    /// Every layout, by its command-line name.
    pub const ALL: [Layout; 3] = [Layout::Nchw, Layout::Nhwc, Layout::Tokens];

    /// The command-line name: `nchw`, `nhwc`, `tokens`.
    pub fn name(self) -> &'static str {
        match self {
            Layout::Nchw => "nchw",
            Layout::Nhwc => "nhwc",
            Layout::Tokens => "tokens",
        }
    }

    /// The layout of a layer output of `shape` (batch first) for an input of `input_hw` pixels.
    ///
    /// Rank 3 is tokens. For rank 4, the spatial axes are the pair that a patch embedding or a
    /// stack of strided layers with one integer stride `s` produces from the input
    /// (`(⌊H/s⌋, ⌊W/s⌋)` or `(⌈H/s⌉, ⌈W/s⌉)`, as for tokens): axes 2 and 3 (NCHW), or 1 and 2
    /// (NHWC). When both or neither pair fits (a 7×7×7 map), NCHW, PyTorch's own layout, wins;
    /// [`CamOptions::layout`](crate::CamOptions) overrides the choice.
    ///
    /// ```
    /// use gradcam_core::Layout;
    /// assert_eq!(Layout::detect(&[1, 512, 7, 7], (224, 224)).unwrap(), Layout::Nchw);
    /// assert_eq!(Layout::detect(&[1, 7, 7, 768], (224, 224)).unwrap(), Layout::Nhwc); // Swin-T layers.3
    /// assert_eq!(Layout::detect(&[1, 6, 8, 96], (192, 256)).unwrap(), Layout::Nhwc);
    /// assert_eq!(Layout::detect(&[1, 197, 384], (224, 224)).unwrap(), Layout::Tokens);
    /// assert!(Layout::detect(&[1, 1000], (224, 224)).is_err());
    /// ```
    pub fn detect(shape: &[usize], input_hw: (usize, usize)) -> Result<Layout, CamError> {
        match shape {
            [_, _, _] => Ok(Layout::Tokens),
            [_, a, b, c] => {
                let fits = |h: usize, w: usize| stride_grids(input_hw.0, input_hw.1).any(|g| g == (h, w));
                Ok(if !fits(*b, *c) && fits(*a, *b) { Layout::Nhwc } else { Layout::Nchw })
            }
            other => Err(CamError::Shape(format!(
                "a layer output must be (B, C, H, W), (B, H, W, C) or (B, N, D), got rank {} {other:?}",
                other.len()
            ))),
        }
    }

    /// `explicit` when given (checked against the rank), else [`Layout::detect`].
    pub fn resolve(
        explicit: Option<Layout>,
        shape: &[usize],
        input_hw: (usize, usize),
    ) -> Result<Layout, CamError> {
        let detected = Layout::detect(shape, input_hw)?;
        match explicit {
            None => Ok(detected),
            Some(layout) if (layout == Layout::Tokens) == (shape.len() == 3) => Ok(layout),
            Some(layout) => Err(CamError::Shape(format!(
                "layout `{layout}` does not fit a layer output of shape {shape:?}: {} takes a rank-{} output",
                layout,
                if layout == Layout::Tokens { 3 } else { 4 }
            ))),
        }
    }

    /// The axis of the native output that holds the channels.
    pub fn channel_axis(self) -> usize {
        match self {
            Layout::Nchw => 1,
            Layout::Nhwc => 3,
            Layout::Tokens => 2,
        }
    }
}

impl fmt::Display for Layout {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for Layout {
    type Err = CamError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Layout::ALL
            .into_iter()
            .find(|l| l.name().eq_ignore_ascii_case(s.trim()))
            .ok_or_else(|| CamError::Unsupported(format!("unknown layout `{s}`: use nchw, nhwc or tokens")))
    }
}

/// A channels-last map `(B, H, W, C)` as `(B, C, H, W)`, in standard layout.
pub(crate) fn nhwc_to_nchw(a: ArrayView4<f32>) -> Array4<f32> {
    a.permuted_axes([0, 3, 1, 2]).as_standard_layout().into_owned()
}
