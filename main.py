"""DeepSpeed-Chat step 2: train a reward model on preference pairs (prompt, chosen, rejected).

    python main.py --deepspeed_config ./ds_config.json --model_name_or_path MODEL --data_path DATA \
        --output_dir OUT
    deepspeed --num_gpus 2 main.py ...        # data parallel; on CPU this starts two gloo ranks
"""
import argparse
import json
import math
import os
import sys

import deepspeed
import numpy as np
import torch
from deepspeed.accelerator import get_accelerator
from torch.utils.data import DataLoader
from transformers import SchedulerType

from data import PairCollator, build_pair_datasets
from data.chat import PAIR_RULES, set_chat_template
from data.end_token import AUTO, RULES
from data.formats import ReadOptions
from data.pairs import build_info
from data.sampler import train_sampler
from model.create import (check_model_folder, create_reward_model, load_tokenizer, model_max_positions,
                          pads_at_beginning, resolve_num_padding, use_distinct_pad)
from model.io import check_output_dir, save_hf_model
from model.lora import apply_lora, merge_lora
from model.reward_model import END_OF_CONVERSATION, LAST_TOKEN
from training.checkpoint import (choose_checkpoint, data_fingerprint, layout, load_checkpoint, needs_universal,
                                 run_identity, to_universal)
from training.bf16_step import use_buffered_step
from training.cpu_speed import bound_kernel_caches
from training.evaluation import eval_loader, evaluate
from training.loop import PLATEAU_TOLERANCE, Logger, Stopped, train
from training.optim import make_optimizer, make_scheduler, offloads_optimizer, param_groups
from training.sub_batches import SHARE_SETTINGS, parse_setting as sub_batch_setting
from utils.dist import get_world_size, init_distributed, print_rank0, set_single_process_defaults
from utils.ds_config import load_ds_config, resolve_ds_config
from utils import validate
from utils.errors import UserError, exit_on_user_error

HERE = os.path.dirname(os.path.abspath(__file__))
FRESH_START = {"epoch": 0, "batches_done": 0, "epoch_loss_sum": 0.0}
FROM_CONFIG = "from --deepspeed_config"


def main(argv=None):
    args, typed = parse_args(argv)
    exit_on_user_error(run, args, typed, debug=args.debug)


def run(args, typed):
    """The recipe: config -> tokenizer -> data -> model -> engine -> (resume) -> train + eval -> save."""
    bound_kernel_caches()  # before the first CPU matmul
    set_single_process_defaults()
    ds_config, notes = setup_config(args, typed)
    init_distributed()
    log = Logger(args.output_dir, args.tensorboard_path if args.enable_tensorboard else None)
    for note in notes:
        print_rank0(f"config: {note}")
    print_rank0("DeepSpeed config: " + json.dumps(ds_config, sort_keys=True))
    torch.manual_seed(args.seed)
    tokenizer = load_tokenizer(args.model_name_or_path, END_OF_CONVERSATION, args.add_eot_token)
    train_loader, eval_batches, eval_real = setup_data(args, tokenizer, ds_config["train_micro_batch_size_per_gpu"])
    identity = run_identity(args, ds_config, data_fingerprint(train_loader.dataset))
    checkpoint = choose_checkpoint(args, identity)  # before the model loads: a refused resume costs nothing
    if checkpoint and needs_universal(checkpoint, ds_config):  # saved by another number of ranks
        checkpoint = to_universal(checkpoint, ds_config)
    model = setup_model(args, tokenizer)
    engine = setup_engine(args, model, ds_config, len(train_loader))

    def run_eval():
        return evaluate(engine, eval_batches, engine.device, eval_real)
    position = load_checkpoint(engine, checkpoint, ds_config) if checkpoint else FRESH_START
    if checkpoint is None:
        log.eval("before training", run_eval(), 0)
    try:
        metrics, train_loss = train(args, engine, train_loader, run_eval, log, position,
                                    {"identity": identity, "layout": layout(ds_config)})
    except Stopped as stopped:
        print_rank0(str(stopped))
        sys.exit(128 + stopped.signum)
    save(args, engine, tokenizer, ds_config, dict(metrics, train_loss=train_loss, optimizer_steps=engine.global_steps))


def setup_config(args, typed):
    """Validate flags and resolve the DeepSpeed config before any model is loaded."""
    base = load_ds_config(args.deepspeed_config)
    validate.check(args, base)
    accelerator = get_accelerator()
    config, notes = resolve_ds_config(base, args, typed, get_world_size(), accelerator.device_name(),
                                      accelerator.is_bf16_supported())
    check_output_dir(args.output_dir, args.overwrite_output_dir)
    check_model_folder(args.model_name_or_path)
    max_positions = model_max_positions(args.model_name_or_path)
    if max_positions and args.max_seq_len > max_positions:
        raise UserError(f"--max_seq_len {args.max_seq_len} is above the model's {max_positions} positions: "
                        f"use --max_seq_len {max_positions} or less.")
    return config, notes


def setup_data(args, tokenizer, micro_batch):
    """(train DataLoader, eval DataLoader, real eval rows on this rank): built before the model loads.

    Resolves what the data decides for the model, in args: num_padding_at_beginning, end_token_rule
    (with the last_token rule the tokenizer gets a PAD distinct from EOS), end_of_conversation_token.
    """
    if args.chat_template:
        set_chat_template(tokenizer, args.chat_template)
    args.num_padding_at_beginning = resolve_num_padding(args.num_padding_at_beginning, tokenizer)
    train_set, eval_set = build_pair_datasets(
        args.data_path, args.data_split, args.seed, tokenizer, args.max_seq_len, args.data_output_path,
        END_OF_CONVERSATION, args.num_padding_at_beginning, args.drop_identical_pairs, args.end_token_rule,
        ReadOptions(args.pairs_from_ratings, args.rating_field))
    info = build_info(train_set)
    args.end_token_rule, args.end_of_conversation_token = info["end_token_rule"], info["end_of_conversation_token"]
    if args.end_token_rule == LAST_TOKEN and tokenizer.pad_token_id in (tokenizer.eos_token_id, tokenizer.bos_token_id):
        print_rank0(f"model: {use_distinct_pad(tokenizer)}")
        args.num_padding_at_beginning = pads_at_beginning(tokenizer)
    if args.use_margin and np.isnan(train_set.with_format("numpy")["margin"]).any():
        raise UserError("--use_margin needs a numeric 'margin' column in every training pair; some have none.")
    sampler = train_sampler(train_set, micro_batch, args.group_by_length, args.seed)
    collator = PairCollator(tokenizer.pad_token_id, args.pad_to_multiple_of, with_margin=args.use_margin)
    train_loader = DataLoader(train_set, batch_size=micro_batch, sampler=sampler, collate_fn=collator)
    eval_batches, eval_real = eval_loader(eval_set, args.per_device_eval_batch_size, tokenizer.pad_token_id,
                                          args.pad_to_multiple_of, args.eval_iters)
    return train_loader, eval_batches, eval_real


def setup_model(args, tokenizer):
    """The reward model with the LoRA and gradient-checkpointing flags applied."""
    model = create_reward_model(args.model_name_or_path, tokenizer, args.num_padding_at_beginning, args.dropout,
                                args.compute_fp32_loss, args.end_of_conversation_token,
                                args.center_rewards_coefficient, args.end_token_rule)
    if args.lora_dim:
        apply_lora(model, args.lora_dim, args.lora_module_name, args.only_optimize_lora)
    if args.gradient_checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    return model


def setup_engine(args, model, config, micro_batches_per_epoch):
    """DeepSpeed's engine around the model, DeepSpeed-Chat's optimizer groups and the LR schedule."""
    accumulation = config["gradient_accumulation_steps"]
    if micro_batches_per_epoch < accumulation:
        print_rank0(f"warning: {micro_batches_per_epoch} micro-batches per epoch but {accumulation} per optimizer "
                    "step: lower --per_device_train_batch_size or train_batch_size, or add data.")
    groups = param_groups(model, args.weight_decay, args.lora_learning_rate if args.lora_dim else None)
    optimizer = make_optimizer(groups, args.learning_rate, offloads_optimizer(config),
                               get_accelerator().device_name())
    scheduler = make_scheduler(optimizer, args.lr_scheduler_type, args.num_warmup_steps,
                               args.num_train_epochs * math.ceil(micro_batches_per_epoch / accumulation))
    engine, *_ = deepspeed.initialize(model=model, optimizer=optimizer, lr_scheduler=scheduler,
                                      config=config, dist_init_required=True)
    if engine.zero_optimization_stage() == 0 and engine.dp_world_size == 1:
        # Alone, DeepSpeed would still flatten every gradient, "all-reduce" it and copy it back each step.
        engine.enable_backward_allreduce = False
    use_buffered_step(engine)  # bf16 ZeRO-0 on CPU: DeepSpeed's step, bit for bit, through one fp32 buffer
    return engine


def save(args, engine, tokenizer, ds_config, results):
    """Write the reward model (LoRA merged, eval reward statistics for step 3) and the run's JSON files."""
    engine.module.reward_stats = {"reward_mean": results["reward_mean"], "reward_std": results["reward_std"]}
    if args.lora_dim:
        merge_lora(engine.module)  # step 3 and evaluation load a plain model
    save_hf_model(engine.module, tokenizer, args.output_dir, ds_config["zero_optimization"]["stage"],
                  {"ds_config.json": ds_config, "train_results.json": results, "training_args.json": vars(args)})
    print_rank0(f"saved reward model to {args.output_dir}")


# ---- command line ---------------------------------------------------------------------------------

def build_parser():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    data = parser.add_argument_group("data")
    data.add_argument("--data_path", nargs="+", default=["Dahoas/rm-static"],
                      help="Registry names (hub datasets, synthetic/preference), local files or folders.")
    data.add_argument("--data_split", default="2,4,4",
                      help="Shares of each dataset for steps 1,2,3; step 2 trains on the second share.")
    data.add_argument("--data_output_path", default="/tmp/data_files",
                      help="Where tokenised data is cached (must be shared by all ranks of a node).")
    data.add_argument("--max_seq_len", type=int, default=512, help="Tokens per prompt+answer (truncated).")
    data.add_argument("--group_by_length", action="store_true",
                      help="Batch pairs of similar length (random, seeded): much less padding. Off: "
                           "DeepSpeed-Chat's sample order.")
    data.add_argument("--drop_identical_pairs", action="store_true",
                      help="Drop pairs whose chosen and rejected ids are identical (after truncation). Off: "
                           "DeepSpeed-Chat keeps them (loss ln 2 with no gradient; wrong in evaluation).")
    data.add_argument("--pad_to_multiple_of", type=int, default=None,
                      help="Round each batch's padded length up to a multiple of this (e.g. 8 for tensor cores).")
    data.add_argument("--add_eot_token", action="store_true",
                      help=f"Make {END_OF_CONVERSATION!r}, appended to every answer, a special token.")
    data.add_argument("--chat_template", default=None,
                      help="A Jinja chat-template file to render conversations with, instead of the tokenizer's "
                           "(saved with the model). Default: the tokenizer's own.")
    data.add_argument("--pairs_from_ratings", default="best_vs_rest", choices=list(PAIR_RULES),
                      help="Rated completions: best_vs_rest pairs the best-rated one with each other one; all "
                           "pairs every two. Ties are dropped and counted; the rating difference is the margin.")
    data.add_argument("--rating_field", default="overall_score",
                      help="UltraFeedback layout: the completion field that rates it (overall_score, or "
                           "fine-grained_score, the mean of its four aspect ratings).")

    model = parser.add_argument_group("model")
    model.add_argument("--model_name_or_path", default="facebook/opt-350m",
                       help="Pretrained causal LM folder (or hub name when online).")
    model.add_argument("--num_padding_at_beginning", type=_count_or_auto, default=AUTO,
                       help="PAD-equal tokens at the start of every row (OPT: 1, its BOS </s>; most others: 0); "
                            "auto derives it from the tokenizer.")
    model.add_argument("--end_token_rule", default=AUTO, choices=[AUTO, *RULES],
                       help="Where a row's score is read: deepspeed_chat, before the (n+1)-th PAD (PAD = EOS); "
                            "last_token, at the last attended token (with a PAD distinct from EOS); auto: "
                            "last_token when a chat template renders the data or EOS occurs inside a text.")
    model.add_argument("--dropout", type=float, default=None,
                       help="Override the model's dropout probabilities (default: keep the model's).")
    model.add_argument("--compute_fp32_loss", action="store_true", help="Upcast rewards to fp32 for the loss.")
    model.add_argument("--use_margin", action="store_true",
                       help="Loss -logsigmoid(r_c - r_j - margin) with each pair's 'margin' column (TRL-style).")
    model.add_argument("--center_rewards_coefficient", type=float, default=0.0,
                       help="Add c * mean((s_c + s_j)^2) over end scores to keep rewards centred (0: off).")
    model.add_argument("--gradient_checkpointing", action="store_true",
                       help="Recompute activations in backward to save memory.")
    model.add_argument("--lora_dim", type=int, default=0, help="LoRA rank (0: no LoRA).")
    model.add_argument("--lora_module_name", default="decoder.layers.",
                       help="Only modules whose name contains this get LoRA.")
    model.add_argument("--only_optimize_lora", action="store_true", help="Train only LoRA and the value head.")
    model.add_argument("--lora_learning_rate", type=float, default=5e-4, help="Learning rate of LoRA weights.")

    train = parser.add_argument_group("training")
    train.add_argument("--per_device_train_batch_size", type=int, default=None,
                       help=f"Pairs per rank per micro-batch (default {FROM_CONFIG}: "
                            "train_micro_batch_size_per_gpu).")
    train.add_argument("--per_device_eval_batch_size", type=int, default=16, help="Pairs per rank in eval.")
    train.add_argument("--gradient_accumulation_steps", type=int, default=None,
                       help="Micro-batches per optimizer step (default: train_batch_size / "
                            "(micro batch x ranks), so the config's global batch is kept).")
    train.add_argument("--learning_rate", type=float, default=5e-5, help="Peak learning rate.")
    train.add_argument("--weight_decay", type=float, default=0.0, help="AdamW weight decay (not on biases/norms).")
    train.add_argument("--num_train_epochs", type=int, default=1, help="Passes over the training pairs.")
    train.add_argument("--lr_scheduler_type", default="cosine", choices=[s.value for s in SchedulerType],
                       help="Learning-rate schedule.")
    train.add_argument("--num_warmup_steps", type=int, default=0, help="Optimizer steps of LR warm-up.")
    train.add_argument("--seed", type=int, default=1234, help="Seed for data split, order and init.")
    train.add_argument("--eval_interval", type=int, default=0,
                       help="Evaluate every N optimizer steps (0: only before training and after each epoch).")
    train.add_argument("--eval_iters", type=int, default=0,
                       help="Eval batches per evaluation (0: the whole eval split; DeepSpeed-Chat used 100).")
    train.add_argument("--output_dir", required=True, help="Where the trained reward model is written.")
    train.add_argument("--overwrite_output_dir", action="store_true",
                       help="Allow --output_dir to already hold a trained model (it is replaced).")
    train.add_argument("--save_steps", type=int, default=0,
                       help="Write a resumable checkpoint to OUTPUT_DIR/checkpoints every N optimizer steps (0: never).")
    train.add_argument("--save_total_limit", type=int, default=0, help="Keep only the newest K checkpoints (0: all).")
    train.add_argument("--resume_from_checkpoint", default=None,
                       help="'auto' (newest good checkpoint in --output_dir, or a fresh start) or a checkpoint "
                            "folder. The number of ranks and the micro batch may differ from the saving run's if "
                            "the global batch stays.")
    train.add_argument("--loss_plateau_warning", type=int, default=100,
                       help=f"Warn if the loss stays within {PLATEAU_TOLERANCE} of ln 2 for the first N optimizer "
                            "steps (0: off).")
    train.add_argument("--disable_cpu_speedups", action="store_true",
                       help="On CPU, train with torch's dropout and transformers' attention kernel instead of "
                            "training/cpu_speed.py's faster dropout masks and eager attention for short batches.")
    train.add_argument("--log_rows", action="store_true",
                       help="Write the dataset rows every optimizer step trained on to OUTPUT_DIR/rows_rank{R}.jsonl "
                            "(each rank its share): an audit of what a run, or a resumed run, saw.")
    train.add_argument("--sub_batches", type=sub_batch_setting, default="auto",
                       help="Compute each micro batch as sub-batches of pairs of similar length, one optimizer "
                            "step (same update, less padding): auto (on CPU), off, or N: split where it saves more "
                            "than N padded tokens per extra forward (training/sub_batches.py).")
    train.add_argument("--share_prompt", choices=SHARE_SETTINGS, default="auto",
                       help="Compute the tokens a pair's chosen and rejected rows share (their prompt) once per "
                            "pair (same values, fewer tokens): auto (on CPU without dropout, per sub-batch where it "
                            "costs less), on (every sub-batch) or off (model/shared_prompt.py).")
    train.add_argument("--enable_tensorboard", action="store_true", help="Write TensorBoard scalars.")
    train.add_argument("--tensorboard_path", default="step2_tensorboard", help="TensorBoard log folder.")

    ds = parser.add_argument_group("DeepSpeed")
    ds.add_argument("--deepspeed_config", default=os.path.join(HERE, "ds_config.json"),
                    help="Base DeepSpeed config; the flags below override its keys only when typed.")
    ds.add_argument("--deepspeed", action="store_true", help="Accepted for DeepSpeed launchers; always on.")
    ds.add_argument("--zero_stage", type=int, default=None, help=f"ZeRO stage 0-3 (default {FROM_CONFIG}).")
    ds.add_argument("--offload", action="store_true", help="ZeRO-Offload: optimizer (and ZeRO-3 params) on CPU.")
    ds.add_argument("--dtype", default=None, choices=["fp16", "bf16", "fp32"],
                    help=f"Training precision (default {FROM_CONFIG}; fp16 becomes bf16 on CPU).")
    ds.add_argument("--local_rank", type=int, default=-1, help="Set by the deepspeed launcher.")
    parser.add_argument("--debug", action="store_true", help="Show Python tracebacks for user errors.")
    return parser


def _count_or_auto(value):
    if value == AUTO:
        return value
    if not value.isdigit():
        raise argparse.ArgumentTypeError(f"{value!r} is neither 'auto' nor a count >= 0")
    return int(value)


def parse_args(argv=None):
    """Return (args, typed): `typed` names the flags given on the command line."""
    args = build_parser().parse_args(argv)
    suppressed = build_parser()
    for action in suppressed._actions:
        action.default = argparse.SUPPRESS
        action.required = False
    typed = set(vars(suppressed.parse_args(argv)))
    return args, typed


if __name__ == "__main__":
    main()
