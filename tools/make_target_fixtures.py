#!/usr/bin/env python3
"""Generates the fixtures of the targets for models that are not classifiers (not committed;
scripts/make-fixtures runs it into OUT_DIR/targets):

  python tools/make_target_fixtures.py OUT_DIR

Models (timm, random init after torch.manual_seed(0); each exported traced TorchScript, legacy ONNX (opset 17)
and dynamo ONNX, dynamic batch, and dynamic height/width for the CNNs; the four plain timm models also as their
timm state dict, <model>.safetensors (float32, no num_batches_tracked, as make_model_fixtures.py), for candle's zoo,
with the manifest naming their timm `arch`):
  resnet18_binary  timm resnet18 with one logit            BinaryClassifierOutputTarget
  vit_binary       timm vit_tiny_patch16_224, one logit     BinaryClassifierOutputTarget
  fcn              timm resnet18 trunk + 1x1 conv to 5 classes, bilinear upsampling to the input's size
                   (a torchvision-FCN-like (B, 5, H, W) output)     SemanticSegmentationTarget
  fcn_resnet50     torchvision's FCN class as fcn_resnet50 builds it (dilated ResNet-50 trunk, FCNHead, 5 classes),
                   bottlenecks 4x narrower (width_per_group=16), BatchNorm statistics of the two images;
                   only its state dict (candle's zoo `fcn_resnet50`; tch and ort take any segmenter, `fcn`)
                                                                    SemanticSegmentationTarget
  resnet18_embed   timm resnet18 without its head, (B, 512)  SimilarityToConceptTarget
  vit_embed        timm vit_tiny without its head, (B, 192)  SimilarityToConceptTarget
For each model and target case it writes <model>/<case>/cam_<method>.npy (grad-cam 1.5.7's final maps (B, H, W))
and raw_<method>.npy (its get_cam_image output at the layer, (B, h, w)), the case's `ties` per image (its
gradient depends on a ReLU within float noise of its kink, or its argmax region has a pixel within float noise
of another class: the tests compare those images' maps at tests::TIE_TOL), plus the inputs (input_cnn.npy: chelsea
and coffee at 96x128, non-square; input_vit.npy: at 224x224), mask.png / mask.npy (the segmentation mask at the
output's size), concept_<model>.npy, and manifest.json (written last), which also holds, for the first case
of the models in GRADIENT_FREE_MODELS, pytorch-grad-cam's six metrics of its Grad-CAM maps (ROAD noise 0;
tools/make_metric_fixtures.py's runner).
"""
import copy
import json
import os
import sys
import time

import numpy as np
import timm
import torch
import torch.nn.functional as F
import torchvision
from PIL import Image
from pytorch_grad_cam.utils.model_targets import BinaryClassifierOutputTarget, SemanticSegmentationTarget

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import ASSETS, preprocess  # noqa: E402
from gradcam_ref import _base, _make, token_reshape  # noqa: E402
from make_metric_fixtures import METRICS, run_metric  # noqa: E402
from make_breadth_fixtures import calibrate_batchnorm  # noqa: E402
from make_model_fixtures import save_file, state_dict_f32  # noqa: E402
from ties import TIE_EPS, tie_mask  # noqa: E402

# Every method whose map depends on the target (FinerCAM compares classes: classifiers only; EigenCAM, FEM,
# KPCA-CAM and RandomCAM read no target). ScoreCAM and AblationCAM (a forward pass per channel) only for the first
# case of one model per target kind (GRADIENT_FREE_MODELS): their target enters through the same scores as every
# other case's.
METHODS = ["gradcam", "gradcampp", "xgradcam", "hirescam", "layercam", "gradcam_elementwise", "eigengradcam",
           "scorecam", "ablationcam"]
GRADIENT_FREE = {"scorecam", "ablationcam"}
GRADIENT_FREE_MODELS = {"vit_binary", "fcn", "resnet18_embed"}
# Where an image has a tie: NUDGES runs from the input scaled by 1 + NUDGE * U(-1, 1) per element.
NUDGE, NUDGES = 1e-6, 2
# The same cases also get pytorch-grad-cam's six metrics of its Grad-CAM maps, ROAD noise 0.
IMAGES = ["chelsea", "coffee"]
CNN_SIZE = (96, 128)
VIT_SIZE = (224, 224)
SEG_CLASSES = 5
SCORECAM_BATCH = 64
ABLATION_BATCH = 32


class SimilarityToConceptTarget:
    """grad-cam 1.5.7's embedding target, as its tutorial defines it ("Pixel Attribution for embeddings"; the
    package itself does not ship it)."""

    def __init__(self, features):
        self.features = features

    def __call__(self, model_output):
        cos = torch.nn.CosineSimilarity(dim=0)
        return cos(model_output, self.features)


class FCN(torch.nn.Module):
    """A segmentation head on a ResNet-18 trunk, upsampled to the input as torchvision's FCN does."""

    def __init__(self):
        super().__init__()
        self.backbone = timm.create_model("resnet18", pretrained=False, num_classes=0, global_pool="")
        self.classifier = torch.nn.Conv2d(512, SEG_CLASSES, 1)

    def forward(self, x):
        y = self.classifier(self.backbone(x))
        return F.interpolate(y, size=x.shape[-2:], mode="bilinear", align_corners=False)


class TorchvisionFCN(torchvision.models.segmentation.FCN):
    """torchvision's FCN, its "out" map returned as a tensor (as grad-cam's segmentation tutorial wraps it)."""

    def forward(self, x):
        return super().forward(x)["out"]


def torchvision_fcn():
    from torchvision.models._utils import IntermediateLayerGetter
    from torchvision.models.resnet import Bottleneck, ResNet
    from torchvision.models.segmentation.fcn import FCNHead

    trunk = ResNet(Bottleneck, [3, 4, 6, 3], width_per_group=16, replace_stride_with_dilation=[False, True, True])
    return TorchvisionFCN(IntermediateLayerGetter(trunk, {"layer4": "out"}), FCNHead(2048, SEG_CLASSES))


# Models given only as a state dict, for candle's zoo.
STATE_DICT_ONLY = {"fcn_resnet50"}


def timm_arch(key):
    """The architecture name candle's zoo reads the model's state dict as; None for the FCN, which it has not."""
    if key == "fcn":
        return None
    if key in STATE_DICT_ONLY:
        return key
    return "resnet18" if key.startswith("resnet18") else "vit_tiny_patch16_224"


def build(key, x):
    torch.manual_seed(0)
    if key == "fcn":
        return FCN().eval()
    if key == "fcn_resnet50":
        model = torchvision_fcn()
        calibrate_batchnorm(model, x)
        return model.eval()
    return timm.create_model(timm_arch(key), pretrained=False, num_classes=1 if key.endswith("binary") else 0).eval()


def export(key, model, x, out, cnn):
    """Writes the model's files; returns the manifest's `files`."""
    files = {"traced": f"{key}.traced.pt", "legacy_onnx": f"{key}.legacy.onnx", "dynamo_onnx": f"{key}.dynamo.onnx"}
    arch = timm_arch(key)
    if arch is not None:
        files["safetensors"] = f"{key}.safetensors"
        save_file(state_dict_f32(model), os.path.join(out, files["safetensors"]),
                  metadata={"format": "pt", "arch": arch})
    if key in STATE_DICT_ONLY:
        return {"safetensors": files["safetensors"]}
    with torch.no_grad():
        expected = model(x).numpy()
        traced = torch.jit.trace(model, x[:1], check_trace=False)
    traced.save(os.path.join(out, f"{key}.traced.pt"))
    with torch.no_grad():
        np.testing.assert_allclose(traced(x).numpy(), expected, rtol=1e-4, atol=1e-4)
    axes = {0: "batch", 2: "height", 3: "width"} if cnn else {0: "batch"}
    out_axes = {0: "batch", 2: "height", 3: "width"} if key == "fcn" else {0: "batch"}
    torch.onnx.export(model, (x,), os.path.join(out, f"{key}.legacy.onnx"), dynamo=False, opset_version=17,
                      input_names=["input"], output_names=["output"],
                      dynamic_axes={"input": axes, "output": out_axes})
    path = os.path.join(out, f"{key}.dynamo.onnx")
    for stale in (path, path + ".data"):
        if os.path.exists(stale):
            os.remove(stale)
    batch = torch.export.Dim("batch", min=1, max=1024)
    shapes = {"x": {0: batch}}
    if cnn:
        shapes["x"].update({2: torch.export.Dim("height", min=32, max=2048),
                            3: torch.export.Dim("width", min=32, max=2048)})
    program = torch.onnx.export(model, (x,), dynamo=True, dynamic_shapes=shapes, input_names=["input"],
                                output_names=["output"])
    program.save(path, external_data=True)
    return files


def run(method, model, x, layer, targets, vit):
    """grad-cam's final map and its get_cam_image output at `layer` for `targets`."""
    reshape = token_reshape(1, 14, 14) if vit else None
    cam = _make(method, model, [model.get_submodule(layer)], reshape, vit, SCORECAM_BATCH, ABLATION_BATCH)
    raws = []
    inner = _base(cam).get_cam_image

    def recording(*args, **kwargs):
        r = inner(*args, **kwargs)
        raws.append(np.float32(r))
        return r

    _base(cam).get_cam_image = recording
    result = cam(input_tensor=x, targets=targets)
    _base(cam).activations_and_grads.release()
    assert len(raws) == 1
    return np.float32(result), raws[0]


def double_targets(targets):
    """`targets` for a float64 model (a concept vector must match the embedding's dtype)."""
    return [SimilarityToConceptTarget(t.features.double()) if isinstance(t, SimilarityToConceptTarget) else t
            for t in targets]


def relative_diffs(a, b):
    """Per image: max |a - b| relative to max |b|."""
    return [float(np.abs(np.float64(x) - y).max() / max(float(np.abs(y).max()), 1e-30)) for x, y in zip(a, b)]


def main(out):
    t_start = time.time()
    os.makedirs(out, exist_ok=True)
    manifest_path = os.path.join(out, "manifest.json")
    if os.path.exists(manifest_path):
        os.remove(manifest_path)
    inputs = {}
    for name, size in (("cnn", CNN_SIZE), ("vit", VIT_SIZE)):
        batch = np.stack([preprocess(os.path.join(ASSETS, "images", f"{i}.png"), size) for i in IMAGES])
        np.save(os.path.join(out, f"input_{name}.npy"), batch)
        inputs[name] = torch.from_numpy(batch)

    # The segmentation mask: a rectangle in the output (the input's size), as a PNG and as weights.
    mask = np.zeros(CNN_SIZE, dtype=np.float32)
    mask[20:70, 30:110] = 1.0
    np.save(os.path.join(out, "mask.npy"), mask)
    Image.fromarray(np.uint8(mask * 255)).save(os.path.join(out, "mask.png"))

    manifest = {"methods": METHODS, "images": IMAGES, "scorecam_batch": SCORECAM_BATCH,
                "ablation_batch_size": ABLATION_BATCH, "models": {}}
    specs = {
        "resnet18_binary": ("cnn", "layer4"),
        "vit_binary": ("vit", "blocks.11.norm1"),
        "fcn": ("cnn", "backbone.layer4"),
        "fcn_resnet50": ("cnn", "backbone.layer4"),
        "resnet18_embed": ("cnn", "layer4"),
        "vit_embed": ("vit", "blocks.11.norm1"),
    }
    for key, (kind, layer) in specs.items():
        t0 = time.time()
        x = inputs[kind]
        model = build(key, x)
        vit = kind == "vit"
        files = export(key, model, x, out, cnn=not vit)
        print(f"  {key} exports: {time.time() - t0:.1f}s", flush=True)
        with torch.no_grad():
            output = model(x).numpy()
        # Images whose gradient at the layer depends on a ReLU unit within float noise of its kink
        # (tools/ties.py): another correct implementation may flip it.
        kink_ties = tie_mask(model, x, model.get_submodule(layer))[0].reshape(len(x), -1).any(axis=1)
        cases = {}
        model64 = None
        if key.endswith("binary"):
            predicted = [int(v > 0) for v in output[:, 0]]
            cases["predicted"] = {"target": "binary", "classes": predicted}
            cases["opposite"] = {"target": "binary", "classes": [1 - c for c in predicted]}
        elif key.startswith("fcn"):
            cases["mask"] = {"target": "segmentation", "classes": [1, 1], "mask": "mask.npy"}
            # The class that wins most pixels of the first image, explained where it wins.
            winner = int(np.bincount(output[0].argmax(axis=0).ravel(), minlength=SEG_CLASSES).argmax())
            cases["argmax"] = {"target": "segmentation", "classes": [winner, winner]}
        else:
            # The concept: the embedding of the first image mirrored (a view of the same cat).
            with torch.no_grad():
                concept = model(torch.flip(x[:1], dims=[3]))[0].numpy()
            np.save(os.path.join(out, f"concept_{key}.npy"), concept)
            cases["concept"] = {"target": "similarity", "classes": [0, 0], "concept": f"concept_{key}.npy"}
        for index, (case, spec) in enumerate(cases.items()):
            full = index == 0 and key in GRADIENT_FREE_MODELS
            spec["methods"] = [m for m in METHODS if full or m not in GRADIENT_FREE]
            if spec["target"] == "binary":
                targets = [BinaryClassifierOutputTarget(c) for c in spec["classes"]]
            elif spec["target"] == "segmentation":
                if "mask" in spec:
                    masks = [mask, mask]
                else:
                    masks = [np.float32(o.argmax(axis=0) == c) for o, c in zip(output, spec["classes"])]
                targets = [SemanticSegmentationTarget(c, m) for c, m in zip(spec["classes"], masks)]
            else:
                targets = [SimilarityToConceptTarget(torch.from_numpy(concept)) for _ in IMAGES]
            spec["scores"] = [float(t(torch.from_numpy(o))) for t, o in zip(targets, output)]
            spec["ties"] = [bool(v) for v in kink_ties]
            if spec["target"] == "segmentation" and "mask" not in spec:
                # The argmax region's edge: a pixel where the class and the best other one are within
                # float noise may fall on either side in another implementation (upsampled class maps
                # cross smoothly, so some pixel usually does).
                for b, o in enumerate(output):
                    c = spec["classes"][b]
                    others = np.delete(o, c, axis=0).max(axis=0)
                    near = np.abs(o[c] - others) <= TIE_EPS * np.abs(o).max()
                    spec["ties"][b] |= bool(near.any())
            folder = os.path.join(out, key, case)
            os.makedirs(folder, exist_ok=True)
            for method in spec["methods"]:
                t1 = time.time()
                final, raw = run(method, model, x, layer, targets, vit)
                np.save(os.path.join(folder, f"cam_{method}.npy"), final)
                np.save(os.path.join(folder, f"raw_{method}.npy"), raw)
                if any(spec["ties"]) and method not in GRADIENT_FREE:
                    # How far float rounding alone moves grad-cam's maps at this tie: the same maps
                    # computed in float64, and in float32 from the input nudged by NUDGE (as
                    # `gradcam export --check` measures noise), the largest of these. Which
                    # near-kink units flip depends on the CPU's kernels and the order of sums
                    # (fcn_resnet50's HiResCAM, image 0: 2.6% in float64 on one machine, 0.004%
                    # on another, 1.9-3.9% under nudges); the tests allow twice this where the
                    # image has a tie.
                    if model64 is None:
                        model64 = copy.deepcopy(model).double()
                    final64, raw64 = run(method, model64, x.double(), layer, double_targets(targets), vit)
                    noise = {"raw": relative_diffs(raw64, raw), "cam": relative_diffs(final64, final)}
                    draws = torch.Generator().manual_seed(0)
                    for _ in range(NUDGES):
                        nudged = x * (1 + NUDGE * (2 * torch.rand(x.shape, generator=draws) - 1))
                        final_n, raw_n = run(method, model, nudged, layer, targets, vit)
                        for stage, diffs in (("raw", relative_diffs(raw_n, raw)), ("cam", relative_diffs(final_n, final))):
                            noise[stage] = [max(a, b) for a, b in zip(noise[stage], diffs)]
                    spec.setdefault("tie_noise", {})[method] = noise
                print(f"  {key} {case} {method}: {time.time() - t1:.1f}s", flush=True)
                if method == "gradcam" and full:
                    t1 = time.time()
                    spec["metrics"] = {name: run_metric(name, x, final, targets, model, 0.0, 0).tolist()
                                       for name in METRICS}
                    print(f"  {key} {case} metrics: {time.time() - t1:.1f}s", flush=True)
        manifest["models"][key] = {"input": f"input_{kind}.npy", "layer": layer, "output_shape": list(output.shape[1:]),
                                   "files": files, "cases": cases}
        if timm_arch(key) is not None:
            manifest["models"][key]["arch"] = timm_arch(key)
        print(f"{key}: {time.time() - t0:.1f}s", flush=True)
    with open(manifest_path, "w") as f:
        json.dump(manifest, f, indent=1)
    print(f"target fixtures: {time.time() - t_start:.1f}s", flush=True)


if __name__ == "__main__":
    main(sys.argv[1])
