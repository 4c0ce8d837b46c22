//! The breadth fixtures' manifest (`tools/make_breadth_fixtures.py`), read into one [`Case`] per
//! model.

use std::path::{Path, PathBuf};

use gradcam_core::{Layout, Method};
use ndarray::{Array4, ArrayD, Ix4};
use serde_json::Value;
use tests::{method_from_fixture_name, read_json, read_npy, TOL};

/// One model of the suite, at its one layer.
#[derive(Clone, Debug)]
pub struct Case {
    /// The manifest's key, e.g. `swin_tiny`.
    pub key: String,
    /// The breadth fixtures folder.
    pub dir: PathBuf,
    /// The manifest's entry for the model (files, skipped exports, notes).
    pub entry: Value,
    /// The layer explained (a PyTorch module path).
    pub layer: String,
    /// The layout the reference folded the layer's output with.
    pub layout: Layout,
    /// The timm architecture backend-candle builds, when it ships it.
    pub candle_arch: Option<String>,
    /// The references per target, `top1` first.
    pub targets: Vec<TargetReference>,
    /// AblationCAM's batch size the references were made with (its values depend on it).
    pub ablation_batch_size: usize,
}

/// The references for one target of a [`Case`].
#[derive(Clone, Debug)]
pub struct TargetReference {
    /// `top1` or `rank2`.
    pub name: String,
    /// The class rank explained (0 = top-1).
    pub rank: usize,
    /// The classes grad-cam explained, per image.
    pub classes: Vec<usize>,
    /// The methods grad-cam ran.
    pub methods: Vec<Method>,
}

/// Every model of the manifest in `dir`, in manifest order.
pub fn cases(dir: &Path) -> Vec<Case> {
    let manifest = read_json(&dir.join("manifest.json")).unwrap_or_else(|e| panic!("{e}"));
    let models = manifest["models"].as_object().expect("the manifest lists models");
    let ablation_batch_size = manifest["ablation_batch_size"].as_u64().expect("ablation_batch_size") as usize;
    models.iter().map(|(key, entry)| case(dir, key, entry, ablation_batch_size)).collect()
}

fn case(dir: &Path, key: &str, entry: &Value, ablation_batch_size: usize) -> Case {
    let text = |v: &Value, what: &str| -> String {
        v.as_str().unwrap_or_else(|| panic!("manifest: {key}: {what} is not a string")).to_string()
    };
    let targets = entry["targets"].as_object().unwrap_or_else(|| panic!("manifest: {key}: no targets"));
    let mut targets: Vec<TargetReference> = targets
        .iter()
        .map(|(name, t)| TargetReference {
            name: name.clone(),
            rank: t["rank"].as_u64().unwrap_or_else(|| panic!("manifest: {key}/{name}: rank")) as usize,
            classes: t["classes"]
                .as_array()
                .unwrap_or_else(|| panic!("manifest: {key}/{name}: classes"))
                .iter()
                .map(|c| c.as_u64().expect("a class index") as usize)
                .collect(),
            methods: t["methods"]
                .as_array()
                .unwrap_or_else(|| panic!("manifest: {key}/{name}: methods"))
                .iter()
                .map(|m| {
                    let m = text(m, "a method");
                    method_from_fixture_name(&m)
                        .unwrap_or_else(|| panic!("manifest: {key}: unknown method {m}"))
                })
                .collect(),
        })
        .collect();
    targets.sort_by_key(|t| t.rank);
    Case {
        key: key.to_string(),
        dir: dir.to_path_buf(),
        layer: text(&entry["layer"], "layer"),
        layout: text(&entry["layout"]["kind"], "layout").parse().unwrap_or_else(|e| panic!("{key}: {e}")),
        candle_arch: entry["candle_arch"].as_str().map(str::to_string),
        entry: entry.clone(),
        targets,
        ablation_batch_size,
    }
}

impl Case {
    /// The tolerance for `quantity` (`activations`, `gradients`, `logits`, or `scaled.<method>`
    /// for a per-layer map): [`TOL`], or twice the reference's own fold noise where that is
    /// larger. The generator records, as `fold_noise`, how far the reference moves when its
    /// BatchNorms are folded into the convolutions, as backend-tch and ONNX Runtime fold them;
    /// deep random networks amplify that rounding past [`TOL`] (inception_v3's activations).
    pub fn tolerance(&self, quantity: &str) -> f32 {
        let noise = quantity
            .split('.')
            .try_fold(&self.entry["fold_noise"], |v, part| v.get(part))
            .and_then(Value::as_f64)
            .unwrap_or(0.0) as f32;
        TOL.max(2.0 * noise)
    }

    /// The export of `kind` (`traced`, `legacy_fixed`, `dynamo_dynamic`, `safetensors`, …), when
    /// the generator made one.
    pub fn file(&self, kind: &str) -> Option<PathBuf> {
        self.entry["files"][kind].as_str().map(|f| self.dir.join(f))
    }

    /// Why torch could not make the export of `kind`, when it could not.
    pub fn skipped(&self, kind: &str) -> Option<String> {
        self.entry["skipped"][kind].as_str().map(str::to_string)
    }

    /// The model's input size `(H, W)`.
    pub fn input_hw(&self) -> (usize, usize) {
        let hw = &self.entry["input"]["hw"];
        let side =
            |i: usize| hw[i].as_u64().unwrap_or_else(|| panic!("manifest: {}: input.hw", self.key)) as usize;
        (side(0), side(1))
    }

    /// The model's input batch `(B, 3, H, W)`.
    pub fn input(&self) -> Result<Array4<f32>, String> {
        let file = self.entry["input"]["file"].as_str().ok_or("manifest: no input file")?;
        read_npy::<f32>(&self.dir.join(file))?
            .into_dimensionality::<Ix4>()
            .map_err(|e| format!("{file} is not (B, 3, H, W): {e}"))
    }

    /// A reference array of the model (`logits.npy`, `activations.npy`, `ties.npy`), or of one of
    /// its targets (`top1/gradients.npy`).
    pub fn npy<T: ndarray_npy::ReadableElement>(&self, name: &str) -> Result<ArrayD<T>, String> {
        read_npy(&self.dir.join(&self.key).join(name))
    }
}

impl TargetReference {
    /// `name` inside this target's folder, relative to the model's folder.
    pub fn file(&self, name: &str) -> String {
        format!("{}/{name}", self.name)
    }
}
