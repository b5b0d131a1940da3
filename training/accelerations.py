"""The CPU accelerations: one optional layer around the plain step of training/loop.py.

Each one changes how a CPU computes the step, never what it computes (tests hold each to the plain path's
numbers; docs/performance.md has the measurements). main.py chooses them once (`choose`, then `install`
once the engine exists) and logs one line, `cpu accelerations: ...`. `--cpu_accelerations off` gives the
plain forward / backward / step on CPU too; off CPU none applies (their costs were measured on CPU only).

Those that rely on another library's internals state the release series they were verified on
(utils/versions.py); with any other installed version they stay off, with the reason in that log line,
and the run takes the plain path.
"""
import contextlib
from dataclasses import dataclass, field
from importlib import metadata

import torch

from training import bf16_step, cpu_speed, embedding_grad, sub_batches
from training.evaluation import to_device
from utils.errors import UserError
from utils.versions import unverified_reason

# name -> (what it does, the libraries whose internals it relies on)
ACCELERATIONS = {
    "sub_batches": ("each micro batch as sub-batches of pairs of similar length, one optimizer step "
                    "(training/sub_batches.py; DeepSpeed's gradient-accumulation boundary)", ("deepspeed",)),
    "share_prompt": ("a pair's shared prompt computed once, every token of a sub-batch in one unpadded row "
                     "(model/shared_prompt.py; transformers' attention interface)", ("transformers",)),
    "fast_dropout": ("dropout masks drawn with numpy's SFC64, same keep rate and scale (training/cpu_speed.py; "
                     "replaces torch.nn.functional.dropout during each training forward)", ("torch", "transformers")),
    "eager_attention": ("eager attention for short rows or small batches, SDPA otherwise (training/cpu_speed.py)",
                        ("transformers",)),
    "embedding_grad": ("token-embedding gradient rows added into .grad in place when a micro batch runs "
                       "several passes, ZeRO-0 (training/embedding_grad.py)", ("torch", "deepspeed")),
    "bf16_step": ("DeepSpeed's bf16 ZeRO-0 optimizer step through one reused fp32 buffer "
                  "(training/bf16_step.py; its FP16_UnfusedOptimizer's private methods)", ("deepspeed",)),
    "skip_allreduce": ("no gradient all-reduce with a single ZeRO-0 rank (DeepSpeed's enable_backward_allreduce)",
                       ("deepspeed",)),
    "fused_adamw": ("torch's fused AdamW kernel (public API)", ()),
    "kernel_cache_cap": (f"oneDNN and ideep kernel caches capped at {cpu_speed.KERNEL_CACHE_CAPACITY} shapes "
                         "(environment variables read at their first use)", ("torch",)),
}
STEP_RULES = ("sub_batches", "share_prompt", "fast_dropout", "eager_attention", "embedding_grad")  # in the step


def installed_version(package):
    return metadata.version(package)


def unverified(names):
    """{acceleration: why it is off} for those relying on a library outside its verified series."""
    reasons = {}
    for name in names:
        for package in ACCELERATIONS[name][1]:
            why = unverified_reason(package, installed_version(package))
            if why:
                reasons[name] = why
                break
    return reasons


def parse_setting(text):
    """--cpu_accelerations: 'auto', 'off' or a comma-separated list of names."""
    if text in ("auto", "off"):
        return text
    names = [name.strip() for name in text.split(",") if name.strip()]
    unknown = [name for name in names if name not in ACCELERATIONS]
    if unknown or not names:
        import argparse
        raise argparse.ArgumentTypeError(f"{text!r}: use auto, off or names from {', '.join(ACCELERATIONS)}")
    return tuple(names)


@dataclass(frozen=True)
class CpuAccelerations:
    """The accelerations of this run: `on` (names), `off` ({name: why}); after `install`, the sub-batch
    charge (`cost`, padded tokens per extra forward; None: one pass), the shared-prompt mode (`share`) and
    --pad_to_multiple_of (`multiple`, the padded lengths the planner prices)."""
    on: tuple = ()
    off: dict = field(default_factory=dict)
    cost: float = None
    share: str = sub_batches.OFF
    multiple: int = None

    def uses(self, name):
        return name in self.on

    def describe(self):
        on = ", ".join(self.on) or "none (the plain step)"
        off = "; ".join(f"{name} ({why})" for name, why in self.off.items())
        return f"cpu accelerations: {on}" + (f"; off: {off}" if off else "")

    def micro_step(self, plain_step):
        """The function the training loop calls per micro batch: `plain_step` unless a step rule is on."""
        return self.train_micro_batch if any(self.uses(name) for name in STEP_RULES) else plain_step

    def train_micro_batch(self, engine, batch):
        """The plain step (training/loop.py) with the step rules: forward + backward of the micro batch in
        sub-batches (`sub_batches.split`), each maybe sharing its prompts, under the CPU dropout and attention
        rules, then one `engine.step()`. Every backward but the last is marked as no gradient-accumulation
        boundary, so DeepSpeed reduces gradients and steps the optimizer at most once, as for one pass.
        Returns the micro batch's loss (fp32, detached)."""
        lengths = sub_batches.pair_lengths(batch, self.multiple)
        shared = None if self.share == sub_batches.OFF else sub_batches.shared_pair_lengths(engine.module, batch)
        runs = sub_batches.split(lengths, self.cost, engine.device, shared)
        boundary = engine.is_gradient_accumulation_boundary()
        direct = len(runs) > 1 and self.uses("embedding_grad")  # several lookups (a shared run is one)
        total = torch.zeros((), device=engine.device)
        for index, pairs in enumerate(runs):
            part = to_device(sub_batches.select(batch, pairs, max(lengths[p] for p in pairs)), engine.device)
            if len(runs) > 1:
                engine.set_gradient_accumulation_boundary(boundary and index == len(runs) - 1)
            if self.share != sub_batches.OFF:
                part["share_prompt"] = self.share == sub_batches.ALWAYS or sub_batches.run_cost(
                    [lengths[p] for p in pairs], [shared[p] for p in pairs], self.cost or 0)[1]
            with self._forward_rules(engine.module, part["input_ids"], direct):
                loss = engine(**part)["loss"]
            share_of_loss = len(pairs) / len(lengths)
            engine.backward(loss * share_of_loss if len(runs) > 1 else loss)  # engine.backward divides by accumulation
            total += loss.detach().float() * share_of_loss
        engine.step()
        if len(runs) > 1:
            engine.set_gradient_accumulation_boundary(None)  # None: DeepSpeed's micro-step count decides again
        return total

    @contextlib.contextmanager
    def _forward_rules(self, model, input_ids, direct_embedding):
        with (cpu_speed.cpu_training_speedups(model, input_ids, dropout=self.uses("fast_dropout"),
                                              attention=self.uses("eager_attention")),
              embedding_grad.direct_embedding_grad(model, direct_embedding)):
            yield


def choose(args, device_type):
    """The accelerations asked for (`--cpu_accelerations`, `--sub_batches off`, `--share_prompt off`,
    `--disable_cpu_speedups`) that this device and the installed libraries allow. Call it first: it caps the
    kernel caches, which only works before the first CPU matmul."""
    if device_type != "cpu":
        asked, off = (), {}
        if args.cpu_accelerations not in ("auto", "off"):
            raise UserError(f"--cpu_accelerations {','.join(args.cpu_accelerations)}: these are CPU rules and "
                            f"this run is on {device_type}; use auto or off.")
    elif args.cpu_accelerations == "off":
        asked, off = (), {"all": "--cpu_accelerations off"}
    else:
        asked = tuple(ACCELERATIONS) if args.cpu_accelerations == "auto" else args.cpu_accelerations
        off = {}
        flags = {"sub_batches": (args.sub_batches == "off", "--sub_batches off"),
                 "share_prompt": (args.share_prompt == "off", "--share_prompt off"),
                 "fast_dropout": (args.disable_cpu_speedups, "--disable_cpu_speedups"),
                 "eager_attention": (args.disable_cpu_speedups, "--disable_cpu_speedups")}
        if getattr(args, "objective", "pairwise") == "regression":  # the step rules take pairs; rated rows are not
            flags.update({name: (True, "--objective regression: the plain step") for name in STEP_RULES})
        for name, (switched_off, flag) in flags.items():
            if name in asked and switched_off:
                off[name] = flag
        off.update(unverified([name for name in asked if name not in off]))
    on = tuple(name for name in asked if name not in off)
    if "kernel_cache_cap" in on:
        cpu_speed.bound_kernel_caches()
    return CpuAccelerations(on, off)


def install(accelerations, args, engine):
    """Resolve what depends on the model and the engine, apply the engine-level accelerations (bf16 step,
    all-reduce skip) and return the final CpuAccelerations."""
    on, off = list(accelerations.on), dict(accelerations.off)

    def drop(name, why):
        if name in on:
            on.remove(name)
            off[name] = why
    cost = sub_batches.forward_cost(args.sub_batches, engine.module.config) if "sub_batches" in on else None
    share, why = sub_batches.OFF, None
    if "share_prompt" in on:
        share, why = sub_batches.share_mode(args.share_prompt, engine.module, engine.zero_optimization_stage(),
                                            engine.dp_world_size)
    if share == sub_batches.OFF:
        drop("share_prompt", why)
    if not embedding_grad.applies(engine):
        drop("embedding_grad", "needs ZeRO-0 and a plain trainable nn.Embedding")
    if "bf16_step" in on and not bf16_step.use_buffered_step(engine):
        drop("bf16_step", "needs bf16, ZeRO-0 and DeepSpeed's FP16_UnfusedOptimizer")
    if engine.zero_optimization_stage() == 0 and engine.dp_world_size == 1 and "skip_allreduce" in on:
        # Alone, DeepSpeed would still flatten every gradient, "all-reduce" it and copy it back each step.
        engine.enable_backward_allreduce = False
    else:
        drop("skip_allreduce", "needs one ZeRO-0 rank")
    return CpuAccelerations(tuple(on), off, cost, share, args.pad_to_multiple_of)
