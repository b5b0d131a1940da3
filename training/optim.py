"""Optimizer parameter groups, the optimizer that fits the device, and the LR schedule."""
import torch

from model.lora import is_lora_param

# DeepSpeed-Chat's rule, matched as a lower-case substring of the parameter name: these get no weight
# decay. (GPT-2's ln_1/ln_2 weights do not match, so they are decayed, as in DeepSpeed-Chat.)
NO_DECAY_NAMES = ("bias", "layer_norm.weight", "layernorm.weight", "norm.weight", "ln_f.weight")
ADAM_BETAS = (0.9, 0.95)


def param_groups(model, weight_decay, lora_learning_rate=None):
    """DeepSpeed-Chat's `get_optimizer_grouped_parameters`: trainable parameters in up to three groups,
    in its order: decayed, decayed LoRA weights (their own lr), not decayed (LoRA or not). Empty groups
    are left out."""
    decay, decay_lora, no_decay = [], [], []
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        if any(key in name.lower() for key in NO_DECAY_NAMES):
            no_decay.append(param)
        elif lora_learning_rate is not None and is_lora_param(name):
            decay_lora.append(param)
        else:
            decay.append(param)
    groups = [{"params": decay, "weight_decay": weight_decay},
              {"params": decay_lora, "weight_decay": weight_decay, "lr": lora_learning_rate},
              {"params": no_decay, "weight_decay": 0.0}]
    return [group for group in groups if group["params"]]


def offloads_optimizer(ds_config):
    """True when the resolved DeepSpeed config keeps optimizer states on CPU or NVMe (ZeRO-Offload /
    Infinity, from --offload or from the config file itself): DeepSpeed then refuses any client
    optimizer but DeepSpeedCPUAdam."""
    offload = ds_config.get("zero_optimization", {}).get("offload_optimizer") or {}
    return offload.get("device", "none") in ("cpu", "nvme")


def make_optimizer(groups, learning_rate, offload, device_type, fused=False):
    """DeepSpeedCPUAdam when `offload` (see `offloads_optimizer`), FusedAdam on CUDA, torch's AdamW
    otherwise (all AdamW-style); `fused`: torch's fused AdamW kernel (the fused_adamw CPU acceleration),
    the same update as its default loop over tensors."""
    if offload:
        from deepspeed.ops.adam import DeepSpeedCPUAdam
        return DeepSpeedCPUAdam(groups, lr=learning_rate, betas=ADAM_BETAS)
    if device_type == "cuda":
        from deepspeed.ops.adam import FusedAdam
        return FusedAdam(groups, lr=learning_rate, betas=ADAM_BETAS)
    return torch.optim.AdamW(groups, lr=learning_rate, betas=ADAM_BETAS, fused=fused or None)


def make_scheduler(optimizer, name, num_warmup_steps, num_training_steps):
    from transformers import get_scheduler
    return get_scheduler(name=name, optimizer=optimizer, num_warmup_steps=num_warmup_steps,
                         num_training_steps=num_training_steps)
