#!/usr/bin/env python3
"""pytorch-grad-cam (PyPI grad-cam 1.5.7) GradCAM latency vs torch forward-only latency on CPU, so the Rust
benchmarks can be compared on the same machine. One JSON line per (model, batch):
  {"model", "layer", "batch", "threads", "gradcam_s", "forward_s", "ratio", "runs", "torch"}
times are the median of `--runs` timed calls after one warm-up call; input 224x224, random N(0,1) images,
top-1 targets (grad-cam's default). Weights: random init (timing does not depend on them).

  python tools/bench_pytorch_gradcam.py [--models resnet50,tf_efficientnet_lite0,vit_small_patch16_224]
                                        [--batches 1,16] [--runs 5] [--threads 2]
"""
import argparse
import json
import statistics
import time

import timm
import torch
from pytorch_grad_cam import GradCAM

from gradcam_ref import token_reshape

LAYERS = {"resnet50": "layer4", "tf_efficientnet_lite0": "blocks.6", "vit_small_patch16_224": "blocks.11.norm1"}


vit_reshape = token_reshape(1, 14, 14)  # vit_small_patch16_224

def median_time(fn, runs, sync=lambda: None):
    fn()  # warm-up
    sync()
    times = []
    for _ in range(runs):
        t0 = time.perf_counter()
        fn()
        sync()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def bench(arch, batch, runs, device="cpu", sync=lambda: None):
    torch.manual_seed(0)
    model = timm.create_model(arch, pretrained=False).eval().to(device)
    layer = LAYERS[arch]
    x = torch.randn(batch, 3, 224, 224, device=device)
    cam = GradCAM(model, [model.get_submodule(layer)], reshape_transform=vit_reshape if "vit" in arch else None)

    def forward():
        with torch.no_grad():
            model(x)

    forward_s = median_time(forward, runs, sync)
    gradcam_s = median_time(lambda: cam(input_tensor=x, targets=None), runs, sync)
    cam.activations_and_grads.release()
    return {"model": arch, "layer": layer, "batch": batch, "device": device, "gradcam_s": round(gradcam_s, 5),
            "forward_s": round(forward_s, 5), "ratio": round(gradcam_s / forward_s, 3), "runs": runs,
            "torch": torch.__version__}


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--models", default=",".join(LAYERS))
    p.add_argument("--batches", default="1,16")
    p.add_argument("--runs", type=int, default=5)
    p.add_argument("--threads", type=int, default=2)
    a = p.parse_args()
    torch.set_num_threads(a.threads)
    for arch in a.models.split(","):
        for b in (int(s) for s in a.batches.split(",")):
            r = bench(arch, b, a.runs)
            r["threads"] = a.threads
            print(json.dumps(r), flush=True)


if __name__ == "__main__":
    main()
