# The card's step-2 run (DeepSpeed-Chat, OPT-350m), sourced by every launcher so they cannot drift.
# Expects ROOT (the repository root), OUTPUT and optionally ZERO_STAGE; sets CARD_ARGS, nothing else.
CARD_ARGS=(
  --data_path Dahoas/rm-static Dahoas/full-hh-rlhf Dahoas/synthetic-instruct-gptj-pairwise
              yitingxie/rlhf-reward-datasets
  --data_split 2,4,4
  --model_name_or_path facebook/opt-350m
  --num_padding_at_beginning 1
  --end_token_rule deepspeed_chat
  --deepspeed_config "$ROOT/ds_config.json"
  --max_seq_len 512
  --learning_rate 5e-5
  --weight_decay 0.1
  --dropout 0.1
  --num_train_epochs 1
  --lr_scheduler_type cosine
  --num_warmup_steps 0
  --seed 1234
  --deepspeed
  --output_dir "$OUTPUT"
)
if [ -n "${ZERO_STAGE:-}" ]; then
  CARD_ARGS+=(--zero_stage "$ZERO_STAGE")
fi
