"""Run one training script in this process with its reward model's forward and DeepSpeed's step logged.

    python benchmarks/sxs_runner.py {dschat,project} SCRIPT [SCRIPT ARGS...]

Used by benchmarks/side_by_side.py; not meant to be called by hand. The script's own source is
not touched: this process patches classes in memory, then runs SCRIPT with runpy as `__main__`.
Environment:
  SXS_LOG          JSONL file to append records to (required)
  SXS_DSCHAT       the DeepSpeed-Chat folder (holds `dschat/`), for side `dschat`
  SXS_STOP_AFTER   end the process right after this many micro steps (speed mode; 0: never)
  SXS_DTYPE        for side `dschat`: `fp32` drops the fp16/bf16 section of its DeepSpeed config

Measured, per forward call of the reward model: train or eval, a hash of each row's unpadded ids
(attention_mask == 1), each pair as (chosen hash, rejected hash), the loss as a Python float, the
end scores, the padded length, the tokens computed (fewer with main.py's shared prompts); per micro batch of main.py (split into sub-batches, one forward each) its
pairs in the loader's order; per `DeepSpeedEngine.step`: the wall time and the learning rate;
once: checksums of the initial weights, and a hash of torch's CPU RNG state at the first training
forward (dropout masks are drawn from it). Not measured here: memory and process start-up (the
parent measures those), anything that happens outside forward and step.
"""
import hashlib
import json
import os
import runpy
import sys
import time

from benchmarks import dschat_shims

HERE = os.path.dirname(os.path.abspath(__file__))


class Recorder:
    """Appends one JSON object per line to SXS_LOG, flushed at once (a killed run keeps its lines)."""

    def __init__(self, path, stop_after):
        self.file = open(path, "a")
        self.stop_after = stop_after
        self.micro_steps = 0
        self.params_logged = False
        self.rng_logged = False

    def write(self, kind, **fields):
        self.file.write(json.dumps({"kind": kind, "t": time.time(), **fields}) + "\n")
        self.file.flush()


def row_hash(ids):
    import numpy as np
    return hashlib.blake2b(np.asarray(ids, dtype=np.int64).tobytes(), digest_size=8).hexdigest()


def describe_batch(input_ids, attention_mask):
    """[(chosen hash, rejected hash)] per pair, and the unpadded length of every row."""
    mask = attention_mask.bool() if attention_mask is not None else input_ids.new_ones(input_ids.shape).bool()
    rows = [input_ids[i][mask[i]].tolist() for i in range(input_ids.size(0))]
    hashes = [row_hash(r) for r in rows]
    half = len(rows) // 2
    return [list(p) for p in zip(hashes[:half], hashes[half:])], [len(r) for r in rows]


def param_checksums(module):
    import torch
    with torch.no_grad():
        total = sum(float(p.detach().double().sum()) for p in module.parameters())
        head = float(module.v_head.weight.detach().double().sum())
    return {"all": total, "v_head": head, "count": sum(p.numel() for p in module.parameters())}


def patch_forward(cls, recorder):
    """Log what every forward of the reward model sees and returns."""
    import torch
    original = cls.forward

    def forward(self, input_ids=None, attention_mask=None, **kwargs):  # both scripts call it with keywords
        if not recorder.params_logged:
            recorder.params_logged = True
            recorder.write("params", **param_checksums(self))
        training = self.training and torch.is_grad_enabled()
        if training and not recorder.rng_logged:  # dropout masks depend on it
            recorder.rng_logged = True
            recorder.write("rng", torch_cpu=hashlib.blake2b(torch.get_rng_state().numpy().tobytes(),
                                                            digest_size=8).hexdigest())
        out = original(self, input_ids=input_ids, attention_mask=attention_mask, **kwargs)
        pairs, lengths = describe_batch(input_ids, attention_mask)
        tokens = input_ids.numel()
        if kwargs.get("share_prompt"):  # main.py's shared prompts, in the layout of the checkout being run
            from model.reward_model import shared_lengths
            shared = shared_lengths(input_ids, attention_mask, self.PAD_ID, self.num_padding_at_beginning,
                                    self.end_token_rule)
            try:  # one unpadded row of every pair's shared start and rests (since commit 9076bd8)
                from model.shared_prompt import token_layout
                tokens = len(token_layout(attention_mask, shared)[0])
            except ImportError:  # before: B padded rows of the shared start, 2B of the rest
                ends = attention_mask.sum(dim=1)  # right padding
                tokens = len(shared) * int(shared.max()) + 2 * len(shared) * int((ends - shared.repeat(2)).max())
        recorder.write("forward", train=training, pairs=pairs, lengths=lengths, padded_len=input_ids.size(1),
                       tokens=tokens, shared=bool(kwargs.get("share_prompt")),
                       loss=float(out["loss"].detach().float()), dtype=str(out["loss"].dtype),
                       chosen=out["chosen_mean_scores"].detach().float().tolist(),
                       rejected=out["rejected_mean_scores"].detach().float().tolist())
        return out
    cls.forward = forward


def patch_engine_step(recorder):
    """Log each micro step's end; with SXS_STOP_AFTER, end the process after that many."""
    from deepspeed.runtime.engine import DeepSpeedEngine
    original = DeepSpeedEngine.step

    def step(self, *args, **kwargs):
        result = original(self, *args, **kwargs)
        recorder.micro_steps += 1
        lr = self.get_lr()[0] if self.lr_scheduler is not None else None
        recorder.write("step", n=recorder.micro_steps, lr=lr,
                       boundary=bool(self.was_step_applied()) if hasattr(self, "was_step_applied") else None)
        if recorder.stop_after and recorder.micro_steps >= recorder.stop_after:
            recorder.write("stopped", n=recorder.micro_steps)
            os._exit(0)  # the timed steps are done: skip the final evaluation and saving
        return result
    DeepSpeedEngine.step = step


def patch_micro_batch(recorder):
    """main.py may compute a micro batch in length-aware sub-batches, one forward each: log the micro batch's
    pairs in the order the loader gave them, before any split. Wraps the micro-step functions of the
    checkout being run: training/loop.py's plain step and training/accelerations.py's (since both exist),
    or training/sub_batches.py's (before)."""
    import importlib
    import importlib.util

    def logged(original):
        def micro_batch(*args, **kwargs):
            batch = next(arg for arg in args if isinstance(arg, dict))
            pairs, lengths = describe_batch(batch["input_ids"], batch["attention_mask"])
            recorder.write("micro_batch", pairs=pairs, lengths=lengths, padded_len=batch["input_ids"].size(1))
            return original(*args, **kwargs)
        micro_batch.logged = True
        return micro_batch
    for module_name, owner_name in (("training.sub_batches", None), ("training.loop", None),
                                    ("training.accelerations", "CpuAccelerations")):
        if importlib.util.find_spec(module_name) is None:  # a --project checkout without it
            continue
        module = importlib.import_module(module_name)  # before main.py imports it
        owner = getattr(module, owner_name) if owner_name else module
        original = getattr(owner, "train_micro_batch", None)
        if original is not None and not getattr(original, "logged", False):
            setattr(owner, "train_micro_batch", logged(original))


def reward_model_class(side):
    if side == "dschat":
        from dschat.utils.model.reward_model import RewardModel
    else:
        from model.reward_model import RewardModel
    return RewardModel


def main(argv):
    side, script, script_args = argv[0], os.path.abspath(argv[1]), argv[2:]
    # runpy keeps this process's sys.path: give SCRIPT the one `python SCRIPT` would (its folder, not benchmarks/).
    sys.path[:] = [os.path.dirname(script)] + [p for p in sys.path if p != HERE]
    if side == "dschat":
        sys.path.insert(1, os.environ["SXS_DSCHAT"])  # DeepSpeed-Chat's `dschat` package is not installed
        dschat_shims.apply(os.environ.get("SXS_DTYPE"))
    recorder = Recorder(os.environ["SXS_LOG"], int(os.environ.get("SXS_STOP_AFTER", "0")))
    recorder.write("start", side=side, script=script, argv=script_args)
    patch_forward(reward_model_class(side), recorder)
    patch_engine_step(recorder)
    if side == "project":
        patch_micro_batch(recorder)
    sys.argv = [script] + script_args
    runpy.run_path(script, run_name="__main__")
    recorder.write("end", micro_steps=recorder.micro_steps)


if __name__ == "__main__":
    main(sys.argv[1:])
