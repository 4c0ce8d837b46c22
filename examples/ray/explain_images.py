#!/usr/bin/env python3
"""Explain a folder of images with a `gradcam export` explainer on Ray Data: plain `onnxruntime` in a pool of
actors, no gradcam-rs code.

  python examples/ray/explain_images.py EXPLAINER.onnx IMAGES_DIR OUT_DIR [--class N] [--batch-size 8]
                                        [--actors 2] [--cpus-per-actor 0.5] [--num-cpus 2] [--overlay]

For each image: OUT_DIR/<file name>.<cam output>.npy (photo.jpg.cam_gradcam.npy), the (H, W) float32 map in
[0, 1] at the explainer's input size, for every `cam_<method>` output of the explainer (and a .png of it over the
photo with --overlay), plus one
line per image in OUT_DIR/results.jsonl (file, class explained, its logit). `ray.init(num_cpus=...)` starts a
local cluster; to go past one machine, start Ray on the nodes and call `run()` with `ray.init(address="auto")`
instead: the pipeline is the same.

Preprocessing is the ImageNet one timm/torchvision use (RGB, bilinear resize to the explainer's input size,
/255, mean/std normalisation); adapt `preprocess` to your model's.
"""
import argparse
import json
import os

import numpy as np
import onnxruntime as ort
from PIL import Image

MEAN = np.array([0.485, 0.456, 0.406], dtype=np.float32)
STD = np.array([0.229, 0.224, 0.225], dtype=np.float32)


def preprocess(image, size):
    """An (h, w, 3) uint8 RGB image -> (3, H, W) float32 normalised, size = (H, W)."""
    resized = Image.fromarray(np.asarray(image, dtype=np.uint8)).resize((size[1], size[0]), Image.BILINEAR)
    x = (np.asarray(resized, dtype=np.float32) / np.float32(255.0) - MEAN) / STD
    return np.ascontiguousarray(x.transpose(2, 0, 1))


def input_size(session):
    """(H, W) the explainer takes (fixed at export)."""
    shape = session.get_inputs()[0].shape
    return int(shape[2]), int(shape[3])


class Explainer:
    """A Ray Data callable class: one ONNX Runtime session per actor, reused for every batch."""

    def __init__(self, path, class_index=-1, threads=1):
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        self.session = ort.InferenceSession(path, options, providers=["CPUExecutionProvider"])
        self.size = input_size(self.session)
        self.maps = [o.name for o in self.session.get_outputs() if o.name.startswith("cam_")]
        self.class_index = class_index

    def __call__(self, batch):
        x = np.stack([preprocess(image, self.size) for image in batch["image"]])
        classes = np.full(len(x), self.class_index, dtype=np.int64)
        outputs = self.session.run(["logits"] + self.maps, {"input": x, "class": classes})
        logits, maps = outputs[0], outputs[1:]
        explained = np.where(classes < 0, logits.argmax(axis=1), classes)
        result = {"path": batch["path"], "class": explained,
                  "logit": logits[np.arange(len(x)), explained].astype(np.float32)}
        for name, m in zip(self.maps, maps):
            result[name] = m
        return result


def overlay(path, cam, size, out):
    """The photo at the explainer's size with the map laid over it (a simple blue-to-red colormap)."""
    photo = np.asarray(Image.open(path).convert("RGB").resize((size[1], size[0]), Image.BILINEAR), np.float32)
    heat = np.stack([np.clip(1.5 - np.abs(4 * cam - k), 0, 1) for k in (3, 2, 1)], axis=-1) * 255
    Image.fromarray((0.5 * photo + 0.5 * heat).astype(np.uint8)).save(out)


def run(explainer, images, out, class_index=-1, batch_size=8, actors=2, cpus_per_actor=1.0, write_overlays=False):
    """Explains every image under `images` on the current Ray cluster; returns the results.jsonl rows. Leave CPUs
    for reading the images: `actors * cpus_per_actor` below the cluster's CPUs (else reading waits forever)."""
    import ray

    os.makedirs(out, exist_ok=True)
    size = input_size(ort.InferenceSession(explainer, providers=["CPUExecutionProvider"]))
    dataset = ray.data.read_images(images, mode="RGB", include_paths=True)
    explained = dataset.map_batches(Explainer, fn_constructor_args=(os.path.abspath(explainer), class_index),
                                    batch_size=batch_size, compute=ray.data.ActorPoolStrategy(size=actors),
                                    num_cpus=cpus_per_actor)
    rows = []
    for batch in explained.iter_batches(batch_size=batch_size, batch_format="numpy"):
        for i, path in enumerate(batch["path"]):
            name = os.path.basename(path)  # with its extension: photo.png and photo.jpg are two images
            row = {"file": str(path), "class": int(batch["class"][i]), "logit": float(batch["logit"][i]), "maps": {}}
            for key in batch:
                if key.startswith("cam_"):
                    file = os.path.join(out, f"{name}.{key}.npy")
                    np.save(file, batch[key][i])
                    row["maps"][key] = file
                    if write_overlays:
                        overlay(path, batch[key][i], size, os.path.join(out, f"{name}.{key}.png"))
            rows.append(row)
    rows.sort(key=lambda r: r["file"])
    with open(os.path.join(out, "results.jsonl"), "w") as f:
        for row in rows:
            f.write(json.dumps(row) + "\n")
    return rows


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("explainer")
    parser.add_argument("images")
    parser.add_argument("out")
    parser.add_argument("--class", dest="class_index", type=int, default=-1, help="class to explain (-1: top-1)")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--actors", type=int, default=2, help="ONNX Runtime sessions running at once")
    parser.add_argument("--cpus-per-actor", type=float, default=0.5)
    parser.add_argument("--num-cpus", type=int, default=2, help="CPUs of the local Ray cluster")
    parser.add_argument("--overlay", action="store_true", help="also write the maps over the photos as PNG")
    args = parser.parse_args()
    import ray

    ray.init(num_cpus=args.num_cpus)
    try:
        rows = run(args.explainer, args.images, args.out, args.class_index, args.batch_size, args.actors,
                   args.cpus_per_actor, args.overlay)
    finally:
        ray.shutdown()
    print(f"explained {len(rows)} images -> {args.out}")


if __name__ == "__main__":
    main()
