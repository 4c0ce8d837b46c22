//! The comparison of one breadth model, opened in one backend, with PyTorch and pytorch-grad-cam:
//! every difference is collected, none stops the others.

use gradcam_core::{explain, CamModel, Method, Target};
use ndarray::{s, ArrayView4, Axis, Ix3};
use tests::{close, close_except_ties, fixture_name, layer_view, TIE_TOL, UPSAMPLED_TOL};

use crate::manifest::{Case, TargetReference};

/// Images ScoreCAM and AblationCAM explain: each costs one forward pass per channel and image,
/// and grad-cam computes every image on its own, so the first image tests the same code as all.
const HEAVY_IMAGES: usize = 1;

/// What went wrong, one line per finding.
pub type Failures = Vec<String>;

/// Compares `model` (the case's model in one backend) with the references:
/// - the layer is listed by [`CamModel::layers`];
/// - per target, a capture's logits, classes, activations to [`tests::TOL`], and gradients to [`tests::TOL`]
///   except the reference's kink ties (each tolerance raised to the reference's own fold noise
///   where that is larger, [`Case::tolerance`]);
/// - per target, every method grad-cam ran, through [`explain`]: the class explained, the layout
///   chosen, the per-layer map before upsampling to [`tests::TOL`] and the final map to
///   [`UPSAMPLED_TOL`] ([`TIE_TOL`] for a gradient method on an image whose gradient crossed a
///   tie). Top-1 through [`Target::top_one`], rank 2 through [`Target::rank`] (gradient methods)
///   and [`Target::per_image`] (ScoreCAM, AblationCAM, on the first [`HEAVY_IMAGES`] images).
///
/// `heavy`: whether to run ScoreCAM and AblationCAM (one forward pass per channel each) in this
/// column; the suite runs them in one column per backend and model.
pub fn check(case: &Case, model: &mut dyn CamModel, heavy: bool) -> Failures {
    let mut failures = Vec::new();
    let input = match case.input() {
        Ok(input) => input,
        Err(e) => return vec![e],
    };
    match model.layers() {
        Ok(layers) if layers.iter().any(|l| l.name == case.layer) => {}
        Ok(layers) => {
            let names: Vec<&str> = layers.iter().map(|l| l.name.as_str()).collect();
            let near = gradcam_core::near_matches(&case.layer, names.iter().copied());
            failures.push(format!(
                "layers: `{}` not listed ({} layers; near: {near:?})",
                case.layer,
                names.len()
            ));
        }
        Err(e) => failures.push(format!("layers: {e}")),
    }
    for reference in &case.targets {
        let flipped = check_capture(case, model, input.view(), reference, &mut failures);
        check_maps(case, model, input.view(), reference, &flipped, heavy, &mut failures);
    }
    failures
}

/// The target a user would give for `reference`'s classes.
fn user_target(reference: &TargetReference) -> Target {
    if reference.rank == 0 {
        Target::top_one()
    } else {
        Target::rank(reference.rank)
    }
}

/// Capture with `reference`'s target: returns per image whether a tied gradient element differed
/// (all false when the capture failed).
fn check_capture(
    case: &Case,
    model: &mut dyn CamModel,
    input: ArrayView4<f32>,
    reference: &TargetReference,
    failures: &mut Failures,
) -> Vec<bool> {
    let batch = input.len_of(Axis(0));
    let mut flipped = vec![false; batch];
    let what = format!("{} capture", reference.name);
    let target = user_target(reference);
    let capture = match model.capture(input, &case.layer, Some(&target)) {
        Ok(c) => c,
        Err(e) => {
            failures.push(format!("{what}: {e}"));
            return flipped;
        }
    };
    let mut compare = |name: &str, result: Result<(), String>| {
        if let Err(e) = result {
            failures.push(format!("{what} {name}: {e}"));
        }
    };
    if reference.rank == 0 {
        compare(
            "logits",
            case.npy::<f32>("logits.npy")
                .and_then(|w| close(capture.logits.view(), w.view(), case.tolerance("logits"))),
        );
        compare(
            "activations",
            case.npy::<f32>("activations.npy").and_then(|w| {
                close(layer_view(&capture.activation), w.view(), case.tolerance("activations"))
            }),
        );
    }
    match target.resolve(capture.logits.view()) {
        Ok(classes) if classes == reference.classes => {}
        Ok(classes) => compare("classes", Err(format!("{classes:?} != reference {:?}", reference.classes))),
        Err(e) => compare("classes", Err(e.to_string())),
    }
    let Some(gradient) = capture.gradient.as_ref() else {
        compare("gradients", Err("none returned".into()));
        return flipped;
    };
    let gradients = case.npy::<f32>(&reference.file("gradients.npy"));
    match gradients.and_then(|want| {
        let ties = case.npy::<bool>("ties.npy")?;
        close_except_ties(layer_view(gradient), want.view(), ties.view(), case.tolerance("gradients"))
    }) {
        Ok(f) => flipped = f,
        Err(e) => compare("gradients", Err(e)),
    }
    flipped
}

/// Every method of `reference` through [`explain`], against grad-cam's maps.
fn check_maps(
    case: &Case,
    model: &mut dyn CamModel,
    input: ArrayView4<f32>,
    reference: &TargetReference,
    flipped: &[bool],
    run_heavy: bool,
    failures: &mut Failures,
) {
    let (mut heavy, light): (Vec<Method>, Vec<Method>) =
        reference.methods.iter().partition(|m| m.needs_forward_passes());
    if !run_heavy {
        heavy.clear();
    }
    let heavy_images = HEAVY_IMAGES.min(input.len_of(Axis(0)));
    let runs = [
        (input, user_target(reference), light),
        (
            input.slice_move(s![..heavy_images, .., .., ..]),
            Target::per_image(reference.classes[..heavy_images].to_vec()),
            heavy,
        ),
    ];
    let options = gradcam_core::CamOptions { batch_size: case.ablation_batch_size, ..Default::default() };
    for (batch, target, methods) in runs {
        if methods.is_empty() {
            continue;
        }
        let names: Vec<&str> = methods.iter().map(|m| m.name()).collect();
        let explanations = match explain(model, batch, &[case.layer.as_str()], &methods, &target, &options) {
            Ok(e) => e,
            Err(e) => {
                failures.push(format!("{} explain {names:?}: {e}", reference.name));
                continue;
            }
        };
        let images = batch.len_of(Axis(0));
        for e in explanations {
            let what = format!("{} {}", reference.name, e.method);
            if e.classes != reference.classes[..images] {
                failures
                    .push(format!("{what}: classes {:?} != reference {:?}", e.classes, reference.classes));
            }
            let Some(layer) = e.layers.first() else {
                failures.push(format!("{what}: no per-layer map"));
                continue;
            };
            if layer.layout != case.layout {
                failures.push(format!(
                    "{what}: layout {} chosen, the reference is {}",
                    layer.layout, case.layout
                ));
            }
            let name = fixture_name(e.method);
            let pairs = [
                (
                    format!("scaled_{name}.npy"),
                    layer.scaled.view(),
                    case.tolerance(&format!("scaled.{name}")),
                    "before upsampling",
                ),
                (format!("cam_{name}.npy"), e.maps.view(), UPSAMPLED_TOL, "final map"),
            ];
            for (file, got, tol, stage) in pairs {
                let want = match case
                    .npy::<f32>(&reference.file(&file))
                    .and_then(|w| w.into_dimensionality::<Ix3>().map_err(|e| format!("{file}: {e}")))
                {
                    Ok(w) => w,
                    Err(err) => {
                        failures.push(format!("{what} {stage}: {err}"));
                        continue;
                    }
                };
                if got.dim().0 != images || want.dim().0 < images {
                    failures.push(format!("{what} {stage}: {} maps for {images} images", got.dim().0));
                    continue;
                }
                for (b, &tied) in flipped.iter().enumerate().take(images) {
                    let tol = if tied && e.method.needs_gradients() { TIE_TOL.max(tol) } else { tol };
                    if let Err(err) = close(got.index_axis(Axis(0), b), want.index_axis(Axis(0), b), tol) {
                        failures.push(format!("{what} {stage} image {b}: {err}"));
                    }
                }
            }
        }
    }
}
