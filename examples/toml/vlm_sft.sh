#!/usr/bin/env bash
# Reasoner (VLM) alignment SFT from examples/toml/vlm_sft.toml, laid out as NVIDIA's launch_sft_videophy2_nano.sh:
#   export VIDEOPHYSICS_ROOT=$PWD/examples/data/videophysics        # cosmos-nemo prepare videophy2 --out_root ...
#   export VLM_SAFETENSORS_PATH=$PWD/examples/checkpoints/Cosmos3-Nano-VLM   # a Qwen3-VL safetensors snapshot
#   bash examples/toml/vlm_sft.sh [KEY=VALUE ...]
: "${VIDEOPHYSICS_ROOT:?export VIDEOPHYSICS_ROOT (the folder cosmos-nemo prepare videophy2 wrote)}"
: "${VLM_SAFETENSORS_PATH:?export VLM_SAFETENSORS_PATH (a Qwen3-VL safetensors snapshot folder)}"
case "$VIDEOPHYSICS_ROOT" in /*) ;; *) VIDEOPHYSICS_ROOT="$PWD/$VIDEOPHYSICS_ROOT" ;; esac
case "$VLM_SAFETENSORS_PATH" in /*) ;; *) VLM_SAFETENSORS_PATH="$PWD/$VLM_SAFETENSORS_PATH" ;; esac
export VIDEOPHYSICS_ROOT VLM_SAFETENSORS_PATH
TOML_FILE="examples/toml/vlm_sft.toml"
TAIL_OVERRIDES=()
source "$(dirname "${BASH_SOURCE[0]}")/_launcher_common.sh"
