#!/usr/bin/env python3
"""Runs explainers in whatever `onnxruntime` this Python has and saves or compares the outputs: the check that an
explainer runs in the ONNX Runtime version a Triton release bundles (see README.md).

  python check_ort_version.py run EXPLAINER.onnx... --save outputs.npz   # in each ONNX Runtime version
  python check_ort_version.py compare a.npz b.npz [--tol 1e-4]           # any Python with numpy

The input is a fixed pseudo-random batch of 3 images at the explainer's size with classes (-1, 1, 2). Only
`numpy` and `onnxruntime` are imported.
"""
import argparse
import os
import sys

import numpy as np


def run(paths, save):
    import onnxruntime as ort

    results = {}
    for path in paths:
        session = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
        _, channels, h, w = session.get_inputs()[0].shape
        x = np.random.default_rng(0).standard_normal((3, channels, h, w)).astype(np.float32)
        names = [o.name for o in session.get_outputs()]
        outputs = session.run(None, {"input": x, "class": np.array([-1, 1, 2], dtype=np.int64)})
        key = os.path.join(os.path.basename(os.path.dirname(os.path.abspath(path))), os.path.basename(path))
        for name, value in zip(names, outputs):
            results[f"{key}|{name}"] = value
        print(f"onnxruntime {ort.__version__}: {key} ran, outputs {names}")
    np.savez(save, **results)


def compare(a, b, tol):
    a, b = np.load(a), np.load(b)
    failed = sorted(set(a.files) ^ set(b.files))
    for key in sorted(set(a.files) & set(b.files)):
        scale = max(float(np.abs(a[key]).max()), np.finfo(np.float32).tiny)
        diff = float(np.abs(a[key] - b[key]).max()) / scale
        print(f"{key}: max |diff| {diff:.1e} (relative to max {scale:.3g})")
        if not diff <= tol:
            failed.append(key)
    print(f"{len(a.files) - len(failed)} passed, {len(failed)} failed")
    return not failed


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    r = sub.add_parser("run")
    r.add_argument("explainers", nargs="+")
    r.add_argument("--save", required=True)
    c = sub.add_parser("compare")
    c.add_argument("a")
    c.add_argument("b")
    c.add_argument("--tol", type=float, default=1e-4)
    args = parser.parse_args()
    if args.command == "run":
        run(args.explainers, args.save)
    else:
        sys.exit(0 if compare(args.a, args.b, args.tol) else 1)


if __name__ == "__main__":
    main()
