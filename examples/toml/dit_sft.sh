#!/usr/bin/env bash
# DiT (Predict2.5-2B) full post-training from examples/toml/dit_sft.toml. Exported values win over these defaults.
#   DATASET_PATH          `cosmos-nemo prepare latents` output
#   BASE_CHECKPOINT_PATH  `cosmos-nemo convert to-dcp --checkpoint-path .../model_ema_bf16.pt --model predict25_2b -o ...`
#   VAE_PATH              the Wan2.1 VAE the latents were encoded with
: "${DATASET_PATH:=examples/data/predict25_latents}"
: "${BASE_CHECKPOINT_PATH:=examples/checkpoints/Cosmos-Predict2.5-2B}"
: "${VAE_PATH:=examples/checkpoints/wan21_vae/Wan2.1_VAE.pth}"
TOML_FILE="examples/toml/dit_sft.toml"
TAIL_OVERRIDES=()
source "$(dirname "${BASH_SOURCE[0]}")/_launcher_common.sh"
