//! [`check_explainer`]: run a written explainer once in ONNX Runtime and compare it with
//! `gradcam_core::explain` on the source model.

use std::fmt;

use gradcam_core::{explain, CamModel, CamOptions, Explanation, Method, Target};
use ndarray::{Array4, ArrayView, ArrayView4, Dimension};

use super::session::ExplainerSession;
use super::{cam_output, ExportError, Exported};
use crate::OnnxModel;

/// The largest difference [`check_explainer`] accepts between the explainer's maps (values in
/// `[0, 1]`) and `explain`'s, and between the logits relative to their largest magnitude.
pub const CHECK_TOLERANCE: f32 = 1e-5;
/// Images in the check's batch: three, which a source fixed to batch 2 does not divide, so that
/// the check covers an explainer's padded last part too.
const CHECK_BATCH: usize = 3;
/// How far each input pixel is moved, relatively, to measure how far `explain`'s maps move under
/// float rounding: about eight units in the last place of an `f32`, more than the rounding that
/// separates two evaluations of the same model.
const NOISE_STEP: f32 = 1e-6;

/// How a written explainer compares with `explain` on one batch.
#[derive(Clone, Debug)]
pub struct CheckReport {
    /// The class explained per image (image 0: the top-1 class, asked for with −1; the others:
    /// their second-ranked class, asked for explicitly).
    pub classes: Vec<usize>,
    /// Largest logit difference relative to the largest logit magnitude.
    pub logits: f32,
    /// Largest difference of each method's maps.
    pub maps: Vec<(Method, f32)>,
    /// For each method whose maps differ by more than [`CHECK_TOLERANCE`]: how far `explain`'s
    /// own maps move when every input pixel moves by one part in a million. Some maps are
    /// ill-conditioned (XGradCAM divides by `Σ a`, near zero on a LayerNorm's output; GradCAM++
    /// can sit near a pole): two evaluations of the same model that round differently already
    /// disagree that much. A difference within twice it passes, and the report says so.
    pub noise: Vec<(Method, f32)>,
}

impl CheckReport {
    /// Whether every difference is within [`CHECK_TOLERANCE`].
    pub fn passed(&self) -> bool {
        self.logits <= CHECK_TOLERANCE && self.maps.iter().all(|&(m, d)| d <= self.allowed(m))
    }

    /// The largest difference accepted for `method`'s maps: [`CHECK_TOLERANCE`], or twice its
    /// [`CheckReport::noise`] where that is larger (one nudge measures the noise; another
    /// rounding can move the map as far again).
    pub fn allowed(&self, method: Method) -> f32 {
        let noise = self.noise.iter().find(|(m, _)| *m == method).map_or(0.0, |&(_, n)| n);
        CHECK_TOLERANCE.max(2.0 * noise)
    }
}

impl fmt::Display for CheckReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "classes {:?}: logits max rel. diff {:.1e}", self.classes, self.logits)?;
        for (method, d) in &self.maps {
            write!(f, ", {} max |diff| {d:.1e}", cam_output(*method))?;
            if let Some((_, n)) = self.noise.iter().find(|(m, _)| m == method) {
                write!(
                    f,
                    " (ill-conditioned: `explain`'s own map moves {n:.1e} when the input moves by 1e-6)"
                )?;
            }
        }
        write!(f, " (tolerance {CHECK_TOLERANCE:.0e})")
    }
}

/// Runs the explainer `exported` once on a fixed pseudo-random batch (image 0 with class −1,
/// the others with their runner-up class) and compares logits and maps with
/// [`gradcam_core::explain`] on the source model through [`OnnxModel`]. A difference over
/// [`CHECK_TOLERANCE`] is [`ExportError::CheckFailed`].
pub fn check_explainer(exported: &Exported, threads: usize) -> Result<CheckReport, ExportError> {
    let batch = CHECK_BATCH;
    let (h, w) = exported.size;
    let input = Array4::from_shape_fn((batch, exported.channels, h, w), |(b, c, y, x)| {
        // A smooth pattern plus hash noise in roughly the range of normalised images.
        let seed = (b * 7919 + c * 104_729 + y * 613 + x * 31) as u32;
        let noise = (seed.wrapping_mul(2_654_435_761) >> 8) as f32 / (1u32 << 24) as f32;
        ((y as f32 / h as f32 - 0.5) * (c as f32 + 1.0) + (x as f32 / w as f32) * (b as f32 + 1.0)).sin()
            + noise
            - 0.5
    });

    let mut model = OnnxModel::load_with_threads(&exported.source, threads)?;
    let logits = model.forward(input.view())?;
    let classes: Vec<usize> = logits
        .outer_iter()
        .enumerate()
        .map(|(b, row)| {
            let mut order: Vec<usize> = (0..row.len()).collect();
            order.sort_by(|&i, &j| row[j].total_cmp(&row[i]).then(i.cmp(&j)));
            if b == 0 || order.len() < 2 {
                order[0]
            } else {
                order[1]
            }
        })
        .collect();
    let asked: Vec<i64> =
        classes.iter().enumerate().map(|(b, &c)| if b == 0 { -1 } else { c as i64 }).collect();

    let got = ExplainerSession::load(&exported.path, threads)?.run(input.view(), &asked)?;
    let target = Target::per_image(classes.clone());
    let target = if exported.softmax { target.softmax() } else { target };
    let layers: Vec<&str> = exported.layers.iter().map(|l| l.name.as_str()).collect();
    let options = CamOptions {
        layout: exported.layout_override,
        token_grid: exported.token_grid_override,
        ..CamOptions::default()
    };
    let explained = explain(&mut model, input.view(), &layers, &exported.methods, &target, &options)?;
    let mut report = CheckReport {
        classes,
        logits: max_diff(got.logits.view(), logits.view()) / max_abs(logits.view()).max(f32::MIN_POSITIVE),
        maps: explained
            .iter()
            .map(|e| {
                let diff = got
                    .map(&cam_output(e.method))
                    .map_or(f32::INFINITY, |m| max_diff(m.view(), e.maps.view()));
                (e.method, diff)
            })
            .collect(),
        noise: Vec::new(),
    };
    let unsure: Vec<&Explanation> = explained
        .iter()
        .filter(|e| report.maps.iter().any(|&(m, d)| m == e.method && d > CHECK_TOLERANCE && d.is_finite()))
        .collect();
    if !unsure.is_empty() {
        report.noise = map_noise(&mut model, input.view(), &layers, &unsure, &target, &options)?;
    }
    if !report.passed() {
        return Err(ExportError::CheckFailed { path: exported.path.clone(), report: report.to_string() });
    }
    Ok(report)
}

/// How far each of `explained`'s maps (of `input`) moves when every input pixel moves by one
/// part in a million, up or down by a fixed pseudo-random sign: the float noise of the map
/// itself, which [`CheckReport::allowed`] doubles.
pub fn map_noise(
    model: &mut dyn CamModel,
    input: ArrayView4<f32>,
    layers: &[&str],
    explained: &[&Explanation],
    target: &Target,
    options: &CamOptions,
) -> Result<Vec<(Method, f32)>, ExportError> {
    let nudged = Array4::from_shape_fn(input.dim(), |(b, c, y, x)| {
        let seed = (b * 7919 + c * 104_729 + y * 613 + x * 31 + 17) as u32;
        let sign = if seed.wrapping_mul(2_654_435_761) >> 31 == 0 { 1.0 } else { -1.0 };
        input[(b, c, y, x)] * (1.0 + sign * NOISE_STEP)
    });
    let methods: Vec<Method> = explained.iter().map(|e| e.method).collect();
    let moved = explain(model, nudged.view(), layers, &methods, target, options)?;
    Ok(moved
        .iter()
        .zip(explained)
        .map(|(after, before)| (before.method, max_diff(after.maps.view(), before.maps.view())))
        .collect())
}

fn max_diff<D: Dimension>(a: ArrayView<f32, D>, b: ArrayView<f32, D>) -> f32 {
    if a.shape() != b.shape() {
        return f32::INFINITY;
    }
    a.iter().zip(b.iter()).map(|(x, y)| (x - y).abs()).fold(0.0, |m, d| {
        if m.is_nan() || d.is_nan() {
            f32::NAN
        } else {
            m.max(d)
        }
    })
}

fn max_abs<D: Dimension>(a: ArrayView<f32, D>) -> f32 {
    a.iter().fold(0.0, |m, v| m.max(v.abs()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn report(diff: f32, noise: Option<f32>) -> CheckReport {
        CheckReport {
            classes: vec![0],
            logits: 0.0,
            maps: vec![(Method::GradCam, 1e-6), (Method::XGradCam, diff)],
            noise: noise.map(|n| (Method::XGradCam, n)).into_iter().collect(),
        }
    }

    /// A difference past the tolerance passes only within the method's own measured noise, and
    /// another method's noise does not count.
    #[test]
    fn only_a_methods_own_noise_widens_its_tolerance() {
        assert!(report(9e-6, None).passed());
        assert!(!report(1.6e-4, None).passed());
        assert!(report(1.6e-4, Some(2.6e-4)).passed());
        assert!(report(1.6e-4, Some(0.8e-4)).passed());
        assert!(!report(1.6e-4, Some(0.7e-4)).passed());
        let mut other = report(1.6e-4, None);
        other.noise = vec![(Method::GradCam, 1.0)];
        assert!(!other.passed());
        assert!(report(1.6e-4, Some(2.6e-4)).to_string().contains("ill-conditioned"));
        assert!(!report(9e-6, None).to_string().contains("ill-conditioned"));
    }
}
