//! The one pipeline: capture → (token→grid) → per-method map → ReLU + min-max → upsample →
//! multi-layer mean + min-max.

use std::fmt;
use std::sync::Arc;

use ndarray::{s, Array2, Array3, Array4, ArrayView2, ArrayView3, ArrayView4, Axis};

use crate::cam::{
    ablation_weights, combine_layers, layer_map_with, scale_maps, scorecam_weights, upsample_maps,
    weighted_map, Reduction,
};
use crate::layout::nhwc_to_nchw;
use crate::resize::upsample_align_corners;
use crate::tokens::fold_tokens;
use crate::{
    fullgrad_maps, CamError, CamModel, FinerSeed, LayerTensor, LayerView, Layout, LegacyRandom, Method,
    ReluBackward, Seed, Target, TokenGrid,
};

/// Progress callback: `(done, total)` forward passes of ScoreCAM / AblationCAM.
pub type Progress = Arc<dyn Fn(usize, usize) + Send + Sync>;

/// Asked whether to stop ([`CamOptions::cancel`]).
pub type Cancel = Arc<dyn Fn() -> bool + Send + Sync>;

/// Options of [`explain`].
#[derive(Clone)]
pub struct CamOptions {
    /// How every layer's output is laid out; `None` detects it per layer ([`Layout::detect`]).
    pub layout: Option<Layout>,
    /// How ViT tokens fold into a grid; `None` infers it ([`TokenGrid::infer`]).
    pub token_grid: Option<TokenGrid>,
    /// Images per extra forward pass of ScoreCAM / AblationCAM (default 32). AblationCAM's
    /// results depend on it, as pytorch-grad-cam's do (see [`ablation_value`]).
    pub batch_size: usize,
    /// Called after every extra forward pass with `(done, total)` images, counted over all
    /// layers and methods of the call.
    pub progress: Option<Progress>,
    /// RandomCAM's seed: its weights are `np.random.seed(seed); np.random.uniform(-1, 1, (B, C))`
    /// per layer, in layer order (default 0).
    pub seed: u32,
    /// FinerCAM's `alpha` (default 1; must be finite).
    pub finer_alpha: f32,
    /// pytorch-grad-cam's `eigen_smooth`: each layer's map is the first principal component of
    /// the weighted activations instead of their sum over channels ([`Reduction`]; methods
    /// without weighted activations ignore it, [`Method::supports_eigen_smooth`]).
    pub eigen_smooth: bool,
    /// pytorch-grad-cam's `aug_smooth`: the mean of the maps of six augmented inputs
    /// ([`AUGMENTATIONS`]), at six times the cost.
    pub aug_smooth: bool,
    /// Asked before every extra forward pass of ScoreCAM / AblationCAM and before each
    /// augmented pass; when it says `true`, [`explain`] stops with [`CamError::Cancelled`]. A
    /// ScoreCAM over 2,048 channels is 64 passes of 32 images: without it an interrupt waits for
    /// all of them.
    pub cancel: Option<Cancel>,
}

impl Default for CamOptions {
    fn default() -> Self {
        CamOptions {
            layout: None,
            token_grid: None,
            batch_size: 32,
            progress: None,
            seed: 0,
            finer_alpha: 1.0,
            eigen_smooth: false,
            aug_smooth: false,
            cancel: None,
        }
    }
}

impl fmt::Debug for CamOptions {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CamOptions")
            .field("layout", &self.layout)
            .field("token_grid", &self.token_grid)
            .field("batch_size", &self.batch_size)
            .field("progress", &self.progress.as_ref().map(|_| "Fn(done, total)"))
            .field("seed", &self.seed)
            .field("finer_alpha", &self.finer_alpha)
            .field("eigen_smooth", &self.eigen_smooth)
            .field("aug_smooth", &self.aug_smooth)
            .field("cancel", &self.cancel.as_ref().map(|_| "Fn() -> bool"))
            .finish()
    }
}

/// One method's explanation of a batch.
#[derive(Clone, Debug)]
pub struct Explanation {
    /// The method.
    pub method: Method,
    /// Model outputs `(B, K)`: the first output flattened per image (`(B, C·H·W)` for a
    /// segmentation model), its per-image shape in [`Explanation::output_shape`].
    pub logits: Array2<f32>,
    /// The per-image shape of the model's output: `[K]` for a classifier.
    pub output_shape: Vec<usize>,
    /// The class explained for each image (0/1 for a binary target, 0 for a similarity one).
    pub classes: Vec<usize>,
    /// The target as explained: classes resolved per image, a segmentation's argmax region
    /// resolved (what [`crate::evaluate`] scores perturbed images with).
    pub target: Target,
    /// The final maps `(B, H_in, W_in)` in `[0, 1]`: what pytorch-grad-cam's `cam(...)` returns.
    pub maps: Array3<f32>,
    /// Per-layer maps at activation resolution, in the order the layers were given.
    pub layers: Vec<LayerCam>,
    /// A pixel-space method's answer ([`Method::is_pixel_space`]), `(B, 3, H_in, W_in)`:
    /// guided backprop's input gradient times [`Explanation::maps`], which are Grad-CAM's maps
    /// (and `layers` its layers) for guided Grad-CAM and all ones for guided backprop. `None`
    /// for every other method.
    pub pixels: Option<Array4<f32>>,
}

/// One layer's map at activation resolution.
#[derive(Clone, Debug, PartialEq)]
pub struct LayerCam {
    /// The layer's name.
    pub layer: String,
    /// How its output was read ([`Layout::detect`] unless [`CamOptions::layout`] said).
    pub layout: Layout,
    /// The weighted sum before ReLU `(B, h, w)`: the raw, unnormalised map
    /// (pytorch-grad-cam's `get_cam_image`).
    pub raw: Array3<f32>,
    /// `raw` after ReLU and per-image min-max, `(B, h, w)` in `[0, 1]`.
    pub scaled: Array3<f32>,
    /// The layer's own final map `(B, H_in, W_in)` in `[0, 1]`: what pytorch-grad-cam returns
    /// for this layer alone (`scaled` upsampled, then min-max; [`Explanation::maps`] when it is the
    /// only layer). With [`CamOptions::aug_smooth`] it is the mean over the augmentations, while
    /// `raw` and `scaled` are those of the unaugmented input.
    pub map: Array3<f32>,
}

/// One layer's capture: the native output, and it and its gradient folded to `(B, C, h, w)`.
struct LayerData {
    name: String,
    layout: Layout,
    activation: LayerTensor,
    /// The activations as `(B, C, h, w)` when that is not the native output (tokens, NHWC).
    folded: Option<Array4<f32>>,
    gradient: Option<Array4<f32>>,
}

impl LayerData {
    fn activations(&self) -> ArrayView4<'_, f32> {
        match (&self.folded, &self.activation) {
            (Some(folded), _) => folded.view(),
            (None, LayerTensor::Spatial(a)) => a.view(),
            (None, LayerTensor::Tokens(_)) => unreachable!("tokens are always folded"),
        }
    }

    fn channels(&self) -> usize {
        self.activations().len_of(Axis(1))
    }
}

/// A layer output (or its gradient) as `(B, C, h, w)`, or `None` when it already is one.
/// `tokens` is the token grid, resolved once per layer from the activation.
fn fold(
    tensor: &LayerTensor,
    layout: Layout,
    tokens: Option<TokenGrid>,
) -> Result<Option<Array4<f32>>, CamError> {
    match (tensor, layout, tokens) {
        (LayerTensor::Spatial(_), Layout::Nchw, _) => Ok(None),
        (LayerTensor::Spatial(a), Layout::Nhwc, _) => Ok(Some(nhwc_to_nchw(a.view()))),
        (LayerTensor::Tokens(t), Layout::Tokens, Some(grid)) => {
            let (batch, _, dim) = t.dim();
            Ok(Some(fold_tokens(t.view(), grid, batch, dim)))
        }
        _ => Err(CamError::Shape(format!("cannot read an output of shape {:?} as {layout}", tensor.shape()))),
    }
}

/// Explains `input` `(B, 3, H, W)` with every method in `methods`, over `layers` (the model's
/// default layer when empty), for `target`. Returns one [`Explanation`] per method, in order.
///
/// Each layer is captured once (with a backward pass only when a method needs gradients) and
/// shared by all methods. ViT token outputs are folded to a grid ([`crate::tokens_to_grid`],
/// `options.token_grid`). ScoreCAM and AblationCAM run their extra forward passes through
/// [`CamModel::forward`] / [`CamModel::forward_with_activation`] in batches of
/// `options.batch_size`, reporting to `options.progress`.
///
/// With [`CamOptions::aug_smooth`] all of this runs once per augmentation ([`AUGMENTATIONS`]) and
/// the maps are averaged after un-flipping, as pytorch-grad-cam's `aug_smooth=True`. The class is
/// resolved once, on the unaugmented input (its pass is one of the six), and every augmented pass
/// explains that class; pytorch-grad-cam with `targets=None` takes each augmented input's own
/// top-1 instead, which differs only where a flip or a 10 % contrast change moves the top-1.
///
/// The pixel-space methods ([`Method::PIXEL`]) take one guided backward pass to the input
/// ([`CamModel::input_gradient`]) on the unaugmented input, as pytorch-grad-cam's
/// `GuidedBackpropReLUModel` does, for every image of the batch (it explains the first image
/// only); guided Grad-CAM multiplies it by the Grad-CAM maps, run here when `methods` lacks them.
pub fn explain(
    model: &mut dyn CamModel,
    input: ArrayView4<f32>,
    layers: &[&str],
    methods: &[Method],
    target: &Target,
    options: &CamOptions,
) -> Result<Vec<Explanation>, CamError> {
    let (batch, _, in_h, in_w) = input.dim();
    if batch == 0 || in_h == 0 || in_w == 0 {
        return Err(CamError::Shape(format!("empty input {:?}", input.shape())));
    }
    if methods.is_empty() {
        return Err(CamError::Unsupported("no CAM method given".into()));
    }
    // FullGrad and the pixel-space methods take their own backward passes; the rest share the
    // layers' captures.
    let own_pass = |m: &Method| m.is_pixel_space() || *m == Method::FullGrad;
    if !methods.iter().any(own_pass) {
        return explain_maps(model, input, layers, methods, target, options);
    }
    let mut heatmap_methods: Vec<Method> = methods.iter().copied().filter(|m| !own_pass(m)).collect();
    let borrowed_gradcam = methods.contains(&Method::GuidedGradCam) && !methods.contains(&Method::GradCam);
    if borrowed_gradcam {
        heatmap_methods.push(Method::GradCam);
    }
    let mut heatmaps = if heatmap_methods.is_empty() {
        Vec::new()
    } else {
        explain_maps(model, input, layers, &heatmap_methods, target, options)?
    };
    let gradcam = heatmaps.iter().find(|e| e.method == Method::GradCam).cloned();
    if borrowed_gradcam {
        heatmaps.pop();
    }
    let fullgrad = if methods.contains(&Method::FullGrad) {
        Some(explain_fullgrad(model, input, target, options)?)
    } else {
        None
    };
    let mut heatmaps = heatmaps.into_iter();
    let mut out = Vec::with_capacity(methods.len());
    let mut guided_pass = None;
    for &method in methods {
        if method == Method::FullGrad {
            out.push(fullgrad.clone().expect("explained above"));
            continue;
        }
        if !method.is_pixel_space() {
            out.push(heatmaps.next().expect("one explanation per heatmap method"));
            continue;
        }
        if guided_pass.is_none() {
            let guided = model.input_gradient(input, target, ReluBackward::Guided)?;
            if guided.gradient.dim() != input.dim() {
                return Err(CamError::Shape(format!(
                    "the backend returned an input gradient of shape {:?} for an input of shape {:?}",
                    guided.gradient.shape(),
                    input.shape()
                )));
            }
            let (bound, classes) = target.bind(guided.logits.view(), &guided.output_shape)?;
            guided_pass = Some((guided, bound, classes));
        }
        let (guided, bound, classes) = guided_pass.as_ref().expect("taken above");
        let (maps, layers) = match (&gradcam, method) {
            (Some(g), Method::GuidedGradCam) => (g.maps.clone(), g.layers.clone()),
            _ => (Array3::ones((batch, in_h, in_w)), Vec::new()),
        };
        let pixels = &guided.gradient * &maps.view().insert_axis(Axis(1));
        out.push(Explanation {
            method,
            logits: guided.logits.clone(),
            output_shape: guided.output_shape.clone(),
            classes: classes.clone(),
            target: bound.clone(),
            maps,
            layers,
            pixels: Some(pixels),
        });
    }
    Ok(out)
}

/// FullGrad's explanation: one backward pass to the input and every bias
/// ([`CamModel::full_gradients`]) per augmentation, maps by [`fullgrad_maps`] (its own
/// `eigen_smooth`; averaged after un-flipping under `aug_smooth`, as every other method).
fn explain_fullgrad(
    model: &mut dyn CamModel,
    input: ArrayView4<f32>,
    target: &Target,
    options: &CamOptions,
) -> Result<Explanation, CamError> {
    let grads = model.full_gradients(input, target)?;
    let (bound, classes) = target.bind(grads.logits.view(), &grads.output_shape)?;
    let mut maps = fullgrad_maps(input, &grads, options.eigen_smooth)?;
    if options.aug_smooth {
        let width = output_width(&grads.output_shape);
        // The mean in ttach's order, one pass after the other, then / 6.
        let mut sum = Array3::<f32>::zeros(maps.raw_dim());
        for augmentation in &AUGMENTATIONS {
            if *augmentation == Augmentation::IDENTITY {
                sum += &maps;
                continue;
            }
            let augmented = augmentation.apply(input);
            let target = if augmentation.flip { bound.mirrored(width) } else { bound.clone() };
            let g = model.full_gradients(augmented.view(), &target)?;
            sum += &augmentation.undo(fullgrad_maps(augmented.view(), &g, options.eigen_smooth)?.view());
        }
        maps = sum.mapv(|v| v / AUGMENTATIONS.len() as f32);
    }
    Ok(Explanation {
        method: Method::FullGrad,
        logits: grads.logits,
        output_shape: grads.output_shape,
        classes,
        target: bound,
        maps,
        layers: Vec::new(),
        pixels: None,
    })
}

/// [`explain`] for heatmap methods only.
fn explain_maps(
    model: &mut dyn CamModel,
    input: ArrayView4<f32>,
    layers: &[&str],
    methods: &[Method],
    target: &Target,
    options: &CamOptions,
) -> Result<Vec<Explanation>, CamError> {
    let default_layer;
    let layers: Vec<&str> = if layers.is_empty() {
        default_layer = model.default_layer()?;
        vec![default_layer.as_str()]
    } else {
        layers.to_vec()
    };
    FinerSeed { target, alpha: options.finer_alpha }.check()?;
    if methods.contains(&Method::FinerCam) && !target.is_classifier() {
        return Err(CamError::Unsupported(
            "FinerCAM compares a class with the classes closest to it: it explains classifiers only".into(),
        ));
    }
    let passes = if options.aug_smooth { AUGMENTATIONS.len() } else { 1 };
    let mut forward = ForwardPasses { done: 0, total: 0, passes, options };
    if !options.aug_smooth {
        return explain_pass(model, input, &layers, methods, target, 0, &mut forward);
    }

    // The unaugmented pass first: it resolves the classes every other pass explains.
    let identity = AUGMENTATIONS.iter().position(|a| *a == Augmentation::IDENTITY).expect("listed");
    let first = explain_pass(model, input, &layers, methods, target, identity, &mut forward)?;
    let fixed = first[0].target.clone();
    let width = output_width(&first[0].output_shape);
    let mut per_pass: Vec<Option<Vec<Explanation>>> = vec![None; AUGMENTATIONS.len()];
    for (index, augmentation) in AUGMENTATIONS.iter().enumerate() {
        if index == identity {
            continue;
        }
        let augmented = augmentation.apply(input);
        let target = if augmentation.flip { fixed.mirrored(width) } else { fixed.clone() };
        let mut explanations =
            explain_pass(model, augmented.view(), &layers, methods, &target, index, &mut forward)?;
        for e in &mut explanations {
            e.maps = augmentation.undo(e.maps.view());
            for layer in &mut e.layers {
                layer.map = augmentation.undo(layer.map.view());
            }
        }
        per_pass[index] = Some(explanations);
    }
    let mut merged = first;
    // The mean in the reference's order (ttach's), one pass after the other, then / 6.
    for (m, explanation) in merged.iter_mut().enumerate() {
        let mut maps = Array3::<f32>::zeros(explanation.maps.raw_dim());
        let mut layer_maps: Vec<Array3<f32>> =
            explanation.layers.iter().map(|l| Array3::zeros(l.map.raw_dim())).collect();
        for (index, pass) in per_pass.iter().enumerate() {
            let e = if index == identity { &*explanation } else { &pass.as_ref().expect("run above")[m] };
            maps += &e.maps;
            for (sum, layer) in layer_maps.iter_mut().zip(&e.layers) {
                *sum += &layer.map;
            }
        }
        let n = AUGMENTATIONS.len() as f32;
        explanation.maps = maps.mapv(|v| v / n);
        for (layer, sum) in explanation.layers.iter_mut().zip(layer_maps) {
            layer.map = sum.mapv(|v| v / n);
        }
    }
    Ok(merged)
}

/// The width of a per-image output `(C, H, W)` (a segmentation's), which [`Target::mirrored`]
/// mirrors its region by; 0 for other outputs.
fn output_width(shape: &[usize]) -> usize {
    match shape {
        [_, _, w] => *w,
        _ => 0,
    }
}

/// One test-time augmentation of `aug_smooth`: an optional horizontal flip, then a factor.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Augmentation {
    /// Flip the input left to right (and the maps back).
    pub flip: bool,
    /// Multiply the input by this.
    pub factor: f32,
}

impl Augmentation {
    const IDENTITY: Augmentation = Augmentation { flip: false, factor: 1.0 };

    /// The augmented copy of `input` `(B, C, H, W)`.
    pub fn apply(&self, input: ArrayView4<f32>) -> Array4<f32> {
        let input = if self.flip { input.slice_move(s![.., .., .., ..;-1]) } else { input };
        input.mapv(|x| x * self.factor)
    }

    /// Maps `(B, H, W)` of the augmented input, back in the original's frame.
    pub fn undo(&self, maps: ArrayView3<f32>) -> Array3<f32> {
        if self.flip {
            maps.slice(s![.., .., ..;-1]).to_owned()
        } else {
            maps.to_owned()
        }
    }
}

/// pytorch-grad-cam's `aug_smooth` transforms in ttach's order: `tta.Compose([HorizontalFlip(),
/// Multiply(factors=[0.9, 1, 1.1])])`.
pub const AUGMENTATIONS: [Augmentation; 6] = [
    Augmentation { flip: false, factor: 0.9 },
    Augmentation { flip: false, factor: 1.0 },
    Augmentation { flip: false, factor: 1.1 },
    Augmentation { flip: true, factor: 0.9 },
    Augmentation { flip: true, factor: 1.0 },
    Augmentation { flip: true, factor: 1.1 },
];

/// One pass of [`explain`] over an input (the `pass`-th of `forward.passes`: RandomCAM's weights
/// continue numpy's stream where the earlier passes left it, as in pytorch-grad-cam).
fn explain_pass(
    model: &mut dyn CamModel,
    input: ArrayView4<f32>,
    layers: &[&str],
    methods: &[Method],
    target: &Target,
    pass: usize,
    forward: &mut ForwardPasses,
) -> Result<Vec<Explanation>, CamError> {
    forward.check()?;
    let options = forward.options;
    let (batch, _, in_h, in_w) = input.dim();
    let finer_seed = FinerSeed { target, alpha: options.finer_alpha };
    // FinerCAM back-propagates its own score; the other gradient methods the target's. The
    // activations are the same in both captures.
    let finer = methods.contains(&Method::FinerCam);
    let plain_gradients = methods.iter().any(|m| m.needs_gradients() && *m != Method::FinerCam);
    let seed: Option<&dyn Seed> = if plain_gradients {
        Some(target)
    } else if finer {
        Some(&finer_seed)
    } else {
        None
    };
    let ((logits, output_shape), captured) = capture_layers(model, input, layers, target, seed, options)?;
    let finer_captured = match (finer, plain_gradients) {
        (true, true) => Some(capture_layers(model, input, layers, target, Some(&finer_seed), options)?.1),
        _ => None,
    };
    let (bound, classes) = target.bind(logits.view(), &output_shape)?;
    let target = &bound;
    let original_scores = target.scores(logits.view(), &classes)?;

    if forward.total == 0 {
        let per_pass: usize = methods
            .iter()
            .filter(|m| m.needs_forward_passes())
            .map(|_| captured.iter().map(|l| batch * l.channels()).sum::<usize>())
            .sum();
        forward.total = per_pass * forward.passes;
    }
    // RandomCAM draws `B x C` weights per layer and pass.
    let draws_per_pass: usize = captured.iter().map(|l| batch * l.channels()).sum();

    let mut explanations = Vec::with_capacity(methods.len());
    for &method in methods {
        let reduction = match (options.eigen_smooth, method.supports_eigen_smooth()) {
            (true, true) => Reduction::FirstComponent,
            _ => Reduction::Sum,
        };
        let mut layer_cams = Vec::with_capacity(captured.len());
        let mut upsampled = Vec::with_capacity(captured.len());
        let mut random = LegacyRandom::new(options.seed);
        random.skip(pass * draws_per_pass);
        for (index, layer) in captured.iter().enumerate() {
            let activations = layer.activations();
            let raw = match method {
                Method::RandomCam => {
                    let (batch, channels, _, _) = activations.dim();
                    weighted_map(random.weights(batch, channels).view(), activations, reduction)?
                }
                Method::FinerCam => {
                    let gradients = finer_captured.as_ref().map_or(&layer.gradient, |f| &f[index].gradient);
                    layer_map_with(method, activations, gradients.as_ref().map(|g| g.view()), reduction)?
                }
                Method::ScoreCam => {
                    let scores = forward.scorecam_scores(model, input, activations, target, &classes)?;
                    weighted_map(scorecam_weights(scores.view()).view(), activations, reduction)?
                }
                Method::AblationCam => {
                    let scores = forward.ablation_scores(model, input, layer, target, &classes)?;
                    weighted_map(
                        ablation_weights(&original_scores, scores.view()).view(),
                        activations,
                        reduction,
                    )?
                }
                _ => {
                    layer_map_with(method, activations, layer.gradient.as_ref().map(|g| g.view()), reduction)?
                }
            };
            let scaled = scale_maps(raw.view());
            let up = upsample_maps(scaled.view(), in_h, in_w);
            // A layer's own final map: what pytorch-grad-cam returns for it alone.
            let map =
                if captured.len() == 1 { None } else { Some(combine_layers(std::slice::from_ref(&up))?) };
            upsampled.push(up);
            layer_cams.push(LayerCam {
                layer: layer.name.clone(),
                layout: layer.layout,
                raw,
                scaled,
                map: map.unwrap_or_default(),
            });
        }
        let maps = combine_layers(&upsampled)?;
        if let [only] = layer_cams.as_mut_slice() {
            only.map = maps.clone();
        }
        explanations.push(Explanation {
            method,
            logits: logits.clone(),
            output_shape: output_shape.clone(),
            classes: classes.clone(),
            target: target.clone(),
            maps,
            layers: layer_cams,
            pixels: None,
        });
    }
    Ok(explanations)
}

/// Captures every layer of `layers` for `input` with `seed` (gradients only with a seed): the
/// logits of the first capture, and each layer's activations (and gradient) folded to
/// `(B, C, h, w)`. `target`'s class is checked against the first logits.
fn capture_layers(
    model: &mut dyn CamModel,
    input: ArrayView4<f32>,
    layers: &[&str],
    target: &Target,
    seed: Option<&dyn Seed>,
    options: &CamOptions,
) -> Result<(Outputs, Vec<LayerData>), CamError> {
    let (batch, _, in_h, in_w) = input.dim();
    let need_gradients = seed.is_some();
    let mut logits = None;
    let mut captured = Vec::with_capacity(layers.len());
    for &layer in layers {
        let capture = model.capture(input, layer, seed)?;
        if capture.activation.batch() != batch {
            return Err(CamError::LayerBatch {
                layer: layer.to_string(),
                rows: capture.activation.batch(),
                images: batch,
            });
        }
        if capture.logits.nrows() != batch {
            return Err(CamError::Shape(format!(
                "layer `{layer}`: {} rows of logits for {batch} images",
                capture.logits.nrows()
            )));
        }
        if logits.is_none() {
            // Resolved here so that a bad class fails before the other layers run.
            target.resolve_output(capture.logits.view(), &capture.output_shape)?;
            logits = Some((capture.logits.clone(), capture.output_shape.clone()));
        }
        let shape = capture.activation.shape();
        let layout = Layout::resolve(options.layout, shape, (in_h, in_w))?;
        let tokens = match layout {
            Layout::Tokens => Some(TokenGrid::resolve(options.token_grid, shape[1], (in_h, in_w))?),
            _ => None,
        };
        let folded = fold(&capture.activation, layout, tokens)?;
        let gradient = match (need_gradients, &capture.gradient) {
            (true, Some(g)) if g.shape() == capture.activation.shape() => {
                Some(fold(g, layout, tokens)?.unwrap_or_else(|| match g {
                    LayerTensor::Spatial(g) => g.clone(),
                    LayerTensor::Tokens(_) => unreachable!("tokens are always folded"),
                }))
            }
            (true, Some(g)) => {
                return Err(CamError::Shape(format!(
                    "layer `{layer}`: gradient {:?} and activation {:?} differ",
                    g.shape(),
                    capture.activation.shape()
                )))
            }
            (true, None) => {
                return Err(CamError::Unsupported(format!("the backend returned no gradient for `{layer}`")))
            }
            (false, _) => None,
        };
        captured.push(LayerData {
            name: layer.to_string(),
            layout,
            activation: capture.activation,
            folded,
            gradient,
        });
    }
    let outputs = logits.ok_or_else(|| CamError::Shape("no layer to capture".into()))?;
    Ok((outputs, captured))
}

/// A capture's model outputs flattened per image `(B, D)`, and their per-image shape.
type Outputs = (Array2<f32>, Vec<usize>);

/// The extra forward passes of ScoreCAM and AblationCAM, with progress accounting.
struct ForwardPasses<'o> {
    done: usize,
    /// Counted at the first pass's capture (the channel counts are known then).
    total: usize,
    /// How many times `explain` runs everything (6 under `aug_smooth`).
    passes: usize,
    options: &'o CamOptions,
}

impl ForwardPasses<'_> {
    fn batch_size(&self) -> usize {
        self.options.batch_size.max(1)
    }

    /// `Err(Cancelled)` when [`CamOptions::cancel`] asks to stop.
    fn check(&self) -> Result<(), CamError> {
        match &self.options.cancel {
            Some(cancel) if cancel() => Err(CamError::Cancelled),
            _ => Ok(()),
        }
    }

    fn report(&mut self, n: usize) {
        self.done += n;
        if let Some(progress) = &self.options.progress {
            progress(self.done, self.total);
        }
    }

    /// ScoreCAM: the target score of `input[b] * mask_c` for every image `b` and channel `c`,
    /// `(B, C)`.
    fn scorecam_scores(
        &mut self,
        model: &mut dyn CamModel,
        input: ArrayView4<f32>,
        activations: ArrayView4<f32>,
        target: &Target,
        classes: &[usize],
    ) -> Result<Array2<f32>, CamError> {
        let (batch, channels, _, _) = activations.dim();
        let (_, in_c, in_h, in_w) = input.dim();
        let step = self.batch_size();
        let mut scores = Array2::zeros((batch, channels));
        let mut chunk = Array4::<f32>::zeros((step.min(channels), in_c, in_h, in_w));
        for (b, &class) in classes.iter().enumerate().take(batch) {
            let image = input.index_axis(Axis(0), b);
            let image_target = target.image(b);
            for start in (0..channels).step_by(step) {
                self.check()?;
                let end = (start + step).min(channels);
                let n = end - start;
                if chunk.len_of(Axis(0)) != n {
                    chunk = Array4::zeros((n, in_c, in_h, in_w));
                }
                for (k, mut masked) in chunk.outer_iter_mut().enumerate() {
                    let mask = scorecam_mask(activations.slice(s![b, start + k, .., ..]), in_h, in_w);
                    for (mut dst, src) in masked.outer_iter_mut().zip(image.outer_iter()) {
                        ndarray::Zip::from(&mut dst).and(&src).and(&mask).for_each(|d, &x, &m| *d = x * m);
                    }
                }
                let logits = model.forward(chunk.view())?;
                self.record(logits, &image_target, class, scores.slice_mut(s![b, start..end]))?;
            }
        }
        Ok(scores)
    }

    /// Stores the target score of each row of one extra forward pass's `logits` into `out`
    /// (one slot per row; every row a copy of one image, whose `target` it is) and reports the
    /// progress.
    fn record(
        &mut self,
        logits: Array2<f32>,
        target: &Target,
        class: usize,
        mut out: ndarray::ArrayViewMut1<f32>,
    ) -> Result<(), CamError> {
        let n = out.len();
        if logits.nrows() != n {
            return Err(CamError::Shape(format!("forward returned {} rows for {n} inputs", logits.nrows())));
        }
        out.assign(&ndarray::aview1(&target.scores(logits.view(), &vec![class; n])?));
        self.report(n);
        Ok(())
    }

    /// AblationCAM: the target score with channel `k` ablated, for every image and channel, `(B, C)`.
    fn ablation_scores(
        &mut self,
        model: &mut dyn CamModel,
        input: ArrayView4<f32>,
        layer: &LayerData,
        target: &Target,
        classes: &[usize],
    ) -> Result<Array2<f32>, CamError> {
        // Ablate in the native layout: channels on axis 1 (NCHW), 3 (NHWC) or 2 (tokens: every
        // token, prefix tokens included, as pytorch-grad-cam's `AblationLayerVit`).
        let native = match &layer.activation {
            LayerTensor::Spatial(a) => a.view().into_dyn(),
            LayerTensor::Tokens(t) => t.view().into_dyn(),
        };
        let channel_axis = Axis(layer.layout.channel_axis());
        let batch = native.len_of(Axis(0));
        let channels = native.len_of(channel_axis);
        let step = self.batch_size();
        let mut scores = Array2::zeros((batch, channels));
        for (b, &class) in classes.iter().enumerate().take(batch) {
            let image = input.slice(s![b..b + 1, .., .., ..]);
            let one = native.slice_axis(Axis(0), (b..b + 1).into());
            let min = one.iter().copied().fold(f32::INFINITY, f32::min);
            let image_target = target.image(b);
            for start in (0..channels).step_by(step) {
                self.check()?;
                let end = (start + step).min(channels);
                let n = end - start;
                let (_, c, h, w) = image.dim();
                let inputs = image.broadcast((n, c, h, w)).expect("batch of one");
                let mut batch_shape = native.shape().to_vec();
                batch_shape[0] = n;
                let mut ablated = one.broadcast(batch_shape.as_slice()).expect("batch of one").to_owned();
                for (i, channel) in (start..end).enumerate() {
                    let value = ablation_value(min, i);
                    ablated
                        .index_axis_mut(Axis(0), i)
                        .index_axis_mut(Axis(channel_axis.0 - 1), channel)
                        .fill(value);
                }
                let view = match &layer.activation {
                    LayerTensor::Spatial(_) => {
                        LayerView::Spatial(ablated.view().into_dimensionality().expect("rank 4"))
                    }
                    LayerTensor::Tokens(_) => {
                        LayerView::Tokens(ablated.view().into_dimensionality().expect("rank 3"))
                    }
                };
                let logits = model.forward_with_activation(inputs, &layer.name, view)?;
                self.record(logits, &image_target, class, scores.slice_mut(s![b, start..end]))?;
            }
        }
        Ok(scores)
    }
}

/// The value AblationCAM writes into the ablated channel of the `position`-th copy in a forward
/// batch, exactly as pytorch-grad-cam's `AblationLayer`: 0 when the image's activations have
/// minimum 0 (typical after a ReLU), else a very negative value. The reference subtracts `1e7`
/// from the minimum of the *whole batch tensor it is editing in place*, so every copy goes
/// `1e7` lower than the previous one: copy `i` gets `min - (i + 1) * 1e7` (computed in `f32`,
/// one subtraction at a time). The scores therefore depend on [`CamOptions::batch_size`]; the
/// default 32 is the reference's.
pub fn ablation_value(min: f32, position: usize) -> f32 {
    if min == 0.0 {
        return 0.0;
    }
    let mut value = min;
    for _ in 0..=position {
        value -= 1e7;
    }
    value
}

/// ScoreCAM's mask for one channel: upsampled to the input with `align_corners=True`
/// (PyTorch `UpsamplingBilinear2d`), then `(m - min) / (max - min + 1e-8)`.
pub fn scorecam_mask(channel: ArrayView2<f32>, out_h: usize, out_w: usize) -> Array2<f32> {
    let mut mask = upsample_align_corners(channel, out_h, out_w);
    let min = mask.iter().copied().fold(f32::INFINITY, f32::min);
    let max = mask.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let denom = max - min + 1e-8;
    mask.mapv_inplace(|m| (m - min) / denom);
    mask
}
