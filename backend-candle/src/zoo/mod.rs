//! The model zoo: timm architectures rebuilt in candle from timm state-dict names.

mod efficientnet;
mod resnet;
mod segmentation;
mod vit;

use std::path::Path;

use crate::weights::Weights;
use crate::{CandleCamNet, CandleError};

/// What one architecture name builds.
#[derive(Clone, Copy, Debug)]
enum Spec {
    ResNet {
        bottleneck: bool,
        layers: [usize; 4],
        deep_stem: bool,
        avg_down: bool,
    },
    EfficientNetLite {
        tf: bool,
        repeats: [usize; 7],
        input: usize,
    },
    Vit {
        dim: usize,
        heads: usize,
        distilled: bool,
    },
    /// torchvision's FCN segmenter on a dilated ResNet with these blocks per stage.
    Fcn {
        layers: [usize; 4],
    },
}

const fn resnet(bottleneck: bool, layers: [usize; 4], deep_stem: bool, avg_down: bool) -> Spec {
    Spec::ResNet { bottleneck, layers, deep_stem, avg_down }
}

const BASIC: bool = false;
const BOTTLENECK: bool = true;
const LITE0: [usize; 7] = [1, 2, 2, 3, 3, 4, 1];
const LITE1: [usize; 7] = [1, 3, 3, 4, 4, 5, 1];
const LITE3: [usize; 7] = [1, 3, 3, 5, 5, 6, 1];
const LITE4: [usize; 7] = [1, 4, 4, 6, 6, 8, 1];

/// Every architecture with its timm constructor arguments (timm 1.0 `resnet.py`,
/// `efficientnet.py`, `vision_transformer.py`, `deit.py`), then torchvision's FCN segmenters
/// (`torchvision.models.segmentation`, state-dict names). Stem widths, channel multipliers and
/// class counts are read from the checkpoint.
const SPECS: &[(&str, Spec)] = &[
    ("resnet10t", resnet(BASIC, [1, 1, 1, 1], true, true)),
    ("resnet14t", resnet(BOTTLENECK, [1, 1, 1, 1], true, true)),
    ("resnet18", resnet(BASIC, [2, 2, 2, 2], false, false)),
    ("resnet18d", resnet(BASIC, [2, 2, 2, 2], true, true)),
    ("resnet26", resnet(BOTTLENECK, [2, 2, 2, 2], false, false)),
    ("resnet26d", resnet(BOTTLENECK, [2, 2, 2, 2], true, true)),
    ("resnet26t", resnet(BOTTLENECK, [2, 2, 2, 2], true, true)),
    ("resnet34", resnet(BASIC, [3, 4, 6, 3], false, false)),
    ("resnet34d", resnet(BASIC, [3, 4, 6, 3], true, true)),
    ("resnet50", resnet(BOTTLENECK, [3, 4, 6, 3], false, false)),
    ("resnet50c", resnet(BOTTLENECK, [3, 4, 6, 3], true, false)),
    ("resnet50d", resnet(BOTTLENECK, [3, 4, 6, 3], true, true)),
    ("resnet50s", resnet(BOTTLENECK, [3, 4, 6, 3], true, false)),
    ("resnet50t", resnet(BOTTLENECK, [3, 4, 6, 3], true, true)),
    ("resnet101", resnet(BOTTLENECK, [3, 4, 23, 3], false, false)),
    ("resnet101c", resnet(BOTTLENECK, [3, 4, 23, 3], true, false)),
    ("resnet101d", resnet(BOTTLENECK, [3, 4, 23, 3], true, true)),
    ("resnet101s", resnet(BOTTLENECK, [3, 4, 23, 3], true, false)),
    ("resnet152", resnet(BOTTLENECK, [3, 8, 36, 3], false, false)),
    ("resnet152c", resnet(BOTTLENECK, [3, 8, 36, 3], true, false)),
    ("resnet152d", resnet(BOTTLENECK, [3, 8, 36, 3], true, true)),
    ("resnet152s", resnet(BOTTLENECK, [3, 8, 36, 3], true, false)),
    ("resnet200", resnet(BOTTLENECK, [3, 24, 36, 3], false, false)),
    ("resnet200d", resnet(BOTTLENECK, [3, 24, 36, 3], true, true)),
    ("efficientnet_lite0", Spec::EfficientNetLite { tf: false, repeats: LITE0, input: 224 }),
    ("efficientnet_lite1", Spec::EfficientNetLite { tf: false, repeats: LITE1, input: 240 }),
    ("efficientnet_lite2", Spec::EfficientNetLite { tf: false, repeats: LITE1, input: 260 }),
    ("efficientnet_lite3", Spec::EfficientNetLite { tf: false, repeats: LITE3, input: 300 }),
    ("efficientnet_lite4", Spec::EfficientNetLite { tf: false, repeats: LITE4, input: 380 }),
    ("tf_efficientnet_lite0", Spec::EfficientNetLite { tf: true, repeats: LITE0, input: 224 }),
    ("tf_efficientnet_lite1", Spec::EfficientNetLite { tf: true, repeats: LITE1, input: 240 }),
    ("tf_efficientnet_lite2", Spec::EfficientNetLite { tf: true, repeats: LITE1, input: 260 }),
    ("tf_efficientnet_lite3", Spec::EfficientNetLite { tf: true, repeats: LITE3, input: 300 }),
    ("tf_efficientnet_lite4", Spec::EfficientNetLite { tf: true, repeats: LITE4, input: 380 }),
    ("vit_tiny_patch16_224", Spec::Vit { dim: 192, heads: 3, distilled: false }),
    ("vit_small_patch16_224", Spec::Vit { dim: 384, heads: 6, distilled: false }),
    ("vit_base_patch16_224", Spec::Vit { dim: 768, heads: 12, distilled: false }),
    ("deit_tiny_patch16_224", Spec::Vit { dim: 192, heads: 3, distilled: false }),
    ("deit_small_patch16_224", Spec::Vit { dim: 384, heads: 6, distilled: false }),
    ("deit_base_patch16_224", Spec::Vit { dim: 768, heads: 12, distilled: false }),
    ("deit_tiny_distilled_patch16_224", Spec::Vit { dim: 192, heads: 3, distilled: true }),
    ("deit_small_distilled_patch16_224", Spec::Vit { dim: 384, heads: 6, distilled: true }),
    ("deit_base_distilled_patch16_224", Spec::Vit { dim: 768, heads: 12, distilled: true }),
    ("fcn_resnet50", Spec::Fcn { layers: [3, 4, 6, 3] }),
    ("fcn_resnet101", Spec::Fcn { layers: [3, 4, 23, 3] }),
];

/// Every architecture [`crate::CandleModel::from_safetensors`] can build: timm's classifiers
/// and embeddings, torchvision's FCN segmenters.
pub const ARCHITECTURES: &[&str] = &[
    "resnet10t",
    "resnet14t",
    "resnet18",
    "resnet18d",
    "resnet26",
    "resnet26d",
    "resnet26t",
    "resnet34",
    "resnet34d",
    "resnet50",
    "resnet50c",
    "resnet50d",
    "resnet50s",
    "resnet50t",
    "resnet101",
    "resnet101c",
    "resnet101d",
    "resnet101s",
    "resnet152",
    "resnet152c",
    "resnet152d",
    "resnet152s",
    "resnet200",
    "resnet200d",
    "efficientnet_lite0",
    "efficientnet_lite1",
    "efficientnet_lite2",
    "efficientnet_lite3",
    "efficientnet_lite4",
    "tf_efficientnet_lite0",
    "tf_efficientnet_lite1",
    "tf_efficientnet_lite2",
    "tf_efficientnet_lite3",
    "tf_efficientnet_lite4",
    "vit_tiny_patch16_224",
    "vit_small_patch16_224",
    "vit_base_patch16_224",
    "deit_tiny_patch16_224",
    "deit_small_patch16_224",
    "deit_base_patch16_224",
    "deit_tiny_distilled_patch16_224",
    "deit_small_distilled_patch16_224",
    "deit_base_distilled_patch16_224",
    "fcn_resnet50",
    "fcn_resnet101",
];

fn spec(arch: &str) -> Result<Spec, CandleError> {
    SPECS.iter().find(|(name, _)| *name == arch).map(|(_, s)| *s).ok_or_else(|| CandleError::UnknownArch {
        arch: arch.to_string(),
        near: gradcam_core::near_matches(arch, ARCHITECTURES.iter().copied()),
    })
}

/// Reads `path` as a timm `arch` state dict. Strict, like PyTorch's `load_state_dict`: every
/// tensor the architecture needs must be there with its shape, and nothing else may be.
pub(crate) fn build(path: &Path, arch: &str) -> Result<Box<dyn CandleCamNet>, CandleError> {
    let spec = spec(arch)?;
    let w = Weights::load(path, arch)?;
    let net: Box<dyn CandleCamNet> = match spec {
        Spec::ResNet { bottleneck, layers, deep_stem, avg_down } => {
            Box::new(resnet::ResNet::load(&w, bottleneck, layers, deep_stem, avg_down)?)
        }
        Spec::EfficientNetLite { tf, repeats, input } => {
            Box::new(efficientnet::EfficientNet::load(&w, tf, repeats, input)?)
        }
        Spec::Vit { dim, heads, distilled } => Box::new(vit::Vit::load(&w, dim, heads, distilled)?),
        Spec::Fcn { layers } => Box::new(segmentation::Fcn::load(&w, layers)?),
    };
    w.finish()?;
    Ok(net)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_spec_is_listed_once_and_in_order() {
        let names: Vec<&str> = SPECS.iter().map(|(n, _)| *n).collect();
        assert_eq!(names, ARCHITECTURES);
    }
}
