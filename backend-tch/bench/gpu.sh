#!/usr/bin/env bash
# GPU benchmark: GradCAM images/s of the tch backend vs pytorch-grad-cam on the same card, batch 1 and 64,
# for resnet50, tf_efficientnet_lite0 and vit_small_patch16_224 (goal: >= 2.5x grad-cam's img/s at batch 64).
# Nothing is built on the GPU machine:
#   here:   backend-tch/bench/gpu.sh prepare    builds the bench binary (release, CPU libtorch) into
#                                               target/gpu-bench/ (small: libtorch is linked dynamically)
#   there:  backend-tch/bench/gpu.sh run        (carry target/gpu-bench) makes the TorchScript models with
#                                               that machine's torch + timm, runs both sides, prints a table
# env (run): GPU_PYTHON (default /opt/torch/.venv/bin/python; needs torch with CUDA, timm, grad-cam),
#            TORCH_LIB (default: that python's torch/lib; the binary loads libtorch and libtorch_cuda from it),
#            BATCHES (1,64), RUNS (10). One run takes about 2-3 minutes.
set -euo pipefail
root=$(cd "$(dirname "$0")/../.." && pwd)
cd "$root"
out="$root/target/gpu-bench"

case "${1:-}" in
prepare)
  eval "$(scripts/setup-native)"
  target=${CARGO_TARGET_DIR:-$root/target}
  CARGO_TARGET_DIR="$target" cargo build --release --quiet -p backend-tch --features tch --example bench
  mkdir -p "$out"
  cp "$target/release/examples/bench" "$out/bench"
  strip "$out/bench" 2>/dev/null || true
  ls -la "$out/bench"
  ;;
run)
  GPU_PYTHON=${GPU_PYTHON:-/opt/torch/.venv/bin/python}
  BATCHES=${BATCHES:-1,64} RUNS=${RUNS:-10}
  [ -x "$out/bench" ] || { echo "gpu.sh: $out/bench missing: run 'gpu.sh prepare' where Rust is, carry target/gpu-bench" >&2; exit 1; }
  TORCH_LIB=${TORCH_LIB:-$("$GPU_PYTHON" -c 'import os, torch; print(os.path.join(os.path.dirname(torch.__file__), "lib"))')}
  "$GPU_PYTHON" -c 'import torch, timm, pytorch_grad_cam; assert torch.cuda.is_available(); print("card:", torch.cuda.get_device_name(0), "torch", torch.__version__)'
  "$GPU_PYTHON" backend-tch/bench/make_bench_models.py "$out/models"
  tmp=$(mktemp -d)
  trap 'rm -rf "$tmp"' EXIT
  echo "== tch backend (Rust, CUDA)" >&2
  LD_LIBRARY_PATH="$TORCH_LIB${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}" "$out/bench" --device cuda \
    --models-dir "$out/models" --batches "$BATCHES" --runs "$RUNS" --threads 0 | tee "$tmp/rust.jsonl"
  echo "== pytorch-grad-cam (Python, CUDA)" >&2
  "$GPU_PYTHON" tools/gpu_bench_pytorch_gradcam.py --batches "$BATCHES" --runs "$RUNS" | tee "$tmp/python.jsonl"
  "$GPU_PYTHON" - "$tmp/rust.jsonl" "$tmp/python.jsonl" <<'PY'
import json, sys
rust = {(r["model"], r["batch"]): r for r in map(json.loads, open(sys.argv[1]))}
py = {(r["model"], r["batch"]): r for r in map(json.loads, open(sys.argv[2]))}
print(f"\n{'model':24} {'batch':>5} {'tch img/s':>10} {'fwd img/s':>10} {'grad-cam img/s':>15} {'speedup':>8}")
for key in sorted(rust):
    r, p = rust[key], py.get(key)
    line = f"{key[0]:24} {key[1]:>5} {r['explain_img_s']:>10.1f} {r['forward_img_s']:>10.1f}"
    if p:
        line += f" {p['gradcam_img_s']:>15.1f} {r['explain_img_s'] / p['gradcam_img_s']:>7.2f}x"
    print(line)
print("goal: >= 2.5x pytorch-grad-cam's img/s at batch 64")
PY
  ;;
*)
  echo "usage: $0 prepare|run" >&2
  exit 2
  ;;
esac
