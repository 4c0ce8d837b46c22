//! `gradcam evaluate` end to end on the shipped photos and Lite0: the table, the JSON, the flags
//! reaching core, and the usage errors. The metrics' numerics against pytorch-grad-cam are
//! gradcam-core's (`gradcam-core/tests/metrics.rs`).

use super::*;

fn coffee() -> String {
    assets().join("images/coffee.png").display().to_string()
}

/// `gradcam evaluate` of both photos at 112x112 (ROAD's imputation is the slow part: a quarter
/// of the pixels of 224x224 keeps these tests short), with `extra`.
fn evaluate(dir: &Path, extra: &[&str]) -> Output {
    let mut args = vec!["evaluate".to_string(), chelsea(), coffee(), "--size".into(), "112x112".into()];
    args.extend(extra.iter().map(|s| s.to_string()));
    command(dir, &args).output().expect("the gradcam binary runs")
}

#[test]
fn two_methods_every_metric_json_per_image() {
    let dir = workdir("evaluate-json");
    let out = evaluate(&dir, &["--method", "gradcam,eigencam", "--json"]);
    assert_success(&out);
    let summary = json(&out);
    assert_eq!(summary["ranked_by"], "road-combined");
    assert_eq!(summary["images"], 2);
    assert_eq!(summary["road_noise"].as_f64().unwrap(), f64::from(0.01f32));
    let metrics: Vec<&str> =
        summary["metrics"].as_array().unwrap().iter().map(|m| m["name"].as_str().unwrap()).collect();
    assert_eq!(
        metrics,
        ["confidence-change", "drop", "increase", "road-most", "road-least", "road-combined"]
    );
    assert_eq!(summary["metrics"][1]["higher_is_better"], false, "drop: lower is better");

    let rows = summary["rows"].as_array().unwrap();
    assert_eq!(rows.len(), 2, "one row per method at the one layer");
    let combined: Vec<f64> = rows.iter().map(|r| r["mean"]["road-combined"].as_f64().unwrap()).collect();
    assert!(combined[0] >= combined[1], "best first: {combined:?}");
    let mut methods: Vec<&str> = rows.iter().map(|r| r["method"].as_str().unwrap()).collect();
    methods.sort();
    assert_eq!(methods, ["eigencam", "gradcam"]);

    let per_image = summary["per_image"].as_array().unwrap();
    assert_eq!(per_image.len(), 4, "2 images x 2 methods");
    for record in per_image {
        for m in &metrics {
            let v = record["values"][m].as_f64().unwrap_or_else(|| panic!("{m} missing: {record}"));
            assert!(v.is_finite(), "{m} = {v}");
        }
        let v = &record["values"];
        assert!(v["drop"].as_f64().unwrap() >= 0.0);
        assert!([0.0, 1.0].contains(&v["increase"].as_f64().unwrap()));
        let change = v["confidence-change"].as_f64().unwrap();
        assert!((v["drop"].as_f64().unwrap() - (-change).max(0.0)).abs() < 1e-6);
    }
    let chelsea_gradcam = per_image
        .iter()
        .find(|r| r["name"] == "chelsea" && r["method"] == "gradcam")
        .expect("chelsea's record");
    assert_eq!(chelsea_gradcam["class"], 285, "the top-1 class");
    // Each row's mean is the mean of its images.
    for row in rows {
        let own: Vec<f64> = per_image
            .iter()
            .filter(|r| r["method"] == row["method"])
            .map(|r| r["values"]["road-most"].as_f64().unwrap())
            .collect();
        let mean = own.iter().sum::<f64>() / own.len() as f64;
        assert!((mean - row["mean"]["road-most"].as_f64().unwrap()).abs() < 1e-6);
    }
}

/// FullGrad reads every bias layer, not `--layer`: one row and one record per image, without a
/// layer, however many layers the other methods are scored at.
#[cfg(feature = "candle")]
#[test]
fn fullgrad_is_scored_once_whatever_the_layers() {
    let dir = workdir("evaluate-fullgrad");
    let layers = ["--layer", "blocks.5", "--layer", "blocks.6"];
    let out = evaluate(
        &dir,
        &[&layers[..], &["--method", "gradcam,fullgrad", "--metric", "drop", "--json"]].concat(),
    );
    assert_success(&out);
    let summary = json(&out);
    let rows: Vec<(String, serde_json::Value)> = summary["rows"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| (r["method"].as_str().unwrap().to_string(), r["layer"].clone()))
        .collect();
    assert_eq!(rows.len(), 3, "gradcam at two layers, fullgrad once: {rows:?}");
    assert!(rows.contains(&("fullgrad".into(), serde_json::Value::Null)), "{rows:?}");
    let per_image = summary["per_image"].as_array().unwrap();
    let fullgrad: Vec<_> = per_image.iter().filter(|r| r["method"] == "fullgrad").collect();
    assert_eq!(fullgrad.len(), 2, "one record per image");
    assert!(fullgrad.iter().all(|r| r["layer"].is_null()), "{fullgrad:?}");
    assert_eq!(per_image.len(), 2 * 2 + 2);
}

#[test]
fn table_names_directions_and_ranks_by_the_first_metric_without_road_combined() {
    let dir = workdir("evaluate-table");
    let out =
        evaluate(&dir, &["--method", "gradcam,eigencam", "--metric", "drop,road-most", "--road-noise", "0"]);
    assert_success(&out);
    let text = stdout(&out);
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), 5, "header, directions, 2 rows, legend:\n{text}");
    assert!(lines[0].starts_with("method") && lines[0].contains("drop") && lines[0].contains("road-most"));
    assert!(!lines[0].contains("road-combined"), "only the metrics asked for:\n{text}");
    assert_eq!(lines[1].split_whitespace().collect::<Vec<_>>(), ["lower", "lower"], "{text}");
    assert!(lines[4].contains("best first by drop (lower is better)"), "{text}");
    assert!(lines[4].contains("ROAD noise 0"), "{text}");
    let drops: Vec<f64> =
        lines[2..4].iter().map(|l| l.split_whitespace().nth(2).unwrap().parse().unwrap()).collect();
    assert!(drops[0] <= drops[1], "lower drop first: {drops:?}");
    assert!(files(&dir).is_empty(), "evaluate writes no files");
}

#[test]
fn top_k_scores_each_rank_of_each_image() {
    let dir = workdir("evaluate-top");
    let out = evaluate(&dir, &["--metric", "drop", "--top", "2", "--softmax", "--json"]);
    assert_success(&out);
    let summary = json(&out);
    assert_eq!(summary["target"], "softmax");
    assert_eq!(summary["rows"][0]["count"], 4, "2 images x 2 ranks in the one row");
    let per_image = summary["per_image"].as_array().unwrap();
    for name in ["chelsea", "coffee"] {
        let ranks: Vec<(u64, u64)> = per_image
            .iter()
            .filter(|r| r["name"] == name)
            .map(|r| (r["rank"].as_u64().unwrap(), r["class"].as_u64().unwrap()))
            .collect();
        assert_eq!(ranks.len(), 2, "{name}: {ranks:?}");
        assert_eq!((ranks[0].0, ranks[1].0), (0, 1));
        assert_ne!(ranks[0].1, ranks[1].1, "{name}: two different classes");
    }
}

#[test]
fn noise_and_seed_reach_road() {
    let dir = workdir("evaluate-noise");
    let road_most = |extra: &[&str]| -> Vec<f64> {
        let mut args = vec!["--metric", "road-most", "--json", "--batch", "1"];
        args.extend(extra);
        let out = evaluate(&dir, &args);
        assert_success(&out);
        json(&out)["per_image"]
            .as_array()
            .unwrap()
            .iter()
            .map(|r| r["values"]["road-most"].as_f64().unwrap())
            .collect()
    };
    let seeded = road_most(&["--seed", "3"]);
    assert_eq!(seeded, road_most(&["--seed", "3"]), "same seed, same values");
    assert_ne!(seeded, road_most(&["--seed", "4"]), "the seed draws the noise");
    assert_ne!(seeded, road_most(&["--road-noise", "0"]));
}

#[test]
fn bad_metrics_noise_and_inputs_are_usage_errors() {
    let dir = workdir("evaluate-errors");
    for (args, flag, message) in [
        (vec!["--metric", "road"], "--metric", "unknown metric `road`"),
        (vec!["--metric", "drop,,increase"], "--metric", "unknown metric"),
        (vec!["--road-noise", "-0.5"], "--road-noise", "not a noise level"),
        (vec!["--road-noise", "nan"], "--road-noise", "not a noise level"),
        (vec!["--road-noise", "inf"], "--road-noise", "not a noise level"),
    ] {
        let out = evaluate(&dir, &args);
        assert_failure(&out, 2, flag, &dir, &[]);
        assert!(stderr(&out).contains(message), "{args:?}: {}", stderr(&out));
    }
    let out = gradcam(&dir, &["evaluate"]);
    assert_failure(&out, 2, "<INPUT>", &dir, &[]);
    let out = gradcam(&dir, &["evaluate", "missing.png"]);
    assert_failure(&out, 1, "input not found: missing.png", &dir, &[]);
}

/// An image that cannot be read fails alone, as in `explain`: the others are scored, the error
/// is said and listed, and the run ends with status 1. Before, the first bad image ended the
/// run with nothing scored.
#[test]
fn a_bad_image_fails_alone() {
    let dir = workdir("evaluate-bad-one");
    std::fs::write(dir.join("broken.png"), b"not a png").unwrap();
    let out = evaluate(&dir, &["broken.png", "--metric", "drop", "--json"]);
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    assert!(stderr(&out).contains("cannot read image broken.png"), "{}", stderr(&out));
    assert!(stderr(&out).contains("1 of 3 images"), "{}", stderr(&out));
    let summary = json(&out);
    assert_eq!(summary["images"], 2);
    assert_eq!(summary["failed"][0]["input"], "broken.png");
    assert_eq!(summary["per_image"].as_array().unwrap().len(), 2, "chelsea and coffee scored");
    // Nothing readable: the error itself, no table.
    let out = gradcam(&dir, &["evaluate", "broken.png"]);
    assert_failure(&out, 1, "cannot read image broken.png", &dir, &["broken.png"]);
    assert!(stdout(&out).is_empty(), "{}", stdout(&out));
}

/// `explain --method auto` explains with the candidate `evaluate --method auto` ranks first by
/// road-combined on the same images (same seed, same noise), and says which and why.
#[test]
fn explain_method_auto_picks_evaluates_best() {
    let dir = workdir("explain-auto");
    let out = evaluate(&dir, &["--method", "auto", "--metric", "road-combined", "--json"]);
    assert_success(&out);
    let summary = json(&out);
    let rows = summary["rows"].as_array().unwrap();
    assert_eq!(rows.len(), 10, "every candidate at the one layer: {rows:?}");
    let best = rows[0]["method"].as_str().unwrap().to_string();
    let best_score = rows[0]["mean"]["road-combined"].as_f64().unwrap();
    for excluded in ["scorecam", "ablationcam", "kpcacam", "randomcam"] {
        assert!(rows.iter().all(|r| r["method"] != excluded), "{excluded} is no candidate");
    }

    let mut args = vec!["explain".to_string(), chelsea(), coffee(), "--size".into(), "112x112".into()];
    args.extend(["--method", "auto,eigencam", "--json", "--pictures", "heatmap"].map(String::from));
    let out = command(&dir, &args).output().expect("the gradcam binary runs");
    assert_success(&out);
    let explained = json(&out);
    let chosen = &explained["method_chosen_automatically"];
    assert_eq!(chosen["method"], best.as_str(), "{chosen}");
    let score = chosen["road_combined"].as_f64().unwrap();
    assert!((score - best_score).abs() < 1e-9, "{score} vs evaluate's {best_score}");
    let mut methods = vec![best.as_str()];
    if best != "eigencam" {
        methods.push("eigencam");
    }
    assert_eq!(explained["methods"], serde_json::json!(methods), "the choice first, then the named ones");

    // Pictures of any candidate are refused before anything is ranked: keep only EigenCAM's.
    if best != "eigencam" {
        let folder = dir.join("gradcam-out");
        for f in files(&folder).into_iter().filter(|f| !f.contains(".eigencam.")) {
            std::fs::remove_file(folder.join(f)).unwrap();
        }
        let before = snapshot(&dir);
        let mut args = vec!["explain".to_string(), chelsea(), coffee(), "--size".into(), "112x112".into()];
        args.extend(["--method", "auto", "--pictures", "heatmap", "--out", "gradcam-out"].map(String::from));
        let out = command(&dir, &args).output().expect("the gradcam binary runs");
        assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
        assert!(stderr(&out).contains("already exist"), "{}", stderr(&out));
        assert_eq!(snapshot(&dir), before, "a refused run changed files");
    }
}
