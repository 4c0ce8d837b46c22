#!/usr/bin/env python3
"""Asks a Triton server for Grad-CAM maps of one image (UNTESTED: no Triton server could run where this was
written; see README.md for what was checked).

  pip install "tritonclient[http]" pillow numpy
  python examples/triton/client.py photo.jpg [--url localhost:8000] [--model resnet50_gradcam] [--class -1]

Prints the class explained and writes photo.<cam output>.npy, the (224, 224) map in [0, 1], for every
cam_<method> output of the model.
"""
import argparse
import os

import numpy as np
import tritonclient.http as http
from PIL import Image

MEAN = np.array([0.485, 0.456, 0.406], dtype=np.float32)
STD = np.array([0.229, 0.224, 0.225], dtype=np.float32)


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("image")
    parser.add_argument("--url", default="localhost:8000")
    parser.add_argument("--model", default="resnet50_gradcam")
    parser.add_argument("--class", dest="class_index", type=int, default=-1)
    args = parser.parse_args()
    client = http.InferenceServerClient(args.url)
    config = client.get_model_config(args.model)
    _, h, w = config["input"][0]["dims"]
    maps = [o["name"] for o in config["output"] if o["name"].startswith("cam_")]

    rgb = Image.open(args.image).convert("RGB").resize((int(w), int(h)), Image.BILINEAR)
    x = ((np.asarray(rgb, np.float32) / 255.0 - MEAN) / STD).transpose(2, 0, 1)[None]
    image = http.InferInput("input", list(x.shape), "FP32")
    image.set_data_from_numpy(np.ascontiguousarray(x))
    cls = http.InferInput("class", [1, 1], "INT64")
    cls.set_data_from_numpy(np.array([[args.class_index]], dtype=np.int64))
    outputs = [http.InferRequestedOutput(n) for n in ["logits"] + maps]
    result = client.infer(args.model, [image, cls], outputs=outputs)

    logits = result.as_numpy("logits")[0]
    explained = int(logits.argmax()) if args.class_index < 0 else args.class_index
    print(f"class {explained} (logit {logits[explained]:.3f})")
    stem = os.path.splitext(args.image)[0]
    for name in maps:
        np.save(f"{stem}.{name}.npy", result.as_numpy(name)[0])
        print(f"wrote {stem}.{name}.npy")


if __name__ == "__main__":
    main()
