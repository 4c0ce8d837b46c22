#!/usr/bin/env python3
"""Explainers written by `gradcam export`, run with plain `onnxruntime`, against pytorch-grad-cam 1.5.7.

  python tools/test_exported.py --gradcam target/debug/gradcam [--fixtures DIR] [--out DIR]

Without --out, each explainer goes to a temporary folder and is deleted once checked (CI's disk is small;
together they take 158 MB); with --out DIR they are kept there for inspection.

Proof that an exported explainer needs no code of gradcam-rs: for ResNet-18 (`layer4`), ViT-Tiny
(`blocks.11.norm1`) and Lite0 (`blocks.6`), each from both torch exporters (the model fixtures of
tools/make_model_fixtures.py), the given `gradcam` binary exports one explainer with the six exportable
methods; this script loads it with `onnxruntime.InferenceSession` alone and compares its `cam_<method>`
outputs with grad-cam's `cam(input_tensor, targets)` on the same timm model in PyTorch, at batches of 1
and 3 with per-image classes (-1 = top-1, the runner-up, a fixed class). Maps must agree to 1e-4, except
on an image whose gradient depends on a unit within float noise of a ReLU/ReLU6 kink after the layer
(tools/ties.py: the exports fold BatchNorm, so such a unit may fall on the other side): 5e-3 there, as in
the Rust tests. Exits non-zero on any failure.
"""
import argparse
import glob
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time

import numpy as np
import onnxruntime as ort
import timm
import torch
from safetensors.torch import load_file

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from gradcam_ref import token_reshape  # noqa: E402
from pytorch_grad_cam import (GradCAM, GradCAMElementWise, GradCAMPlusPlus, HiResCAM, LayerCAM,  # noqa: E402
                              XGradCAM)
from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget  # noqa: E402
from ties import tie_mask  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TOL = 1e-4
TIE_TOL = 5e-3
METHODS = {"gradcam": GradCAM, "gradcam++": GradCAMPlusPlus, "xgradcam": XGradCAM, "hirescam": HiResCAM,
           "layercam": LayerCAM, "gradcam-elementwise": GradCAMElementWise}
CASES = [("resnet18", "layer4"), ("vit_tiny", "blocks.11.norm1"), ("lite0", "blocks.6")]
EXPORTERS = ["legacy", "dynamo"]
FIXED_CLASS = 7


def export(gradcam, source, layer, out):
    cmd = [gradcam, "export", source, "--layer", layer, "--method", ",".join(METHODS), "-o", out]
    done = subprocess.run(cmd, capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed ({done.returncode}):\n{done.stdout}{done.stderr}")


def torch_model(fixtures, manifest, key):
    spec = manifest["models"][key]
    model = timm.create_model(spec["arch"], pretrained=False)
    missing, unexpected = model.load_state_dict(load_file(os.path.join(fixtures, spec["files"]["safetensors"])),
                                                strict=False)
    assert not unexpected and all(k.endswith("num_batches_tracked") for k in missing), (missing, unexpected)
    reshape = token_reshape(spec["prefix_tokens"], *spec["grid"]) if "grid" in spec else None
    return model.eval(), reshape


def batches(fixtures):
    x = np.load(os.path.join(fixtures, "input.npy"))
    three = np.concatenate([x, x[:1, :, :, ::-1]], axis=0).astype(np.float32)
    return [np.ascontiguousarray(three[:1]), np.ascontiguousarray(three)]


def asked_classes(logits):
    """-1 for image 0, the runner-up class for image 1, FIXED_CLASS for the others."""
    asked = []
    for b, row in enumerate(logits):
        if b == 0:
            asked.append(-1)
        elif b == 1:
            asked.append(int(np.argsort(-row, kind="stable")[1]))
        else:
            asked.append(FIXED_CLASS)
    return np.array(asked, dtype=np.int64)


def check_case(args, manifest, key, exporter, layer_name):
    source = os.path.join(args.fixtures, f"{key}.{exporter}.onnx")
    path = os.path.join(args.out, f"{key}.{exporter}.explainer.onnx")
    export(args.gradcam, source, layer_name, path)
    session = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
    names = [o.name for o in session.get_outputs()]
    assert [i.name for i in session.get_inputs()] == ["input", "class"], session.get_inputs()
    assert names == ["logits"] + [f"cam_{m}" for m in METHODS], names
    model, reshape = torch_model(args.fixtures, manifest, key)
    layer = model.get_submodule(layer_name)
    failures = []
    for x in batches(args.fixtures):
        with torch.no_grad():
            torch_logits = model(torch.from_numpy(x)).numpy()
        asked = asked_classes(torch_logits)
        outputs = dict(zip(names, session.run(None, {"input": x, "class": asked})))
        logits_diff = np.abs(outputs["logits"] - torch_logits).max() / np.abs(torch_logits).max()
        if logits_diff > TOL:
            failures.append(f"logits differ by {logits_diff:.2e} (relative)")
        classes = [int(np.argmax(torch_logits[b])) if c < 0 else int(c) for b, c in enumerate(asked)]
        ties, _ = tie_mask(model, torch.from_numpy(x), layer)
        tied = [bool(t.any()) for t in ties]
        for method, cls in METHODS.items():
            cam = cls(model, [layer], reshape_transform=reshape)
            want = cam(input_tensor=torch.from_numpy(x), targets=[ClassifierOutputTarget(c) for c in classes])
            got = outputs[f"cam_{method}"]
            for b in range(len(x)):
                diff = float(np.abs(got[b] - want[b]).max())
                tol = TIE_TOL if tied[b] else TOL
                line = (f"{key}.{exporter} {layer_name} batch {len(x)} image {b} class {classes[b]} "
                        f"(asked {asked[b]}) cam_{method}: max |diff| {diff:.2e}{' (tie)' if tied[b] else ''}")
                if args.verbose:
                    print(line)
                if not diff <= tol:
                    failures.append(f"{line} > {tol:g}")
    return failures


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--gradcam", required=True, help="the gradcam binary (built with --features ort)")
    parser.add_argument("--fixtures", default=os.environ.get("GRADCAM_FIXTURES") or os.path.join(ROOT, "target",
                                                                                                 "fixtures"))
    parser.add_argument("--out", help="keep the explainers in this folder (default: deleted once checked)")
    parser.add_argument("--only", help="comma-separated model keys (resnet18, vit_tiny, lite0)")
    parser.add_argument("--verbose", action="store_true", help="print every comparison")
    args = parser.parse_args()
    torch.set_num_threads(int(os.environ.get("GRADCAM_FIXTURES_THREADS", "2")))
    keep = args.out is not None
    if keep:
        os.makedirs(args.out, exist_ok=True)
    else:
        args.out = tempfile.mkdtemp(prefix="gradcam-exported-")
    with open(os.path.join(args.fixtures, "manifest.json")) as f:
        manifest = json.load(f)
    failures, count = [], 0
    for key, layer in CASES:
        if args.only and key not in args.only.split(","):
            continue
        for exporter in EXPORTERS:
            t0 = time.time()
            try:
                found = check_case(args, manifest, key, exporter, layer)
            finally:
                if not keep:  # the explainer and its external data, if any
                    for f in glob.glob(os.path.join(args.out, f"{key}.{exporter}.explainer.onnx*")):
                        os.remove(f)
            count += 1
            status = "ok" if not found else f"{len(found)} FAILED"
            print(f"test_exported: {key}.{exporter} {layer}: {status} ({time.time() - t0:.1f}s)", flush=True)
            failures.extend(found)
    if not keep:
        shutil.rmtree(args.out, ignore_errors=True)
    for f in failures:
        print(f"FAIL {f}", file=sys.stderr)
    print(f"{count - len({f.split()[0] for f in failures})} passed, {len({f.split()[0] for f in failures})} failed")
    sys.exit(1 if failures or count == 0 else 0)


if __name__ == "__main__":
    main()
