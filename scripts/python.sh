#!/usr/bin/env bash
# Installs the klgrad Python package (python/) on Debian 12: the apt packages through
# scripts/setup.sh, then a virtual environment that sees Debian's numpy and torch, then the
# package built from this checkout with Debian's scikit-build (no PyPI, no downloads).
#   bash scripts/python.sh [VENV_DIR]        (default .venv; then VENV_DIR/bin/python)
# KLGRAD_CI_JOBS sets the build's parallelism (default 2); ccache is used when present.
set -euo pipefail
cd "$(dirname "$0")/.."
venv=${1:-.venv}

bash scripts/setup.sh
[[ -x "$venv/bin/python" ]] || /usr/bin/python3 -m venv --system-site-packages "$venv"
export CMAKE_BUILD_PARALLEL_LEVEL=${KLGRAD_CI_JOBS:-2} CMAKE_GENERATOR=Ninja
if command -v ccache >/dev/null; then export CMAKE_CXX_COMPILER_LAUNCHER=ccache; fi
"$venv/bin/pip" install --quiet --no-build-isolation --no-index --no-deps --force-reinstall \
  ./python
"$venv/bin/python" -c 'import klgrad; print("klgrad", klgrad.__version__, "in", klgrad.__file__)'
