# Sourced by the examples/toml/*.sh launchers (as NVIDIA's examples/_sft_launcher_common.sh): makes the default
# paths absolute, exports them for the TOML's ${oc.env:...} keys, and runs the TOML through cosmos-nemo.
#   TOML_FILE      the recipe TOML (set by the launcher)
#   NPROC          processes on this machine (default: the GPUs nvidia-smi lists, else 1)
#   TAIL_OVERRIDES extra KEY=VALUE overrides (an array, set by the launcher); "$@" are appended after it
set -euo pipefail
REPO_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
cd "$REPO_ROOT"
absolute() { case "$1" in /*) echo "$1" ;; *) echo "$REPO_ROOT/$1" ;; esac; }
for var in DATASET_PATH BASE_CHECKPOINT_PATH VAE_PATH; do
    if [ -n "${!var:-}" ]; then export "$var=$(absolute "${!var}")"; fi
done
: "${IMAGINAIRE_OUTPUT_ROOT:=outputs/train}"
export IMAGINAIRE_OUTPUT_ROOT
if [ -z "${NPROC:-}" ]; then
    NPROC=$(nvidia-smi --list-gpus 2>/dev/null | wc -l || true)
    [ "${NPROC:-0}" -ge 1 ] 2>/dev/null || NPROC=1
fi
echo "TOML_FILE=$TOML_FILE NPROC=$NPROC"
for var in DATASET_PATH BASE_CHECKPOINT_PATH VAE_PATH; do
    if [ -n "${!var:-}" ]; then echo "$var=${!var}"; fi
done
COSMOS_NEMO="${COSMOS_NEMO:-cosmos-nemo}"
exec $COSMOS_NEMO train --sft-toml "$TOML_FILE" --nproc "$NPROC" ${TAIL_OVERRIDES[@]+"${TAIL_OVERRIDES[@]}"} "$@"
