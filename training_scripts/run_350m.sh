#!/usr/bin/env bash
# Reproduces DeepSpeed-Chat step 2 for OPT-350m (the card): published eval accuracy 0.49 before
# training -> ~0.70 after, mean training loss ~0.575. Needs GPUs and Hugging Face hub access
# (model and the four datasets). Usage: bash training_scripts/run_350m.sh [OUTPUT] [ZERO_STAGE]
# ZERO_STAGE defaults to ds_config.json's (0). The log goes to OUTPUT/training.log and the terminal.
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
OUTPUT="${1:-./output}"
ZERO_STAGE="${2:-}"
source "$ROOT/training_scripts/card_args.sh"
mkdir -p "$OUTPUT"
set -o pipefail
deepspeed "$ROOT/main.py" "${CARD_ARGS[@]}" "${@:3}" 2>&1 | tee "$OUTPUT/training.log"
