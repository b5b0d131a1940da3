#!/usr/bin/env bash
# The card's run on every GPU of one node (8 GPUs: micro batch 8, no accumulation, global batch 64).
# Usage: bash training_scripts/single_node/run_350m.sh [OUTPUT] [ZERO_STAGE]
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
OUTPUT="${1:-./output}"
ZERO_STAGE="${2:-}"
source "$ROOT/training_scripts/card_args.sh"
deepspeed "$ROOT/main.py" "${CARD_ARGS[@]}" "${@:3}" 2>&1 | tee "$OUTPUT/training.log"
