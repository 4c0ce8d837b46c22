//! `gradcam layers`: every layer a model offers, with its activation shape.

use std::io::Write;

use crate::backend::{self, LoadedModel};
use crate::cli::ModelArgs;
use crate::error::CliError;

pub fn run(args: &ModelArgs) -> Result<(), CliError> {
    let mut loaded = backend::load(args)?;
    let layers = loaded.model.layers()?;
    let chosen = loaded.model.default_layer()?;
    let width = layers.iter().map(|l| l.name.len()).max().unwrap_or(0);
    let mut text = format!(
        "{} layers of {} ({} backend); shapes for one image; * = chosen when --layer is omitted\n",
        layers.len(),
        loaded.path.display(),
        loaded.backend.feature()
    );
    for layer in &layers {
        let mark = if layer.name == chosen { "*" } else { " " };
        let shape: Vec<String> = layer.shape.iter().map(usize::to_string).collect();
        text.push_str(&format!("{mark} {:<width$}  [{}]\n", layer.name, shape.join(", ")));
    }
    // `gradcam layers | head` closes stdout early: not an error worth a panic.
    let _ = std::io::stdout().lock().write_all(text.as_bytes());
    Ok(())
}

/// The layers to explain: those named (checked against the model's, with near matches for a
/// typo), or the model's automatic choice.
pub(crate) fn choose_layers(
    loaded: &mut LoadedModel,
    wanted: &[String],
) -> Result<(Vec<String>, bool), CliError> {
    if wanted.is_empty() {
        return Ok((vec![loaded.model.default_layer()?], true));
    }
    let known = loaded.model.layers()?;
    let mut layers: Vec<String> = Vec::new();
    for name in wanted {
        if !known.iter().any(|l| &l.name == name) {
            if let Some(why) = loaded.model.why_not_a_layer(name) {
                return Err(why.into());
            }
            let near = gradcam_core::near_matches(name, known.iter().map(|l| l.name.as_str()));
            return Err(CliError::UnknownLayer { name: name.clone(), near, count: known.len() });
        }
        if !layers.contains(name) {
            layers.push(name.clone());
        }
    }
    Ok((layers, false))
}
