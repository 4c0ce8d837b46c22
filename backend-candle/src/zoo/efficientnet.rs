//! timm `EfficientNet` in its Lite form (no squeeze-excite, ReLU6): `tf_efficientnet_lite*` with
//! TensorFlow "SAME" padding and BN eps 1e-3, `efficientnet_lite*` with symmetric padding and
//! BN eps 1e-5. Repeats, widths and kernel sizes are read from the state dict; strides are the
//! architecture's.

use candle_core::{Module, Result, Tensor};

use crate::ops::{Act, BatchNorm, Conv2d, Padding};
use crate::weights::Weights;
use crate::{CandleCamNet, CandleError, Taps};

/// Stride of each stage's first block (timm `_gen_efficientnet_lite`'s arch_def).
const STAGE_STRIDES: [usize; 7] = [1, 2, 2, 2, 1, 2, 1];

struct Layer {
    name: &'static str,
    conv_name: &'static str,
    conv: Conv2d,
    bn: BatchNorm,
    act: Act,
}

struct Block {
    name: String,
    /// Depthwise-separable (first stage): conv_dw/bn1, conv_pw/bn2.
    /// Inverted residual: conv_pw/bn1, conv_dw/bn2, conv_pwl/bn3.
    layers: Vec<Layer>,
    skip: bool,
}

/// A timm EfficientNet-Lite.
pub(crate) struct EfficientNet {
    stem: Conv2d,
    bn1: BatchNorm,
    stages: Vec<Vec<Block>>,
    head: Conv2d,
    bn2: BatchNorm,
    /// `None` for a headless (`num_classes=0`) model: the output is the pooled features.
    classifier: Option<candle_nn::Linear>,
    input: usize,
}

impl EfficientNet {
    pub(crate) fn load(
        w: &Weights,
        tf: bool,
        repeats: [usize; 7],
        input: usize,
    ) -> std::result::Result<Self, CandleError> {
        let (padding, eps) = if tf { (Padding::Same, 1e-3) } else { (Padding::Symmetric(1), 1e-5) };
        let pad = |k: usize| if tf { Padding::Same } else { Padding::Symmetric(k / 2) };
        let (stem, mut ch) = w.conv("conv_stem", 3, 3, 2, padding, false, false)?;
        let bn1 = w.batch_norm("bn1", ch, eps)?;
        let mut stages = Vec::new();
        for (s, (&stage_stride, &count)) in STAGE_STRIDES.iter().zip(&repeats).enumerate() {
            let mut blocks = Vec::new();
            for b in 0..count {
                let name = format!("blocks.{s}.{b}");
                let stride = if b == 0 { stage_stride } else { 1 };
                let p = |n: &str| format!("{name}.{n}");
                let k = w.kernel(&p("conv_dw"))?;
                let in_ch = ch;
                let mut layers = Vec::new();
                let mut add = |conv_name: &'static str,
                               bn_name: &'static str,
                               kind: (usize, usize, bool),
                               act: Act,
                               ch: &mut usize| {
                    let (k, stride, dw) = kind;
                    let padding = if k == 1 { Padding::Symmetric(0) } else { pad(k) };
                    let (conv, out) = w.conv(&p(conv_name), *ch, k, stride, padding, dw, false)?;
                    let bn = w.batch_norm(&p(bn_name), out, eps)?;
                    layers.push(Layer { name: bn_name, conv_name, conv, bn, act });
                    *ch = out;
                    Ok::<_, CandleError>(())
                };
                // The first stage is depthwise-separable (`ds_r1_k3_s1_e1_c16`), the rest inverted
                // residuals.
                if s > 0 {
                    add("conv_pw", "bn1", (1, 1, false), Act::Relu6, &mut ch)?;
                    add("conv_dw", "bn2", (k, stride, true), Act::Relu6, &mut ch)?;
                    add("conv_pwl", "bn3", (1, 1, false), Act::None, &mut ch)?;
                } else {
                    add("conv_dw", "bn1", (k, stride, true), Act::Relu6, &mut ch)?;
                    add("conv_pw", "bn2", (1, 1, false), Act::None, &mut ch)?;
                }
                blocks.push(Block { name, layers, skip: stride == 1 && in_ch == ch });
            }
            stages.push(blocks);
        }
        let (head, ch) = w.conv("conv_head", ch, 1, 1, Padding::Symmetric(0), false, false)?;
        let bn2 = w.batch_norm("bn2", ch, eps)?;
        let classifier = w.head(&["classifier"], ch)?.and_then(|mut h| h.pop());
        Ok(EfficientNet { stem, bn1, stages, head, bn2, classifier, input })
    }
}

impl Block {
    fn forward(&self, x: &Tensor, taps: &mut Taps) -> Result<Tensor> {
        let mut y = x.clone();
        for l in &self.layers {
            y = taps.tap(&format!("{}.{}", self.name, l.conv_name), l.conv.forward(&y)?)?;
            // timm's BatchNormAct2d: the activation is part of the `bn*` module.
            y = taps.tap(&format!("{}.{}", self.name, l.name), l.bn.forward(&y, l.act)?)?;
        }
        if self.skip {
            y = (y + x)?;
        }
        Ok(y)
    }
}

impl CandleCamNet for EfficientNet {
    fn forward(&self, x: &Tensor, taps: &mut Taps) -> Result<Tensor> {
        let x = taps.sequential("conv_stem", x, |x, _| self.stem.forward(x))?;
        let x = taps.sequential("bn1", &x, |x, _| self.bn1.forward(x, Act::Relu6))?;
        let x = taps.sequential("blocks", &x, |x, taps| {
            let mut x = x.clone();
            for (s, blocks) in self.stages.iter().enumerate() {
                x = taps.sequential(&format!("blocks.{s}"), &x, |x, taps| {
                    let mut x = x.clone();
                    for block in blocks {
                        x = taps.sequential(&block.name, &x, |x, taps| block.forward(x, taps))?;
                    }
                    Ok(x)
                })?;
            }
            Ok(x)
        })?;
        let x = taps.sequential("conv_head", &x, |x, _| self.head.forward(x))?;
        let x = taps.sequential("bn2", &x, |x, _| self.bn2.forward(x, Act::Relu6))?;
        // timm's global average pool, then `classifier` (`Identity` without a head).
        let pooled = x.mean((2, 3))?;
        match &self.classifier {
            Some(classifier) => classifier.forward(&pooled),
            None => Ok(pooled),
        }
    }

    fn input_size(&self) -> (usize, usize) {
        (self.input, self.input)
    }
}
