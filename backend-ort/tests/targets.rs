//! The ORT backend on models that are not classifiers (one binary logit, a segmentation, an
//! embedding), from both torch exporters, against pytorch-grad-cam 1.5.7's targets for them
//! ([`tests::targets`]).
#![cfg(feature = "ort")]

use backend_ort::OnnxModel;
use tests::targets::{check_targets, target_model};

/// Both exports of `key`; ScoreCAM and AblationCAM (a forward pass per channel) on the legacy one.
fn check(key: &str) {
    let reference = target_model(key);
    for kind in ["legacy_onnx", "dynamo_onnx"] {
        let path = reference.file(kind);
        let mut model = OnnxModel::load(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        check_targets(&format!("ort {kind}"), &mut model, &reference, kind == "legacy_onnx");
    }
}

tests::target_tests!(check);
