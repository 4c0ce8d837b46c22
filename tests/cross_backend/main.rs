//! The same model in every compiled-in backend (candle safetensors, tch traced/scripted
//! TorchScript, ort legacy/dynamo ONNX) gives the same CAM for every method, and each agrees with
//! pytorch-grad-cam's map in the fixtures. Comparing against the PyTorch reference too means the
//! test checks something even when only one backend is compiled in.
//!
//! ScoreCAM and AblationCAM run one extra forward pass per channel: they run on the first layer
//! of each model and on the first image only, which keeps the suite to minutes on two cores
//! without weakening the comparison (every method still meets every backend).

use gradcam_core::{CamModel, Method, Target};
use ndarray::{s, Array3};
use tests::{close, fixture_name, input, reference_options, references, require, TIE_TOL, TOL};

/// One fixture model opened in one backend, e.g. `tch traced`.
struct Opened {
    label: String,
    model: Box<dyn CamModel>,
}

/// Fixture model `key` in every format each compiled-in backend reads: candle (safetensors),
/// tch (traced and, where timm allows, scripted TorchScript), ort (legacy and dynamo ONNX).
fn open_all(key: &str, arch: &str) -> Vec<Opened> {
    #[allow(unused_mut)]
    let mut opened: Vec<Opened> = Vec::new();
    #[cfg(feature = "candle")]
    {
        let path = require(format!("{key}.safetensors"));
        let m = backend_candle::CandleModel::from_safetensors(&path, arch)
            .unwrap_or_else(|e| panic!("candle cannot load {}: {e}", path.display()));
        opened.push(Opened { label: "candle".into(), model: Box::new(m) });
    }
    #[cfg(feature = "tch")]
    {
        for kind in ["traced", "scripted"] {
            let name = format!("{key}.{kind}.pt");
            // timm cannot script every model; the fixture script then writes only the trace.
            if kind == "scripted" && !tests::fixtures_dir().join(&name).exists() {
                continue;
            }
            let path = require(name);
            let m = backend_tch::TorchScriptModel::load(&path, backend_tch::DeviceChoice::Cpu)
                .unwrap_or_else(|e| panic!("tch cannot load {}: {e}", path.display()));
            opened.push(Opened { label: format!("tch {kind}"), model: Box::new(m) });
        }
    }
    #[cfg(feature = "ort")]
    {
        for kind in ["legacy", "dynamo"] {
            let path = require(format!("{key}.{kind}.onnx"));
            let m = backend_ort::OnnxModel::load(&path)
                .unwrap_or_else(|e| panic!("ort cannot load {}: {e}", path.display()));
            opened.push(Opened { label: format!("ort {kind}"), model: Box::new(m) });
        }
    }
    let _ = arch;
    opened
}

fn check(key: &str, arch: &str) {
    let input = input();
    let mut opened = open_all(key, arch);
    assert!(!opened.is_empty(), "no backend compiled in: enable the candle, tch or ort feature");
    let options = reference_options();
    let mut failures = Vec::new();
    let mut compared = 0;
    for reference in &references(key) {
        let layer = reference.layer.as_str();
        let classes = reference.classes();
        // The methods grad-cam was run with at this layer (ScoreCAM and AblationCAM at one layer
        // per model only: they cost a forward pass per channel).
        let (heavy, light): (Vec<Method>, Vec<Method>) =
            reference.methods.iter().copied().partition(|m| m.needs_forward_passes());

        // (backend, method) -> maps; heavy methods hold the first image only.
        let mut maps: Vec<(String, Method, Array3<f32>)> = Vec::new();
        for o in &mut opened {
            let runs = [
                (input.view(), &classes[..], &light),
                (input.slice(s![0..1, .., .., ..]), &classes[..1], &heavy),
            ];
            for (batch, classes, methods) in runs {
                if methods.is_empty() {
                    continue;
                }
                let target = Target::per_image(classes.to_vec());
                let explanations =
                    gradcam_core::explain(o.model.as_mut(), batch, &[layer], methods, &target, &options)
                        .unwrap_or_else(|e| panic!("{} {key} {layer}: {e}", o.label));
                for e in explanations {
                    maps.push((o.label.clone(), e.method, e.maps));
                }
            }
        }

        // A gradient method on an image whose reference gradient has kink ties may differ by a
        // flipped mask (tests::assert_close_except_ties); everything else must meet TOL.
        let tied = reference.images_with_ties();
        let tolerance = |m: Method, b: usize| if tied[b] && m.needs_gradients() { TIE_TOL } else { TOL };
        let mut compare = |what: String, method: Method, a: &Array3<f32>, b: &Array3<f32>| {
            for (i, (a, b)) in a.outer_iter().zip(b.outer_iter()).enumerate() {
                compared += 1;
                if let Err(e) = close(a, b, tolerance(method, i)) {
                    failures.push(format!("{what} image {i}: {e}"));
                }
            }
        };
        for (label, method, got) in &maps {
            let want = reference.cam(*method).into_dimensionality::<ndarray::Ix3>().expect("(B, H, W)");
            let want = want.slice(s![0..got.dim().0, .., ..]).to_owned();
            let what =
                format!("{key} {layer} {method}: {label} vs pytorch-grad-cam ({})", fixture_name(*method));
            compare(what, *method, got, &want);
        }
        for (i, (label_a, method, a)) in maps.iter().enumerate() {
            for (label_b, _, b) in maps[i + 1..].iter().filter(|(_, m, _)| m == method) {
                compare(format!("{key} {layer} {method}: {label_a} vs {label_b}"), *method, a, b);
            }
        }
    }
    assert!(compared > 0, "nothing was compared");
    assert!(
        failures.is_empty(),
        "{} of {compared} comparisons failed:\n{}",
        failures.len(),
        failures.join("\n")
    );
}

#[test]
fn resnet18_backends_agree() {
    check("resnet18", "resnet18");
}

#[test]
fn vit_tiny_backends_agree() {
    check("vit_tiny", "vit_tiny_patch16_224");
}

#[test]
fn lite0_backends_agree() {
    check("lite0", "tf_efficientnet_lite0");
}

/// Guided backprop and guided Grad-CAM where no guided fixture was made: the target fixtures'
/// FCN-style segmenter (a non-square 96×128 input, each case's segmentation target), one-logit
/// ResNet-18 (its runner-up class, the negated logit) and ViT embedding (cosine to a concept),
/// in every TorchScript and ONNX file of each: every file's pixel maps agree with every other's.
#[cfg(any(feature = "tch", feature = "ort"))]
#[test]
fn guided_methods_agree_on_models_that_are_not_classifiers() {
    use tests::targets::target_model;
    let methods = [Method::GuidedBackprop, Method::GuidedGradCam];
    let mut compared = 0;
    for (key, case) in [("fcn", 0), ("resnet18_binary", 1), ("vit_embed", 0)] {
        let m = target_model(key);
        let input = tests::npy::<f32>(&m.input).into_dimensionality::<ndarray::Ix4>().expect("(B, 3, H, W)");
        let target = &m.cases[case].target;
        #[allow(unused_mut)]
        let mut opened: Vec<(&str, Box<dyn CamModel>)> = Vec::new();
        #[cfg(feature = "tch")]
        opened.push((
            "tch traced",
            Box::new(
                backend_tch::TorchScriptModel::load(&m.file("traced"), backend_tch::DeviceChoice::Cpu)
                    .unwrap(),
            ),
        ));
        #[cfg(feature = "ort")]
        for (label, kind) in [("ort legacy", "legacy_onnx"), ("ort dynamo", "dynamo_onnx")] {
            opened.push((label, Box::new(backend_ort::OnnxModel::load(&m.file(kind)).unwrap())));
        }
        let mut pixels = Vec::new();
        for (label, model) in &mut opened {
            let out = gradcam_core::explain(
                model.as_mut(),
                input.view(),
                &[&m.layer],
                &methods,
                target,
                &reference_options(),
            )
            .unwrap_or_else(|e| panic!("{label} {key}: {e}"));
            for e in out {
                let p = e.pixels.unwrap_or_else(|| panic!("{label} {key} {}: no pixels", e.method));
                assert!(
                    p.iter().all(|v| v.is_finite()) && p.iter().any(|v| *v != 0.0),
                    "{label} {key} {}",
                    e.method
                );
                pixels.push((*label, e.method, p));
            }
        }
        for (i, (a_label, method, a)) in pixels.iter().enumerate() {
            for (b_label, _, b) in pixels[i + 1..].iter().filter(|(_, m, _)| m == method) {
                compared += 1;
                if let Err(e) = close(a.view(), b.view(), TOL) {
                    panic!("{key} {method}: {a_label} vs {b_label}: {e}");
                }
            }
        }
    }
    #[cfg(feature = "ort")]
    assert!(compared > 0, "nothing was compared");
    let _ = compared;
}
