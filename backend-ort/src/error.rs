//! The ort backend's error type.

use gradcam_core::CamError;

use crate::onnx_graph::GraphError;

/// Everything that can go wrong loading or running an ONNX model.
#[derive(Debug, thiserror::Error)]
pub enum OrtBackendError {
    /// Reading the model or generating its backward graph failed.
    #[error(transparent)]
    Graph(#[from] GraphError),
    /// ONNX Runtime refused a model or failed a run.
    #[error("ONNX Runtime failed to {context}: {source}")]
    Ort {
        /// What was being done.
        context: String,
        /// ONNX Runtime's error.
        source: ort::Error,
    },
    /// The ONNX Runtime library could not be loaded.
    #[error(
        "cannot load ONNX Runtime from {path}: {reason}; point ORT_DYLIB_PATH at libonnxruntime.so 1.31 \
         (`eval \"$(scripts/setup-native)\"` installs one)"
    )]
    Library {
        /// Where it was looked for.
        path: String,
        /// Why it failed.
        reason: String,
    },
    /// A model whose inputs or outputs are not those of an image classifier.
    #[error("unexpected model signature: {0}")]
    Signature(String),
}

impl OrtBackendError {
    /// Wraps an ort error with what was being done.
    pub(crate) fn ort<R>(context: impl Into<String>) -> impl FnOnce(ort::Error<R>) -> Self
    where
        ort::Error: From<ort::Error<R>>,
    {
        let context = context.into();
        move |e| OrtBackendError::Ort { context, source: ort::Error::from(e) }
    }
}

impl From<OrtBackendError> for CamError {
    fn from(e: OrtBackendError) -> Self {
        match e {
            OrtBackendError::Graph(GraphError::UnknownLayer { name, near }) => {
                CamError::UnknownLayer { name, near }
            }
            other => CamError::backend(other),
        }
    }
}
