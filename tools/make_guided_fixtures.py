#!/usr/bin/env python3
"""Generates the guided-backprop fixtures (not committed; scripts/make-fixtures runs it into OUT_DIR/guided after
the model fixtures, whose weights and input it reads):

  python tools/make_guided_fixtures.py OUT_DIR

For each model fixture (resnet18: nn.ReLU modules, the ones grad-cam guides; vit_tiny: GELU only; lite0: ReLU6,
which grad-cam leaves plain) and the two fixture images, with per-image classes (image 0: its second-best class,
image 1: its top-1), it writes OUT_DIR/guided/<model>/:
  classes.npy          int64 (B,)
  guided.npy           (B, 3, H, W) grad-cam 1.5.7's GuidedBackpropReLUModel(model)(x[b:b+1], class_b), transposed
                       back from its (H, W, 3); one call per image, as it explains the first image of a batch only
  gradcam.npy          (B, H, W) GradCAM's final maps at the model's default layer for the same classes
  guided_gradcam.npy   (B, 3, H, W) gradcam * guided, as grad-cam's cam.py builds cam_gb
  deprocessed.npy      uint8 (B, H, W, 3) deprocess_image(guided[b] as (H, W, 3))
  deprocessed_gradcam.npy  uint8 (B, H, W, 3) deprocess_image(cam_mask * gb), cam.py's guided Grad-CAM picture
  fullgrad.npy         (B, H, W) FullGrad(model, [])(x, targets) for the same classes: the input gradient and every
                       module that is exactly nn.Conv2d or nn.BatchNorm2d with a bias (resnet18: its 20 BatchNorms;
                       vit_tiny: patch_embed.proj; lite0: none, timm's BatchNormAct2d is not exactly BatchNorm2d)
  fullgrad_eigen.npy   (B, H, W) the same with eigen_smooth=True (FullGrad's own variant; the eigen sign rule of
                       gradcam_ref.py)
  fullgrad_every_bias.npy, fullgrad_every_bias_eigen.npy  (lite0 only) FullGrad of the same network with each
                       timm BatchNormAct2d split into a plain BatchNorm2d, its dropout and its activation: every bias
                       layer, its gradient taken at the BatchNorm's own output (FullGrad's definition; what a legacy ONNX
                       export, which folds the BatchNorms into the convolutions and keeps no module types, can be held to)
and, because a freshly initialised ResNet's BatchNorms fold to zero biases (FullGrad would see only its input term),
OUT_DIR/guided/resnet18_bn.safetensors, .traced.pt, .legacy.onnx and .dynamo.onnx(.data) (exported as the model
fixtures are), and .unfolded.onnx (legacy, do_constant_folding=False: BatchNormalization nodes): the resnet18 fixture with random BatchNorm statistics and affine parameters (torch.manual_seed(1)),
with its classes.npy, fullgrad.npy and fullgrad_eigen.npy in OUT_DIR/guided/resnet18_bn/;
and OUT_DIR/guided/manifest.json (written last) with each model's layer and FullGrad's bias layers.
"""
import json
import os
import sys

import numpy as np
import timm
import torch
from pytorch_grad_cam import FullGrad, GradCAM
from pytorch_grad_cam.guided_backprop import GuidedBackpropReLUModel
from pytorch_grad_cam.utils.image import deprocess_image
from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget
from safetensors.torch import load_file, save_file

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from gradcam_ref import signed_2d_projection, token_reshape  # noqa: E402
import pytorch_grad_cam.fullgrad_cam  # noqa: E402
from make_model_fixtures import export_onnx  # noqa: E402

# FullGrad's eigen_smooth projects with grad-cam's get_2d_projection: the documented sign rule too.
pytorch_grad_cam.fullgrad_cam.get_2d_projection = signed_2d_projection

LAYERS = {"resnet18": "layer4", "vit_tiny": "blocks.11.norm1", "lite0": "blocks.6"}


def build(fixtures, key):
    manifest = json.load(open(os.path.join(fixtures, "manifest.json")))
    entry = manifest["models"][key]
    model = timm.create_model(entry["arch"], pretrained=False)
    state = load_file(os.path.join(fixtures, entry["files"]["safetensors"]))
    missing, unexpected = model.load_state_dict(state, strict=False)
    assert not unexpected and all(k.endswith("num_batches_tracked") for k in missing), (missing, unexpected)
    return model.eval()


def split_batchnorm_act(model):
    """A copy of `model` with each timm BatchNormAct2d replaced by Sequential(BatchNorm2d, drop, act): the same
    function, with the BatchNorm a module of its own that grad-cam's exact-type rule takes."""
    import copy
    from timm.layers.norm_act import BatchNormAct2d
    model = copy.deepcopy(model)
    count = 0
    for name, module in list(model.named_modules()):
        if isinstance(module, BatchNormAct2d):
            bn = torch.nn.BatchNorm2d(module.num_features, eps=module.eps, momentum=module.momentum)
            bn.load_state_dict({k: v for k, v in module.state_dict().items()})
            parent_name, _, attr = name.rpartition(".")
            parent = model.get_submodule(parent_name) if parent_name else model
            setattr(parent, attr, torch.nn.Sequential(bn, module.drop, module.act).eval())
            count += 1
    return model, count


def main():
    fixtures = sys.argv[1]
    out = os.path.join(fixtures, "guided")
    os.makedirs(out, exist_ok=True)
    x = torch.from_numpy(np.load(os.path.join(fixtures, "input.npy")))
    summary = {"generator": "tools/make_guided_fixtures.py", "input": "input.npy", "models": {}}
    for key, layer in LAYERS.items():
        model = build(fixtures, key)
        with torch.no_grad():
            logits = model(x).numpy()
        order = np.argsort(-logits, axis=1, kind="stable")
        classes = np.array([order[0, 1], order[1, 0]], dtype=np.int64)
        reshape = token_reshape(1, 14, 14) if key == "vit_tiny" else None
        target_layer = model.get_submodule(layer)
        with GradCAM(model, [target_layer], reshape_transform=reshape) as cam:
            gradcam = cam(x, [ClassifierOutputTarget(int(c)) for c in classes]).astype(np.float32)
        with FullGrad(model, []) as cam:
            fullgrad = cam(x, [ClassifierOutputTarget(int(c)) for c in classes]).astype(np.float32)
            fullgrad_eigen = cam(x, [ClassifierOutputTarget(int(c)) for c in classes],
                                 eigen_smooth=True).astype(np.float32)
            bias_layers = [n for n, m in model.named_modules() if any(m is t for t in cam.target_layers)]
        guided, pictures, gradcam_pictures = [], [], []
        for b, c in enumerate(classes):
            gb = GuidedBackpropReLUModel(model=model, device="cpu")(x[b:b + 1].clone(), int(c))  # (H, W, 3)
            guided.append(gb.transpose(2, 0, 1))
            pictures.append(deprocess_image(gb))
            cam_mask = np.stack([gradcam[b]] * 3, axis=-1)
            gradcam_pictures.append(deprocess_image(cam_mask * gb))
        guided = np.stack(guided).astype(np.float32)
        d = os.path.join(out, key)
        os.makedirs(d, exist_ok=True)
        np.save(os.path.join(d, "classes.npy"), classes)
        np.save(os.path.join(d, "guided.npy"), guided)
        np.save(os.path.join(d, "gradcam.npy"), gradcam)
        np.save(os.path.join(d, "guided_gradcam.npy"), (gradcam[:, None] * guided).astype(np.float32))
        np.save(os.path.join(d, "fullgrad.npy"), fullgrad)
        np.save(os.path.join(d, "fullgrad_eigen.npy"), fullgrad_eigen)
        if key == "lite0":
            split, count = split_batchnorm_act(model)
            with torch.no_grad():
                assert count > 0 and np.abs(split(x).numpy() - logits).max() < 1e-5, "the split is the same network"
            with FullGrad(split, []) as cam:
                targets = [ClassifierOutputTarget(int(c)) for c in classes]
                every = cam(x, targets).astype(np.float32)
                every_eigen = cam(x, targets, eigen_smooth=True).astype(np.float32)
                assert len(cam.target_layers) == count, (len(cam.target_layers), count)
            np.save(os.path.join(d, "fullgrad_every_bias.npy"), every)
            np.save(os.path.join(d, "fullgrad_every_bias_eigen.npy"), every_eigen)
        np.save(os.path.join(d, "deprocessed.npy"), np.stack(pictures))
        np.save(os.path.join(d, "deprocessed_gradcam.npy"), np.stack(gradcam_pictures))
        summary["models"][key] = {"layer": layer, "classes": classes.tolist(), "fullgrad_bias_layers": bias_layers,
                                  "guided_abs_max": float(np.abs(guided).max())}
        print(f"guided {key}: classes {classes.tolist()}, |guided| max {np.abs(guided).max():.3g}", flush=True)
    # FullGrad with non-zero folded BatchNorm biases.
    model = build(fixtures, "resnet18")
    torch.manual_seed(1)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.uniform_(-0.5, 0.5)
                m.running_var.uniform_(0.5, 2.0)
                m.weight.uniform_(0.5, 1.5)
                m.bias.uniform_(-0.5, 0.5)
        logits = model(x).numpy()
    state = {k: v.detach().to(torch.float32).contiguous() for k, v in model.state_dict().items()
             if not k.endswith("num_batches_tracked")}
    save_file(state, os.path.join(out, "resnet18_bn.safetensors"))
    torch.jit.trace(model, x[:1]).save(os.path.join(out, "resnet18_bn.traced.pt"))
    export_onnx(model, x, os.path.join(out, "resnet18_bn"))
    torch.onnx.export(model, (x,), os.path.join(out, "resnet18_bn.unfolded.onnx"), dynamo=False, opset_version=17,
                      do_constant_folding=False, input_names=["input"], output_names=["logits"],
                      dynamic_axes={"input": {0: "batch"}, "logits": {0: "batch"}})
    order = np.argsort(-logits, axis=1, kind="stable")
    classes = np.array([order[0, 1], order[1, 0]], dtype=np.int64)
    with FullGrad(model, []) as cam:
        fullgrad = cam(x, [ClassifierOutputTarget(int(c)) for c in classes]).astype(np.float32)
        fullgrad_eigen = cam(x, [ClassifierOutputTarget(int(c)) for c in classes], eigen_smooth=True).astype(np.float32)
    d = os.path.join(out, "resnet18_bn")
    os.makedirs(d, exist_ok=True)
    np.save(os.path.join(d, "classes.npy"), classes)
    np.save(os.path.join(d, "fullgrad.npy"), fullgrad)
    np.save(os.path.join(d, "fullgrad_eigen.npy"), fullgrad_eigen)
    summary["models"]["resnet18_bn"] = {"arch": "resnet18", "classes": classes.tolist()}
    print(f"guided resnet18_bn: classes {classes.tolist()}", flush=True)
    with open(os.path.join(out, "manifest.json"), "w") as f:
        json.dump(summary, f, indent=1)


if __name__ == "__main__":
    main()
