#!/usr/bin/env python3
"""Exports the ONNX models backend-ort's benchmark (benches/explain.rs) runs.

  python backend-ort/bench/export_models.py [OUT_DIR]   (default: target/bench-models)

timm resnet50, tf_efficientnet_lite0 and vit_small_patch16_224 with random weights (speed does not
depend on them), exported by torch's default (dynamo) exporter with a dynamic batch axis and
external weights: <name>.onnx + <name>.onnx.data.
"""
import os
import sys

import timm
import torch

MODELS = ["resnet50", "tf_efficientnet_lite0", "vit_small_patch16_224"]


def main():
    out = sys.argv[1] if len(sys.argv) > 1 else os.path.join("target", "bench-models")
    os.makedirs(out, exist_ok=True)
    for name in MODELS:
        path = os.path.join(out, f"{name}.onnx")
        if os.path.exists(path) and os.path.exists(path + ".data"):
            continue
        torch.manual_seed(0)
        model = timm.create_model(name, pretrained=False).eval()
        x = torch.randn(2, 3, 224, 224)
        batch = torch.export.Dim("batch", min=1, max=1024)
        program = torch.onnx.export(model, (x,), dynamo=True, input_names=["input"], output_names=["logits"],
                                    dynamic_shapes=({0: batch},), verbose=False)
        program.save(path, external_data=True)
        print(f"wrote {path}", flush=True)


if __name__ == "__main__":
    main()
