//! Cross-backend and end-to-end tests for gradcam-rs
