//! Command-line arguments (clap derive).

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand, ValueEnum};
use gradcam_core::{Layout, Method};

/// Grad-CAM and friends for candle, libtorch and ONNX Runtime models: see where a model looked.
#[derive(Debug, Parser)]
#[command(name = "gradcam", version, about, long_about = None)]
pub struct Cli {
    /// What to do [default: `explain` with its defaults].
    #[command(subcommand)]
    pub command: Option<Command>,
}

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
    /// Model input size images are resized to, HxW [default: the model's own (candle), else
    /// 224x224].
    #[arg(long, value_name = "HxW", value_parser = parse_size)]
    pub size: Option<(usize, usize)>,
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

#[derive(Debug, Args)]
pub struct ExplainArgs {
    /// Image files, folders of images, or .npy tensors (N, 3, H, W) f32 used as is
    /// [default: the shipped photos in assets/images].
    #[arg(value_name = "INPUT")]
    pub inputs: Vec<PathBuf>,
    #[command(flatten)]
    pub model: ModelArgs,
    /// Layer(s) to explain, as PyTorch module paths (layer4, blocks.6, blocks.11.norm1); repeat
    /// for several [default: the model's automatic choice].
    #[arg(long = "layer", value_name = "PATH")]
    pub layers: Vec<String>,
    /// CAM method(s): gradcam, gradcam++, xgradcam, hirescam, layercam, gradcam-elementwise,
    /// eigencam, eigengradcam, scorecam, ablationcam; repeat or comma-separate for several.
    #[arg(long = "method", value_name = "NAME", default_value = "gradcam", value_delimiter = ',')]
    pub methods: Vec<Method>,
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
    /// Colormap of the heatmaps.
    #[arg(long, value_enum, default_value = "jet")]
    pub colormap: ColormapName,
    /// Weight of the photo in the overlay (pytorch-grad-cam's image_weight), 0..=1.
    #[arg(long, value_name = "X", default_value_t = 0.5, value_parser = parse_alpha)]
    pub alpha: f64,
    /// Output folder for the pictures.
    #[arg(long, value_name = "DIR", default_value = "gradcam-out")]
    pub out: PathBuf,
    /// Also write the final maps as f32 .npy (N, H, W) in [0, 1] at the model's input size.
    #[arg(long, value_name = "FILE")]
    pub npy_out: Option<PathBuf>,
    /// Print a machine-readable JSON summary on stdout (and nothing else there).
    #[arg(long)]
    pub json: bool,
    /// Images per forward batch.
    #[arg(long, value_name = "N", default_value_t = 8, value_parser = clap::value_parser!(u32).range(1..))]
    pub batch: u32,
}

pub(crate) fn parse_size(s: &str) -> Result<(usize, usize), String> {
    let bad = || format!("`{s}` is not a size: expected HxW, e.g. 224x224");
    let (h, w) = s.split_once(['x', 'X']).ok_or_else(bad)?;
    let h: usize = h.trim().parse().map_err(|_| bad())?;
    let w: usize = w.trim().parse().map_err(|_| bad())?;
    if h == 0 || w == 0 {
        return Err(bad());
    }
    Ok((h, w))
}

fn parse_alpha(s: &str) -> Result<f64, String> {
    match s.parse::<f64>() {
        Ok(a) if (0.0..=1.0).contains(&a) => Ok(a),
        _ => Err(format!("`{s}` is not a weight between 0 and 1")),
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
        assert!(parse_alpha("1.5").is_err());
        assert_eq!(parse_alpha("0.25"), Ok(0.25));
    }
}
