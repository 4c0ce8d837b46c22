//! timm `ResNet`: basic and bottleneck blocks, the 7x7 stem or the deep (tiered) 3x3 stem, and
//! the conv or average-pool (ResNet-D) downsample. Structure is read from the state dict.

use candle_core::{Module, Result, Tensor};

use crate::ops::{avg_pool_2x2_ceil, max_pool_3x3_s2, Act, BatchNorm, Conv2d, Padding};
use crate::weights::Weights;
use crate::{CandleCamNet, CandleError, Taps};

pub(super) const EPS: f64 = 1e-5;

/// A bias-free convolution and the BatchNorm after it.
pub(super) struct ConvBn {
    pub(super) conv: Conv2d,
    pub(super) bn: BatchNorm,
}

/// `conv` (k x k, "same" padding for its dilation) and `bn`; the output width read from the file.
pub(super) fn conv_bn(
    w: &Weights,
    conv: &str,
    bn: &str,
    in_ch: usize,
    k: usize,
    stride: usize,
    dilation: usize,
) -> std::result::Result<(ConvBn, usize), CandleError> {
    let pad = dilation * (k / 2);
    let (conv, out) = w.conv(conv, in_ch, k, stride, Padding::Symmetric(pad), false, false)?;
    Ok((ConvBn { conv: conv.dilated(dilation), bn: w.batch_norm(bn, out, EPS)? }, out))
}

enum Downsample {
    /// `downsample.0` conv 1x1 (stride), `downsample.1` BN.
    Conv(ConvBn),
    /// `downsample.0` AvgPool2d(2) (when strided), `downsample.1` conv 1x1, `downsample.2` BN.
    Avg { pool: bool, conv_bn: ConvBn },
}

struct Block {
    name: String,
    /// conv1/bn1/act1, conv2/bn2/act2[, conv3/bn3/act3]: the last one has no activation before
    /// the residual sum.
    convs: Vec<ConvBn>,
    downsample: Option<Downsample>,
}

impl Block {
    fn load(
        w: &Weights,
        name: &str,
        in_ch: usize,
        stride: usize,
        bottleneck: bool,
        avg_down: bool,
    ) -> std::result::Result<(Block, usize), CandleError> {
        let p = |s: &str| format!("{name}.{s}");
        let mut convs = Vec::new();
        let mut ch = in_ch;
        // Bottleneck: 1x1, 3x3 (strided), 1x1. Basic: 3x3 (strided), 3x3.
        let plan: &[(usize, usize)] =
            if bottleneck { &[(1, 1), (3, stride), (1, 1)] } else { &[(3, stride), (3, 1)] };
        for (i, &(k, s)) in plan.iter().enumerate() {
            let (cb, out) =
                conv_bn(w, &p(&format!("conv{}", i + 1)), &p(&format!("bn{}", i + 1)), ch, k, s, 1)?;
            convs.push(cb);
            ch = out;
        }
        let downsample = if stride == 1 && ch == in_ch {
            None
        } else if avg_down {
            let (cb, out) = conv_bn(w, &p("downsample.1"), &p("downsample.2"), in_ch, 1, 1, 1)?;
            check_out(w, &p("downsample.1"), out, ch, in_ch)?;
            Some(Downsample::Avg { pool: stride > 1, conv_bn: cb })
        } else {
            let (cb, out) = conv_bn(w, &p("downsample.0"), &p("downsample.1"), in_ch, 1, stride, 1)?;
            check_out(w, &p("downsample.0"), out, ch, in_ch)?;
            Some(Downsample::Conv(cb))
        };
        Ok((Block { name: name.to_string(), convs, downsample }, ch))
    }

    fn forward(&self, x: &Tensor, taps: &mut Taps) -> Result<Tensor> {
        let n = &self.name;
        let last = self.convs.len();
        let mut y = x.clone();
        for (i, cb) in self.convs.iter().enumerate() {
            let i = i + 1;
            y = taps.tap(&format!("{n}.conv{i}"), cb.conv.forward(&y)?)?;
            y = batch_norm(taps, &format!("{n}.bn{i}"), &cb.bn, &y)?;
            if i < last {
                y = taps.tap(&format!("{n}.act{i}"), taps.relu(&y)?)?;
            }
        }
        let shortcut = match &self.downsample {
            None => x.clone(),
            Some(Downsample::Conv(cb)) => {
                let s = taps.tap(&format!("{n}.downsample.0"), cb.conv.forward(x)?)?;
                let s = batch_norm(taps, &format!("{n}.downsample.1"), &cb.bn, &s)?;
                taps.tap(&format!("{n}.downsample"), s)?
            }
            Some(Downsample::Avg { pool, conv_bn: cb }) => {
                let s = if *pool {
                    taps.tap(&format!("{n}.downsample.0"), avg_pool_2x2_ceil(x)?)?
                } else {
                    x.clone()
                };
                let s = taps.tap(&format!("{n}.downsample.1"), cb.conv.forward(&s)?)?;
                let s = batch_norm(taps, &format!("{n}.downsample.2"), &cb.bn, &s)?;
                taps.tap(&format!("{n}.downsample"), s)?
            }
        };
        let y = taps.relu(&(y + shortcut)?)?;
        taps.tap(&format!("{n}.act{last}"), y)
    }
}

/// The shortcut's projection must match the residual branch's width.
fn check_out(
    w: &Weights,
    conv: &str,
    found: usize,
    expected: usize,
    in_ch: usize,
) -> std::result::Result<(), CandleError> {
    if found == expected {
        Ok(())
    } else {
        Err(w.shape_error(&format!("{conv}.weight"), &[expected, in_ch, 1, 1], &[found, in_ch, 1, 1]))
    }
}

enum Stem {
    /// `conv1` 7x7 stride 2.
    Plain(Conv2d),
    /// `conv1.0` 3x3 s2, `.1` BN, `.2` ReLU, `.3` 3x3, `.4` BN, `.5` ReLU, `.6` 3x3.
    Deep(ConvBn, ConvBn, Conv2d),
}

/// A timm ResNet.
pub(crate) struct ResNet {
    stem: Stem,
    bn1: BatchNorm,
    stages: Vec<Vec<Block>>,
    /// `None` for a headless (`num_classes=0`) model: the output is the pooled features.
    fc: Option<candle_nn::Linear>,
}

impl ResNet {
    pub(crate) fn load(
        w: &Weights,
        bottleneck: bool,
        layers: [usize; 4],
        deep_stem: bool,
        avg_down: bool,
    ) -> std::result::Result<ResNet, CandleError> {
        let (stem, ch) = if deep_stem {
            let (a, c0) = conv_bn(w, "conv1.0", "conv1.1", 3, 3, 2, 1)?;
            let (b, c1) = conv_bn(w, "conv1.3", "conv1.4", c0, 3, 1, 1)?;
            let (c, c2) = w.conv("conv1.6", c1, 3, 1, Padding::Symmetric(1), false, false)?;
            (Stem::Deep(a, b, c), c2)
        } else {
            let (c, out) = w.conv("conv1", 3, 7, 2, Padding::Symmetric(3), false, false)?;
            (Stem::Plain(c), out)
        };
        let bn1 = w.batch_norm("bn1", ch, EPS)?;
        let mut ch = ch;
        let mut stages = Vec::new();
        for (s, &count) in layers.iter().enumerate() {
            let mut blocks = Vec::new();
            for b in 0..count {
                let stride = if s > 0 && b == 0 { 2 } else { 1 };
                let name = format!("layer{}.{b}", s + 1);
                let (block, out) = Block::load(w, &name, ch, stride, bottleneck, avg_down)?;
                blocks.push(block);
                ch = out;
            }
            stages.push(blocks);
        }
        let fc = w.head(&["fc"], ch)?.and_then(|mut h| h.pop());
        Ok(ResNet { stem, bn1, stages, fc })
    }
}

/// A residual block of a ResNet stage: its module path and its forward.
pub(super) trait ResidualBlock {
    fn name(&self) -> &str;
    fn forward(&self, x: &Tensor, taps: &mut Taps) -> Result<Tensor>;
}

impl ResidualBlock for Block {
    fn name(&self) -> &str {
        &self.name
    }

    fn forward(&self, x: &Tensor, taps: &mut Taps) -> Result<Tensor> {
        Block::forward(self, x, taps)
    }
}

/// A ResNet after its stem convolution: `bn1`, its ReLU (`act`: timm's `act1`, torchvision's
/// `relu`), the 3x3 max pooling, then the stages `layer1`.., every module path under `prefix`
/// (torchvision's segmenters: `backbone.`).
pub(super) fn trunk<B: ResidualBlock>(
    taps: &mut Taps,
    prefix: &str,
    act: &str,
    bn1: &BatchNorm,
    stages: &[Vec<B>],
    x: &Tensor,
) -> Result<Tensor> {
    let bn = format!("{prefix}bn1");
    let x = taps.sequential(&bn, x, |x, taps| taps.biased(&bn, bn1.forward(x, Act::None)?, bn1.bias()))?;
    let x = taps.sequential(&format!("{prefix}{act}"), &x, |x, taps| taps.relu(x))?;
    let mut x = taps.sequential(&format!("{prefix}maxpool"), &x, |x, _| max_pool_3x3_s2(x))?;
    for (s, blocks) in stages.iter().enumerate() {
        x = taps.sequential(&format!("{prefix}layer{}", s + 1), &x, |x, taps| {
            let mut x = x.clone();
            for block in blocks {
                x = taps.sequential(block.name(), &x, |x, taps| block.forward(x, taps))?;
            }
            Ok(x)
        })?;
    }
    Ok(x)
}

/// An `nn.BatchNorm2d` named `name` on `x`: its output marked as FullGrad's bias layer
/// ([`Taps::biased`]) and tapped.
pub(super) fn batch_norm(taps: &mut Taps, name: &str, bn: &BatchNorm, x: &Tensor) -> Result<Tensor> {
    let y = bn.forward(x, Act::None)?;
    let y = taps.biased(name, y, bn.bias())?;
    taps.tap(name, y)
}

impl CandleCamNet for ResNet {
    fn forward(&self, x: &Tensor, taps: &mut Taps) -> Result<Tensor> {
        let x = taps.sequential("conv1", x, |x, taps| match &self.stem {
            Stem::Plain(c) => c.forward(x),
            Stem::Deep(a, b, c) => {
                let x = taps.tap("conv1.0", a.conv.forward(x)?)?;
                let x = batch_norm(taps, "conv1.1", &a.bn, &x)?;
                let x = taps.relu(&x)?;
                let x = taps.tap("conv1.2", x)?;
                let x = taps.tap("conv1.3", b.conv.forward(&x)?)?;
                let x = batch_norm(taps, "conv1.4", &b.bn, &x)?;
                let x = taps.relu(&x)?;
                let x = taps.tap("conv1.5", x)?;
                taps.tap("conv1.6", c.forward(&x)?)
            }
        })?;
        let x = trunk(taps, "", "act1", &self.bn1, &self.stages, &x)?;
        // timm's global average pool, then `fc` (`Identity` without a head).
        let pooled = x.mean((2, 3))?;
        match &self.fc {
            Some(fc) => fc.forward(&pooled),
            None => Ok(pooled),
        }
    }
}
