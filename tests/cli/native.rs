//! A binary built with `--features tch` or `ort` starts by itself: it finds the libtorch and the
//! ONNX Runtime it was built against without `LD_LIBRARY_PATH`, `LIBTORCH` or `ORT_DYLIB_PATH`
//! (the run path and the built-in library path that the root build.rs records).

use super::*;

/// The path of fixture model `name`.
fn fixture(name: &str) -> String {
    tests::require(tests::fixtures_dir().join(name)).display().to_string()
}

/// `gradcam ARGS` in `dir` with every library-path variable removed.
fn without_library_env(dir: &Path, args: &[&str]) -> Output {
    let mut cmd = command(dir, args);
    for var in ["LD_LIBRARY_PATH", "LIBTORCH", "ORT_DYLIB_PATH"] {
        cmd.env_remove(var);
    }
    cmd.output().expect("the gradcam binary runs")
}

/// `gradcam layers` on a fixture model with every library-path variable removed.
fn layers_without_library_env(backend: &str, model: &str) -> Output {
    let dir = workdir(&format!("native-{backend}"));
    without_library_env(&dir, &["layers", "--backend", backend, "--model", &fixture(model)])
}

#[cfg(feature = "tch")]
#[test]
fn the_tch_binary_finds_libtorch_by_itself() {
    let out = layers_without_library_env("tch", "resnet18.traced.pt");
    assert_success(&out);
    assert!(stdout(&out).contains("layer4"), "{}", stdout(&out));
}

#[cfg(feature = "ort")]
#[test]
fn the_ort_binary_finds_onnx_runtime_by_itself() {
    let out = layers_without_library_env("ort", "resnet18.legacy.onnx");
    assert_success(&out);
    assert!(stdout(&out).contains("layer4"), "{}", stdout(&out));
}

#[cfg(feature = "ort")]
#[test]
fn gradcam_export_finds_onnx_runtime_by_itself() {
    let dir = workdir("native-export");
    let model = tests::require(tests::fixtures_dir().join("resnet18.legacy.onnx"));
    let mut cmd =
        command(&dir, &["export", &model.display().to_string(), "--layer", "layer4", "-o", "x.onnx"]);
    for var in ["LD_LIBRARY_PATH", "LIBTORCH", "ORT_DYLIB_PATH"] {
        cmd.env_remove(var);
    }
    let out = cmd.output().expect("the gradcam binary runs");
    assert_success(&out);
    assert!(dir.join("x.onnx").is_file());
}

/// A convolution whose BatchNorm the exporter folded into it is not "unknown": the error names
/// the layer that holds its output and the export option that keeps it (found as a user:
/// `--layer layer1.0.conv1` on a dynamo export said "unknown layer").
#[cfg(feature = "ort")]
#[test]
fn a_folded_convolution_names_where_to_look() {
    for (model, next) in [("resnet18.dynamo.onnx", "layer1.0.bn1"), ("resnet18.legacy.onnx", "layer1.0.act1")]
    {
        let dir = workdir(&format!("folded-{model}"));
        let out =
            gradcam(&dir, &["explain", &chelsea(), "--model", &fixture(model), "--layer", "layer1.0.conv1"]);
        assert_failure(&out, 1, "layer `layer1.0.conv1` has no output of its own in this file", &dir, &[]);
        assert!(stderr(&out).contains(next) && stderr(&out).contains("optimize=False"), "{}", stderr(&out));
    }
}
