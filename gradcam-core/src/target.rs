//! What to explain: which class, and which score of it.

use ndarray::{Array2, ArrayView2, Axis};

use crate::CamError;

/// Which class each image is explained for.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Classes {
    /// Each image's own top-1 class.
    TopOne,
    /// Each image's class of this rank among its logits (0 = top-1, 1 = runner-up, …; ties go
    /// to the lower class index, as `numpy.argmax`).
    Rank(usize),
    /// The same class for every image.
    Same(usize),
    /// One class per image, in batch order.
    PerImage(Vec<usize>),
}

/// The scalar whose gradient is explained.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum TargetScore {
    /// The raw logit of the class (pytorch-grad-cam's `ClassifierOutputTarget`).
    #[default]
    Logit,
    /// The softmax probability of the class (`ClassifierOutputSoftmaxTarget`).
    SoftmaxProbability,
}

/// A target: classes plus the score taken of them.
///
/// ```
/// use gradcam_core::Target;
/// use ndarray::array;
/// let logits = array![[0.0f32, 2.0, 1.0], [3.0, 0.0, 0.0]];
/// assert_eq!(Target::top_one().resolve(logits.view()).unwrap(), vec![1, 0]);
/// assert!(Target::class(7).resolve(logits.view()).is_err());
/// assert_eq!(Target::rank(1).resolve(logits.view()).unwrap(), vec![2, 1]);
/// ```
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Target {
    pub classes: Classes,
    pub score: TargetScore,
}

impl Default for Target {
    fn default() -> Self {
        Target::top_one()
    }
}

impl Target {
    /// Each image's top-1 class, raw logit.
    pub fn top_one() -> Self {
        Target { classes: Classes::TopOne, score: TargetScore::Logit }
    }

    /// One class for every image, raw logit.
    pub fn class(class: usize) -> Self {
        Target { classes: Classes::Same(class), score: TargetScore::Logit }
    }

    /// Each image's class of rank `rank` (0 = top-1), raw logit.
    pub fn rank(rank: usize) -> Self {
        Target { classes: Classes::Rank(rank), score: TargetScore::Logit }
    }

    /// One class per image, raw logit.
    pub fn per_image(classes: Vec<usize>) -> Self {
        Target { classes: Classes::PerImage(classes), score: TargetScore::Logit }
    }

    /// The same classes, explained through their softmax probability.
    pub fn softmax(mut self) -> Self {
        self.score = TargetScore::SoftmaxProbability;
        self
    }

    /// The class of each image, checked against the logits' shape `(B, K)`: the one place a
    /// class is resolved, for every backend and method. Logits that are not finite are an error
    /// naming the image: no class of them means anything.
    pub fn resolve(&self, logits: ArrayView2<f32>) -> Result<Vec<usize>, CamError> {
        let (batch, num_classes) = logits.dim();
        if let Some(image) = logits.outer_iter().position(|row| row.iter().any(|v| !v.is_finite())) {
            return Err(CamError::NonFiniteLogits { image });
        }
        let classes = match &self.classes {
            Classes::TopOne => logits.outer_iter().map(|row| argmax(row.iter().copied())).collect(),
            Classes::Rank(rank) if *rank >= num_classes => {
                return Err(CamError::RankOutOfRange { rank: *rank, num_classes })
            }
            Classes::Rank(rank) => logits.outer_iter().map(|row| ranked(row)[*rank]).collect(),
            Classes::Same(c) => vec![*c; batch],
            Classes::PerImage(v) if v.len() == batch => v.clone(),
            Classes::PerImage(v) => {
                return Err(CamError::Shape(format!("{} classes given for a batch of {batch}", v.len())))
            }
        };
        if let Some(&class) = classes.iter().find(|&&c| c >= num_classes) {
            return Err(CamError::ClassOutOfRange { class, num_classes });
        }
        Ok(classes)
    }

    /// The target score of each image.
    pub fn scores(&self, logits: ArrayView2<f32>, classes: &[usize]) -> Vec<f32> {
        let probs = (self.score == TargetScore::SoftmaxProbability).then(|| softmax_rows(logits));
        classes
            .iter()
            .enumerate()
            .map(|(b, &c)| probs.as_ref().map_or(logits[[b, c]], |p| p[[b, c]]))
            .collect()
    }

    /// `d score_b / d logits[b, :]` for every image and its (resolved) class: the seed a backend
    /// back-propagates from the logits. One-hot for [`TargetScore::Logit`]; `p_c (δ_cj - p_j)`
    /// for softmax.
    pub fn seed_for(&self, logits: ArrayView2<f32>, classes: &[usize]) -> Array2<f32> {
        let mut seed = Array2::zeros(logits.raw_dim());
        match self.score {
            TargetScore::Logit => {
                for (b, &c) in classes.iter().enumerate() {
                    seed[[b, c]] = 1.0;
                }
            }
            TargetScore::SoftmaxProbability => {
                let p = softmax_rows(logits);
                for (b, &c) in classes.iter().enumerate() {
                    for j in 0..p.ncols() {
                        let delta = if j == c { 1.0 } else { 0.0 };
                        seed[[b, j]] = p[[b, c]] * (delta - p[[b, j]]);
                    }
                }
            }
        }
        seed
    }
}

/// Core's side of a backward pass. A backend runs its forward pass, hands the logits `(B, K)` to
/// [`Seed::seed`] and back-propagates `Σ_bk seed[b, k] · logits[b, k]`: the class (top-1, rank,
/// given) and the score (logit, softmax) are core's business alone, so every backend explains
/// the same class and rejects a bad one with the same error.
pub trait Seed {
    /// `d score / d logits`, shaped like `logits`; an error for a class the logits do not have.
    fn seed(&self, logits: ArrayView2<f32>) -> Result<Array2<f32>, CamError>;
}

impl Seed for Target {
    fn seed(&self, logits: ArrayView2<f32>) -> Result<Array2<f32>, CamError> {
        let classes = self.resolve(logits)?;
        Ok(self.seed_for(logits, &classes))
    }
}

/// Class indices of one row of logits, best first (ties: lower index first).
fn ranked(row: ndarray::ArrayView1<f32>) -> Vec<usize> {
    let mut order: Vec<usize> = (0..row.len()).collect();
    order.sort_by(|&a, &b| row[b].total_cmp(&row[a]).then(a.cmp(&b)));
    order
}

/// Softmax over the last axis, computed stably.
pub fn softmax_rows(logits: ArrayView2<f32>) -> Array2<f32> {
    let mut out = logits.to_owned();
    for mut row in out.axis_iter_mut(Axis(0)) {
        let max = row.iter().copied().fold(f32::NEG_INFINITY, f32::max);
        row.mapv_inplace(|v| (v - max).exp());
        let sum = row.sum();
        row.mapv_inplace(|v| v / sum);
    }
    out
}

/// Index of the largest value (the first one on ties, as `numpy.argmax`).
pub fn argmax(values: impl Iterator<Item = f32>) -> usize {
    let mut best = (0, f32::NEG_INFINITY);
    for (i, v) in values.enumerate() {
        if v > best.1 {
            best = (i, v);
        }
    }
    best.0
}
