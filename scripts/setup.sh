#!/usr/bin/env bash
# Installs the Debian 12 packages klgrad's build, tests, tools and report need. Quiet (and
# offline) when everything is already installed; otherwise apt-get update + install, as root
# or through sudo.
set -euo pipefail

packages=(build-essential cmake ninja-build clang-14 libclang-rt-14-dev libfuzzer-14-dev
  libeigen3-dev catch2 nlohmann-json3-dev libcli11-dev libyaml-cpp-dev libbenchmark-dev gnuplot-nox locales
  python3-venv python3-dev)

missing=()
for p in "${packages[@]}"; do
  status=$(dpkg-query -W -f='${db:Status-Status}' "$p" 2>/dev/null || true)
  [[ "$status" == installed ]] || missing+=("$p")
done
[[ ${#missing[@]} -eq 0 ]] && exit 0

echo "setup: installing ${missing[*]}" >&2
sudo=()
if [[ $(id -u) -ne 0 ]]; then
  command -v sudo >/dev/null || { echo "setup: not root and no sudo; install: ${missing[*]}" >&2; exit 1; }
  sudo=(sudo)
fi
export DEBIAN_FRONTEND=noninteractive
"${sudo[@]}" apt-get update -qq
"${sudo[@]}" apt-get install -y -qq "${missing[@]}" >/dev/null
echo "setup: done" >&2
