//! [`TorchScriptModel`]: a TorchScript module as a [`CamModel`].

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use gradcam_core::{
    near_matches, BiasGradient, CamError, CamModel, Capture, FullGradients, InputGradient, LayerInfo,
    LayerTensor, LayerView, ReluBackward, Seed,
};
use ndarray::{Array2, Array4, ArrayView2, ArrayView4};
use tch::{Device, Kind, Tensor};

use crate::error::missing_derivative;
use crate::ffi::{Built, Function, Mode, Module};
use crate::{DeviceChoice, TchError};

/// A TorchScript module (from `torch.jit.trace` or `torch.jit.script`) that can be cut at any
/// module path. Runs on the CPU or a CUDA device.
///
/// Layers are PyTorch module paths (`layer4`, `layer4.1`, `blocks.11.norm1`); the output of the
/// first call of that module in `forward` is the activation. Parameters never require grad;
/// gradients are taken w.r.t. the activation only.
pub struct TorchScriptModel {
    module: Module,
    device: Device,
    path: PathBuf,
    module_paths: Vec<String>,
    probe_hw: (usize, usize),
    probed: Option<Vec<LayerInfo>>,
    functions: HashMap<(String, Mode), Function>,
    token_pruning: bool,
    /// Pruned nodes of each layer's capture function.
    pruned: HashMap<String, usize>,
    /// The paths of FullGrad's bias layers, once [`Mode::Full`] is built.
    bias_layers: Vec<String>,
}

impl std::fmt::Debug for TorchScriptModel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TorchScriptModel").field("path", &self.path).field("device", &self.device).finish()
    }
}

impl TorchScriptModel {
    /// Loads a TorchScript file onto a device, in eval mode.
    ///
    /// Unless the environment already sets it, this sets `THP_MEM_ALLOC_ENABLE=1`, which libtorch
    /// reads at its first CPU allocation: large blocks then come from transparent huge pages
    /// instead of being page-faulted in afresh at every forward (half of a CNN's forward time on
    /// a VM). Load the model before creating other tensors for it to take effect.
    ///
    /// Fails with [`TchError::Io`] when the file cannot be read, [`TchError::NotTorchScript`]
    /// when libtorch rejects it, [`TchError::CudaUnavailable`] for [`DeviceChoice::Cuda`] on a
    /// machine without CUDA.
    pub fn load(path: &Path, device: DeviceChoice) -> Result<TorchScriptModel, TchError> {
        std::fs::File::open(path).map_err(|source| TchError::Io { path: path.to_owned(), source })?;
        let device = device.resolve()?;
        let module = Module::load(path, device).map_err(|message| TchError::NotTorchScript {
            path: path.to_owned(),
            message: message.lines().next().unwrap_or_default().to_owned(),
        })?;
        let module_paths = module.module_paths().map_err(TchError::Torch)?;
        Ok(TorchScriptModel {
            module,
            device,
            path: path.to_owned(),
            module_paths,
            probe_hw: (224, 224),
            probed: None,
            functions: HashMap::new(),
            token_pruning: true,
            pruned: HashMap::new(),
            bias_layers: Vec::new(),
        })
    }

    /// The device the model runs on.
    pub fn device(&self) -> Device {
        self.device
    }

    /// Every submodule path of the module (`named_modules`), whether or not its output can be
    /// captured.
    pub fn module_paths(&self) -> &[String] {
        &self.module_paths
    }

    /// Sets the input size `layers()` reports shapes for (default 224x224). A traced model may run
    /// at the size it was traced at only (timm's MobileViT bakes it into reshapes): set that size.
    /// [`CamModel::capture`] moves it to the size of its input.
    pub fn set_probe_size(&mut self, height: usize, width: usize) {
        if self.probe_hw != (height, width) {
            self.probe_hw = (height, width);
            self.probed = None;
            // Class-token pruning was planned from shapes at the old size.
            self.functions.retain(|(_, mode), _| *mode != Mode::Capture);
            self.pruned.clear();
        }
    }

    /// The whole model on an input tensor already on [`Self::device`], without autograd, frozen
    /// and optimized for inference (as `torch.jit.optimize_for_inference`; the part of
    /// [`CamModel::capture`] before the layer runs the same way): the baseline a CAM's cost is
    /// compared with.
    pub fn forward_tensor(&mut self, input: &Tensor) -> Result<Tensor, TchError> {
        let function = self.function("", Mode::Forward).map_err(|e| TchError::Torch(e.to_string()))?;
        let outputs = tch::no_grad(|| function.run(&[input], 1))?;
        outputs.into_iter().next().ok_or_else(|| TchError::Torch("the forward returned nothing".into()))
    }

    /// The module's own `forward` method as loaded, without autograd: what `model(x)` costs in
    /// libtorch without the inference optimizations.
    pub fn script_forward_tensor(&self, input: &Tensor) -> Result<Tensor, TchError> {
        tch::no_grad(|| self.module.forward(input)).map_err(TchError::Torch)
    }

    /// Runs the model once on zeros and records every exposable layer's output shape.
    fn probe(&mut self) -> Result<&[LayerInfo], TchError> {
        if self.probed.is_none() {
            let Built { function, names, .. } = self
                .module
                .build("", Mode::Probe, self.probe_hw, false)
                .map_err(TchError::Torch)?
                .ok_or_else(|| TchError::Torch("the shim found no forward to probe".into()))?;
            let (h, w) = self.probe_hw;
            let x = Tensor::zeros([1, 3, h as i64, w as i64], (Kind::Float, self.device));
            let outputs = tch::no_grad(|| function.run(&[&x], names.len() + 1))
                .map_err(|message| TchError::Probe { height: h, width: w, message })?;
            let mut probed = Vec::new();
            for (name, tensor) in names.iter().zip(&outputs[1..]) {
                let shape: Vec<usize> = tensor.size().iter().map(|&d| d as usize).collect();
                // Only (B, C, H, W) and (B, N, D) outputs can be explained.
                if matches!(shape.len(), 3 | 4) {
                    probed.push(LayerInfo { name: name.clone(), shape });
                }
            }
            self.probed = Some(probed);
        }
        Ok(self.probed.as_deref().unwrap_or_default())
    }

    /// Whether the part after the cut runs the layers that feed only the head's class token on
    /// that token alone (on by default). A ViT's head reads `x[:, 0]`, yet the layers after its
    /// last attention run on every token; pruned, they run on one. Logits, activations and
    /// gradients are the same either way. Needs shapes, so only traced modules (and scripted
    /// ones whose shapes libtorch's shape analysis follows) are pruned.
    pub fn set_token_pruning(&mut self, on: bool) {
        if self.token_pruning != on {
            self.token_pruning = on;
            self.functions.retain(|(_, mode), _| *mode != Mode::Capture);
        }
    }

    /// How many nodes after the cut at `layer` run on the class token only (see
    /// [`TorchScriptModel::set_token_pruning`]); builds the capture function if needed.
    pub fn pruned_nodes(&mut self, layer: &str) -> Result<usize, CamError> {
        self.function(layer, Mode::Capture)?;
        Ok(self.pruned.get(layer).copied().unwrap_or(0))
    }

    /// The shim function for `layer`, built on first use.
    fn function(&mut self, layer: &str, mode: Mode) -> Result<&Function, CamError> {
        let key = (layer.to_owned(), mode);
        if !self.functions.contains_key(&key) {
            if mode.has_layer() && !self.module_paths.iter().any(|p| p == layer) {
                let near = near_matches(layer, self.module_paths.iter().map(String::as_str));
                return Err(CamError::UnknownLayer { name: layer.to_owned(), near });
            }
            let built = self
                .module
                .build(layer, mode, self.probe_hw, self.token_pruning)
                .map_err(|e| CamError::backend(TchError::Torch(e)))?;
            let Built { function, pruned, names } = built.ok_or_else(|| {
                CamError::backend(TchError::Layer {
                    layer: layer.to_owned(),
                    reason: "its output is not a tensor computed by `forward` outside control flow (the \
                             module is never called, is called inside a data-dependent `if`/loop, or \
                             returns a tuple)"
                        .into(),
                })
            })?;
            match mode {
                Mode::Capture => {
                    self.pruned.insert(layer.to_owned(), pruned);
                }
                Mode::Full => self.bias_layers = names,
                _ => {}
            }
            self.functions.insert(key.clone(), function);
        }
        Ok(&self.functions[&key])
    }

    fn input_tensor(&self, input: ArrayView4<f32>) -> Tensor {
        tensor_from(input.shape(), input.as_slice(), || input.iter().copied().collect())
            .to_device(self.device)
    }
}

fn tensor_from(shape: &[usize], slice: Option<&[f32]>, collect: impl FnOnce() -> Vec<f32>) -> Tensor {
    let shape: Vec<i64> = shape.iter().map(|&d| d as i64).collect();
    let t = match slice {
        Some(s) => Tensor::from_slice(s),
        None => Tensor::from_slice(&collect()),
    };
    t.view(shape.as_slice())
}

/// Copies a tensor to the host as `f32`, with its shape.
fn host(t: &Tensor) -> Result<(Vec<usize>, Vec<f32>), TchError> {
    let t = t.to_device(Device::Cpu).to_kind(Kind::Float).contiguous();
    let shape = t.size().iter().map(|&d| d as usize).collect();
    Ok((shape, Vec::<f32>::try_from(&t.view(-1))?))
}

/// The model's output flattened per image to `(B, D)`, and its per-image shape (`[K]` for
/// class logits, `[C, H, W]` for a segmentation, `[]` for one score per image).
fn logits_array(t: &Tensor) -> Result<(Array2<f32>, Vec<usize>), TchError> {
    let (shape, data) = host(t)?;
    let Some((&batch, per_image)) = shape.split_first() else {
        return Err(TchError::Shape(format!(
            "the model returned a scalar {shape:?}; expected an output per image (batch, ...)"
        )));
    };
    let width = per_image.iter().product();
    let rows = Array2::from_shape_vec((batch, width), data).map_err(|e| TchError::Shape(e.to_string()))?;
    Ok((rows, per_image.to_vec()))
}

fn layer_tensor(t: &Tensor) -> Result<LayerTensor, CamError> {
    let (shape, data) = host(t).map_err(CamError::backend)?;
    LayerTensor::from_shape_vec(&shape, data)
}

fn view_tensor(v: LayerView<'_>, device: Device) -> Tensor {
    let t = match v {
        LayerView::Spatial(a) => tensor_from(a.shape(), a.as_slice(), || a.iter().copied().collect()),
        LayerView::Tokens(a) => tensor_from(a.shape(), a.as_slice(), || a.iter().copied().collect()),
    };
    t.to_device(device)
}

/// `Σ seed · logits`, the score whose gradient a capture takes; `seed` is `(B, D)` as core's
/// [`Seed::seed`] returns it for `logits` flattened per image.
fn score(logits: &Tensor, seed: ArrayView2<f32>, device: Device) -> Tensor {
    let seed = tensor_from(&[seed.nrows(), seed.ncols()], seed.as_slice(), || seed.iter().copied().collect())
        .reshape(logits.size())
        .to_device(device)
        .to_kind(logits.kind());
    (logits * seed).sum(logits.kind())
}

fn torch_err(e: impl Into<TchError>) -> CamError {
    CamError::backend(e.into())
}

/// A backward pass's error; libtorch's "derivative for aten::op is not implemented" says what to
/// do: for a capture of `layer`, or (`None`) for a gradient down to the input.
fn differentiation_err(layer: Option<&str>, e: impl Into<TchError>) -> CamError {
    let e = e.into();
    if let TchError::Torch(message) = &e {
        if let Some(op) = missing_derivative(message) {
            let op = op.to_owned();
            return torch_err(match layer {
                Some(layer) => TchError::NoDerivative { layer: layer.to_owned(), op },
                None => TchError::NoInputDerivative { op },
            });
        }
    }
    torch_err(e)
}

/// A 4-d tensor on the host; `what` and `expected` name it in the error.
fn array4(t: &Tensor, what: &str, expected: &str) -> Result<Array4<f32>, CamError> {
    let (shape, data) = host(t).map_err(CamError::backend)?;
    match shape[..] {
        [b, c, h, w] => {
            Array4::from_shape_vec((b, c, h, w), data).map_err(|e| torch_err(TchError::Shape(e.to_string())))
        }
        _ => Err(torch_err(TchError::Shape(format!("{what} of shape {shape:?}, expected {expected}")))),
    }
}

impl From<String> for TchError {
    fn from(e: String) -> Self {
        TchError::Torch(e)
    }
}

impl CamModel for TorchScriptModel {
    fn layers(&mut self) -> Result<Vec<LayerInfo>, CamError> {
        Ok(self.probe().map_err(CamError::backend)?.to_vec())
    }

    fn capture(
        &mut self,
        input: ArrayView4<f32>,
        layer: &str,
        seed: Option<&dyn Seed>,
    ) -> Result<Capture, CamError> {
        let (_, _, height, width) = input.dim();
        self.set_probe_size(height, width);
        let x = self.input_tensor(input);
        let device = self.device;
        let function = self.function(layer, Mode::Capture)?;
        // With a seed, autograd records the graph after the cut (the activation is a leaf that
        // requires grad; nothing else does). Without one, nothing is recorded at all.
        let outputs = match seed {
            Some(_) => tch::with_grad(|| function.run(&[&x], 2)),
            None => tch::no_grad(|| function.run(&[&x], 2)),
        }
        .map_err(|e| differentiation_err(Some(layer), e))?;
        let [logits_t, act_t]: [Tensor; 2] = outputs
            .try_into()
            .map_err(|_| torch_err(TchError::Torch("expected (logits, activation)".into())))?;
        let (logits, output_shape) = logits_array(&logits_t).map_err(CamError::backend)?;
        let gradient = match seed {
            Some(seed) => {
                let seed = seed.seed(logits.view(), &output_shape)?;
                let score = score(&logits_t, seed.view(), device);
                let grads = Tensor::f_run_backward(&[score], &[&act_t], false, false)
                    .map_err(|e| differentiation_err(Some(layer), TchError::from(e)))?;
                Some(layer_tensor(&grads[0])?)
            }
            None => None,
        };
        Ok(Capture { logits, output_shape, activation: layer_tensor(&act_t.detach())?, gradient })
    }

    /// The whole forward runs with autograd (nothing frozen or fused, unlike [`CamModel::capture`]'s
    /// part before the layer), the input a leaf that requires grad, parameters without grad.
    ///
    /// [`ReluBackward::Guided`] guides every ReLU of the graph, `aten::relu` and `aten::relu_`
    /// alike: the definition of guided backprop (Springenberg et al.). pytorch-grad-cam swaps
    /// `nn.ReLU` modules only, which differs for ReLUs called as functions (`F.relu`, torchvision
    /// DenseNet's last one). ReLU6, LeakyReLU, GELU and the like stay plain, as there.
    fn input_gradient(
        &mut self,
        input: ArrayView4<f32>,
        seed: &dyn Seed,
        relu: ReluBackward,
    ) -> Result<InputGradient, CamError> {
        let x = self.input_tensor(input);
        let device = self.device;
        let mode = match relu {
            ReluBackward::Plain => Mode::Input,
            ReluBackward::Guided => Mode::GuidedInput,
        };
        let function = self.function("", mode)?;
        let outputs = tch::with_grad(|| function.run(&[&x], 2)).map_err(|e| differentiation_err(None, e))?;
        let [logits_t, leaf]: [Tensor; 2] =
            outputs.try_into().map_err(|_| torch_err(TchError::Torch("expected (logits, input)".into())))?;
        let (logits, output_shape) = logits_array(&logits_t).map_err(CamError::backend)?;
        let seed = seed.seed(logits.view(), &output_shape)?;
        let score = score(&logits_t, seed.view(), device);
        let grads = Tensor::f_run_backward(&[score], &[&leaf], false, false)
            .map_err(|e| differentiation_err(None, TchError::from(e)))?;
        let gradient = array4(&grads[0], "input gradient", "(B, 3, H, W)")?;
        Ok(InputGradient { logits, output_shape, gradient })
    }

    /// One forward with autograd as [`CamModel::input_gradient`]'s (plain ReLUs), whose graph
    /// also returns the output of every bias layer (exactly `nn.Conv2d` with a bias, or
    /// `nn.BatchNorm2d`, as pytorch-grad-cam picks them) and its bias; one backward to the input
    /// and to those outputs. The graph's readers of each output get a clone of it, so an in-place
    /// op after the layer (`ReLU(inplace=True)`) never changes the tensor whose gradient is taken.
    fn full_gradients(&mut self, input: ArrayView4<f32>, seed: &dyn Seed) -> Result<FullGradients, CamError> {
        let x = self.input_tensor(input);
        let device = self.device;
        self.function("", Mode::Full)?;
        let layers = self.bias_layers.clone();
        let function = &self.functions[&(String::new(), Mode::Full)];
        let n = layers.len();
        let outputs =
            tch::with_grad(|| function.run(&[&x], 2 + 2 * n)).map_err(|e| differentiation_err(None, e))?;
        if outputs.len() != 2 + 2 * n {
            return Err(torch_err(TchError::Torch(format!(
                "expected logits, the input and {n} bias layers' outputs and biases; got {} tensors",
                outputs.len()
            ))));
        }
        let (logits, output_shape) = logits_array(&outputs[0]).map_err(CamError::backend)?;
        let seed = seed.seed(logits.view(), &output_shape)?;
        let score = score(&outputs[0], seed.view(), device);
        let wrt: Vec<&Tensor> = outputs[1..2 + n].iter().collect();
        let grads = Tensor::f_run_backward(&[score], &wrt, false, false)
            .map_err(|e| differentiation_err(None, TchError::from(e)))?;
        let input_gradient = array4(&grads[0], "input gradient", "(B, 3, H, W)")?;
        let mut biases = Vec::with_capacity(n);
        for (i, layer) in layers.into_iter().enumerate() {
            let output = &outputs[2 + i];
            // A layer the score does not depend on gets no gradient from autograd: zero.
            let grad =
                if grads[1 + i].defined() { grads[1 + i].shallow_clone() } else { output.zeros_like() };
            let gradient = array4(&grad, &format!("`{layer}`'s output gradient"), "(B, C, h, w)")?;
            let (_, bias) = host(&outputs[2 + n + i]).map_err(CamError::backend)?;
            biases.push(BiasGradient { layer, bias, gradient });
        }
        Ok(FullGradients { logits, output_shape, input_gradient, biases })
    }

    fn forward(&mut self, input: ArrayView4<f32>) -> Result<Array2<f32>, CamError> {
        let x = self.input_tensor(input);
        let logits = self.forward_tensor(&x).map_err(CamError::backend)?;
        Ok(logits_array(&logits).map_err(CamError::backend)?.0)
    }

    fn forward_with_activation(
        &mut self,
        input: ArrayView4<f32>,
        layer: &str,
        activation: LayerView<'_>,
    ) -> Result<Array2<f32>, CamError> {
        let x = self.input_tensor(input);
        let act = view_tensor(activation, self.device);
        let function = self.function(layer, Mode::Replace)?;
        let outputs = tch::no_grad(|| function.run(&[&x, &act], 1)).map_err(torch_err)?;
        Ok(logits_array(&outputs[0]).map_err(CamError::backend)?.0)
    }
}
