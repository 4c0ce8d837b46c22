//! Dev-only helpers every test suite of gradcam-rs shares: where the generated model fixtures are,
//! how a reference is read, and the one definition of "close". Backend crates take it as a
//! dev-dependency; it depends on no backend, only on [`gradcam_core`]'s trait.
//!
//! The fixtures come from `tools/make_model_fixtures.py` (PyTorch autograd and pytorch-grad-cam
//! 1.5.7); `scripts/test-all` generates them. [`check_model`] is the whole comparison of one model
//! in one backend against them.

use std::path::{Path, PathBuf};

use gradcam_core::{explain, CamModel, CamOptions, LayerTensor, Method, Target};
use ndarray::{Array4, ArrayD, ArrayView, ArrayViewD, Axis, Dimension, Ix4};
use serde_json::Value;

/// What a test says when the generated model fixtures are missing.
pub const MISSING_FIXTURES: &str = "run scripts/test-all (it generates the model fixtures)";

/// The tolerance of every comparison with the reference, relative to the reference's largest
/// magnitude: logits, activations, gradients, CAMs before and after upsampling.
pub const TOL: f32 = 1e-4;

/// The tolerance of a final, upsampled map (what `explain` returns in
/// [`Explanation::maps`](gradcam_core::Explanation)) against pytorch-grad-cam's, relative to the
/// reference's largest magnitude: bilinear upsampling and the second min-max of the mean over
/// layers amplify float noise that stays under [`TOL`] at activation resolution.
pub const UPSAMPLED_TOL: f32 = 1e-3;

/// The tolerance for a gradient method's CAM of an image whose gradient crossed a kink tie (see
/// [`assert_close_except_ties`]): the flipped mask moves a few pixels of the map by up to ~2e-3
/// (HiResCAM, which multiplies gradients pixel by pixel, moves most).
pub const TIE_TOL: f32 = 5e-3;

/// The bar between an exported explainer's CAM (`gradcam export`) and `explain`'s: the same math
/// in ONNX Runtime and in core, maps in [0, 1].
pub const EXPORT_TOL: f32 = 1e-5;

/// A fresh, empty folder `<tmp>/<group>/<name>` for one test's files (`tmp`: the test's
/// `CARGO_TARGET_TMPDIR`), removed when dropped unless the test is failing (then its files stay
/// to be looked at). The export tests alone wrote 0.4 GB of models; left behind, they filled a
/// good part of CI's small disk.
pub fn scratch_dir(tmp: &str, group: &str, name: &str) -> Scratch {
    let dir = PathBuf::from(tmp).join(group).join(name);
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("create the test folder");
    Scratch(dir)
}

/// A test's folder from [`scratch_dir`]: a [`Path`], removed on drop unless panicking.
#[derive(Debug)]
pub struct Scratch(PathBuf);

impl std::ops::Deref for Scratch {
    type Target = Path;
    fn deref(&self) -> &Path {
        &self.0
    }
}

impl AsRef<Path> for Scratch {
    fn as_ref(&self) -> &Path {
        &self.0
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        if !std::thread::panicking() {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }
}

/// The model fixtures folder: `$GRADCAM_FIXTURES`, else `<workspace>/target/fixtures`. Panics
/// (never skips) when they have not been generated.
pub fn fixtures_dir() -> PathBuf {
    let dir = match std::env::var_os("GRADCAM_FIXTURES") {
        Some(dir) if !dir.is_empty() => PathBuf::from(dir),
        _ => Path::new(env!("CARGO_MANIFEST_DIR")).join("..").join("target").join("fixtures"),
    };
    assert!(
        dir.join("manifest.json").is_file(),
        "model fixtures missing in {}: {MISSING_FIXTURES}",
        dir.display()
    );
    dir
}

/// The breadth suite's fixtures folder (`tools/make_breadth_fixtures.py`): `$GRADCAM_BREADTH`,
/// else `$GRADCAM_FIXTURES/breadth`, else `<workspace>/target/fixtures/breadth`. Panics (never
/// skips) when it holds no complete set: the generator writes `manifest.json` last.
pub fn breadth_dir() -> PathBuf {
    let dir = match (std::env::var_os("GRADCAM_BREADTH"), std::env::var_os("GRADCAM_FIXTURES")) {
        (Some(dir), _) if !dir.is_empty() => PathBuf::from(dir),
        (_, Some(dir)) if !dir.is_empty() => PathBuf::from(dir).join("breadth"),
        _ => Path::new(env!("CARGO_MANIFEST_DIR")).join("..").join("target").join("fixtures").join("breadth"),
    };
    assert!(
        dir.join("manifest.json").is_file(),
        "breadth fixtures missing in {}: run scripts/test-breadth, which makes them",
        dir.display()
    );
    dir
}

/// A `.npy` file of any element type at `path`, or an error naming it: for suites that collect
/// failures instead of stopping at the first.
pub fn read_npy<T: ndarray_npy::ReadableElement>(path: &Path) -> Result<ArrayD<T>, String> {
    ndarray_npy::read_npy(path).map_err(|e| format!("cannot read {}: {e}", path.display()))
}

/// A JSON file at `path`, or an error naming it.
pub fn read_json(path: &Path) -> Result<Value, String> {
    let text = std::fs::read_to_string(path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    serde_json::from_str(&text).map_err(|e| format!("{}: {e}", path.display()))
}

/// `path` (relative to the fixtures folder, or absolute), or a panic telling how to generate it.
pub fn require(path: impl AsRef<Path>) -> PathBuf {
    let path = fixtures_dir().join(path);
    assert!(path.exists(), "model fixture {} is missing: {MISSING_FIXTURES}", path.display());
    path
}

/// The fixtures' `manifest.json`.
pub fn manifest() -> Value {
    let path = require("manifest.json");
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// A `.npy` fixture (relative to the fixtures folder, or absolute) of any element type.
pub fn npy<T: ndarray_npy::ReadableElement>(path: impl AsRef<Path>) -> ArrayD<T> {
    let path = require(path);
    ndarray_npy::read_npy(&path).unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()))
}

/// The fixtures' input batch `(B, 3, H, W)`: chelsea and coffee, preprocessed.
pub fn input() -> Array4<f32> {
    npy::<f32>("input.npy").into_dimensionality::<Ix4>().expect("input.npy is (B, 3, H, W)")
}

/// The fixture files' name of a method (`cam_<name>.npy`: `gradcam++` → `gradcampp`).
pub fn fixture_name(method: Method) -> String {
    method.name().replace("++", "pp").replace('-', "_")
}

/// The method whose [`fixture_name`] is `name` (as manifests list them).
pub fn method_from_fixture_name(name: &str) -> Option<Method> {
    Method::ALL.into_iter().find(|m| fixture_name(*m) == name)
}

/// A layer tensor as a dynamic-rank view, whatever its layout.
pub fn layer_view(t: &LayerTensor) -> ArrayViewD<'_, f32> {
    match t {
        LayerTensor::Spatial(a) => a.view().into_dyn(),
        LayerTensor::Tokens(a) => a.view().into_dyn(),
    }
}

/// The reference's scale: its largest magnitude (at least the smallest positive f32).
pub(crate) fn scale<D: Dimension>(want: &ArrayView<f32, D>) -> f32 {
    want.iter().fold(0f32, |m, v| m.max(v.abs())).max(f32::MIN_POSITIVE)
}

/// The one definition of close: `|got - want| <= tol × max|want|` everywhere (NaN is never
/// close). The error names the worst element.
pub fn close<D: Dimension, E: Dimension>(
    got: ArrayView<f32, D>,
    want: ArrayView<f32, E>,
    tol: f32,
) -> Result<(), String> {
    if got.shape() != want.shape() {
        return Err(format!("shape {:?} != reference {:?}", got.shape(), want.shape()));
    }
    let scale = scale(&want);
    let (worst, at) = got
        .iter()
        .zip(want.iter())
        .enumerate()
        .map(|(i, (a, b))| ((a - b).abs(), i))
        .fold((0f32, 0), |best, cur| if cur.0 > best.0 || cur.0.is_nan() { cur } else { best });
    if worst <= tol * scale {
        Ok(())
    } else {
        Err(format!("max |diff| {worst:e} at flat index {at} > {tol:e} x max|reference| {scale:e}"))
    }
}

/// [`close`], or a panic saying what differs.
pub fn assert_close<D: Dimension, E: Dimension>(
    what: &str,
    got: ArrayView<f32, D>,
    want: ArrayView<f32, E>,
    tol: f32,
) {
    if let Err(e) = close(got, want, tol) {
        panic!("{what}: {e}");
    }
}

/// [`assert_close`] on every element the reference does not mark as a kink tie, and nothing on
/// those: `ties` (from the fixtures' `ties.npy`, made by `tools/ties.py` from the reference model)
/// marks the gradient elements that depend on a unit within float noise of a ReLU/ReLU6/… kink
/// after the layer, which another implementation may legitimately put on the other side.
/// Returns, per image (axis 0), whether any tied element did differ (a flipped mask).
pub fn assert_close_except_ties(
    what: &str,
    got: ArrayViewD<f32>,
    want: ArrayViewD<f32>,
    ties: ArrayViewD<bool>,
    tol: f32,
) -> Vec<bool> {
    close_except_ties(got, want, ties, tol).unwrap_or_else(|e| panic!("{what}: {e}"))
}

/// [`assert_close_except_ties`] as a result: per image, whether a tied element differed, or what
/// differs beyond the tolerance (shapes, or the worst untied element).
pub fn close_except_ties(
    got: ArrayViewD<f32>,
    want: ArrayViewD<f32>,
    ties: ArrayViewD<bool>,
    tol: f32,
) -> Result<Vec<bool>, String> {
    if got.shape() != want.shape() {
        return Err(format!("shape {:?} != reference {:?}", got.shape(), want.shape()));
    }
    if ties.shape() != want.shape() {
        return Err(format!("tie mask shape {:?} != reference {:?}", ties.shape(), want.shape()));
    }
    let limit = tol * scale(&want);
    let mut flipped = vec![false; want.len_of(Axis(0))];
    let mut worst = (0f32, Vec::new());
    for (((index, &a), &b), &tie) in got.indexed_iter().zip(want.iter()).zip(ties.iter()) {
        let diff = (a - b).abs();
        if tie {
            flipped[index[0]] |= diff > limit || diff.is_nan();
        } else if diff > worst.0 || diff.is_nan() {
            worst = (diff, index.slice().to_vec());
        }
    }
    let skipped = ties.iter().filter(|&&t| t).count();
    if worst.0 <= limit {
        Ok(flipped)
    } else {
        Err(format!(
            "max |diff| {:e} at {:?} > {limit:e} ({tol:e} x max|reference|; {skipped} tied elements skipped)",
            worst.0, worst.1
        ))
    }
}

/// One explained layer of a fixture model, as the manifest lists it.
#[derive(Clone, Debug)]
pub struct LayerReference {
    /// The layer's module path.
    pub layer: String,
    /// Its folder, relative to the fixtures folder.
    pub dir: PathBuf,
    /// The methods grad-cam was run with there.
    pub methods: Vec<Method>,
    /// The methods grad-cam also ran for each image's runner-up class (`cam_<m>_rank1.npy`).
    pub rank1_methods: Vec<Method>,
    /// Those runner-up classes, per image.
    pub rank1_classes: Vec<usize>,
    /// grad-cam's runs with its smoothing flags (`cam_<m>_<variant>.npy`).
    pub variants: Vec<Variant>,
}

/// One run of grad-cam with `eigen_smooth` / `aug_smooth`, as the manifest lists it.
#[derive(Clone, Debug)]
pub struct Variant {
    /// The files' suffix (`augsmooth`, ...).
    pub name: String,
    /// grad-cam's `eigen_smooth`.
    pub eigen_smooth: bool,
    /// grad-cam's `aug_smooth`.
    pub aug_smooth: bool,
    /// The rank of the explained class among the unaugmented input's logits (0: top-1).
    pub rank: usize,
    /// The classes explained, per image.
    pub classes: Vec<usize>,
    /// The methods run.
    pub methods: Vec<Method>,
}

impl LayerReference {
    fn file<T: ndarray_npy::ReadableElement>(&self, name: &str) -> ArrayD<T> {
        npy(self.dir.join(name))
    }

    /// The class grad-cam explained per image (top-1).
    pub fn classes(&self) -> Vec<usize> {
        self.file::<i64>("classes.npy").iter().map(|&c| c as usize).collect()
    }

    /// The reference CAM of `method` `(B, H, W)`.
    pub fn cam(&self, method: Method) -> ArrayD<f32> {
        self.file(&format!("cam_{}.npy", fixture_name(method)))
    }

    /// The reference CAM of `method` for each image's runner-up class `(B, H, W)`.
    pub fn cam_rank1(&self, method: Method) -> ArrayD<f32> {
        self.file(&format!("cam_{}_rank1.npy", fixture_name(method)))
    }

    /// The reference CAM of `method` in `variant` `(B, H, W)`.
    pub fn cam_variant(&self, method: Method, variant: &Variant) -> ArrayD<f32> {
        self.file(&format!("cam_{}_{}.npy", fixture_name(method), variant.name))
    }

    /// The gradient elements tied to a kink ([`assert_close_except_ties`]).
    pub fn ties(&self) -> ArrayD<bool> {
        self.file("ties.npy")
    }

    /// Per image, whether the reference marks any gradient element as tied.
    pub fn images_with_ties(&self) -> Vec<bool> {
        self.ties().outer_iter().map(|t| t.iter().any(|&x| x)).collect()
    }
}

/// The methods a manifest lists at `list` (none when absent).
fn manifest_methods(list: &Value) -> Vec<Method> {
    list.as_array()
        .map(|names| {
            names
                .iter()
                .map(|m| m.as_str().expect("a method name"))
                .map(|name| {
                    method_from_fixture_name(name)
                        .unwrap_or_else(|| panic!("unknown method `{name}` in the manifest"))
                })
                .collect()
        })
        .unwrap_or_default()
}

/// A manifest's list of classes (none when absent).
fn manifest_classes(list: &Value) -> Vec<usize> {
    list.as_array()
        .map(|c| c.iter().map(|c| c.as_u64().expect("a class") as usize).collect())
        .unwrap_or_default()
}

/// Every explained layer of fixture model `key`, from the manifest.
pub fn references(key: &str) -> Vec<LayerReference> {
    let manifest = manifest();
    let layers = manifest["models"][key]["layers"]
        .as_object()
        .unwrap_or_else(|| panic!("the manifest has no layers for `{key}`: {MISSING_FIXTURES}"));
    layers
        .iter()
        .map(|(layer, spec)| LayerReference {
            layer: layer.clone(),
            dir: PathBuf::from(spec["dir"].as_str().expect("a layer's dir")),
            methods: manifest_methods(&spec["methods"]),
            rank1_methods: manifest_methods(&spec["rank1"]["methods"]),
            rank1_classes: manifest_classes(&spec["rank1"]["classes"]),
            variants: spec["variants"]
                .as_object()
                .map(|variants| {
                    variants
                        .iter()
                        .map(|(name, v)| Variant {
                            name: name.clone(),
                            eigen_smooth: v["eigen_smooth"].as_bool().unwrap_or(false),
                            aug_smooth: v["aug_smooth"].as_bool().unwrap_or(false),
                            rank: v["rank"].as_u64().unwrap_or(0) as usize,
                            classes: manifest_classes(&v["classes"]),
                            methods: manifest_methods(&v["methods"]),
                        })
                        .collect()
                })
                .unwrap_or_default(),
        })
        .collect()
}

/// The explain options the references were made with (AblationCAM's batch size changes its
/// values, as grad-cam's; RandomCAM's seed and FinerCAM's alpha, when the manifest says).
pub fn reference_options() -> CamOptions {
    let manifest = manifest();
    let defaults = CamOptions::default();
    let batch_size = manifest["ablation_batch_size"].as_u64().map_or(defaults.batch_size, |b| b as usize);
    let seed = manifest["random_seed"].as_u64().map_or(defaults.seed, |s| s as u32);
    let finer_alpha = manifest["finer_alpha"].as_f64().map_or(defaults.finer_alpha, |a| a as f32);
    CamOptions { batch_size, seed, finer_alpha, ..defaults }
}

/// The whole comparison of fixture model `key`, opened in one backend as `model` (`label` names
/// it in messages), against PyTorch and pytorch-grad-cam, for every layer the fixtures hold:
/// - the layer is listed by [`CamModel::layers`];
/// - logits, the class core resolves, activations to [`TOL`]; gradients to [`TOL`] except the
///   reference's kink ties; a capture without seed has the same activation and no gradient;
/// - replacing the layer's output by itself gives the same logits (AblationCAM's pass);
/// - every method grad-cam ran that `methods` keeps, in one `explain` call, to [`TOL`] (a gradient
///   method on an image whose gradient crossed a tie: [`TIE_TOL`]);
/// - the same for each image's runner-up class, and for each smoothing variant (`eigen_smooth`,
///   `aug_smooth`, a runner-up class under `aug_smooth`).
pub fn check_model(label: &str, model: &mut dyn CamModel, key: &str, methods: impl Fn(Method) -> bool) {
    let input = input();
    let listed: Vec<String> = model
        .layers()
        .unwrap_or_else(|e| panic!("{label} {key}: layers: {e}"))
        .into_iter()
        .map(|l| l.name)
        .collect();
    let references = references(key);
    assert!(!references.is_empty(), "{label} {key}: no reference layers");
    for reference in references {
        let layer = reference.layer.as_str();
        let what = format!("{label} {key} {layer}");
        assert!(listed.iter().any(|n| n == layer), "{what}: not listed among {listed:?}");
        let target = Target::top_one();
        let capture =
            model.capture(input.view(), layer, Some(&target)).unwrap_or_else(|e| panic!("{what}: {e}"));
        assert_close(
            &format!("{what} logits"),
            capture.logits.view(),
            reference.file::<f32>("logits.npy").view(),
            TOL,
        );
        assert_eq!(target.resolve(capture.logits.view()).unwrap(), reference.classes(), "{what}: classes");
        let activations = reference.file::<f32>("activations.npy");
        assert_close(
            &format!("{what} activations"),
            layer_view(&capture.activation),
            activations.view(),
            TOL,
        );
        let gradient = capture.gradient.as_ref().unwrap_or_else(|| panic!("{what}: no gradient"));
        let flipped = assert_close_except_ties(
            &format!("{what} gradients"),
            layer_view(gradient),
            reference.file::<f32>("gradients.npy").view(),
            reference.ties().view(),
            TOL,
        );

        let plain = model.capture(input.view(), layer, None).unwrap_or_else(|e| panic!("{what}: {e}"));
        assert!(plain.gradient.is_none(), "{what}: a gradient without a seed");
        assert_close(
            &format!("{what} activations without seed"),
            layer_view(&plain.activation),
            activations.view(),
            TOL,
        );
        let replaced = model
            .forward_with_activation(input.view(), layer, capture.activation.view())
            .unwrap_or_else(|e| panic!("{what}: forward_with_activation: {e}"));
        assert_close(&format!("{what} forward_with_activation"), replaced.view(), capture.logits.view(), TOL);

        let kept: Vec<Method> = reference.methods.iter().copied().filter(|m| methods(*m)).collect();
        assert!(kept.iter().filter(|m| m.needs_gradients()).count() >= 6, "{what}: too few methods {kept:?}");
        let explanations = explain(model, input.view(), &[layer], &kept, &target, &reference_options())
            .unwrap_or_else(|e| panic!("{what}: explain: {e}"));
        for e in explanations {
            let want = reference.cam(e.method);
            for (b, got) in e.maps.outer_iter().enumerate() {
                let tol = if flipped[b] && e.method.needs_gradients() { TIE_TOL } else { TOL };
                let name = format!("{what} {} image {b}", e.method);
                assert_close(&name, got, want.index_axis(Axis(0), b), tol);
            }
        }

        // The tie mask is the top-1 gradient's; which units sit on a kink does not depend on the class.
        let tied = reference.images_with_ties();
        for variant in &reference.variants {
            let kept: Vec<Method> = variant.methods.iter().copied().filter(|m| methods(*m)).collect();
            if kept.is_empty() {
                continue;
            }
            let options = CamOptions {
                eigen_smooth: variant.eigen_smooth,
                aug_smooth: variant.aug_smooth,
                ..reference_options()
            };
            let explanations =
                explain(model, input.view(), &[layer], &kept, &Target::rank(variant.rank), &options)
                    .unwrap_or_else(|e| panic!("{what}: explain {}: {e}", variant.name));
            for e in explanations {
                assert_eq!(e.classes, variant.classes, "{what} {} {}: classes", e.method, variant.name);
                let want = reference.cam_variant(e.method, variant);
                for (b, got) in e.maps.outer_iter().enumerate() {
                    let tol = if tied[b] && e.method.needs_gradients() { TIE_TOL } else { TOL };
                    let name = format!("{what} {} {} image {b}", e.method, variant.name);
                    assert_close(&name, got, want.index_axis(Axis(0), b), tol);
                }
            }
        }

        // Each image's runner-up class (a non-top-1 target), where the reference has it.
        let rank1: Vec<Method> = reference.rank1_methods.iter().copied().filter(|m| methods(*m)).collect();
        if rank1.is_empty() {
            continue;
        }
        let explanations =
            explain(model, input.view(), &[layer], &rank1, &Target::rank(1), &reference_options())
                .unwrap_or_else(|e| panic!("{what}: explain rank 1: {e}"));
        for e in explanations {
            assert_eq!(e.classes, reference.rank1_classes, "{what} {}: runner-up classes", e.method);
            let want = reference.cam_rank1(e.method);
            for (b, got) in e.maps.outer_iter().enumerate() {
                let tol = if tied[b] { TIE_TOL } else { TOL };
                let name = format!("{what} {} rank 1 image {b}", e.method);
                assert_close(&name, got, want.index_axis(Axis(0), b), tol);
            }
        }
    }
}
pub mod guided;
pub mod targets;

/// One `#[test]` per model fixture and ONNX exporter, each calling `$check(key, exporter)`:
/// `resnet18_legacy`, `resnet18_dynamo`, `vit_tiny_legacy`, … `lite0_dynamo`.
#[macro_export]
macro_rules! onnx_fixture_tests {
    ($check:path) => {
        #[test]
        fn resnet18_legacy() {
            $check("resnet18", "legacy");
        }

        #[test]
        fn resnet18_dynamo() {
            $check("resnet18", "dynamo");
        }

        #[test]
        fn vit_tiny_legacy() {
            $check("vit_tiny", "legacy");
        }

        #[test]
        fn vit_tiny_dynamo() {
            $check("vit_tiny", "dynamo");
        }

        #[test]
        fn lite0_legacy() {
            $check("lite0", "legacy");
        }

        #[test]
        fn lite0_dynamo() {
            $check("lite0", "dynamo");
        }
    };
}
