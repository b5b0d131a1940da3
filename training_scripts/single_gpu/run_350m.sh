#!/usr/bin/env bash
# The card's run on one GPU: the global batch stays 64 (micro batch 8 x 8 accumulation steps).
# Usage: bash training_scripts/single_gpu/run_350m.sh [OUTPUT] [ZERO_STAGE]
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
OUTPUT="${1:-./output}"
ZERO_STAGE="${2:-}"
source "$ROOT/training_scripts/card_args.sh"
mkdir -p "$OUTPUT"
set -o pipefail
deepspeed --num_gpus 1 "$ROOT/main.py" "${CARD_ARGS[@]}" "${@:3}" 2>&1 | tee "$OUTPUT/training.log"
