#!/usr/bin/env bash
# Runs explainers in the ONNX Runtime a Triton release bundles (PyPI onnxruntime of that version, in a venv
# under target/) and in the project's, and compares every output.
#   examples/triton/check_triton_ort.sh EXPLAINER.onnx...     env: ORT_VERSION (1.28.0: Triton 26.08),
#                                                                  PYTHON (.venv-fixtures/bin/python: the project's)
set -euo pipefail
root=$(cd "$(dirname "$0")/../.." && pwd)
ORT_VERSION=${ORT_VERSION:-1.28.0}
PYTHON=${PYTHON:-$root/.venv-fixtures/bin/python}
venv="$root/target/venv-onnxruntime-$ORT_VERSION"
[ -x "$venv/bin/python" ] || { python3 -m venv "$venv" && "$venv/bin/pip" install --quiet --disable-pip-version-check "onnxruntime==$ORT_VERSION" numpy; }
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
script="$root/examples/triton/check_ort_version.py"
"$venv/bin/python" "$script" run "$@" --save "$tmp/triton.npz"
"$PYTHON" "$script" run "$@" --save "$tmp/project.npz"
"$PYTHON" "$script" compare "$tmp/project.npz" "$tmp/triton.npz"
