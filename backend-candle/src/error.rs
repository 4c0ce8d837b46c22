//! The candle backend's errors.

use std::path::PathBuf;

use gradcam_core::CamError;

/// Everything that can go wrong while loading or running a candle model.
#[derive(Debug, thiserror::Error)]
pub enum CandleError {
    /// An architecture name the zoo does not know.
    #[error("unknown architecture `{arch}`{}; supported: {}", did_you_mean(near), crate::ARCHITECTURES.join(", "))]
    UnknownArch {
        /// The name asked for.
        arch: String,
        /// Similar supported names, best first.
        near: Vec<String>,
    },
    /// The checkpoint file could not be read.
    #[error("cannot read safetensors file {}: {source}", path.display())]
    Load {
        /// The file.
        path: PathBuf,
        /// Why.
        source: candle_core::Error,
    },
    /// A tensor the architecture needs is not in the checkpoint.
    #[error("tensor `{name}` is missing from the checkpoint (is it a `{arch}` state dict?)")]
    MissingTensor {
        /// State-dict key.
        name: String,
        /// The architecture being built.
        arch: String,
    },
    /// A tensor whose shape does not fit the architecture.
    #[error("tensor `{name}` has shape {found:?}, but `{arch}` needs {expected:?}")]
    TensorShape {
        /// State-dict key.
        name: String,
        /// The architecture being built.
        arch: String,
        /// What the architecture needs.
        expected: Vec<usize>,
        /// What the file holds.
        found: Vec<usize>,
    },
    /// A tensor the architecture has no place for: the checkpoint is another model.
    #[error("tensor `{name}` (and {} more) is not part of `{arch}`: is the checkpoint another architecture?", count - 1)]
    UnexpectedTensor {
        /// State-dict key (the first by name).
        name: String,
        /// The architecture being built.
        arch: String,
        /// How many unused tensors there are.
        count: usize,
    },
    /// Some tensors of the classifier head but not all: a timm model has its whole head
    /// (`num_classes` > 0) or none of it (`num_classes=0`, an embedding model).
    #[error(
        "the checkpoint has {} of `{arch}`'s classifier head but not {}: a timm model has its whole head, \
         or none of it when made with num_classes=0 (an embedding model)",
        quoted(found),
        quoted(missing)
    )]
    PartialHead {
        /// The architecture being built.
        arch: String,
        /// The head's tensors the checkpoint holds.
        found: Vec<String>,
        /// The head's tensors it lacks.
        missing: Vec<String>,
    },
    /// An input the model cannot take (e.g. a ViT input whose patch grid does not match its
    /// position embedding).
    #[error("{0}")]
    Input(String),
    /// The model's forward did not produce `(batch, ...)`: class logits, features or a map.
    #[error("the model returned an output of shape {0:?}; expected (batch, outputs...)")]
    Logits(Vec<usize>),
    /// An error raised by candle.
    #[error(transparent)]
    Candle(#[from] candle_core::Error),
}

fn quoted(names: &[String]) -> String {
    names.iter().map(|n| format!("`{n}`")).collect::<Vec<_>>().join(", ")
}

fn did_you_mean(near: &[String]) -> String {
    if near.is_empty() {
        String::new()
    } else {
        format!(" (did you mean {}?)", near.join(", "))
    }
}

impl From<CandleError> for CamError {
    fn from(e: CandleError) -> Self {
        CamError::backend(e)
    }
}
