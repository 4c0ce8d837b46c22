//! `gradcam`: Grad-CAM and its family from the command line, over candle, libtorch or ONNX
//! Runtime models.
//!
//! ```text
//! gradcam                             # = gradcam explain: the shipped photos and model → ./gradcam-out/
//! gradcam explain cat.jpg --method gradcam++ --method scorecam --layer blocks.5
//! gradcam explain photos/ --manifest done.jsonl --resume --shard 3/8
//! gradcam layers --model resnet50.onnx
//! gradcam evaluate photos/ --method gradcam,gradcam++,scorecam   # which map to trust
//! gradcam export resnet50.onnx --layer layer4 --method gradcam,layercam -o resnet50.explainer.onnx
//! ```
//!
//! Modules, in the order data flows through `explain`: [`plan`] (which inputs) → [`read`]
//! (pixels) → [`compute`] (the model) → [`render`] (pictures) → [`write`] (files placed together,
//! [`manifest`], [`npy_out`]) → [`report`]; [`explain`] wires them together on threads
//! ([`pool`]) and [`stop`] ends them cleanly.

// Nothing the user controls may panic: errors are values.
#![cfg_attr(not(test), deny(clippy::unwrap_used, clippy::expect_used))]
// A failed image (`read::Failed`: the item and its error) travels by value through the stages
// once per failure; boxing it would only add an allocation to a rare path.
#![allow(clippy::result_large_err)]

mod assets;
mod backend;
mod cli;
mod compute;
mod error;
mod evaluate;
mod explain;
mod export;
mod layers;
mod manifest;
mod npy_out;
mod plan;
mod pool;
mod progress;
mod read;
mod render;
mod report;
mod staged;
mod stop;
mod targets;
mod write;

use std::process::ExitCode;

use clap::Parser;

use crate::cli::{Cli, Command};
use crate::error::CliError;

fn main() -> ExitCode {
    keep_freed_memory();
    let command = match Cli::parse().command {
        Some(command) => command,
        // Plain `gradcam` (as `cargo run` gives) is `gradcam explain` with every default.
        None => match Cli::parse_from(["gradcam", "explain"]).command {
            Some(command) => command,
            None => return ExitCode::FAILURE,
        },
    };
    backend::prepare_process(&command);
    let result = match command {
        Command::Explain(args) => stop::Stop::install().and_then(|stop| explain::run(args, &stop)),
        Command::Layers(args) => layers::run(&args).map(|()| explain::Ending::Complete),
        Command::Export(args) => export::run(args).map(|()| explain::Ending::Complete),
        Command::Evaluate(args) => evaluate::run(args).map(|()| explain::Ending::Complete),
    };
    match result {
        Ok(explain::Ending::Complete) => ExitCode::SUCCESS,
        Ok(explain::Ending::Interrupted(status)) => ExitCode::from(status),
        Err(err) => {
            use std::io::Write;
            let _ = writeln!(std::io::stderr(), "error: {}", error_chain(&err));
            ExitCode::FAILURE
        }
    }
}

/// Lets glibc's allocator keep large freed blocks for the next batch instead of returning them
/// to the system. By default every block over 32 MB (one batch's activation or im2col buffer,
/// in candle or libtorch) is a fresh `mmap` whose pages the kernel faults in and zeroes again on
/// every batch; the process' peak memory is the same either way.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
fn keep_freed_memory() {
    // SAFETY: mallopt only sets allocator parameters; it is called first thing in `main`, before
    // this process has started a thread or allocated much.
    unsafe {
        libc::mallopt(libc::M_MMAP_MAX, 0);
        libc::mallopt(libc::M_TRIM_THRESHOLD, i32::MAX);
    }
}

#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
fn keep_freed_memory() {}

/// An error with its causes, one per line.
pub fn error_chain(err: &CliError) -> String {
    let mut text = err.to_string();
    let mut source = std::error::Error::source(err);
    while let Some(cause) = source {
        let cause_text = cause.to_string();
        // Transparent wrappers repeat their cause's message: say it once.
        if !text.contains(&cause_text) {
            text.push_str(&format!("\n  caused by: {cause_text}"));
        }
        source = cause.source();
    }
    text
}
