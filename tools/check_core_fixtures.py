#!/usr/bin/env python3
"""Independent re-derivation of the core fixtures from their own activations/gradients/scores, in plain numpy
(float64 SVD, own softmax, own min-max): checks that every raw_/scaled_/cam_ file agrees with the math written
in tools/README.md, so a mismatch in Rust points at Rust, not at the fixture. Exits non-zero on a mismatch.

  python tools/check_core_fixtures.py [FIXTURES_DIR]   (default gradcam-core/tests/fixtures)
"""
import json
import os
import sys

import cv2
import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def scale(cams, size=None):
    out = []
    for im in cams:
        im = im - im.min()
        im = im / (1e-7 + im.max())
        if size:
            im = cv2.resize(np.float32(im), (size[1], size[0]), interpolation=cv2.INTER_LINEAR)
        out.append(im)
    return np.float32(out)


def signed_projection(m):
    res = []
    for b in range(m.shape[0]):
        r = m[b].reshape(m.shape[1], -1).T.astype(np.float64)
        mu = r.mean(0)
        v = np.linalg.svd(r - mu)[2][0]
        d = v @ mu
        if d < 0 or (d == 0 and v[np.argmax(np.abs(v))] < 0):
            v = -v
        res.append(((r - mu) @ v).reshape(m.shape[2:]))
    return np.float32(res)


def gradient_raw_maps(a, g):
    """Every gradient method's and EigenCAM's raw map (B, h, w) from activations a and gradients g (B, C, h, w),
    by the formulas of tools/README.md."""
    sum_a = a.sum((2, 3))[:, :, None, None]
    g2 = g ** 2
    aij = np.where(g != 0, g2 / (2 * g2 + sum_a * g2 * g + 1e-6), 0)

    def weighted(w):
        return (w[:, :, None, None] * a).sum(1)

    return {
        "gradcam": weighted(g.mean((2, 3))),
        "gradcampp": weighted((np.maximum(g, 0) * aij).sum((2, 3))),
        "xgradcam": weighted((g * a / (sum_a + 1e-7)).sum((2, 3))),
        "hirescam": (g * a).sum(1),
        "layercam": (np.maximum(g, 0) * a).sum(1),
        "gradcam_elementwise": np.maximum(g * a, 0).sum(1),
        "eigencam": signed_projection(a),
        "eigengradcam": signed_projection(g * a),
    }


def check_case(d):
    meta = json.load(open(os.path.join(d, "meta.json")))
    hw, n_layers = meta["input_hw"], len(meta["layers"])

    def ld(name):
        return np.load(os.path.join(d, name))

    def to_chw(a):
        if a.ndim == 3:
            h, w = meta["grid"]
            return a[:, meta["prefix_tokens"]:, :].reshape(a.shape[0], h, w, a.shape[2]).transpose(0, 3, 1, 2)
        return a

    errors = {}
    for i in range(n_layers):
        a, g = to_chw(ld(f"activations_{i}.npy")), to_chw(ld(f"gradients_{i}.npy"))
        scores = ld(f"scorecam_scores_{i}.npy").astype(np.float64)
        soft = np.exp(scores - scores.max(1, keepdims=True))
        soft /= soft.sum(1, keepdims=True)
        orig = ld("original_scores.npy")[:, None]
        abl = (orig - ld(f"ablation_scores_{i}.npy")) / orig

        def weighted(w):
            return (w[:, :, None, None] * a).sum(1)

        expect = gradient_raw_maps(a, g)
        expect.update(scorecam=weighted(soft), ablationcam=weighted(abl))
        for m, e in expect.items():
            raw = ld(f"raw_{m}_{i}.npy")
            errors[f"raw_{m}_{i} (rel)"] = float(np.abs(raw - e).max() / max(1e-6, np.abs(raw).max()))
            errors[f"scaled_{m}_{i}"] = float(np.abs(ld(f"scaled_{m}_{i}.npy") - scale(np.maximum(raw, 0))).max())
    for m in meta["methods"]:
        per_layer = [scale(ld(f"scaled_{m}_{i}.npy"), hw) for i in range(n_layers)]
        errors[f"cam_{m}"] = float(np.abs(ld(f"cam_{m}.npy") - scale(np.maximum(np.mean(per_layer, 0), 0))).max())
    bad = {k: v for k, v in errors.items() if v > 1e-4}
    print(f"{os.path.basename(d)}: {len(errors)} arrays, worst {max(errors.values()):.2e}"
          + (f", MISMATCH {bad}" if bad else ""))
    return not bad


def main():
    root = sys.argv[1] if len(sys.argv) > 1 else os.path.join(ROOT, "gradcam-core", "tests", "fixtures")
    ok = all([check_case(os.path.join(root, c)) for c in sorted(os.listdir(root))
              if os.path.exists(os.path.join(root, c, "meta.json"))])
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
