//! The shipped model, photos and ImageNet class names.

use std::path::{Path, PathBuf};

/// Architecture of the shipped model.
#[cfg(feature = "candle")]
pub const SHIPPED_ARCH: &str = "tf_efficientnet_lite0";

/// The assets folder: `$GRADCAM_ASSETS` when set, else the one in the workspace the binary was
/// built from (so `cargo run` and an installed binary on the build machine both find it).
pub fn dir() -> PathBuf {
    match std::env::var_os("GRADCAM_ASSETS") {
        Some(dir) if !dir.is_empty() => PathBuf::from(dir),
        _ => Path::new(env!("CARGO_MANIFEST_DIR")).join("assets"),
    }
}

/// The shipped candle model.
#[cfg(feature = "candle")]
pub fn shipped_model() -> PathBuf {
    dir().join("models").join(format!("{SHIPPED_ARCH}.safetensors"))
}

/// The shipped photos folder.
pub fn shipped_images() -> PathBuf {
    dir().join("images")
}

/// Human-readable class names, when the model's class count fits a list we know.
pub struct ClassNames(Option<Vec<String>>);

impl ClassNames {
    /// ImageNet names for 1000-class models (from `assets/imagenet_classes.txt`), otherwise
    /// none (classes are then shown by index).
    pub fn for_classes(num_classes: usize) -> Self {
        if num_classes != 1000 {
            return ClassNames(None);
        }
        let names = std::fs::read_to_string(dir().join("imagenet_classes.txt"))
            .ok()
            .map(|text| text.lines().map(|l| l.trim().to_string()).collect::<Vec<_>>())
            .filter(|names| names.len() == 1000);
        ClassNames(names)
    }

    /// The name of `class`, if known.
    pub fn get(&self, class: usize) -> Option<&str> {
        self.0.as_ref().and_then(|names| names.get(class)).map(String::as_str)
    }
}
