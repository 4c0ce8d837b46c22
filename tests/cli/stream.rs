//! The streaming run: manifest, resume, shards, a bad image among good ones, top-K classes.

use std::collections::BTreeSet;

use super::*;

fn manifest_lines(path: &Path) -> Vec<Value> {
    std::fs::read_to_string(path)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("bad manifest line {l:?}: {e}")))
        .collect()
}

#[test]
fn manifest_records_every_image_and_resume_skips_them() {
    let dir = workdir("stream-resume");
    photos(&dir, "photos", 2);
    let args = ["explain", "photos", "--manifest", "done.jsonl", "--batch", "3"];
    let out = gradcam(&dir, &args);
    assert_success(&out);
    let lines = manifest_lines(&dir.join("done.jsonl"));
    assert_eq!(lines.len(), 4);
    let first = &lines[0];
    assert_eq!(first["input"], "photos/chelsea-00.png");
    assert_eq!(first["name"], "chelsea-00");
    assert_eq!(first["predictions"][0]["class"], 285);
    assert_eq!(first["maps"][0]["method"], "gradcam");
    assert_eq!(first["maps"][0]["layout"], "nchw");
    assert_eq!(first["layers"][0]["layout"], "nchw");
    for file in first["files"].as_array().unwrap() {
        assert!(dir.join(file.as_str().unwrap()).is_file(), "{file}");
    }
    assert_eq!(first["files"].as_array().unwrap().len(), 3);

    // The manifest exists: a fresh run refuses, a resumed one has nothing to do.
    let out = gradcam(&dir, &args);
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).contains("--resume"), "{}", stderr(&out));
    let mut resume = args.to_vec();
    resume.push("--resume");
    let out = gradcam(&dir, &resume);
    assert_success(&out);
    assert!(stdout(&out).contains("skipped 4 images the manifest lists as done"), "{}", stdout(&out));
    assert_eq!(manifest_lines(&dir.join("done.jsonl")).len(), 4);

    // An image whose files are gone is done again, and only that one.
    for file in lines[1]["files"].as_array().unwrap() {
        std::fs::remove_file(dir.join(file.as_str().unwrap())).unwrap();
    }
    let out = gradcam(&dir, &resume);
    assert_success(&out);
    let after = manifest_lines(&dir.join("done.jsonl"));
    assert_eq!(after.len(), 5);
    assert_eq!(after[4]["input"], lines[1]["input"]);
}

#[test]
fn shards_split_the_inputs_between_processes() {
    let dir = workdir("stream-shards");
    photos(&dir, "photos", 4);
    let mut seen = Vec::new();
    for k in 0..3 {
        let shard = format!("{k}/3");
        let manifest = format!("m{k}.jsonl");
        let out = gradcam(&dir, &["explain", "photos", "--shard", &shard, "--manifest", &manifest, "--json"]);
        assert_success(&out);
        let summary = json(&out);
        assert_eq!(summary["inputs_found"], 8);
        let names: Vec<String> = summary["images"]
            .as_array()
            .unwrap()
            .iter()
            .map(|i| i["name"].as_str().unwrap().to_string())
            .collect();
        assert_eq!(manifest_lines(&dir.join(&manifest)).len(), names.len());
        seen.extend(names);
    }
    let unique: BTreeSet<&String> = seen.iter().collect();
    assert_eq!(seen.len(), 8, "every input in exactly one shard: {seen:?}");
    assert_eq!(unique.len(), 8);
    let out = gradcam(&dir, &["explain", "photos", "--shard", "3/3"]);
    assert_eq!(out.status.code(), Some(2));
}

#[test]
fn a_bad_image_fails_alone() {
    let dir = workdir("stream-bad-one");
    let folder = photos(&dir, "photos", 1);
    std::fs::write(folder.join("broken.png"), b"not a png").unwrap();
    let out = gradcam(&dir, &["explain", "photos", "--json", "--manifest", "m.jsonl"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).contains("cannot read image photos/broken.png"), "{}", stderr(&out));
    assert!(stderr(&out).contains("1 of 3 images could not be explained"), "{}", stderr(&out));
    let summary = json(&out);
    assert_eq!(summary["images"].as_array().unwrap().len(), 2);
    assert_eq!(summary["failed"][0]["input"], "photos/broken.png");
    assert_eq!(manifest_lines(&dir.join("m.jsonl")).len(), 2);
}

#[test]
fn top_k_explains_each_rank_with_one_pass_per_rank() {
    let dir = workdir("stream-top");
    let out = gradcam(&dir, &["explain", &chelsea(), "--top", "3", "--json", "--pictures", "overlay"]);
    assert_success(&out);
    let summary = json(&out);
    let image = &summary["images"][0];
    let predicted: Vec<&Value> =
        image["predictions"].as_array().unwrap().iter().map(|p| &p["class"]).take(3).collect();
    let maps = image["maps"].as_array().unwrap();
    assert_eq!(maps.len(), 3);
    for (rank, m) in maps.iter().enumerate() {
        assert_eq!(&m["class"], predicted[rank], "rank {rank} explains the rank-{rank} class");
        assert_eq!(m["rank"], rank);
        assert!(m["heatmap"].is_null());
    }
    assert!(image["grid"].is_null());
    assert_eq!(files(&dir.join("gradcam-out")).len(), 3, "only overlays, as asked");
}
