//! The breadth suite: two dozen architectures people bring (torchvision and timm, traced
//! TorchScript and both ONNX exporters, fixed and dynamic batch) against pytorch-grad-cam in every
//! compiled-in backend. The models come from `tools/make_breadth_fixtures.py`
//! (`$GRADCAM_BREADTH`, else `$GRADCAM_FIXTURES/breadth`; `scripts/make-fixtures --breadth` makes
//! them). `scripts/test-breadth` builds them and runs this ignored test; `scripts/test-all` runs
//! it on one model at a time (`scripts/test-breadth --stream`), since the whole set does not fit
//! CI's disk.
//!
//! One test runs every model in every backend and reports every failure of the run at once, as a
//! matrix (model × backend and file) followed by each finding. `GRADCAM_BREADTH_MODELS=a,b` and
//! `GRADCAM_BREADTH_COLUMNS=tch,ort legacy` narrow a run (substrings of the keys and column
//! labels), for working on one backend. ScoreCAM and AblationCAM (one forward pass per channel)
//! run in the first column of each backend that opens a model, fixed-batch files first; the
//! gradient methods and EigenCAM run in every column. Two more columns export each exporter's
//! file as a `gradcam export` explainer and compare its maps the same way (`export.rs`).
//! `--nocapture` shows each cell as it ends.

mod backends;
mod compare;
mod export;
mod manifest;
mod matrix;

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::time::Instant;

use backends::{Slot, COLUMNS};
use manifest::Case;
use matrix::{Cell, Matrix};

/// The comma-separated filter in environment variable `name`, if set.
fn filter(name: &str) -> Option<Vec<String>> {
    let value = std::env::var(name).ok().filter(|v| !v.trim().is_empty())?;
    Some(value.split(',').map(|s| s.trim().to_string()).collect())
}

fn selected(filter: &Option<Vec<String>>, name: &str) -> bool {
    filter.as_ref().is_none_or(|f| f.iter().any(|part| name.contains(part.as_str())))
}

/// A panic's message.
fn panic_text(payload: Box<dyn std::any::Any + Send>) -> String {
    let text = payload
        .downcast_ref::<String>()
        .cloned()
        .or_else(|| payload.downcast_ref::<&str>().map(|s| s.to_string()))
        .unwrap_or_else(|| "(no message)".into());
    format!("panicked: {}", text.lines().next().unwrap_or_default())
}

/// One model in one column; `heavy`: whether ScoreCAM and AblationCAM run in it. Also says
/// whether the model opened (and so was compared).
fn run(case: &Case, column: backends::Column, heavy: bool) -> (Cell, bool) {
    if let Some(exporter) = column.exporter() {
        let cell = match catch_unwind(AssertUnwindSafe(|| export::run(case, exporter))) {
            Ok(cell) => cell,
            Err(payload) => Cell::Fail(vec![panic_text(payload)]),
        };
        return (cell, false);
    }
    let slot = match catch_unwind(AssertUnwindSafe(|| column.open(case))) {
        Ok(slot) => slot,
        Err(payload) => return (Cell::Fail(vec![format!("load {}", panic_text(payload))]), false),
    };
    match slot {
        Slot::Absent => (Cell::Absent, false),
        Slot::Skipped(e) => (Cell::Skipped(e), false),
        Slot::Open(Err(e)) => (Cell::Fail(vec![format!("load: {e}")]), false),
        Slot::Open(Ok(mut model)) => {
            let cell = match catch_unwind(AssertUnwindSafe(|| compare::check(case, model.as_mut(), heavy))) {
                Ok(failures) if failures.is_empty() => Cell::Pass,
                Ok(failures) => Cell::Fail(failures),
                Err(payload) => Cell::Fail(vec![panic_text(payload)]),
            };
            (cell, true)
        }
    }
}

#[test]
#[ignore = "needs the breadth fixtures: run scripts/test-breadth (scripts/test-all does)"]
fn every_model_in_every_backend_matches_pytorch_grad_cam() {
    suite(tests::breadth_dir());
}

/// Every model of the set in `dir` in every compiled-in backend, one matrix of the findings.
fn suite(dir: std::path::PathBuf) {
    let models = filter("GRADCAM_BREADTH_MODELS");
    let columns_filter = filter("GRADCAM_BREADTH_COLUMNS");
    let columns: Vec<_> = COLUMNS.iter().copied().filter(|c| selected(&columns_filter, c.label)).collect();
    assert!(
        columns.iter().any(|c| c.compiled()),
        "no backend compiled in (or selected): enable candle, tch or ort"
    );
    let cases: Vec<Case> = manifest::cases(&dir).into_iter().filter(|c| selected(&models, &c.key)).collect();
    assert!(!cases.is_empty(), "no breadth model selected in {}", dir.display());

    let mut matrix = Matrix::new(columns.iter().map(|c| c.label).collect());
    let start = Instant::now();
    for case in &cases {
        // ScoreCAM and AblationCAM cost one forward pass per channel: they run in the first column
        // of each backend that opens the model (a fixed-batch file first, see COLUMNS).
        let mut heavy_done: Vec<&str> = Vec::new();
        let mut cells = Vec::new();
        for &column in &columns {
            let t = Instant::now();
            let heavy = !heavy_done.contains(&column.backend());
            let (cell, opened) = run(case, column, heavy);
            if opened && heavy {
                heavy_done.push(column.backend());
            }
            if !matches!(cell, Cell::Absent) {
                // Progress of a long run (shown with --nocapture); the matrix comes at the end.
                eprintln!(
                    "breadth: {} / {}: {} in {:.1}s",
                    case.key,
                    column.label,
                    cell.summary(),
                    t.elapsed().as_secs_f64()
                );
                if let Cell::Fail(findings) = &cell {
                    for f in findings {
                        eprintln!("breadth:   {f}");
                    }
                }
            }
            cells.push(cell);
        }
        matrix.push(case.key.clone(), cells);
    }
    let (compared, failed) = matrix.counts();
    let report = matrix.render();
    println!("{report}");
    eprintln!("breadth: {compared} model x backend combinations in {:.0}s", start.elapsed().as_secs_f64());
    assert!(compared > 0, "nothing compared: no breadth model has a file for the compiled-in backends");
    assert!(failed == 0, "{failed} of {compared} model x backend combinations failed:\n{report}");
}
