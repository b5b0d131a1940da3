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
import time

HERE = os.path.dirname(os.path.abspath(__file__))
END_OF_CONVERSATION = "<|endoftext|>"
FROM_CONFIG = "from --deepspeed_config"


def build_parser():
    from transformers import SchedulerType
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

    model = parser.add_argument_group("model")
    model.add_argument("--model_name_or_path", default="facebook/opt-350m",
                       help="Pretrained causal LM folder (or hub name when online).")
    model.add_argument("--num_padding_at_beginning", type=int, default=1,
                       help="PAD-equal tokens at the start of every row (OPT: 1, its BOS </s>; most others: 0).")
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
                       help="'auto' (newest complete checkpoint in --output_dir, or a fresh start) or a checkpoint folder.")
    train.add_argument("--loss_plateau_warning", type=int, default=100,
                       help="Warn if the loss stays within 0.02 of ln 2 for the first N optimizer steps (0: off).")
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


def parse_args(argv=None):
    """Return (args, typed): `typed` names the flags given on the command line."""
    args = build_parser().parse_args(argv)
    suppressed = build_parser()
    for action in suppressed._actions:
        action.default = argparse.SUPPRESS
        action.required = False
    typed = set(vars(suppressed.parse_args(argv)))
    return args, typed


def setup_config(args, typed):
    """Validate flags and resolve the DeepSpeed config before any model is loaded."""
    from deepspeed.accelerator import get_accelerator

    from model.create import check_model_folder, model_max_positions
    from utils.checkpoint import check_output_dir
    from utils.ds_config import load_ds_config, resolve_ds_config
    from utils.dist import get_world_size
    from utils.errors import UserError
    accelerator = get_accelerator()
    config, notes = resolve_ds_config(load_ds_config(args.deepspeed_config), args, typed, get_world_size(),
                                      accelerator.device_name(), accelerator.is_bf16_supported())
    if args.lora_dim < 0:
        raise UserError(f"--lora_dim must be 0 (no LoRA) or a positive rank, not {args.lora_dim}.")
    if args.only_optimize_lora and not args.lora_dim:
        raise UserError("--only_optimize_lora needs --lora_dim > 0.")
    check_output_dir(args.output_dir, args.overwrite_output_dir)
    check_model_folder(args.model_name_or_path)
    max_positions = model_max_positions(args.model_name_or_path)
    if max_positions and args.max_seq_len > max_positions:
        raise UserError(f"--max_seq_len {args.max_seq_len} is above the model's {max_positions} positions: "
                        f"use --max_seq_len {max_positions} or less.")
    return config, notes


def setup_data(args, tokenizer, micro_batch):
    import numpy as np
    import torch
    from torch.utils.data import DataLoader

    from data import PairCollator, build_pair_datasets
    from data.sampler import train_sampler
    from utils.errors import UserError
    from utils.evaluation import eval_loader
    train_set, eval_set = build_pair_datasets(
        args.data_path, args.data_split, args.seed, tokenizer, args.max_seq_len, args.data_output_path,
        END_OF_CONVERSATION, args.num_padding_at_beginning, args.drop_identical_pairs)
    if args.use_margin and np.isnan(train_set.with_format("numpy")["margin"]).any():
        raise UserError("--use_margin needs a numeric 'margin' column in every training pair; some have none.")
    sampler = train_sampler(train_set, micro_batch, args.group_by_length, args.seed)
    collator = PairCollator(tokenizer.pad_token_id, args.pad_to_multiple_of, with_margin=args.use_margin)
    # Its own generator: creating a loader iterator must not consume the global RNG (exact resume).
    train_loader = DataLoader(train_set, batch_size=micro_batch, sampler=sampler, collate_fn=collator,
                              generator=torch.Generator().manual_seed(args.seed))
    loader, eval_real = eval_loader(eval_set, args.per_device_eval_batch_size, tokenizer.pad_token_id,
                                    args.pad_to_multiple_of, args.eval_iters)
    return train_loader, loader, eval_real


def setup_engine(args, model, config, steps_per_epoch):
    import deepspeed
    from deepspeed.accelerator import get_accelerator

    from utils.optim import make_optimizer, make_scheduler, offloads_optimizer, param_groups
    groups = param_groups(model, args.weight_decay, args.lora_learning_rate if args.lora_dim else None)
    optimizer = make_optimizer(groups, args.learning_rate, offloads_optimizer(config),
                               get_accelerator().device_name())
    scheduler = make_scheduler(optimizer, args.lr_scheduler_type, args.num_warmup_steps,
                               args.num_train_epochs * steps_per_epoch)
    engine, *_ = deepspeed.initialize(model=model, optimizer=optimizer, lr_scheduler=scheduler,
                                      config=config, dist_init_required=True)
    return engine


class Logger:
    """Rank-0 log lines, a tqdm-safe print and optional TensorBoard scalars."""

    def __init__(self, args):
        from utils.dist import is_main_process
        self.enabled = is_main_process()
        self.writer = None
        self.jsonl = None
        if self.enabled:  # every logged number, for plots (evaluation_scripts/evaluate.py) and scripts
            os.makedirs(args.output_dir, exist_ok=True)
            self.jsonl = open(os.path.join(args.output_dir, "train_log.jsonl"), "a")
        if self.enabled and args.enable_tensorboard:
            from torch.utils.tensorboard import SummaryWriter
            self.writer = SummaryWriter(os.path.join(args.tensorboard_path, "step2_reward_model"))

    def info(self, message):
        if self.enabled:
            from tqdm import tqdm
            tqdm.write(message, file=sys.stdout)
            sys.stdout.flush()

    def scalars(self, prefix, values, step):
        if self.jsonl:
            self.jsonl.write(json.dumps({"kind": prefix, "step": step, **values}) + "\n")
            self.jsonl.flush()
        if self.writer:
            for key, value in values.items():
                self.writer.add_scalar(f"{prefix}/{key}", value, step)
            self.writer.flush()

    def step(self, step, loss, lr, pairs_per_s, seconds):
        self.info(f"step {step} | loss {loss:.4f} | lr {lr:.3e} | {pairs_per_s:.1f} pairs/s | {seconds * 1000:.0f} ms")
        self.scalars("train", {"loss": loss, "lr": lr, "pairs_per_s": pairs_per_s}, step)

    def eval(self, tag, metrics, step):
        self.info(f"eval ({tag}) | acc {metrics['accuracy']:.4f} | chosen {metrics['chosen_mean']:.4f} | "
                  f"rejected {metrics['rejected_mean']:.4f} | margin {metrics['margin']:.4f} | "
                  f"pairs {metrics['num_pairs']} | ties {metrics['ties']}")
        self.scalars("rewards", metrics, step)


class StopSignal:
    """SIGTERM/SIGINT ask for a checkpoint at the next optimizer step, then a clean exit (a second
    Ctrl-C stops at once). All ranks agree on stopping, so they save the same step."""

    def __init__(self):
        import signal
        self.signum = 0
        for signum in (signal.SIGTERM, signal.SIGINT):
            signal.signal(signum, self._handle)

    def _handle(self, signum, frame):
        if self.signum == signum == 2:
            raise KeyboardInterrupt
        self.signum = signum

    def agreed(self, device):
        import torch

        from utils.dist import all_reduce_sum
        flag = all_reduce_sum(torch.tensor([float(self.signum)], device=device))
        return int(flag.item()) != 0


class PlateauWarning:
    """A loss stuck at ln 2 means r_c == r_j everywhere: usually the end token is read at the wrong
    place (e.g. a wrong --num_padding_at_beginning) or the head gets no gradient."""

    def __init__(self, steps, log):
        self.steps, self.log, self.stuck = steps, log, True

    def update(self, step, loss):
        if not self.steps or step > self.steps:
            return
        self.stuck = self.stuck and abs(loss - math.log(2)) < 0.02
        if step == self.steps and self.stuck:
            self.log.info(f"warning: the training loss stayed within 0.02 of ln 2 = 0.693 for the first {step} "
                          "steps: the reward model is not separating chosen from rejected. Check "
                          "--num_padding_at_beginning (OPT: 1, most others: 0), the learning rate and the data.")


class Stopped(Exception):
    """Training stopped by a signal after saving a checkpoint."""


def train(args, engine, train_loader, run_eval, log, position):
    """The training loop from `position` (epoch, batches done in it, their loss sum).

    Returns (final eval metrics, mean training loss of the last epoch).
    """
    import torch
    from tqdm import tqdm

    from utils.checkpoint import save_checkpoint
    from utils.dist import get_world_size
    from utils.errors import UserError
    from utils.evaluation import to_device
    stop = StopSignal()
    plateau = PlateauWarning(args.loss_plateau_warning, log)
    accumulation = engine.gradient_accumulation_steps()
    pairs_per_step = train_loader.batch_size * get_world_size() * accumulation
    batches_per_epoch = len(train_loader)
    for epoch in range(position["epoch"], args.num_train_epochs):
        engine.train()  # from_pretrained leaves the base in eval mode (no dropout)
        skip = position["batches_done"] if epoch == position["epoch"] else 0
        train_loader.sampler.set_epoch(epoch, skip_batches=skip)  # resume: the sampler skips, nothing is read
        epoch_loss = torch.tensor(position["epoch_loss_sum"] if skip else 0.0, device=engine.device)
        step_loss, step_start = torch.zeros((), device=engine.device), time.time()
        bar = tqdm(train_loader, total=batches_per_epoch, initial=skip,
                   desc=f"epoch {epoch + 1}/{args.num_train_epochs}", disable=not log.enabled)
        step_batches = []  # this optimizer step's micro-batches, to tell why a loss is not finite
        for batch_index, batch in enumerate(bar, start=skip):
            step_batches.append((batch_index, batch["input_ids"]))
            loss = engine(**to_device(batch, engine.device))["loss"]
            engine.backward(loss)
            boundary = engine.is_gradient_accumulation_boundary()
            engine.step()
            epoch_loss += loss.detach().float()
            step_loss += loss.detach().float()
            if not boundary:
                continue
            step, mean_loss = engine.global_steps, step_loss.item() / accumulation
            if not math.isfinite(mean_loss):
                raise UserError(f"training loss is {mean_loss} at optimizer step {step}: stopping without saving "
                                f"a model. {nonfinite_cause(step_batches, engine.module)}")
            step_batches.clear()
            elapsed = time.time() - step_start
            bar.set_postfix(loss=f"{mean_loss:.4f}", pairs_per_s=f"{pairs_per_step / elapsed:.1f}")
            log.step(step, mean_loss, engine.get_lr()[0], pairs_per_step / elapsed, elapsed)
            plateau.update(step, mean_loss)
            position = {"epoch": epoch, "batches_done": batch_index + 1, "epoch_loss_sum": epoch_loss.item()}
            if args.eval_interval and step % args.eval_interval == 0:
                log.eval(f"step {step}", run_eval(), step)
            stopping = stop.agreed(engine.device)
            if stopping or (args.save_steps and step % args.save_steps == 0):
                folder = save_checkpoint(engine, args.output_dir, {"position": position, "world_size": get_world_size(),
                                         "lora": lora_settings(args)}, args.save_total_limit)
                log.info(f"saved checkpoint {folder}")
            if stopping:
                raise Stopped(f"stopped by signal {stop.signum or 15} at step {step}; checkpoint in {folder}. "
                              "Continue with --resume_from_checkpoint auto.")
            step_loss.zero_()
            step_start = time.time()
        mean_epoch_loss = epoch_loss.item() / max(batches_per_epoch, 1)
        log.info(f"epoch {epoch + 1}/{args.num_train_epochs} | mean loss {mean_epoch_loss:.4f}")
        metrics = run_eval()
        log.eval(f"epoch {epoch + 1}", metrics, engine.global_steps)
    return metrics, mean_epoch_loss


def nonfinite_cause(step_batches, model):
    """Why a step's loss is not finite: pairs with an empty loss span (a data cause) or a numeric blow-up."""
    from model.reward_model import loss_spans
    empty = []
    for batch_index, input_ids in step_batches:
        pairs = input_ids.size(0) // 2
        start, end, _, _ = loss_spans(input_ids[:pairs], input_ids[pairs:], model.PAD_ID,
                                      model.num_padding_at_beginning)
        empty += [f"micro-batch {batch_index} pair {i}" for i in (end == start).nonzero().flatten().tolist()]
    if empty:
        return (f"Data: {len(empty)} pair(s) are scored at or before the token where chosen and rejected first "
                f"differ, so their loss span is empty (0/0): {', '.join(empty[:5])}. Check "
                "--num_padding_at_beginning and whether the PAD/EOS token occurs inside the texts.")
    return ("The rewards themselves are not finite (a numeric blow-up): resume from the last checkpoint "
            "(--resume_from_checkpoint auto) with a lower --learning_rate, or train in bf16/fp32.")


def lora_settings(args):
    return {"lora_dim": args.lora_dim, "lora_module_name": args.lora_module_name if args.lora_dim else None,
            "only_optimize_lora": args.only_optimize_lora}


def resume(args, engine, log):
    """Where training starts: a fresh start, or the state saved in a checkpoint."""
    from utils.checkpoint import checkpoint_info, find_checkpoint, load_checkpoint
    from utils.dist import get_world_size
    from utils.errors import UserError
    fresh = {"epoch": 0, "batches_done": 0, "epoch_loss_sum": 0.0}
    if not args.resume_from_checkpoint:
        return fresh
    folder = find_checkpoint(args.output_dir, args.resume_from_checkpoint, log.info)
    if folder is None:
        log.info(f"no complete checkpoint in {args.output_dir}: starting fresh")
        return fresh
    saved = checkpoint_info(folder)
    if saved.get("world_size") != get_world_size():
        raise UserError(f"{folder} was saved by {saved.get('world_size')} ranks, this run has {get_world_size()}: "
                        "resume with the same number of ranks.")
    if saved.get("lora") != lora_settings(args):
        raise UserError(f"{folder} was saved with LoRA settings {saved.get('lora')}, this run has "
                        f"{lora_settings(args)}: resume with the same --lora_* flags.")
    state = load_checkpoint(engine, folder)
    log.info(f"resumed from {folder} (step {engine.global_steps}, epoch {state['position']['epoch'] + 1}, "
             f"{state['position']['batches_done']} micro-batches done in it)")
    return state["position"]


def run(args, typed):
    from model.create import create_reward_model, load_tokenizer
    from model.lora import apply_lora, merge_lora
    from utils.checkpoint import save_hf_model
    from utils.dist import init_distributed, set_single_process_defaults
    from utils.evaluation import evaluate
    set_single_process_defaults()
    ds_config, notes = setup_config(args, typed)
    init_distributed()
    log = Logger(args)
    for note in notes:
        log.info(f"config: {note}")
    log.info("DeepSpeed config: " + json.dumps(ds_config, sort_keys=True))
    import torch
    torch.manual_seed(args.seed)
    tokenizer = load_tokenizer(args.model_name_or_path, END_OF_CONVERSATION, args.add_eot_token)
    train_loader, eval_loader, eval_real = setup_data(args, tokenizer, ds_config["train_micro_batch_size_per_gpu"])
    model = create_reward_model(args.model_name_or_path, tokenizer, args.num_padding_at_beginning, args.dropout,
                                args.compute_fp32_loss, END_OF_CONVERSATION, args.center_rewards_coefficient)
    if args.lora_dim:
        apply_lora(model, args.lora_dim, args.lora_module_name, args.only_optimize_lora)
    if args.gradient_checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    accumulation = ds_config["gradient_accumulation_steps"]
    if len(train_loader) < accumulation:
        log.info(f"warning: {len(train_loader)} micro-batches per epoch but {accumulation} per optimizer "
                 "step: lower --per_device_train_batch_size or train_batch_size, or add data.")
    engine = setup_engine(args, model, ds_config, math.ceil(len(train_loader) / accumulation))

    def run_eval():
        return evaluate(engine, eval_loader, engine.device, eval_real)
    position = resume(args, engine, log)
    if position["epoch"] == position["batches_done"] == 0:
        log.eval("before training", run_eval(), 0)
    try:
        metrics, train_loss = train(args, engine, train_loader, run_eval, log, position)
    except Stopped as stopped:
        log.info(str(stopped))
        sys.exit(128 + 15)
    results = dict(metrics, train_loss=train_loss, optimizer_steps=engine.global_steps)
    engine.module.reward_stats = {"reward_mean": metrics["reward_mean"], "reward_std": metrics["reward_std"]}
    if args.lora_dim:
        merge_lora(engine.module)  # step 3 and evaluation load a plain model
    save_hf_model(engine.module, tokenizer, args.output_dir, ds_config["zero_optimization"]["stage"],
                  {"ds_config.json": ds_config, "train_results.json": results,
                   "training_args.json": vars(args)})
    log.info(f"saved reward model to {args.output_dir}")


def main(argv=None):
    from utils.errors import exit_on_user_error
    args, typed = parse_args(argv)
    exit_on_user_error(run, args, typed, debug=args.debug)


if __name__ == "__main__":
    main()
