#!/usr/bin/env bash
# The GPU check of the tch backend, one run on a CUDA machine with nothing to build there:
#   1. correctness: the `gradcam` binary built here (no GPU) explains there, on the GPU, with that machine's
#      torch libraries, every method, and matches pytorch-grad-cam on the same card (tools/gpu_check_cams.py);
#   2. speed: GradCAM images/s of the tch backend vs pytorch-grad-cam on the same card, batch 1 and 64, for
#      resnet50, tf_efficientnet_lite0 and vit_small_patch16_224 (goal: >= 2.5x grad-cam's img/s at batch 64).
#   here:   backend-tch/bench/gpu.sh prepare    builds the bench example and the CLI (release, tch feature,
#                                               libtorch linked dynamically) into target/gpu-bench/, with a copy
#                                               of the pure-Python grad-cam 1.5.7 and ttach the GPU image lacks
#   there:  backend-tch/bench/gpu.sh run        (carry target/gpu-bench) makes the models with that machine's
#                                               torch + timm, runs both parts, prints two tables
# env (run): GPU_PYTHON (default /opt/torch/.venv/bin/python; needs torch with CUDA and timm),
#            TORCH_LIB (default: that python's torch/lib; the binaries load libtorch and libtorch_cuda from it),
#            DEVICE (cuda; `cpu` rehearses the whole run on a machine without a GPU), BATCHES (1,64), RUNS (10),
#            CHECK_METHODS (all, or grad-cam fixture names: gradcam,scorecam,...).
set -euo pipefail
root=$(cd "$(dirname "$0")/../.." && pwd)
cd "$root"
out="$root/target/gpu-bench"        # what travels: keep it small (carry limit 64 MiB)
models="$root/target/gpu-bench-models" # made where the run is, never carried

case "${1:-}" in
prepare)
  eval "$(scripts/setup-native)"
  scripts/make-fixtures --venv-only # the grad-cam and ttach copied below
  target=${CARGO_TARGET_DIR:-$root/target}
  CARGO_TARGET_DIR="$target" cargo build --release --quiet -p backend-tch --features tch --example bench
  CARGO_TARGET_DIR="$target" cargo build --release --quiet --bin gradcam --features tch
  rm -rf "$out"
  mkdir -p "$out/site"
  cp "$target/release/examples/bench" "$target/release/gradcam" "$out/"
  strip "$out/bench" "$out/gradcam" 2>/dev/null || true
  site=$(.venv-fixtures/bin/python -c 'import os, pytorch_grad_cam as m; print(os.path.dirname(os.path.dirname(m.__file__)))')
  cp -r "$site/pytorch_grad_cam" "$site/ttach" "$out/site/"
  find "$out/site" -name __pycache__ -prune -exec rm -rf {} +
  du -sh "$out"/*
  ;;
run)
  GPU_PYTHON=${GPU_PYTHON:-/opt/torch/.venv/bin/python}
  DEVICE=${DEVICE:-cuda} BATCHES=${BATCHES:-1,64} RUNS=${RUNS:-10} CHECK_METHODS=${CHECK_METHODS:-all}
  for f in bench gradcam site; do
    [ -e "$out/$f" ] || { echo "gpu.sh: $out/$f missing: run 'gpu.sh prepare' where Rust is, carry target/gpu-bench" >&2; exit 1; }
  done
  # The copies only where the image lacks them: on PYTHONPATH they would shadow an installed version.
  if ! "$GPU_PYTHON" -c 'import pytorch_grad_cam, ttach' 2>/dev/null; then
    export PYTHONPATH="$out/site${PYTHONPATH:+:$PYTHONPATH}"
  fi
  export PYTHONUNBUFFERED=1
  TORCH_LIB=${TORCH_LIB:-$("$GPU_PYTHON" -c 'import os, torch; print(os.path.join(os.path.dirname(torch.__file__), "lib"))')}
  export TORCH_LIB
  "$GPU_PYTHON" - "$DEVICE" <<'PY'
import sys, torch, timm, pytorch_grad_cam
cuda = sys.argv[1] == "cuda"
assert torch.cuda.is_available() or not cuda, "torch finds no CUDA device"
print("card:", torch.cuda.get_device_name(0) if cuda else "cpu", "| torch", torch.__version__, "| timm",
      timm.__version__, "| grad-cam from", pytorch_grad_cam.__file__)
PY
  tmp=$(mktemp -d)
  trap 'rm -rf "$tmp"' EXIT
  echo "== correctness: gradcam (Rust) on $DEVICE vs pytorch-grad-cam on $DEVICE, and vs itself on the CPU"
  check_rc=0
  "$GPU_PYTHON" tools/gpu_check_cams.py --cli "$out/gradcam" --out "$tmp/check" --device "$DEVICE" \
    --methods "$CHECK_METHODS" || check_rc=$?
  "$GPU_PYTHON" backend-tch/bench/make_bench_models.py "$models"
  echo "== speed: tch backend (Rust, $DEVICE)"
  LD_LIBRARY_PATH="$TORCH_LIB${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}" "$out/bench" --device "$DEVICE" \
    --models-dir "$models" --batches "$BATCHES" --runs "$RUNS" --threads 0 | tee "$tmp/rust.jsonl"
  echo "== speed: pytorch-grad-cam (Python, $DEVICE)"
  "$GPU_PYTHON" tools/gpu_bench_pytorch_gradcam.py --device "$DEVICE" --batches "$BATCHES" --runs "$RUNS" |
    tee "$tmp/python.jsonl"
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
  [ "$check_rc" = 0 ] || { echo "gpu.sh: the correctness check failed (see its table)" >&2; exit "$check_rc"; }
  ;;
*)
  echo "usage: $0 prepare|run" >&2
  exit 2
  ;;
esac
