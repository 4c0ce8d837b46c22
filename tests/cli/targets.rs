//! `--target binary|segmentation|similarity` end to end on the target fixtures' models (exported
//! to ONNX and TorchScript, and as timm state dicts for candle): the maps equal pytorch-grad-cam's, the report says the score instead
//! of a top-5 table, and every misuse is a message that says what to do.

use super::*;
use gradcam_core::Method;
use ndarray::{Array2, Axis};
use tests::targets::{concept_file, target_model, TargetModel};
#[cfg(feature = "ort")]
use tests::targets::{mask_png, targets_dir};
use tests::{assert_close, npy, UPSAMPLED_TOL};

/// `gradcam explain` on fixture model `m`'s own input batch (`.npy`, used as is) and its
/// reference layer, from its file of kind `kind`, with `--json` and `--npy-out maps.npy`; the
/// JSON and the final maps, in image order.
fn explain(
    dir: &Path,
    backend: &str,
    m: &TargetModel,
    kind: &str,
    extra: &[&str],
) -> (Value, Vec<Array2<f32>>) {
    let _ = std::fs::remove_dir_all(dir.join("gradcam-out"));
    let _ = std::fs::remove_file(dir.join("maps.npy"));
    let mut args: Vec<String> = ["explain", &m.input.display().to_string(), "--backend", backend, "--model"]
        .map(String::from)
        .to_vec();
    // The reference's layer: the automatic choice of the segmenter is its 1x1 classifier's output.
    args.extend([m.file(kind).display().to_string(), "--layer".into(), m.layer.clone()]);
    args.extend(["--json", "--pictures", "heatmap", "--npy-out", "maps.npy"].map(String::from));
    args.extend(extra.iter().map(|s| s.to_string()));
    let out = command(dir, &args).output().expect("the gradcam binary runs");
    assert_success(&out);
    let maps: ndarray::Array3<f32> = ndarray_npy::read_npy(dir.join("maps.npy")).unwrap();
    (json(&out), maps.outer_iter().map(|m| m.to_owned()).collect())
}

/// The JSON's images carry a target score line and no predictions; the maps equal grad-cam's.
fn check(
    label: &str,
    summary: &Value,
    maps: &[Array2<f32>],
    reference: &TargetModel,
    case: &str,
    kind: &str,
) {
    assert_eq!(summary["target"], kind, "{label}: {summary}");
    let case = reference.cases.iter().find(|c| c.case == case).expect("a case");
    let want = npy::<f32>(case.dir.join("cam_gradcam.npy"));
    let images = summary["images"].as_array().expect("images");
    assert_eq!(images.len(), maps.len());
    for (b, (image, map)) in images.iter().zip(maps).enumerate() {
        assert_eq!(image["predictions"], Value::Array(vec![]), "{label}: no top-5 for a non-classifier");
        assert!(image["target_score"].as_str().is_some_and(|s| !s.is_empty()), "{label}: {image}");
        assert_eq!(image["maps"][0]["class"], case.classes[b], "{label} image {b}");
        let tol = case.tolerance(Method::GradCam, false, b, UPSAMPLED_TOL);
        assert_close(&format!("{label} image {b}"), map.view(), want.index_axis(Axis(0), b), tol);
    }
}

#[cfg(feature = "ort")]
#[test]
fn binary_models_explain_the_predicted_class_or_the_other() {
    let dir = workdir("target-binary");
    for key in ["resnet18_binary", "vit_binary"] {
        let m = target_model(key);
        let (summary, maps) = explain(&dir, "ort", &m, "legacy_onnx", &["--target", "binary"]);
        check(key, &summary, &maps, &m, "predicted", "binary");
        let score = summary["images"][0]["target_score"].as_str().unwrap().to_owned();
        assert!(score.starts_with("binary logit"), "{score}");
        let (summary, maps) = explain(&dir, "ort", &m, "legacy_onnx", &["--target", "binary", "--top", "2"]);
        let opposite: Vec<Array2<f32>> = maps.iter().skip(1).step_by(2).cloned().collect();
        let case = m.cases.iter().find(|c| c.case == "opposite").unwrap();
        let want = npy::<f32>(case.dir.join("cam_gradcam.npy"));
        for (b, map) in opposite.iter().enumerate() {
            assert_close(
                &format!("{key} opposite {b}"),
                map.view(),
                want.index_axis(Axis(0), b),
                case.tolerance(Method::GradCam, false, b, UPSAMPLED_TOL),
            );
            assert_eq!(summary["images"][b]["maps"][1]["class"], case.classes[b]);
        }
    }
}

#[cfg(feature = "ort")]
#[test]
fn segmentation_with_a_mask_picture_and_without() {
    let dir = workdir("target-segmentation");
    let m = target_model("fcn");
    let mask = mask_png().display().to_string();
    let with_mask = ["--target", "segmentation", "--class", "1", "--mask", mask.as_str()];
    let (summary, maps) = explain(&dir, "ort", &m, "legacy_onnx", &with_mask);
    check("fcn mask", &summary, &maps, &m, "mask", "segmentation");
    let argmax = m.cases.iter().find(|c| c.case == "argmax").unwrap();
    let class = argmax.classes[0].to_string();
    let (summary, maps) =
        explain(&dir, "ort", &m, "legacy_onnx", &["--target", "segmentation", "--class", &class]);
    check("fcn argmax", &summary, &maps, &m, "argmax", "segmentation");
    let text = summary["images"][0]["target_score"].as_str().unwrap();
    assert!(text.contains("where it wins"), "{text}");
}

#[cfg(feature = "tch")]
#[test]
fn similarity_to_a_concept_vector_in_torchscript() {
    let dir = workdir("target-similarity");
    let m = target_model("resnet18_embed");
    let concept = concept_file("resnet18_embed").display().to_string();
    let (summary, maps) =
        explain(&dir, "tch", &m, "traced", &["--target", "similarity", "--concept", &concept]);
    check("embed", &summary, &maps, &m, "concept", "similarity");
}

/// What a candle user runs: a one-logit ViT and a headless (`num_classes=0`) ResNet-18 saved as
/// timm state dicts, `--arch` naming them.
#[cfg(feature = "candle")]
#[test]
fn candle_explains_one_logit_and_embedding_state_dicts() {
    let dir = workdir("target-candle");
    let m = target_model("vit_binary");
    let arch = m.arch.clone().expect("a timm arch");
    let (summary, maps) =
        explain(&dir, "candle", &m, "safetensors", &["--arch", &arch, "--target", "binary"]);
    check("candle vit_binary", &summary, &maps, &m, "predicted", "binary");
    let m = target_model("resnet18_embed");
    let arch = m.arch.clone().expect("a timm arch");
    let concept = concept_file("resnet18_embed").display().to_string();
    let similarity = ["--arch", &arch, "--target", "similarity", "--concept", &concept];
    let (summary, maps) = explain(&dir, "candle", &m, "safetensors", &similarity);
    check("candle resnet18_embed", &summary, &maps, &m, "concept", "similarity");
}

/// torchvision's FCN as a candle user saves it (`torch.save` of the state dict, as safetensors),
/// at `backbone.layer4` (the helper names the reference's layer; backend-candle's test checks that
/// it is the default), for the argmax region of a class.
#[cfg(feature = "candle")]
#[test]
fn candle_explains_a_torchvision_segmenter() {
    let dir = workdir("target-candle-fcn");
    let m = target_model("fcn_resnet50");
    let arch = m.arch.clone().expect("an arch");
    let argmax = m.cases.iter().find(|c| c.case == "argmax").unwrap();
    let class = argmax.classes[0].to_string();
    let args = ["--arch", &arch, "--target", "segmentation", "--class", &class];
    let (summary, maps) = explain(&dir, "candle", &m, "safetensors", &args);
    check("candle fcn_resnet50 argmax", &summary, &maps, &m, "argmax", "segmentation");
}

#[cfg(feature = "ort")]
#[test]
fn the_text_report_says_the_score_and_no_class_table() {
    let dir = workdir("target-text");
    let m = target_model("resnet18_binary");
    let args = [
        "explain",
        &chelsea(),
        "--backend",
        "ort",
        "--model",
        &m.file("legacy_onnx").display().to_string(),
        "--target",
        "binary",
    ];
    let out = gradcam(&dir, &args.map(String::from).iter().map(String::as_str).collect::<Vec<_>>());
    assert_success(&out);
    let text = stdout(&out);
    assert!(text.contains("binary logit"), "{text}");
    assert!(!text.contains('%'), "a top-5 table for a single-logit model:\n{text}");
}

#[cfg(feature = "ort")]
#[test]
fn misused_targets_say_what_to_do() {
    let dir = workdir("target-errors");
    let fixture = |name: &str| targets_dir().join(name).display().to_string();
    let (fcn, binary, embed) = (
        fixture("fcn.legacy.onnx"),
        fixture("resnet18_binary.legacy.onnx"),
        fixture("resnet18_embed.legacy.onnx"),
    );
    let classifier = tests::fixtures_dir().join("resnet18.legacy.onnx").display().to_string();
    let concept = concept_file("resnet18_embed").display().to_string();
    let mask = mask_png().display().to_string();
    let photo = chelsea();
    let cases: Vec<(Vec<&str>, &str)> = vec![
        (vec![&fcn, "--target", "segmentation"], "give it with --class"),
        (vec![&fcn], "segmentation target"),
        // The photo runs at 224x224, the mask is the fixture input's 128x96.
        (
            vec![&fcn, "--target", "segmentation", "--class", "1", "--mask", &mask],
            "give a mask of the output's size",
        ),
        (vec![&classifier, "--target", "binary"], "one logit"),
        (vec![&binary, "--target", "binary", "--method", "finercam"], "classifiers only"),
        (vec![&binary, "--target", "binary", "--softmax"], "--softmax is for classifiers"),
        (vec![&embed, "--target", "similarity"], "--concept VECTOR.npy"),
        (vec![&embed, "--target", "similarity", "--concept", &concept, "--class", "3"], "leave out --class"),
        (vec![&binary, "--concept", &concept], "--concept is for --target similarity"),
        (vec![&embed, "--target", "similarity", "--concept", &photo], "cannot use"),
        (vec![&embed, "--target", "similarity", "--concept", "missing.npy"], "concept vector not found"),
        (vec![&fcn, "--target", "segmentation", "--class", "1", "--mask", "missing.png"], "mask not found"),
    ];
    for (extra, message) in cases {
        let mut args = vec!["explain", photo.as_str(), "--backend", "ort", "--model"];
        args.extend(extra);
        let out = gradcam(&dir, &args);
        assert_failure(&out, 1, message, &dir, &[]);
    }
}

#[cfg(feature = "ort")]
#[test]
fn method_auto_ranks_only_methods_that_explain_the_target() {
    let dir = workdir("target-auto");
    let m = target_model("resnet18_binary");
    let (summary, _) = explain(&dir, "ort", &m, "legacy_onnx", &["--target", "binary", "--method", "auto"]);
    let chosen = summary["method_chosen_automatically"]["method"].as_str().expect("a chosen method");
    assert_ne!(chosen, "finercam");
}

#[cfg(feature = "ort")]
#[test]
fn the_concept_is_read_before_the_model_loads() {
    let dir = workdir("target-concept-first");
    let args = [
        "explain",
        "x.png",
        "--backend",
        "ort",
        "--model",
        "missing.onnx",
        "--target",
        "similarity",
        "--concept",
        "missing.npy",
    ];
    let out = gradcam(&dir, &args);
    assert_failure(&out, 1, "concept vector not found", &dir, &[]);
}
