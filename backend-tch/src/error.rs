//! The backend's error type.

use std::path::PathBuf;

/// Everything that can go wrong in the tch backend.
#[derive(Debug, thiserror::Error)]
pub enum TchError {
    /// The model file could not be read at all.
    #[error("cannot read {path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The file is readable but libtorch does not accept it as a TorchScript module.
    #[error(
        "{path} is not a TorchScript module (save one with torch.jit.trace or torch.jit.script): {message}"
    )]
    NotTorchScript {
        /// The file.
        path: PathBuf,
        /// libtorch's message.
        message: String,
    },
    /// CUDA was asked for explicitly but libtorch cannot use it.
    #[error("CUDA is not available: {0}")]
    CudaUnavailable(String),
    /// The module exists but its output cannot be exposed as an activation.
    #[error("layer `{layer}` cannot be captured: {reason}")]
    Layer {
        /// The module path.
        layer: String,
        /// Why.
        reason: String,
    },
    /// The model's output or an activation has a shape this backend cannot use.
    #[error("unexpected shape: {0}")]
    Shape(String),
    /// An error raised by libtorch while running the model.
    #[error("libtorch: {0}")]
    Torch(String),
}

impl From<tch::TchError> for TchError {
    fn from(e: tch::TchError) -> Self {
        TchError::Torch(e.to_string())
    }
}
