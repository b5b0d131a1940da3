"""Export a reward model saved by main.py for other tools.

    python evaluation_scripts/export_hf.py MODEL_DIR OUT_DIR                          # Hugging Face classifier
    python evaluation_scripts/export_hf.py MODEL_DIR OUT_DIR --format deepspeed_chat  # DeepSpeed-Chat step-3 critic

`hf` writes a standard `AutoModelForSequenceClassification` checkpoint (num_labels=1, the value head as
its bias-free `score` layer, pad_token_id = eos): plain transformers then scores a right-padded batch of
prompt + answer + end-of-conversation texts with the same reward as this project's RewardModel.
`deepspeed_chat` writes `pytorch_model.bin` with DeepSpeed-Chat's RewardModel keys next to config.json
and the tokenizer: pass OUT_DIR as step 3's --critic_model_name_or_path (OUT_DIR may be MODEL_DIR).
"""
import argparse
import os


DTYPES = {"saved": None, "fp32": "float32", "bf16": "bfloat16", "fp16": "float16"}


def parse_args(argv=None):
    from model.export import DSCHAT_TRANSFORMER_KEYS
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("model_dir", help="A reward model folder written by main.py, or one of its resumable "
                                          "checkpoints (OUTPUT_DIR/checkpoints/step-N, any ZeRO stage).")
    parser.add_argument("output_dir", help="Folder to write the exported model to.")
    parser.add_argument("--format", choices=["hf", "deepspeed_chat"], default="hf",
                        help="hf: AutoModelForSequenceClassification; deepspeed_chat: pytorch_model.bin for "
                             "DeepSpeed-Chat step 3.")
    parser.add_argument("--dtype", choices=list(DTYPES), default="saved",
                        help="hf only: weight dtype. 'saved' keeps the training precision, as evaluate.py "
                             "scores; another dtype changes the scores by its rounding.")
    parser.add_argument("--dschat_key", choices=DSCHAT_TRANSFORMER_KEYS, default=DSCHAT_TRANSFORMER_KEYS[0],
                        help="deepspeed_chat only: DeepSpeed-Chat's name for the base model; the older "
                             "training/utils/ layout spells it 'rwtranrsformer'.")
    parser.add_argument("--overwrite", action="store_true",
                        help="Replace a model OUT_DIR already holds (otherwise that is an error).")
    parser.add_argument("--debug", action="store_true", help="Show Python tracebacks for user errors.")
    return parser.parse_args(argv)


def run(args):
    import torch

    import tempfile

    from model.export import check_export_target, export_sequence_classification, write_deepspeed_chat_weights
    from training.checkpoint import COMPLETE_MARKER, reward_model_from_checkpoint
    check_export_target(args.output_dir, args.model_dir, args.overwrite)
    if os.path.exists(os.path.join(args.model_dir, COMPLETE_MARKER)):  # a resumable checkpoint, not a model
        args.model_dir = reward_model_from_checkpoint(args.model_dir, tempfile.mkdtemp(prefix="reward-model-"))
        print(f"consolidated the checkpoint's weights into {args.model_dir}")
    if args.format == "hf":
        dtype = getattr(torch, DTYPES[args.dtype]) if DTYPES[args.dtype] else None
        name = export_sequence_classification(args.model_dir, args.output_dir, dtype)
        print(f"wrote {name} (num_labels=1) to {args.output_dir}: load it with "
              "AutoModelForSequenceClassification.from_pretrained and AutoTokenizer.from_pretrained")
    else:
        path = write_deepspeed_chat_weights(args.model_dir, args.output_dir, args.dschat_key)
        print(f"wrote {path} (keys '{args.dschat_key}.*', 'v_head.weight'): pass {args.output_dir} to "
              "DeepSpeed-Chat step 3 as --critic_model_name_or_path")


def main(argv=None):
    from utils.errors import exit_on_user_error
    args = parse_args(argv)
    exit_on_user_error(run, args, debug=args.debug)


if __name__ == "__main__":
    main()
