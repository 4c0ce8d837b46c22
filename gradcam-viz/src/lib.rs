//! Images in and out for gradcam-rs: preprocessing, resize, colormaps, overlays, files
