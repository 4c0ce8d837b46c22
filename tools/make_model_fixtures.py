#!/usr/bin/env python3
"""Generates the model fixtures the backend tests compare against (not committed; scripts/make-fixtures runs it).

  python tools/make_model_fixtures.py OUT_DIR

For each model key (resnet18, vit_tiny: timm random init after torch.manual_seed(0); lite0: timm
tf_efficientnet_lite0 with assets/models/tf_efficientnet_lite0.safetensors) it writes to OUT_DIR:
  <key>.safetensors                 timm state-dict names, float32 (no num_batches_tracked)
  <key>.traced.pt                   torch.jit.trace on a (1, 3, 224, 224) input
  <key>.scripted.pt                 torch.jit.script (absent when timm's model does not script; see manifest)
  <key>.legacy.onnx                 torch.onnx.export(dynamo=False, opset 17), input "input", output "logits",
                                    dynamic batch
  <key>.dynamo.onnx(.data)          torch.onnx.export(dynamo=True), dynamic batch, weights as external data
  <key>.dynamo-plain.onnx(.data)    the same with optimize=False: BatchNorms kept (not folded into the
                                    convolutions), constants as Constant nodes, CastLike
  <key>/<layer>/logits.npy          (2, 1000) f32
  <key>/<layer>/classes.npy         (2,) int64 top-1
  <key>/<layer>/activations.npy     native layout: (2, C, h, w) for CNNs, (2, N, D) for ViT tokens
  <key>/<layer>/gradients.npy       d logits[b, top1_b] / d activation, same layout (PyTorch autograd)
  <key>/<layer>/ties.npy            bool, same layout: gradient elements that depend on a unit within float
                                    noise of a ReLU/ReLU6/... kink after the layer (tools/ties.py)
  <key>/<layer>/cam_<m>.npy         (2, 224, 224) grad-cam 1.5.7's output for method m, top-1 targets
                                    (eigen methods with the sign rule of tools/gradcam_ref.py; RandomCAM
                                    after np.random.seed(0); FinerCAM with alpha 1)
  <key>/<layer>/cam_<m>_rank1.npy   the same for the methods in RANK1_METHODS, explaining each image's
                                    runner-up class (manifest: layer "rank1")
  <key>/<layer>/cam_<m>_<variant>.npy
                                    with grad-cam's eigen_smooth and/or aug_smooth (VARIANTS, at
                                    VARIANT_LAYERS; manifest: layer "variants", with the flags, the class
                                    rank and the classes)
and input.npy (2, 3, 224, 224): chelsea and coffee, preprocessed as in tools/common.py, plus manifest.json.

ScoreCAM/AblationCAM on 224² need one forward per channel and image; to keep the run short on 2 CPU cores the
expected outputs for them are written only for the layers in GRADIENT_FREE_LAYERS (all layers with
GRADCAM_FIXTURES_FULL=1); the manifest lists what was skipped and why. Idempotent: every run rewrites the same
files with the same contents.
"""
import json
import os
import sys
import time

import numpy as np
import timm
import torch
from safetensors.torch import load_file, save_file

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import ASSETS, preprocess  # noqa: E402
from gradcam_ref import (FINER_ALPHA, METHODS, RANDOM_SEED, capture_native, ranked_classes,  # noqa: E402
                         run_methods, token_reshape)
from ties import TIE_EPS, tie_mask  # noqa: E402

LITE0_WEIGHTS = os.path.join(ASSETS, "models", "tf_efficientnet_lite0.safetensors")
MODELS = {
    "resnet18": {"arch": "resnet18", "layers": ["layer4", "layer4.1", "layer3"]},
    "vit_tiny": {"arch": "vit_tiny_patch16_224", "layers": ["blocks.11.norm1"], "prefix_tokens": 1,
                 "grid": [14, 14]},
    "lite0": {"arch": "tf_efficientnet_lite0", "layers": ["blocks.6", "bn2"], "weights": LITE0_WEIGHTS},
}
GRADIENT_FREE = {"scorecam", "ablationcam"}
GRADIENT_FREE_LAYERS = {"resnet18": ["layer4"], "vit_tiny": ["blocks.11.norm1"], "lite0": ["blocks.6"]}
SCORECAM_BATCH = 64
ABLATION_BATCH = 32  # grad-cam's default; the ViT ablation value depends on it (tools/README.md)
IMAGES = ["chelsea", "coffee"]
# Methods also explained for each image's runner-up class (cheap: gradient methods only).
RANK1_METHODS = ["gradcam", "finercam"]
# grad-cam's smoothing flags, per variant: cam_<m>_<variant>.npy for each method listed, for the class of
# `rank` (0: top-1) of the unaugmented input, at one layer per model (VARIANT_LAYERS; CI time: aug_smooth is 6
# passes).
# eigen_smooth: every method it changes (ScoreCAM and AblationCAM where the layer has them: GRADIENT_FREE_LAYERS,
# so vit_tiny's and lite0's). aug_smooth's loop is the same for every method: one of each kind of rule (channel
# weights, element-wise, eigen, activation weights, kernel projection) plus the two with their own pass logic
# (RandomCAM's random stream, FinerCAM's comparison classes).
VARIANTS = {
    "eigensmooth": {"eigen_smooth": True, "methods": ["gradcam", "gradcampp", "xgradcam", "hirescam", "layercam",
                                                      "gradcam_elementwise", "finercam", "randomcam", "scorecam",
                                                      "ablationcam"]},
    "augsmooth": {"aug_smooth": True, "methods": ["gradcam", "hirescam", "eigencam", "fem", "kpcacam", "finercam",
                                                  "randomcam"]},
    "augsmooth_eigensmooth": {"aug_smooth": True, "eigen_smooth": True, "methods": ["gradcam"]},
    "augsmooth_rank1": {"aug_smooth": True, "rank": 1, "methods": ["gradcam", "finercam"]},
}
VARIANT_LAYERS = {"resnet18": "layer3", "vit_tiny": "blocks.11.norm1", "lite0": "blocks.6"}


def log(msg):
    print(msg, flush=True)


def build(key):
    spec = MODELS[key]
    torch.manual_seed(0)
    model = timm.create_model(spec["arch"], pretrained=False)
    if "weights" in spec:
        missing, unexpected = model.load_state_dict(load_file(spec["weights"]), strict=False)
        assert not unexpected and all(k.endswith("num_batches_tracked") for k in missing), (missing, unexpected)
    return model.eval()


def state_dict_f32(model):
    return {k: v.detach().to(torch.float32).contiguous() for k, v in model.state_dict().items()
            if not k.endswith("num_batches_tracked")}


def export_all(key, model, x, out):
    files, notes = {}, {}
    path = os.path.join(out, f"{key}.safetensors")
    save_file(state_dict_f32(model), path, metadata={"format": "pt", "arch": MODELS[key]["arch"]})
    files["safetensors"] = os.path.basename(path)

    with torch.no_grad():
        expected = model(x).numpy()
        traced = torch.jit.trace(model, x[:1], check_trace=False)
    path = os.path.join(out, f"{key}.traced.pt")
    traced.save(path)
    files["traced"] = os.path.basename(path)
    with torch.no_grad():
        np.testing.assert_allclose(traced(x).numpy(), expected, rtol=1e-4, atol=1e-4)

    path = os.path.join(out, f"{key}.scripted.pt")
    try:
        scripted = torch.jit.script(model)
        with torch.no_grad():
            np.testing.assert_allclose(scripted(x).numpy(), expected, rtol=1e-4, atol=1e-4)
        scripted.save(path)
        files["scripted"] = os.path.basename(path)
    except Exception as e:  # timm does not promise scriptability for every model
        if os.path.exists(path):
            os.remove(path)
        files["scripted"] = None
        notes["scripted"] = f"torch.jit.script failed: {type(e).__name__}: {str(e).splitlines()[0][:300]}"

    files.update(export_onnx(model, x, os.path.join(out, key)))
    notes["onnx_check"] = check_onnx(out, files, x, expected)
    return files, notes


def export_onnx(model, x, stem):
    """STEM.legacy.onnx and STEM.dynamo.onnx(.data), both with a dynamic batch; returns the manifest's file names."""
    files = {}
    path = stem + ".legacy.onnx"
    torch.onnx.export(model, (x,), path, dynamo=False, opset_version=17, input_names=["input"],
                      output_names=["logits"], dynamic_axes={"input": {0: "batch"}, "logits": {0: "batch"}})
    files["legacy_onnx"] = os.path.basename(path)

    for suffix, optimize in (("dynamo", True), ("dynamo-plain", False)):
        path = f"{stem}.{suffix}.onnx"
        for stale in (path, path + ".data"):
            if os.path.exists(stale):
                os.remove(stale)
        batch = torch.export.Dim("batch", min=1, max=1024)
        program = torch.onnx.export(model, (x,), dynamo=True, input_names=["input"], output_names=["logits"],
                                    dynamic_shapes=({0: batch},), verbose=False, optimize=optimize)
        program.save(path, external_data=True)
        kind = suffix.replace("-", "_") + "_onnx"
        files[kind] = os.path.basename(path)
        files[kind + "_data"] = os.path.basename(path) + ".data"
        assert os.path.exists(path + ".data"), "dynamo export did not write external data"
    return files


def check_onnx(out, files, x, expected):
    """Runs the ONNX files in onnxruntime (batch 2) and inspects the dynamo file's name-scope metadata."""
    import onnx
    import onnxruntime as ort

    report = {}
    for kind in ("legacy_onnx", "dynamo_onnx", "dynamo_plain_onnx"):
        sess = ort.InferenceSession(os.path.join(out, files[kind]), providers=["CPUExecutionProvider"])
        got = sess.run(None, {sess.get_inputs()[0].name: x.numpy()})[0]
        report[kind + "_max_abs_diff"] = float(np.abs(got - expected).max())
        assert report[kind + "_max_abs_diff"] < 1e-3, report
    proto = onnx.load(os.path.join(out, files["dynamo_onnx"]), load_external_data=False)
    nodes = list(proto.graph.node)
    with_scopes = [n for n in nodes if any(p.key == "pkg.torch.onnx.name_scopes" for p in n.metadata_props)]
    report["dynamo_nodes"] = len(nodes)
    report["dynamo_nodes_with_name_scopes"] = len(with_scopes)
    report["dynamo_opset"] = max(o.version for o in proto.opset_import if o.domain in ("", "ai.onnx"))
    return report


def input_batch():
    return torch.from_numpy(np.stack([preprocess(os.path.join(ASSETS, "images", f"{n}.png")) for n in IMAGES]))


def main():
    if len(sys.argv) != 2:
        raise SystemExit(__doc__)
    torch.set_num_threads(int(os.environ.get("GRADCAM_FIXTURES_THREADS", "2")))
    out = os.path.abspath(sys.argv[1])
    os.makedirs(out, exist_ok=True)
    full = os.environ.get("GRADCAM_FIXTURES_FULL") == "1"
    t_start = time.time()
    x = input_batch()
    np.save(os.path.join(out, "input.npy"), x.numpy())
    manifest = {
        "generator": "tools/make_model_fixtures.py",
        "versions": {"torch": torch.__version__, "timm": timm.__version__, "grad-cam": "1.5.7",
                     "numpy": np.__version__},
        "input": {"file": "input.npy", "shape": list(x.shape), "images": [f"assets/images/{n}.png" for n in IMAGES],
                  "preprocessing": "RGB/255 -> cv2.resize (224,224) INTER_LINEAR -> (x-mean)/std, "
                                   "mean (0.485,0.456,0.406), std (0.229,0.224,0.225) -> CHW"},
        "methods": METHODS,
        "scorecam_batch_size": SCORECAM_BATCH,
        "ablation_batch_size": ABLATION_BATCH,
        "tie_eps": TIE_EPS,
        "random_seed": RANDOM_SEED,
        "finer_alpha": FINER_ALPHA,
        "eigen_sign_rule": "v . mean_row(uncentred matrix) >= 0, ties: largest-|v| component positive",
        "models": {},
    }
    for key, spec in MODELS.items():
        t0 = time.time()
        model = build(key)
        files, notes = export_all(key, model, x, out)
        log(f"[{key}] exports in {time.time() - t0:.1f}s: {notes}")
        entry = {"arch": spec["arch"], "weights": "assets/models/tf_efficientnet_lite0.safetensors"
                 if "weights" in spec else "random init, torch.manual_seed(0)",
                 "files": files, "notes": notes, "layers": {}}
        for k in ("prefix_tokens", "grid"):
            if k in spec:
                entry[k] = spec[k]
        reshape = token_reshape(spec["prefix_tokens"], *spec["grid"]) if "grid" in spec else None

        for name in spec["layers"]:
            t1 = time.time()
            layer = model.get_submodule(name)
            logits, classes, act, grad = capture_native(model, x, [layer])
            d = os.path.join(out, key, name)
            os.makedirs(d, exist_ok=True)
            np.save(os.path.join(d, "logits.npy"), logits)
            np.save(os.path.join(d, "classes.npy"), classes)
            np.save(os.path.join(d, "activations.npy"), act[0])
            np.save(os.path.join(d, "gradients.npy"), grad[0])
            ties, tie_units = tie_mask(model, x, layer)
            np.save(os.path.join(d, "ties.npy"), ties)
            gradient_free_here = full or name in GRADIENT_FREE_LAYERS.get(key, [])
            methods = [m for m in METHODS if gradient_free_here or m not in GRADIENT_FREE]
            top1, results = run_methods(model, x, [layer], methods=methods, reshape_transform=reshape,
                                        vit="grid" in spec, scorecam_batch=SCORECAM_BATCH,
                                        ablation_batch=ABLATION_BATCH, log=lambda s: log(f"[{key}/{name}]{s}"))
            assert top1 == classes.tolist()
            for f in os.listdir(d):
                if f.startswith("cam_"):
                    os.remove(os.path.join(d, f))
            for m in methods:
                np.save(os.path.join(d, f"cam_{m}.npy"), results[m]["cam"])
            rank1 = ranked_classes(logits, 1)
            _, rank1_results = run_methods(model, x, [layer], methods=RANK1_METHODS, reshape_transform=reshape,
                                           vit="grid" in spec, classes=rank1,
                                           log=lambda s: log(f"[{key}/{name} rank 1]{s}"))
            for m in RANK1_METHODS:
                np.save(os.path.join(d, f"cam_{m}_rank1.npy"), rank1_results[m]["cam"])
            variants = {}
            for variant, vspec in (VARIANTS.items() if name == VARIANT_LAYERS[key] else []):
                vspec = {**vspec, "methods": [m for m in vspec["methods"] if m in methods]}
                rank = vspec.get("rank", 0)
                vclasses = ranked_classes(logits, rank)
                flags = {"eigen_smooth": vspec.get("eigen_smooth", False), "aug_smooth": vspec.get("aug_smooth", False)}
                _, vresults = run_methods(model, x, [layer], methods=vspec["methods"], reshape_transform=reshape,
                                          vit="grid" in spec, classes=vclasses, scorecam_batch=SCORECAM_BATCH,
                                          ablation_batch=ABLATION_BATCH,
                                          log=lambda s: log(f"[{key}/{name} {variant}]{s}"), **flags)
                for m in vspec["methods"]:
                    np.save(os.path.join(d, f"cam_{m}_{variant}.npy"), vresults[m]["cam"])
                variants[variant] = {**flags, "rank": rank, "classes": vclasses, "methods": vspec["methods"]}
            layer_entry = {
                "dir": f"{key}/{name}",
                "layout": "tokens" if "grid" in spec else "spatial",
                "activation_shape": list(act[0].shape),
                "classes": classes.tolist(),
                "files": sorted(os.listdir(d)),
                "methods": methods,
                "skipped": {m: "gradient-free method on a layer outside GRADIENT_FREE_LAYERS (CI time budget); "
                               "set GRADCAM_FIXTURES_FULL=1 to generate it"
                            for m in METHODS if m not in methods},
                "rank1": {"classes": rank1, "methods": RANK1_METHODS},
                "variants": variants,
                "tie_units": tie_units,
                "tie_elements": int(ties.sum()),
                "eigen_sign_flipped": {m: results[m]["flipped"][0] for m in ("eigencam", "eigengradcam")},
            }
            entry["layers"][name] = layer_entry
            log(f"[{key}/{name}] done in {time.time() - t1:.1f}s, classes {classes.tolist()}")
        manifest["models"][key] = entry
    with open(os.path.join(out, "manifest.json"), "w") as f:
        json.dump(manifest, f, indent=1, sort_keys=True)
        f.write("\n")
    log(f"all model fixtures in {time.time() - t_start:.1f}s -> {out}")


if __name__ == "__main__":
    main()
