//! The one error type of the core math.

/// Everything that can go wrong while computing a CAM.
///
/// Backends wrap their own errors in [`CamError::Backend`] so that the pipeline,
/// which only knows the [`crate::CamModel`] trait, can pass them on unchanged.
#[derive(Debug, thiserror::Error)]
pub enum CamError {
    /// The requested layer does not exist; `near` lists similar names.
    #[error("unknown layer `{name}`{}", near_list(near))]
    UnknownLayer { name: String, near: Vec<String> },
    /// A class index past the model's number of outputs.
    #[error("class {class} is out of range: the model has {num_classes} classes")]
    ClassOutOfRange { class: usize, num_classes: usize },
    /// A class rank past the model's number of outputs (`--top` larger than the class count).
    #[error("class rank {rank} is out of range: the model has {num_classes} classes")]
    RankOutOfRange { rank: usize, num_classes: usize },
    /// The model's outputs for an image hold NaN or infinity: nothing can be explained.
    #[error("the model's outputs for image {image} of the batch are NaN or infinite: check the input's values and the model's weights")]
    NonFiniteLogits { image: usize },
    /// Arrays whose shapes do not fit together.
    #[error("shape mismatch: {0}")]
    Shape(String),
    /// A layer whose output's first axis is not the image batch.
    #[error(
        "layer `{layer}` has {rows} rows for {images} images: its first axis is not the image batch (a Swin \
         window attention or a MobileViT transformer holds several rows per image); explain a layer that keeps \
         one row per image, such as the block around it"
    )]
    LayerBatch { layer: String, rows: usize, images: usize },
    /// Tokens that cannot be folded into a spatial grid.
    #[error("cannot fold {tokens} tokens into a grid for a {height}x{width} input: {reason}")]
    TokenGrid { tokens: usize, height: usize, width: usize, reason: String },
    /// A method that needs something the model or capture did not provide.
    #[error("{0}")]
    Unsupported(String),
    /// [`crate::CamOptions::cancel`] asked to stop; nothing was explained.
    #[error("stopped on request before the explanation was complete")]
    Cancelled,
    /// An error raised inside a backend.
    #[error(transparent)]
    Backend(Box<dyn std::error::Error + Send + Sync + 'static>),
}

impl CamError {
    /// Wraps any backend error.
    pub fn backend(err: impl std::error::Error + Send + Sync + 'static) -> Self {
        CamError::Backend(Box::new(err))
    }
}

fn near_list(near: &[String]) -> String {
    if near.is_empty() {
        String::new()
    } else {
        format!("; did you mean {}?", near.join(", "))
    }
}
