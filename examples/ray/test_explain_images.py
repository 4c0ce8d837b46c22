#!/usr/bin/env python3
"""Test of the Ray example: a few images explained on a local Ray cluster (`ray.init(num_cpus=2)`) must give
the maps that plain `onnxruntime` gives for the same images in one direct run.

  python examples/ray/test_explain_images.py --gradcam target/debug/gradcam [--fixtures DIR] [--out DIR]
  python examples/ray/test_explain_images.py --explainer EXPLAINER.onnx      (an explainer you exported)

With --gradcam it first exports the fixtures' Lite0 (dynamo export, weights in .onnx.data) with GradCAM and
LayerCAM at `blocks.6`. The images: the two shipped photos and three variants (mirrored, cropped, a JPEG), so
Ray reads several files of several sizes and formats. Exits non-zero on any difference over 1e-5, a missing
image or an empty map.
"""
import argparse
import os
import shutil
import subprocess
import sys
import tempfile

import numpy as np
import onnxruntime as ort
from PIL import Image

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from explain_images import input_size, preprocess, run  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
TOL = 1e-5


def make_images(folder):
    photos = [Image.open(os.path.join(ROOT, "assets", "images", f"{n}.png")).convert("RGB")
              for n in ("chelsea", "coffee")]
    photos[0].save(os.path.join(folder, "chelsea.png"))
    photos[1].save(os.path.join(folder, "coffee.png"))
    photos[0].transpose(Image.FLIP_LEFT_RIGHT).save(os.path.join(folder, "chelsea_mirrored.png"))
    w, h = photos[1].size
    photos[1].crop((w // 8, h // 8, w - w // 4, h - h // 8)).save(os.path.join(folder, "coffee_cropped.png"))
    photos[0].save(os.path.join(folder, "chelsea.jpg"), quality=90)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--gradcam", help="the gradcam binary (built with --features ort): exports Lite0 first")
    source.add_argument("--explainer", help="an explainer exported already")
    parser.add_argument("--fixtures", default=os.environ.get("GRADCAM_FIXTURES") or os.path.join(ROOT, "target",
                                                                                                 "fixtures"))
    parser.add_argument("--out", default=os.path.join(ROOT, "target", "ray-example"))
    args = parser.parse_args()
    os.makedirs(args.out, exist_ok=True)
    explainer = args.explainer
    if args.gradcam:
        explainer = os.path.join(args.out, "lite0.explainer.onnx")
        cmd = [args.gradcam, "export", os.path.join(args.fixtures, "lite0.dynamo.onnx"), "--layer", "blocks.6",
               "--method", "gradcam,layercam", "-o", explainer]
        done = subprocess.run(cmd, capture_output=True, text=True)
        if done.returncode != 0:
            sys.exit(f"{' '.join(cmd)} failed:\n{done.stdout}{done.stderr}")

    import ray

    failures, checked = [], 0
    with tempfile.TemporaryDirectory() as images:
        make_images(images)
        ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
        try:
            shutil.rmtree(os.path.join(args.out, "maps"), ignore_errors=True)
            rows = run(explainer, images, os.path.join(args.out, "maps"), batch_size=2, actors=2, cpus_per_actor=0.5)
        finally:
            ray.shutdown()

        # The same images in one direct onnxruntime run.
        session = ort.InferenceSession(explainer, providers=["CPUExecutionProvider"])
        size = input_size(session)
        names = sorted(os.listdir(images))
        x = np.stack([preprocess(np.asarray(Image.open(os.path.join(images, n)).convert("RGB")), size)
                      for n in names])
        outputs = session.get_outputs()
        direct = dict(zip([o.name for o in outputs],
                          session.run(None, {"input": x, "class": np.full(len(x), -1, dtype=np.int64)})))
        by_name = {os.path.basename(r["file"]): r for r in rows}
        if sorted(by_name) != names:
            failures.append(f"Ray explained {sorted(by_name)}, not {names}")
        for i, name in enumerate(names):
            row = by_name.get(name)
            if row is None:
                continue
            want_class = int(direct["logits"][i].argmax())
            if row["class"] != want_class:
                failures.append(f"{name}: class {row['class']} != {want_class}")
            for key, file in row["maps"].items():
                got, want = np.load(file), direct[key][i]
                diff = float(np.abs(got - want).max())
                checked += 1
                print(f"{name} {key}: class {row['class']}, max |diff| vs direct onnxruntime {diff:.1e}")
                if not diff <= TOL or got.max() < 0.5:
                    failures.append(f"{name} {key}: max |diff| {diff:.2e}, max {got.max():.3f}")
        if checked == 0:
            failures.append("no map was compared")
    for f in failures:
        print(f"FAIL {f}", file=sys.stderr)
    print(f"{max(checked - len(failures), 0)} passed, {len(failures)} failed")
    sys.exit(1 if failures else 0)


if __name__ == "__main__":
    main()
