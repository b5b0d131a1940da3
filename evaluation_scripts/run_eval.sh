#!/usr/bin/env bash
# Score a trained reward model. Usage:
#   bash evaluation_scripts/run_eval.sh MODEL_DIR                          # DeepSpeed-Chat's two example prompts
#   bash evaluation_scripts/run_eval.sh MODEL_DIR --data_path DATA [...]   # + MODEL_DIR/eval_results.json
#   bash evaluation_scripts/run_eval.sh MODEL_DIR --score rows.jsonl       # + MODEL_DIR/scores.jsonl
#   bash evaluation_scripts/run_eval.sh MODEL_DIR --benchmark NAME --data FILE [...]
#                                           # RM-Bench, RewardBench, JudgeBench, ... -> MODEL_DIR/benchmarks/NAME.json
# See `python evaluation_scripts/evaluate.py --help` and `python evaluation_scripts/benchmark.py --help`.
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
PYTHON="${PYTHON:-$(command -v python || command -v python3)}"
SCRIPT=evaluate.py
for arg in "$@"; do
  case "$arg" in --benchmark|--benchmark=*) SCRIPT=benchmark.py ;; esac
done
exec "$PYTHON" "$ROOT/evaluation_scripts/$SCRIPT" "$@"
