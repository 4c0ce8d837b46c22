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
    /// The part of the model after the layer runs an op libtorch cannot differentiate.
    #[error(
        "libtorch has no derivative for `{op}`, which the model runs after layer `{layer}`: explain a later \
         layer (one after the last `{op}`), or use a method without gradients (scorecam, ablationcam, eigencam)"
    )]
    NoDerivative {
        /// The layer.
        layer: String,
        /// The op (`aten::…`).
        op: String,
    },
    /// The model runs an op libtorch cannot differentiate, and the gradient must reach the input
    /// (guided backprop, guided Grad-CAM, FullGrad).
    #[error(
        "libtorch has no derivative for `{op}`, which the model runs: guided-backprop, guided-gradcam and fullgrad \
         need the gradient down to the input; use a layer method instead (gradcam, or one without gradients such \
         as scorecam)"
    )]
    NoInputDerivative {
        /// The op (`aten::…`).
        op: String,
    },
    /// The model does not run on an input of the size its layers are listed for.
    #[error(
        "cannot run the model on a {height}x{width} input to list its layers ({message}); a traced model may \
         run at the input size it was traced at only: give that input size (`--size H W` on the command line, \
         `set_probe_size` in the library)"
    )]
    Probe {
        /// The input height tried.
        height: usize,
        /// The input width tried.
        width: usize,
        /// libtorch's message.
        message: String,
    },
    /// An error raised by libtorch while running the model.
    #[error("libtorch: {0}")]
    Torch(String),
}

impl From<tch::TchError> for TchError {
    fn from(e: tch::TchError) -> Self {
        TchError::Torch(short_message(&e.to_string()))
    }
}

/// libtorch's message as a user reads it: without the C++ backtrace c10 appends (`Exception raised
/// from …`, `frame #0: …`), and for an error inside TorchScript without the interpreter's traceback,
/// keeping the error line that ends it.
pub(crate) fn short_message(raw: &str) -> String {
    let raw = raw.strip_prefix("Internal torch error: ").unwrap_or(raw);
    let mut lines: Vec<&str> = raw
        .lines()
        .take_while(|l| !l.starts_with("Exception raised from "))
        .filter(|l| !l.trim_start().starts_with("frame #"))
        .collect();
    if lines.iter().any(|l| l.starts_with("Traceback of TorchScript")) {
        if let Some(last) = lines.iter().rposition(|l| error_line(l).is_some()) {
            let first = error_line(lines[last]).unwrap_or_default();
            lines = std::iter::once(first).chain(lines[last + 1..].iter().copied()).collect();
        }
    }
    let text = lines.join("\n");
    text.trim().to_owned()
}

/// The message of a Python-style `RuntimeError: message` line.
fn error_line(line: &str) -> Option<&str> {
    let (kind, message) = line.split_once(": ")?;
    (kind.ends_with("Error") && kind.chars().all(|c| c.is_ascii_alphanumeric() || c == '.'))
        .then_some(message)
}

/// The op of libtorch's "derivative for aten::op is not implemented".
pub(crate) fn missing_derivative(message: &str) -> Option<&str> {
    let rest = &message[message.find("derivative for ")? + "derivative for ".len()..];
    let op = &rest[..rest.find(" is not implemented")?];
    (!op.is_empty() && !op.contains(char::is_whitespace)).then_some(op)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backtraces_and_torchscript_tracebacks_are_cut() {
        let c10 = "Internal torch error: derivative for aten::_native_multi_head_attention is not implemented\n\
                   Exception raised from operator() at /pytorch/torch/csrc/autograd/x.cpp:12 (most recent call first):\n\
                   frame #0: c10::Error::Error(...) + 0x9a (0x7f in libc10.so)\n\
                   frame #1: <unknown function> + 0x54 (0x7f in libtorch_cpu.so)";
        assert_eq!(
            short_message(c10),
            "derivative for aten::_native_multi_head_attention is not implemented"
        );
        assert_eq!(missing_derivative(c10), Some("aten::_native_multi_head_attention"));
        let script = "The following operation failed in the TorchScript interpreter.\n\
                      Traceback of TorchScript, serialized code (most recent call last):\n\
                      \x20 File \"code/__torch__/timm.py\", line 40, in forward\n\
                      \x20   x = torch.reshape(x, [1024, 2, 16, 2])\n\
                      \x20       ~~~~~~~~~~~~~ <--- HERE\n\
                      RuntimeError: shape '[1024, 2, 16, 2]' is invalid for input of size 50176";
        assert_eq!(short_message(script), "shape '[1024, 2, 16, 2]' is invalid for input of size 50176");
        assert_eq!(short_message("plain message"), "plain message");
        assert_eq!(missing_derivative("shape mismatch"), None);
    }
}
