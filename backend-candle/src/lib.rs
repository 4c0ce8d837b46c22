//! candle backend for gradcam-rs: layer capture and backward in candle
