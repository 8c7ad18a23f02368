#!/usr/bin/env bash
# A virtual environment for klgrad's Python side: torch 2.13 (the CPU build; pip takes the file
# that lies on this kind of machine, never a CUDA build), numpy, pytest, hypothesis, triton
# (the Triton kernels' tests run it on the CPU under TRITON_INTERPRET=1), and the build tools
# of the package (scikit-build-core, nanobind, ninja). Quiet when they are there.
#   bash scripts/python_env.sh [VENV_DIR]        (default .venv)
# KLGRAD_PYTHON picks the interpreter (default: python3 on PATH).
set -euo pipefail
cd "$(dirname "$0")/.."
venv=${1:-.venv}
python=${KLGRAD_PYTHON:-python3}

[[ -x "$venv/bin/python" ]] || "$python" -m venv "$venv"
if ! "$venv/bin/python" -c 'import torch, numpy, pytest, hypothesis, nanobind, scikit_build_core, triton' \
    2>/dev/null; then
  # torch pinned first and alone: an unpinned torch would pull a CUDA build of several GB.
  "$venv/bin/pip" install --quiet torch==2.13.0
  "$venv/bin/pip" install --quiet "torch==2.13.0" numpy pytest hypothesis \
    "scikit-build-core>=0.10" "nanobind>=2.0" ninja "triton==3.9.0"
fi
