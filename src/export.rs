//! `gradcam export`: write an explainer ONNX (the classifier with its Grad-CAM inside) that any
//! ONNX runtime serves without this tool (`backend_ort::export`).

use std::path::PathBuf;

use clap::Args;
use gradcam_core::{Layout, Method};

use crate::error::CliError;

#[derive(Debug, Args)]
pub struct ExportArgs {
    /// The classifier: an .onnx file from either torch exporter (input (N, 3, H, W), first
    /// output the logits).
    #[arg(value_name = "MODEL.onnx")]
    pub model: PathBuf,
    /// Layer(s) to explain, as PyTorch module paths (layer4, blocks.6, blocks.11.norm1); several
    /// are averaged [default: the model's automatic choice].
    #[arg(long = "layer", value_name = "PATH")]
    pub layers: Vec<String>,
    /// CAM method(s), one output `cam_<method>` each: gradcam, gradcam++, xgradcam, hirescam,
    /// layercam, gradcam-elementwise; repeat or comma-separate for several.
    #[arg(long = "method", value_name = "NAME", default_value = "gradcam", value_delimiter = ',')]
    pub methods: Vec<Method>,
    /// Input size HxW the explainer takes [default: the model's own, else 224x224].
    #[arg(long, value_name = "HxW", value_parser = crate::cli::parse_size)]
    pub size: Option<(usize, usize)>,
    /// How the layers' outputs are laid out: nchw, nhwc or tokens [default: detected per layer].
    #[arg(long, value_name = "LAYOUT")]
    pub layout: Option<Layout>,
    /// Explain the softmax probability of the class instead of its raw logit.
    #[arg(long)]
    pub softmax: bool,
    /// Reference the source model's external weights file instead of copying it next to the
    /// explainer (smaller, but the explainer then depends on where the source's data lies).
    #[arg(long)]
    pub reference_weights: bool,
    /// Run the written explainer once in ONNX Runtime and compare it with `gradcam explain`'s
    /// maps (fails when they differ by more than 1e-5, or for an ill-conditioned map by more
    /// than float rounding moves it, which the check measures and reports).
    #[arg(long)]
    pub check: bool,
    /// The explainer file to write (its external weights go to <file>.data next to it).
    #[arg(short = 'o', long = "output", value_name = "EXPLAINER.onnx")]
    pub output: PathBuf,
}

#[cfg(feature = "ort")]
pub fn run(args: ExportArgs) -> Result<(), CliError> {
    use backend_ort::export::{check_explainer, export_explainer, ExportOptions, Weights};

    if !args.model.is_file() {
        return Err(CliError::MissingFile { what: "model", path: args.model });
    }
    crate::backend::ort::use_built_onnx_runtime();
    let options = ExportOptions {
        layers: args.layers.clone(),
        methods: args.methods.clone(),
        size: args.size,
        layout: args.layout,
        softmax: args.softmax,
        weights: if args.reference_weights { Weights::Reference } else { Weights::Copy },
        ..ExportOptions::default()
    };
    let failed = |e| CliError::Cam(gradcam_core::CamError::backend(e));
    let exported = export_explainer(&args.model, &args.output, &options).map_err(failed)?;
    let (h, w) = exported.size;
    let batch = "N";
    match &exported.data {
        Some(data) => println!("wrote {} (weights in {})", exported.path.display(), data.display()),
        None => println!("wrote {}", exported.path.display()),
    }
    println!(
        "  inputs:  input ({batch}, {}, {h}, {w}) f32, class ({batch},) int64 (-1 = top-1)",
        exported.channels
    );
    if let Some(b) = exported.source_batch {
        let images = if b == 1 { "one image".to_string() } else { format!("{b} images") };
        println!("  batch:   any; the source fixes {b}, so the explainer runs it on {images} at a time");
    }
    let maps: Vec<String> = exported.methods.iter().map(|m| backend_ort::export::cam_output(*m)).collect();
    println!(
        "  outputs: logits ({batch}, {}), {} ({batch}, {h}, {w}) in [0, 1]",
        exported.num_classes,
        maps.join(", ")
    );
    for layer in &exported.layers {
        let shape: Vec<String> = layer.shape.iter().map(usize::to_string).collect();
        let grid = layer.token_grid.map_or(String::new(), |g| {
            let s = if g.prefix_tokens == 1 { "" } else { "s" };
            format!(", {} prefix token{s}, {}x{} grid", g.prefix_tokens, g.height, g.width)
        });
        println!("  layer:   {} [{}] ({}{grid})", layer.name, shape.join(", "), layer.layout);
    }
    println!(
        "  opset {}{}",
        exported.opset,
        if exported.pruned_nodes > 0 { ", class-token pruned" } else { "" }
    );
    if args.check {
        let report = check_explainer(&exported, 0).map_err(failed)?;
        println!("check: ok, {report}");
    }
    Ok(())
}

#[cfg(not(feature = "ort"))]
pub fn run(_: ExportArgs) -> Result<(), CliError> {
    Err(CliError::NotCompiled(crate::cli::BackendKind::Ort))
}
