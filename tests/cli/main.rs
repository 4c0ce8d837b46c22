//! End-to-end tests of the `gradcam` binary: success on the shipped model and photos, and every
//! user error with its message, its exit status and no files left behind.
//!
//! These are integration tests of the ROOT package (declared as `[[test]] cli` in the root
//! Cargo.toml), not of the `tests` workspace member next to them: only a package's own
//! integration tests get `CARGO_BIN_EXE_gradcam`, the binary cargo just built with the same
//! features, so no second cargo invocation or binary search is needed.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use ndarray::{Array3, Array4};
use serde_json::Value;

#[cfg(feature = "candle")]
mod evaluate;
#[cfg(feature = "candle")]
mod faults;
#[cfg(any(feature = "candle", feature = "tch", feature = "ort"))]
mod guided;
#[cfg(feature = "candle")]
mod hostile;
#[cfg(feature = "candle")]
mod methods;
#[cfg(any(feature = "tch", feature = "ort"))]
mod native;
#[cfg(feature = "candle")]
mod safety;
#[cfg(feature = "candle")]
mod stream;
#[cfg(any(feature = "candle", feature = "tch", feature = "ort"))]
mod targets;

/// A fresh, empty working folder for one test, removed when the test passes.
fn workdir(name: &str) -> tests::Scratch {
    tests::scratch_dir(env!("CARGO_TARGET_TMPDIR"), "cli-e2e", name)
}

fn gradcam(dir: &Path, args: &[&str]) -> Output {
    command(dir, args).output().expect("the gradcam binary runs")
}

/// The command, not started yet.
fn command<S: AsRef<std::ffi::OsStr>>(dir: &Path, args: &[S]) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_gradcam"));
    cmd.args(args).current_dir(dir).env_remove("GRADCAM_ASSETS");
    cmd
}

/// Every file under `dir` with its bytes.
fn snapshot(dir: &Path) -> Vec<(String, Vec<u8>)> {
    files(dir).into_iter().map(|f| (f.clone(), std::fs::read(dir.join(&f)).unwrap())).collect()
}

/// A folder `name` under `dir` holding copies of the shipped photos, `copies` of each, named
/// `chelsea-00.png`, `coffee-00.png`, ….
fn photos(dir: &Path, name: &str, copies: usize) -> PathBuf {
    let folder = dir.join(name);
    std::fs::create_dir_all(&folder).unwrap();
    for photo in ["chelsea", "coffee"] {
        for k in 0..copies {
            std::fs::copy(
                assets().join(format!("images/{photo}.png")),
                folder.join(format!("{photo}-{k:02}.png")),
            )
            .unwrap();
        }
    }
    folder
}

fn assets() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("assets")
}

fn chelsea() -> String {
    assets().join("images/chelsea.png").display().to_string()
}

fn stdout(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// Every file under `dir`, relative, sorted.
fn files(dir: &Path) -> Vec<String> {
    fn walk(root: &Path, dir: &Path, out: &mut Vec<String>) {
        for entry in std::fs::read_dir(dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() && !path.is_symlink() {
                walk(root, &path, out);
            } else {
                out.push(path.strip_prefix(root).unwrap().display().to_string());
            }
        }
    }
    let mut out = Vec::new();
    walk(dir, dir, &mut out);
    out.sort();
    out
}

fn assert_success(out: &Output) {
    assert!(
        out.status.success(),
        "gradcam failed: {:?}\nstdout:\n{}\nstderr:\n{}",
        out.status,
        stdout(out),
        stderr(out)
    );
}

/// The run failed with `code`, said `message` on stderr, and left only `keep` in `dir`.
fn assert_failure(out: &Output, code: i32, message: &str, dir: &Path, keep: &[&str]) {
    assert_eq!(out.status.code(), Some(code), "stdout:\n{}\nstderr:\n{}", stdout(out), stderr(out));
    assert!(stderr(out).contains(message), "stderr lacks {message:?}:\n{}", stderr(out));
    let left: Vec<String> = files(dir).into_iter().filter(|f| !keep.contains(&f.as_str())).collect();
    assert!(left.is_empty(), "a failed run left files behind: {left:?}");
}

fn png_size(path: &Path) -> (u32, u32) {
    let img =
        image::open(path).unwrap_or_else(|e| panic!("{} is not a decodable image: {e}", path.display()));
    (img.width(), img.height())
}

fn json(out: &Output) -> Value {
    serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("stdout is not one JSON document ({e}):\n{}", stdout(out)))
}

#[cfg(feature = "candle")]
mod candle {
    use super::*;

    #[test]
    fn no_arguments_explains_the_shipped_photos() {
        let dir = workdir("default");
        let out = gradcam(&dir, &[]);
        assert_success(&out);
        let text = stdout(&out);
        assert!(text.contains("chosen automatically"), "{text}");
        assert!(text.contains("gradcam-out"), "does not say where the pictures went:\n{text}");
        assert!(text.contains("285") && text.contains("Egyptian cat"), "{text}");

        let written = files(&dir.join("gradcam-out"));
        for name in ["chelsea", "coffee"] {
            let photo = png_size(&assets().join(format!("images/{name}.png")));
            let overlay = written
                .iter()
                .find(|f| f.starts_with(&format!("{name}.")) && f.ends_with(".gradcam.overlay.png"))
                .unwrap_or_else(|| panic!("no overlay for {name} in {written:?}"));
            assert_eq!(png_size(&dir.join("gradcam-out").join(overlay)), photo, "overlay not at photo size");
            let heatmap = overlay.replace(".overlay.png", ".heatmap.png");
            assert!(written.contains(&heatmap), "no {heatmap} in {written:?}");
            png_size(&dir.join("gradcam-out").join(&heatmap));
            assert!(written.contains(&format!("{name}.grid.png")), "no grid for {name}: {written:?}");
        }
        assert_eq!(written.len(), 6, "{written:?}");
        assert!(text.contains("[nchw]"), "the layout of the layer:\n{text}");
        assert!(
            stderr(&out).is_empty(),
            "without a terminal, nothing but errors on stderr:\n{}",
            stderr(&out)
        );
    }

    #[test]
    fn json_summary_and_npy_maps() {
        let dir = workdir("json");
        let out = gradcam(&dir, &["explain", &chelsea(), "--json", "--out", "pics", "--npy-out", "maps.npy"]);
        assert_success(&out);
        let summary = json(&out);
        let image = &summary["images"][0];
        assert_eq!(image["predictions"][0]["class"], 285);
        assert_eq!(image["predictions"][0]["name"], "Egyptian cat");
        let p = image["predictions"][0]["probability"].as_f64().unwrap();
        assert!((p - 0.80).abs() < 0.02, "p(285) = {p}, PyTorch says 0.80");
        assert_eq!(image["predictions"].as_array().unwrap().len(), 5);
        assert_eq!(summary["layer_chosen_automatically"], true);
        let layer = summary["layers"][0].as_str().unwrap();
        let maps = image["maps"].as_array().unwrap();
        assert_eq!(maps.len(), 1);
        assert_eq!(maps[0]["class"], 285);
        assert_eq!(maps[0]["layer"], layer);
        assert_eq!(maps[0]["npy_index"], 0);
        assert_eq!(maps[0]["layout"], "nchw");
        assert_eq!(summary["layouts"][layer], "nchw", "the layout used, per layer");
        for key in ["overlay", "heatmap"] {
            let path = dir.join(maps[0][key].as_str().unwrap());
            assert!(path.starts_with(dir.join("pics")), "{}", path.display());
            png_size(&path);
        }
        assert!(maps[0]["overlay"]
            .as_str()
            .unwrap()
            .ends_with(&format!("chelsea.{layer}.gradcam.overlay.png")));
        png_size(&dir.join(image["grid"].as_str().unwrap()));

        let maps: Array3<f32> = ndarray_npy::read_npy(dir.join("maps.npy")).unwrap();
        assert_eq!(maps.dim(), (1, 224, 224));
        assert!(maps.iter().all(|v| (0.0..=1.0).contains(v)), "maps outside [0, 1]");
        let max = maps.iter().copied().fold(0.0, f32::max);
        assert!(max > 0.99, "a min-max-scaled map peaks at 1, got {max}");
    }

    #[test]
    fn several_layers_methods_and_classes() {
        let dir = workdir("multi");
        let out = gradcam(
            &dir,
            &[
                "explain",
                &chelsea(),
                "--json",
                "--layer",
                "blocks.6",
                "--layer",
                "bn2",
                "--method",
                "gradcam,eigencam",
                "--method",
                "gradcam++",
                "--top",
                "2",
                "--npy-out",
                "maps.npy",
                "--colormap",
                "viridis",
                "--alpha",
                "0.3",
                "--softmax",
            ],
        );
        assert_success(&out);
        let summary = json(&out);
        assert_eq!(summary["layer_chosen_automatically"], false);
        assert_eq!(summary["target"], "softmax");
        let maps = summary["images"][0]["maps"].as_array().unwrap();
        // 2 classes x 3 methods x (2 layers + their combination)
        assert_eq!(maps.len(), 18);
        let classes: Vec<u64> = summary["images"][0]["predictions"]
            .as_array()
            .unwrap()
            .iter()
            .map(|p| p["class"].as_u64().unwrap())
            .collect();
        for m in maps {
            assert!(m["class"] == classes[0] || m["class"] == classes[1], "{m}");
            png_size(&dir.join(m["overlay"].as_str().unwrap()));
            png_size(&dir.join(m["heatmap"].as_str().unwrap()));
        }
        assert!(files(&dir).contains(&"gradcam-out/chelsea.combined.gradcam++.c285.overlay.png".to_string()));
        let npy: Array3<f32> = ndarray_npy::read_npy(dir.join("maps.npy")).unwrap();
        assert_eq!(npy.dim(), (6, 224, 224), "one combined map per class and method");
        let indices: Vec<u64> = maps.iter().filter_map(|m| m["npy_index"].as_u64()).collect();
        assert_eq!(indices.len(), 6);
        assert!(maps.iter().filter(|m| m["npy_index"].is_u64()).all(|m| m["layer"].is_null()));
    }

    #[test]
    fn npy_input_is_used_as_is() {
        let dir = workdir("npy");
        let input =
            Array4::from_shape_fn((2, 3, 64, 96), |(b, c, y, x)| ((b + c + y * x) % 17) as f32 / 8.0 - 1.0);
        ndarray_npy::write_npy(dir.join("batch.npy"), &input).unwrap();
        let out = gradcam(
            &dir,
            &["explain", "batch.npy", "--json", "--npy-out", "maps.npy", "--method", "hirescam"],
        );
        assert_success(&out);
        let summary = json(&out);
        assert_eq!(summary["images"].as_array().unwrap().len(), 2);
        assert_eq!(summary["images"][1]["name"], "batch.1");
        assert_eq!(summary["images"][1]["input_size"], serde_json::json!([64, 96]));
        let maps: Array3<f32> = ndarray_npy::read_npy(dir.join("maps.npy")).unwrap();
        assert_eq!(maps.dim(), (2, 64, 96));
        assert!(maps.iter().all(|v| (0.0..=1.0).contains(v)));
        let overlay = summary["images"][0]["maps"][0]["overlay"].as_str().unwrap();
        assert_eq!(png_size(&dir.join(overlay)), (96, 64));
    }

    #[test]
    fn folder_input() {
        let dir = workdir("folder");
        let images = dir.join("photos");
        std::fs::create_dir_all(&images).unwrap();
        for name in ["chelsea.png", "coffee.png"] {
            std::fs::copy(assets().join("images").join(name), images.join(name)).unwrap();
        }
        std::fs::write(images.join("notes.txt"), "not an image, and not picked up").unwrap();
        let out = gradcam(&dir, &["explain", "photos", "--json"]);
        assert_success(&out);
        let summary = json(&out);
        let names: Vec<&str> =
            summary["images"].as_array().unwrap().iter().map(|i| i["name"].as_str().unwrap()).collect();
        assert_eq!(names, ["chelsea", "coffee"]);
        assert_eq!(summary["images"][1]["predictions"][0]["class"], 967, "coffee is an espresso");
    }

    #[test]
    fn layers_lists_shapes_and_marks_the_choice() {
        let dir = workdir("layers");
        let out = gradcam(&dir, &["layers"]);
        assert_success(&out);
        let text = stdout(&out);
        let marked: Vec<&str> = text.lines().filter(|l| l.starts_with('*')).collect();
        assert_eq!(marked.len(), 1, "exactly one automatic choice:\n{text}");
        assert!(text.lines().any(|l| l.trim_start_matches(['*', ' ']).starts_with("blocks.6 ")), "{text}");
        assert!(text.contains("[1, 1280, 7, 7]"), "bn2's shape for a 224x224 input:\n{text}");
        assert!(files(&dir).is_empty());
    }

    #[test]
    fn unknown_layer_lists_near_matches() {
        let dir = workdir("unknown-layer");
        let out = gradcam(&dir, &["explain", &chelsea(), "--layer", "blocks.66"]);
        assert_failure(&out, 1, "unknown layer `blocks.66`", &dir, &[]);
        assert!(
            stderr(&out).contains("did you mean") && stderr(&out).contains("blocks.6"),
            "{}",
            stderr(&out)
        );
    }

    #[test]
    fn class_out_of_range() {
        let dir = workdir("class");
        let out = gradcam(&dir, &["explain", &chelsea(), "--class", "1000"]);
        assert_failure(&out, 1, "class 1000 is out of range: the model has 1000 classes", &dir, &[]);
    }

    #[test]
    fn unknown_architecture() {
        let dir = workdir("arch");
        let model = assets().join("models/tf_efficientnet_lite0.safetensors");
        let out = gradcam(&dir, &["layers", "--model", model.to_str().unwrap(), "--arch", "resnet19"]);
        assert_failure(&out, 1, "unknown architecture `resnet19`", &dir, &[]);
        assert!(stderr(&out).contains("resnet18"), "near matches: {}", stderr(&out));
    }

    #[test]
    fn a_failed_write_leaves_no_pictures() {
        let dir = workdir("failed-write");
        std::fs::write(dir.join("blocker"), "a file where a folder should be").unwrap();
        let out = gradcam(&dir, &["explain", &chelsea(), "--npy-out", "blocker/maps.npy"]);
        assert_failure(&out, 1, "blocker is a file, not a folder", &dir, &["blocker"]);
        assert!(!dir.join("gradcam-out").exists(), "the output folder it created is removed again");
    }
}

#[test]
fn missing_input_file() {
    let dir = workdir("missing-input");
    let out = gradcam(&dir, &["explain", "no-such-photo.png"]);
    assert_failure(&out, 1, "input not found: no-such-photo.png", &dir, &[]);
}

#[test]
fn missing_model_file() {
    let dir = workdir("missing-model");
    let out = gradcam(&dir, &["explain", &chelsea(), "--model", "missing.safetensors", "--arch", "resnet18"]);
    assert_failure(&out, 1, "model not found: missing.safetensors", &dir, &[]);
}

#[test]
fn unreadable_image() {
    let dir = workdir("unreadable");
    std::fs::write(dir.join("broken.png"), b"this is not a PNG").unwrap();
    let out = gradcam(&dir, &["explain", "broken.png"]);
    assert_failure(&out, 1, "cannot read image broken.png", &dir, &["broken.png"]);
    assert!(stderr(&out).contains("1 of 1 images could not be explained"), "{}", stderr(&out));
}

#[test]
fn empty_folder() {
    let dir = workdir("empty-folder");
    std::fs::create_dir(dir.join("nothing")).unwrap();
    let out = gradcam(&dir, &["explain", "nothing"]);
    assert_failure(&out, 1, "no images in folder nothing", &dir, &[]);
}

#[test]
fn bad_npy_shape() {
    let dir = workdir("bad-npy");
    ndarray_npy::write_npy(dir.join("x.npy"), &Array3::<f32>::zeros((1, 3, 4))).unwrap();
    let out = gradcam(&dir, &["explain", "x.npy"]);
    assert_failure(&out, 1, "cannot read tensor x.npy", &dir, &["x.npy"]);
}

#[test]
fn unknown_method() {
    let dir = workdir("unknown-method");
    let out = gradcam(&dir, &["explain", &chelsea(), "--method", "gradcam+"]);
    assert_failure(&out, 2, "unknown CAM method `gradcam+`", &dir, &[]);
    assert!(stderr(&out).contains("gradcam++"), "lists the known methods: {}", stderr(&out));
}

#[test]
fn unknown_backend() {
    let dir = workdir("unknown-backend");
    let out = gradcam(&dir, &["explain", &chelsea(), "--backend", "jax"]);
    assert_failure(&out, 2, "invalid value 'jax'", &dir, &[]);
    assert!(stderr(&out).contains("candle, tch, ort"), "{}", stderr(&out));
}

/// A backend left out of the build says how to get it; one built in rejects a file that is not
/// its model format with a clear error instead.
#[test]
fn backends_not_compiled_or_given_a_bad_model() {
    let dir = workdir("backends");
    std::fs::write(dir.join("fake.pt"), b"not TorchScript").unwrap();
    std::fs::write(dir.join("fake.onnx"), b"not ONNX").unwrap();
    let keep = ["fake.pt", "fake.onnx"];
    for (backend, model, compiled) in
        [("tch", "fake.pt", cfg!(feature = "tch")), ("ort", "fake.onnx", cfg!(feature = "ort"))]
    {
        let out = gradcam(&dir, &["explain", &chelsea(), "--backend", backend, "--model", model]);
        if compiled {
            assert_failure(&out, 1, &format!("cannot load model {model}"), &dir, &keep);
        } else {
            let message = format!("rebuild with --features {backend}");
            assert_failure(&out, 1, &message, &dir, &keep);
        }
    }
}
