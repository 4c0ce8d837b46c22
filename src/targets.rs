//! `--target`: what the model's output is and which score of it is explained. Builds core's
//! [`Target`]s from the flags (reading `--mask` and `--concept` up front) and says, per image,
//! what a non-classifier's score was.

use std::path::Path;

use clap::ValueEnum;
use gradcam_core::{Classes, Explanation, Region, Target, TargetScore};
use ndarray::{Array1, Array2};

use crate::cli::CamArgs;
use crate::error::CliError;

/// The largest `--concept` file read: a vector of 16 M floats.
const MAX_CONCEPT_BYTES: u64 = 64 << 20;

/// `--target`: the kind of model output explained.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, ValueEnum)]
pub enum TargetKind {
    /// A classifier's class scores (B, K): the class's logit, or softmax probability with --softmax.
    #[default]
    Class,
    /// One logit per image: class 1 is the logit, class 0 its negation (top-1: the predicted one).
    Binary,
    /// A segmentation (B, C, H, W): class --class's logits summed over --mask, or where the class wins.
    Segmentation,
    /// An embedding (B, D): the cosine similarity to --concept.
    Similarity,
}

/// One target per `explain` call, with the class rank it stands for under `--top`, from the
/// flags; `--mask` and `--concept` are read here, before any model runs.
pub fn targets(args: &CamArgs) -> Result<Vec<(Target, Option<usize>)>, CliError> {
    let usage = |m: &str| Err(CliError::Usage(m.into()));
    if args.mask.is_some() && args.target != TargetKind::Segmentation {
        return usage("--mask is for --target segmentation");
    }
    if args.concept.is_some() && args.target != TargetKind::Similarity {
        return usage("--concept is for --target similarity");
    }
    if args.softmax && args.target != TargetKind::Class {
        return usage("--softmax is for classifiers (--target class)");
    }
    let ranked = |make: &dyn Fn(Classes) -> Target| -> Vec<(Target, Option<usize>)> {
        match (args.class, args.top) {
            (Some(class), _) => vec![(make(Classes::Same(class)), None)],
            (None, Some(k)) => (0..k as usize).map(|r| (make(Classes::Rank(r)), Some(r))).collect(),
            (None, None) => vec![(make(Classes::TopOne), None)],
        }
    };
    Ok(match args.target {
        TargetKind::Class => ranked(&|classes| {
            let t = Target { classes, ..Target::top_one() };
            if args.softmax {
                t.softmax()
            } else {
                t
            }
        }),
        TargetKind::Binary => ranked(&|classes| Target::binary(classes)),
        TargetKind::Segmentation => {
            let Some(class) = args.class else {
                return usage("--target segmentation explains one class: give it with --class C");
            };
            let mask = args.mask.as_deref().map(|p| read_mask(p, args.max_pixels)).transpose()?;
            vec![(Target::segmentation(class, mask), None)]
        }
        TargetKind::Similarity => {
            if args.class.is_some() || args.top.is_some() {
                return usage("--target similarity explains no class: leave out --class and --top");
            }
            let Some(path) = &args.concept else {
                return usage("--target similarity needs the concept vector: --concept VECTOR.npy");
            };
            vec![(Target::similarity(read_concept(path)?), None)]
        }
    })
}

/// A mask picture: 1 where a pixel is not black, 0 elsewhere, at the picture's size (which must
/// be the model output's).
fn read_mask(path: &Path, max_pixels: u64) -> Result<Array2<f32>, CliError> {
    if !path.exists() {
        return Err(CliError::MissingFile { what: "mask", path: path.to_path_buf() });
    }
    let options = gradcam_viz::DecodeOptions { max_pixels, ..gradcam_viz::DecodeOptions::default() };
    let picture = gradcam_viz::load_image_with(path, &options)?;
    let (w, h) = picture.dimensions();
    Ok(Array2::from_shape_fn((h as usize, w as usize), |(y, x)| {
        let p = picture.get_pixel(x as u32, y as u32).0;
        if p.iter().any(|&c| c > 0) {
            1.0
        } else {
            0.0
        }
    }))
}

/// A concept vector `.npy`: 1-D, float32 or float64.
fn read_concept(path: &Path) -> Result<Array1<f32>, CliError> {
    let bad = |message: String| CliError::BadNpy { path: path.to_path_buf(), message };
    let size = std::fs::metadata(path)
        .map_err(|e| match e.kind() {
            std::io::ErrorKind::NotFound => {
                CliError::MissingFile { what: "concept vector", path: path.to_path_buf() }
            }
            _ => CliError::Read { path: path.to_path_buf(), source: e },
        })?
        .len();
    if size > MAX_CONCEPT_BYTES {
        return Err(bad(format!(
            "{size} bytes is too large for a concept vector (at most {MAX_CONCEPT_BYTES})"
        )));
    }
    let concept = match ndarray_npy::read_npy::<_, Array1<f32>>(path) {
        Ok(v) => v,
        Err(_) => {
            ndarray_npy::read_npy::<_, Array1<f64>>(path).map(|v| v.mapv(|x| x as f32)).map_err(|e| {
                bad(format!("a concept vector must be a 1-D float32 or float64 .npy array ({e})"))
            })?
        }
    };
    if concept.is_empty() || concept.iter().any(|v| !v.is_finite()) {
        return Err(bad("the concept vector is empty or holds NaN or infinity".into()));
    }
    Ok(concept)
}

/// The score a run explains, as its JSON summary names it: `logit`, `softmax`, `binary`,
/// `segmentation` or `similarity`.
pub fn score_name(args: &CamArgs) -> &'static str {
    match args.target {
        TargetKind::Class if args.softmax => "softmax",
        TargetKind::Class => "logit",
        TargetKind::Binary => "binary",
        TargetKind::Segmentation => "segmentation",
        TargetKind::Similarity => "similarity",
    }
}

/// What a non-classifier's score was for image `b` (`None` for classifiers, whose predictions
/// table says it).
pub fn describe(e: &Explanation, b: usize) -> Option<String> {
    let scores = e.target.scores(e.logits.view(), &e.classes).ok()?;
    let score = *scores.get(b)?;
    let class = e.classes[b];
    match &e.target.score {
        TargetScore::Logit | TargetScore::SoftmaxProbability => None,
        TargetScore::Binary => Some(format!(
            "binary logit {:.3}: explained class {class} ({}), score {score:.3}",
            e.logits[[b, 0]],
            if class == 1 { "the logit" } else { "its negation" }
        )),
        TargetScore::Segmentation(region) => {
            let pixels = match region {
                Region::Mask(m) => m.iter().filter(|&&v| v != 0.0).count(),
                Region::PerImage(m) => {
                    m.row(b.min(m.nrows().saturating_sub(1))).iter().filter(|&&v| v != 0.0).count()
                }
                Region::Argmax => 0,
            };
            let total: usize = e.output_shape.iter().skip(1).product();
            let over = if matches!(region, Region::Mask(_)) { "the mask" } else { "where it wins" };
            Some(format!("segmentation class {class}: logits summed over {over}, {pixels} of {total} pixels, score {score:.3}"))
        }
        TargetScore::Similarity(_) => Some(format!("cosine similarity to the concept {score:.4}")),
    }
}
