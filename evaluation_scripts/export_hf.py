"""Export a reward model saved by main.py for other tools.

    python evaluation_scripts/export_hf.py MODEL_DIR OUT_DIR                          # Hugging Face classifier
    python evaluation_scripts/export_hf.py MODEL_DIR OUT_DIR --format deepspeed_chat  # DeepSpeed-Chat step-3 critic

`hf` writes a standard `AutoModelForSequenceClassification` checkpoint (num_labels=1, the value head as
its bias-free `score` layer, pad_token_id = eos): plain transformers then scores a right-padded batch of
prompt + answer + end-of-conversation texts with the same reward as this project's RewardModel.
`deepspeed_chat` writes `pytorch_model.bin` with DeepSpeed-Chat's RewardModel keys next to config.json
and the tokenizer: pass OUT_DIR as step 3's --critic_model_name_or_path (OUT_DIR may be MODEL_DIR).
An attribute model (main.py --objective regression) exports as num_labels=K: logit k is attribute k (id2label
names it) and config.json's `attribute_weights` . logits is the reward (docs/regression.md).
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
    import tempfile

    import torch

    from model.export import (HEADS_NAME, check_export_target, export_sequence_classification,
                              write_deepspeed_chat_weights)
    check_export_target(args.output_dir, args.model_dir, args.overwrite)
    with tempfile.TemporaryDirectory(prefix="reward-model-") as scratch:
        model_dir = model_folder(args.model_dir, scratch)
        if args.format == "hf":
            dtype = getattr(torch, DTYPES[args.dtype]) if DTYPES[args.dtype] else None
            name = export_sequence_classification(model_dir, args.output_dir, dtype)
            from transformers import AutoConfig
            labels = AutoConfig.from_pretrained(args.output_dir).num_labels  # K for an attribute model
            print(f"wrote {name} (num_labels={labels}) to {args.output_dir}: load it with "
                  "AutoModelForSequenceClassification.from_pretrained and AutoTokenizer.from_pretrained")
            if os.path.exists(os.path.join(args.output_dir, HEADS_NAME)):
                print(f"its score is the ensemble's mean; each head's weights are in {HEADS_NAME} (config.json "
                      "'value_heads' says how to use them; docs/ensembles.md)")
        else:
            path = write_deepspeed_chat_weights(model_dir, args.output_dir, args.dschat_key)
            print(f"wrote {path} (keys '{args.dschat_key}.*', 'v_head.weight'): pass {args.output_dir} to "
                  "DeepSpeed-Chat step 3 as --critic_model_name_or_path")


def model_folder(path, scratch):
    """The reward model folder to export: `path`, or for a whole checkpoint the model it holds, written to
    `scratch`. UserError for a path that is neither, naming what it is and what to pass instead."""
    from training.checkpoint import CHECKPOINT_DIR, COMPLETE_MARKER, not_a_checkpoint, reward_model_from_checkpoint
    from utils.errors import UserError
    if not os.path.isdir(path):
        raise UserError(f"model folder {path}: {not_a_checkpoint(path)}; pass main.py's --output_dir, or one of "
                        "its checkpoints (OUTPUT_DIR/checkpoints/step-N).")
    if os.path.exists(os.path.join(path, COMPLETE_MARKER)):
        print(f"{path} is a checkpoint: consolidating its weights")
        return reward_model_from_checkpoint(path, scratch)
    if is_checkpoint(path):
        raise UserError(f"{path} is an incomplete checkpoint: {not_a_checkpoint(path)}. Export a complete one, or "
                        "the model folder main.py saves when the run ends.")
    if not os.path.exists(os.path.join(path, "config.json")) and os.path.isdir(os.path.join(path, CHECKPOINT_DIR)):
        raise UserError(f"{path} holds no saved model yet: {not_a_checkpoint(path)}. Export a complete "
                        "checkpoint, or finish the run with main.py --resume_from_checkpoint auto.")
    return path


def is_checkpoint(path):
    """A checkpoint folder, whole or not: OUTPUT_DIR/checkpoints/step-N, or one holding DeepSpeed's files."""
    from training.checkpoint import CHECKPOINT_DIR
    parent, name = os.path.split(os.path.abspath(path))
    deepspeed_files = [n for n in os.listdir(path) if n.startswith(("mp_rank_", "rng_state_rank"))
                       or n.endswith("optim_states.pt")]
    return bool(deepspeed_files) or (os.path.basename(parent) == CHECKPOINT_DIR and name.startswith("step-"))


def main(argv=None):
    from utils.errors import exit_on_user_error
    args = parse_args(argv)
    exit_on_user_error(run, args, debug=args.debug)


if __name__ == "__main__":
    main()
