#!/usr/bin/env bash
# Install REINS Server and its test tools into the current Python environment, with the CPU build of PyTorch.
# On a GPU host, install the CUDA build of torch first (see https://pytorch.org) and run only the last pip line.
set -euo pipefail
cd "$(dirname "$0")/.."

python=${PYTHON:-python3}
export PIP_DISABLE_PIP_VERSION_CHECK=1

# A bare torch requirement would pull a multi-GB CUDA build from PyPI, so the CPU build goes in first:
# a wheel already on disk if the machine has one, else PyTorch's CPU index.
if ! "$python" -c "import torch" 2>/dev/null; then
  wheel=$(ls /opt/wheels/torch-2.13.0+cpu-*.whl 2>/dev/null | head -n 1 || true)
  if [ -n "$wheel" ]; then
    "$python" -m pip install -q "$wheel"
  else
    "$python" -m pip install -q torch==2.13.0 --index-url https://download.pytorch.org/whl/cpu
  fi
fi
"$python" -m pip install -q -e ".[test]"

if ! command -v redis-server >/dev/null; then
  echo "note: redis-server is not on PATH; reins demo and the tests need it (Debian/Ubuntu: apt-get install redis-server)" >&2
fi
