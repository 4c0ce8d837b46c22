//! Everything the command reports as an error (exit status 1; clap's usage errors exit with 2).

use std::path::PathBuf;

use gradcam_core::CamError;

use crate::cli::BackendKind;

/// An error with a message meant for the user.
#[derive(Debug, thiserror::Error)]
pub enum CliError {
    #[error("{what} not found: {}", path.display())]
    MissingFile { what: &'static str, path: PathBuf },
    #[error("cannot list folder {}: {source}", path.display())]
    ReadFolder { path: PathBuf, source: std::io::Error },
    #[error("no images in folder {} (looked for .png, .jpg, .jpeg, .bmp, .gif, .tif, .tiff, .webp)", path.display())]
    NoImages { path: PathBuf },
    #[error("cannot use {} as input: {message}", path.display())]
    BadNpy { path: PathBuf, message: String },
    #[error(
        "the {} backend is not compiled into this binary: rebuild with --features {}",
        .0.feature(),
        .0.feature()
    )]
    NotCompiled(BackendKind),
    #[error("cannot load model {}: {message}", path.display())]
    Load { path: PathBuf, message: String },
    #[error("unknown architecture `{name}`{}; known: {known}", did_you_mean(near))]
    UnknownArch { name: String, near: Vec<String>, known: String },
    #[error("{0}")]
    Usage(String),
    #[error(transparent)]
    Cam(#[from] CamError),
    #[error(transparent)]
    Viz(#[from] gradcam_viz::VizError),
    #[error("cannot write {}: {source}", path.display())]
    Write { path: PathBuf, source: std::io::Error },
}

fn did_you_mean(near: &[String]) -> String {
    if near.is_empty() {
        String::new()
    } else {
        format!(" (did you mean {}?)", near.join(", "))
    }
}
