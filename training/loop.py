"""The training loop and what runs beside it: the log, the stop signal, the plateau warning."""
import json
import math
import os
import signal
import time

import torch
from tqdm import tqdm

from training.checkpoint import flat_dict, save_checkpoint
from training.evaluation import to_device
from utils.dist import all_reduce, get_rank, get_world_size, is_main_process, print_rank0
from utils.errors import UserError
from utils.spans import LN2, loss_spans

PLATEAU_TOLERANCE = 0.02


class Logger:
    """Rank-0 log lines (through `print_rank0`), `OUT/train_log.jsonl` and optional TensorBoard scalars."""

    def __init__(self, output_dir, tensorboard_path=None):
        self.enabled = is_main_process()
        self.writer = self.jsonl = None
        if self.enabled:  # every logged number, for plots (evaluation_scripts/evaluate.py) and scripts
            os.makedirs(output_dir, exist_ok=True)
            self.jsonl = open(os.path.join(output_dir, "train_log.jsonl"), "a")
        if self.enabled and tensorboard_path:
            from torch.utils.tensorboard import SummaryWriter
            self.writer = SummaryWriter(os.path.join(tensorboard_path, "step2_reward_model"))

    def scalars(self, prefix, values, step):
        if self.jsonl:
            self.jsonl.write(json.dumps({"kind": prefix, "step": step, **values}) + "\n")
            self.jsonl.flush()
        if self.writer:
            for key, value in flat_dict(values, "/").items():
                if value is not None and not isinstance(value, list):  # undefined correlations, per-head lists
                    self.writer.add_scalar(f"{prefix}/{key}", value, step)
            self.writer.flush()

    def step(self, step, loss, lr, pairs_per_s, seconds):
        print_rank0(f"step {step} | loss {loss:.4f} | lr {lr:.3e} | {pairs_per_s:.1f} pairs/s | {seconds * 1000:.0f} ms")
        self.scalars("train", {"loss": loss, "lr": lr, "pairs_per_s": pairs_per_s}, step)

    def eval(self, tag, metrics, step):
        """One line for the eval split (with accuracy (pairs) per source when it mixes several, and an ensemble's
        heads), one per named held-out set (metrics['eval_sets'], --eval_data_path); all of it in train_log.jsonl."""
        if "rmse" in metrics:  # --objective regression (training/evaluation.py evaluate_regression)
            return self.eval_regression(tag, metrics, step)
        print_rank0(f"eval ({tag}) | {eval_text(metrics)}{ensemble_line(metrics)}")
        for name, held_out in metrics.get("eval_sets", {}).items():
            print_rank0(f"eval ({tag}) {name} | {eval_text(held_out)}{ensemble_line(held_out)}")
        self.scalars("rewards", metrics, step)

    def eval_regression(self, tag, metrics, step):
        names = [key[:-len("/rmse")] for key in metrics if key.endswith("/rmse")]
        print_rank0(f"eval ({tag}) | rmse {_figure(metrics['rmse'])} | pearson {_figure(metrics['pearson'])} | "
                    f"spearman {_figure(metrics['spearman'])} | pair acc {_figure(metrics['pair_accuracy'])} "
                    f"({metrics['num_pairs']} pairs) | rows {metrics['num_rows']}")
        print_rank0(f"eval ({tag}) | " + " | ".join(
            f"{name} rmse {_figure(metrics[name + '/rmse'])} r {_figure(metrics[name + '/pearson'])} "
            f"rho {_figure(metrics[name + '/spearman'])}" for name in names))
        self.scalars("rewards", metrics, step)


def _figure(value):
    return "n/a" if value is None else f"{value:.4f}"


def ensemble_line(metrics):
    """The eval line's end for an ensemble (training/ensemble.py `head_metrics`): each head's accuracy, the
    heads' mean margin std and its correlation with the mean's errors; '' for one head."""
    heads = [metrics[f"accuracy_head_{k}"] for k in range(len(metrics)) if f"accuracy_head_{k}" in metrics]
    if not heads:
        return ""
    corr = metrics.get("margin_std_error_corr")
    return (f" | heads acc {' '.join(f'{a:.4f}' for a in heads)} | margin std {metrics['margin_std']:.4f} | "
            f"std-error corr {'n/a' if corr is None else f'{corr:.3f}'}")


def eval_text(metrics):
    """'acc 0.7500 | chosen ... | ties 0', plus ' | by source: a 0.8125 (32), b 0.6250 (16)' for several sources."""
    text = (f"acc {metrics['accuracy']:.4f} | chosen {metrics['chosen_mean']:.4f} | "
            f"rejected {metrics['rejected_mean']:.4f} | margin {metrics['margin']:.4f} | "
            f"pairs {metrics['num_pairs']} | ties {metrics['ties']}")
    by_source = metrics.get("by_source", {})
    if len(by_source) > 1:
        text += " | by source: " + ", ".join(f"{name} {m['accuracy']:.4f} ({m['num_pairs']})"
                                             for name, m in by_source.items())
    return text


class StopSignal:
    """SIGTERM/SIGINT ask for a checkpoint at the next optimizer step (or after the evaluation running),
    then a clean exit; a second signal stops the process at once. All ranks agree on stopping, so they
    save the same step."""

    def __init__(self):
        self.signum = 0
        for signum in (signal.SIGTERM, signal.SIGINT):
            signal.signal(signum, self._handle)

    def _handle(self, signum, frame):
        if self.signum:  # the second one: die of it now (an exception could be swallowed mid-operation)
            signal.signal(signum, signal.SIG_DFL)
            os.kill(os.getpid(), signum)
        self.signum = signum
        print_rank0(f"signal {signum}: saving a checkpoint at the next optimizer step, then stopping "
                    "(send it again to stop at once, without one)")

    def agreed(self, device):
        """The signal any rank received (0: none); the same on every rank."""
        self.signum = int(all_reduce(torch.tensor([float(self.signum)], device=device), op="max").item())
        return self.signum


class Stopped(Exception):
    """Training stopped by a signal after saving a checkpoint."""

    def __init__(self, message, signum):
        super().__init__(message)
        self.signum = signum


class PlateauWarning:
    """A loss stuck at ln 2 means r_c == r_j everywhere: usually the end token is read at the wrong
    place (e.g. a wrong --num_padding_at_beginning) or the head gets no gradient."""

    def __init__(self, steps):
        self.steps, self.stuck = steps, True

    def update(self, step, loss):
        if not self.steps or step > self.steps:
            return
        self.stuck = self.stuck and abs(loss - LN2) < PLATEAU_TOLERANCE
        if step == self.steps and self.stuck:
            print_rank0(f"warning: the training loss stayed within {PLATEAU_TOLERANCE} of ln 2 = {LN2:.3f} for the "
                        f"first {step} steps: the reward model is not separating chosen from rejected. Check "
                        "--num_padding_at_beginning (OPT: 1, most others: 0), the learning rate and the data.")


def train_micro_batch(engine, batch):
    """The step on one micro batch: forward, backward (DeepSpeed divides by the accumulation steps), step
    (DeepSpeed steps the optimizer at accumulation boundaries only). Returns the loss (fp32, detached)."""
    loss = engine(**to_device(batch, engine.device))["loss"]
    engine.backward(loss)
    engine.step()
    return loss.detach().float()


def train(args, engine, train_loader, run_eval, log, position, checkpoint_state, micro_step=train_micro_batch):
    """The training loop from `position` (epoch, micro-batches done in it, their loss sum). `micro_step`:
    `train_micro_batch`, or the CPU accelerations' version of it (training/accelerations.py).

    Returns (final eval metrics, mean training loss of the last epoch).
    """
    stop = StopSignal()
    plateau = PlateauWarning(args.loss_plateau_warning)
    accumulation = engine.gradient_accumulation_steps()
    pairs_per_step = train_loader.batch_size * get_world_size() * accumulation
    batches_per_epoch = len(train_loader)
    for epoch in range(position["epoch"], args.num_train_epochs):
        engine.train()  # from_pretrained leaves the base in eval mode (no dropout)
        skip = position["batches_done"] if epoch == position["epoch"] else 0
        train_loader.sampler.set_epoch(epoch, skip_batches=skip)  # resume: the sampler skips, nothing is read
        epoch_loss = torch.tensor(position["epoch_loss_sum"] if skip else 0.0, device=engine.device)
        step_loss, step_start = torch.zeros((), device=engine.device), time.time()
        step_batches = []  # this optimizer step's micro-batches, to tell why a loss is not finite
        rows = RowLog(args.output_dir, train_loader, skip) if args.log_rows else None
        bar = tqdm(epoch_batches(train_loader, skip), total=batches_per_epoch, initial=skip,
                   desc=f"epoch {epoch + 1}/{args.num_train_epochs}", disable=not log.enabled)
        for batch_index, batch in enumerate(bar, start=skip):
            step_batches.append((batch_index, batch["input_ids"]))
            boundary = engine.is_gradient_accumulation_boundary()
            loss = micro_step(engine, batch)
            epoch_loss += loss
            step_loss += loss
            if not boundary:
                continue
            # the global batch's loss: every rank's micro-batches (DeepSpeed-Chat prints rank 0's alone)
            step = engine.global_steps
            mean_loss = all_reduce(step_loss.clone()).item() / (accumulation * get_world_size())
            if not math.isfinite(mean_loss):
                cause = BLOW_UP if "labels" in batch else nonfinite_cause(step_batches, engine.module)  # rows: no spans
                raise UserError(f"training loss is {mean_loss} at optimizer step {step}: stopping without saving "
                                f"a model. {cause}")
            if rows:
                rows.write(step, [index for index, _ in step_batches])
            elapsed = time.time() - step_start
            bar.set_postfix(loss=f"{mean_loss:.4f}", pairs_per_s=f"{pairs_per_step / elapsed:.1f}")
            log.step(step, mean_loss, engine.get_lr()[0], pairs_per_step / elapsed, elapsed)
            plateau.update(step, mean_loss)
            position = {"epoch": epoch, "batches_done": batch_index + 1, "epoch_loss_sum": epoch_loss.item()}
            if args.eval_interval and step % args.eval_interval == 0:
                log.eval(f"step {step}", run_eval(), step)
            stopping = stop.agreed(engine.device)
            if stopping or (args.save_steps and step % args.save_steps == 0):
                checkpoint(args, engine, dict(checkpoint_state, position=position), stopping)
            step_loss.zero_()
            step_batches.clear()
            step_start = time.time()
        mean_epoch_loss = epoch_loss.item() / max(batches_per_epoch, 1)
        print_rank0(f"epoch {epoch + 1}/{args.num_train_epochs} | mean loss {mean_epoch_loss:.4f}")
        metrics = run_eval()
        log.eval(f"epoch {epoch + 1}", metrics, engine.global_steps)
        position = {"epoch": epoch, "batches_done": batches_per_epoch, "epoch_loss_sum": epoch_loss.item()}
        stopping = stop.agreed(engine.device)
        if stopping:  # a signal during the epoch's last steps or its evaluation
            checkpoint(args, engine, dict(checkpoint_state, position=position), stopping)
    return metrics, mean_epoch_loss


def checkpoint(args, engine, client_state, stopping):
    """Save a resumable checkpoint; after a signal, stop with the line to continue."""
    folder = save_checkpoint(engine, args.output_dir, client_state, args.save_total_limit)
    print_rank0(f"saved checkpoint {folder}")
    if stopping:
        raise Stopped(f"stopped by signal {stopping} at step {engine.global_steps}; checkpoint in {folder}. "
                      "Continue with --resume_from_checkpoint auto.", stopping)


def epoch_batches(train_loader, skip):
    """An iterator over the epoch's batches. Starting one draws a seed from torch's global RNG, as
    DeepSpeed-Chat's loaders do (so dropout masks follow the same random stream); a resumed epoch
    (skip > 0) already drew it before its checkpoint, so the RNG state restored from there is kept."""
    state = torch.get_rng_state()
    batches = iter(train_loader)
    if skip:
        torch.set_rng_state(state)
    return batches


class RowLog:
    """--log_rows: the dataset rows each optimizer step trained on, one JSON line per step in
    OUT/rows_rank{R}.jsonl (each rank its own share), to audit what a run (or a resumed run) saw."""

    def __init__(self, output_dir, train_loader, skip):
        self.order, self.skip, self.size = list(train_loader.sampler), skip, train_loader.batch_size
        picked = getattr(train_loader.dataset, "_indices", None)  # a --data_weights mix: log rows of the cache
        if picked is not None:
            rows = picked.column(0).to_numpy()
            self.order = [int(rows[i]) for i in self.order]
        os.makedirs(output_dir, exist_ok=True)
        self.file = open(os.path.join(output_dir, f"rows_rank{get_rank()}.jsonl"), "a")

    def write(self, step, batch_indices):
        picked = [row for b in batch_indices
                  for row in self.order[(b - self.skip) * self.size:(b - self.skip + 1) * self.size]]
        self.file.write(json.dumps({"step": step, "rows": picked}) + "\n")
        self.file.flush()


def nonfinite_cause(step_batches, model):
    """Why a step's loss is not finite: pairs with an empty loss span (a data cause) or a numeric blow-up."""
    empty = []
    for batch_index, input_ids in step_batches:
        pairs = input_ids.size(0) // 2
        start, end, _, _ = loss_spans(input_ids[:pairs], input_ids[pairs:], model.PAD_ID,
                                      model.num_padding_at_beginning, end_token_rule=model.end_token_rule)
        empty += [f"micro-batch {batch_index} pair {i}" for i in (end == start).nonzero().flatten().tolist()]
    if empty:
        return (f"Data: {len(empty)} pair(s) are scored at or before the token where chosen and rejected first "
                f"differ, so their loss span is empty (0/0): {', '.join(empty[:5])}. Check "
                "--num_padding_at_beginning and whether the PAD/EOS token occurs inside the texts.")
    return BLOW_UP


BLOW_UP = ("The rewards themselves are not finite (a numeric blow-up): resume from the last checkpoint "
           "(--resume_from_checkpoint auto) with a lower --learning_rate, or train in bf16/fp32.")
