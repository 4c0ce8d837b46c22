//! The CAM methods and their command-line names.

use std::fmt;
use std::str::FromStr;

use crate::CamError;

/// A class-activation-map method. Each one matches the pytorch-grad-cam (PyPI `grad-cam` 1.5.7)
/// class of the same name numerically.
///
/// ```
/// use gradcam_core::Method;
/// let m: Method = "gradcam++".parse().unwrap();
/// assert_eq!(m, Method::GradCamPlusPlus);
/// assert_eq!(m.to_string(), "gradcam++");
/// assert!(!Method::EigenCam.needs_gradients());
/// assert_eq!("kpcacam".parse::<Method>().unwrap(), Method::KpcaCam);
/// assert!("guided-gradcam".parse::<Method>().unwrap().is_pixel_space());
/// assert!("gradcam+".parse::<Method>().is_err());
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Method {
    /// Channel weights = spatial mean of the gradients.
    GradCam,
    /// Channel weights from second/third-order gradient terms (Chattopadhyay et al.).
    GradCamPlusPlus,
    /// Channel weights = `sum(grad * act) / sum(act)`.
    XGradCam,
    /// Element-wise `grad * act`, summed over channels.
    HiResCam,
    /// Element-wise `relu(grad) * act`, summed over channels.
    LayerCam,
    /// Element-wise `relu(grad * act)`, summed over channels.
    GradCamElementWise,
    /// First principal component of the activations (no gradients). The SVD's sign is fixed by
    /// the rule documented at [`crate::principal_projection`].
    EigenCam,
    /// First principal component of `grad * act` (same sign rule as [`Method::EigenCam`]).
    EigenGradCam,
    /// Channel weights = softmax of the target score of the input masked by each channel
    /// (one extra forward pass per channel, no gradients).
    ScoreCam,
    /// Channel weights = relative drop of the target score when the channel is ablated
    /// (one extra forward pass per channel, no gradients; ablation values as
    /// [`crate::ablation_value`]).
    AblationCam,
    /// FEM (Feature Explanation Method, k = 2): channel weight = the fraction of the channel's
    /// pixels above `mean + 2 std` of that channel (no gradients).
    Fem,
    /// KPCA-CAM: the first kernel principal component of the pixels (sigmoid kernel,
    /// `gamma = 1 / C`, `coef0 = 1`, scikit-learn `KernelPCA`'s sign rule; no gradients). See
    /// [`crate::kernel_projection`].
    KpcaCam,
    /// FinerCAM with GradCAM as its base: Grad-CAM of the explained class's logit minus
    /// `alpha` × the logits of the 3 classes closest to it, weighted by their softmax
    /// probabilities ([`crate::FinerSeed`]; `alpha` is [`crate::CamOptions::finer_alpha`]).
    FinerCam,
    /// RandomCAM, a sanity baseline: channel weights drawn uniformly from `[-1, 1)` by numpy's
    /// legacy generator seeded with [`crate::CamOptions::seed`] ([`crate::LegacyRandom`]).
    RandomCam,
    /// FullGrad: `|input gradient × input|` plus `|bias × output gradient|` of every layer with a
    /// bias, each channel min-max scaled and resized to the input ([`crate::fullgrad_maps`]);
    /// it ignores the given layers, as pytorch-grad-cam does, and needs
    /// [`crate::CamModel::full_gradients`].
    FullGrad,
    /// Guided backpropagation: `d score / d input` through ReLUs that pass only positive
    /// gradients, a `(B, 3, H, W)` map in pixel space ([`crate::Explanation::pixels`]); needs
    /// [`crate::CamModel::input_gradient`].
    GuidedBackprop,
    /// Guided Grad-CAM: the guided-backprop map times the Grad-CAM map of the same class,
    /// `(B, 3, H, W)` in pixel space.
    GuidedGradCam,
}

impl Method {
    /// Every method that explains the given layers with a `(B, H, W)` heatmap, in a fixed order:
    /// the candidates of `--method auto`. [`Method::FullGrad`] (every bias layer instead) and the
    /// pixel-space methods ([`Method::PIXEL`]) are not among them ([`Method::every`] lists all).
    pub const ALL: [Method; 14] = [
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
        Method::Fem,
        Method::KpcaCam,
        Method::FinerCam,
        Method::RandomCam,
    ];

    /// Every method: [`Method::ALL`], [`Method::FullGrad`], [`Method::PIXEL`].
    pub fn every() -> impl Iterator<Item = Method> {
        Method::ALL.into_iter().chain([Method::FullGrad]).chain(Method::PIXEL)
    }

    /// Whether the answer depends on the given layers: not for guided backprop (the input
    /// gradient alone) nor FullGrad (every bias layer), whose maps are named without a layer.
    pub fn reads_layers(self) -> bool {
        !matches!(self, Method::GuidedBackprop | Method::FullGrad)
    }

    /// The methods whose answer is a `(B, 3, H, W)` map in pixel space ([`Method::is_pixel_space`]).
    pub const PIXEL: [Method; 2] = [Method::GuidedBackprop, Method::GuidedGradCam];

    /// Whether the method's answer is a map of the input's pixels and channels (guided backprop),
    /// not a heatmap over a layer.
    pub fn is_pixel_space(self) -> bool {
        Method::PIXEL.contains(&self)
    }

    /// The command-line name (`gradcam`, `gradcam++`, ...).
    pub fn name(self) -> &'static str {
        match self {
            Method::GradCam => "gradcam",
            Method::GradCamPlusPlus => "gradcam++",
            Method::XGradCam => "xgradcam",
            Method::HiResCam => "hirescam",
            Method::LayerCam => "layercam",
            Method::GradCamElementWise => "gradcam-elementwise",
            Method::EigenCam => "eigencam",
            Method::EigenGradCam => "eigengradcam",
            Method::ScoreCam => "scorecam",
            Method::AblationCam => "ablationcam",
            Method::Fem => "fem",
            Method::KpcaCam => "kpcacam",
            Method::FinerCam => "finercam",
            Method::RandomCam => "randomcam",
            Method::FullGrad => "fullgrad",
            Method::GuidedBackprop => "guided-backprop",
            Method::GuidedGradCam => "guided-gradcam",
        }
    }

    /// Whether the method needs `d target / d activation` (a backward pass).
    pub fn needs_gradients(self) -> bool {
        !matches!(
            self,
            Method::EigenCam
                | Method::ScoreCam
                | Method::AblationCam
                | Method::Fem
                | Method::KpcaCam
                | Method::RandomCam
        )
    }

    /// Whether pytorch-grad-cam's `eigen_smooth` changes the method: every method whose map is a
    /// channel reduction of weighted activations. EigenCAM and EigenGradCAM already are a first
    /// principal component; FEM and KPCA-CAM ignore the flag there. FullGrad has its own version
    /// ([`crate::fullgrad_maps`]).
    pub fn supports_eigen_smooth(self) -> bool {
        !matches!(
            self,
            Method::EigenCam | Method::EigenGradCam | Method::Fem | Method::KpcaCam | Method::GuidedBackprop
        )
    }

    /// Whether the method runs extra forward passes of the model (ScoreCAM, AblationCAM).
    pub fn needs_forward_passes(self) -> bool {
        matches!(self, Method::ScoreCam | Method::AblationCam)
    }
}

impl fmt::Display for Method {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for Method {
    type Err = CamError;

    /// Parses a command-line name, case-insensitively; `_` is accepted for `-`.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let wanted = s.trim().to_ascii_lowercase().replace('_', "-");
        Method::every().find(|m| m.name() == wanted).ok_or_else(|| {
            let names: Vec<&str> = Method::every().map(|m| m.name()).collect();
            CamError::Unsupported(format!("unknown CAM method `{s}`; known methods: {}", names.join(", ")))
        })
    }
}
