"""Resumable training checkpoints: DeepSpeed's shards plus RNG state, a COMPLETE marker with the run's
identity and a manifest of every file, pruning, and the choice of where a run starts.

An output folder belongs to one run: a fresh run refuses a folder holding another run's checkpoints
(unless --overwrite_output_dir), and a resume refuses a checkpoint whose run differs in anything that
would change the training (data, batch arithmetic, schedule, optimizer, model, precision), naming it.
"""
import json
import os
import shutil

import torch

from utils.dist import barrier, get_rank, get_world_size, is_main_process, print_rank0
from utils.errors import UserError
from utils.io import is_disk_full, sha256_file, write_json
from utils.settings import Settings


CHECKPOINT_DIR = "checkpoints"
COMPLETE_MARKER = "COMPLETE"  # written last, by rank 0, after every rank has finished writing


TORCH_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}


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


# Flags whose change would make a resumed run train differently (checked on resume, named when they differ).
# Training flags a resumed run must share with the saving one, besides the model's settings (utils/settings.py).
IDENTITY_FLAGS = ("data_path", "data_weights", "data_split", "seed", "drop_identical_pairs", "group_by_length",
                  "learning_rate", "weight_decay", "lr_scheduler_type", "num_warmup_steps", "num_train_epochs",
                  "lora_learning_rate", "disable_cpu_speedups")


def data_fingerprint(pairs):
    """The cache key of a dataset `data.build_pair_datasets` returned (its folder `pairs-<key>`): it changes
    with the sources' content and every setting that changes the token ids."""
    return os.path.basename(os.path.dirname(os.path.dirname(pairs.cache_files[0]["filename"])))


def run_identity(args, settings, ds_config, data_fingerprint):
    """What a checkpoint must share with the run that resumes it: the model's settings, the training flags
    of `IDENTITY_FLAGS`, the data, the global batch and the ZeRO stage. The number of ranks and the micro
    batch may change if the global batch stays (the sample order is global), except with --group_by_length,
    whose batches are cut per micro batch x ranks."""
    flags = {name: getattr(args, name) for name in IDENTITY_FLAGS}
    flags["lora_learning_rate"] = flags["lora_learning_rate"] if settings.lora_dim else None
    flags.update(flat_dict(settings.to_dict()))
    if not settings.lora_dim:
        flags["lora_module_name"] = None
    identity = {"data": data_fingerprint, "flags": flags, "train_batch_size": ds_config["train_batch_size"],
                "zero_stage": ds_config["zero_optimization"]["stage"]}
    if args.group_by_length:
        identity["micro_batch_x_ranks"] = ds_config["train_micro_batch_size_per_gpu"] * get_world_size()
    return identity


def flat_dict(values, separator=".", prefix=""):
    """{'loss': {'use_margin': x}} -> {'loss.use_margin': x} (nested keys joined by `separator`): one line per
    setting in `identity_changes`, one TensorBoard tag per metric (training/loop.py)."""
    flat = {}
    for key, value in values.items():
        if isinstance(value, dict):
            flat.update(flat_dict(value, separator, f"{prefix}{key}{separator}"))
        else:  # a tuple as a list: the identity is compared with one read back from JSON
            flat[prefix + key] = list(value) if isinstance(value, tuple) else value
    return flat


def layout(ds_config):
    """How this run cuts the global batch: what a resumed position is converted with."""
    return {"world_size": get_world_size(), "micro_batch": ds_config["train_micro_batch_size_per_gpu"]}


def identity_changes(saved, current):
    """Lines naming every setting that differs between a checkpoint's run and this one."""
    def flat(identity):
        items = {k: v for k, v in identity.items() if not isinstance(v, dict)}
        items.update(identity.get("flags", {}))
        return items
    old, new = flat(saved), flat(current)
    names = {"data": "the tokenised data (source content or data flags)",
             "train_batch_size": "global batch (micro batch x ranks x accumulation)",
             "micro_batch_x_ranks": "micro batch x ranks (--group_by_length cuts its batches by it)"}
    return [f"{names.get(k, k)}: {old.get(k)!r} then, {new.get(k)!r} now" for k in sorted(set(old) | set(new))
            if old.get(k) != new.get(k)]


def save_checkpoint(engine, output_dir, client_state, total_limit=0):
    """Every rank writes its shards and RNG state; then rank 0 writes the marker (client state plus a
    manifest of every file's size and SHA-256), so the folder counts only when whole and checkable."""
    root = os.path.join(output_dir, CHECKPOINT_DIR)
    tag = f"step-{engine.global_steps}"
    folder = os.path.join(root, tag)
    if is_main_process() and os.path.isdir(folder):
        shutil.rmtree(folder)  # a stale, incomplete attempt at the same step
    barrier()
    try:
        engine.save_checkpoint(root, tag=tag, client_state=client_state, save_latest=False)
        torch.save(_rng_state(), os.path.join(folder, f"rng_state_rank{get_rank()}.pt"))
        barrier()
        if is_main_process():
            write_json(os.path.join(folder, COMPLETE_MARKER),
                       dict(client_state, step=engine.global_steps, manifest=_manifest(folder)))
    except (OSError, RuntimeError) as error:
        if not is_disk_full(error):
            raise
        shutil.rmtree(folder, ignore_errors=True)
        complete = checkpoint_steps(output_dir)[0]
        kept = f"the last complete one, {complete[max(complete)]}, is intact" if complete else "none was kept"
        raise UserError(f"no space left on the disk of {root} while writing checkpoint {tag} ({error}); {kept}. "
                        "Free space (or lower --save_total_limit) and resume with --resume_from_checkpoint "
                        "auto.") from error
    if is_main_process() and total_limit:
        _prune(output_dir, total_limit)
    barrier()
    return folder


def _manifest(folder):
    files = sorted(os.path.relpath(os.path.join(d, f), folder) for d, _, names in os.walk(folder) for f in names)
    return {name: [os.path.getsize(os.path.join(folder, name)), sha256_file(os.path.join(folder, name))]
            for name in files if name != COMPLETE_MARKER}


def verify_checkpoint(folder):
    """None if the folder is a whole checkpoint (marker readable, every file of its manifest present with
    its size and hash), else what is wrong."""
    try:
        info = checkpoint_info(folder)
    except (OSError, ValueError) as error:
        return f"its {COMPLETE_MARKER} marker cannot be read ({error})"
    for name, (size, digest) in info.get("manifest", {}).items():
        path = os.path.join(folder, name)
        if not os.path.exists(path):
            return f"{name} is missing"
        if os.path.getsize(path) != size:
            return f"{name} has {os.path.getsize(path):,} bytes, {size:,} when saved"
        if sha256_file(path) != digest:
            return f"{name} does not have the content it was saved with"
    return None if "manifest" in info else f"its {COMPLETE_MARKER} marker has no manifest"


def _prune(output_dir, total_limit):
    complete, _ = checkpoint_steps(output_dir)
    for step in sorted(complete)[:-total_limit]:
        shutil.rmtree(complete[step])


def choose_checkpoint(args, identity):
    """The checkpoint folder this run resumes from, or None for a fresh start; checked before any model loads.

    A fresh start refuses an output folder holding checkpoints (another run's, or this run's to resume)
    unless --overwrite_output_dir, which deletes them. `auto` takes the newest checkpoint that verifies,
    skipping damaged ones with a warning. The chosen checkpoint must come from a run like this one.
    """
    complete, incomplete = checkpoint_steps(args.output_dir)
    if not args.resume_from_checkpoint:
        if complete and not args.overwrite_output_dir:
            raise UserError(f"--output_dir {args.output_dir} holds checkpoints of an earlier run (newest "
                            f"{complete[max(complete)]}): continue it with --resume_from_checkpoint auto, or pass "
                            "--overwrite_output_dir to delete them, or pick another folder.")
        if complete and is_main_process():
            shutil.rmtree(os.path.join(args.output_dir, CHECKPOINT_DIR))
            print_rank0(f"deleted the earlier run's checkpoints in {args.output_dir} (--overwrite_output_dir)")
        barrier()
        return None
    if args.resume_from_checkpoint != "auto":
        candidates = [args.resume_from_checkpoint]
    else:
        candidates = [complete[step] for step in sorted(complete, reverse=True)]
        for folder in incomplete:
            print_rank0(f"warning: ignoring incomplete checkpoint {folder} (interrupted while saving)")
    for folder in candidates:
        problem = not_a_checkpoint(folder) or verify_checkpoint(folder)
        if problem and args.resume_from_checkpoint != "auto":
            raise UserError(f"--resume_from_checkpoint {folder} cannot be resumed: {problem}. Pass a complete "
                            "checkpoint (OUTPUT_DIR/checkpoints/step-N), or 'auto' for the newest good one.")
        if problem:
            print_rank0(f"warning: checkpoint {folder} is damaged ({problem}): trying the one before it")
            continue
        changes = identity_changes(checkpoint_info(folder).get("identity", {}), identity)
        if changes:
            raise UserError(f"{folder} was saved by a run with other settings, so resuming it would not continue "
                            f"that run: {'; '.join(changes)}. Resume with that run's settings, or start afresh "
                            "in another --output_dir.")
        return folder
    if candidates:
        raise UserError(f"every checkpoint in {args.output_dir} is damaged (see the warnings above): start afresh "
                        "with --overwrite_output_dir or in another --output_dir.")
    print_rank0(f"no complete checkpoint in {args.output_dir}: starting fresh")
    return None


def not_a_checkpoint(folder):
    """Why `folder` is not a checkpoint with a COMPLETE marker (no such folder, a run's output folder, a
    checkpoint stopped while saving), or None."""
    if not os.path.isdir(folder):
        return "it is a file" if os.path.exists(folder) else "no such folder"
    if os.path.exists(os.path.join(folder, COMPLETE_MARKER)):
        return None
    if os.path.isdir(os.path.join(folder, CHECKPOINT_DIR)):
        return f"it is a run's output folder, which holds checkpoints in {CHECKPOINT_DIR}/ ({_newest(folder)})"
    parent = os.path.dirname(os.path.abspath(folder))
    siblings = f" ({_newest(os.path.dirname(parent))})" if os.path.basename(parent) == CHECKPOINT_DIR else ""
    return (f"it has no {COMPLETE_MARKER} marker, which a checkpoint gets once all its files are written, so the "
            f"run stopped while saving it{siblings}")


def _newest(output_dir):
    complete, _ = checkpoint_steps(output_dir)
    return f"the newest complete one is {complete[max(complete)]}" if complete else "none is complete"


def checkpoint_info(folder):
    """What the COMPLETE marker records: step, position, the run's identity, the manifest."""
    with open(os.path.join(folder, COMPLETE_MARKER)) as f:
        return json.load(f)


def needs_universal(folder, ds_config):
    """True when `folder` holds partitioned optimizer states (ZeRO-1/2/3, bf16) saved by another number of
    ranks: DeepSpeed then loads them only from its universal checkpoint format."""
    saved = checkpoint_info(folder)["layout"]["world_size"]
    partitioned = any("optim_states" in name for name in os.listdir(folder))
    return partitioned and saved != get_world_size()


def to_universal(folder, ds_config):
    """Convert `folder` with DeepSpeed's ds_to_universal (once, by rank 0) into `folder-universal`, and
    make `ds_config` load that format; returns the folder to load."""
    universal = f"{folder}-universal"
    if is_main_process() and not os.path.exists(os.path.join(universal, COMPLETE_MARKER)):
        shutil.rmtree(universal, ignore_errors=True)
        print_rank0(f"{folder} was saved by {checkpoint_info(folder)['layout']['world_size']} ranks, this run has "
                    f"{get_world_size()}: converting it to DeepSpeed's universal checkpoint in {universal}")
        from deepspeed.checkpoint.ds_to_universal import main as ds_to_universal
        from types import SimpleNamespace
        ds_to_universal(SimpleNamespace(input_folder=folder, output_folder=universal, num_extract_workers=1,
                                        num_merge_workers=1, keep_temp_folder=False, strict=True,
                                        inject_missing_state=True))
        shutil.copy(os.path.join(folder, COMPLETE_MARKER), os.path.join(universal, COMPLETE_MARKER))
    barrier()
    ds_config.setdefault("checkpoint", {})["load_universal"] = True
    return universal


def load_checkpoint(engine, folder, ds_config):
    """Restore model, optimizer, scheduler, loss scaler and this rank's RNG; returns where training stood,
    in this run's micro-batches."""
    load_path, client_state = engine.load_checkpoint(os.path.dirname(folder), tag=os.path.basename(folder),
                                                     load_optimizer_states=True, load_lr_scheduler_states=True)
    if load_path is None:
        raise UserError(f"DeepSpeed could not load the checkpoint in {folder}.")
    rng_file = os.path.join(folder.removesuffix("-universal"), f"rng_state_rank{get_rank()}.pt")
    if os.path.exists(rng_file):  # a rank the saving run did not have keeps its seeded state
        _set_rng_state(torch.load(rng_file, weights_only=False))
    position = _convert_position(client_state["position"], checkpoint_info(folder)["layout"], layout(ds_config))
    print_rank0(f"resumed from {folder} (step {engine.global_steps}, epoch {position['epoch'] + 1}, "
                f"{position['batches_done']} micro-batches of this run done in it)")
    return position


def _convert_position(position, saved, now):
    """The saved position (micro-batches of the saving run) in this run's micro-batches: the same number
    of rows of the global order. The epoch's loss sum is scaled to keep its mean."""
    rows = position["batches_done"] * saved["micro_batch"] * saved["world_size"]
    per_batch = now["micro_batch"] * now["world_size"]
    if rows % per_batch:
        raise UserError(f"the checkpoint stopped after {rows} rows of the epoch, not a multiple of this run's "
                        f"micro batch x ranks = {per_batch}: keep the global batch a multiple of it.")
    batches = rows // per_batch
    scale = batches / position["batches_done"] if position["batches_done"] else 1.0
    return dict(position, batches_done=batches, epoch_loss_sum=position["epoch_loss_sum"] * scale)


def reward_model_from_checkpoint(folder, output_dir):
    """Write the reward model a whole checkpoint holds as the folder main.py saves (merged LoRA, the
    training dtype, no eval statistics), built from the settings the checkpoint saved, without training:
    DeepSpeed consolidates ZeRO shards to fp32."""
    from model.create import build_reward_model, build_tokenizer
    from model.io import save_hf_model
    problem = verify_checkpoint(folder)
    if problem:
        raise UserError(f"{folder} is not a whole checkpoint: {problem}. Pass a complete checkpoint folder.")
    info = checkpoint_info(folder)
    if "settings" not in info:
        raise UserError(f"{folder} was saved by an older version of this project, before checkpoints recorded the "
                        "model's settings: export the model folder main.py saved, or resume and save again.")
    settings = Settings.from_dict(info["settings"])
    tokenizer = build_tokenizer(settings)
    model = build_reward_model(settings, tokenizer, _checkpoint_weights(folder), dtype=TORCH_DTYPES[settings.dtype])
    save_hf_model(model, tokenizer, output_dir, zero_stage=0,
                  extra_json={"exported_from.json": {"checkpoint": os.path.abspath(folder)}})
    return output_dir


def _checkpoint_weights(folder):
    """The fp32 weights of a checkpoint: ZeRO shards consolidated by DeepSpeed, or ZeRO-0's module state."""
    root, tag = os.path.dirname(os.path.abspath(folder)), os.path.basename(os.path.abspath(folder))
    if any("optim_states" in name for name in os.listdir(folder)):
        from deepspeed.utils.zero_to_fp32 import get_fp32_state_dict_from_zero_checkpoint
        return get_fp32_state_dict_from_zero_checkpoint(root, tag=tag)
    state = torch.load(os.path.join(folder, "mp_rank_00_model_states.pt"), map_location="cpu", weights_only=False)
    return {key: value.float() for key, value in state["module"].items()}
