//! Command-line arguments (clap derive).

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand, ValueEnum};
use gradcam_core::{Layout, Method, Metric, ROAD_NOISE};

/// Grad-CAM and friends for candle, libtorch and ONNX Runtime models: see where a model looked.
#[derive(Debug, Parser)]
#[command(name = "gradcam", version, about, long_about = None)]
pub struct Cli {
    /// What to do [default: `explain` with its defaults].
    #[command(subcommand)]
    pub command: Option<Command>,
}

// Parsed once per process: the size difference between the variants costs nothing.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Explain images: heatmaps over the photos, one per image × layer × method.
    ///
    /// With no arguments it explains the shipped photos with the shipped EfficientNet-Lite0 model
    /// and writes the pictures to ./gradcam-out/.
    Explain(ExplainArgs),
    /// List every layer of a model with its activation shape, marking the automatic choice.
    Layers(ModelArgs),
    /// Write an explainer ONNX: the model with its CAM inside, for any ONNX runtime (ort builds).
    Export(crate::export::ExportArgs),
    /// Which map to trust: pytorch-grad-cam's faithfulness metrics (ROAD, confidence change) for
    /// every method and layer, averaged over the images, best first.
    Evaluate(EvaluateArgs),
}

/// Which ML stack runs the model.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum BackendKind {
    /// candle, safetensors with timm names (needs --arch unless the file name says it).
    Candle,
    /// libtorch, TorchScript files (torch.jit.trace / torch.jit.script).
    Tch,
    /// ONNX Runtime, .onnx files from either torch exporter.
    Ort,
}

impl BackendKind {
    /// The cargo feature that compiles this backend in.
    pub fn feature(self) -> &'static str {
        match self {
            BackendKind::Candle => "candle",
            BackendKind::Tch => "tch",
            BackendKind::Ort => "ort",
        }
    }
}

/// Where the model runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum DeviceKind {
    Cpu,
    Cuda,
}

/// Which model, on which backend and device.
#[derive(Debug, Args, Clone)]
pub struct ModelArgs {
    /// Backend [default: from the model's extension (.safetensors → candle, .pt → tch,
    /// .onnx → ort), else candle].
    #[arg(long, value_enum)]
    pub backend: Option<BackendKind>,
    /// Model file [default: the shipped assets/models/tf_efficientnet_lite0.safetensors].
    #[arg(long, value_name = "PATH")]
    pub model: Option<PathBuf>,
    /// timm architecture of a safetensors model (candle) [default: from the file name].
    #[arg(long, value_name = "NAME")]
    pub arch: Option<String>,
    /// Device [default: cuda when the backend finds one, else cpu].
    #[arg(long, value_enum)]
    pub device: Option<DeviceKind>,
    /// Model input size images are resized to, HxW, each side at most 4096 [default: the model's
    /// own (candle), else 224x224].
    #[arg(long, value_name = "HxW", value_parser = parse_size)]
    pub size: Option<(usize, usize)>,
    /// Threads the model runs on [default: the backend's own choice, usually one per core].
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..=1024))]
    pub threads: Option<u32>,
}

/// Longest side `--size` accepts: a 4096 x 4096 input is 200 MB as f32, before any activation.
pub const MAX_INPUT_SIDE: usize = 4096;

/// The pictures written per image.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum PictureKind {
    /// NAME.LAYER.METHOD.overlay.png: the map over the photo.
    Overlay,
    /// NAME.LAYER.METHOD.heatmap.png: the map at the layer's own resolution.
    Heatmap,
    /// NAME.grid.png: the photo and every overlay side by side, with a colorbar.
    Grid,
}

/// `--shard K/N`: this process explains the inputs whose hash modulo N is K.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Shard {
    pub index: u64,
    pub count: u64,
}

/// Colormaps by CLI name.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum ColormapName {
    Jet,
    Turbo,
    Viridis,
    Inferno,
    Gray,
}

impl ColormapName {
    /// The gradcam-viz colormap of that name.
    pub fn colormap(self) -> gradcam_viz::Colormap {
        match self {
            ColormapName::Jet => gradcam_viz::Colormap::Jet,
            ColormapName::Turbo => gradcam_viz::Colormap::Turbo,
            ColormapName::Viridis => gradcam_viz::Colormap::Viridis,
            ColormapName::Inferno => gradcam_viz::Colormap::Inferno,
            ColormapName::Gray => gradcam_viz::Colormap::Gray,
        }
    }
}

/// What `explain` and `evaluate` share: which maps, for which class, from which inputs in which
/// batches.
#[derive(Debug, Args)]
pub struct CamArgs {
    /// Layer(s) to explain, as PyTorch module paths (layer4, blocks.6, blocks.11.norm1); repeat
    /// for several [default: the model's automatic choice].
    #[arg(long = "layer", value_name = "PATH")]
    pub layers: Vec<String>,
    /// CAM method(s): gradcam, gradcam++, xgradcam, hirescam, layercam, gradcam-elementwise,
    /// eigencam, eigengradcam, scorecam, ablationcam, fem, kpcacam, finercam, randomcam, fullgrad
    /// (every bias layer, not --layer), and the pixel-space guided-backprop
    /// and guided-gradcam (one NAME.[LAYER.]METHOD.pixels.png each,
    /// pytorch-grad-cam's deprocess_image; `--npy-out` holds their (N, 3, H, W) maps); repeat
    /// or comma-separate for several. `auto`: the candidates `gradcam evaluate` ranks best by
    /// ROAD (road-combined) on the given images (every method but ScoreCAM and AblationCAM, a
    /// forward pass per channel, KPCA-CAM, cubic in the pixels, and RandomCAM, a baseline).
    #[arg(long = "method", value_name = "NAME", default_value = "gradcam", value_delimiter = ',')]
    pub methods: Vec<MethodArg>,
    /// How the layers' outputs are laid out: nchw, nhwc (channels-last: Swin, ConvNeXt blocks)
    /// or tokens (ViT) [default: detected per layer from its shape and the input size].
    #[arg(long, value_name = "LAYOUT")]
    pub layout: Option<Layout>,
    /// Explain this class for every image [default: each image's top-1 class].
    #[arg(long, value_name = "N", conflicts_with = "top")]
    pub class: Option<usize>,
    /// Explain each of each image's top-K classes.
    #[arg(long, value_name = "K", value_parser = clap::value_parser!(u32).range(1..))]
    pub top: Option<u32>,
    /// Explain the softmax probability of the class instead of its raw logit.
    #[arg(long)]
    pub softmax: bool,
    /// What the model outputs and which score of it is explained: class (a classifier's class
    /// scores), binary (one logit: class 1 is the logit, class 0 its negation; top-1 is the
    /// predicted class), segmentation ((C, H, W) per image: class --class's logits summed over
    /// --mask, or over the pixels where the class wins), similarity (an embedding: the cosine
    /// similarity to --concept).
    #[arg(long, value_enum, value_name = "KIND", default_value = "class")]
    pub target: crate::targets::TargetKind,
    /// --target segmentation: the pixels to sum over, a picture of the model output's size
    /// (non-black pixels count) [default: where the class is the argmax].
    #[arg(long, value_name = "MASK.png")]
    pub mask: Option<PathBuf>,
    /// --target similarity: the concept vector, a 1-D float .npy of the model output's length.
    #[arg(long, value_name = "VECTOR.npy")]
    pub concept: Option<PathBuf>,
    /// FinerCAM's alpha: how much of the 3 closest classes' logits is subtracted from the
    /// explained class's (0 = plain Grad-CAM of the class), a finite number.
    #[arg(long, value_name = "X", default_value_t = 1.0, value_parser = parse_finer_alpha, allow_negative_numbers = true)]
    pub finer_alpha: f32,
    /// Average each map over six augmented copies of the image (horizontal flip × brightness 0.9,
    /// 1, 1.1), as pytorch-grad-cam's `aug_smooth`: smoother maps, at six times the cost. The class
    /// is chosen once, on the image itself.
    #[arg(long)]
    pub aug_smooth: bool,
    /// Reduce each layer's weighted activations to their first principal component instead of
    /// summing them, as pytorch-grad-cam's `eigen_smooth`: less noise. EigenCAM, EigenGradCAM, FEM
    /// and KPCA-CAM have nothing to reduce and ignore it.
    #[arg(long)]
    pub eigen_smooth: bool,
    /// RandomCAM's seed: its weights are numpy's `np.random.seed(N); np.random.uniform(-1, 1, ...)`;
    /// in `evaluate`, also the seed of ROAD's noise.
    #[arg(long, value_name = "N", default_value_t = 0, value_parser = parse_seed, allow_negative_numbers = true)]
    pub seed: u32,
    /// Largest photo decoded, in pixels (width x height); larger ones are refused from their
    /// header, before any memory is spent on them.
    #[arg(long, value_name = "N", default_value_t = gradcam_viz::DEFAULT_MAX_PIXELS, value_parser = clap::value_parser!(u64).range(1..))]
    pub max_pixels: u64,
    /// Images per forward batch.
    #[arg(long, value_name = "N", default_value_t = 8, value_parser = clap::value_parser!(u32).range(1..))]
    pub batch: u32,
}

/// A `--method` value: a method, or `auto`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MethodArg {
    /// Pick among [`CamArgs::auto_candidates`] by ROAD.
    Auto,
    Method(Method),
}

impl std::str::FromStr for MethodArg {
    type Err = gradcam_core::CamError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if s.trim().eq_ignore_ascii_case("auto") {
            Ok(MethodArg::Auto)
        } else {
            s.parse().map(MethodArg::Method)
        }
    }
}

impl CamArgs {
    /// The methods `--method auto` chooses among: every method but ScoreCAM and AblationCAM (a
    /// forward pass per channel), KPCA-CAM (cubic in the pixels) and RandomCAM (a baseline), and
    /// FinerCAM only for classifiers (it compares classes).
    pub fn auto_candidates(&self) -> Vec<Method> {
        let classifier = self.target == crate::targets::TargetKind::Class;
        Method::ALL
            .into_iter()
            .filter(|m| !m.needs_forward_passes() && !matches!(m, Method::KpcaCam | Method::RandomCam))
            .filter(|m| classifier || *m != Method::FinerCam)
            .collect()
    }

    /// The methods named, each once, in order; `auto` stands for [`CamArgs::auto_candidates`].
    pub fn methods(&self) -> Vec<Method> {
        let mut out: Vec<Method> = Vec::new();
        for m in &self.methods {
            let named = match m {
                MethodArg::Auto => self.auto_candidates(),
                MethodArg::Method(m) => vec![*m],
            };
            for m in named {
                if !out.contains(&m) {
                    out.push(m);
                }
            }
        }
        out
    }

    /// Whether `--method` says `auto`.
    pub fn auto_method(&self) -> bool {
        self.methods.contains(&MethodArg::Auto)
    }

    /// The methods named explicitly, each once, in order (without `auto`).
    pub fn named_methods(&self) -> Vec<Method> {
        let mut out: Vec<Method> = Vec::new();
        for m in &self.methods {
            if let MethodArg::Method(m) = m {
                if !out.contains(m) {
                    out.push(*m);
                }
            }
        }
        out
    }

    /// The core options these flags set (a progress callback is the caller's).
    pub fn options(&self) -> gradcam_core::CamOptions {
        gradcam_core::CamOptions {
            layout: self.layout,
            seed: self.seed,
            finer_alpha: self.finer_alpha,
            aug_smooth: self.aug_smooth,
            eigen_smooth: self.eigen_smooth,
            ..gradcam_core::CamOptions::default()
        }
    }
}

#[derive(Debug, Args)]
pub struct ExplainArgs {
    /// Image files, folders of images, or .npy tensors (N, 3, H, W) f32 used as is
    /// [default: the shipped photos in assets/images].
    #[arg(value_name = "INPUT")]
    pub inputs: Vec<PathBuf>,
    #[command(flatten)]
    pub model: ModelArgs,
    #[command(flatten)]
    pub cam: CamArgs,
    /// Colormap of the heatmaps.
    #[arg(long, value_enum, default_value = "jet")]
    pub colormap: ColormapName,
    /// Weight of the photo in the overlay (pytorch-grad-cam's image_weight), 0..=1.
    #[arg(long, value_name = "X", default_value_t = 0.5, value_parser = parse_alpha)]
    pub alpha: f64,
    /// Output folder for the pictures [default: ./gradcam-out, or the first of gradcam-out-2,
    /// gradcam-out-3, … that does not exist yet when an earlier run left files there: a run
    /// never replaces files it did not write unless --overwrite says so].
    #[arg(long, value_name = "DIR")]
    pub out: Option<PathBuf>,
    /// Which pictures to write per image (comma-separated).
    #[arg(long, value_name = "KIND", value_enum, value_delimiter = ',', default_values = ["overlay", "heatmap", "grid"])]
    pub pictures: Vec<PictureKind>,
    /// Longest side of the overlays and grid cells; larger photos are scaled down for them (the
    /// model still sees the whole photo).
    #[arg(long, value_name = "PX", default_value_t = 2048, value_parser = clap::value_parser!(u32).range(16..=16384))]
    pub max_picture_side: u32,
    /// Replace files that already exist (earlier outputs, --npy-out, --manifest). Without it a
    /// run refuses to touch any existing file.
    #[arg(long)]
    pub overwrite: bool,
    /// Record every image as soon as its files are written: one JSON line each (input,
    /// predictions, class, layer, layout, method, output paths).
    #[arg(long, value_name = "FILE")]
    pub manifest: Option<PathBuf>,
    /// Skip the inputs the --manifest already lists, and append to it.
    #[arg(long, requires = "manifest")]
    pub resume: bool,
    /// Explain only shard K of N (K = 0..N-1): a fixed 1/N of the inputs, chosen by a hash of
    /// each input's path, so N processes split a dataset without talking to each other.
    #[arg(long, value_name = "K/N", value_parser = parse_shard)]
    pub shard: Option<Shard>,
    /// Also write the final maps as f32 .npy (N, H, W) in [0, 1] at the model's input size.
    #[arg(long, value_name = "FILE")]
    pub npy_out: Option<PathBuf>,
    /// Print a machine-readable JSON summary on stdout (and nothing else there).
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct EvaluateArgs {
    /// Image files, folders of images, or .npy tensors (N, 3, H, W) f32 used as is.
    #[arg(value_name = "INPUT", required = true)]
    pub inputs: Vec<PathBuf>,
    #[command(flatten)]
    pub model: ModelArgs,
    #[command(flatten)]
    pub cam: CamArgs,
    /// Metric(s), comma-separated or repeated: confidence-change, drop, increase (the input
    /// multiplied by the map), road-most, road-least, road-combined (ROAD: pixels removed by the
    /// map and imputed) [default: all].
    #[arg(long = "metric", value_name = "NAME", value_delimiter = ',')]
    pub metrics: Vec<Metric>,
    /// Standard deviation of the noise ROAD's imputer adds (pytorch-grad-cam's default; 0 gives
    /// its values exactly), seeded by --seed.
    #[arg(long, value_name = "X", default_value_t = ROAD_NOISE, value_parser = parse_road_noise, allow_negative_numbers = true)]
    pub road_noise: f32,
    /// Print the values as JSON on stdout, each image's too (and nothing else there).
    #[arg(long)]
    pub json: bool,
}

pub(crate) fn parse_size(s: &str) -> Result<(usize, usize), String> {
    let bad = || format!("`{s}` is not a size: expected HxW, e.g. 224x224");
    let (h, w) = s.split_once(['x', 'X']).ok_or_else(bad)?;
    let h: usize = h.trim().parse().map_err(|_| bad())?;
    let w: usize = w.trim().parse().map_err(|_| bad())?;
    if h == 0 || w == 0 {
        return Err(bad());
    }
    if h > MAX_INPUT_SIDE || w > MAX_INPUT_SIDE {
        return Err(format!("`{s}` is too large: each side at most {MAX_INPUT_SIDE}"));
    }
    Ok((h, w))
}

fn parse_shard(s: &str) -> Result<Shard, String> {
    let bad = || format!("`{s}` is not a shard: expected K/N with 0 <= K < N, e.g. 0/4 (K counts from 0)");
    let (k, n) = s.split_once('/').ok_or_else(bad)?;
    let index: u64 = k.trim().parse().map_err(|_| bad())?;
    let count: u64 = n.trim().parse().map_err(|_| bad())?;
    if count == 0 || index >= count {
        return Err(bad());
    }
    Ok(Shard { index, count })
}

fn parse_alpha(s: &str) -> Result<f64, String> {
    match s.parse::<f64>() {
        Ok(a) if (0.0..=1.0).contains(&a) => Ok(a),
        _ => Err(format!("`{s}` is not a weight between 0 and 1")),
    }
}

fn parse_seed(s: &str) -> Result<u32, String> {
    s.trim()
        .parse::<u32>()
        .map_err(|_| format!("`{s}` is not a seed: give a whole number from 0 to {}", u32::MAX))
}

fn parse_road_noise(s: &str) -> Result<f32, String> {
    match s.trim().parse::<f32>() {
        Ok(x) if x.is_finite() && x >= 0.0 => Ok(x),
        _ => {
            Err(format!("`{s}` is not a noise level: give a finite number of at least 0, such as 0.01 or 0"))
        }
    }
}

fn parse_finer_alpha(s: &str) -> Result<f32, String> {
    match s.trim().parse::<f32>() {
        Ok(a) if a.is_finite() => Ok(a),
        _ => Err(format!("`{s}` is not a finite number: give FinerCAM's alpha as a number such as 1 or 0.5")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn clap_definition_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn sizes_parse() {
        assert_eq!(parse_size("96x128"), Ok((96, 128)));
        assert!(parse_size("96").is_err());
        assert!(parse_size("0x5").is_err());
        assert!(parse_size("100000x100000").unwrap_err().contains("too large"));
        assert_eq!(parse_size("4096x4096"), Ok((4096, 4096)));
        assert_eq!(parse_shard("2/4"), Ok(Shard { index: 2, count: 4 }));
        assert!(parse_shard("4/4").is_err() && parse_shard("0/0").is_err() && parse_shard("1").is_err());
        assert!(parse_alpha("1.5").is_err());
        assert_eq!(parse_alpha("0.25"), Ok(0.25));
        assert_eq!(parse_seed("7"), Ok(7));
        for bad in ["-1", "4294967296", "1.5", ""] {
            assert!(parse_seed(bad).unwrap_err().contains("is not a seed"), "{bad}");
        }
        assert_eq!(parse_finer_alpha("0.5"), Ok(0.5));
        assert_eq!(parse_finer_alpha("-2"), Ok(-2.0));
        for bad in ["nan", "inf", "-inf", "1e40", "x", ""] {
            assert!(parse_finer_alpha(bad).unwrap_err().contains("not a finite number"), "{bad}");
        }
        assert_eq!(parse_road_noise("0"), Ok(0.0));
        assert_eq!(parse_road_noise("0.05"), Ok(0.05));
        for bad in ["-0.01", "nan", "inf", "1e40", "x", ""] {
            assert!(parse_road_noise(bad).unwrap_err().contains("not a noise level"), "{bad}");
        }
    }
}
