"""The reward model's folder: save it in Hugging Face format (rank 0 writes; ZeRO-3 gathers first) and
read its `reward_model` settings and weights back (the one place that reads them)."""
import json
import os
import shutil

import torch

from utils.dist import barrier, is_main_process
from utils.errors import UserError
from utils.io import write_json

REWARD_CONFIG_KEY = "reward_model"  # settings stored inside config.json
WEIGHTS_NAME = "model.safetensors"
OUR_TRANSFORMER_KEY = "rwtransformer"
HEAD_KEY = "v_head.weight"


def check_output_dir(output_dir, overwrite):
    """Refuse to train into a folder that already holds a finished model, unless told to."""
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

    Files are written to a temporary folder, then moved in with the weights last, so output_dir
    never holds weights next to a half-written config. Non-finite weights are never saved.
    """
    from safetensors.torch import save_file

    from utils.dist import all_reduce
    state = gathered_state_dict(model, zero_stage)
    bad = [k for k, v in state.items() if v.is_floating_point() and not torch.isfinite(v).all()]
    if all_reduce(torch.tensor([float(len(bad))])).item():
        raise UserError(f"the trained weights hold NaN/inf ({', '.join(bad[:3]) or 'on rank 0'}): the model "
                        "was not saved. Resume from a checkpoint with a lower --learning_rate.")
    if is_main_process():
        staging = os.path.join(output_dir, ".saving")
        shutil.rmtree(staging, ignore_errors=True)
        os.makedirs(staging)
        setattr(model.config, REWARD_CONFIG_KEY, model.reward_settings())
        model.config.save_pretrained(staging)
        save_file({k: v.contiguous() for k, v in state.items()}, os.path.join(staging, WEIGHTS_NAME),
                  metadata={"format": "pt"})
        tokenizer.save_pretrained(staging)
        for name, content in (extra_json or {}).items():
            write_json(os.path.join(staging, name), content)
        _publish(staging, output_dir)
    barrier()


def _publish(staging, output_dir):
    weights = os.path.join(output_dir, WEIGHTS_NAME)
    if os.path.exists(weights):
        os.remove(weights)  # from here until the end, output_dir holds no model
    for name in sorted(os.listdir(staging), key=lambda n: n == WEIGHTS_NAME):
        os.replace(os.path.join(staging, name), os.path.join(output_dir, name))
    os.rmdir(staging)


def read_reward_settings(model_dir):
    """The `reward_model` entry of model_dir/config.json; UserError if the folder is not a saved reward model."""
    config_path = os.path.join(model_dir, "config.json")
    if not os.path.isdir(model_dir):
        raise UserError(f"{model_dir} is not a folder: pass the output_dir of a main.py run.")
    if not os.path.exists(config_path):
        raise UserError(f"{model_dir} is not a reward model saved by this project (no config.json): pass the "
                        "output_dir of a main.py run.")
    with open(config_path) as f:
        settings = json.load(f).get(REWARD_CONFIG_KEY)
    if settings is None:
        raise UserError(f"{model_dir} is not a reward model saved by this project (no '{REWARD_CONFIG_KEY}' entry "
                        "in config.json): pass the output_dir of a main.py run.")
    return settings


def read_reward_model_dir(model_dir):
    """(reward settings dict, state dict) of a folder written by `save_hf_model`; UserError if it is not one."""
    from safetensors.torch import load_file
    settings = read_reward_settings(model_dir)
    weights_path = os.path.join(model_dir, WEIGHTS_NAME)
    if not os.path.exists(weights_path):
        raise UserError(f"{model_dir} is not a reward model saved by this project (no {WEIGHTS_NAME}): pass the "
                        "output_dir of a main.py run.")
    state = load_file(weights_path)
    unknown = sorted(k for k in state if k != HEAD_KEY and not k.startswith(OUR_TRANSFORMER_KEY + "."))
    if unknown or HEAD_KEY not in state:
        raise UserError(f"{weights_path}: expected only '{OUR_TRANSFORMER_KEY}.*' and '{HEAD_KEY}' tensors; "
                        f"found {unknown[:5] or 'no ' + HEAD_KEY}. Re-save the model with main.py.")
    return settings, state
