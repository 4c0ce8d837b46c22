#!/usr/bin/env bash
# CPU benchmark: the tch backend's GradCAM `explain` vs libtorch forward-only on the same TorchScript
# model (goal <= 1.10x) and vs pytorch-grad-cam's GradCAM (goal >= 3x faster), same machine, same
# number of threads. Prints both sides' JSON lines, then a table.
#   backend-tch/bench/compare.sh            env: PYTHON (default .venv-fixtures/bin/python, else python3),
#                                                THREADS (2), RUNS (5), BATCHES (1,16), MODELS_DIR
set -euo pipefail
root=$(cd "$(dirname "$0")/../.." && pwd)
cd "$root"
default_python=python3
[ -x "$root/.venv-fixtures/bin/python" ] && default_python="$root/.venv-fixtures/bin/python"
PYTHON=${PYTHON:-$default_python}
THREADS=${THREADS:-2} RUNS=${RUNS:-5} BATCHES=${BATCHES:-1,16}
MODELS_DIR=${MODELS_DIR:-$root/target/bench-models}
eval "$(scripts/setup-native)"
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$root/target}

"$PYTHON" backend-tch/bench/make_bench_models.py "$MODELS_DIR"
out=$(mktemp -d)
trap 'rm -rf "$out"' EXIT
echo "== tch backend (Rust)" >&2
cargo run --release --quiet -p backend-tch --features tch --example bench -- \
  --models-dir "$MODELS_DIR" --batches "$BATCHES" --runs "$RUNS" --threads "$THREADS" | tee "$out/rust.jsonl"
echo "== pytorch-grad-cam (Python)" >&2
"$PYTHON" tools/bench_pytorch_gradcam.py --batches "$BATCHES" --runs "$RUNS" --threads "$THREADS" \
  | tee "$out/python.jsonl"

"$PYTHON" - "$out/rust.jsonl" "$out/python.jsonl" <<'PY'
import json, sys
rust = {(r["model"], r["batch"]): r for r in map(json.loads, open(sys.argv[1]))}
py = {(r["model"], r["batch"]): r for r in map(json.loads, open(sys.argv[2]))}
print(f"\n{'model':24} {'batch':>5} {'explain s':>10} {'fwd s':>8} {'explain/fwd':>12} "
      f"{'grad-cam s':>11} {'speedup':>8}")
for key in sorted(rust):
    r, p = rust[key], py.get(key)
    line = f"{key[0]:24} {key[1]:>5} {r['explain_s']:>10.4f} {r['forward_s']:>8.4f} {r['ratio']:>11.2f}x"
    if p:
        line += f" {p['gradcam_s']:>11.4f} {p['gradcam_s'] / r['explain_s']:>7.2f}x"
    print(line)
print("goals: explain/fwd <= 1.10x (libtorch forward-only, same model); speedup >= 3x (pytorch-grad-cam)")
PY
