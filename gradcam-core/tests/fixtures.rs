//! gradcam-core against pytorch-grad-cam 1.5.7, through the public `explain` pipeline.
//!
//! The fixtures under `tests/fixtures/<case>/` are written by `tools/make_core_fixtures.py` (layout in
//! tools/README.md). A replay `CamModel` hands `explain` the recorded activations, gradients and logits,
//! and answers ScoreCAM's / AblationCAM's extra forward passes with the scores grad-cam recorded, while
//! checking that the masked inputs and ablated activations it receives are the ones grad-cam built.

use std::cell::Cell;
use std::path::PathBuf;
use std::rc::Rc;

use gradcam_core::{
    explain, CamError, CamModel, CamOptions, Capture, LayerInfo, LayerTensor, LayerView, Method, Seed,
    Target, TokenGrid,
};
use ndarray::{s, Array1, Array2, Array3, Array4, ArrayD, ArrayView4, Axis, Dimension};
use ndarray_npy::read_npy;

/// Before upsampling (raw and scaled maps), relative to the map's largest magnitude when it exceeds 1.
const TOL_LAYER: f32 = 1e-5;
/// After upsampling (final maps in [0, 1]).
const TOL_FINAL: f32 = 1e-4;
/// ScoreCAM's masked inputs (normalised masks times the input).
const TOL_MASK: f32 = 1e-5;

fn fixture_dir(case: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures").join(case)
}

fn load<D: Dimension>(case: &str, name: &str) -> ndarray::Array<f32, D> {
    let path = fixture_dir(case).join(name);
    let a: ArrayD<f32> = read_npy(&path).unwrap_or_else(|e| panic!("reading {}: {e}", path.display()));
    a.into_dimensionality().unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

struct Meta {
    input_hw: (usize, usize),
    layers: Vec<String>,
    classes: Vec<usize>,
    prefix_tokens: usize,
    grid: Option<(usize, usize)>,
    ablation_batch_size: usize,
}

fn meta(case: &str) -> Meta {
    let path = fixture_dir(case).join("meta.json");
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("reading {}: {e}", path.display()));
    let v: serde_json::Value = serde_json::from_str(&text).unwrap();
    let pair = |x: &serde_json::Value| (x[0].as_u64().unwrap() as usize, x[1].as_u64().unwrap() as usize);
    Meta {
        input_hw: pair(&v["input_hw"]),
        layers: v["layers"].as_array().unwrap().iter().map(|l| l.as_str().unwrap().to_string()).collect(),
        classes: v["classes"].as_array().unwrap().iter().map(|c| c.as_u64().unwrap() as usize).collect(),
        prefix_tokens: v["prefix_tokens"].as_u64().unwrap_or(0) as usize,
        grid: v.get("grid").filter(|g| g.is_array()).map(pair),
        ablation_batch_size: v["ablation_batch_size"].as_u64().unwrap_or(32) as usize,
    }
}

fn native(case: &str, name: &str) -> LayerTensor {
    let a: ArrayD<f32> = load(case, name);
    let shape = a.shape().to_vec();
    LayerTensor::from_shape_vec(&shape, a.iter().copied().collect()).unwrap()
}

/// A model that only replays what grad-cam recorded.
struct Replay {
    case: String,
    layers: Vec<String>,
    logits: Array2<f32>,
    classes: Vec<usize>,
    activations: Vec<LayerTensor>,
    gradients: Vec<LayerTensor>,
    /// Per layer `(B, C)` scores and, for ScoreCAM, the first masks `(B, 4, H, W)`.
    score_scores: Vec<Array2<f32>>,
    score_masks: Vec<Array4<f32>>,
    ablation_scores: Vec<Array2<f32>>,
    ablation_values: Vec<Array2<f32>>,
    input: Array4<f32>,
    /// Forward passes answered so far (ScoreCAM) / ablated copies (AblationCAM), over all layers.
    score_pos: Rc<Cell<usize>>,
    ablation_pos: usize,
    masks_checked: Rc<Cell<usize>>,
    ablations_checked: Rc<Cell<usize>>,
}

impl Replay {
    fn new(case: &str, meta: &Meta) -> Replay {
        let n = meta.layers.len();
        let has = |name: &str| fixture_dir(case).join(name).exists();
        Replay {
            case: case.into(),
            layers: meta.layers.clone(),
            logits: load(case, "logits.npy"),
            classes: meta.classes.clone(),
            activations: (0..n).map(|i| native(case, &format!("activations_{i}.npy"))).collect(),
            gradients: (0..n).map(|i| native(case, &format!("gradients_{i}.npy"))).collect(),
            score_scores: (0..n).map(|i| load(case, &format!("scorecam_scores_{i}.npy"))).collect(),
            score_masks: (0..n).map(|i| load(case, &format!("scorecam_masks_{i}.npy"))).collect(),
            ablation_scores: (0..n).map(|i| load(case, &format!("ablation_scores_{i}.npy"))).collect(),
            ablation_values: (0..n)
                .filter(|i| has(&format!("ablation_values_{i}.npy")))
                .map(|i| load(case, &format!("ablation_values_{i}.npy")))
                .collect(),
            input: load(case, "input.npy"),
            score_pos: Rc::new(Cell::new(0)),
            ablation_pos: 0,
            masks_checked: Rc::new(Cell::new(0)),
            ablations_checked: Rc::new(Cell::new(0)),
        }
    }

    fn layer_index(&self, layer: &str) -> Result<usize, CamError> {
        self.layers.iter().position(|l| l == layer).ok_or_else(|| CamError::UnknownLayer {
            name: layer.into(),
            near: gradcam_core::near_matches(layer, self.layers.iter().map(String::as_str)),
        })
    }

    /// Maps a flat position over (layer, image, channel) to its indices.
    fn locate(&self, scores: &[Array2<f32>], mut pos: usize) -> (usize, usize, usize) {
        for (i, s) in scores.iter().enumerate() {
            if pos < s.len() {
                return (i, pos / s.ncols(), pos % s.ncols());
            }
            pos -= s.len();
        }
        panic!("{}: more forward passes than grad-cam made", self.case);
    }

    fn logits_with(&self, class: usize, score: f32) -> Array1<f32> {
        let mut row = Array1::zeros(self.logits.ncols());
        row[class] = score;
        row
    }
}

impl CamModel for Replay {
    fn layers(&mut self) -> Result<Vec<LayerInfo>, CamError> {
        Ok(self
            .layers
            .iter()
            .zip(&self.activations)
            .map(|(name, a)| {
                let mut shape = a.shape().to_vec();
                shape[0] = 1;
                LayerInfo { name: name.clone(), shape }
            })
            .collect())
    }

    fn default_layer(&mut self) -> Result<String, CamError> {
        Ok(self.layers.last().unwrap().clone())
    }

    fn capture(
        &mut self,
        input: ArrayView4<f32>,
        layer: &str,
        seed: Option<&dyn Seed>,
    ) -> Result<Capture, CamError> {
        assert_eq!(input, self.input.view(), "explain passed a different input");
        let i = self.layer_index(layer)?;
        Ok(Capture {
            logits: self.logits.clone(),
            output_shape: vec![self.logits.ncols()],
            activation: self.activations[i].clone(),
            gradient: seed.map(|_| self.gradients[i].clone()),
        })
    }

    fn forward(&mut self, input: ArrayView4<f32>) -> Result<Array2<f32>, CamError> {
        let mut rows = Vec::new();
        for masked in input.outer_iter() {
            let (layer, b, c) = self.locate(&self.score_scores, self.score_pos.get());
            let masks = &self.score_masks[layer];
            if c < masks.len_of(Axis(1)) {
                let expected = &self.input.index_axis(Axis(0), b) * &masks.slice(s![b, c, .., ..]);
                let diff = max_abs_diff(masked.view().into_dyn(), expected.view().into_dyn());
                assert!(
                    diff <= TOL_MASK,
                    "{}: ScoreCAM masked input layer {layer} image {b} channel {c}: {diff}",
                    self.case
                );
                self.masks_checked.set(self.masks_checked.get() + 1);
            }
            rows.push(self.logits_with(self.classes[b], self.score_scores[layer][[b, c]]));
            self.score_pos.set(self.score_pos.get() + 1);
        }
        Ok(stack(&rows))
    }

    fn forward_with_activation(
        &mut self,
        input: ArrayView4<f32>,
        layer: &str,
        activation: LayerView<'_>,
    ) -> Result<Array2<f32>, CamError> {
        let i = self.layer_index(layer)?;
        let original = self.activations[i].view();
        let mut rows = Vec::new();
        for k in 0..activation.shape()[0] {
            let (layer_i, b, c) = self.locate(&self.ablation_scores, self.ablation_pos);
            assert_eq!(layer_i, i, "{}: ablation passes out of order", self.case);
            assert_eq!(input.index_axis(Axis(0), k), self.input.index_axis(Axis(0), b));
            // Every value equals the original except channel c, which holds grad-cam's ablation value.
            let (got, orig, channel_axis) = match (activation, original) {
                (LayerView::Spatial(a), LayerView::Spatial(o)) => {
                    (a.index_axis_move(Axis(0), k).into_dyn(), o.index_axis_move(Axis(0), b).into_dyn(), 0)
                }
                (LayerView::Tokens(a), LayerView::Tokens(o)) => {
                    (a.index_axis_move(Axis(0), k).into_dyn(), o.index_axis_move(Axis(0), b).into_dyn(), 1)
                }
                _ => panic!("ablated activation has a different layout"),
            };
            for ((idx, &g), &o) in got.indexed_iter().zip(orig.iter()) {
                if idx[channel_axis] == c {
                    if let Some(values) = self.ablation_values.get(i) {
                        assert_eq!(
                            g,
                            values[[b, c]],
                            "{}: ablation value, layer {i} image {b} channel {c}",
                            self.case
                        );
                    }
                } else {
                    assert_eq!(g, o, "{}: ablation touched another channel", self.case);
                }
            }
            self.ablations_checked.set(self.ablations_checked.get() + 1);
            rows.push(self.logits_with(self.classes[b], self.ablation_scores[i][[b, c]]));
            self.ablation_pos += 1;
        }
        Ok(stack(&rows))
    }
}

fn stack(rows: &[Array1<f32>]) -> Array2<f32> {
    let views: Vec<_> = rows.iter().map(|r| r.view()).collect();
    ndarray::stack(Axis(0), &views).unwrap()
}

fn max_abs_diff(a: ndarray::ArrayViewD<f32>, b: ndarray::ArrayViewD<f32>) -> f32 {
    assert_eq!(a.shape(), b.shape());
    a.iter().zip(b.iter()).map(|(x, y)| (x - y).abs()).fold(0.0, f32::max)
}

fn assert_close(what: &str, actual: &Array3<f32>, expected: &Array3<f32>, tol: f32) {
    assert_eq!(actual.shape(), expected.shape(), "{what}: shape");
    let scale = expected.iter().fold(1.0f32, |m, v| m.max(v.abs()));
    let diff = max_abs_diff(actual.view().into_dyn(), expected.view().into_dyn());
    assert!(actual.iter().all(|v| v.is_finite()), "{what}: non-finite values");
    assert!(diff <= tol * scale, "{what}: max |diff| {diff:e} > {:e}", tol * scale);
    eprintln!("{what}: max |diff| {diff:.2e}");
}

fn fixture_name(method: Method) -> &'static str {
    match method {
        Method::GradCam => "gradcam",
        Method::GradCamPlusPlus => "gradcampp",
        Method::XGradCam => "xgradcam",
        Method::HiResCam => "hirescam",
        Method::LayerCam => "layercam",
        Method::GradCamElementWise => "gradcam_elementwise",
        Method::EigenCam => "eigencam",
        Method::EigenGradCam => "eigengradcam",
        Method::ScoreCam => "scorecam",
        Method::AblationCam => "ablationcam",
        other => unreachable!("{other} has no core fixture"),
    }
}

/// The methods the core fixtures (`tools/make_core_fixtures.py`) hold.
const FIXTURE_METHODS: [Method; 10] = [
    Method::GradCam,
    Method::GradCamPlusPlus,
    Method::XGradCam,
    Method::HiResCam,
    Method::LayerCam,
    Method::GradCamElementWise,
    Method::EigenCam,
    Method::EigenGradCam,
    Method::ScoreCam,
    Method::AblationCam,
];

fn check_case(case: &str, options: &CamOptions) {
    let meta = meta(case);
    let input: Array4<f32> = load(case, "input.npy");
    assert_eq!((input.shape()[2], input.shape()[3]), meta.input_hw);
    let layers: Vec<&str> = meta.layers.iter().map(String::as_str).collect();
    for method in FIXTURE_METHODS {
        let mut model = Replay::new(case, &meta);
        let (masks, ablations) = (model.masks_checked.clone(), model.ablations_checked.clone());
        let name = fixture_name(method);
        let out = explain(&mut model, input.view(), &layers, &[method], &Target::top_one(), options)
            .unwrap_or_else(|e| panic!("{case} {method}: {e}"));
        assert_eq!(out.len(), 1);
        let e = &out[0];
        assert_eq!(e.method, method);
        assert_eq!(e.classes, meta.classes);
        for (i, layer) in e.layers.iter().enumerate() {
            assert_eq!(layer.layer, meta.layers[i]);
            let raw: Array3<f32> = load(case, &format!("raw_{name}_{i}.npy"));
            let scaled: Array3<f32> = load(case, &format!("scaled_{name}_{i}.npy"));
            assert_close(&format!("{case} {method} raw[{i}]"), &layer.raw, &raw, TOL_LAYER);
            assert_close(&format!("{case} {method} scaled[{i}]"), &layer.scaled, &scaled, TOL_LAYER);
        }
        let cam: Array3<f32> = load(case, &format!("cam_{name}.npy"));
        assert_close(&format!("{case} {method} cam"), &e.maps, &cam, TOL_FINAL);
        match method {
            Method::ScoreCam => {
                let expected: usize = model.score_masks.iter().map(|m| m.shape()[0] * m.shape()[1]).sum();
                assert_eq!(masks.get(), expected, "{case}: every recorded mask checked");
                assert_eq!(model.score_pos.get(), model.score_scores.iter().map(|s| s.len()).sum::<usize>());
            }
            Method::AblationCam => {
                assert_eq!(ablations.get(), model.ablation_scores.iter().map(|s| s.len()).sum::<usize>());
            }
            _ => {}
        }
    }
    if let Some((h, w)) = meta.grid {
        let tokens = &Replay::new(case, &meta).activations[0];
        let n = tokens.shape()[1];
        assert_eq!(
            TokenGrid::infer(n, meta.input_hw).unwrap(),
            TokenGrid { prefix_tokens: meta.prefix_tokens, height: h, width: w },
            "{case}: inferred token grid"
        );
    }
}

fn options(case: &str) -> CamOptions {
    CamOptions { batch_size: meta(case).ablation_batch_size, ..CamOptions::default() }
}

#[test]
fn resnet18_layer4_matches_grad_cam() {
    check_case("resnet18_layer4", &options("resnet18_layer4"));
}

#[test]
fn resnet18_two_layers_match_grad_cam() {
    check_case("resnet18_multi", &options("resnet18_multi"));
}

#[test]
fn vit_tiny_norm1_matches_grad_cam() {
    check_case("vit_tiny_norm1", &options("vit_tiny_norm1"));
}

/// The eigen fixtures also carry grad-cam's unsigned projection: ours must equal it up to sign.
#[test]
fn eigen_projection_matches_up_to_sign() {
    for case in ["resnet18_layer4", "resnet18_multi", "vit_tiny_norm1"] {
        let meta = meta(case);
        let input: Array4<f32> = load(case, "input.npy");
        let layers: Vec<&str> = meta.layers.iter().map(String::as_str).collect();
        let mut model = Replay::new(case, &meta);
        let out = explain(
            &mut model,
            input.view(),
            &layers,
            &[Method::EigenCam, Method::EigenGradCam],
            &Target::top_one(),
            &CamOptions::default(),
        )
        .unwrap();
        for e in &out {
            for (i, layer) in e.layers.iter().enumerate() {
                let reference: Array3<f32> =
                    load(case, &format!("eigen_projection_{}_{i}.npy", fixture_name(e.method)));
                for b in 0..reference.shape()[0] {
                    let ours = layer.raw.index_axis(Axis(0), b);
                    let theirs = reference.index_axis(Axis(0), b);
                    let scale = theirs.iter().fold(1.0f32, |m, v| m.max(v.abs()));
                    let same = ours.iter().zip(theirs.iter()).map(|(a, b)| (a - b).abs()).fold(0.0, f32::max);
                    let flipped =
                        ours.iter().zip(theirs.iter()).map(|(a, b)| (a + b).abs()).fold(0.0, f32::max);
                    assert!(
                        same.min(flipped) <= TOL_LAYER * scale,
                        "{case} {} layer {i} image {b}: {same:e} / {flipped:e}",
                        e.method
                    );
                }
            }
        }
    }
}
