//! The tap context every named module output goes through: it is where the model is cut.

use candle_core::{Result, Tensor, Var};

/// A module output seen during a probing forward.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct TapRecord {
    pub(crate) name: String,
    pub(crate) shape: Vec<usize>,
    /// Whether it was a [`Taps::sequential`] step: everything after depends on the input only
    /// through this output.
    pub(crate) sequential: bool,
}

/// Marks the early exit of a forward that only had to reach one tap.
const STOP: &str = "gradcam: forward stopped at the requested tap";

/// The context a [`crate::CandleCamNet`] passes every named module output through, by its
/// PyTorch module path (`layer4`, `layer4.1.conv2`, `blocks.11.norm1`).
///
/// Depending on what the backend asked for, a tap records the name and shape (to list layers),
/// turns the output into a gradient leaf (Grad-CAM's cut: nothing below it is tracked), or swaps
/// in a given activation (AblationCAM). A plain forward passes every output through unchanged.
///
/// ```
/// use backend_candle::Taps;
/// use candle_core::{Device, Tensor};
/// let mut taps = Taps::default();
/// let x = Tensor::ones((1, 2, 3, 3), candle_core::DType::F32, &Device::Cpu).unwrap();
/// let y = taps.tap("features", x.relu().unwrap()).unwrap();
/// assert_eq!(y.dims(), &[1, 2, 3, 3]);
/// ```
#[derive(Default)]
pub struct Taps {
    /// Capture: the output of this layer becomes a leaf.
    cut: Option<String>,
    leaf: Option<Var>,
    /// AblationCAM: the output of this layer is replaced.
    replace: Option<(String, Tensor)>,
    replaced: bool,
    /// Skip every sequential step before this one, whose output is given.
    resume: Option<(String, Tensor)>,
    /// Stop the forward once this tap is reached (filling the below-cut cache).
    stop_after: Option<String>,
    stopped: Option<Tensor>,
    record: Option<Vec<TapRecord>>,
    /// Guided backpropagation: every [`Taps::relu`] passes only positive gradients back.
    guided: bool,
    /// FullGrad: every [`Taps::biased`] output, with the zero leaf added to it and its bias.
    biases: Option<Vec<BiasTap>>,
}

/// A layer output with a bias, seen in a FullGrad forward: `d score / d leaf` is the output's
/// gradient.
pub(crate) struct BiasTap {
    pub(crate) name: String,
    pub(crate) leaf: Var,
    pub(crate) bias: Vec<f32>,
}

impl Taps {
    pub(crate) fn recording() -> Self {
        Taps { record: Some(Vec::new()), ..Taps::default() }
    }

    pub(crate) fn cut(layer: &str) -> Self {
        Taps { cut: Some(layer.to_string()), ..Taps::default() }
    }

    /// A forward whose ReLUs back-propagate as guided backprop's ([`Taps::relu`]).
    pub(crate) fn guided() -> Self {
        Taps { guided: true, ..Taps::default() }
    }

    /// A forward that records every layer with a bias ([`Taps::biased`]) for FullGrad.
    pub(crate) fn full_grad() -> Self {
        Taps { biases: Some(Vec::new()), ..Taps::default() }
    }

    /// The layers with a bias a [`Taps::full_grad`] forward went through, in forward order.
    pub(crate) fn biases(&mut self) -> Vec<BiasTap> {
        self.biases.take().unwrap_or_default()
    }

    pub(crate) fn replace(layer: &str, activation: Tensor) -> Self {
        Taps { replace: Some((layer.to_string(), activation)), ..Taps::default() }
    }

    pub(crate) fn stop_after(layer: &str) -> Self {
        Taps { stop_after: Some(layer.to_string()), ..Taps::default() }
    }

    /// Skips the forward up to `stage` (a [`Taps::sequential`] step), starting from its given
    /// output instead.
    pub(crate) fn resume_at(mut self, stage: &str, output: Tensor) -> Self {
        self.resume = Some((stage.to_string(), output));
        self
    }

    pub(crate) fn leaf(&self) -> Option<&Var> {
        self.leaf.as_ref()
    }

    pub(crate) fn was_replaced(&self) -> bool {
        self.replaced
    }

    pub(crate) fn records(self) -> Vec<TapRecord> {
        self.record.unwrap_or_default()
    }

    /// The output the forward stopped at, when the error it returned was the early exit.
    pub(crate) fn stopped(&mut self) -> Option<Tensor> {
        self.stopped.take()
    }

    pub(crate) fn is_stop(e: &candle_core::Error) -> bool {
        matches!(e, candle_core::Error::Msg(m) if m == STOP)
    }

    /// Passes the output `x` of module `name` through; returns what the rest of the model must
    /// use instead (`x` itself in a plain forward).
    pub fn tap(&mut self, name: &str, x: Tensor) -> Result<Tensor> {
        self.visit(name, x, false)
    }

    /// Runs `module` (named `name`) on `x` and taps its output, for a step of a sequential chain:
    /// a module whose output is the only thing the rest of the forward reads from before it (a
    /// ResNet stage or block, a ViT block). This lets AblationCAM start the forward at that
    /// step instead of recomputing everything below it. Use [`Taps::tap`] for anything else
    /// (e.g. a module inside a residual branch).
    pub fn sequential(
        &mut self,
        name: &str,
        x: &Tensor,
        module: impl FnOnce(&Tensor, &mut Taps) -> Result<Tensor>,
    ) -> Result<Tensor> {
        if let Some((stage, output)) = &self.resume {
            if stage == name {
                let output = output.clone();
                self.resume = None;
                return self.visit(name, output, true);
            }
            let inside =
                stage.len() > name.len() && stage.starts_with(name) && stage[name.len()..].starts_with('.');
            if !inside {
                // Below the resume point: its result is never read (the resume point replaces it).
                return Ok(x.clone());
            }
        }
        let y = module(x, self)?;
        self.visit(name, y, true)
    }

    /// A ReLU, as every `nn.ReLU` of a model must be written: plain, or with guided backprop's
    /// backward when the backend asked for it (pytorch-grad-cam swaps exactly the `nn.ReLU`
    /// modules; ReLU6 and GELU stay plain).
    pub fn relu(&self, x: &Tensor) -> Result<Tensor> {
        if self.guided {
            crate::ops::guided_relu(x)
        } else {
            x.relu()
        }
    }

    /// Whether the forward records layers with a bias (FullGrad): only then is
    /// [`Taps::biased`]'s bias read.
    pub fn wants_biases(&self) -> bool {
        self.biases.is_some()
    }

    /// The output `x` of the layer `name` whose per-channel bias is `bias`, written wherever the
    /// model has a module that is exactly `nn.BatchNorm2d`, or `nn.Conv2d` with a bias (what
    /// pytorch-grad-cam's FullGrad reads). In a FullGrad forward, a zero-valued leaf is added to
    /// it: the leaf's gradient is the output's. Otherwise `x` itself.
    pub fn biased(&mut self, name: &str, x: Tensor, bias: &[f32]) -> Result<Tensor> {
        let Some(biases) = &mut self.biases else { return Ok(x) };
        let leaf = Var::zeros(x.shape(), x.dtype(), x.device())?;
        let x = (x + leaf.as_tensor())?;
        biases.push(BiasTap { name: name.to_string(), leaf, bias: bias.to_vec() });
        Ok(x)
    }

    /// Whether the forward is still skipping towards its resume point.
    pub fn skipping(&self) -> bool {
        self.resume.is_some()
    }

    fn visit(&mut self, name: &str, x: Tensor, sequential: bool) -> Result<Tensor> {
        if let Some(record) = &mut self.record {
            record.push(TapRecord { name: name.to_string(), shape: x.dims().to_vec(), sequential });
        }
        let mut x = x;
        if self.cut.as_deref() == Some(name) {
            let leaf = Var::from_tensor(&x.detach())?;
            x = leaf.as_tensor().clone();
            self.leaf = Some(leaf);
        }
        if let Some((layer, activation)) = &self.replace {
            if layer == name {
                if activation.dims() != x.dims() {
                    candle_core::bail!(
                        "activation for `{name}` has shape {:?}, the layer outputs {:?}",
                        activation.dims(),
                        x.dims()
                    );
                }
                x = activation.clone();
                self.replaced = true;
            }
        }
        if self.stop_after.as_deref() == Some(name) {
            self.stopped = Some(x);
            // Not `bail!`, which may wrap the message in a backtrace.
            return Err(candle_core::Error::Msg(STOP.to_string()));
        }
        Ok(x)
    }
}
