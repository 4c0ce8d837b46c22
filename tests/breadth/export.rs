//! The export columns: a model's ONNX file made into an explainer (`gradcam export`'s library
//! call), run in plain ONNX Runtime with the classes a user would feed it, its maps against
//! pytorch-grad-cam's; then what `gradcam export --check` runs.

use std::path::PathBuf;

use crate::compare::Failures;
use crate::manifest::Case;
use crate::matrix::Cell;

/// The file an export column exports for `exporter` (`legacy` or `dynamo`): the fixed-batch one
/// when torch made it (the explainer then runs the source's graph in parts, the harder case),
/// else the dynamic one. `Err`: torch made neither, with its reason.
fn source(case: &Case, exporter: &str) -> Result<Option<PathBuf>, String> {
    let kinds = [format!("{exporter}_fixed"), format!("{exporter}_dynamic")];
    if let Some(path) = kinds.iter().find_map(|kind| case.file(kind)) {
        return Ok(Some(path));
    }
    match kinds.iter().find_map(|kind| case.skipped(kind)) {
        Some(reason) => Err(reason),
        None => Ok(None),
    }
}

/// One model in the export column of `exporter`.
pub fn run(case: &Case, exporter: &str) -> Cell {
    match source(case, exporter) {
        Err(reason) => Cell::Skipped(reason),
        Ok(None) => Cell::Absent,
        Ok(Some(path)) => match check(case, exporter, &path) {
            None => Cell::Absent,
            Some(failures) if failures.is_empty() => Cell::Pass,
            Some(failures) => Cell::Fail(failures),
        },
    }
}

#[cfg(not(feature = "ort"))]
fn check(_: &Case, _: &str, _: &std::path::Path) -> Option<Failures> {
    None
}

/// Exports `source` with every exportable method the references have, at the case's layer and
/// input size, runs it on the reference images plus the first one again (a batch the export
/// never saw: a fixed-batch source's padded last part, a dynamic graph's sizes) and compares:
/// - the chosen layout with the reference's;
/// - per target (top-1 asked as class −1, rank 2 by its classes), the logits and top-1 classes,
///   and every map with grad-cam's final map to [`UPSAMPLED_TOL`] ([`TIE_TOL`] for an image
///   whose gradient has kink ties: the explainer has no gradient output to say whether one
///   flipped).
///
/// Then [`check_explainer`], what `--check` runs: the explainer against `explain` on the source,
/// to the export's 1e-5, on 3 synthetic images.
#[cfg(feature = "ort")]
fn check(case: &Case, exporter: &str, source: &std::path::Path) -> Option<Failures> {
    use backend_ort::export::{
        cam_output, check_explainer, export_explainer, ExplainerSession, ExportOptions, EXPORTABLE_METHODS,
    };
    use gradcam_core::Method;
    use ndarray::Axis;
    use tests::{close, fixture_name, TIE_TOL, UPSAMPLED_TOL};

    let methods: Vec<Method> = EXPORTABLE_METHODS
        .into_iter()
        .filter(|m| case.targets.iter().any(|t| t.methods.contains(m)))
        .collect();
    if methods.is_empty() {
        return None;
    }
    let mut failures = Vec::new();
    let input = match case.input() {
        Ok(input) => input,
        Err(e) => return Some(vec![e]),
    };
    let dir = tests::scratch_dir(
        env!("CARGO_TARGET_TMPDIR"),
        "breadth-export",
        &format!("{}.{exporter}", case.key),
    );
    let options = ExportOptions {
        layers: vec![case.layer.clone()],
        methods: methods.clone(),
        size: Some(case.input_hw()),
        ..ExportOptions::default()
    };
    let exported = match export_explainer(source, &dir.join("explainer.onnx"), &options) {
        Ok(e) => e,
        Err(e) => return Some(vec![format!("export: {e}")]),
    };
    if let Some(layer) = exported.layers.iter().find(|l| l.layout != case.layout) {
        failures.push(format!("layout {} chosen, the reference is {}", layer.layout, case.layout));
    }
    let tied: Vec<bool> = match case.npy::<bool>("ties.npy") {
        Ok(ties) => ties.outer_iter().map(|t| t.iter().any(|&x| x)).collect(),
        Err(e) => return Some(vec![e]),
    };
    // The reference batch and its first image again.
    let batch = input.len_of(Axis(0));
    let input = ndarray::concatenate(Axis(0), &[input.view(), input.slice(ndarray::s![..1, .., .., ..])])
        .expect("images of one size");
    let reference_image = |b: usize| b % batch;
    let mut session = match ExplainerSession::load(&exported.path, 0) {
        Ok(s) => s,
        Err(e) => return Some(vec![format!("load the explainer: {e}")]),
    };
    for reference in &case.targets {
        let images = input.len_of(Axis(0));
        let asked: Vec<i64> = match reference.rank {
            0 => vec![-1; images],
            _ => (0..images).map(|b| reference.classes[reference_image(b)] as i64).collect(),
        };
        let out = match session.run(input.view(), &asked) {
            Ok(out) => out,
            Err(e) => {
                failures.push(format!("{} run: {e}", reference.name));
                continue;
            }
        };
        if reference.rank == 0 {
            let top: Vec<usize> = out
                .logits
                .outer_iter()
                .map(|row| (0..row.len()).fold(0, |best, i| if row[i] > row[best] { i } else { best }))
                .collect();
            let want: Vec<usize> = (0..images).map(|b| reference.classes[reference_image(b)]).collect();
            if top != want {
                failures.push(format!("top-1 classes {top:?} != reference {want:?}"));
            }
            match case.npy::<f32>("logits.npy") {
                Ok(logits) => {
                    for b in 0..images {
                        let got = out.logits.index_axis(Axis(0), b);
                        let want = logits.index_axis(Axis(0), reference_image(b));
                        if let Err(e) = close(got, want, case.tolerance("logits")) {
                            failures.push(format!("logits image {b}: {e}"));
                        }
                    }
                }
                Err(e) => failures.push(format!("logits: {e}")),
            }
        }
        for &method in reference.methods.iter().filter(|m| methods.contains(m)) {
            let what = format!("{} {method}", reference.name);
            let Some(got) = out.map(&cam_output(method)) else {
                failures.push(format!("{what}: no output {}", cam_output(method)));
                continue;
            };
            let file = reference.file(&format!("cam_{}.npy", fixture_name(method)));
            let want = match case.npy::<f32>(&file) {
                Ok(w) => w,
                Err(e) => {
                    failures.push(format!("{what}: {e}"));
                    continue;
                }
            };
            if got.len_of(Axis(0)) != images || want.len_of(Axis(0)) != batch {
                failures.push(format!("{what}: {} maps for {images} images", got.len_of(Axis(0))));
                continue;
            }
            for b in 0..images {
                let r = reference_image(b);
                let tol = if tied[r] { TIE_TOL } else { UPSAMPLED_TOL };
                if let Err(e) = close(got.index_axis(Axis(0), b), want.index_axis(Axis(0), r), tol) {
                    failures.push(format!("{what} image {b}: {e}"));
                }
            }
        }
    }
    if let Err(e) = check_explainer(&exported, 0) {
        failures.push(format!("--check: {e}"));
    }
    Some(failures)
}
