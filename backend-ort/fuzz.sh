#!/usr/bin/env bash
# Fuzzes the ONNX path outside CI: mutated fixture models through load → layers → backward
# generation → run, 10,000 cases by default (about an hour on 2 cores).
# Usage: backend-ort/fuzz.sh [CASES] [FIRST_SEED]
# Needs the environment of scripts/setup-native and GRADCAM_FIXTURES (the fixture models).
# Prints progress every 500 cases, then a count per outcome; fails listing the seeds that
# panicked (an abort ends the run: its last `case SEED` line says which).
set -euo pipefail
cd "$(dirname "$0")/.."
export GRADCAM_FUZZ_CASES="${1:-10000}"
# ONNX Runtime's memory limit (runtime.rs): some mutations make a kernel ask for gigabytes; past
# 4 GiB they are errors like any other, and the run cannot be ended by the OOM killer (without it,
# one case peaked at 15.7 GB, and a run beside other work was killed at 23.7 GB).
export GRADCAM_ORT_MEMORY="${GRADCAM_ORT_MEMORY:-4294967296}"
export GRADCAM_FUZZ_FIRST="${2:-1000000}"
exec cargo test -p backend-ort --features ort --test fuzz -- --ignored --nocapture fuzz_many
