"""Shared helpers for the gradcam-rs Python tools: paths and the one preprocessing convention.

Preprocessing (the Rust side mirrors it exactly): RGB image -> float32 in [0, 1] -> cv2.resize to (224, 224)
with INTER_LINEAR (half-pixel centres) -> subtract ImageNet mean, divide by std -> CHW.
"""
import os

import cv2
import numpy as np
import torch
from PIL import Image

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ASSETS = os.path.join(ROOT, "assets")
MEAN = np.array([0.485, 0.456, 0.406], dtype=np.float32)
STD = np.array([0.229, 0.224, 0.225], dtype=np.float32)


def preprocess(path, size=(224, 224)):
    """(3, H, W) float32 array for the image file at `path`; size is (H, W)."""
    rgb = np.asarray(Image.open(path).convert("RGB"), dtype=np.float32) / np.float32(255.0)
    resized = cv2.resize(rgb, (size[1], size[0]), interpolation=cv2.INTER_LINEAR)
    normalised = (resized - MEAN) / STD
    return np.ascontiguousarray(normalised.transpose(2, 0, 1), dtype=np.float32)


def load_image_tensor(path, size=(224, 224)):
    """(1, 3, H, W) torch tensor, preprocessed as above."""
    return torch.from_numpy(preprocess(path, size)).unsqueeze(0)
