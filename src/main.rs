//! `gradcam`: Grad-CAM and its family from the command line, over candle, libtorch or ONNX
//! Runtime models.
//!
//! ```text
//! gradcam                             # = gradcam explain: the shipped photos and model → ./gradcam-out/
//! gradcam explain cat.jpg --method gradcam++ --method scorecam --layer blocks.5
//! gradcam layers --model resnet50.onnx
//! gradcam export resnet50.onnx --layer layer4 --method gradcam,layercam -o resnet50.explainer.onnx
//! ```

mod assets;
mod backend;
mod cli;
mod error;
mod explain;
mod export;
mod input;
mod layers;
mod output;

use std::process::ExitCode;

use clap::Parser;

use crate::cli::{Cli, Command};

fn main() -> ExitCode {
    // Plain `gradcam` (as `cargo run` gives) is `gradcam explain` with every default.
    let command = Cli::parse().command.or_else(|| Cli::parse_from(["gradcam", "explain"]).command);
    let result = match command.expect("explain parses without arguments") {
        Command::Explain(args) => explain::run(args),
        Command::Layers(args) => layers::run(&args),
        Command::Export(args) => export::run(args),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("error: {err}");
            let mut source = std::error::Error::source(&err);
            while let Some(cause) = source {
                eprintln!("  caused by: {cause}");
                source = cause.source();
            }
            ExitCode::FAILURE
        }
    }
}
