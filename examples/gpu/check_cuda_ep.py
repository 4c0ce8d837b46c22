#!/usr/bin/env python3
"""Runs `gradcam export` explainers on onnxruntime-gpu's CUDA execution provider and compares them with the CPU
execution provider: the same file, no gradcam-rs code.

  python examples/gpu/check_cuda_ep.py EXPLAINER.onnx... [--images input.npy] [--provider cuda|cpu] [--batch 16]
                                       [--runs 10] [--tol 1e-3]

For each explainer: a batch of 4 with per-image classes (-1, 1, 2, 3) — the (N, 3, H, W) preprocessed photos of
--images repeated (mirrored every other time), else a smooth pseudo-random pattern — run on the CPU EP (the
reference) and on the provider under test (TF32 off, every node required on the GPU: ONNX Runtime's silent CPU
fallback is disabled, and if that fails the run is repeated with fallback allowed and says so). Prints the largest
difference of the logits (relative) and of each cam_<method> output (absolute; maps are in [0, 1]), then the
median latency and images/s at batch 1 and --batch. Exits non-zero when a difference exceeds --tol.

--provider cpu rehearses the whole check without a GPU: the "device" side is then the CPU EP with only basic graph
optimizations, against the fully optimized CPU reference.
"""
import argparse
import os
import sys
import time

import numpy as np
import onnxruntime as ort


def session(path, provider, strict):
    options = ort.SessionOptions()
    if provider == "cuda":
        if strict:
            options.add_session_config_entry("session.disable_cpu_ep_fallback", "1")
        providers = [("CUDAExecutionProvider", {"use_tf32": "0"}), "CPUExecutionProvider"]
    else:
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_BASIC
        providers = ["CPUExecutionProvider"]
    return ort.InferenceSession(path, options, providers=providers)


def inputs(sess, batch, images=None):
    _, channels, h, w = sess.get_inputs()[0].shape
    if images is not None and images.shape[1:] == (channels, h, w):
        photos = [images[i % len(images)][:, :, ::-1] if (i // len(images)) % 2 else images[i % len(images)]
                  for i in range(batch)]
        x = np.ascontiguousarray(np.stack(photos), dtype=np.float32)
    else:
        # Photos are smooth; white noise would make XGradCAM's sums over the map cancel and the comparison
        # measure their conditioning rather than the device.
        yy, xx = np.meshgrid(np.linspace(0, 1, h), np.linspace(0, 1, w), indexing="ij")
        x = np.stack([np.stack([np.sin(6 * yy * (c + 1) + 4 * xx * (b + 1)) for c in range(channels)])
                      for b in range(batch)]).astype(np.float32)
    classes = np.array([-1] + list(range(1, batch)), dtype=np.int64)
    return {"input": x, "class": classes}


def median_seconds(sess, feed, runs):
    sess.run(None, feed)
    times = []
    for _ in range(runs):
        t = time.perf_counter()
        sess.run(None, feed)
        times.append(time.perf_counter() - t)
    return float(np.median(times))


def check(path, args):
    name = os.path.basename(path)
    reference = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
    fallback = False
    try:
        device = session(path, args.provider, strict=True)
    except Exception as e:  # a node without a kernel on the device
        print(f"{name}: not every node runs on {args.provider} ({str(e).splitlines()[0]}); retrying with CPU fallback")
        device, fallback = session(path, args.provider, strict=False), True
    print(f"{name}: providers {device.get_providers()}{' (with CPU fallback)' if fallback else ''}")
    names = [o.name for o in reference.get_outputs()]
    images = np.load(args.images) if args.images else None
    feed = inputs(reference, min(args.batch, 4), images)
    want = dict(zip(names, reference.run(None, feed)))
    got = dict(zip(names, device.run(None, feed)))
    failed = []
    for out in names:
        diff = float(np.abs(got[out] - want[out]).max())
        if out == "logits":
            diff /= max(float(np.abs(want[out]).max()), 1e-30)
        print(f"  {out}: max |diff| {diff:.1e}{' (relative)' if out == 'logits' else ''}")
        if not diff <= args.tol:
            failed.append(f"{name} {out}: {diff:.2e} > {args.tol:g}")
    for batch in sorted({1, args.batch}):
        seconds = median_seconds(device, inputs(device, batch), args.runs)
        print(f"  batch {batch:>3}: {seconds * 1000:8.2f} ms, {batch / seconds:8.1f} img/s ({args.provider})")
    return failed


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("explainers", nargs="+")
    parser.add_argument("--images", help="preprocessed photos (N, 3, H, W) float32 .npy for the comparison")
    parser.add_argument("--provider", choices=["cuda", "cpu"], default="cuda")
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--runs", type=int, default=10)
    # The project's tolerance for final maps of another implementation (README: 1e-3 after upsampling): cuDNN's
    # kernels sum in other orders, and XGradCAM's map sums cancel on layers without an activation (Lite0 blocks.6:
    # 8.5e-5 between two CPU optimisation levels already).
    parser.add_argument("--tol", type=float, default=1e-3)
    args = parser.parse_args()
    print(f"onnxruntime {ort.__version__}, available providers {ort.get_available_providers()}")
    if args.provider == "cuda" and "CUDAExecutionProvider" not in ort.get_available_providers():
        sys.exit("no CUDAExecutionProvider: install onnxruntime-gpu (same version as onnxruntime) and CUDA, "
                 "or rehearse with --provider cpu")
    failed = []
    for path in args.explainers:
        failed += check(path, args)
    for f in failed:
        print(f"FAIL {f}", file=sys.stderr)
    print(f"{len(args.explainers) - len({f.split()[0] for f in failed})} passed, "
          f"{len({f.split()[0] for f in failed})} failed")
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
