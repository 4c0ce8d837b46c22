//! Everything the command reports as an error (exit status 1; clap's usage errors exit with 2).

use std::path::PathBuf;

use gradcam_core::CamError;

use crate::cli::BackendKind;

/// An error with a message meant for the user: what is wrong, and what to do about it.
#[derive(Debug, thiserror::Error)]
pub enum CliError {
    #[error("{what} not found: {}", path.display())]
    MissingFile { what: &'static str, path: PathBuf },
    #[error("{what} {} is {kind}, not a regular file: {hint}", path.display())]
    NotAFile { what: &'static str, path: PathBuf, kind: &'static str, hint: &'static str },
    #[error("cannot read {}: {source}", path.display())]
    Read { path: PathBuf, source: std::io::Error },
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
    #[error(
        "unknown layer `{name}`{}: it is not among the {count} layers this model can be cut at (`gradcam layers` lists them; a module that only runs inside data-dependent control flow cannot be cut)",
        did_you_mean(near)
    )]
    UnknownLayer { name: String, near: Vec<String>, count: usize },
    #[error("{0}")]
    Usage(String),
    #[error("{} already exists: {hint}", path.display())]
    Exists { path: PathBuf, hint: String },
    #[error("--out {} is a file, not a folder: give a folder (it is created when missing)", path.display())]
    OutIsFile { path: PathBuf },
    #[error(
        "{}: the model's outputs are NaN or infinite: check the input's values and the model's weights",
        name
    )]
    NonFinite { name: String },
    #[error("cannot read manifest {} line {line}: {message}", path.display())]
    Manifest { path: PathBuf, line: usize, message: String },
    #[error(transparent)]
    Cam(#[from] CamError),
    #[error(transparent)]
    Viz(#[from] gradcam_viz::VizError),
    #[error("cannot write {}: {source}", path.display())]
    Write { path: PathBuf, source: std::io::Error },
    #[error("{failed} of {total} images could not be explained (see the errors above)")]
    SomeFailed { failed: usize, total: usize },
}

impl CliError {
    /// A write error.
    pub fn write(path: impl Into<PathBuf>) -> impl FnOnce(std::io::Error) -> CliError {
        let path = path.into();
        move |source| CliError::Write { path, source }
    }
}

fn did_you_mean(near: &[String]) -> String {
    if near.is_empty() {
        String::new()
    } else {
        format!(" (did you mean {}?)", near.join(", "))
    }
}
