#!/usr/bin/env bash
# Reasoner (VLM) SFT from examples/toml/vlm_sft.toml, laid out as NVIDIA's launch_sft_videophy2_nano.sh. The vlm family
# is not built in cosmos-nemo yet: this launcher stops with an error that says so (the TOML itself validates).
: "${VLM_SAFETENSORS_PATH:?export VLM_SAFETENSORS_PATH (the merged Qwen3-VL safetensors folder)}"
export VLM_SAFETENSORS_PATH
TOML_FILE="examples/toml/vlm_sft.toml"
TAIL_OVERRIDES=()
source "$(dirname "${BASH_SOURCE[0]}")/_launcher_common.sh"
