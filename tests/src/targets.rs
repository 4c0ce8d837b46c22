//! The target fixtures (`tools/make_target_fixtures.py`, in `<fixtures>/targets`): models that are
//! not classifiers (one binary logit, a segmentation, an embedding) explained by pytorch-grad-cam
//! 1.5.7 with its `BinaryClassifierOutputTarget`, `SemanticSegmentationTarget` and
//! `SimilarityToConceptTarget`, and [`check_targets`], their comparison in one backend.

use std::collections::HashMap;
use std::path::PathBuf;

use gradcam_core::{evaluate, explain, CamModel, CamOptions, Classes, Method, Metric, MetricOptions, Target};
use ndarray::{Array1, Axis, Ix1, Ix2, Ix4};
use serde_json::Value;

use crate::{
    assert_close, fixtures_dir, method_from_fixture_name, npy, read_json, TIE_TOL, TOL, UPSAMPLED_TOL,
};

/// The target fixtures folder, `<fixtures>/targets`.
pub fn targets_dir() -> PathBuf {
    let dir = fixtures_dir().join("targets");
    assert!(
        dir.join("manifest.json").is_file(),
        "target fixtures missing in {}: run scripts/make-fixtures (or scripts/test-all)",
        dir.display()
    );
    dir
}

/// The target fixtures' manifest.
pub fn targets_manifest() -> Value {
    read_json(&targets_dir().join("manifest.json")).unwrap_or_else(|e| panic!("{e}"))
}

/// One explained case: a model, a target, and the folder of grad-cam's maps for it.
#[derive(Clone, Debug)]
pub struct TargetCase {
    /// The model's key (`fcn`, `vit_binary`, ...).
    pub model: String,
    /// The case's name (`predicted`, `mask`, `concept`, ...).
    pub case: String,
    /// The target a user gives for it (top-1 / runner-up for binary models, a class and maybe a
    /// mask for segmentation, a concept vector for similarity).
    pub target: Target,
    /// The classes grad-cam explained, per image.
    pub classes: Vec<usize>,
    /// grad-cam's target score per image.
    pub scores: Vec<f32>,
    /// Per image: its gradient depends on a ReLU within float noise of its kink, or its argmax
    /// region has a pixel within float noise of another class (the generator's `ties`).
    pub ties: Vec<bool>,
    /// Per gradient method, where an image has a tie: how far grad-cam's maps move, relative to
    /// their largest magnitude, when the same maps are computed in float64 or from inputs nudged
    /// by 1e-6, the largest of these (the generator's `tie_noise`), per image
    /// `[before upsampling, final]`.
    pub tie_noise: HashMap<Method, Vec<[f32; 2]>>,
    /// The methods grad-cam ran for it.
    pub methods: Vec<Method>,
    /// pytorch-grad-cam's metrics of its Grad-CAM maps (ROAD noise 0), per metric and image,
    /// where the fixtures hold them.
    pub metrics: Vec<(Metric, Vec<f32>)>,
    /// The folder of `cam_<method>.npy` / `raw_<method>.npy`.
    pub dir: PathBuf,
}

impl TargetCase {
    /// The tolerance for `method`'s map of image `image` (`raw`: before upsampling, else the
    /// final map): `tol`, or where the image has a tie that another correct implementation may
    /// flip (the kink rule of the model fixtures), [`TIE_TOL`] or twice grad-cam's own movement
    /// under float noise ([`TargetCase::tie_noise`]), whichever is larger.
    pub fn tolerance(&self, method: Method, raw: bool, image: usize, tol: f32) -> f32 {
        if !self.ties[image] {
            return tol;
        }
        let noise = self.tie_noise.get(&method).map_or(0.0, |n| n[image][usize::from(!raw)]);
        TIE_TOL.max(tol).max(2.0 * noise)
    }
}

/// A model file of the target fixtures: its key, the layer explained, its input, its per-image
/// output shape, its timm architecture (plain timm models, which also come as a state dict), and
/// its cases.
#[derive(Clone, Debug)]
pub struct TargetModel {
    pub key: String,
    pub arch: Option<String>,
    pub layer: String,
    pub input: PathBuf,
    pub output_shape: Vec<usize>,
    pub files: Value,
    pub cases: Vec<TargetCase>,
}

impl TargetModel {
    /// The path of the model's file of kind `kind` (`traced`, `legacy_onnx`, `dynamo_onnx`,
    /// `safetensors`).
    pub fn file(&self, kind: &str) -> PathBuf {
        targets_dir()
            .join(self.files[kind].as_str().unwrap_or_else(|| panic!("{}: no {kind} file", self.key)))
    }
}

/// Every model of the target fixtures, in manifest order.
pub fn target_models() -> Vec<TargetModel> {
    let dir = targets_dir();
    let manifest = targets_manifest();
    let models = manifest["models"].as_object().expect("the target manifest lists models");
    models
        .iter()
        .map(|(key, spec)| {
            let cases = spec["cases"].as_object().expect("cases").iter().map(|(case, c)| {
                let classes: Vec<usize> = c["classes"]
                    .as_array()
                    .expect("classes")
                    .iter()
                    .map(|v| v.as_u64().expect("a class") as usize)
                    .collect();
                let target = match c["target"].as_str().expect("a target kind") {
                    "binary" if case == "predicted" => Target::binary(Classes::TopOne),
                    "binary" => Target::binary(Classes::Rank(1)),
                    "segmentation" => {
                        let mask = c["mask"].as_str().map(|m| {
                            npy::<f32>(dir.join(m)).into_dimensionality::<Ix2>().expect("a (H, W) mask")
                        });
                        Target::segmentation(classes[0], mask)
                    }
                    "similarity" => {
                        let concept = npy::<f32>(dir.join(c["concept"].as_str().expect("a concept file")));
                        Target::similarity(concept.into_dimensionality::<Ix1>().expect("a vector"))
                    }
                    other => panic!("unknown target kind {other}"),
                };
                let scores = c["scores"]
                    .as_array()
                    .expect("scores")
                    .iter()
                    .map(|v| v.as_f64().expect("a score") as f32)
                    .collect();
                let methods = methods_of(&c["methods"]);
                let ties = c["ties"]
                    .as_array()
                    .expect("ties")
                    .iter()
                    .map(|v| v.as_bool().expect("a tie flag"))
                    .collect();
                let tie_noise = c["tie_noise"]
                    .as_object()
                    .map(|m| {
                        m.iter()
                            .map(|(name, n)| {
                                let method = method_from_fixture_name(name)
                                    .unwrap_or_else(|| panic!("unknown method {name}"));
                                let stage = |s: &str| -> Vec<f32> {
                                    let values = n[s].as_array().expect("tie noise per image").iter();
                                    values.map(|v| v.as_f64().expect("a number") as f32).collect()
                                };
                                let per_image =
                                    stage("raw").into_iter().zip(stage("cam")).map(|(r, c)| [r, c]);
                                (method, per_image.collect())
                            })
                            .collect()
                    })
                    .unwrap_or_default();
                let metrics = c["metrics"]
                    .as_object()
                    .map(|m| {
                        m.iter()
                            .map(|(name, values)| {
                                let metric = name.parse::<Metric>().unwrap_or_else(|e| panic!("{name}: {e}"));
                                let values = values.as_array().expect("values").iter();
                                (metric, values.map(|v| v.as_f64().expect("a value") as f32).collect())
                            })
                            .collect()
                    })
                    .unwrap_or_default();
                TargetCase {
                    model: key.clone(),
                    case: case.clone(),
                    target,
                    classes,
                    scores,
                    ties,
                    tie_noise,
                    methods,
                    metrics,
                    dir: dir.join(key).join(case),
                }
            });
            TargetModel {
                key: key.clone(),
                arch: spec["arch"].as_str().map(String::from),
                layer: spec["layer"].as_str().expect("a layer").to_string(),
                input: dir.join(spec["input"].as_str().expect("an input file")),
                output_shape: spec["output_shape"]
                    .as_array()
                    .expect("an output shape")
                    .iter()
                    .map(|d| d.as_u64().expect("a dim") as usize)
                    .collect(),
                files: spec["files"].clone(),
                cases: cases.collect(),
            }
        })
        .collect()
}

/// The target fixtures' model `key`.
pub fn target_model(key: &str) -> TargetModel {
    target_models()
        .into_iter()
        .find(|m| m.key == key)
        .unwrap_or_else(|| panic!("no target fixture model `{key}`"))
}

/// The methods a manifest list names.
fn methods_of(list: &Value) -> Vec<Method> {
    list.as_array()
        .expect("methods")
        .iter()
        .map(|m| {
            let name = m.as_str().expect("a method name");
            method_from_fixture_name(name).unwrap_or_else(|| panic!("unknown method {name}"))
        })
        .collect()
}

/// Compares one model of the target fixtures, opened in a backend as `model` (`label` names the
/// backend and file in messages), with pytorch-grad-cam for every case: the per-image output
/// shape, the classes core resolves, the target scores (to [`TOL`]), each method's map at the
/// layer before upsampling (to [`TOL`]) and its final map (to [`UPSAMPLED_TOL`]); where the
/// fixtures hold them, the six metrics of grad-cam's own Grad-CAM maps with the target as
/// explained (ROAD noise 0, to [`TOL`] of the target scores' scale).
/// `gradient_free`: also ScoreCAM and AblationCAM where grad-cam ran them (a forward pass per
/// channel; the suites run them on one file per backend).
pub fn check_targets(label: &str, model: &mut dyn CamModel, reference: &TargetModel, gradient_free: bool) {
    let input = npy::<f32>(&reference.input).into_dimensionality::<Ix4>().expect("a (B, 3, H, W) input");
    let manifest = targets_manifest();
    let options = CamOptions {
        batch_size: manifest["ablation_batch_size"].as_u64().map_or(32, |b| b as usize),
        ..CamOptions::default()
    };
    for case in &reference.cases {
        let what = format!("{label} {} {}", reference.key, case.case);
        let methods: Vec<Method> =
            case.methods.iter().copied().filter(|m| gradient_free || m.needs_gradients()).collect();
        let explanations =
            explain(model, input.view(), &[reference.layer.as_str()], &methods, &case.target, &options)
                .unwrap_or_else(|e| panic!("{what}: explain: {e}"));
        for e in explanations {
            let what = format!("{what} {}", e.method);
            assert_eq!(e.output_shape, reference.output_shape, "{what}: output shape");
            assert_eq!(e.classes, case.classes, "{what}: classes");
            let scores =
                e.target.scores(e.logits.view(), &e.classes).unwrap_or_else(|err| panic!("{what}: {err}"));
            assert_close(
                &format!("{what} scores"),
                Array1::from(scores).view(),
                Array1::from(case.scores.clone()).view(),
                TOL,
            );
            let name = crate::fixture_name(e.method);
            let raw = npy::<f32>(case.dir.join(format!("raw_{name}.npy")));
            let cam = npy::<f32>(case.dir.join(format!("cam_{name}.npy")));
            for (b, got) in e.layers[0].raw.outer_iter().enumerate() {
                let want = raw.index_axis(Axis(0), b);
                assert_close(
                    &format!("{what} raw image {b}"),
                    got,
                    want,
                    case.tolerance(e.method, true, b, TOL),
                );
            }
            for (b, got) in e.maps.outer_iter().enumerate() {
                let want = cam.index_axis(Axis(0), b);
                assert_close(
                    &format!("{what} image {b}"),
                    got,
                    want,
                    case.tolerance(e.method, false, b, UPSAMPLED_TOL),
                );
            }
            if e.method != Method::GradCam || case.metrics.is_empty() {
                continue;
            }
            // grad-cam's own maps, so that ROAD removes exactly the pixels it removed.
            let maps = cam.view().into_dimensionality::<ndarray::Ix3>().expect("(B, H, W) maps");
            let metrics: Vec<Metric> = case.metrics.iter().map(|(m, _)| *m).collect();
            let options = MetricOptions { road_noise: 0.0, seed: 0 };
            let values = evaluate(model, input.view(), maps, &e.target, &e.classes, &metrics, &options)
                .unwrap_or_else(|err| panic!("{what}: evaluate: {err}"));
            // Metrics are differences of target scores: "close" is relative to the scores' scale
            // (a one-logit ViT's score moves by 4e-3 when ROAD removes pixels; 5e-7 is float noise).
            let scale = case.scores.iter().fold(0f32, |m, v| m.max(v.abs()));
            for (got, (metric, want)) in values.iter().zip(&case.metrics) {
                for (b, (g, w)) in got.values.iter().zip(want).enumerate() {
                    let limit = TOL * scale.max(w.abs());
                    assert!(
                        (g - w).abs() <= limit,
                        "{what} {metric} image {b}: {g} vs grad-cam's {w} (> {limit:e})"
                    );
                }
                assert_eq!(got.values.len(), want.len(), "{what} {metric}: images");
            }
        }
    }
}

/// The mask of the segmentation fixture as the PNG a user gives (`--mask`).
pub fn mask_png() -> PathBuf {
    targets_dir().join("mask.png")
}

/// A concept vector file of the similarity fixtures.
pub fn concept_file(model: &str) -> PathBuf {
    targets_dir().join(format!("concept_{model}.npy"))
}

/// One `#[test]` per target fixture model, each running `check(key)`: the same test names in
/// every backend's suite.
#[macro_export]
macro_rules! target_tests {
    ($check:path) => {
        #[test]
        fn binary_resnet18() {
            $check("resnet18_binary");
        }

        #[test]
        fn binary_vit() {
            $check("vit_binary");
        }

        #[test]
        fn segmentation_fcn() {
            $check("fcn");
        }

        #[test]
        fn similarity_resnet18() {
            $check("resnet18_embed");
        }

        #[test]
        fn similarity_vit() {
            $check("vit_embed");
        }
    };
}
