//! Never lose data: the items 1-6, each as it was reproduced.

use super::*;

/// Item 1: a failed run deleted earlier output (its rollback unlinked files it had renamed over
/// existing ones). `gradcam explain cat.png --out o`, then the same with `--class 5 --npy-out
/// /proc/x.npy` left `o` empty.
#[test]
fn a_failed_run_leaves_earlier_output_as_it_was() {
    let dir = workdir("safety-failed-run");
    assert_success(&gradcam(&dir, &["explain", &chelsea(), "--out", "o"]));
    let before = snapshot(&dir.join("o"));
    assert_eq!(before.len(), 3);
    let photo = chelsea();
    for extra in [&[][..], &["--overwrite"][..]] {
        let mut args = vec!["explain", &photo, "--class", "5", "--out", "o", "--npy-out", "/proc/x.npy"];
        args.extend_from_slice(extra);
        let out = gradcam(&dir, &args);
        assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
        assert_eq!(snapshot(&dir.join("o")), before, "{extra:?}: o changed:\n{}", stderr(&out));
    }
    // Without --overwrite, existing pictures are never replaced, and the run says so up front.
    let out = gradcam(&dir, &["explain", &chelsea(), "--class", "5", "--out", "o"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr(&out).contains("already exists") && stderr(&out).contains("--overwrite"),
        "{}",
        stderr(&out)
    );
    assert_eq!(snapshot(&dir.join("o")), before);
    // With it, they are replaced.
    assert_success(&gradcam(&dir, &["explain", &chelsea(), "--class", "5", "--out", "o", "--overwrite"]));
    let after = snapshot(&dir.join("o"));
    assert_eq!(after.len(), 3);
    assert_ne!(after, before, "class 5's maps differ from class 285's");
}

/// Item 3: the `--npy-out` temporary had a predictable name (`.NAME.<pid>.tmp`) and was opened
/// without O_EXCL, so a symlink planted there made the tool overwrite the link's target. Plant
/// links at every name the next two thousand processes would have used.
#[cfg(target_os = "linux")]
#[test]
fn a_planted_symlink_does_not_redirect_a_write() {
    let dir = workdir("safety-symlink");
    let victim = dir.join("victim.txt");
    std::fs::write(&victim, b"precious").unwrap();
    let last_pid: u32 = std::fs::read_to_string("/proc/sys/kernel/ns_last_pid")
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(1);
    for pid in last_pid + 1..last_pid + 2000 {
        std::os::unix::fs::symlink(&victim, dir.join(format!(".maps.npy.{pid}.tmp"))).unwrap();
    }
    let out = gradcam(&dir, &["explain", &chelsea(), "--npy-out", "maps.npy"]);
    assert_success(&out);
    assert_eq!(std::fs::read(&victim).unwrap(), b"precious");
    let maps: Array3<f32> = ndarray_npy::read_npy(dir.join("maps.npy")).unwrap();
    assert_eq!(maps.dim(), (1, 224, 224));
    // The planted links are all still there, untouched; nothing else appeared.
    let hidden = files(&dir).into_iter().filter(|f| f.starts_with('.')).count();
    assert_eq!(hidden, 1999);
}

/// Item 4: with `d1/chelsea.png d2/chelsea.png d1/chelsea-2.png`, two inputs wrote `chelsea-2.*`
/// and the JSON reported one path for both.
#[test]
fn inputs_with_colliding_names_get_unique_outputs() {
    let dir = workdir("safety-names");
    for (folder, name) in [("d1", "chelsea.png"), ("d2", "chelsea.png"), ("d1", "chelsea-2.png")] {
        std::fs::create_dir_all(dir.join(folder)).unwrap();
        std::fs::copy(chelsea(), dir.join(folder).join(name)).unwrap();
    }
    let out = gradcam(&dir, &["explain", "d1/chelsea.png", "d2/chelsea.png", "d1/chelsea-2.png", "--json"]);
    assert_success(&out);
    let summary = json(&out);
    let images = summary["images"].as_array().unwrap();
    let names: Vec<&str> = images.iter().map(|i| i["name"].as_str().unwrap()).collect();
    let grids: std::collections::HashSet<&str> = images.iter().map(|i| i["grid"].as_str().unwrap()).collect();
    assert_eq!(names.len(), 3);
    assert_eq!(grids.len(), 3, "one grid each: {names:?}");
    assert_eq!(files(&dir.join("gradcam-out")).len(), 9);
    assert_eq!(images[2]["input"], "d1/chelsea-2.png");
    assert_eq!(images[2]["name"], "chelsea-2", "an input keeps its own name when it can");
}

/// Item 5: `--npy-out` naming an input `.npy` overwrote it; `--out` equal to the input folder
/// read the tool's own outputs back on the next run.
#[test]
fn outputs_never_destroy_inputs() {
    let dir = workdir("safety-inputs");
    let input = Array4::from_shape_fn((1, 3, 64, 64), |(_, c, y, x)| ((c + y + x) % 7) as f32 / 4.0 - 0.7);
    ndarray_npy::write_npy(dir.join("x.npy"), &input).unwrap();
    let before = std::fs::read(dir.join("x.npy")).unwrap();
    for extra in [&[][..], &["--overwrite"][..]] {
        let mut args = vec!["explain", "x.npy", "--npy-out", "x.npy"];
        args.extend_from_slice(extra);
        let out = gradcam(&dir, &args);
        assert_eq!(out.status.code(), Some(1), "{extra:?}");
        assert!(stderr(&out).contains("--npy-out x.npy: that is the input"), "{}", stderr(&out));
        assert_eq!(std::fs::read(dir.join("x.npy")).unwrap(), before);
    }
    assert!(!dir.join("gradcam-out").exists());

    let photos = photos(&dir, "photos", 1);
    let out = gradcam(&dir, &["explain", "photos", "--out", "photos", "--json"]);
    assert_success(&out);
    assert_eq!(json(&out)["images"].as_array().unwrap().len(), 2);
    assert_eq!(files(&photos).len(), 2 + 6);
    let out = gradcam(&dir, &["explain", "photos", "--out", "photos", "--json", "--overwrite"]);
    assert_success(&out);
    let summary = json(&out);
    assert_eq!(summary["images"].as_array().unwrap().len(), 2, "its own pictures are not inputs");
    assert_eq!(summary["skipped_own_outputs"], 6);
    assert_eq!(files(&photos).len(), 2 + 6);
}

/// Item 6: `--json` with a path that is not UTF-8 panicked after writing the pictures.
#[cfg(unix)]
#[test]
fn a_path_that_is_not_utf8_is_no_panic() {
    use std::os::unix::ffi::OsStrExt;
    let dir = workdir("safety-utf8");
    let name = std::ffi::OsStr::from_bytes(b"caf\xe9.png");
    std::fs::copy(chelsea(), dir.join(name)).unwrap();
    let out = command(&dir, &[std::ffi::OsStr::new("explain"), name, std::ffi::OsStr::new("--json")])
        .output()
        .unwrap();
    assert_success(&out);
    let summary = json(&out);
    assert_eq!(summary["images"][0]["predictions"][0]["class"], 285);
    assert!(summary["images"][0]["input"].as_str().unwrap().starts_with("caf"));
    assert!(!stderr(&out).contains("panicked"));
}

/// Running the README's command twice keeps both runs: without `--out`, a second run writes to
/// `gradcam-out-2` instead of refusing or replacing the first run's pictures.
#[test]
fn a_second_default_run_gets_its_own_folder() {
    let dir = workdir("safety-default-out");
    assert_success(&gradcam(&dir, &["explain", &chelsea()]));
    let first = snapshot(&dir.join("gradcam-out"));
    assert_eq!(first.len(), 3);
    let out = gradcam(&dir, &["explain", &chelsea(), "--class", "5"]);
    assert_success(&out);
    assert!(stdout(&out).contains("gradcam-out-2"), "{}", stdout(&out));
    assert_eq!(snapshot(&dir.join("gradcam-out")), first);
    assert_eq!(snapshot(&dir.join("gradcam-out-2")).len(), 3);
    // --overwrite without --out means the default folder itself.
    assert_success(&gradcam(&dir, &["explain", &chelsea(), "--class", "5", "--overwrite"]));
    assert_ne!(snapshot(&dir.join("gradcam-out")), first);
    assert!(!dir.join("gradcam-out-3").exists());
}
