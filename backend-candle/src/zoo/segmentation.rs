//! torchvision's FCN segmenters (`fcn_resnet50`, `fcn_resnet101`): a ResNet trunk whose last two
//! stages dilate instead of striding (output stride 8), `FCNHead`, and the class maps upsampled
//! bilinearly to the input's size, as torchvision's `FCN.forward` returns them under `"out"`.
//! Layer names are torchvision's module paths (`backbone.layer4`, `classifier.0`); the output is
//! `(B, classes, H, W)`, explained with a segmentation target.

use candle_core::{Result, Tensor};

use super::resnet::{batch_norm, conv_bn, trunk, ConvBn, ResidualBlock, EPS};
use crate::ops::{resize_bilinear, BatchNorm, Conv2d, Padding};
use crate::weights::Weights;
use crate::{CandleCamNet, CandleError, Taps};

/// torchvision's `Bottleneck`: 1x1, 3x3 (strided or dilated), 1x1, each with its BatchNorm; one
/// `nn.ReLU` module applied three times, so it has no single output to tap.
struct Bottleneck {
    name: String,
    convs: [ConvBn; 3],
    downsample: Option<ConvBn>,
}

impl Bottleneck {
    fn load(
        w: &Weights,
        name: &str,
        in_ch: usize,
        stride: usize,
        dilation: usize,
    ) -> std::result::Result<(Bottleneck, usize), CandleError> {
        let p = |s: &str| format!("{name}.{s}");
        let (c1, width) = conv_bn(w, &p("conv1"), &p("bn1"), in_ch, 1, 1, 1)?;
        let (c2, width) = conv_bn(w, &p("conv2"), &p("bn2"), width, 3, stride, dilation)?;
        let (c3, out) = conv_bn(w, &p("conv3"), &p("bn3"), width, 1, 1, 1)?;
        let downsample = if w.has(&p("downsample.0.weight")) {
            let (ds, ds_out) = conv_bn(w, &p("downsample.0"), &p("downsample.1"), in_ch, 1, stride, 1)?;
            if ds_out != out {
                return Err(w.shape_error(
                    &p("downsample.0.weight"),
                    &[out, in_ch, 1, 1],
                    &[ds_out, in_ch, 1, 1],
                ));
            }
            Some(ds)
        } else if stride != 1 || in_ch != out {
            return Err(CandleError::MissingTensor {
                name: p("downsample.0.weight"),
                arch: w.arch().to_string(),
            });
        } else {
            None
        };
        Ok((Bottleneck { name: name.to_string(), convs: [c1, c2, c3], downsample }, out))
    }
}

impl ResidualBlock for Bottleneck {
    fn name(&self) -> &str {
        &self.name
    }

    fn forward(&self, x: &Tensor, taps: &mut Taps) -> Result<Tensor> {
        let n = &self.name;
        let mut y = x.clone();
        for (i, cb) in self.convs.iter().enumerate() {
            let i = i + 1;
            y = taps.tap(&format!("{n}.conv{i}"), cb.conv.forward(&y)?)?;
            y = batch_norm(taps, &format!("{n}.bn{i}"), &cb.bn, &y)?;
            if i < 3 {
                y = taps.relu(&y)?;
            }
        }
        let shortcut = match &self.downsample {
            None => x.clone(),
            Some(cb) => {
                let s = taps.tap(&format!("{n}.downsample.0"), cb.conv.forward(x)?)?;
                let s = batch_norm(taps, &format!("{n}.downsample.1"), &cb.bn, &s)?;
                taps.tap(&format!("{n}.downsample"), s)?
            }
        };
        taps.relu(&(y + shortcut)?)
    }
}

/// torchvision's `FCNHead`: 3x3 conv to a quarter of the channels, BatchNorm, ReLU, dropout
/// (identity in eval), 1x1 conv with bias to the classes.
struct FcnHead {
    prefix: String,
    conv: Conv2d,
    bn: BatchNorm,
    classify: Conv2d,
}

impl FcnHead {
    fn load(w: &Weights, prefix: &str, in_ch: usize) -> std::result::Result<FcnHead, CandleError> {
        let p = |s: &str| format!("{prefix}.{s}");
        let (ConvBn { conv, bn }, inter) = conv_bn(w, &p("0"), &p("1"), in_ch, 3, 1, 1)?;
        let (classify, _) = w.conv(&p("4"), inter, 1, 1, Padding::Symmetric(0), false, true)?;
        Ok(FcnHead { prefix: prefix.to_string(), conv, bn, classify })
    }

    fn forward(&self, x: &Tensor, taps: &mut Taps) -> Result<Tensor> {
        let p = |s: &str| format!("{}.{s}", self.prefix);
        let x = taps.tap(&p("0"), self.conv.forward(x)?)?;
        let x = batch_norm(taps, &p("1"), &self.bn, &x)?;
        let x = taps.tap(&p("2"), taps.relu(&x)?)?;
        let x = taps.tap(&p("3"), x)?;
        let y = self.classify.forward(&x)?;
        let bias = self.classify.bias()?.unwrap_or_default();
        let y = taps.biased(&p("4"), y, &bias)?;
        taps.tap(&p("4"), y)
    }
}

/// torchvision `FCN` with a dilated ResNet trunk.
pub(crate) struct Fcn {
    conv1: Conv2d,
    bn1: BatchNorm,
    stages: Vec<Vec<Bottleneck>>,
    head: FcnHead,
}

impl Fcn {
    /// `layers`: blocks per stage (ResNet-50: 3, 4, 6, 3). Widths and the class count are read
    /// from the checkpoint. An `aux_classifier` (torchvision's `aux_loss=True`) is read and not
    /// run: it feeds only the `"aux"` output, never `"out"`.
    pub(crate) fn load(w: &Weights, layers: [usize; 4]) -> std::result::Result<Fcn, CandleError> {
        let (conv1, mut ch) = w.conv("backbone.conv1", 3, 7, 2, Padding::Symmetric(3), false, false)?;
        let bn1 = w.batch_norm("backbone.bn1", ch, EPS)?;
        // torchvision's replace_stride_with_dilation=[False, True, True]: layer3 and layer4 keep
        // the resolution and dilate 2 and 4; each stage's first block keeps the dilation before.
        let mut dilation = 1;
        let mut stages = Vec::new();
        let mut aux_in = 0;
        for (s, &count) in layers.iter().enumerate() {
            let (stride, dilate) = match s {
                0 => (1, false),
                1 => (2, false),
                _ => (1, true),
            };
            let previous = dilation;
            if dilate {
                dilation *= 2;
            }
            let mut blocks = Vec::new();
            for b in 0..count {
                let name = format!("backbone.layer{}.{b}", s + 1);
                let (block, out) = if b == 0 {
                    Bottleneck::load(w, &name, ch, stride, previous)?
                } else {
                    Bottleneck::load(w, &name, ch, 1, dilation)?
                };
                blocks.push(block);
                ch = out;
            }
            if s == 2 {
                aux_in = ch;
            }
            stages.push(blocks);
        }
        let head = FcnHead::load(w, "classifier", ch)?;
        if w.has("aux_classifier.0.weight") {
            FcnHead::load(w, "aux_classifier", aux_in)?;
        }
        Ok(Fcn { conv1, bn1, stages, head })
    }
}

impl CandleCamNet for Fcn {
    fn forward(&self, x: &Tensor, taps: &mut Taps) -> Result<Tensor> {
        let (_, _, h, w) = x.dims4()?;
        let y = taps.sequential("backbone.conv1", x, |x, _| self.conv1.forward(x))?;
        let y = trunk(taps, "backbone.", "relu", &self.bn1, &self.stages, &y)?;
        let y = taps.sequential("classifier", &y, |x, taps| self.head.forward(x, taps))?;
        resize_bilinear(&y, h, w)
    }

    /// pytorch-grad-cam's segmentation tutorial explains `backbone.layer4`; the last spatial map
    /// would be the classifier's class maps.
    fn default_layer(&self) -> Option<String> {
        Some("backbone.layer4".to_string())
    }
}
