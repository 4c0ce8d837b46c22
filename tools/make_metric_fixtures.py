#!/usr/bin/env python3
"""Writes gradcam-core/tests/fixtures/metrics/: pytorch-grad-cam 1.5.7's metrics on a tiny model
that gradcam-core/tests/metrics.rs mirrors exactly.

Model (torch.manual_seed(0) before creating it; conv weights x4, linear weights x10):
Conv2d(3, 4, 3, padding=1) -> ReLU -> mean over the pixels -> Linear(4, 5). Input: torch.manual_seed(1); torch.randn(2, 3, 24, 32). Maps (2, 24, 32)
in [0, 1]: image 0 uniform noise (no ties), image 1 a blob rounded to 2 decimals (many ties at the
ROAD thresholds, a unique minimum so that no percentile removes every pixel).

Files:
  input.npy, cams.npy, logits.npy; conv_weight.npy (4, 3, 3, 3), conv_bias.npy (4,),
  fc_weight.npy (5, 4), fc_bias.npy (5,)
  metrics.json   {"cases": [{"score": "logit"|"softmax", "classes": [...], "noise": x, "seed": n,
                  "values": {metric: [per image]}}]}: the metric classes called as pytorch-grad-cam
                  ships them, with NoisyLinearImputer's torch.randn_like replaced by zeros (noise 0)
                  or by np.random.RandomState(seed).randn(C, removed) (noise > 0: the generator
                  gradcam-core uses, since torch's cannot be reproduced), fresh for every call
  impute_<name>.npy, keep_<name>.npy   NoisyLinearImputer on image 0 for one ROAD mask
                  (`RemoveMostRelevantFirst` / `RemoveLeastRelevantFirst` at a percentile), with
                  the keep mask (1 = kept) it used; see IMPUTE_CASES

Usage: python tools/make_metric_fixtures.py [OUT_DIR]   (default gradcam-core/tests/fixtures/metrics)
"""
import contextlib
import json
import os
import sys

import numpy as np
import torch
from pytorch_grad_cam.metrics.cam_mult_image import (
    CamMultImageConfidenceChange,
    DropInConfidence,
    IncreaseInConfidence,
)
from pytorch_grad_cam.metrics.road import (
    NoisyLinearImputer,
    ROADCombined,
    ROADLeastRelevantFirst,
    ROADMostRelevantFirst,
)
from pytorch_grad_cam.utils.model_targets import ClassifierOutputSoftmaxTarget, ClassifierOutputTarget

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import ROOT  # noqa: E402

METRICS = {
    "confidence-change": CamMultImageConfidenceChange,
    "drop": DropInConfidence,
    "increase": IncreaseInConfidence,
    "road-most": ROADMostRelevantFirst,
    "road-least": ROADLeastRelevantFirst,
    "road-combined": ROADCombined,
}
# (name, most relevant first, percentile, noise, seed)
IMPUTE_CASES = [("most50", True, 50, 0.0, 0), ("least30", False, 30, 0.0, 0), ("most80_noisy", True, 80, 0.01, 7)]


class Tiny(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = torch.nn.Conv2d(3, 4, 3, padding=1)
        self.fc = torch.nn.Linear(4, 5)

    def forward(self, x):
        return self.fc(torch.relu(self.conv(x)).mean(dim=(2, 3)))


@contextlib.contextmanager
def imputer_noise(seed):
    """torch.randn_like inside NoisyLinearImputer -> zeros (seed None) or numpy's legacy normals."""
    original = torch.randn_like

    def draw(t):
        if seed is None:
            return torch.zeros_like(t)
        return torch.from_numpy(np.random.RandomState(seed).randn(*t.shape).astype(np.float32))

    torch.randn_like = draw
    try:
        yield
    finally:
        torch.randn_like = original


def run_metric(name, x, cams, targets, model, noise, seed):
    """One metric as pytorch-grad-cam computes it, every imputer it creates with `noise`."""
    original_init = NoisyLinearImputer.__init__

    def init(self, noise_=noise, weighting=None):
        original_init(self, noise=noise_)

    NoisyLinearImputer.__init__ = init
    try:
        with imputer_noise(None if noise == 0 else seed):
            metric = METRICS[name]()
            return np.asarray(metric(x, cams, targets, model), dtype=np.float32).reshape(-1)
    finally:
        NoisyLinearImputer.__init__ = original_init


def make_cams(h, w):
    rng = np.random.RandomState(3)
    noise = rng.rand(h, w).astype(np.float32)
    yy, xx = np.mgrid[0:h, 0:w]
    blob = np.exp(-((yy - 8.0) ** 2 + (xx - 20.0) ** 2) / (2 * 6.0**2))
    blob = np.round(blob, 2).astype(np.float32)
    return np.stack([noise, blob]).astype(np.float32)


def main():
    out = sys.argv[1] if len(sys.argv) > 1 else os.path.join(ROOT, "gradcam-core", "tests", "fixtures", "metrics")
    os.makedirs(out, exist_ok=True)
    torch.set_num_threads(2)
    torch.manual_seed(0)
    model = Tiny().eval()
    with torch.no_grad():
        # Larger weights than the default init, so that the metrics are O(1) and a 1e-4 comparison
        # tells a wrong mask or imputation apart.
        model.conv.weight.mul_(4.0)
        model.fc.weight.mul_(10.0)
    torch.manual_seed(1)
    x = torch.randn(2, 3, 24, 32)
    cams = make_cams(24, 32)
    # Every ROAD mask keeps some pixels and removes some (else SciPy's solve is singular).
    for cam in cams:
        for p in range(10, 100, 10):
            for c in (cam, 1 - cam):
                kept = (c < np.percentile(c, p)).sum()
                assert 0 < kept < c.size, (p, kept)
    with torch.no_grad():
        logits = model(x)
    top1 = logits.argmax(dim=1).tolist()

    def save(name, a):
        np.save(os.path.join(out, name), np.ascontiguousarray(a, dtype=np.float32))

    save("input.npy", x.numpy())
    save("cams.npy", cams)
    save("logits.npy", logits.numpy())
    save("conv_weight.npy", model.conv.weight.detach().numpy())
    save("conv_bias.npy", model.conv.bias.detach().numpy())
    save("fc_weight.npy", model.fc.weight.detach().numpy())
    save("fc_bias.npy", model.fc.bias.detach().numpy())

    # The runner-up of each image: a class that is not the top-1.
    runner_up = logits.argsort(dim=1, descending=True)[:, 1].tolist()
    cases = []
    for score, classes, noise, seed in [
        ("logit", top1, 0.0, 0),
        ("softmax", runner_up, 0.0, 0),
        ("logit", runner_up, 0.01, 7),
    ]:
        make = ClassifierOutputTarget if score == "logit" else ClassifierOutputSoftmaxTarget
        targets = [make(c) for c in classes]
        values = {name: run_metric(name, x, cams, targets, model, noise, seed).tolist() for name in METRICS}
        cases.append({"score": score, "classes": classes, "noise": noise, "seed": seed, "values": values})
        print(score, classes, noise, {k: [round(v, 5) for v in vs] for k, vs in values.items()})
    with open(os.path.join(out, "metrics.json"), "w") as f:
        json.dump({"cases": cases}, f, indent=1)

    from pytorch_grad_cam.metrics.perturbation_confidence import RemoveLeastRelevantFirst, RemoveMostRelevantFirst

    for name, most, p, noise, seed in IMPUTE_CASES:
        imputer = NoisyLinearImputer(noise=noise)
        kept = {}

        def recording(img, mask, imputer=imputer, kept=kept):
            kept["mask"] = mask.numpy().copy()
            return imputer(img, mask)

        remove = (RemoveMostRelevantFirst if most else RemoveLeastRelevantFirst)(p, recording)
        with imputer_noise(None if noise == 0 else seed):
            filled = remove(x[0], torch.from_numpy(cams[0]))
        save(f"impute_{name}.npy", filled.numpy())
        save(f"keep_{name}.npy", kept["mask"])
    print("wrote", out)


if __name__ == "__main__":
    main()
