//! Vision-Transformer token sequences ⇄ spatial grids.

use ndarray::{s, Array3, Array4, ArrayView3, ArrayView4};

use crate::CamError;

/// Largest number of prefix tokens [`TokenGrid::infer`] considers: a class token, a
/// distillation token and up to 6 (or 8 without the others) register tokens.
pub const MAX_PREFIX_TOKENS: usize = 8;

/// How much worse than the best-fitting grid's aspect mismatch a candidate may be and still
/// compete on its (smaller) prefix count.
const ASPECT_BAND: f64 = 0.05;

/// How a `(B, N, D)` token sequence folds into a `(B, D, height, width)` grid: the first
/// `prefix_tokens` tokens (class, distillation, registers) are dropped, the remaining
/// `height * width` tokens are the patches in row-major order (as timm lays them out).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct TokenGrid {
    /// Tokens before the patch tokens.
    pub prefix_tokens: usize,
    /// Patch rows.
    pub height: usize,
    /// Patch columns.
    pub width: usize,
}

impl TokenGrid {
    /// Total number of tokens this layout describes.
    pub fn num_tokens(&self) -> usize {
        self.prefix_tokens + self.height * self.width
    }

    /// Infers the layout of `num_tokens` tokens produced from an input of `input_hw`
    /// (height, width) pixels.
    ///
    /// A candidate is `prefix_tokens` in `0..=`[`MAX_PREFIX_TOKENS`] and a grid `h x w` with
    /// `h * w = num_tokens - prefix_tokens` that a patch embedding with one integer stride `s`
    /// produces from the input: `(h, w) = (⌊H/s⌋, ⌊W/s⌋)` or `(⌈H/s⌉, ⌈W/s⌉)`. No patch size is
    /// assumed, and non-square inputs work. Grids that tile the input exactly (`H = h s`,
    /// `W = w s`) are preferred; otherwise candidates are ranked by how well one patch size
    /// explains both sides (`|ln((H/h) / (W/w))|`, i.e. the grid's aspect ratio against the
    /// input's); among those within 0.05 of the best, the fewest prefix tokens wins. Two grids
    /// left with that prefix count are ambiguous, and no candidate at all is impossible: both are
    /// [`CamError::TokenGrid`] errors, which an explicit [`TokenGrid`] resolves.
    ///
    /// ```
    /// use gradcam_core::TokenGrid;
    /// // ViT-S/16 at 224²: a class token and 14 x 14 patches.
    /// assert_eq!(TokenGrid::infer(197, (224, 224)).unwrap(), TokenGrid { prefix_tokens: 1, height: 14, width: 14 });
    /// // A class token, 4 registers and a 6 x 8 grid of 16-pixel patches on a 96 x 128 input
    /// // (6 x 9 patches of 14 pixels without prefix tokens would fit the input's shape worse).
    /// assert_eq!(TokenGrid::infer(53, (96, 128)).unwrap(), TokenGrid { prefix_tokens: 5, height: 6, width: 8 });
    /// // 205 - p is no square for any p in 0..=8, and a square input gives a square grid.
    /// assert!(TokenGrid::infer(205, (224, 224)).is_err());
    /// ```
    pub fn infer(num_tokens: usize, input_hw: (usize, usize)) -> Result<TokenGrid, CamError> {
        let (height, width) = input_hw;
        let error = |reason: String| CamError::TokenGrid { tokens: num_tokens, height, width, reason };
        if height == 0 || width == 0 {
            return Err(error("the input is empty".into()));
        }
        // (mismatch, prefix, h, w) for every distinct candidate.
        let mut candidates: Vec<(f64, usize, usize, usize)> = Vec::new();
        for prefix in 0..=MAX_PREFIX_TOKENS.min(num_tokens.saturating_sub(1)) {
            for (h, w) in stride_grids(height, width) {
                if h * w == num_tokens - prefix
                    && !candidates.iter().any(|c| (c.1, c.2, c.3) == (prefix, h, w))
                {
                    let mismatch = ((height as f64 / h as f64) / (width as f64 / w as f64)).ln().abs();
                    candidates.push((mismatch, prefix, h, w));
                }
            }
        }
        // Grids that tile the input exactly with one patch size beat any that leave pixels over.
        let exact = |c: &(f64, usize, usize, usize)| {
            height % c.2 == 0 && width % c.3 == 0 && height / c.2 == width / c.3
        };
        if candidates.iter().any(exact) {
            candidates.retain(exact);
        }
        let Some(best) = candidates.iter().map(|c| c.0).min_by(f64::total_cmp) else {
            return Err(error(format!(
                "no patch grid with the input's aspect ratio and 0..={MAX_PREFIX_TOKENS} prefix tokens fits; \
                 give the layout explicitly (prefix tokens, grid height, grid width)"
            )));
        };
        candidates.retain(|c| c.0 <= best + ASPECT_BAND);
        let prefix = candidates.iter().map(|c| c.1).min().expect("not empty");
        candidates.retain(|c| c.1 == prefix);
        match candidates.as_slice() {
            [(_, p, h, w)] => Ok(TokenGrid { prefix_tokens: *p, height: *h, width: *w }),
            many => {
                let list: Vec<String> = many.iter().map(|c| format!("{}x{}", c.2, c.3)).collect();
                Err(error(format!(
                    "ambiguous: with {prefix} prefix tokens the grid could be {}; give the layout explicitly",
                    list.join(" or ")
                )))
            }
        }
    }

    /// Checks an explicit layout against the token count.
    pub fn check(&self, num_tokens: usize, input_hw: (usize, usize)) -> Result<(), CamError> {
        if self.num_tokens() != num_tokens || self.height == 0 || self.width == 0 {
            return Err(CamError::TokenGrid {
                tokens: num_tokens,
                height: input_hw.0,
                width: input_hw.1,
                reason: format!(
                    "the given layout ({} prefix tokens + {}x{} grid) has {} tokens",
                    self.prefix_tokens,
                    self.height,
                    self.width,
                    self.num_tokens()
                ),
            });
        }
        Ok(())
    }

    /// The explicit layout when given (checked), else the inferred one.
    pub fn resolve(
        explicit: Option<TokenGrid>,
        num_tokens: usize,
        input_hw: (usize, usize),
    ) -> Result<TokenGrid, CamError> {
        match explicit {
            Some(grid) => grid.check(num_tokens, input_hw).map(|()| grid),
            None => TokenGrid::infer(num_tokens, input_hw),
        }
    }
}

/// Every grid an integer-stride patch embedding can produce from `height x width`, floor or
/// ceil rounding, strides from 1 up to the larger side.
pub(crate) fn stride_grids(height: usize, width: usize) -> impl Iterator<Item = (usize, usize)> {
    (1..=height.max(width)).flat_map(move |s| {
        [(height / s, width / s), (height.div_ceil(s), width.div_ceil(s))]
            .into_iter()
            .filter(|&(h, w)| h > 0 && w > 0)
    })
}

/// Folds tokens `(B, N, D)` into a grid `(B, D, h, w)`: drops the prefix tokens and lays the
/// rest out row-major, as pytorch-grad-cam's usual ViT `reshape_transform` does. `grid`
/// overrides the layout [`TokenGrid::infer`] would pick from `N` and `input_hw`.
///
/// ```
/// use gradcam_core::{tokens_to_grid, TokenGrid};
/// let tokens = ndarray::Array3::<f32>::zeros((2, 1 + 6 * 8, 192));
/// let grid = tokens_to_grid(tokens.view(), (96, 128), None).unwrap();
/// assert_eq!(grid.dim(), (2, 192, 6, 8));
/// let explicit = TokenGrid { prefix_tokens: 1, height: 8, width: 6 };
/// assert_eq!(tokens_to_grid(tokens.view(), (96, 128), Some(explicit)).unwrap().dim(), (2, 192, 8, 6));
/// ```
pub fn tokens_to_grid(
    tokens: ArrayView3<f32>,
    input_hw: (usize, usize),
    grid: Option<TokenGrid>,
) -> Result<Array4<f32>, CamError> {
    let (batch, n, dim) = tokens.dim();
    let layout = TokenGrid::resolve(grid, n, input_hw)?;
    Ok(fold_tokens(tokens, layout, batch, dim))
}

pub(crate) fn fold_tokens(
    tokens: ArrayView3<f32>,
    layout: TokenGrid,
    batch: usize,
    dim: usize,
) -> Array4<f32> {
    let (n, hw, prefix) = (layout.num_tokens(), layout.height * layout.width, layout.prefix_tokens);
    let tokens = tokens.as_standard_layout();
    let src = tokens.as_slice().expect("standard layout");
    let mut out = vec![0.0f32; batch * dim * hw];
    // A (hw, D) -> (D, hw) transpose per image, in tiles so that both sides stay in cache.
    const TILE: usize = 16;
    for (b, dst) in out.chunks_exact_mut(dim * hw).enumerate() {
        let patches = &src[(b * n + prefix) * dim..(b + 1) * n * dim];
        for i0 in (0..hw).step_by(TILE) {
            for j0 in (0..dim).step_by(TILE) {
                for i in i0..(i0 + TILE).min(hw) {
                    let row = &patches[i * dim..(i + 1) * dim];
                    for j in j0..(j0 + TILE).min(dim) {
                        dst[j * hw + i] = row[j];
                    }
                }
            }
        }
    }
    Array4::from_shape_vec((batch, dim, layout.height, layout.width), out).expect("sizes match")
}

/// The inverse of [`tokens_to_grid`]: unfolds a grid `(B, D, h, w)` back into tokens
/// `(B, P + h*w, D)`, putting `prefix` `(B, P, D)` in front.
///
/// ```
/// use gradcam_core::{grid_to_tokens, tokens_to_grid};
/// use ndarray::{s, Array3};
/// let tokens = Array3::from_shape_fn((1, 5, 3), |(_, n, d)| (n * 3 + d) as f32);
/// let grid = tokens_to_grid(tokens.view(), (32, 32), None).unwrap();
/// let back = grid_to_tokens(grid.view(), tokens.slice(s![.., ..1, ..])).unwrap();
/// assert_eq!(back, tokens);
/// ```
pub fn grid_to_tokens(grid: ArrayView4<f32>, prefix: ArrayView3<f32>) -> Result<Array3<f32>, CamError> {
    let (batch, dim, h, w) = grid.dim();
    let (pb, p, pd) = prefix.dim();
    if pb != batch || pd != dim {
        return Err(CamError::Shape(format!(
            "prefix tokens {:?} do not fit a grid {:?}",
            prefix.shape(),
            grid.shape()
        )));
    }
    let mut out = Array3::zeros((batch, p + h * w, dim));
    out.slice_mut(s![.., ..p, ..]).assign(&prefix);
    let grid = grid.as_standard_layout();
    let patches = grid.view().into_shape_with_order((batch, dim, h * w)).expect("standard layout");
    out.slice_mut(s![.., p.., ..]).assign(&patches.permuted_axes([0, 2, 1]));
    Ok(out)
}
