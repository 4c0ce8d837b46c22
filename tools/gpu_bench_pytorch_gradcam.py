#!/usr/bin/env python3
"""pytorch-grad-cam GradCAM throughput vs torch forward-only throughput on a CUDA GPU (images per second), the
GPU counterpart of bench_pytorch_gradcam.py. grad-cam does its CAM math in numpy on the CPU, so its GradCAM
includes device->host copies; that is the library as users run it. One JSON line per (model, batch):
  {"model", "layer", "batch", "device", "gradcam_img_s", "forward_img_s", "gradcam_s", "forward_s", ...}

  python tools/gpu_bench_pytorch_gradcam.py [--device cuda] [--batches 1,64] [--runs 10] [--models ...]
"""
import argparse
import json
import os
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from bench_pytorch_gradcam import LAYERS, bench  # noqa: E402


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cuda")
    p.add_argument("--models", default=",".join(LAYERS))
    p.add_argument("--batches", default="1,64")
    p.add_argument("--runs", type=int, default=10)
    a = p.parse_args()
    device = torch.device(a.device)
    sync = (lambda: torch.cuda.synchronize(device)) if device.type == "cuda" else (lambda: None)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    for arch in a.models.split(","):
        for b in (int(s) for s in a.batches.split(",")):
            r = bench(arch, b, a.runs, device=str(device), sync=sync)
            r["gradcam_img_s"] = round(b / r["gradcam_s"], 1)
            r["forward_img_s"] = round(b / r["forward_s"], 1)
            r["gpu"] = name
            print(json.dumps(r), flush=True)


if __name__ == "__main__":
    main()
