//! The breadth suite: two dozen architectures people bring (torchvision and timm, traced
//! TorchScript and both ONNX exporters, fixed and dynamic batch) against pytorch-grad-cam in every
//! compiled-in backend. The models come from `tools/make_breadth_fixtures.py`.
