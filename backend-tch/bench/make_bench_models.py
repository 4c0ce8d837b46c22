#!/usr/bin/env python3
"""Writes the TorchScript models the tch benchmarks time (random init: timing does not depend on weights).

  python backend-tch/bench/make_bench_models.py [OUT_DIR]     (default: target/bench-models)

For resnet50, tf_efficientnet_lite0 and vit_small_patch16_224 (timm, torch.manual_seed(0)): <arch>.traced.pt
(torch.jit.trace on a (1, 3, 224, 224) input), checked against the eager model at batch 1 and 16. Skips files
that already exist. Needs torch and timm (tools/requirements.txt).
"""
import os
import sys

import timm
import torch

ARCHS = ["resnet50", "tf_efficientnet_lite0", "vit_small_patch16_224"]


def main():
    out = sys.argv[1] if len(sys.argv) > 1 else os.path.join(os.path.dirname(__file__), "..", "..", "target",
                                                              "bench-models")
    os.makedirs(out, exist_ok=True)
    for arch in ARCHS:
        path = os.path.join(out, f"{arch}.traced.pt")
        if os.path.exists(path):
            continue
        torch.manual_seed(0)
        model = timm.create_model(arch, pretrained=False).eval()
        with torch.no_grad():
            traced = torch.jit.trace(model, torch.randn(1, 3, 224, 224), check_trace=False)
            for batch in (1, 16):  # the trace must not have baked in the batch size
                x = torch.randn(batch, 3, 224, 224)
                torch.testing.assert_close(traced(x), model(x), rtol=1e-4, atol=1e-4)
        traced.save(path + ".tmp")
        os.replace(path + ".tmp", path)
        print(f"wrote {path}", flush=True)


if __name__ == "__main__":
    main()
