#!/usr/bin/env bash
# Installs the klgrad Python package: the system packages through scripts/setup.sh, a venv
# with torch 2.13 through scripts/python_env.sh, then a wheel of this checkout built by pip
# with ordinary build isolation (scikit-build-core, nanobind; pyproject.toml) and installed.
#   bash scripts/python.sh [VENV_DIR]        (default .venv; then VENV_DIR/bin/python)
# KLGRAD_CI_JOBS sets the build's parallelism (default 2). The wheel stays in VENV_DIR/wheels.
set -euo pipefail
cd "$(dirname "$0")/.."
venv=${1:-.venv}

bash scripts/setup.sh
bash scripts/python_env.sh "$venv"
export CMAKE_BUILD_PARALLEL_LEVEL=${KLGRAD_CI_JOBS:-2}
rm -rf "$venv/wheels"
"$venv/bin/pip" wheel --quiet --no-deps -w "$venv/wheels" .
"$venv/bin/pip" install --quiet --no-deps --force-reinstall "$venv"/wheels/klgrad-*.whl
"$venv/bin/python" -c 'import klgrad; print("klgrad", klgrad.__version__, "in", klgrad.__file__)'
