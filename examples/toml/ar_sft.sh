#!/usr/bin/env bash
# AR full fine-tune from examples/toml/ar_sft.toml. Each default below yields to a value exported before launching.
#   DATASET_PATH          `cosmos-nemo prepare ar-tokens` output
#   BASE_CHECKPOINT_PATH  `cosmos-nemo convert to-dcp --checkpoint-path nvidia/Cosmos-1.0-Autoregressive-4B --model 4b -o ...`
: "${DATASET_PATH:=examples/data/ar_tokens}"
: "${BASE_CHECKPOINT_PATH:=examples/checkpoints/Cosmos-1.0-Autoregressive-4B}"
TOML_FILE="examples/toml/ar_sft.toml"
TAIL_OVERRIDES=()
source "$(dirname "${BASH_SOURCE[0]}")/_launcher_common.sh"
