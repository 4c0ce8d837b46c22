#!/usr/bin/env bash
# The explainer on onnxruntime-gpu's CUDA execution provider vs the CPU one (examples/gpu/check_cuda_ep.py),
# prepared here and run on a CUDA machine with nothing to build there:
#   here:   examples/gpu/check_cuda_ep.sh prepare   exports two explainers with the gradcam binary built here
#                                                    (Lite0 from the dynamo exporter with its .onnx.data, ViT-Tiny
#                                                    from the legacy one; ~41 MB) and the fixtures' two photos
#                                                    (input.npy) into target/gpu-explainers
#   there:  examples/gpu/check_cuda_ep.sh run       (carry target/gpu-explainers) runs the check
# env (prepare): GRADCAM (default: target/release/gradcam, else target/debug/gradcam; built with --features ort),
#                GRADCAM_FIXTURES (the model fixtures, default target/fixtures)
# env (run): GPU_PYTHON (default python3; needs numpy and onnxruntime-gpu, e.g. `pip install onnxruntime-gpu==1.31.1`),
#            PROVIDER (cuda; `cpu` rehearses the whole run on a machine without a GPU), BATCH (16), RUNS (10)
set -euo pipefail
root=$(cd "$(dirname "$0")/../.." && pwd)
cd "$root"
out="$root/target/gpu-explainers"

case "${1:-}" in
prepare)
  target=${CARGO_TARGET_DIR:-$root/target}
  gradcam=${GRADCAM:-}
  if [ -z "$gradcam" ]; then
    for g in "$target/release/gradcam" "$target/debug/gradcam"; do [ -x "$g" ] && { gradcam=$g; break; }; done
  fi
  [ -n "$gradcam" ] || { echo "check_cuda_ep.sh: build the CLI first: cargo build --release --features ort" >&2; exit 1; }
  fixtures=${GRADCAM_FIXTURES:-$root/target/fixtures}
  rm -rf "$out"
  mkdir -p "$out"
  "$gradcam" export "$fixtures/lite0.dynamo.onnx" --layer blocks.6 \
    --method gradcam,gradcam++,xgradcam,hirescam,layercam,gradcam-elementwise -o "$out/lite0.explainer.onnx"
  "$gradcam" export "$fixtures/vit_tiny.legacy.onnx" --layer blocks.11.norm1 \
    --method gradcam,gradcam++,xgradcam,hirescam,layercam,gradcam-elementwise -o "$out/vit_tiny.explainer.onnx"
  cp examples/gpu/check_cuda_ep.py "$fixtures/input.npy" "$out/"
  du -sh "$out"/*
  ;;
run)
  GPU_PYTHON=${GPU_PYTHON:-python3} PROVIDER=${PROVIDER:-cuda} BATCH=${BATCH:-16} RUNS=${RUNS:-10}
  [ -e "$out/check_cuda_ep.py" ] || { echo "check_cuda_ep.sh: run 'check_cuda_ep.sh prepare' where Rust is, carry target/gpu-explainers" >&2; exit 1; }
  if [ "$PROVIDER" = cuda ]; then
    command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=name,driver_version --format=csv,noheader || true
  fi
  "$GPU_PYTHON" "$out/check_cuda_ep.py" "$out"/*.explainer.onnx --images "$out/input.npy" --provider "$PROVIDER" \
    --batch "$BATCH" --runs "$RUNS"
  ;;
*)
  echo "usage: $0 prepare|run" >&2
  exit 2
  ;;
esac
