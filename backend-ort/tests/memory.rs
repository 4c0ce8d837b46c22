//! ONNX Runtime's tensors share one CPU arena with a limit (`GRADCAM_ORT_MEMORY`, else three
//! quarters of the machine's memory): a run that would need more is a typed error, not the OOM
//! killer. A test binary of its own, since the limit is set once per process.
#![cfg(feature = "ort")]

use backend_ort::OnnxModel;
use gradcam_core::{CamModel, Target};
use tests::{input, require};

/// With a 200 MB limit, resnet18 explains the two fixture images, and 64 copies of them (about
/// 1 GB of activations) fail with an error that names the memory; the model works again after.
#[test]
fn a_run_past_the_memory_limit_is_an_error() {
    // Edition 2021: set_var is safe; this binary's only test sets it before ONNX Runtime starts.
    std::env::set_var("GRADCAM_ORT_MEMORY", (200usize << 20).to_string());
    let path = require("resnet18.dynamo.onnx");
    let mut model = OnnxModel::load(&path).unwrap_or_else(|e| panic!("{e}"));
    let small = input();
    let target = Target::top_one();
    model.capture(small.view(), "layer4", Some(&target)).expect("two images fit in 200 MB");
    let big = ndarray::concatenate(ndarray::Axis(0), &vec![small.view(); 32]).expect("64 images");
    let err = model.capture(big.view(), "layer4", Some(&target)).expect_err("64 images do not fit");
    let message = err.to_string();
    assert!(message.contains("memory"), "{message}");
    model.capture(small.view(), "layer4", Some(&target)).expect("the model works after the error");
}
