#!/usr/bin/env bash
# The card's run on every GPU of one node (8 GPUs: micro batch 8, no accumulation, global batch 64).
# The same as training_scripts/run_350m.sh, kept at DeepSpeed-Chat's path.
# Usage: bash training_scripts/single_node/run_350m.sh [OUTPUT] [ZERO_STAGE] [main.py flags...]
exec bash "$(dirname "${BASH_SOURCE[0]}")/../run_350m.sh" "$@"
