//! How faithful a map is: pytorch-grad-cam 1.5.7's `metrics` package. Each metric perturbs the
//! input with the map, runs the perturbed batch through [`CamModel::forward`] and compares the
//! target score of the explained class with the original one.

use std::collections::HashMap;
use std::fmt;
use std::str::FromStr;

use ndarray::{Array4, ArrayView3, ArrayView4, Axis, Zip};

use crate::road::{impute, road_keep_mask, ROAD_NOISE};
use crate::{CamError, CamModel, Target};

/// ROAD's percentile for `road-most` (`ROADMostRelevantFirst(percentile=80)`: the most relevant
/// 20 % of the pixels are removed).
pub const ROAD_MOST_PERCENTILE: u32 = 80;
/// ROAD's percentile for `road-least` (`ROADLeastRelevantFirst(percentile=20)`: all but the most
/// relevant 20 % are removed).
pub const ROAD_LEAST_PERCENTILE: u32 = 20;
/// The percentiles `road-combined` averages over (`ROADCombined`'s default).
pub const ROAD_COMBINED_PERCENTILES: [u32; 9] = [10, 20, 30, 40, 50, 60, 70, 80, 90];

/// A faithfulness metric; each matches the pytorch-grad-cam class named on its variant. The
/// score of an image is the [`Target`]'s score of its explained class (logit or softmax
/// probability); "change" is the perturbed image's score minus the original's.
///
/// ```
/// use gradcam_core::Metric;
/// let m: Metric = "road-combined".parse().unwrap();
/// assert_eq!(m, Metric::RoadCombined);
/// assert_eq!(m.to_string(), "road-combined");
/// assert!(m.higher_is_better() && !Metric::Drop.higher_is_better());
/// assert!("road".parse::<Metric>().is_err());
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Metric {
    /// `CamMultImageConfidenceChange`: the change of the score when the input is multiplied by
    /// the map. Higher is better: the pixels the map keeps carry the class.
    ConfidenceChange,
    /// `DropInConfidence`: `max(0, -change)` of the same perturbation. Lower is better.
    Drop,
    /// `IncreaseInConfidence`: 1 when the same change is positive, else 0. Higher is better.
    Increase,
    /// `ROADMostRelevantFirst(80)`: the change when the most relevant 20 % of the pixels are
    /// imputed away. Lower (more negative) is better: the map found what mattered.
    RoadMost,
    /// `ROADLeastRelevantFirst(20)`: the change when all but the most relevant 20 % are imputed
    /// away. Higher is better: what the map keeps suffices.
    RoadLeast,
    /// `ROADCombined`: `(mean LeRF - mean MoRF) / 2` over the percentiles 10, 20, …, 90.
    /// Higher is better.
    RoadCombined,
}

impl Metric {
    /// Every metric, in a fixed order.
    pub const ALL: [Metric; 6] = [
        Metric::ConfidenceChange,
        Metric::Drop,
        Metric::Increase,
        Metric::RoadMost,
        Metric::RoadLeast,
        Metric::RoadCombined,
    ];

    /// The command-line name.
    pub fn name(self) -> &'static str {
        match self {
            Metric::ConfidenceChange => "confidence-change",
            Metric::Drop => "drop",
            Metric::Increase => "increase",
            Metric::RoadMost => "road-most",
            Metric::RoadLeast => "road-least",
            Metric::RoadCombined => "road-combined",
        }
    }

    /// Whether a larger value means a more faithful map.
    pub fn higher_is_better(self) -> bool {
        !matches!(self, Metric::Drop | Metric::RoadMost)
    }
}

impl fmt::Display for Metric {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for Metric {
    type Err = CamError;

    /// Parses a command-line name, case-insensitively; `_` is accepted for `-`.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let wanted = s.trim().to_ascii_lowercase().replace('_', "-");
        Metric::ALL.into_iter().find(|m| m.name() == wanted).ok_or_else(|| {
            let names: Vec<&str> = Metric::ALL.iter().map(|m| m.name()).collect();
            CamError::Unsupported(format!("unknown metric `{s}`; known metrics: {}", names.join(", ")))
        })
    }
}

/// Options of [`evaluate`].
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct MetricOptions {
    /// The standard deviation of the noise ROAD's imputer adds (default [`ROAD_NOISE`], 0.01;
    /// finite, at least 0). At 0 the ROAD metrics are pytorch-grad-cam's exactly.
    pub road_noise: f32,
    /// The seed of that noise ([`crate::impute`]).
    pub seed: u32,
}

impl Default for MetricOptions {
    fn default() -> Self {
        MetricOptions { road_noise: ROAD_NOISE, seed: 0 }
    }
}

/// One metric's value for every image of a batch.
#[derive(Clone, Debug, PartialEq)]
pub struct MetricValues {
    pub metric: Metric,
    pub values: Vec<f32>,
}

/// One way of perturbing the input; each is computed once per call, however many metrics use it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
enum Perturbation {
    /// `input * cam`.
    Multiply,
    /// ROAD at a percentile, most (`true`) or least relevant first.
    Road { percentile: u32, most_relevant_first: bool },
}

/// The metrics of the maps `(B, H, W)` of `input` `(B, C, H, W)`, explained for `classes` (the
/// resolved class of each image) with `target`'s score: one [`MetricValues`] per metric, in the
/// order given. Runs one forward pass of the original batch and one per distinct perturbation
/// (input × map; ROAD at each percentile needed: `road-combined` needs 18, and includes the
/// ones of `road-most` and `road-least`).
pub fn evaluate(
    model: &mut dyn CamModel,
    input: ArrayView4<f32>,
    maps: ArrayView3<f32>,
    target: &Target,
    classes: &[usize],
    metrics: &[Metric],
    options: &MetricOptions,
) -> Result<Vec<MetricValues>, CamError> {
    let (batch, _, h, w) = input.dim();
    if batch == 0 || h == 0 || w == 0 {
        return Err(CamError::Shape(format!("empty input {:?}", input.shape())));
    }
    if maps.dim() != (batch, h, w) {
        return Err(CamError::Shape(format!(
            "maps {:?} for an input of {batch} images of {h}x{w}",
            maps.shape()
        )));
    }
    if classes.len() != batch {
        return Err(CamError::Shape(format!("{} classes given for a batch of {batch}", classes.len())));
    }
    if !options.road_noise.is_finite() || options.road_noise < 0.0 {
        return Err(CamError::Unsupported(format!(
            "ROAD's noise must be a finite number of at least 0, not {}",
            options.road_noise
        )));
    }
    if let Some(image) = maps.outer_iter().position(|m| m.iter().any(|v| !v.is_finite())) {
        return Err(CamError::Unsupported(format!("the map of image {image} holds NaN or infinite values")));
    }
    let original = scores(model, input, target, classes)?;

    let mut changes: HashMap<Perturbation, Vec<f32>> = HashMap::new();
    let mut change = |p: Perturbation| -> Result<Vec<f32>, CamError> {
        if let Some(c) = changes.get(&p) {
            return Ok(c.clone());
        }
        let perturbed = perturb(input, maps, p, options)?;
        let after = scores(model, perturbed.view(), target, classes)?;
        let c: Vec<f32> = after.iter().zip(&original).map(|(a, o)| a - o).collect();
        changes.insert(p, c.clone());
        Ok(c)
    };
    let road = |percentile, most_relevant_first| Perturbation::Road { percentile, most_relevant_first };

    let mut out = Vec::with_capacity(metrics.len());
    for &metric in metrics {
        let values = match metric {
            Metric::ConfidenceChange => change(Perturbation::Multiply)?,
            Metric::Drop => change(Perturbation::Multiply)?.iter().map(|&c| (-c).max(0.0)).collect(),
            Metric::Increase => {
                change(Perturbation::Multiply)?.iter().map(|&c| if c > 0.0 { 1.0 } else { 0.0 }).collect()
            }
            Metric::RoadMost => change(road(ROAD_MOST_PERCENTILE, true))?,
            Metric::RoadLeast => change(road(ROAD_LEAST_PERCENTILE, false))?,
            Metric::RoadCombined => {
                let mut most = vec![0.0f64; batch];
                let mut least = vec![0.0f64; batch];
                for p in ROAD_COMBINED_PERCENTILES {
                    for (sum, c) in most.iter_mut().zip(change(road(p, true))?) {
                        *sum += f64::from(c);
                    }
                    for (sum, c) in least.iter_mut().zip(change(road(p, false))?) {
                        *sum += f64::from(c);
                    }
                }
                let n = ROAD_COMBINED_PERCENTILES.len() as f64;
                most.iter().zip(&least).map(|(m, l)| ((l / n - m / n) / 2.0) as f32).collect()
            }
        };
        out.push(MetricValues { metric, values });
    }
    Ok(out)
}

/// The target score of each image's class, from one forward pass of `input`.
fn scores(
    model: &mut dyn CamModel,
    input: ArrayView4<f32>,
    target: &Target,
    classes: &[usize],
) -> Result<Vec<f32>, CamError> {
    let logits = model.forward(input)?;
    let batch = input.len_of(Axis(0));
    if logits.nrows() != batch {
        return Err(CamError::Shape(format!("forward returned {} rows for {batch} inputs", logits.nrows())));
    }
    if let Some(image) = logits.outer_iter().position(|row| row.iter().any(|v| !v.is_finite())) {
        return Err(CamError::NonFiniteLogits { image });
    }
    if target.is_classifier() {
        if let Some(&class) = classes.iter().find(|&&c| c >= logits.ncols()) {
            return Err(CamError::ClassOutOfRange { class, num_classes: logits.ncols() });
        }
    }
    target.scores(logits.view(), classes)
}

/// The perturbed batch. ROAD imputes the images on threads of their own.
fn perturb(
    input: ArrayView4<f32>,
    maps: ArrayView3<f32>,
    perturbation: Perturbation,
    options: &MetricOptions,
) -> Result<Array4<f32>, CamError> {
    let mut out = input.to_owned();
    match perturbation {
        Perturbation::Multiply => {
            for (mut image, cam) in out.outer_iter_mut().zip(maps.outer_iter()) {
                for mut channel in image.outer_iter_mut() {
                    Zip::from(&mut channel).and(&cam).for_each(|v, &m| *v *= m);
                }
            }
        }
        Perturbation::Road { percentile, most_relevant_first } => {
            let filled = parallel_map(input.len_of(Axis(0)), |b| {
                let keep =
                    road_keep_mask(maps.index_axis(Axis(0), b), f64::from(percentile), most_relevant_first);
                impute(input.index_axis(Axis(0), b), keep.view(), options.road_noise, options.seed)
            });
            for (mut image, filled) in out.outer_iter_mut().zip(filled) {
                image.assign(&filled?);
            }
        }
    }
    Ok(out)
}

/// `f(0), …, f(n - 1)` computed on up to one thread per core, in order.
fn parallel_map<T: Send>(n: usize, f: impl Fn(usize) -> T + Sync) -> Vec<T> {
    let threads = std::thread::available_parallelism().map_or(1, |c| c.get()).min(n);
    if threads <= 1 {
        return (0..n).map(f).collect();
    }
    std::thread::scope(|scope| {
        let f = &f;
        let handles: Vec<_> = (0..threads)
            .map(|t| scope.spawn(move || (t..n).step_by(threads).map(|i| (i, f(i))).collect::<Vec<_>>()))
            .collect();
        let mut out: Vec<Option<T>> = (0..n).map(|_| None).collect();
        for handle in handles {
            match handle.join() {
                Ok(done) => done.into_iter().for_each(|(i, v)| out[i] = Some(v)),
                Err(panic) => std::panic::resume_unwind(panic),
            }
        }
        out.into_iter().flatten().collect()
    })
}
