"""Resumable training checkpoints: DeepSpeed's shards plus RNG state, a COMPLETE marker, pruning, resume."""
import json
import os
import shutil

import torch

from utils.dist import barrier, get_rank, get_world_size, is_main_process, print_rank0
from utils.errors import UserError
from utils.io import write_json


CHECKPOINT_DIR = "checkpoints"
COMPLETE_MARKER = "COMPLETE"  # written last, by rank 0, after every rank has finished writing


def _rng_state():
    import random

    import numpy as np
    state = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state()
    return state


def _set_rng_state(state):
    import random

    import numpy as np
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state(state["cuda"])


def checkpoint_steps(output_dir):
    """{step: folder} of the complete checkpoints in output_dir, and the incomplete folders."""
    root = os.path.join(output_dir, CHECKPOINT_DIR)
    complete, incomplete = {}, []
    for name in sorted(os.listdir(root)) if os.path.isdir(root) else []:
        folder = os.path.join(root, name)
        if not (name.startswith("step-") and name[5:].isdigit()):
            continue
        if os.path.exists(os.path.join(folder, COMPLETE_MARKER)):
            complete[int(name[5:])] = folder
        else:
            incomplete.append(folder)
    return complete, incomplete


def save_checkpoint(engine, output_dir, client_state, total_limit=0):
    """Every rank writes its shards and RNG state; the marker makes the folder count only when whole."""
    root = os.path.join(output_dir, CHECKPOINT_DIR)
    tag = f"step-{engine.global_steps}"
    folder = os.path.join(root, tag)
    if is_main_process() and os.path.isdir(folder):
        shutil.rmtree(folder)  # a stale, incomplete attempt at the same step
    barrier()
    engine.save_checkpoint(root, tag=tag, client_state=client_state, save_latest=False)
    torch.save(_rng_state(), os.path.join(folder, f"rng_state_rank{get_rank()}.pt"))
    barrier()
    if is_main_process():
        write_json(os.path.join(folder, COMPLETE_MARKER), dict(client_state, step=engine.global_steps))
        if total_limit:
            _prune(output_dir, total_limit)
    barrier()
    return folder


def _prune(output_dir, total_limit):
    complete, _ = checkpoint_steps(output_dir)
    for step in sorted(complete)[:-total_limit]:
        shutil.rmtree(complete[step])


def find_checkpoint(output_dir, resume_from, warn=print):
    """The checkpoint folder to resume from: `auto` = newest complete one in output_dir (or None)."""
    if resume_from != "auto":
        if not os.path.exists(os.path.join(resume_from, COMPLETE_MARKER)):
            raise UserError(f"--resume_from_checkpoint {resume_from} is not a complete checkpoint (no "
                            f"{COMPLETE_MARKER} marker): pass another one, or 'auto'.")
        return resume_from
    complete, incomplete = checkpoint_steps(output_dir)
    for folder in incomplete:
        warn(f"warning: ignoring incomplete checkpoint {folder} (interrupted while saving)")
    return complete[max(complete)] if complete else None


def checkpoint_info(folder):
    """What the COMPLETE marker records: step, position, world size, LoRA settings (readable before loading)."""
    with open(os.path.join(folder, COMPLETE_MARKER)) as f:
        return json.load(f)


def load_checkpoint(engine, folder):
    """Restore model, optimizer, scheduler, loss scaler and this rank's RNG; returns the client state."""
    load_path, client_state = engine.load_checkpoint(os.path.dirname(folder), tag=os.path.basename(folder),
                                                     load_optimizer_states=True, load_lr_scheduler_states=True)
    if load_path is None:
        raise UserError(f"DeepSpeed could not load the checkpoint in {folder}.")
    rng_file = os.path.join(folder, f"rng_state_rank{get_rank()}.pt")
    if not os.path.exists(rng_file):
        raise UserError(f"{folder} has no RNG state for rank {get_rank()}: resume with the same number of "
                        "ranks it was saved with.")
    _set_rng_state(torch.load(rng_file, weights_only=False))
    return client_state


def run_identity(args):
    """What a checkpoint must share with the run that resumes it (checked in `resume`)."""
    return {"world_size": get_world_size(), "lora": {
        "lora_dim": args.lora_dim, "lora_module_name": args.lora_module_name if args.lora_dim else None,
        "only_optimize_lora": args.only_optimize_lora}}


def resume(args, engine):
    """Where training starts: a fresh start, or the position saved in a checkpoint (whose state is loaded)."""
    fresh = {"epoch": 0, "batches_done": 0, "epoch_loss_sum": 0.0}
    if not args.resume_from_checkpoint:
        return fresh
    folder = find_checkpoint(args.output_dir, args.resume_from_checkpoint, print_rank0)
    if folder is None:
        print_rank0(f"no complete checkpoint in {args.output_dir}: starting fresh")
        return fresh
    saved, ours = checkpoint_info(folder), run_identity(args)
    if saved.get("world_size") != ours["world_size"]:
        raise UserError(f"{folder} was saved by {saved.get('world_size')} ranks, this run has {ours['world_size']}: "
                        "resume with the same number of ranks.")
    if saved.get("lora") != ours["lora"]:
        raise UserError(f"{folder} was saved with LoRA settings {saved.get('lora')}, this run has "
                        f"{ours['lora']}: resume with the same --lora_* flags.")
    position = load_checkpoint(engine, folder)["position"]
    print_rank0(f"resumed from {folder} (step {engine.global_steps}, epoch {position['epoch'] + 1}, "
                f"{position['batches_done']} micro-batches done in it)")
    return position
