#!/usr/bin/env python3
"""Checks that the `gradcam` binary built on a machine without a GPU explains on a CUDA machine, with that
machine's torch libraries, and gives pytorch-grad-cam's maps there. Run by `backend-tch/bench/gpu.sh run`.

  python tools/gpu_check_cams.py --cli PATH --out DIR [--device cuda] [--methods all] [--tol 1e-2]

For Lite0 (the shipped weights) at blocks.6, resnet18 at layer4 and vit_tiny at blocks.11.norm1 (timm, random
init after torch.manual_seed(0), as the model fixtures), on chelsea and coffee (input.npy as in the fixtures):
  1. traces the model (torch.jit.trace) to DIR/<key>.traced.pt;
  2. runs every method of PyPI grad-cam 1.5.7 on `--device` (tools/gradcam_ref.py, top-1 targets);
  3. runs `gradcam explain --backend tch` on the same file, once with `--device DEVICE`, once with
     `--device cpu`, and reads its `--npy-out` maps back through its `--json` summary.
Prints one line per (model, method): max |Rust on DEVICE - grad-cam on DEVICE| and max |Rust on DEVICE - Rust on
the CPU|, and exits 1 when either exceeds --tol. The default tolerance is looser than the CPU tests' 1e-4
because cuDNN convolutions run in TF32 by default, in PyTorch and libtorch alike (10-bit mantissa), so two
correct CUDA runs differ by more than two CPU runs do.
Environment: TORCH_LIB, put first on the binary's LD_LIBRARY_PATH (the CUDA build of torch's lib/).
"""
import argparse
import json
import os
import subprocess
import sys
import time

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from gradcam_ref import METHODS, run_methods, token_reshape  # noqa: E402
from make_model_fixtures import ABLATION_BATCH, MODELS, SCORECAM_BATCH, build, input_batch  # noqa: E402

# (model key of make_model_fixtures.py, layer)
CHECKS = [("lite0", "blocks.6"), ("resnet18", "layer4"), ("vit_tiny", "blocks.11.norm1")]


def cli_method(name):
    """grad-cam fixture name -> the CLI's method name (gradcampp -> gradcam++, gradcam_elementwise -> ...)."""
    return name.replace("pp", "++").replace("_", "-")


def run_cli(cli, model_path, layer, methods, device, inputs, out):
    npy = os.path.join(out, f"{os.path.basename(model_path)}.{device}.npy")
    cmd = [cli, "explain", "--backend", "tch", "--device", device, "--model", model_path, "--layer", layer,
           "--method", ",".join(cli_method(m) for m in methods), "--npy-out", npy, "--json",
           "--out", os.path.join(out, f"pictures-{os.path.basename(model_path)}-{device}"), inputs]
    env = dict(os.environ)
    if os.environ.get("TORCH_LIB"):
        env["LD_LIBRARY_PATH"] = os.environ["TORCH_LIB"] + ":" + env.get("LD_LIBRARY_PATH", "")
    t0 = time.time()
    done = subprocess.run(cmd, env=env, capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)}\nfailed ({done.returncode}):\n{done.stderr}")
    summary = json.loads(done.stdout)
    assert summary["device"].lower().startswith(device), (summary["device"], device)
    maps = np.load(npy)
    by_method = {}
    for image in summary["images"]:
        for m in image["maps"]:
            by_method.setdefault(m["method"], {})[image["npy_index"]] = maps[m["npy_index"]]
    stacked = {}
    for m in methods:
        per_image = by_method[cli_method(m)]
        stacked[m] = np.stack([per_image[i] for i in sorted(per_image)])
    return stacked, time.time() - t0, summary["device"]


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--cli", required=True)
    p.add_argument("--out", required=True)
    p.add_argument("--device", default="cuda")
    p.add_argument("--methods", default="all", help="comma-separated grad-cam fixture names, or all")
    p.add_argument("--models", default=",".join(c[0] for c in CHECKS))
    p.add_argument("--tol", type=float, default=1e-2)
    a = p.parse_args()
    methods = METHODS if a.methods == "all" else a.methods.split(",")
    device = torch.device(a.device)
    os.makedirs(a.out, exist_ok=True)
    x = input_batch()
    inputs = os.path.join(a.out, "input.npy")
    np.save(inputs, x.numpy())
    rows, worst = [], 0.0
    for key, layer in CHECKS:
        if key not in a.models.split(","):
            continue
        model = build(key)
        path = os.path.join(a.out, f"{key}.traced.pt")
        with torch.no_grad():
            torch.jit.trace(model, x[:1], check_trace=False).save(path)
        spec = MODELS[key]
        vit = "grid" in spec
        reshape = token_reshape(spec["prefix_tokens"], *spec["grid"]) if vit else None
        t0 = time.time()
        _, ref = run_methods(model.to(device), x.to(device), [model.get_submodule(layer)], methods=methods,
                             reshape_transform=reshape, vit=vit, scorecam_batch=SCORECAM_BATCH,
                             ablation_batch=ABLATION_BATCH, log=lambda s: None)
        t_ref = time.time() - t0
        ours, t_ours, rust_device = run_cli(a.cli, path, layer, methods, a.device, inputs, a.out)
        cpu, t_cpu, _ = (ours, 0.0, "") if device.type == "cpu" else run_cli(a.cli, path, layer, methods, "cpu",
                                                                               inputs, a.out)
        print(f"[{key} {layer}] grad-cam on {a.device} {t_ref:.1f}s, gradcam (Rust, {rust_device}) {t_ours:.1f}s, "
              f"on the CPU {t_cpu:.1f}s", flush=True)
        for m in methods:
            vs_ref = float(np.abs(ours[m] - ref[m]["cam"]).max())
            vs_cpu = float(np.abs(ours[m] - cpu[m]).max())
            worst = max(worst, vs_ref, vs_cpu)
            rows.append((key, layer, m, vs_ref, vs_cpu))
    print(f"\n{'model':10} {'layer':16} {'method':20} {'vs grad-cam':>12} {'vs own cpu':>12}")
    for key, layer, m, vs_ref, vs_cpu in rows:
        flag = "" if max(vs_ref, vs_cpu) <= a.tol else "  FAIL"
        print(f"{key:10} {layer:16} {m:20} {vs_ref:12.2e} {vs_cpu:12.2e}{flag}")
    print(f"largest difference {worst:.2e} (tolerance {a.tol:g}); on {rust_device}"
          + (f", {torch.cuda.get_device_name(device)}" if device.type == "cuda" else ""))
    sys.exit(0 if worst <= a.tol else 1)


if __name__ == "__main__":
    main()
