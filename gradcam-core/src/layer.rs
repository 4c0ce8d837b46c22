//! What a backend hands to core: the output of one layer, and its gradient.

use ndarray::{Array3, Array4, ArrayView3, ArrayView4, IxDyn};

use crate::CamError;

/// The output of a layer as core sees it: a CNN feature map `(B, C, H, W)`
/// or a transformer token sequence `(B, N, D)`, always `f32` on the host.
#[derive(Clone, Debug, PartialEq)]
pub enum LayerTensor {
    /// `(batch, channels, height, width)`.
    Spatial(Array4<f32>),
    /// `(batch, tokens, dim)`, prefix tokens (class, distillation, registers) included.
    Tokens(Array3<f32>),
}

/// A borrowed [`LayerTensor`].
#[derive(Clone, Copy, Debug)]
pub enum LayerView<'a> {
    /// `(batch, channels, height, width)`.
    Spatial(ArrayView4<'a, f32>),
    /// `(batch, tokens, dim)`.
    Tokens(ArrayView3<'a, f32>),
}

impl LayerTensor {
    /// Builds a layer tensor from a row-major buffer; rank 4 is spatial, rank 3 is tokens.
    ///
    /// ```
    /// use gradcam_core::LayerTensor;
    /// let t = LayerTensor::from_shape_vec(&[1, 2, 3, 3], vec![0.0; 18]).unwrap();
    /// assert!(matches!(t, LayerTensor::Spatial(_)));
    /// assert!(LayerTensor::from_shape_vec(&[4, 4], vec![0.0; 16]).is_err());
    /// ```
    pub fn from_shape_vec(shape: &[usize], data: Vec<f32>) -> Result<Self, CamError> {
        let array = ndarray::ArrayD::from_shape_vec(IxDyn(shape), data)
            .map_err(|e| CamError::Shape(format!("{shape:?}: {e}")))?;
        match shape.len() {
            4 => Ok(LayerTensor::Spatial(array.into_dimensionality().expect("rank 4"))),
            3 => Ok(LayerTensor::Tokens(array.into_dimensionality().expect("rank 3"))),
            n => Err(CamError::Shape(format!(
                "a layer output must be (B, C, H, W) or (B, N, D), got rank {n} {shape:?}"
            ))),
        }
    }

    /// The shape, batch first.
    pub fn shape(&self) -> &[usize] {
        match self {
            LayerTensor::Spatial(a) => a.shape(),
            LayerTensor::Tokens(a) => a.shape(),
        }
    }

    /// Number of images in the batch.
    pub fn batch(&self) -> usize {
        self.shape()[0]
    }

    /// Borrows the data.
    pub fn view(&self) -> LayerView<'_> {
        match self {
            LayerTensor::Spatial(a) => LayerView::Spatial(a.view()),
            LayerTensor::Tokens(a) => LayerView::Tokens(a.view()),
        }
    }

    /// The row-major data (copied only when the array is not already contiguous).
    pub fn to_vec(&self) -> Vec<f32> {
        match self {
            LayerTensor::Spatial(a) => a.iter().copied().collect(),
            LayerTensor::Tokens(a) => a.iter().copied().collect(),
        }
    }
}

impl LayerView<'_> {
    /// The shape, batch first.
    pub fn shape(&self) -> &[usize] {
        match self {
            LayerView::Spatial(a) => a.shape(),
            LayerView::Tokens(a) => a.shape(),
        }
    }

    /// An owned copy.
    pub fn to_owned(&self) -> LayerTensor {
        match self {
            LayerView::Spatial(a) => LayerTensor::Spatial(a.to_owned()),
            LayerView::Tokens(a) => LayerTensor::Tokens(a.to_owned()),
        }
    }
}

/// Something that holds a layer's activations and can show them to core.
pub trait Activations {
    /// The activations `(B, C, H, W)` or `(B, N, D)`.
    fn activations(&self) -> LayerView<'_>;
}

/// Something that holds the gradient of the target score w.r.t. a layer's output.
pub trait Gradients {
    /// The gradient, same shape as the activations.
    fn gradients(&self) -> LayerView<'_>;
}

/// Names from `candidates` that look like `name` (shared prefix, substring, or a
/// small edit distance), best first; used for "unknown layer" errors.
///
/// ```
/// let names = ["layer1", "layer4", "layer4.1", "fc"];
/// let near = gradcam_core::near_matches("layr4", names.iter().copied());
/// assert_eq!(near[0], "layer4");
/// ```
pub fn near_matches<'a>(name: &str, candidates: impl IntoIterator<Item = &'a str>) -> Vec<String> {
    let mut scored: Vec<(usize, &str)> = candidates
        .into_iter()
        .map(|c| (edit_distance(name, c), c))
        .filter(|(d, c)| *d <= 2.max(name.len() / 3) || c.contains(name) || name.contains(*c))
        .collect();
    scored.sort_by_key(|(d, c)| (*d, c.len()));
    scored.into_iter().take(5).map(|(_, c)| c.to_string()).collect()
}

fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut row: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut prev = row[0];
        row[0] = i + 1;
        for (j, cb) in b.iter().enumerate() {
            let cur = row[j + 1];
            row[j + 1] = (prev + usize::from(ca != *cb)).min(row[j] + 1).min(cur + 1);
            prev = cur;
        }
    }
    row[b.len()]
}
