//! `--method guided-backprop|guided-gradcam` end to end on the guided fixtures (ResNet-18 in every
//! backend built in): `--npy-out` holds grad-cam 1.5.7's `(N, 3, H, W)` maps, the pictures are
//! its `deprocess_image`, and the misuses are messages that say what to do.

use super::*;
use ndarray::{Array4, Axis};
use tests::guided::{guided_dir, guided_file, guided_reference};
use tests::{assert_close, fixtures_dir, npy, TOL, UPSAMPLED_TOL};

/// `gradcam explain` of the fixtures' two-image input with `--top 2` (image 0's fixture class is
/// its runner-up, image 1's its top-1), `--json` and `--npy-out maps.npy`.
fn explain(dir: &Path, backend: Backend, method: &str) -> Value {
    let _ = std::fs::remove_dir_all(dir.join("out"));
    let _ = std::fs::remove_file(dir.join("maps.npy"));
    let input = fixtures_dir().join("input.npy").display().to_string();
    let mut args = vec!["explain".to_string(), input, "--method".into(), method.into()];
    args.extend(backend.args());
    args.extend(["--top", "2", "--json", "--npy-out", "maps.npy", "--out", "out"].map(String::from));
    let out = command(dir, &args).output().expect("the gradcam binary runs");
    assert_success(&out);
    json(&out)
}

/// The fixture ResNet-18 as one backend reads it.
#[derive(Clone, Copy, Debug)]
enum Backend {
    #[cfg(feature = "candle")]
    Candle,
    #[cfg(feature = "tch")]
    Tch,
    #[cfg(feature = "ort")]
    Ort,
}

impl Backend {
    fn args(self) -> Vec<String> {
        let file = |name: &str| fixtures_dir().join(name).display().to_string();
        let args = match self {
            #[cfg(feature = "candle")]
            Backend::Candle => {
                ["--model".into(), file("resnet18.safetensors"), "--arch".into(), "resnet18".into()]
            }
            #[cfg(feature = "tch")]
            Backend::Tch => ["--backend".into(), "tch".into(), "--model".into(), file("resnet18.traced.pt")],
            #[cfg(feature = "ort")]
            Backend::Ort => {
                ["--backend".into(), "ort".into(), "--model".into(), file("resnet18.dynamo.onnx")]
            }
        };
        args.to_vec()
    }
}

/// Per image: the map record of the fixture's class.
fn records(json: &Value, classes: &[usize]) -> Vec<Value> {
    let images = json["images"].as_array().expect("images");
    assert_eq!(images.len(), classes.len());
    images
        .iter()
        .zip(classes)
        .map(|(image, &class)| {
            let maps = image["maps"].as_array().expect("maps");
            assert_eq!(maps.len(), 2, "one map per class of --top 2: {image}");
            maps.iter()
                .find(|m| m["class"] == class)
                .unwrap_or_else(|| panic!("no class {class}: {image}"))
                .clone()
        })
        .collect()
}

/// The picture against grad-cam's `deprocess_image` bytes `(H, W, 3)`: at most one level off
/// (numpy sums its mean and std in float32), on at most 0.1 % of the values.
fn assert_picture(dir: &Path, path: &str, want: ndarray::ArrayView3<u8>) {
    let got = image::open(dir.join(path)).unwrap_or_else(|e| panic!("{path}: {e}")).to_rgb8();
    let (h, w, _) = want.dim();
    assert_eq!(got.dimensions(), (w as u32, h as u32), "{path}");
    let mut off = 0;
    for ((y, x, c), &v) in want.indexed_iter() {
        let d = (got.get_pixel(x as u32, y as u32).0[c] as i32 - v as i32).abs();
        assert!(d <= 1, "{path}: ({y}, {x}, {c}) is {d} levels off");
        off += usize::from(d > 0);
    }
    assert!(off * 1000 <= want.len(), "{path}: {off} values one level off");
}

/// `method`'s maps and pictures against `want` and the fixture's `pictures`, the picture named
/// `input.<b>.<stem>.c<class>.pixels.png`.
fn check(backend: Backend, method: &str, stem: &str, want: &Array4<f32>, tol: f32, pictures: &str) {
    let dir = workdir(&format!("guided-{backend:?}-{method}"));
    let reference = guided_reference("resnet18");
    let json = explain(&dir, backend, method);
    let maps: Array4<f32> = ndarray_npy::read_npy(dir.join("maps.npy")).expect("(N, 3, H, W) maps.npy");
    assert_eq!(maps.len_of(Axis(0)), 4, "two images, two classes");
    let deprocessed = npy::<u8>(guided_dir("resnet18").join(pictures));
    for (b, record) in records(&json, &reference.classes).iter().enumerate() {
        assert_eq!(record["method"], method);
        assert!(record["overlay"].is_null() && record["heatmap"].is_null(), "{record}");
        let index = record["npy_index"].as_u64().expect("npy index") as usize;
        let what = format!("{backend:?} {method} image {b}");
        assert_close(&what, maps.index_axis(Axis(0), index), want.index_axis(Axis(0), b), tol);
        let picture = record["pixels"].as_str().expect("a picture");
        let class = reference.classes[b];
        assert_eq!(picture, format!("out/input.{b}.{stem}.c{class}.pixels.png"));
        assert_picture(&dir, picture, deprocessed.index_axis(Axis(0), b).into_dimensionality().unwrap());
    }
}

/// Guided backprop, and guided Grad-CAM at the automatic layer (`layer4`, the fixture's), which
/// its picture names.
fn check_both(backend: Backend) {
    let reference = guided_reference("resnet18");
    check(backend, "guided-backprop", "guided-backprop", &reference.guided, TOL, "deprocessed.npy");
    let stem = "layer4.guided-gradcam";
    check(
        backend,
        "guided-gradcam",
        stem,
        &reference.guided_gradcam,
        UPSAMPLED_TOL,
        "deprocessed_gradcam.npy",
    );
}

#[cfg(feature = "candle")]
#[test]
fn candle_guided_matches_grad_cam() {
    check_both(Backend::Candle);
}

#[cfg(feature = "tch")]
#[test]
fn tch_guided_matches_grad_cam() {
    check_both(Backend::Tch);
}

#[cfg(feature = "ort")]
#[test]
fn ort_guided_matches_grad_cam() {
    check_both(Backend::Ort);
}

#[cfg(feature = "candle")]
#[test]
fn guided_misuse() {
    let dir = workdir("guided-misuse");
    let out =
        gradcam(&dir, &["explain", &chelsea(), "--method", "gradcam,guided-backprop", "--npy-out", "m.npy"]);
    assert_failure(&out, 1, "--npy-out holds maps of one shape", &dir, &[]);
    let out = gradcam(&dir, &["evaluate", &chelsea(), "--method", "guided-gradcam"]);
    assert_failure(&out, 1, "maps pixels, not a heatmap", &dir, &[]);
    // A second run does not overwrite the first one's picture.
    let first = gradcam(&dir, &["explain", &chelsea(), "--method", "guided-backprop", "--out", "o"]);
    assert_success(&first);
    assert_eq!(files(&dir.join("o")), ["chelsea.guided-backprop.pixels.png"]);
    let before = snapshot(&dir);
    let again = gradcam(&dir, &["explain", &chelsea(), "--method", "guided-backprop", "--out", "o"]);
    assert_eq!(again.status.code(), Some(1), "{}", stderr(&again));
    assert!(stderr(&again).contains("already exists"), "{}", stderr(&again));
    assert_eq!(snapshot(&dir), before, "nothing changed");
}

/// FullGrad end to end on the ResNet with random BatchNorm statistics (non-zero biases), given
/// as `model` (the arguments that open it): one map per image and class, named without a layer
/// (it reads every bias layer, not `--layer`), equal to grad-cam's `FullGrad` in the `.npy`;
/// with `--eigen-smooth`, to its `eigen_smooth=True`.
#[cfg(any(feature = "candle", feature = "ort"))]
fn fullgrad_matches_grad_cam(label: &str, model: &[&str]) {
    let classes: Vec<usize> =
        npy::<i64>(guided_dir("resnet18_bn").join("classes.npy")).iter().map(|&c| c as usize).collect();
    let input = fixtures_dir().join("input.npy").display().to_string();
    let args = [&["explain", &input][..], model, &["--method", "fullgrad", "--top", "2"]].concat();
    for (flags, reference, smoothed) in [
        (&[][..], "fullgrad.npy", &[][..]),
        (&["--eigen-smooth"][..], "fullgrad_eigen.npy", &["fullgrad"][..]),
    ] {
        let dir = workdir(&format!("fullgrad-{label}{}", flags.concat()));
        let want = npy::<f32>(guided_dir("resnet18_bn").join(reference));
        let out =
            gradcam(&dir, &[&args[..], flags, &["--json", "--npy-out", "maps.npy", "--out", "out"]].concat());
        assert_success(&out);
        let json = json(&out);
        assert_eq!(json["eigen_smooth"], serde_json::json!(smoothed), "{label} {flags:?}");
        let maps: ndarray::Array3<f32> =
            ndarray_npy::read_npy(dir.join("maps.npy")).expect("(N, H, W) maps.npy");
        for (b, record) in records(&json, &classes).iter().enumerate() {
            let class = classes[b];
            assert_eq!(record["overlay"], format!("out/input.{b}.fullgrad.c{class}.overlay.png"), "{record}");
            assert!(record["layer"].is_null(), "{record}");
            let index = record["npy_index"].as_u64().expect("npy index") as usize;
            let what = format!("{label} fullgrad {flags:?} image {b}");
            assert_close(&what, maps.index_axis(Axis(0), index), want.index_axis(Axis(0), b), UPSAMPLED_TOL);
        }
    }
}

#[cfg(feature = "candle")]
#[test]
fn candle_fullgrad_matches_grad_cam() {
    let model = guided_file("resnet18_bn.safetensors").display().to_string();
    fullgrad_matches_grad_cam("candle", &["--model", &model, "--arch", "resnet18"]);
}

/// ort from a dynamo export, whose weights (and so the biases FullGrad reads) are external data.
#[cfg(feature = "ort")]
#[test]
fn ort_fullgrad_matches_grad_cam() {
    let model = guided_file("resnet18_bn.dynamo.onnx").display().to_string();
    fullgrad_matches_grad_cam("ort", &["--backend", "ort", "--model", &model]);
}
