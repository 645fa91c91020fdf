#!/usr/bin/env bash
# Create .venv and install cosmos-nemo with its pinned stack. Usage: bash scripts/setup.sh [--dev]
# Where no NVIDIA GPU is present, torch's CPU build is installed first (pip install torch==2.13.0),
# so that no other requirement pulls a multi-GB CUDA build.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3.11}
command -v "$PY" >/dev/null 2>&1 || PY=python3
[ -d .venv ] || "$PY" -m venv .venv
. .venv/bin/activate
python -m pip install -q --upgrade pip
if ! python -c "import torch" >/dev/null 2>&1; then
  if command -v nvidia-smi >/dev/null 2>&1; then
    python -m pip install -q "torch>=2.6,<=2.14.1"
  else
    python -m pip install -q torch==2.13.0
  fi
fi
python -m pip install -q -r requirements.txt
python -m pip install -q --no-deps -e .
if [ "${1:-}" = "--dev" ]; then
  # The test/benchmark-only packages (pytest, the imageio-ffmpeg decoder, scipy, scikit-image): none of
  # them depends on torch, so the CPU torch build above stays (the rule in requirements-dev.txt).
  python -m pip install -q -r requirements-dev.txt
  # lpips is only the test peer for our LPIPS; --no-deps keeps it from pulling torchvision and CUDA torch.
  python -m pip install -q --no-deps "lpips>=0.1.4"
  # torchvision is imported only by that peer test, in a subprocess (see tests/test_eval_lpips.py).
  python -m pip install -q --no-deps "torchvision==0.28.0" || echo "torchvision not installed: the LPIPS peer test will skip"
fi
python -c "import torch, megatron.core, av; print(f'cosmos-nemo ready: torch {torch.__version__}, megatron-core {megatron.core.__version__}, PyAV {av.__version__}')"
