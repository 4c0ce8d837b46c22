//! What more than one of backend-candle's test files needs.

use std::collections::HashMap;

use backend_candle::{CandleError, CandleModel};
use candle_core::Tensor;

/// Saves `tensors` (a modified checkpoint) to a fresh file and loads it as `arch`; `tag` keeps
/// the files of tests running at once apart.
pub fn load_modified(
    tensors: &HashMap<String, Tensor>,
    arch: &str,
    tag: &str,
) -> Result<CandleModel, CandleError> {
    let dir = std::env::temp_dir().join(format!("gradcam-candle-test-{}-{tag}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("model.safetensors");
    candle_core::safetensors::save(tensors, &path).unwrap();
    let result = CandleModel::from_safetensors(&path, arch);
    std::fs::remove_dir_all(&dir).unwrap();
    result
}
