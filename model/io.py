"""The reward model's folder: save it in Hugging Face format (rank 0 writes; ZeRO-3 gathers first) and
read its `reward_model` settings and weights back (the one place that reads them)."""
import json
import os
import shutil

import torch
from safetensors import SafetensorError

from utils.dist import barrier, is_main_process, print_rank0
from utils.errors import UserError
from utils.settings import Settings
from utils.io import STAGING, is_disk_full, publish, recover, staging_folder, write_json

REWARD_CONFIG_KEY = "reward_model"  # settings stored inside config.json (utils/settings.py, plus eval stats)
# Eval-set reward statistics saved beside the settings: for step 3, and an ensemble's per-head ones for its
# uncertainty (training/ensemble.py).
STATS_KEYS = ("reward_mean", "reward_std", "head_mean", "head_std")
WEIGHTS_NAME = "model.safetensors"
OUR_TRANSFORMER_KEY = "rwtransformer"
HEAD_KEY = "v_head.weight"
WRITE_ERRORS = (OSError, RuntimeError, SafetensorError)  # what a failed write raises (safetensors: its own)


def check_output_dir(output_dir, overwrite):
    """Refuse to train into a folder that already holds a finished model, unless told to. A save that a
    kill interrupted is finished first (its new model was whole on disk)."""
    if os.path.isdir(output_dir) and recover(output_dir):
        print_rank0(f"{output_dir}: finished moving in the model of an interrupted save")
    if not overwrite and os.path.exists(os.path.join(output_dir, WEIGHTS_NAME)):
        raise UserError(f"--output_dir {output_dir} already holds a trained model ({WEIGHTS_NAME}): pick "
                        "another folder or pass --overwrite_output_dir to replace it.")


def gathered_state_dict(model, zero_stage):
    """Full CPU state dict on rank 0 (an empty dict elsewhere); under ZeRO-3 every rank must call it."""
    keys = list(model.state_dict().keys())
    params = dict(model.named_parameters())
    state = {}
    for key in keys:
        tensor = params.get(key)
        if tensor is not None and zero_stage == 3:
            import deepspeed
            with deepspeed.zero.GatheredParameters([tensor]):
                if is_main_process():
                    state[key] = tensor.data.detach().cpu().clone()
        elif is_main_process():
            state[key] = (tensor if tensor is not None else model.state_dict()[key]).detach().cpu().clone()
    return state


def save_hf_model(model, tokenizer, output_dir, zero_stage, extra_json=None):
    """Write config.json (+ reward settings), model.safetensors, tokenizer files and `extra_json`.

    Files are written to `output_dir/.saving` and published with `utils.io.publish` (weights last), so a
    kill never leaves weights next to a half-written config, nor loses the previous model. Non-finite
    weights are never saved. A full disk is reported as such, and the weights are then written to a
    recovery folder in the system's temp folder if they fit there.
    """
    from utils.dist import all_reduce
    state = gathered_state_dict(model, zero_stage)
    bad = [k for k, v in state.items() if v.is_floating_point() and not torch.isfinite(v).all()]
    if all_reduce(torch.tensor([float(len(bad))])).item():
        raise UserError(f"the trained weights hold NaN/inf ({', '.join(bad[:3]) or 'on rank 0'}): the model "
                        "was not saved. Resume from a checkpoint with a lower learning rate (main.py --learning_rate).")
    if is_main_process():
        setattr(model.config, REWARD_CONFIG_KEY, dict(model.settings.to_dict(), **model.reward_stats))
        try:
            _write_model(staging_folder(output_dir), model.config, state, tokenizer, extra_json)
            publish(output_dir)
        except WRITE_ERRORS as error:
            if not is_disk_full(error):
                raise
            shutil.rmtree(os.path.join(output_dir, STAGING), ignore_errors=True)
            raise UserError(f"no space left on the disk of {output_dir} while saving the reward model "
                            f"({error}); {output_dir} is as it was. "
                            f"{_save_recovery_copy(model.config, state, tokenizer, extra_json)}") from error
    barrier()


def _write_model(folder, config, state, tokenizer, extra_json):
    from safetensors.torch import save_file
    config.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    for name, content in (extra_json or {}).items():
        write_json(os.path.join(folder, name), content)
    save_file({k: v.contiguous() for k, v in state.items()}, os.path.join(folder, WEIGHTS_NAME),
              metadata={"format": "pt"})


def _save_recovery_copy(config, state, tokenizer, extra_json):
    """Try to keep the trained model in the temp folder; say where, or that it could not be kept."""
    import tempfile
    folder = tempfile.mkdtemp(prefix="reward-model-recovery-")
    try:
        _write_model(folder, config, state, tokenizer, extra_json)
    except WRITE_ERRORS as error:
        shutil.rmtree(folder, ignore_errors=True)
        return (f"It did not fit in {tempfile.gettempdir()} either ({error}): free space and resume from the "
                "last checkpoint (main.py --resume_from_checkpoint auto).")
    return f"The trained model was saved to {folder} instead: move it where you want it."


def read_reward_settings(model_dir):
    """(Settings, eval stats dict) from the `reward_model` entry of model_dir/config.json (a model saved
    before a setting existed reads it at its default); UserError if the folder is not a saved reward model."""
    config_path = os.path.join(model_dir, "config.json")
    if not os.path.isdir(model_dir):
        raise UserError(f"{model_dir} is not a folder: pass the output_dir of a main.py run.")
    if not os.path.exists(config_path):
        raise UserError(f"{model_dir} is not a reward model saved by this project (no config.json): pass the "
                        "output_dir of a main.py run.")
    with open(config_path) as f:
        entry = json.load(f).get(REWARD_CONFIG_KEY)
    if entry is None:
        raise UserError(f"{model_dir} is not a reward model saved by this project (no '{REWARD_CONFIG_KEY}' entry "
                        "in config.json): pass the output_dir of a main.py run.")
    return Settings.from_dict(entry), {key: entry[key] for key in STATS_KEYS if key in entry}


def read_weights(model_dir):
    """The state dict in model_dir/model.safetensors; UserError if it is missing or damaged."""
    from safetensors.torch import load_file
    weights_path = os.path.join(model_dir, WEIGHTS_NAME)
    if not os.path.exists(weights_path):
        raise UserError(f"{model_dir} holds no {WEIGHTS_NAME}: pass the output_dir of a finished main.py run "
                        "(a run still training or stopped early has only checkpoints).")
    try:
        return load_file(weights_path)
    except (SafetensorError, OSError) as error:
        raise UserError(f"{weights_path} is damaged ({error}): save the model again (main.py "
                        "--resume_from_checkpoint auto, or a backup copy).") from error


def read_reward_model_dir(model_dir):
    """(Settings, state dict, eval stats) of a folder written by `save_hf_model`; UserError if it is not one."""
    settings, stats = read_reward_settings(model_dir)
    weights_path = os.path.join(model_dir, WEIGHTS_NAME)
    state = read_weights(model_dir)
    unknown = sorted(k for k in state if k != HEAD_KEY and not k.startswith(OUR_TRANSFORMER_KEY + "."))
    if "score.weight" in state:
        raise UserError(f"{model_dir} holds a Hugging Face classifier (score.weight), as export_hf.py writes it, not "
                        "the reward model main.py saves: pass main.py's --output_dir, or load this folder with "
                        "AutoModelForSequenceClassification.")
    if unknown or HEAD_KEY not in state:
        raise UserError(f"{weights_path}: expected only '{OUR_TRANSFORMER_KEY}.*' and '{HEAD_KEY}' tensors; "
                        f"found {unknown[:5] or 'no ' + HEAD_KEY}. Re-save the model with main.py.")
    return settings, state, stats
