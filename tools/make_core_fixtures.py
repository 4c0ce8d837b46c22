#!/usr/bin/env python3
"""Writes the small committed reference fixtures of gradcam-core: gradcam-core/tests/fixtures/<case>/.

Cases (timm models with random init, torch.manual_seed(0) before creating the model, then
torch.manual_seed(0) again before drawing the input torch.randn(2, 3, 96, 128)):
  resnet18_layer4  timm resnet18, layer4 (3x4)
  resnet18_multi   same model and input, layers [layer3, layer4] (6x8, 3x4)
  vit_tiny_norm1   timm vit_tiny_patch16_224(img_size=(96, 128)), blocks.11.norm1, 1 class token, grid 6x8

Every file is described in tools/README.md ("Core fixtures"). Usage:
  python tools/make_core_fixtures.py [OUT_DIR]   (default gradcam-core/tests/fixtures)
"""
import json
import os
import sys
import time

import numpy as np
import timm
import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import ROOT  # noqa: E402
from gradcam_ref import METHODS, capture_native, run_methods, scorecam_masks, token_reshape  # noqa: E402

INPUT_HW = (96, 128)
SCORECAM_BATCH = 16  # grad-cam's ScoreCAM default
ABLATION_BATCH = 32  # grad-cam's AblationCAM default (matters for the ViT ablation value, see README)



def get_module(model, path):
    return model.get_submodule(path)


def save(dirname, name, array, dtype=np.float32):
    np.save(os.path.join(dirname, name), np.ascontiguousarray(array, dtype=dtype))


def write_case(out_root, case, model, x, layer_names, vit_grid=None):
    t0 = time.time()
    d = os.path.join(out_root, case)
    os.makedirs(d, exist_ok=True)
    for f in os.listdir(d):
        if f.endswith(".npy") or f == "meta.json":
            os.remove(os.path.join(d, f))
    model.eval()
    layers = [get_module(model, n) for n in layer_names]
    reshape = token_reshape(1, *vit_grid) if vit_grid else None
    logits, classes, acts, grads = capture_native(model, x, layers)
    top1, results = run_methods(model, x, layers, reshape_transform=reshape, vit=vit_grid is not None,
                                scorecam_batch=SCORECAM_BATCH, ablation_batch=ABLATION_BATCH,
                                log=lambda s: print(f"[{case}]{s}"))
    assert top1 == classes.tolist()
    save(d, "input.npy", x.numpy())
    save(d, "logits.npy", logits)
    eigen_flips = {}
    for i, _ in enumerate(layer_names):
        save(d, f"activations_{i}.npy", acts[i])
        save(d, f"gradients_{i}.npy", grads[i])
        chw = acts[i] if reshape is None else reshape(torch.from_numpy(acts[i])).numpy()
        save(d, f"scorecam_masks_{i}.npy", scorecam_masks(chw, INPUT_HW))
    for m in METHODS:
        r = results[m]
        save(d, f"cam_{m}.npy", r["cam"])
        for i, _ in enumerate(layer_names):
            save(d, f"raw_{m}_{i}.npy", r["raw"][i])
            save(d, f"scaled_{m}_{i}.npy", r["scaled"][i])
        if m == "scorecam":
            for i, s in enumerate(r["scores"]):
                save(d, f"scorecam_scores_{i}.npy", s)
        if m == "ablationcam":
            save(d, "original_scores.npy", r["original"])
            for i, s in enumerate(r["scores"]):
                save(d, f"ablation_scores_{i}.npy", s)
                save(d, f"ablation_values_{i}.npy", r["values"][i])
        if m in ("eigencam", "eigengradcam"):
            for i, p in enumerate(r["projection"]):
                save(d, f"eigen_projection_{m}_{i}.npy", p)
            eigen_flips[m] = r["flipped"]
    meta = {
        "input_hw": list(INPUT_HW),
        "layers": layer_names,
        "classes": classes.tolist(),
        "prefix_tokens": 1 if vit_grid else 0,
        "methods": METHODS,
        "scorecam_batch_size": SCORECAM_BATCH,
        "ablation_batch_size": ABLATION_BATCH,
        "eigen_sign_flipped": eigen_flips,
        "generator": "tools/make_core_fixtures.py",
        "versions": {"torch": torch.__version__, "timm": timm.__version__, "grad-cam": "1.5.7",
                     "numpy": np.__version__},
    }
    if vit_grid:
        meta["grid"] = list(vit_grid)
    with open(os.path.join(d, "meta.json"), "w") as f:
        json.dump(meta, f)
        f.write("\n")
    print(f"[{case}] done in {time.time() - t0:.1f}s: classes {classes.tolist()}, eigen flips {eigen_flips}")


def seeded_model(name, **kwargs):
    torch.manual_seed(0)
    return timm.create_model(name, pretrained=False, **kwargs).eval()


def seeded_input():
    torch.manual_seed(0)
    return torch.randn(2, 3, *INPUT_HW)


def main():
    torch.set_num_threads(int(os.environ.get("GRADCAM_FIXTURES_THREADS", "2")))
    out_root = sys.argv[1] if len(sys.argv) > 1 else os.path.join(ROOT, "gradcam-core", "tests", "fixtures")
    cases = sys.argv[2:] or ["resnet18_layer4", "resnet18_multi", "vit_tiny_norm1"]
    t0 = time.time()
    if "resnet18_layer4" in cases or "resnet18_multi" in cases:
        resnet = seeded_model("resnet18")
        x = seeded_input()
        if "resnet18_layer4" in cases:
            write_case(out_root, "resnet18_layer4", resnet, x, ["layer4"])
        if "resnet18_multi" in cases:
            write_case(out_root, "resnet18_multi", resnet, x, ["layer3", "layer4"])
    if "vit_tiny_norm1" in cases:
        vit = seeded_model("vit_tiny_patch16_224", img_size=INPUT_HW)
        x = seeded_input()
        write_case(out_root, "vit_tiny_norm1", vit, x, ["blocks.11.norm1"], vit_grid=(6, 8))
    print(f"all done in {time.time() - t0:.1f}s")


if __name__ == "__main__":
    main()
