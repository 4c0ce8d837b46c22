//! libtorch (tch) backend for gradcam-rs: TorchScript layer capture and backward
