//! [`CandleModel`]: any [`CandleCamNet`] (a zoo model or the user's own) as a
//! [`gradcam_core::CamModel`].

use std::path::Path;

use candle_core::backprop::GradStore;
use candle_core::{Device, Tensor, Var};
use gradcam_core::{
    default_layer_among, near_matches, BiasGradient, CamError, CamModel, Capture, FullGradients,
    InputGradient, LayerInfo, LayerTensor, LayerView, ReluBackward, Seed,
};
use ndarray::{Array2, Array4, ArrayView4};

use crate::taps::TapRecord;
use crate::{CandleError, Taps};

/// A candle network that gradcam-rs can cut at any named module.
///
/// Implement [`CandleCamNet::forward`] as your model's forward, passing the output of every
/// module you want to explain through [`Taps::tap`] (or [`Taps::sequential`]) under its PyTorch
/// module path, and using what the tap returns. Then wrap it with [`CandleModel::from_net`].
///
/// ```
/// use backend_candle::{CandleCamNet, CandleModel, Taps};
/// use candle_core::{DType, Device, Module, Result, Tensor};
/// use gradcam_core::{CamModel, Target};
///
/// /// conv (3 -> 4 channels) -> ReLU -> global average pool -> linear (4 -> 2 classes)
/// struct Tiny {
///     conv: candle_nn::Conv2d,
///     fc: candle_nn::Linear,
/// }
///
/// impl CandleCamNet for Tiny {
///     fn forward(&self, x: &Tensor, taps: &mut Taps) -> Result<Tensor> {
///         let x = taps.tap("conv", self.conv.forward(x)?)?;
///         let x = taps.tap("act", x.relu()?)?;
///         self.fc.forward(&x.mean((2, 3))?)
///     }
///     fn input_size(&self) -> (usize, usize) {
///         (8, 8)
///     }
/// }
///
/// let dev = Device::Cpu;
/// let conv_w = Tensor::randn(0f32, 1.0, (4, 3, 3, 3), &dev)?;
/// let conv = candle_nn::Conv2d::new(conv_w, None, candle_nn::Conv2dConfig { padding: 1, ..Default::default() });
/// let fc = candle_nn::Linear::new(Tensor::randn(0f32, 1.0, (2, 4), &dev)?, None);
/// let mut model = CandleModel::from_net(Tiny { conv, fc });
///
/// assert_eq!(model.default_layer().unwrap(), "act");
/// let input = ndarray::Array4::<f32>::ones((1, 3, 8, 8));
/// let capture = model.capture(input.view(), "act", Some(&Target::top_one())).unwrap();
/// assert_eq!(capture.activation.shape(), &[1, 4, 8, 8]);
/// assert!(capture.gradient.is_some());
/// # Ok::<(), candle_core::Error>(())
/// ```
pub trait CandleCamNet: Send + Sync {
    /// Images `(B, 3, H, W)` to outputs `(B, ...)`: class logits, one logit or features `(B, K)`,
    /// a segmentation's `(B, C, H, W)`; every named module output passed through `taps`.
    fn forward(&self, x: &Tensor, taps: &mut Taps) -> candle_core::Result<Tensor>;

    /// The input size `(H, W)` used to list layers and their shapes. 224x224 unless overridden.
    fn input_size(&self) -> (usize, usize) {
        (224, 224)
    }

    /// The layer explained when the user names none. When `None`, the rule every backend shares:
    /// [`gradcam_core::default_layer_among`] the tapped outputs.
    fn default_layer(&self) -> Option<String> {
        None
    }

    /// Tokens before the patch tokens in token layers (class, distillation tokens).
    fn prefix_tokens(&self) -> usize {
        0
    }
}

/// Below-cut outputs of one sequential step, per image: AblationCAM's many forwards through
/// the same images restart there instead of at the input.
#[derive(Default)]
struct StageCache {
    stage: String,
    entries: Vec<(u64, Vec<usize>, Vec<f32>, Tensor)>,
}

const CACHE_IMAGES: usize = 64;

/// A candle model cut at named layers: implements [`CamModel`].
///
/// Build one from a timm checkpoint ([`CandleModel::from_safetensors`]) or from your own
/// network ([`CandleModel::from_net`]). Runs on the CPU.
pub struct CandleModel {
    net: Box<dyn CandleCamNet>,
    arch: Option<String>,
    records: Option<Vec<TapRecord>>,
    cache: StageCache,
}

impl std::fmt::Debug for CandleModel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CandleModel").field("arch", &self.arch).finish_non_exhaustive()
    }
}

impl CandleModel {
    /// Loads a timm state dict saved with safetensors, for the timm architecture `arch` (one of
    /// [`crate::ARCHITECTURES`]). The number of classes is read from the head's weight; a
    /// checkpoint without a head (timm's `num_classes=0`) gives timm's pooled features, `(B, D)`,
    /// as `timm.create_model(arch, num_classes=0)` does (an embedding model).
    ///
    /// ```no_run
    /// use backend_candle::CandleModel;
    /// use gradcam_core::CamModel;
    /// let mut model = CandleModel::from_safetensors(
    ///     "assets/models/tf_efficientnet_lite0.safetensors".as_ref(),
    ///     "tf_efficientnet_lite0",
    /// )?;
    /// assert_eq!(model.default_layer()?, "bn2");
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn from_safetensors(path: &Path, arch: &str) -> Result<CandleModel, CandleError> {
        let net = crate::zoo::build(path, arch)?;
        Ok(CandleModel { net, arch: Some(arch.to_string()), records: None, cache: StageCache::default() })
    }

    /// Wraps your own network.
    pub fn from_net(net: impl CandleCamNet + 'static) -> CandleModel {
        CandleModel { net: Box::new(net), arch: None, records: None, cache: StageCache::default() }
    }

    /// The zoo architecture, for models loaded with [`CandleModel::from_safetensors`].
    pub fn arch(&self) -> Option<&str> {
        self.arch.as_deref()
    }

    /// The input size `(H, W)` the model is made for (ViTs accept only that patch grid).
    pub fn input_size(&self) -> (usize, usize) {
        self.net.input_size()
    }

    /// Tokens before the patch tokens in token layers: 1 for ViT (class token), 2 for distilled
    /// DeiT, 0 for CNNs.
    pub fn prefix_tokens(&self) -> usize {
        self.net.prefix_tokens()
    }

    /// The plain forward (no cut, nothing tracked): candle's own speed, the baseline the
    /// benchmark compares against.
    pub fn forward_tensor(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        self.net.forward(x, &mut Taps::default())
    }

    fn records(&mut self) -> Result<&[TapRecord], CandleError> {
        if self.records.is_none() {
            let (h, w) = self.net.input_size();
            let x = Tensor::zeros((1, 3, h, w), candle_core::DType::F32, &Device::Cpu)?;
            let mut taps = Taps::recording();
            self.net.forward(&x, &mut taps)?;
            let mut records = taps.records();
            // Only 3-D and 4-D outputs are layers core can explain.
            records.retain(|r| matches!(r.shape.len(), 3 | 4));
            self.records = Some(records);
        }
        Ok(self.records.as_deref().unwrap_or_default())
    }

    fn unknown_layer(&mut self, layer: &str) -> CamError {
        match self.records() {
            Ok(records) => CamError::UnknownLayer {
                name: layer.to_string(),
                near: near_matches(layer, records.iter().map(|r| r.name.as_str())),
            },
            Err(e) => e.into(),
        }
    }

    /// Below-cut output of sequential step `stage` for each image of `x`, cached per image
    /// (AblationCAM sends the same image many times).
    fn stage_outputs(&mut self, x: &Tensor, stage: &str) -> Result<Tensor, CandleError> {
        if self.cache.stage != stage {
            self.cache = StageCache { stage: stage.to_string(), entries: Vec::new() };
        }
        let dims = x.dims()[1..].to_vec();
        let flat = x.flatten_all()?.to_vec1::<f32>()?;
        let per_image = dims.iter().product::<usize>().max(1);
        // Each image's cache slot; consecutive equal images (the usual case) are compared once.
        let mut slots: Vec<Option<usize>> = Vec::new();
        let mut missing: Vec<(usize, u64)> = Vec::new();
        for (i, data) in flat.chunks(per_image).enumerate() {
            if i > 0 && data == &flat[(i - 1) * per_image..i * per_image] {
                slots.push(slots[i - 1]);
                continue;
            }
            let h = hash(data);
            let found =
                self.cache.entries.iter().position(|(eh, ed, ev, _)| *eh == h && *ed == dims && ev == data);
            if found.is_none()
                && !missing
                    .iter()
                    .any(|&(m, mh)| mh == h && &flat[m * per_image..(m + 1) * per_image] == data)
            {
                missing.push((i, h));
            }
            slots.push(found);
        }
        if !missing.is_empty() {
            let images = missing.iter().map(|&(i, _)| x.narrow(0, i, 1)).collect::<Result<Vec<_>, _>>()?;
            let batch = Tensor::cat(&images, 0)?;
            let mut taps = Taps::stop_after(stage);
            let out = match self.net.forward(&batch, &mut taps) {
                Err(e) if Taps::is_stop(&e) => taps.stopped(),
                Err(e) => return Err(e.into()),
                Ok(_) => None,
            }
            .ok_or_else(|| CandleError::Input(format!("the forward never reached `{stage}`")))?;
            let room = CACHE_IMAGES.saturating_sub(missing.len());
            let excess = self.cache.entries.len().saturating_sub(room);
            self.cache.entries.drain(..excess);
            for (j, &(i, h)) in missing.iter().enumerate() {
                let data = flat[i * per_image..(i + 1) * per_image].to_vec();
                self.cache.entries.push((h, dims.clone(), data, out.narrow(0, j, 1)?.contiguous()?));
            }
            // Slots shifted by the eviction; look every image up again (cheap: hashes first).
            slots.clear();
            for (i, data) in flat.chunks(per_image).enumerate() {
                if i > 0 && data == &flat[(i - 1) * per_image..i * per_image] {
                    slots.push(slots[i - 1]);
                    continue;
                }
                let h = hash(data);
                slots.push(
                    self.cache
                        .entries
                        .iter()
                        .position(|(eh, ed, ev, _)| *eh == h && *ed == dims && ev == data),
                );
            }
        }
        let outs = slots
            .iter()
            .map(|s| s.map(|p| self.cache.entries[p].3.clone()))
            .collect::<Option<Vec<_>>>()
            .ok_or_else(|| CandleError::Input("below-cut cache lost an image".into()))?;
        Ok(Tensor::cat(&outs, 0)?)
    }

    fn run_replaced(&mut self, x: &Tensor, layer: &str, activation: Tensor) -> Result<Tensor, CamError> {
        let records = self.records()?;
        let Some(at) = records.iter().position(|r| r.name == layer) else {
            return Err(self.unknown_layer(layer));
        };
        let inside = format!("{layer}.");
        // Where the forward can start: the layer itself when it is a sequential step, else the
        // last sequential step finished before it (its input comes from there).
        let resume = if records[at].sequential {
            Some((layer.to_string(), None))
        } else {
            records[..at]
                .iter()
                .rev()
                .find(|r| r.sequential && !r.name.starts_with(&inside))
                .map(|r| (r.name.clone(), Some(())))
        };
        let mut taps = Taps::replace(layer, activation.clone());
        if let Some((stage, from_cache)) = resume {
            let start = match from_cache {
                None => activation.clone(),
                Some(()) => self.stage_outputs(x, &stage)?,
            };
            taps = taps.resume_at(&stage, start);
        }
        match self.net.forward(x, &mut taps) {
            Ok(logits) if taps.was_replaced() => return Ok(logits),
            Err(e) if !taps.skipping() => return Err(CandleError::from(e).into()),
            // A net whose sequential steps are not truly sequential: run it whole.
            _ => {}
        }
        let mut taps = Taps::replace(layer, activation);
        let logits = self.net.forward(x, &mut taps).map_err(CandleError::from)?;
        if !taps.was_replaced() {
            return Err(self.unknown_layer(layer));
        }
        Ok(logits)
    }

    /// The whole forward from `input` made a leaf, through `taps`, and the backward of core's
    /// seed: the leaf, the outputs (one row per image), their per-image shape and every gradient.
    fn backward_from_input(
        &mut self,
        input: ArrayView4<f32>,
        taps: &mut Taps,
        seed: &dyn Seed,
    ) -> Result<(Var, Array2<f32>, Vec<usize>, GradStore), CamError> {
        let x = Var::from_tensor(&to_tensor(input)?).map_err(CandleError::from)?;
        let logits_t = self.net.forward(x.as_tensor(), taps).map_err(CandleError::from)?;
        let (logits, output_shape) = to_logits(&logits_t)?;
        let grads = backward(&logits_t, &logits, &output_shape, seed)?;
        Ok((x, logits, output_shape, grads))
    }
}

/// The gradients of `Σ seed(logits) · logits`, core's seed computed from this very forward's
/// `logits`.
fn backward(
    logits_t: &Tensor,
    logits: &Array2<f32>,
    output_shape: &[usize],
    seed: &dyn Seed,
) -> Result<GradStore, CamError> {
    let seed = seed.seed(logits.view(), output_shape)?;
    // Core's seed has one row per image; the output tensor keeps its own shape.
    let seed = Tensor::from_slice(seed.as_slice().unwrap_or_default(), logits_t.dims(), &Device::Cpu)
        .map_err(CandleError::from)?;
    let grads = logits_t.mul(&seed).and_then(|t| t.sum_all()).and_then(|t| t.backward());
    Ok(grads.map_err(CandleError::from)?)
}

/// `leaf`'s gradient in `grads` (zeros where the logits do not depend on it).
fn grad_of(grads: &GradStore, leaf: &Var) -> Result<Tensor, CamError> {
    match grads.get(leaf.as_tensor()) {
        Some(g) => Ok(g.clone()),
        None => Ok(leaf.as_tensor().zeros_like().map_err(CandleError::from)?),
    }
}

/// A tensor `(B, C, H, W)` as an array.
fn to_array4(t: &Tensor) -> Result<Array4<f32>, CamError> {
    let dims = t.dims().to_vec();
    let [b, c, h, w] = dims[..] else {
        return Err(CamError::Shape(format!("expected a (B, C, H, W) tensor, got {dims:?}")));
    };
    let data = t.flatten_all().and_then(|t| t.to_vec1::<f32>()).map_err(CandleError::from)?;
    Array4::from_shape_vec((b, c, h, w), data).map_err(|e| CamError::Shape(e.to_string()))
}

fn hash(data: &[f32]) -> u64 {
    // FNV-1a over the bits: only a pre-filter, equality is checked in full.
    data.iter().fold(0xcbf2_9ce4_8422_2325, |h, v| (h ^ v.to_bits() as u64).wrapping_mul(0x100_0000_01b3))
}

fn to_tensor(input: ArrayView4<f32>) -> Result<Tensor, CandleError> {
    let input = input.as_standard_layout();
    let data = input.as_slice().unwrap_or_default();
    Ok(Tensor::from_slice(data, input.shape(), &Device::Cpu)?)
}

fn view_to_tensor(view: LayerView<'_>) -> Result<Tensor, CandleError> {
    let owned = view.to_owned();
    Ok(Tensor::from_vec(owned.to_vec(), owned.shape(), &Device::Cpu)?)
}

fn to_layer(t: &Tensor) -> Result<LayerTensor, CamError> {
    let data = t.flatten_all().and_then(|t| t.to_vec1::<f32>()).map_err(CandleError::from)?;
    LayerTensor::from_shape_vec(t.dims(), data)
}

/// A `(B, ...)` output as one row per image, and the per-image shape (`[K]` for logits,
/// `[C, H, W]` for a segmentation), as core's targets read it.
fn to_logits(t: &Tensor) -> Result<(Array2<f32>, Vec<usize>), CandleError> {
    let dims = t.dims().to_vec();
    let Some((&b, shape)) = dims.split_first().filter(|(_, rest)| !rest.is_empty()) else {
        return Err(CandleError::Logits(dims));
    };
    let data = t.flatten_all()?.to_vec1::<f32>()?;
    let rows = Array2::from_shape_vec((b, shape.iter().product()), data)
        .map_err(|_| CandleError::Logits(dims.clone()))?;
    Ok((rows, shape.to_vec()))
}

impl CamModel for CandleModel {
    fn layers(&mut self) -> Result<Vec<LayerInfo>, CamError> {
        Ok(self
            .records()?
            .iter()
            .map(|r| LayerInfo { name: r.name.clone(), shape: r.shape.clone() })
            .collect())
    }

    fn default_layer(&mut self) -> Result<String, CamError> {
        if let Some(layer) = self.net.default_layer() {
            return Ok(layer);
        }
        default_layer_among(&self.layers()?)
    }

    fn capture(
        &mut self,
        input: ArrayView4<f32>,
        layer: &str,
        seed: Option<&dyn Seed>,
    ) -> Result<Capture, CamError> {
        let x = to_tensor(input)?;
        let mut taps = Taps::cut(layer);
        let logits_t = self.net.forward(&x, &mut taps).map_err(CandleError::from)?;
        let Some(leaf) = taps.leaf().cloned() else {
            return Err(self.unknown_layer(layer));
        };
        let (logits, output_shape) = to_logits(&logits_t)?;
        let activation = to_layer(leaf.as_tensor())?;
        let gradient = match seed {
            None => None,
            Some(seed) => {
                let grads = backward(&logits_t, &logits, &output_shape, seed)?;
                Some(to_layer(&grad_of(&grads, &leaf)?)?)
            }
        };
        Ok(Capture { logits, output_shape, activation, gradient })
    }

    fn input_gradient(
        &mut self,
        input: ArrayView4<f32>,
        seed: &dyn Seed,
        relu: ReluBackward,
    ) -> Result<InputGradient, CamError> {
        let mut taps = match relu {
            ReluBackward::Plain => Taps::default(),
            ReluBackward::Guided => Taps::guided(),
        };
        let (x, logits, output_shape, grads) = self.backward_from_input(input, &mut taps, seed)?;
        let gradient = to_array4(&grad_of(&grads, &x)?)?;
        Ok(InputGradient { output_shape, logits, gradient })
    }

    /// The input's gradient and every `nn.BatchNorm2d` / biased `nn.Conv2d` output's (the zoo
    /// marks them with [`Taps::biased`]: timm's `BatchNormAct2d` of the EfficientNets is neither,
    /// as pytorch-grad-cam's exact type test sees it), from one backward pass.
    fn full_gradients(&mut self, input: ArrayView4<f32>, seed: &dyn Seed) -> Result<FullGradients, CamError> {
        let mut taps = Taps::full_grad();
        let (x, logits, output_shape, grads) = self.backward_from_input(input, &mut taps, seed)?;
        let input_gradient = to_array4(&grad_of(&grads, &x)?)?;
        let biases = taps
            .biases()
            .into_iter()
            .map(|t| {
                let gradient = to_array4(&grad_of(&grads, &t.leaf)?)?;
                Ok(BiasGradient { layer: t.name, bias: t.bias, gradient })
            })
            .collect::<Result<Vec<_>, CamError>>()?;
        Ok(FullGradients { logits, output_shape, input_gradient, biases })
    }

    fn forward(&mut self, input: ArrayView4<f32>) -> Result<Array2<f32>, CamError> {
        let x = to_tensor(input)?;
        let logits = self.forward_tensor(&x).map_err(CandleError::from)?;
        Ok(to_logits(&logits)?.0)
    }

    fn forward_with_activation(
        &mut self,
        input: ArrayView4<f32>,
        layer: &str,
        activation: LayerView<'_>,
    ) -> Result<Array2<f32>, CamError> {
        let x = to_tensor(input)?;
        let activation = view_to_tensor(activation)?;
        let logits = self.run_replaced(&x, layer, activation)?;
        Ok(to_logits(&logits)?.0)
    }
}
