"""Save the trained reward model in Hugging Face format (rank 0 writes; ZeRO-3 gathers first)."""
import json
import os

import torch

from model.reward_model import REWARD_CONFIG_KEY, WEIGHTS_NAME
from utils.dist import barrier, is_main_process


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
    """Write config.json (+ reward settings), model.safetensors, tokenizer files and `extra_json`."""
    from safetensors.torch import save_file
    state = gathered_state_dict(model, zero_stage)
    if is_main_process():
        os.makedirs(output_dir, exist_ok=True)
        setattr(model.config, REWARD_CONFIG_KEY, model.reward_settings())
        model.config.save_pretrained(output_dir)
        save_file({k: v.contiguous() for k, v in state.items()}, os.path.join(output_dir, WEIGHTS_NAME),
                  metadata={"format": "pt"})
        tokenizer.save_pretrained(output_dir)
        for name, content in (extra_json or {}).items():
            write_json(os.path.join(output_dir, name), content)
    barrier()


def write_json(path, content):
    with open(path, "w") as f:
        json.dump(content, f, indent=2, default=_jsonable)
        f.write("\n")


def _jsonable(value):
    if isinstance(value, torch.Tensor):
        return value.tolist()
    return str(value)
