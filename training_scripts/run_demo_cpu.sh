#!/usr/bin/env bash
# Offline CPU demo: needs no hub. Builds a tiny OPT (random weights, a tokenizer trained on the fly,
# OPT's conventions), trains it on the built-in synthetic preference set with the card's config
# (fp16 becomes bf16 on CPU) and evaluates it. A random model scores ~0.5; this one reaches >= 0.9.
# Usage: bash training_scripts/run_demo_cpu.sh [OUTPUT]   (about half a minute on 2 CPU cores)
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
OUTPUT="${1:-./output_demo}"
PYTHON="${PYTHON:-$(command -v python || command -v python3)}"
DATA=synthetic/preference
mkdir -p "$OUTPUT"
cd "$ROOT"

"$PYTHON" -c "
from data.synthetic import make_splits
train, test = make_splits(4000)
print('\n'.join(row['prompt'] + row[k] for row in train[:500] for k in ('chosen', 'rejected')))
" > "$OUTPUT/tokenizer_corpus.txt"
"$PYTHON" -m model.tiny "$OUTPUT/tiny_opt" --corpus "$OUTPUT/tokenizer_corpus.txt"

"$PYTHON" main.py --deepspeed_config ./ds_config.json \
  --model_name_or_path "$OUTPUT/tiny_opt" --num_padding_at_beginning 1 \
  --data_path "$DATA" --data_split 2,4,4 --data_output_path "$OUTPUT/data_cache" \
  --max_seq_len 256 --per_device_train_batch_size 8 --gradient_accumulation_steps 1 \
  --per_device_eval_batch_size 32 --learning_rate 1e-3 --weight_decay 0.1 --num_train_epochs 1 \
  --lr_scheduler_type cosine --num_warmup_steps 10 --seed 1234 \
  --output_dir "$OUTPUT/reward_model" 2>&1 | tee "$OUTPUT/training.log"

bash evaluation_scripts/run_eval.sh "$OUTPUT/reward_model" --data_path "$DATA"
echo "demo done: model in $OUTPUT/reward_model, metrics in $OUTPUT/reward_model/eval_results.json"
