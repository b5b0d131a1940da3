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
from data.collator import IndexedPairs
from data.chat import PAIR_RULES, set_chat_template
from data.end_token import AUTO, RULES
from data.formats import ReadOptions
from data.mix import eval_sets, parse_weights, source_names, weighted_train_set
from data.pairs import build_held_out_set, build_info
from data.ratings import RatedCollator, build_rated_datasets
from data.sampler import train_sampler
from model.create import (build_reward_model, build_tokenizer, check_model_folder, distinct_pad_token,
                          load_tokenizer, model_max_positions, resolve_num_padding)
from model.io import STATS_KEYS, check_output_dir, save_hf_model
from model.lora import merge_lora
from training.accelerations import ACCELERATIONS, choose as choose_accelerations, install as install_accelerations
from training.accelerations import parse_setting as acceleration_setting
from training.checkpoint import (choose_checkpoint, data_fingerprint, layout, load_checkpoint, needs_universal,
                                 run_identity, to_universal)
from training.evaluation import eval_loader, evaluate, evaluate_regression, evaluate_sets
from training.loop import PLATEAU_TOLERANCE, Logger, Stopped, train, train_micro_batch
from training.optim import make_optimizer, make_scheduler, offloads_optimizer, param_groups
from training.sub_batches import SHARE_SETTINGS, parse_setting as sub_batch_setting
from utils import validate
from utils.dist import get_world_size, init_distributed, print_rank0, set_single_process_defaults
from utils.ds_config import load_ds_config, resolve_ds_config
from utils.errors import UserError, exit_on_user_error
from utils.settings import PAIRWISE, REGRESSION, HeadOptions, LossOptions, Settings
from utils.spans import END_OF_CONVERSATION, LAST_TOKEN, pads_at_beginning

HERE = os.path.dirname(os.path.abspath(__file__))
FRESH_START = {"epoch": 0, "batches_done": 0, "epoch_loss_sum": 0.0}
FROM_CONFIG = "from --deepspeed_config"


def main(argv=None):
    args, typed = parse_args(argv)
    exit_on_user_error(run, args, typed, debug=args.debug)


def run(args, typed):
    """The recipe: config -> data and settings -> model -> engine -> (resume) -> train + eval -> save."""
    accelerations = choose_accelerations(args, get_accelerator().device_name())  # before the first CPU matmul
    set_single_process_defaults()
    ds_config, notes = setup_config(args, typed)
    init_distributed()
    for note in notes:
        print_rank0(f"config: {note}")
    print_rank0("DeepSpeed config: " + json.dumps(ds_config, sort_keys=True))
    torch.manual_seed(args.seed)
    data_tokenizer, num_padding, train_set, eval_set = setup_data(args)
    settings = resolve_settings(args, ds_config, data_tokenizer, num_padding, build_info(train_set))
    held_out_sets = setup_held_out(args, data_tokenizer, num_padding, settings)
    tokenizer = build_tokenizer(settings)
    identity = run_identity(args, settings, ds_config, data_fingerprint(train_set))
    train_set = setup_mix(args, train_set)
    train_loader, eval_batches, eval_real = setup_loaders(args, settings, tokenizer, train_set, eval_set,
                                                          ds_config["train_micro_batch_size_per_gpu"])
    held_out = eval_loaders(args, held_out_sets, tokenizer)
    log = Logger(args.output_dir, args.tensorboard_path if args.enable_tensorboard else None)  # once data is read
    checkpoint = choose_checkpoint(args, identity)  # before the model loads: a refused resume costs nothing
    if checkpoint and needs_universal(checkpoint, ds_config):  # saved by another number of ranks
        checkpoint = to_universal(checkpoint, ds_config)
    model = setup_model(args, settings, tokenizer)
    engine = setup_engine(args, model, ds_config, len(train_loader), accelerations.uses("fused_adamw"))
    accelerations = install_accelerations(accelerations, args, engine)
    print_rank0(accelerations.describe())

    def run_eval():
        if settings.head.objective == REGRESSION:
            return evaluate_regression(engine, eval_batches, engine.device, eval_real, settings.head)
        metrics = evaluate(engine, eval_batches, engine.device, eval_real, source_names=source_names(args.data_path))
        if held_out:
            metrics["eval_sets"] = evaluate_sets(engine, held_out, engine.device)
        return metrics
    position = load_checkpoint(engine, checkpoint, ds_config) if checkpoint else FRESH_START
    if checkpoint is None:
        log.eval("before training", run_eval(), 0)
    state = {"identity": identity, "settings": settings.to_dict(), "layout": layout(ds_config)}
    try:
        metrics, train_loss = train(args, engine, train_loader, run_eval, log, position, state,
                                    accelerations.micro_step(train_micro_batch))
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


def setup_data(args):
    """(tokenizer, num_padding_at_beginning, train pairs, eval pairs): the pairs (rated rows under --objective
    regression, data/ratings.py) are tokenised before the model loads, with DeepSpeed-Chat's tokenizer
    conventions (PAD = EOS)."""
    tokenizer = load_tokenizer(args.model_name_or_path, args.add_eot_token)  # PAD = EOS, as DeepSpeed-Chat's
    if args.chat_template:
        set_chat_template(tokenizer, args.chat_template)
    num_padding, note = resolve_num_padding(args.num_padding_at_beginning, tokenizer)
    if note:
        print_rank0(note)
    if args.objective == REGRESSION:
        train_set, eval_set = build_rated_datasets(args.data_path, args.data_split, args.seed, tokenizer,
                                                   args.max_seq_len, args.data_output_path, args.attributes,
                                                   END_OF_CONVERSATION, num_padding, args.end_token_rule)
        return tokenizer, num_padding, train_set, eval_set
    train_set, eval_set = build_pair_datasets(
        args.data_path, args.data_split, args.seed, tokenizer, args.max_seq_len, args.data_output_path,
        END_OF_CONVERSATION, num_padding, args.drop_identical_pairs, args.end_token_rule,
        ReadOptions(args.pairs_from_ratings, args.rating_field))
    if args.use_margin and np.isnan(train_set.with_format("numpy")["margin"]).any():
        raise UserError("--use_margin needs a numeric 'margin' column in every training pair; some have none.")
    return tokenizer, num_padding, train_set, eval_set


def setup_held_out(args, tokenizer, num_padding, settings):
    """{NAME: pairs} of the --eval_data_path sets: every pair of each, tokenised like the training data and
    scored under the end-token rule the training data resolved."""
    held_out = {}
    for name, path in eval_sets(args.eval_data_path).items():
        held_out[name] = build_held_out_set(
            path, args.seed, tokenizer, args.max_seq_len, args.data_output_path, settings.end_of_conversation_token,
            num_padding, args.drop_identical_pairs, settings.end_token_rule,
            ReadOptions(args.pairs_from_ratings, args.rating_field))
        print_rank0(f"data: held-out set {name}: {len(held_out[name]):,} pairs from {path}")
    return held_out


def eval_loaders(args, held_out, tokenizer):
    """{NAME: (eval DataLoader, real rows on this rank)} of the held-out sets; --eval_iters caps them too."""
    return {name: eval_loader(pairs, args.per_device_eval_batch_size, tokenizer.pad_token_id,
                              args.pad_to_multiple_of, args.eval_iters) for name, pairs in held_out.items()}


def setup_mix(args, train_set):
    """The training pairs, re-drawn per --data_weights (data/mix.py) when given."""
    if not args.data_weights:
        return train_set
    weighted, line = weighted_train_set(train_set, parse_weights(args.data_weights, args.data_path),
                                        source_names(args.data_path), args.seed)
    print_rank0(line)
    return weighted


def resolve_settings(args, ds_config, tokenizer, num_padding, info):
    """The run's Settings: the flags, the DeepSpeed config's dtype, and what the data decided (`info`: the
    end-token rule and why, the end-of-conversation text); under the last_token rule PAD becomes a token
    distinct from EOS, which may change num_padding_at_beginning."""
    pad_token = None  # PAD = EOS
    if info["end_token_rule"] == LAST_TOKEN and tokenizer.pad_token_id in (tokenizer.eos_token_id,
                                                                          tokenizer.bos_token_id):
        pad_token, note = distinct_pad_token(tokenizer)
        print_rank0(f"model: {note}")
        tokenizer = load_tokenizer(args.model_name_or_path, args.add_eot_token, tokenizer.chat_template, pad_token)
        num_padding = pads_at_beginning(tokenizer)
    settings = Settings(
        model_name_or_path=args.model_name_or_path, max_seq_len=args.max_seq_len,
        num_padding_at_beginning=num_padding, end_token_rule=info["end_token_rule"], end_token_reason=info["reason"],
        pad_token=pad_token, pad_token_id=tokenizer.pad_token_id,
        end_of_conversation_token=info["end_of_conversation_token"], add_eot_token=args.add_eot_token,
        chat_template=tokenizer.chat_template if args.chat_template else None, dtype=training_dtype(ds_config),
        dropout=args.dropout, loss=LossOptions(args.compute_fp32_loss, args.use_margin,
                                               args.center_rewards_coefficient),
        head=head_options(args),
        lora_dim=args.lora_dim, lora_module_name=args.lora_module_name, only_optimize_lora=args.only_optimize_lora)
    shown = dict(settings.to_dict(), chat_template=args.chat_template and f"from {args.chat_template}")
    print_rank0(f"settings: {json.dumps(shown, sort_keys=True)}")
    return settings


def head_options(args):
    """The value head's HeadOptions from the flags (--num_heads, --head_bootstrap, --conservative_lambda,
    --seed; --objective, --attributes, --attribute_weights, whose default is 1/K each: the attributes' mean)."""
    attributes = tuple(args.attributes or ()) if args.objective == REGRESSION else ()
    weights = tuple(args.attribute_weights or [1.0 / len(attributes)] * len(attributes)) if attributes else ()
    return HeadOptions(num_heads=args.num_heads, bootstrap=args.head_bootstrap,
                       conservative_lambda=args.conservative_lambda, objective=args.objective,
                       attributes=attributes, attribute_weights=weights, seed=args.seed)


def training_dtype(ds_config):
    return "bf16" if ds_config["bf16"]["enabled"] else "fp16" if ds_config["fp16"]["enabled"] else "fp32"


def setup_loaders(args, settings, tokenizer, train_set, eval_set, micro_batch):
    """(train DataLoader, eval DataLoader, real eval rows on this rank)."""
    sampler = train_sampler(train_set, micro_batch, args.group_by_length, args.seed)
    pad, multiple, head = tokenizer.pad_token_id, args.pad_to_multiple_of, settings.head
    if head.objective == REGRESSION:  # rated rows: one per response, with their (K,) ratings
        collator, eval_collator = RatedCollator(pad, multiple), RatedCollator(pad, multiple, with_groups=True)
        rows = train_set
    else:
        bootstrap = (head.seed, head.num_heads) if head.bootstrap else None
        collator = PairCollator(pad, multiple, with_margin=settings.loss.use_margin, bootstrap=bootstrap)
        eval_collator, rows = None, IndexedPairs(train_set) if bootstrap else train_set  # weights follow the index
    train_loader = DataLoader(rows, batch_size=micro_batch, sampler=sampler, collate_fn=collator)
    eval_batches, eval_real = eval_loader(eval_set, args.per_device_eval_batch_size, pad, multiple, args.eval_iters,
                                          eval_collator)
    return train_loader, eval_batches, eval_real


def setup_model(args, settings, tokenizer):
    """The reward model (`build_reward_model`: pretrained base, new value head, LoRA) with gradient
    checkpointing if asked."""
    model = build_reward_model(settings, tokenizer)
    if args.gradient_checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    return model


def setup_engine(args, model, config, micro_batches_per_epoch, fused_adamw=False):
    """DeepSpeed's engine around the model, DeepSpeed-Chat's optimizer groups and the LR schedule."""
    accumulation = config["gradient_accumulation_steps"]
    if micro_batches_per_epoch < accumulation:
        print_rank0(f"warning: {micro_batches_per_epoch} micro-batches per epoch but {accumulation} per optimizer "
                    "step: lower --per_device_train_batch_size or train_batch_size, or add data.")
    groups = param_groups(model, args.weight_decay, args.lora_learning_rate if args.lora_dim else None)
    optimizer = make_optimizer(groups, args.learning_rate, offloads_optimizer(config),
                               get_accelerator().device_name(), fused_adamw)
    scheduler = make_scheduler(optimizer, args.lr_scheduler_type, args.num_warmup_steps,
                               args.num_train_epochs * math.ceil(micro_batches_per_epoch / accumulation))
    engine, *_ = deepspeed.initialize(model=model, optimizer=optimizer, lr_scheduler=scheduler,
                                      config=config, dist_init_required=True)
    return engine


def save(args, engine, tokenizer, ds_config, results):
    """Write the reward model (LoRA merged, eval reward statistics for step 3) and the run's JSON files."""
    engine.module.reward_stats = {key: results[key] for key in STATS_KEYS if key in results}
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
    data.add_argument("--data_weights", nargs="+", default=None,
                      help="Per-source training mix, one weight per --data_path (W1 W2 ... or NAME=W): an epoch keeps "
                           "the same number of pairs, source s gets that many x w_s / sum(w), its pairs repeated or "
                           "sub-sampled (seeded by --seed). Off: the sources' pairs concatenated, as DeepSpeed-Chat.")
    data.add_argument("--eval_data_path", nargs="+", default=None, metavar="NAME=PATH",
                      help="Held-out pair sets evaluated at every evaluation and reported by NAME: every pair of "
                           "PATH (a file, folder or hub name, in any --data_path layout) is eval data (--eval_iters "
                           "caps them too).")
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
    model.add_argument("--num_heads", type=int, default=1,
                       help="Value heads on the shared backbone: 1 is DeepSpeed-Chat's head; K > 1 trains an "
                            "ensemble of K heads (own seeded init each), reward = their mean, uncertainty = their "
                            "std (docs/ensembles.md).")
    model.add_argument("--head_bootstrap", action="store_true",
                       help="Ensemble (--num_heads > 1): weigh each pair's loss in each head by its own Poisson(1) "
                            "draw, fixed per (seed, pair, head): a bootstrap, so heads disagree where data is thin.")
    model.add_argument("--conservative_lambda", type=float, default=0.0,
                       help="Ensemble (--num_heads > 1): scoring also reports mean - lambda * std (saved with "
                            "the model; 0: off).")
    model.add_argument("--objective", choices=[PAIRWISE, REGRESSION], default=PAIRWISE,
                       help="pairwise: DeepSpeed-Chat's ranking loss on preference pairs; regression: one head output "
                            "per rated attribute (--attributes), trained with a masked MSE on rated single responses "
                            "(prompt, response, one column per attribute; docs/regression.md).")
    model.add_argument("--attributes", type=_names, default=None,
                       help="--objective regression: the rating columns to learn, comma-separated, e.g. "
                            "helpfulness,correctness,coherence,complexity,verbosity (HelpSteer2's).")
    model.add_argument("--attribute_weights", type=_numbers, default=None,
                       help="--objective regression: the reward is these weights . the attributes, one weight per "
                            "--attributes name, comma-separated (default: 1/K each, the attributes' mean).")
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
    train.add_argument("--cpu_accelerations", type=acceleration_setting, default="auto",
                       help="CPU accelerations of the plain step (training/accelerations.py; the log names those "
                            "on and why others are off): auto (all that apply, on CPU only), off (the plain "
                            f"forward/backward/step), or a comma list of {', '.join(ACCELERATIONS)}.")
    train.add_argument("--disable_cpu_speedups", action="store_true",
                       help="On CPU, train with torch's dropout and transformers' attention kernel (turns off the "
                            "fast_dropout and eager_attention accelerations).")
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


def _names(value):
    names = [name.strip() for name in value.split(",")]
    if not all(names):
        raise argparse.ArgumentTypeError(f"{value!r}: give column names separated by commas, e.g. "
                                         "helpfulness,verbosity")
    return tuple(names)


def _numbers(value):
    try:
        numbers = tuple(float(part) for part in value.split(","))
    except ValueError:
        numbers = ()
    if not numbers or not all(map(math.isfinite, numbers)):
        raise argparse.ArgumentTypeError(f"{value!r}: give finite numbers separated by commas, e.g. 0.5,0.5")
    return numbers


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
