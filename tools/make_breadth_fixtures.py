#!/usr/bin/env python3
"""Generates the breadth suite's fixtures: two dozen torchvision and timm architectures, each exported as traced
TorchScript and by both ONNX exporters, with PyTorch's and pytorch-grad-cam 1.5.7's answers at one standard layer
(tests/breadth/ compares every compiled-in backend against them; scripts/make-fixtures runs this).

  python tools/make_breadth_fixtures.py OUT_DIR [--resume] [--only KEY,KEY...]
  python tools/make_breadth_fixtures.py OUT_DIR --each COMMAND

Writes into OUT_DIR.partial and swaps it in for OUT_DIR when every model is done (OUT_DIR/manifest.json exists
only in a complete folder). Each model's manifest entry is written to OUT_DIR.partial/<key>/entry.json when the
model is done; --resume keeps OUT_DIR.partial and skips the models that have one (an interrupted run goes on
where it stopped). With --only, the named models are (re)generated into OUT_DIR itself and merged into its
manifest (for development; scripts/make-fixtures never passes it). With --each, one model at a time is made into
OUT_DIR, COMMAND (a shell command) runs with GRADCAM_BREADTH=OUT_DIR, and the folder is deleted: the suite then
needs one model's disk (at most 0.3 GB) instead of the whole set's 2.1 GB (scripts/test-all, through
scripts/test-breadth --stream); exits non-zero when a model failed to generate or COMMAND failed on it.

Models: random weights (`torch.manual_seed(0)` before each is built; a model with `weights` loads a trained
state dict the repository ships instead, and keeps it as it is), then two adjustments that the manifest
records per model (`init`): an all-zero weight (zero-initialised classifier heads of torchvision's ViT and timm's
Mixer, zero-initialised last BatchNorm of residual branches) is redrawn, since it makes every logit or branch
zero; and the BatchNorm statistics are set to those of the input images (the layers' batch statistics), as
trained models' statistics fit their data: with the default (0, 1) statistics some random networks' logits
reach 1e12 or 1e-14, and the exporters' BatchNorm folding would be tested on the identity only.

OUT_DIR/
  manifest.json                   per model: arch, source, input, files, layer, layout, classes, methods, notes;
                                  plus every export torch could not make, with the exporter's error (`skipped`)
  input_<H>x<W>.npy               (2, 3, H, W) f32: assets/images/chelsea.png, coffee.png, preprocessed
                                  (tools/common.py) at each input size in use
  <key>.traced.pt                 torch.jit.trace at batch 1 (checked at batch 2)
  <key>.legacy.dynamic.onnx       torch.onnx.export(dynamo=False, opset 17), input "input", output "logits",
                                  dynamic batch (`dynamic_axes`)
  <key>.legacy.fixed.onnx         torch.onnx.export(model, (x1,), f, dynamo=False): what it writes by default, batch 1
  <key>.dynamo.dynamic.onnx(.data)  torch.onnx.export(dynamo=True), input "input", dynamic batch
  <key>.dynamo.fixed.onnx(.data)  torch.onnx.export(model, (x1,), f): the default call, batch 1
  <key>.safetensors               timm state dict, for the architectures backend-candle ships (`candle_arch`)
  <key>/entry.json                the model's manifest entry (written last: the model is complete)
  <key>/logits.npy                (2, 1000) f32
  <key>/activations.npy           the layer's output in its native layout: (2, C, h, w), (2, h, w, C), (2, N, D)
  <key>/ties.npy                  bool, same shape: gradient elements depending on a unit within float noise of a
                                  kink after the layer (tools/ties.py)
  <key>/<target>/classes.npy      (2,) int64; target `top1` (each image's top-1) or `rank2` (its runner-up)
  <key>/<target>/gradients.npy    d(sum_b logits[b, classes_b]) / d activations, native layout
  <key>/<target>/cam_<m>.npy      (2, H, W) grad-cam's final map (eigen methods: the sign rule of gradcam_ref.py)
  <key>/<target>/scaled_<m>.npy   (2, h, w) grad-cam's per-layer map before upsampling:
                                  scale_cam_image(np.maximum(get_cam_image(...), 0))
Which exports a model has (fixed, dynamic or both batch modes) is in the manifest's `files`.
"""
import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import time
import traceback
import warnings

import numpy as np
import timm
import torch
import torchvision
from safetensors.torch import save_file

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import ASSETS, preprocess  # noqa: E402
from gradcam_ref import (METHODS, capture_native, channels_last_reshape, ranked_classes, run_methods,  # noqa: E402
                         token_reshape)
from ties import TIE_EPS, tie_mask  # noqa: E402

IMAGES = ["chelsea", "coffee"]
# Methods every model is compared with; the models in FULL get every method, for their top-1 and runner-up.
BASIC = ["gradcam", "gradcampp", "layercam", "eigencam"]
SCORECAM_BATCH = 64
ABLATION_BATCH = 32  # grad-cam's default; AblationCAM's values depend on it (tools/README.md)
OPSET_LEGACY = 17


# The suite tests each family's structure (layouts, ops, exporters), not its size: the largest models are built
# narrower or shallower through their own constructors' arguments, which keeps the set and its run small.
NARROW = "embed_dim 48 instead of 96, depths (2, 2, 2, 2) instead of (2, 2, 6, 2)"


def spec(key, source, arch, layer, *, hw=(224, 224), kwargs=None, layout="nchw", prefix=None, grid=None,
         batch="dynamic", full=False, candle=False, definition=False, files_of=None, head=None, weights=None,
         notes=()):
    """One model of the suite. batch: which ONNX batch modes to export ("dynamic", "fixed", "both"). full: every
    method, for the top-1 and the rank-2 class. candle: backend-candle ships the architecture (a safetensors file
    is written). definition: the reference is computed by the definition where grad-cam's is an artefact (the
    layer's output is copied before the rest of the network runs; see gradcam_ref._clone_outputs). files_of:
    another layer of the same model, whose exports this one reads (the other key must come first). head: the
    hidden width of a VGG classifier (its three Linear layers are rebuilt at that width). weights: a trained state
    dict shipped in assets/ (path under ASSETS), loaded instead of the random init and kept as it is. arch: a timm
    model name, a torchvision builder function, or a class path under timm.models or torchvision.models
    (`swin_transformer.SwinTransformer`) built from kwargs."""
    return {"key": key, "source": source, "arch": arch, "layer": layer, "hw": list(hw), "kwargs": kwargs or {},
            "layout": layout, "prefix": prefix, "grid": grid, "batch": batch, "full": full, "candle": candle,
            "definition": definition, "files_of": files_of, "head": head, "weights": weights, "notes": list(notes)}


MODELS = [
    # classic CNNs
    spec("resnet18", "torchvision", "resnet18", "layer4", batch="both"),
    spec("resnet10t_192x256", "timm", "resnet10t", "layer4", hw=(192, 256), candle=True,
         notes=["non-square input 192x256"]),
    spec("vgg11", "torchvision", "vgg11", "features.20", batch="fixed", head=256,
         notes=["features[-1], the last max pooling (grad-cam's README)",
                "classifier hidden width 256 instead of 4096 (its 25088x4096 layer alone is 411 MB per file)"]),
    spec("densenet121", "torchvision", "densenet121", "features.norm5", definition=True,
         notes=["torchvision applies F.relu(..., inplace=True) to features.norm5's output: on the CPU grad-cam "
                "stores that tensor without a copy, so the ReLU rewrites its stored activation. The reference is "
                "the definition (norm5's output before the ReLU, copied in the hook); grad-cam's own GradCAM map "
                "differs by `gradcam_artefact_max_diff`"]),
    spec("googlenet", "torchvision", "googlenet", "inception5b", kwargs={"aux_logits": False, "init_weights": True},
         batch="fixed"),
    spec("inception_v3", "torchvision", "inception_v3", "Mixed_7c", hw=(299, 299),
         kwargs={"aux_logits": False, "init_weights": True}, notes=["its own input size, 299x299"]),
    # mobile nets
    spec("efficientnet_b0", "torchvision", "efficientnet_b0", "features.8", batch="fixed"),
    spec("tf_efficientnet_lite0", "timm", "tf_efficientnet_lite0", "blocks.6", batch="both", full=True, candle=True,
         weights="models/tf_efficientnet_lite0.safetensors",
         notes=["TF 'same' padding: the legacy export computes the pads with a Shape->Gather->...->Cast subgraph",
                "the shipped ImageNet weights: with random ones every gradient element at blocks.4 and blocks.6 "
                "depends on a ReLU6 unit within float noise of its kink, and a float32 rounding in any backend, "
                "candle included, moves the maps by 1-4 %",
                "blocks.6: at blocks.4 every gradient element of the trained network depends on a near-kink unit "
                "too, and GradCAM++'s weights sit near a pole (a flip moves its map by 10 %); backend-ort's "
                "model tests differentiate the legacy pads from blocks.4 and blocks.1"]),
    spec("tf_efficientnet_b0", "timm", "tf_efficientnet_b0", "bn2", notes=["TF 'same' padding"]),
    spec("mobilenet_v2", "torchvision", "mobilenet_v2", "features.18", batch="fixed"),
    spec("mobilenet_v3_small", "torchvision", "mobilenet_v3_small", "features.12", batch="both", full=True),
    spec("shufflenet_v2_x0_5", "torchvision", "shufflenet_v2_x0_5", "conv5"),
    spec("regnet_y_400mf", "torchvision", "regnet_y_400mf", "trunk_output", batch="fixed"),
    spec("squeezenet1_1", "torchvision", "squeezenet1_1", "features.12"),
    spec("mnasnet0_5", "torchvision", "mnasnet0_5", "layers.16", batch="fixed"),
    # ConvNeXt, Swin, MaxViT: channels-last layers
    spec("convnext_atto", "timm", "convnext_atto", "stages.3"),
    spec("convnext_atto_mlp", "timm", "convnext_atto", "stages.3.blocks.1.mlp", layout="nhwc",
         kwargs={"conv_mlp": False},
         notes=["a channels-last (B, H, W, C) layer inside a ConvNeXt block: built with conv_mlp=False (timm's "
                "default for the larger ConvNeXts; convnext_atto's own conv_mlp=True keeps the block NCHW)"]),
    spec("swin_tiny", "timm", "swin_tiny_patch4_window7_224", "layers.3", layout="nhwc",
         kwargs={"embed_dim": 48, "depths": [2, 2, 2, 2]},
         notes=["channels-last output (B, H, W, C)", NARROW]),
    spec("swin_t", "torchvision", "swin_transformer.SwinTransformer", "features.7", layout="nhwc", batch="fixed",
         kwargs={"patch_size": [4, 4], "embed_dim": 48, "depths": [2, 2, 2, 2], "num_heads": [3, 6, 12, 24],
                 "window_size": [7, 7]},
         notes=["channels-last output (B, H, W, C)", "torchvision's swin_t class and layout, " + NARROW]),
    spec("maxvit_pico", "timm", "maxvit_pico_rw_256", "stages.3.blocks.1.attn_grid", hw=(256, 256), layout="nhwc",
         notes=["a channels-last layer inside MaxViT (grid attention), its own input size 256x256"]),
    # token layers
    spec("vit_tv_16", "torchvision", "vision_transformer.VisionTransformer", "encoder.layers.encoder_layer_3.ln_1",
         kwargs={"image_size": 224, "patch_size": 16, "num_layers": 4, "num_heads": 4, "hidden_dim": 256,
                 "mlp_dim": 1024},
         layout="tokens", prefix=1, grid=[14, 14],
         notes=["torchvision's vit_b_16 class (nn.MultiheadAttention: a traced model records the fused "
                "aten::_native_multi_head_attention, the inference fast path), 4 layers of width 256 "
                "instead of 12 of 768"]),
    spec("vit_small_reg4", "timm", "vit_small_patch14_reg4_dinov2", "blocks.3.norm1",
         kwargs={"img_size": 224, "depth": 4},
         layout="tokens", prefix=5, grid=[16, 16],
         notes=["class token + 4 register tokens; patch 14; built at img_size=224 (its default 518 gives 1374 "
                "tokens, too slow for CI)", "4 blocks instead of 12"]),
    spec("deit_tiny_distilled", "timm", "deit_tiny_distilled_patch16_224", "blocks.11.norm1", layout="tokens",
         prefix=2, grid=[14, 14], full=True, candle=True, batch="both",
         notes=["class + distillation token"]),
    spec("mixer_s16", "timm", "mlp_mixer.MlpMixer", "blocks.3.norm1", layout="tokens", prefix=0, grid=[14, 14],
         kwargs={"patch_size": 16, "num_blocks": 4, "embed_dim": 512},
         notes=["MLP-Mixer: tokens without a class token", "mixer_s16_224's class with 4 blocks instead of 8 "
                "(its builder does not let num_blocks be overridden)"]),
    spec("mobilevit_xxs", "timm", "mobilevit_xxs", "stages.4", hw=(256, 256), batch="fixed",
         notes=["its own input size 256x256 (unfold/fold reshapes depend on it)"]),
]


def log(msg):
    print(msg, flush=True)


def first_line(e, limit=400):
    """An exception's first non-empty line, without the terminal colours the dynamo exporter adds."""
    text = re.sub(r"\x1b\[[0-9;]*m", "", f"{type(e).__name__}: {e}").strip()
    lines = [ln for ln in text.splitlines() if ln.strip()]
    return (lines[0] if lines else type(e).__name__)[:limit]


def build(s, x):
    """The model, with random weights, adjusted as the module docstring says (its BatchNorm statistics those of
    the input batch x), or with its shipped weights as they are; returns (model, init notes)."""
    torch.manual_seed(0)
    if s["source"] == "timm" and "." in s["arch"]:  # a class under timm.models, built from kwargs
        module, _, name = s["arch"].rpartition(".")
        model = getattr(getattr(timm.models, module), name)(**s["kwargs"])
    elif s["source"] == "timm":
        model = timm.create_model(s["arch"], pretrained=False, **s["kwargs"])
    else:
        module, _, name = s["arch"].rpartition(".")
        owner = getattr(torchvision.models, module) if module else torchvision.models
        builder = getattr(owner, name)
        model = builder(**s["kwargs"]) if module else builder(weights=None, **s["kwargs"])
    if s["head"]:
        c = model.classifier
        width = s["head"]
        c[0] = torch.nn.Linear(c[0].in_features, width)
        c[3] = torch.nn.Linear(width, width)
        c[6] = torch.nn.Linear(width, c[6].out_features)
    model.eval()
    if s["weights"]:
        from safetensors.torch import load_file
        missing, unexpected = model.load_state_dict(load_file(os.path.join(ASSETS, s["weights"])), strict=False)
        assert not unexpected and all(k.endswith("num_batches_tracked") for k in missing), (missing, unexpected)
        return model, {"weights": "assets/" + s["weights"]}
    init = {"seed": 0}
    redrawn = []
    generator = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("weight") and p.numel() > 1 and not p.any():
                if p.dim() == 1:  # a norm's scale
                    p.fill_(1.0)
                else:
                    p.copy_(torch.randn(p.shape, generator=generator) * 0.02)
                redrawn.append(name)
    if redrawn:
        init["all_zero_weights_redrawn"] = redrawn
    init["batchnorm_layers_calibrated"] = calibrate_batchnorm(model, x)
    return model, init


def calibrate_batchnorm(model, x):
    """Sets every BatchNorm's running statistics to its batch statistics on x (cumulative average of one batch)."""
    norms = [m for m in model.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
    for m in norms:
        m.reset_running_stats()
        m.momentum = None
        m.train()
    with torch.no_grad():
        model(x)
    for m in norms:
        m.momentum = 0.1
    model.eval()
    return len(norms)


def fold_batchnorm(model):
    """A copy of the model with every BatchNorm2d that directly follows a Conv2d folded into it, as
    torch.jit.optimize_for_inference (backend-tch) and ONNX Runtime's graph optimizer do; returns (copy, count).
    "Directly follows": adjacent children of one module, conv first (torchvision's BasicConv2d,
    Conv2dNormActivation, ResNet blocks register them in the order forward applies them; timm's BatchNormAct2d,
    a subclass with its activation inside, is left alone). The caller checks the copy's logits."""
    import copy

    from torch.nn.utils.fusion import fuse_conv_bn_eval

    folded, count = copy.deepcopy(model), 0
    for parent in list(folded.modules()):
        children = list(parent.named_children())
        for (n1, c1), (n2, c2) in zip(children, children[1:]):
            if type(c1) is torch.nn.Conv2d and type(c2) is torch.nn.BatchNorm2d and \
                    c1.out_channels == c2.num_features:
                setattr(parent, n1, fuse_conv_bn_eval(c1, c2))
                setattr(parent, n2, torch.nn.Identity())
                count += 1
    return folded, count


def fold_noise(s, model, x, layer_name, reshape, classes, clone, want):
    """How far the reference itself moves when its BatchNorms are folded into the convolutions (the float32
    rounding of an implementation that folds, such as backend-tch and ONNX Runtime): relative max |diff| of the
    logits, activations and gradients (outside `want["ties"]`), absolute of each basic method's per-layer map.
    Deep random networks amplify that rounding past 1e-4 (inception_v3's activations: 1.35e-4); the suite allows
    twice these figures where they exceed its tolerance. None when nothing is folded, or when the folded copy's
    logits are off by more than 1e-2 (a pair that forward does not apply back to back)."""
    folded, count = fold_batchnorm(model)
    if count == 0:
        return None
    logits, _, act, grad = capture_native(folded, x, [folded.get_submodule(layer_name)], classes=classes,
                                          clone_output=clone)

    def rel(got, ref, mask=None):
        diff = np.abs(np.float64(got) - np.float64(ref))
        if mask is not None:
            diff = np.where(mask, 0, diff)
        return float(diff.max() / max(np.abs(ref).max(), 1e-30))

    noise = {"batchnorm_folded": count, "logits": rel(logits, want["logits"])}
    if noise["logits"] > 1e-2:
        log(f"[{s['key']}] folded logits off by {noise['logits']:.1e}: no fold noise recorded")
        return None
    noise["activations"] = rel(act[0], want["activations"])
    noise["gradients"] = rel(grad[0], want["gradients"], want["ties"])
    _, results = run_methods(folded, x, [folded.get_submodule(layer_name)], methods=BASIC,
                             reshape_transform=reshape, vit=s["layout"] == "tokens", classes=classes,
                             clone_output=clone, log=lambda m: None)
    noise["scaled"] = {m: float(np.abs(np.float32(results[m]["scaled"][0]) - want["scaled"][m]).max())
                       for m in BASIC}
    return noise


def state_dict_f32(model):
    return {k: v.detach().to(torch.float32).contiguous() for k, v in model.state_dict().items()
            if not k.endswith("num_batches_tracked")}


def remove(*paths):
    for p in paths:
        if os.path.exists(p):
            os.remove(p)


def check_onnx(path, x, expected):
    """Max |diff| of onnxruntime's logits against eager PyTorch (the file's own batch size when fixed)."""
    import onnxruntime as ort

    sess = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
    inp = sess.get_inputs()[0]
    if isinstance(inp.shape[0], int) and inp.shape[0] != x.shape[0]:
        x, expected = x[:inp.shape[0]], expected[:inp.shape[0]]
    got = sess.run(None, {inp.name: x.numpy()})[0]
    return {"input_name": inp.name, "input_shape": [d if isinstance(d, int) else str(d) for d in inp.shape],
            "max_abs_diff": float(np.abs(got - expected).max())}


def export_all(s, model, x, out):
    """Every export of the model; returns (files, checks, skipped). An export torch cannot make is skipped with
    its error; every file made is run (TorchScript in torch, ONNX in onnxruntime) against eager PyTorch."""
    key = s["key"]
    files, checks, skipped = {}, {}, {}
    x1 = x[:1]
    with torch.no_grad():
        expected = model(x).numpy()

    if s["candle"]:
        path = os.path.join(out, f"{key}.safetensors")
        save_file(state_dict_f32(model), path, metadata={"format": "pt", "arch": s["arch"]})
        files["safetensors"] = os.path.basename(path)

    path = os.path.join(out, f"{key}.traced.pt")
    try:
        with torch.no_grad(), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            traced = torch.jit.trace(model, x1, check_trace=False)
        traced.save(path)
        files["traced"] = os.path.basename(path)
    except Exception as e:  # noqa: BLE001 - every exporter error is recorded, not raised
        remove(path)
        skipped["traced"] = first_line(e)
    if "traced" in files:
        try:
            with torch.no_grad():
                checks["traced"] = {"max_abs_diff": float(np.abs(traced(x).numpy() - expected).max())}
        except Exception as e:  # noqa: BLE001 - a trace that bakes in batch 1 is kept: users bring those
            checks["traced"] = {"error_at_batch_2": first_line(e)}

    modes = ["dynamic", "fixed"] if s["batch"] == "both" else [s["batch"]]
    for mode in modes:
        path = os.path.join(out, f"{key}.legacy.{mode}.onnx")
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                if mode == "dynamic":
                    torch.onnx.export(model, (x,), path, dynamo=False, opset_version=OPSET_LEGACY,
                                      input_names=["input"], output_names=["logits"],
                                      dynamic_axes={"input": {0: "batch"}, "logits": {0: "batch"}})
                else:
                    torch.onnx.export(model, (x1,), path, dynamo=False)
            files[f"legacy_{mode}"] = os.path.basename(path)
            checks[f"legacy_{mode}"] = check_onnx(path, x, expected)
        except Exception as e:  # noqa: BLE001
            remove(path)
            skipped[f"legacy_{mode}"] = first_line(e)

        path = os.path.join(out, f"{key}.dynamo.{mode}.onnx")
        remove(path, path + ".data")
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                if mode == "dynamic":
                    batch = torch.export.Dim("batch", min=1, max=1024)
                    program = torch.onnx.export(model, (x,), dynamo=True, input_names=["input"],
                                                output_names=["logits"], dynamic_shapes=({0: batch},),
                                                verbose=False)
                    program.save(path, external_data=True)
                else:
                    torch.onnx.export(model, (x1,), path, verbose=False)
            files[f"dynamo_{mode}"] = os.path.basename(path)
            if os.path.exists(path + ".data"):
                files[f"dynamo_{mode}_data"] = os.path.basename(path) + ".data"
            checks[f"dynamo_{mode}"] = check_onnx(path, x, expected)
        except Exception as e:  # noqa: BLE001
            remove(path, path + ".data")
            skipped[f"dynamo_{mode}"] = first_line(e)
    return files, checks, skipped


def margins(logits, classes_by_rank):
    """Per image, the smallest gap between the explained class's logit and its neighbours in rank, relative to
    the row's largest |logit| (a class another implementation could resolve differently has a gap near 0)."""
    order = np.sort(logits, axis=1)[:, ::-1]
    scale = np.abs(logits).max(axis=1)
    gaps = []
    for b, rank in enumerate(classes_by_rank):
        near = [order[b, rank] - order[b, rank + 1]]
        if rank > 0:
            near.append(order[b, rank - 1] - order[b, rank])
        gaps.append(float(min(near) / scale[b]))
    return gaps


def references(s, model, x, out):
    """PyTorch's and grad-cam's answers at the model's layer, written under out/<key>/; returns the manifest's
    per-model reference entry."""
    key, d = s["key"], os.path.join(out, s["key"])
    layer = model.get_submodule(s["layer"])
    if s["layout"] == "tokens":
        reshape = token_reshape(s["prefix"], *s["grid"])
    elif s["layout"] == "nhwc":
        reshape = channels_last_reshape
    else:
        reshape = None
    clone = s["definition"]

    logits, top1, act, grad = capture_native(model, x, [layer], clone_output=clone)
    shape = list(act[0].shape)
    expect = {"nchw": 4, "nhwc": 4, "tokens": 3}[s["layout"]]
    assert len(shape) == expect, f"{key}: {s['layer']} output {shape} is not {s['layout']}"
    if expect == 4:  # the spatial axes are a grid of the input at one stride: (1, 2) channels-last, else (2, 3)
        h, w = shape[1:3] if s["layout"] == "nhwc" else shape[2:4]
        stride = max(1, round(s["hw"][0] / h))
        assert (s["hw"][1] // stride, -(-s["hw"][1] // stride)).count(w) and h <= s["hw"][0], \
            f"{key}: {s['layer']} output {shape} is not {s['layout']}"
    if s["layout"] == "tokens":
        assert shape[1] == s["prefix"] + s["grid"][0] * s["grid"][1], (key, shape)
    os.makedirs(d, exist_ok=True)
    np.save(os.path.join(d, "logits.npy"), logits)
    np.save(os.path.join(d, "activations.npy"), act[0])
    ties, tie_units = tie_mask(model, x, layer)
    np.save(os.path.join(d, "ties.npy"), ties)
    entry = {"dir": key, "activation_shape": shape, "tie_units": tie_units, "tie_elements": int(ties.sum()),
             "targets": {}}

    methods = METHODS if s["full"] else BASIC
    targets = {"top1": 0, "rank2": 1} if s["full"] else {"top1": 0}
    for target, rank in targets.items():
        t0 = time.time()
        classes = ranked_classes(logits, rank)
        if rank == 0:
            assert classes == top1.tolist(), (key, classes, top1)
            gradient = grad[0]
        else:
            _, _, _, g = capture_native(model, x, [layer], classes=classes, clone_output=clone)
            gradient = g[0]
        td = os.path.join(d, target)
        os.makedirs(td, exist_ok=True)
        np.save(os.path.join(td, "classes.npy"), np.int64(classes))
        np.save(os.path.join(td, "gradients.npy"), gradient)
        _, results = run_methods(model, x, [layer], methods=methods, reshape_transform=reshape,
                                 vit=s["layout"] == "tokens", scorecam_batch=SCORECAM_BATCH,
                                 ablation_batch=ABLATION_BATCH, classes=classes, clone_output=clone,
                                 log=lambda m: log(f"[{key}/{target}]{m}"))
        for m in methods:
            np.save(os.path.join(td, f"cam_{m}.npy"), results[m]["cam"])
            np.save(os.path.join(td, f"scaled_{m}.npy"), np.float32(results[m]["scaled"][0]))
        if "scorecam" in results:
            np.save(os.path.join(td, "scorecam_scores.npy"), results["scorecam"]["scores"][0])
        if "ablationcam" in results:
            np.save(os.path.join(td, "ablation_scores.npy"), results["ablationcam"]["scores"][0])
            np.save(os.path.join(td, "ablation_original.npy"), results["ablationcam"]["original"])
        entry["targets"][target] = {
            "rank": rank, "classes": classes, "methods": methods,
            "class_margins": margins(logits, [rank] * len(classes)),
            "eigen_sign_flipped": {m: results[m]["flipped"][0] for m in ("eigencam", "eigengradcam")
                                   if m in results},
        }
        log(f"[{key}/{target}] references in {time.time() - t0:.1f}s, classes {classes}")

    top1_dir = os.path.join(d, "top1")
    noise = fold_noise(s, model, x, s["layer"], reshape, ranked_classes(logits, 0), clone, {
        "logits": logits, "activations": act[0], "ties": ties,
        "gradients": np.load(os.path.join(top1_dir, "gradients.npy")),
        "scaled": {m: np.load(os.path.join(top1_dir, f"scaled_{m}.npy")) for m in BASIC}})
    if noise:
        entry["fold_noise"] = noise
        log(f"[{key}] fold noise: {noise}")

    if clone:  # how far grad-cam's own answer (the in-place op rewrote its stored activation) is off
        _, plain = run_methods(model, x, [layer], methods=["gradcam"], classes=ranked_classes(logits, 0),
                               log=lambda m: None)
        want = np.load(os.path.join(d, "top1", "cam_gradcam.npy"))
        entry["gradcam_artefact_max_diff"] = float(np.abs(plain["gradcam"]["cam"] - want).max())
    return entry


def generate(s, out, inputs, done):
    """One model: build, export, references; returns its manifest entry. `done`: the entries made before."""
    t0, c0 = time.time(), time.process_time()
    hw = tuple(s["hw"])
    x = inputs[hw]
    model, init = build(s, x)
    if s["files_of"]:
        other = done[s["files_of"]]
        assert (other["arch"], other["kwargs"], other["input"]["hw"]) == (s["arch"], s["kwargs"], s["hw"]), s["key"]
        files, checks, skipped = other["files"], other["checks"], other["skipped"]
    else:
        files, checks, skipped = export_all(s, model, x, out)
    t1, c1 = time.time(), time.process_time()
    log(f"[{s['key']}] exports in {t1 - t0:.1f}s ({c1 - c0:.1f}s CPU): {sorted(files)}; skipped {sorted(skipped)}")
    refs = references(s, model, x, out)
    layout = {"kind": s["layout"]}
    if s["layout"] == "tokens":
        layout.update(prefix_tokens=s["prefix"], grid=s["grid"])
    entry = {
        "arch": s["arch"], "source": s["source"], "kwargs": s["kwargs"], "head": s["head"], "init": init,
        "input": {"file": f"input_{hw[0]}x{hw[1]}.npy", "hw": list(hw)},
        "batch": s["batch"], "files": files, "skipped": skipped, "checks": checks,
        "layer": s["layer"], "layout": layout, "candle_arch": s["arch"] if s["candle"] else None,
        "reference": "definition" if s["definition"] else "pytorch-grad-cam", "notes": s["notes"],
        "seconds": {"exports": round(t1 - t0, 1), "references": round(time.time() - t1, 1),
                    "exports_cpu": round(c1 - c0, 1), "references_cpu": round(time.process_time() - c1, 1)},
    }
    entry.update(refs)
    write_json(os.path.join(out, s["key"], "entry.json"), entry)
    log(f"[{s['key']}] done in {time.time() - t0:.1f}s ({time.process_time() - c0:.1f}s CPU)")
    return entry


def save_input(work, hw):
    """The input batch at size hw (the IMAGES, preprocessed), saved as work/input_<H>x<W>.npy; returns it."""
    x = np.stack([preprocess(os.path.join(ASSETS, "images", f"{n}.png"), hw) for n in IMAGES])
    np.save(os.path.join(work, f"input_{hw[0]}x{hw[1]}.npy"), x)
    return torch.from_numpy(x)


def write_json(path, value):
    """value as JSON at path, atomically (a file that exists is complete)."""
    with open(path + ".tmp", "w") as f:
        json.dump(value, f, indent=1, sort_keys=True)
        f.write("\n")
    os.replace(path + ".tmp", path)


def fold(a, layout):
    """A native layer output as (B, C, h, w), as the reference's reshape_transform folds it."""
    if layout["kind"] == "nhwc":
        return a.transpose(0, 3, 1, 2)
    if layout["kind"] == "tokens":
        h, w = layout["grid"]
        return a[:, layout["prefix_tokens"]:, :].reshape(a.shape[0], h, w, a.shape[2]).transpose(0, 3, 1, 2)
    return a


def leaf_capture(model, x, layer, classes):
    """Logits and the gradient of sum_b logits[b, classes_b] w.r.t. the layer's output, taken another way than
    gradcam_ref.capture_native: the layer's output is replaced by a leaf tensor that the rest of the network
    reads (a copy), so no tensor hook and no in-place op after the layer can touch what is measured."""
    leaf = {}

    def hook(module, inp, out):
        leaf["a"] = out.detach().requires_grad_()
        return leaf["a"].clone()

    handle = model.get_submodule(layer).register_forward_hook(hook)
    try:
        logits = model(x)
        logits.gather(1, torch.as_tensor(classes)[:, None]).sum().backward()
    finally:
        handle.remove()
    model.zero_grad()
    return logits.detach().numpy(), leaf["a"].detach().numpy(), leaf["a"].grad.numpy()


def check(out, keys):
    """Re-derives every reference of the folder in OUT from independent code: the gradients by a leaf-replacement
    backward pass of the rebuilt model, every map from the saved activations, gradients and scores with the
    numpy formulas of tools/check_core_fixtures.py (float64 SVD, own min-max and resize), and every saved export
    against the logits. Prints one line per model; exits non-zero on a mismatch."""
    import cv2
    import onnxruntime as ort

    from check_core_fixtures import gradient_raw_maps, scale

    with open(os.path.join(out, "manifest.json")) as f:
        manifest = json.load(f)
    specs = {m["key"]: m for m in MODELS}
    ok = True
    for key, e in manifest["models"].items():
        if keys and key not in keys:
            continue
        t0 = time.time()
        d = os.path.join(out, key)
        x = torch.from_numpy(np.load(os.path.join(out, e["input"]["file"])))
        hw = tuple(e["input"]["hw"])
        errors = {}
        model, _ = build(specs[key], x)
        logits, act = np.load(os.path.join(d, "logits.npy")), np.load(os.path.join(d, "activations.npy"))
        ties = np.load(os.path.join(d, "ties.npy"))

        def rel(got, want, mask=None):
            diff = np.abs(np.float64(got) - np.float64(want))
            if mask is not None:
                diff = np.where(mask, 0, diff)
            return float(diff.max() / max(np.abs(want).max(), 1e-30))

        for target, t in e["targets"].items():
            td = os.path.join(d, target)
            classes = np.load(os.path.join(td, "classes.npy"))
            assert classes.tolist() == ranked_classes(logits, t["rank"]), (key, target)
            grad = np.load(os.path.join(td, "gradients.npy"))
            got_logits, got_act, got_grad = leaf_capture(model, x, e["layer"], classes)
            errors["logits"] = rel(got_logits, logits)
            errors["activations"] = rel(got_act, act)
            errors[f"{target} gradients"] = rel(got_grad, grad, ties)
            a, g = np.float64(fold(act, e["layout"])), np.float64(fold(grad, e["layout"]))
            raw = gradient_raw_maps(a, g)

            def weighted(w):
                return (w[:, :, None, None] * a).sum(1)

            if "scorecam" in t["methods"]:
                scores = np.float64(np.load(os.path.join(td, "scorecam_scores.npy")))
                soft = np.exp(scores - scores.max(1, keepdims=True))
                raw["scorecam"] = weighted(soft / soft.sum(1, keepdims=True))
            if "ablationcam" in t["methods"]:
                original = np.float64(np.load(os.path.join(td, "ablation_original.npy")))[:, None]
                scores = np.float64(np.load(os.path.join(td, "ablation_scores.npy")))
                raw["ablationcam"] = weighted((original - scores) / original)
            for m in t["methods"]:
                if m not in raw:  # FEM, KPCA-CAM, FinerCAM, RandomCAM: only grad-cam's own answer
                    continue
                scaled = np.load(os.path.join(td, f"scaled_{m}.npy"))
                errors[f"{target} scaled_{m}"] = float(np.abs(scaled - scale(np.maximum(raw[m], 0))).max())
                upsampled = np.float32([cv2.resize(np.float32(s_), (hw[1], hw[0]), interpolation=cv2.INTER_LINEAR)
                                        for s_ in scaled])
                cam = np.load(os.path.join(td, f"cam_{m}.npy"))
                errors[f"{target} cam_{m}"] = float(np.abs(cam - scale(np.maximum(upsampled, 0))).max())

        # the saved exports reproduce the logits (fixed-batch files at their batch of 1)
        for kind, name in e["files"].items():
            path = os.path.join(out, name)
            if kind == "traced":
                with torch.no_grad():
                    try:
                        errors["traced logits"] = rel(torch.jit.load(path)(x).numpy(), logits)
                    except Exception:  # noqa: BLE001 - a trace that bakes in batch 1
                        errors["traced logits (image 0)"] = rel(torch.jit.load(path)(x[:1]).numpy(), logits[:1])
            elif kind.startswith(("legacy_", "dynamo_")) and not kind.endswith("_data"):
                sess = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
                inp = sess.get_inputs()[0]
                n = inp.shape[0] if isinstance(inp.shape[0], int) else x.shape[0]
                errors[f"{kind} logits"] = rel(sess.run(None, {inp.name: x[:n].numpy()})[0], logits[:n])
        # the reference's own gradients, the leaf's and grad-cam's: 1e-4 of the largest; maps: 1e-4 absolute
        bad = {k: v for k, v in errors.items() if v > 1e-4}
        ok &= not bad
        print(f"{key}: {len(errors)} checks, worst {max(errors.values()):.1e} ({max(errors, key=errors.get)}), "
              f"{time.time() - t0:.0f}s" + (f"; MISMATCH {bad}" if bad else ""), flush=True)
    return ok


def model_seconds(entry):
    """Wall seconds a model's exports and references took (0 when not recorded)."""
    seconds = entry.get("seconds") or {}
    return seconds.get("exports", 0) + seconds.get("references", 0)


def manifest_of(keys, entries, t_start, cpu_start):
    """The manifest of the models `keys` made (`entries`), timed from t_start / cpu_start."""
    return {
        "generator": "tools/make_breadth_fixtures.py",
        "versions": {"torch": torch.__version__, "torchvision": torchvision.__version__, "timm": timm.__version__,
                     "grad-cam": "1.5.7", "numpy": np.__version__},
        "images": [f"assets/images/{n}.png" for n in IMAGES],
        "preprocessing": "tools/common.py: RGB/255 -> cv2.resize INTER_LINEAR -> (x-mean)/std -> CHW",
        "methods": METHODS, "basic_methods": BASIC,
        "targets": {"top1": "each image's top-1 class", "rank2": "each image's rank-2 class (ties: lower index)"},
        "scorecam_batch_size": SCORECAM_BATCH, "ablation_batch_size": ABLATION_BATCH, "tie_eps": TIE_EPS,
        "eigen_sign_rule": "v . mean_row(uncentred matrix) >= 0, ties: largest-|v| component positive",
        "models": {k: entries[k] for k in keys if k in entries},
        "skipped": {k: e["skipped"] for k, e in entries.items() if e["skipped"]},
        "seconds": {"wall": round(time.time() - t_start, 1), "cpu": round(time.process_time() - cpu_start, 1),
                    "models_sum": round(sum(model_seconds(e) for e in entries.values()), 1)},
    }


def each(out, command):
    """--each: every model made alone into `out`, `command` run on it (GRADCAM_BREADTH=out), the folder deleted.
    Returns the keys of the models that failed to generate or to pass."""
    failed = []
    t_start = time.time()
    for s in MODELS:
        assert not s["files_of"], f"{s['key']}: --each makes one model at a time"
        shutil.rmtree(out, ignore_errors=True)
        os.makedirs(out)
        t0, c0 = time.time(), time.process_time()
        try:
            hw = tuple(s["hw"])
            entry = generate(s, out, {hw: save_input(out, hw)}, {})
            write_json(os.path.join(out, "manifest.json"), manifest_of([s["key"]], {s["key"]: entry}, t0, c0))
        except Exception:
            log(f"[{s['key']}] FAILED\n{traceback.format_exc()}")
            failed.append(s["key"])
            continue
        t1 = time.time()
        code = subprocess.call(command, shell=True, env={**os.environ, "GRADCAM_BREADTH": out})
        log(f"[{s['key']}] made in {t1 - t0:.0f}s, tested in {time.time() - t1:.0f}s: "
            + ("ok" if code == 0 else f"FAILED (exit {code})"))
        if code != 0:
            failed.append(s["key"])
    shutil.rmtree(out, ignore_errors=True)
    log(f"breadth suite, one model at a time: {len(MODELS) - len(failed)} of {len(MODELS)} models passed in "
        f"{time.time() - t_start:.0f}s" + (f"; failed: {', '.join(failed)}" if failed else ""))
    return failed


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("out")
    parser.add_argument("--only", help="comma-separated model keys, generated into OUT itself")
    parser.add_argument("--resume", action="store_true",
                        help="keep OUT.partial and skip the models an interrupted run finished there (only if its "
                             "--stamp is this run's)")
    parser.add_argument("--stamp", help="a digest of the generator's inputs, written to OUT/.stamp; --resume "
                                        "reuses OUT.partial only when it was made with the same stamp")
    parser.add_argument("--each", metavar="COMMAND",
                        help="make, test with COMMAND (GRADCAM_BREADTH=OUT) and delete one model at a time")
    parser.add_argument("--check", action="store_true",
                        help="re-derive the references in OUT independently instead of generating")
    args = parser.parse_args()
    torch.set_num_threads(int(os.environ.get("GRADCAM_FIXTURES_THREADS", "2")))
    out = os.path.abspath(args.out)
    if args.check:
        sys.exit(0 if check(out, args.only.split(",") if args.only else None) else 1)
    if args.each:
        sys.exit(1 if each(out, args.each) else 0)
    suite = MODELS
    keys = [m["key"] for m in suite]
    assert len(set(keys)) == len(keys)
    if args.only:
        wanted = args.only.split(",")
        unknown = [k for k in wanted if k not in keys]
        if unknown:
            raise SystemExit(f"unknown model keys {unknown}; known: {keys}")
        models, work = [m for m in suite if m["key"] in wanted], out
    else:
        models, work = suite, out + ".partial"
        stamp_path = os.path.join(work, ".stamp")
        same = os.path.exists(stamp_path) and open(stamp_path).read().strip() == (args.stamp or "")
        if not (args.resume and (same or not args.stamp)):
            shutil.rmtree(work, ignore_errors=True)
    os.makedirs(work, exist_ok=True)
    if args.stamp:
        with open(os.path.join(work, ".stamp"), "w") as f:
            f.write(args.stamp + "\n")
    manifest_path = os.path.join(work, "manifest.json")
    previous = {}
    if args.only:
        # The other models' entries, from each one's entry.json: a failed --only run has removed the
        # manifest, and the next one must not drop the models it did not name.
        for key in keys:
            path = os.path.join(work, key, "entry.json")
            if key not in wanted and os.path.exists(path):
                with open(path) as f:
                    previous[key] = json.load(f)
    remove(manifest_path)  # a folder with a manifest is a complete one

    t_start, cpu_start = time.time(), time.process_time()
    inputs = {}
    for s in models:
        hw = tuple(s["hw"])
        if hw not in inputs:
            inputs[hw] = save_input(work, hw)
    entries = dict(previous)
    for s in models:
        done = os.path.join(work, s["key"], "entry.json")
        if args.resume and not args.only and os.path.exists(done):
            with open(done) as f:
                entries[s["key"]] = json.load(f)
            log(f"[{s['key']}] done before (--resume)")
            continue
        try:
            entries[s["key"]] = generate(s, work, inputs, entries)
        except Exception:
            log(f"[{s['key']}] FAILED\n{traceback.format_exc()}")
            raise
    manifest = manifest_of(keys, entries, t_start, cpu_start)
    write_json(manifest_path, manifest)
    if work != out:
        old = out + ".old"
        shutil.rmtree(old, ignore_errors=True)
        if os.path.exists(out):
            os.rename(out, old)
        os.rename(work, out)
        shutil.rmtree(old, ignore_errors=True)
    log(f"breadth fixtures: {len(models)} models in {manifest['seconds']['wall']}s wall, "
        f"{manifest['seconds']['cpu']}s CPU -> {out}")


if __name__ == "__main__":
    main()
