//! Runs killed at random points, by SIGKILL and by SIGINT: every file that existed before is
//! intact, no temporary is left, and after SIGINT every image's files are all there or none.

use std::collections::{BTreeMap, BTreeSet};
use std::process::Stdio;
use std::time::Duration;

use super::*;

/// The image name a picture belongs to (`chelsea-03.bn2.gradcam.overlay.png` → `chelsea-03`).
fn image_of(file: &str) -> Option<&str> {
    file.split_once('.').map(|(name, _)| name)
}

fn manifest_names(path: &Path) -> BTreeSet<String> {
    let Ok(text) = std::fs::read_to_string(path) else { return BTreeSet::new() };
    text.lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .map(|v| v["name"].as_str().unwrap().to_string())
        .collect()
}

/// Plants files "someone else" owns in a fresh output folder; returns them with their bytes.
fn plant(out_dir: &Path) -> Vec<(String, Vec<u8>)> {
    std::fs::create_dir_all(out_dir).unwrap();
    std::fs::write(out_dir.join("notes.txt"), b"do not touch").unwrap();
    std::fs::copy(chelsea(), out_dir.join("zebra.grid.png")).unwrap();
    snapshot(out_dir)
}

#[test]
fn killed_runs_lose_nothing_and_leave_no_temporaries() {
    let dir = workdir("faults");
    let folder = photos(&dir, "photos", 4);
    let before_photos = snapshot(&folder);
    let mut seed = 0x2545_f491_4f6c_dd1du64;
    let mut last_interrupted = None;
    for round in 0..12 {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        let delay = Duration::from_millis(100 + seed % 2500);
        let sigint = round % 2 == 0;
        let out = format!("out-{round}");
        let manifest = format!("m-{round}.jsonl");
        let out_dir = dir.join(&out);
        let before_out = plant(&out_dir);
        let pre_existing: BTreeSet<String> = before_out.iter().map(|(f, _)| f.clone()).collect();
        let args = ["explain", "photos", "--out", &out, "--manifest", &manifest, "--batch", "2"];
        let child = command(&dir, &args).stdout(Stdio::null()).stderr(Stdio::piped()).spawn().unwrap();
        std::thread::sleep(delay);
        let signal = if sigint { libc::SIGINT } else { libc::SIGKILL };
        // SAFETY: kill(2) takes plain integers; the child is ours and not yet reaped, so its pid
        // names no other process.
        unsafe { libc::kill(child.id() as i32, signal) };
        let output = child.wait_with_output().unwrap();
        let why = format!(
            "round {round} ({}, {delay:?}): {}",
            if sigint { "SIGINT" } else { "SIGKILL" },
            stderr(&output)
        );

        // Every file that existed before the run is as it was.
        for (file, bytes) in &before_out {
            assert_eq!(&std::fs::read(out_dir.join(file)).unwrap(), bytes, "{file} changed; {why}");
        }
        assert_eq!(snapshot(&folder), before_photos, "an input changed; {why}");
        // No temporary anywhere: every name is a picture of an image, or was there before.
        let all = files(&dir);
        assert!(
            all.iter().all(|f| !f.contains("/.") && !f.starts_with('.') && !f.ends_with(".tmp")),
            "{all:?}; {why}"
        );
        let mut per_image: BTreeMap<String, usize> = BTreeMap::new();
        for f in files(&out_dir).into_iter().filter(|f| !pre_existing.contains(f)) {
            assert!(f.ends_with(".png"), "{f}; {why}");
            *per_image.entry(image_of(&f).unwrap().to_string()).or_default() += 1;
        }
        let listed = manifest_names(&dir.join(&manifest));
        for name in &listed {
            assert_eq!(per_image.get(name), Some(&3), "{name} is listed but incomplete; {why}");
        }
        if sigint {
            // A clean stop never splits an image's files: what is there is listed, and complete.
            let unlisted: Vec<&String> = per_image.keys().filter(|n| !listed.contains(*n)).collect();
            assert!(unlisted.is_empty(), "{unlisted:?}; {why}");
            match output.status.code() {
                Some(130) => {
                    assert!(stderr(&output).contains("stopped by SIGINT"), "{why}");
                    last_interrupted = Some((out, manifest, before_out));
                }
                Some(0) => assert_eq!(listed.len(), 8, "{why}"),
                // Killed by the signal itself before its handler was installed.
                None => assert!(listed.is_empty(), "{why}"),
                Some(other) => panic!("exit status {other}; {why}"),
            }
        }
        // After SIGKILL the manifest still lists only complete images (checked above); the
        // image being placed at that instant may have some of its files without a line.
    }

    // A run stopped by SIGINT resumes where it stopped and finishes the work.
    let (out, manifest, before_out) = last_interrupted.expect("some SIGINT landed mid-run");
    let output = gradcam(&dir, &["explain", "photos", "--out", &out, "--manifest", &manifest, "--resume"]);
    assert_success(&output);
    assert_eq!(manifest_names(&dir.join(&manifest)).len(), 8);
    assert_eq!(std::fs::read_to_string(dir.join(&manifest)).unwrap().lines().count(), 8, "each image once");
    assert_eq!(files(&dir.join(&out)).len(), 8 * 3 + before_out.len());
}

/// SIGINT in the middle of a long method ends the run at its next forward pass, not after all of
/// them: ScoreCAM over Lite0's 1,280 head channels under `--aug-smooth` is 6 × 40 passes of 32
/// images (minutes); the run must be gone well within a minute of the signal, with nothing
/// written and no temporary left.
#[test]
fn sigint_stops_a_long_method_between_passes() {
    let dir = workdir("sigint-scorecam");
    let photo = chelsea();
    let args = ["explain", &photo, "--method", "scorecam", "--layer", "bn2", "--aug-smooth", "--out", "out"];
    let mut child = command(&dir, &args).stdout(Stdio::null()).stderr(Stdio::piped()).spawn().unwrap();
    // Past start-up (the handler is installed before the model loads) and into the passes.
    std::thread::sleep(Duration::from_secs(5));
    // SAFETY: kill(2) takes plain integers; the child is ours and not yet reaped.
    unsafe { libc::kill(child.id() as i32, libc::SIGINT) };
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while child.try_wait().unwrap().is_none() {
        if std::time::Instant::now() > deadline {
            child.kill().unwrap();
            panic!("still explaining a minute after SIGINT");
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let output = child.wait_with_output().unwrap();
    assert_eq!(output.status.code(), Some(130), "{}", stderr(&output));
    assert!(stderr(&output).contains("stopped by SIGINT: 0 of 1 images written"), "{}", stderr(&output));
    assert!(files(&dir).is_empty(), "{:?}", files(&dir));
}
