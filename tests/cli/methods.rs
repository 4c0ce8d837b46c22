//! The methods beyond pytorch-grad-cam's classic ten, end to end: FinerCAM for a given class
//! with `--finer-alpha`, RandomCAM with `--seed`, and their bad values. Their numerics against
//! pytorch-grad-cam are the fixture suites' (`tests/src/lib.rs`); these check the flags reach
//! core.

use super::*;

/// The class explained: not chelsea's top-1 (285, Egyptian cat) but its neighbour, tabby cat.
const CLASS: &str = "281";

/// `(method, npy map)` of every final map of a `--json --npy-out maps.npy` run in `dir`.
fn final_maps(dir: &Path, out: &Output) -> Vec<(String, ndarray::Array2<f32>)> {
    let npy: Array3<f32> = ndarray_npy::read_npy(dir.join("maps.npy")).unwrap();
    json(out)["images"][0]["maps"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|m| {
            assert_eq!(m["class"], 281, "{m}");
            let index = m["npy_index"].as_u64()? as usize;
            Some((
                m["method"].as_str().unwrap().to_string(),
                npy.index_axis(ndarray::Axis(0), index).to_owned(),
            ))
        })
        .collect()
}

fn map_of<'m>(maps: &'m [(String, ndarray::Array2<f32>)], method: &str) -> &'m ndarray::Array2<f32> {
    &maps.iter().find(|(m, _)| m == method).unwrap_or_else(|| panic!("no {method} map")).1
}

fn max_diff(a: &ndarray::Array2<f32>, b: &ndarray::Array2<f32>) -> f32 {
    a.iter().zip(b).map(|(x, y)| (x - y).abs()).fold(0.0, f32::max)
}

fn run(dir: &Path, extra: &[&str]) -> Output {
    let mut args = vec!["explain".to_string(), chelsea()];
    args.extend(["--json", "--pictures", "heatmap", "--npy-out", "maps.npy"].map(String::from));
    args.extend(extra.iter().map(|s| s.to_string()));
    let _ = std::fs::remove_dir_all(dir.join("gradcam-out"));
    let _ = std::fs::remove_file(dir.join("maps.npy"));
    let out = command(dir, &args).output().expect("the gradcam binary runs");
    assert_success(&out);
    out
}

#[test]
fn finercam_of_a_given_class_with_alpha() {
    let dir = workdir("finercam-class");
    // alpha 0: the score is the class's logit (times Σp/(Σp + 1e-9)), so the map is Grad-CAM's.
    let out = run(&dir, &["--method", "gradcam,finercam", "--class", CLASS, "--finer-alpha", "0"]);
    let maps = final_maps(&dir, &out);
    let (gradcam, finer0) = (map_of(&maps, "gradcam").clone(), map_of(&maps, "finercam").clone());
    assert!(max_diff(&gradcam, &finer0) < 1e-4, "alpha 0 vs gradcam: {}", max_diff(&gradcam, &finer0));
    // alpha 1 (the default) subtracts the closest classes: another map.
    let out = run(&dir, &["--method", "finercam", "--class", CLASS]);
    let finer1 = map_of(&final_maps(&dir, &out), "finercam").clone();
    assert!(max_diff(&gradcam, &finer1) > 0.05, "alpha 1 changes nothing: {}", max_diff(&gradcam, &finer1));
    assert!(finer1.iter().all(|v| (0.0..=1.0).contains(v)));
}

#[test]
fn randomcam_is_reproducible_per_seed() {
    let dir = workdir("randomcam-seed");
    let maps = |seed: &str| {
        let out = run(&dir, &["--method", "randomcam", "--class", CLASS, "--seed", seed]);
        map_of(&final_maps(&dir, &out), "randomcam").clone()
    };
    let (a, b, c) = (maps("7"), maps("7"), maps("8"));
    assert_eq!(a, b, "the same seed gives the same map");
    assert!(max_diff(&a, &c) > 0.01, "another seed gives another map");
}

#[test]
fn bad_finer_alpha_and_seed() {
    let dir = workdir("finer-alpha-bad");
    for (flag, value) in [("--finer-alpha", "nan"), ("--finer-alpha", "inf"), ("--finer-alpha", "1e99")] {
        let out = gradcam(&dir, &["explain", &chelsea(), "--method", "finercam", flag, value]);
        assert_failure(&out, 2, "not a finite number", &dir, &[]);
        assert!(stderr(&out).contains("--finer-alpha"), "names the flag: {}", stderr(&out));
    }
    // A negative seed reaches the flag's own check (not clap's "unexpected argument '-1'").
    let out = gradcam(&dir, &["explain", &chelsea(), "--method", "randomcam", "--seed", "-1"]);
    assert_failure(&out, 2, "is not a seed", &dir, &[]);
    assert!(stderr(&out).contains("--seed"), "names the flag: {}", stderr(&out));
}

/// `--aug-smooth` and `--eigen-smooth` reach core: each changes the maps it should and no other,
/// the JSON says what was smoothed, and the augmentation is undone in the right frame: six flip
/// and brightness copies are a set closed under flipping, so smoothing the mirrored photo gives
/// the mirrored map (a missing or doubled un-flip breaks it).
#[test]
fn smoothing_flags_reach_core() {
    let dir = workdir("smoothing");
    let both = ["--method", "gradcam,eigencam", "--class", CLASS];
    let plain = final_maps(&dir, &run(&dir, &both));

    let out = run(&dir, &[&both[..], &["--eigen-smooth"]].concat());
    assert_eq!(json(&out)["eigen_smooth"], serde_json::json!(["gradcam"]), "{}", stdout(&out));
    assert_eq!(json(&out)["aug_smooth"], false);
    let eigen = final_maps(&dir, &out);
    assert!(
        max_diff(map_of(&plain, "gradcam"), map_of(&eigen, "gradcam")) > 0.01,
        "eigen-smooth changed nothing"
    );
    assert_eq!(map_of(&plain, "eigencam"), map_of(&eigen, "eigencam"), "EigenCAM ignores --eigen-smooth");

    let out = run(&dir, &[&both[..], &["--aug-smooth"]].concat());
    assert_eq!(json(&out)["aug_smooth"], true);
    let aug = final_maps(&dir, &out);
    for method in ["gradcam", "eigencam"] {
        let (p, a) = (map_of(&plain, method), map_of(&aug, method));
        assert!(max_diff(p, a) > 0.01, "{method}: aug-smooth changed nothing");
        assert!(a.iter().all(|v| (0.0..=1.0).contains(v)), "{method}: outside [0, 1]");
    }

    let photo = image::open(chelsea()).unwrap();
    let mirrored = dir.join("mirrored.png");
    photo.fliph().save(&mirrored).unwrap();
    let mut args = vec!["explain", mirrored.to_str().unwrap(), "--json", "--pictures", "heatmap"];
    args.extend(["--npy-out", "maps.npy", "--aug-smooth", "--method", "gradcam,eigencam", "--class", CLASS]);
    let _ = std::fs::remove_dir_all(dir.join("gradcam-out"));
    let _ = std::fs::remove_file(dir.join("maps.npy"));
    let out = gradcam(&dir, &args);
    assert_success(&out);
    let flipped = final_maps(&dir, &out);
    for method in ["gradcam", "eigencam"] {
        let want = map_of(&aug, method).slice(ndarray::s![.., ..;-1]).to_owned();
        let diff = max_diff(map_of(&flipped, method), &want);
        assert!(diff < 1e-4, "{method}: smoothing the mirrored photo vs mirroring the smoothed map: {diff}");
    }
}

/// With several layers, each layer's own picture under `--aug-smooth` is that layer's smoothed
/// map: the same overlay as a run with that layer alone.
#[test]
fn aug_smooth_smooths_each_layers_own_picture() {
    let dir = workdir("aug-smooth-layers");
    let photo = chelsea();
    let overlay = |layers: &[&str], out: &str| -> Vec<u8> {
        let mut args = vec!["explain", photo.as_str(), "--aug-smooth", "--pictures", "overlay", "--out", out];
        for layer in layers {
            args.extend(["--layer", layer]);
        }
        let out_dir = dir.join(out);
        let _ = std::fs::remove_dir_all(&out_dir);
        assert_success(&gradcam(&dir, &args));
        std::fs::read(out_dir.join("chelsea.blocks.6.gradcam.overlay.png")).expect("blocks.6's overlay")
    };
    let alone = overlay(&["blocks.6"], "alone");
    let beside = overlay(&["blocks.6", "bn2"], "beside");
    assert!(alone == beside, "blocks.6's smoothed overlay differs when bn2 is explained beside it");
}
