//! What to explain: which class, and which score of it.

use std::sync::Arc;

use ndarray::{s, Array1, Array2, ArrayView1, ArrayView2, Axis};

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
#[derive(Clone, Debug, PartialEq, Default)]
pub enum TargetScore {
    /// The raw logit of the class (pytorch-grad-cam's `ClassifierOutputTarget`).
    #[default]
    Logit,
    /// The softmax probability of the class (`ClassifierOutputSoftmaxTarget`).
    SoftmaxProbability,
    /// A model with one logit per image: class 1 is the logit, class 0 its negation
    /// (`BinaryClassifierOutputTarget`). Top-1 is the predicted class: 1 where the logit is > 0.
    Binary,
    /// A segmentation model, outputs `(C, H, W)` per image: the sum of the class's logits over a
    /// region (`SemanticSegmentationTarget`).
    Segmentation(Region),
    /// An embedding model, outputs `(D)` per image: the cosine similarity to a concept vector
    /// (`SimilarityToConceptTarget`, torch's `CosineSimilarity(dim=0)` with eps 1e-8).
    Similarity(Arc<Array1<f32>>),
}

/// The pixels a [`TargetScore::Segmentation`] score sums over.
#[derive(Clone, Debug, PartialEq)]
pub enum Region {
    /// Where the explained class is the argmax of the model's output, per image: resolved from
    /// the output of the image as given ([`Target::bind`]), and kept for every later pass.
    Argmax,
    /// One weight per output pixel `(H, W)` for every image (pytorch-grad-cam's `mask`).
    Mask(Arc<Array2<f32>>),
    /// One weight per output pixel for each image, `(B, H·W)`: [`Region::Argmax`] resolved.
    PerImage(Arc<Array2<f32>>),
}

/// The cosine similarity's eps (`torch.nn.CosineSimilarity`'s default).
pub const COSINE_EPS: f64 = 1e-8;

/// A target: classes plus the score taken of them.
///
/// A model's output per image may have any shape (`(K)` class logits, `(1)` a binary logit,
/// `(C, H, W)` a segmentation, `(D)` an embedding): backends hand it over flattened to rows
/// `(B, D)` with its per-image shape, and only the score decides how the row is read.
///
/// ```
/// use gradcam_core::Target;
/// use ndarray::array;
/// let logits = array![[0.0f32, 2.0, 1.0], [3.0, 0.0, 0.0]];
/// assert_eq!(Target::top_one().resolve(logits.view()).unwrap(), vec![1, 0]);
/// assert!(Target::class(7).resolve(logits.view()).is_err());
/// assert_eq!(Target::rank(1).resolve(logits.view()).unwrap(), vec![2, 1]);
/// ```
#[derive(Clone, Debug, PartialEq)]
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

    /// A single-logit model's class 1 (the logit) or 0 (its negation) for every image.
    pub fn binary(classes: Classes) -> Self {
        Target { classes, score: TargetScore::Binary }
    }

    /// Class `class` of a segmentation model, summed over `mask` `(H, W)` (the output's size), or
    /// where the class is the argmax without one.
    pub fn segmentation(class: usize, mask: Option<Array2<f32>>) -> Self {
        let region =
            mask.map_or(Region::Argmax, |m| Region::Mask(Arc::new(m.as_standard_layout().into_owned())));
        Target { classes: Classes::Same(class), score: TargetScore::Segmentation(region) }
    }

    /// An embedding model's cosine similarity to `concept`.
    pub fn similarity(concept: Array1<f32>) -> Self {
        Target { classes: Classes::TopOne, score: TargetScore::Similarity(Arc::new(concept)) }
    }

    /// Whether the model's outputs are class scores (logit or softmax targets), the ones that
    /// rank classes.
    pub fn is_classifier(&self) -> bool {
        matches!(self.score, TargetScore::Logit | TargetScore::SoftmaxProbability)
    }

    /// The class of each image for a classifier's logits `(B, K)`: [`Target::resolve_output`]
    /// with per-image shape `(K)`.
    pub fn resolve(&self, logits: ArrayView2<f32>) -> Result<Vec<usize>, CamError> {
        self.resolve_output(logits, &[logits.ncols()])
    }

    /// The class of each image, checked against the outputs `(B, D)` and their per-image
    /// `shape` (its product is `D`): the one place a class is resolved, for every backend and
    /// method. Outputs that are not finite are an error naming the image: no class of them
    /// means anything. Binary targets have classes 0 and 1, similarity ones class 0.
    pub fn resolve_output(&self, logits: ArrayView2<f32>, shape: &[usize]) -> Result<Vec<usize>, CamError> {
        let (batch, width) = logits.dim();
        if shape.iter().product::<usize>() != width {
            return Err(CamError::Shape(format!(
                "outputs of {width} values per image do not have shape {shape:?}"
            )));
        }
        if let Some(image) = logits.outer_iter().position(|row| row.iter().any(|v| !v.is_finite())) {
            return Err(CamError::NonFiniteLogits { image });
        }
        let num_classes = match &self.score {
            TargetScore::Logit | TargetScore::SoftmaxProbability => match shape {
                [k] => *k,
                _ => {
                    return Err(CamError::Unsupported(format!(
                        "the model outputs {shape:?} per image, not class scores: explain it with a \
                         segmentation target for (C, H, W) outputs, or a similarity target for embeddings"
                    )))
                }
            },
            TargetScore::Binary if width == 1 => 2,
            TargetScore::Binary => {
                return Err(CamError::Unsupported(format!(
                    "a binary target needs a model with one logit per image; this one outputs {shape:?}"
                )))
            }
            TargetScore::Segmentation(region) => segmentation_classes(shape, region)?,
            TargetScore::Similarity(concept) if shape.len() == 1 && concept.len() == width => {
                return match &self.classes {
                    Classes::TopOne => Ok(vec![0; batch]),
                    // A bound similarity target's "classes".
                    Classes::PerImage(v) if v.len() == batch && v.iter().all(|&c| c == 0) => Ok(v.clone()),
                    _ => Err(CamError::Unsupported(
                        "a similarity target explains no class: leave the class out".into(),
                    )),
                };
            }
            TargetScore::Similarity(concept) => {
                return Err(CamError::Shape(format!(
                    "the concept vector has {} values but the model outputs {shape:?} per image",
                    concept.len()
                )))
            }
        };
        let binary = self.score == TargetScore::Binary;
        let segmentation = matches!(self.score, TargetScore::Segmentation(_));
        let classes = match &self.classes {
            Classes::TopOne | Classes::Rank(_) if segmentation => {
                return Err(CamError::Unsupported(
                    "a segmentation target explains one class: name it (--class C)".into(),
                ))
            }
            Classes::TopOne if binary => logits.column(0).iter().map(|&v| usize::from(v > 0.0)).collect(),
            Classes::TopOne => logits.outer_iter().map(|row| argmax(row.iter().copied())).collect(),
            Classes::Rank(rank) if *rank >= num_classes => {
                return Err(CamError::RankOutOfRange { rank: *rank, num_classes })
            }
            Classes::Rank(rank) if binary => {
                logits.column(0).iter().map(|&v| usize::from(v > 0.0) ^ usize::from(*rank == 1)).collect()
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

    /// This target with its classes resolved on `logits` (per-image shape `shape`), and a
    /// segmentation's argmax region resolved per image: what every later pass over other inputs
    /// (ScoreCAM's masked copies, metrics' perturbed images, augmented copies) explains; with
    /// the classes it resolved.
    pub fn bind(&self, logits: ArrayView2<f32>, shape: &[usize]) -> Result<(Target, Vec<usize>), CamError> {
        let classes = self.resolve_output(logits, shape)?;
        let score = match &self.score {
            TargetScore::Segmentation(Region::Argmax) => {
                // resolve_output checked the shape (C, H, W).
                let num_classes = shape[0];
                let pixels = logits.ncols() / num_classes.max(1);
                let mut masks = Array2::zeros((logits.nrows(), pixels));
                for ((mut mask, row), &class) in masks.outer_iter_mut().zip(logits.outer_iter()).zip(&classes)
                {
                    for (p, m) in mask.iter_mut().enumerate() {
                        let best = argmax((0..num_classes).map(|k| row[k * pixels + p]));
                        *m = if best == class { 1.0 } else { 0.0 };
                    }
                }
                TargetScore::Segmentation(Region::PerImage(Arc::new(masks)))
            }
            other => other.clone(),
        };
        Ok((Target { classes: Classes::PerImage(classes.clone()), score }, classes))
    }

    /// This (bound) target for image `image` of its batch alone: its class for every row, and
    /// its own region.
    pub fn image(&self, image: usize) -> Target {
        let classes = match &self.classes {
            Classes::PerImage(v) if image < v.len() => Classes::Same(v[image]),
            other => other.clone(),
        };
        let score = match &self.score {
            TargetScore::Segmentation(Region::PerImage(masks)) if image < masks.nrows() => {
                TargetScore::Segmentation(Region::PerImage(Arc::new(
                    masks.slice(s![image..=image, ..]).to_owned(),
                )))
            }
            other => other.clone(),
        };
        Target { classes, score }
    }

    /// The same target for the input mirrored left to right (`--aug-smooth`): a segmentation's
    /// region is mirrored with it, so that every copy sums over the same scene pixels.
    pub fn mirrored(&self, width: usize) -> Target {
        // Per-image regions are flattened (B, H·W): mirror each line of `width` pixels.
        let mirror = |m: &Array2<f32>| {
            Array2::from_shape_fn(m.dim(), |(b, p)| m[[b, p - p % width + (width - 1 - p % width)]])
        };
        let score = match &self.score {
            TargetScore::Segmentation(Region::Mask(m)) => {
                let mut out = (**m).clone();
                out.invert_axis(Axis(1));
                TargetScore::Segmentation(Region::Mask(Arc::new(out.as_standard_layout().to_owned())))
            }
            TargetScore::Segmentation(Region::PerImage(m)) if width > 0 && m.ncols() % width == 0 => {
                TargetScore::Segmentation(Region::PerImage(Arc::new(mirror(m))))
            }
            other => other.clone(),
        };
        Target { classes: self.classes.clone(), score }
    }

    /// The target score of each row of `logits` `(B, D)` for its class; an error for rows this
    /// (bound) target cannot read.
    pub fn scores(&self, logits: ArrayView2<f32>, classes: &[usize]) -> Result<Vec<f32>, CamError> {
        let width = logits.ncols();
        let fits = match &self.score {
            TargetScore::Logit | TargetScore::SoftmaxProbability => classes.iter().all(|&c| c < width),
            TargetScore::Binary => width == 1,
            TargetScore::Segmentation(region) => {
                let pixels = region_row(region, 0).len();
                pixels > 0 && classes.iter().all(|&c| (c + 1) * pixels <= width)
            }
            TargetScore::Similarity(concept) => concept.len() == width,
        };
        if !fits || classes.len() > logits.nrows() {
            return Err(CamError::Shape(format!(
                "outputs of {width} values per image do not fit the target explained ({:?})",
                self.classes
            )));
        }
        let probs = (self.score == TargetScore::SoftmaxProbability).then(|| softmax_rows(logits));
        Ok(classes
            .iter()
            .enumerate()
            .map(|(b, &c)| match &self.score {
                TargetScore::Logit => logits[[b, c]],
                TargetScore::SoftmaxProbability => probs.as_ref().map_or(0.0, |p| p[[b, c]]),
                TargetScore::Binary => binary_sign(c) * logits[[b, 0]],
                TargetScore::Segmentation(region) => {
                    let mask = region_row(region, b);
                    let plane = class_plane(logits.row(b), c, mask.len());
                    // In f64: a sum over every output pixel, which f32 in order would round off
                    // far more than torch's pairwise sum (ScoreCAM softmaxes these scores).
                    plane.iter().zip(mask.iter()).map(|(&v, &m)| f64::from(v * m)).sum::<f64>() as f32
                }
                TargetScore::Similarity(concept) => cosine(logits.row(b), concept.view()).0 as f32,
            })
            .collect())
    }

    /// `d score_b / d logits[b, :]` for every image and its (resolved) class: the seed a backend
    /// back-propagates from the outputs. One-hot for [`TargetScore::Logit`]; `p_c (δ_cj - p_j)`
    /// for softmax; ±1 for binary; the region's weights on the class's plane for segmentation;
    /// `ŷ/|x| - (x̂·ŷ) x/|x|²` for similarity.
    pub fn seed_for(&self, logits: ArrayView2<f32>, classes: &[usize]) -> Array2<f32> {
        let mut seed = Array2::zeros(logits.raw_dim());
        for ((b, &c), mut out) in classes.iter().enumerate().zip(seed.outer_iter_mut()) {
            match &self.score {
                TargetScore::Logit => out[c] = 1.0,
                TargetScore::SoftmaxProbability => {
                    let p = softmax_rows(logits.slice(s![b..=b, ..]));
                    for j in 0..p.ncols() {
                        let delta = if j == c { 1.0 } else { 0.0 };
                        out[j] = p[[0, c]] * (delta - p[[0, j]]);
                    }
                }
                TargetScore::Binary => out[0] = binary_sign(c),
                TargetScore::Segmentation(region) => {
                    let mask = region_row(region, b);
                    let pixels = mask.len();
                    if (c + 1) * pixels <= out.len() {
                        out.slice_mut(s![c * pixels..(c + 1) * pixels]).assign(&mask);
                    }
                }
                TargetScore::Similarity(concept) => {
                    let x = logits.row(b);
                    let (cos, nx, ny) = cosine(x, concept.view());
                    for ((o, &xi), &yi) in out.iter_mut().zip(x.iter()).zip(concept.iter()) {
                        *o = (yi as f64 / (nx * ny) - cos * xi as f64 / (nx * nx)) as f32;
                    }
                }
            }
        }
        seed
    }
}

/// The number of classes of a segmentation output `(C, H, W)`, checked against `region`.
fn segmentation_classes(shape: &[usize], region: &Region) -> Result<usize, CamError> {
    let &[num_classes, h, w] = shape else {
        return Err(CamError::Unsupported(format!(
            "a segmentation target needs a model that outputs (C, H, W) per image; this one outputs {shape:?}"
        )));
    };
    match region {
        Region::Mask(mask) if mask.dim() != (h, w) => Err(CamError::Shape(format!(
            "the mask is {}x{} (width x height) but the model's output is {w}x{h}: give a mask of the \
             output's size",
            mask.ncols(),
            mask.nrows()
        ))),
        Region::PerImage(masks) if masks.ncols() != h * w => {
            Err(CamError::Shape(format!("{} mask pixels for an output of {h}x{w}", masks.ncols())))
        }
        _ => Ok(num_classes),
    }
}

/// pytorch-grad-cam's `BinaryClassifierOutputTarget`: +1 for class 1, -1 otherwise.
fn binary_sign(class: usize) -> f32 {
    if class == 1 {
        1.0
    } else {
        -1.0
    }
}

/// Image `b`'s region weights, flattened `(H·W)` (one row of a per-image region: a bound
/// target's rows are its images, an [`Target::image`] target's one).
fn region_row(region: &Region, b: usize) -> ArrayView1<'_, f32> {
    match region {
        Region::Mask(m) => m.as_slice().map_or_else(|| ArrayView1::from(&[][..]), ArrayView1::from),
        Region::PerImage(m) => m.row(b.min(m.nrows().saturating_sub(1))),
        Region::Argmax => ArrayView1::from(&[][..]),
    }
}

/// Class `class`'s plane of one flattened `(C, H, W)` output row, `pixels = H·W` values.
fn class_plane(row: ArrayView1<'_, f32>, class: usize, pixels: usize) -> ArrayView1<'_, f32> {
    row.slice_move(s![class * pixels..(class + 1) * pixels])
}

/// torch's cosine similarity of `x` and `y`: each divided by its norm clamped to
/// [`COSINE_EPS`], then the dot product; returns it with both clamped norms (in f64).
fn cosine(x: ArrayView1<f32>, y: ArrayView1<f32>) -> (f64, f64, f64) {
    let norm =
        |v: ArrayView1<f32>| v.iter().map(|&a| a as f64 * a as f64).sum::<f64>().sqrt().max(COSINE_EPS);
    let (nx, ny) = (norm(x), norm(y));
    let dot: f64 = x.iter().zip(y.iter()).map(|(&a, &b)| a as f64 * b as f64).sum();
    (dot / (nx * ny), nx, ny)
}

/// Core's side of a backward pass. A backend runs its forward pass, hands the outputs flattened
/// to `(B, D)` and their per-image shape to [`Seed::seed`] and back-propagates
/// `Σ_bk seed[b, k] · outputs[b, k]`: the class (top-1, rank, given) and the score (logit,
/// softmax, binary, segmentation, similarity) are core's business alone, so every backend
/// explains the same class and rejects a bad one with the same error.
pub trait Seed {
    /// `d score / d outputs`, shaped like `logits`; an error for a class the outputs do not have.
    fn seed(&self, logits: ArrayView2<f32>, shape: &[usize]) -> Result<Array2<f32>, CamError>;
}

impl Seed for Target {
    fn seed(&self, logits: ArrayView2<f32>, shape: &[usize]) -> Result<Array2<f32>, CamError> {
        let (bound, classes) = self.bind(logits, shape)?;
        Ok(bound.seed_for(logits, &classes))
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
