#!/usr/bin/env bash
# DiT (Predict2.5-2B) LoRA post-training from examples/toml/dit_lora_sft.toml. Exported values win over these defaults.
: "${DATASET_PATH:=examples/data/predict25_latents}"
: "${BASE_CHECKPOINT_PATH:=examples/checkpoints/Cosmos-Predict2.5-2B}"
: "${VAE_PATH:=examples/checkpoints/wan21_vae/Wan2.1_VAE.pth}"
TOML_FILE="examples/toml/dit_lora_sft.toml"
TAIL_OVERRIDES=()
source "$(dirname "${BASH_SOURCE[0]}")/_launcher_common.sh"
