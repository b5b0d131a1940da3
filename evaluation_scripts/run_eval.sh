#!/usr/bin/env bash
# Score a trained reward model. Usage:
#   bash evaluation_scripts/run_eval.sh MODEL_DIR                          # DeepSpeed-Chat's two example prompts
#   bash evaluation_scripts/run_eval.sh MODEL_DIR --data_path DATA [...]   # + MODEL_DIR/eval_results.json
#   bash evaluation_scripts/run_eval.sh MODEL_DIR --score rows.jsonl       # + MODEL_DIR/scores.jsonl
# See `python evaluation_scripts/evaluate.py --help` for every flag.
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
PYTHON="${PYTHON:-$(command -v python || command -v python3)}"
exec "$PYTHON" "$ROOT/evaluation_scripts/evaluate.py" "$@"
