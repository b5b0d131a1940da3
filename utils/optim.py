"""Optimizer parameter groups, the optimizer that fits the device, and the LR schedule."""
import torch

# DeepSpeed-Chat's list: biases and norm weights get no weight decay.
NO_DECAY_NAMES = ("bias", "layer_norm.weight", "layernorm.weight", "norm.weight", "ln_f.weight",
                  "ln_1.weight", "ln_2.weight")
ADAM_BETAS = (0.9, 0.95)


def param_groups(model, weight_decay, lora_learning_rate=None):
    """Split trainable parameters into decay / no-decay groups (and LoRA groups with their own lr)."""
    groups = {}
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        decay = not any(key in name.lower() for key in NO_DECAY_NAMES)
        lora = lora_learning_rate is not None and "lora_" in name
        groups.setdefault((decay, lora), []).append(param)
    result = []
    for (decay, lora), params in groups.items():
        group = {"params": params, "weight_decay": weight_decay if decay else 0.0}
        if lora:
            group["lr"] = lora_learning_rate
        result.append(group)
    return result


def offloads_optimizer(ds_config):
    """True when the resolved DeepSpeed config keeps optimizer states on CPU or NVMe (ZeRO-Offload /
    Infinity, from --offload or from the config file itself): DeepSpeed then refuses any client
    optimizer but DeepSpeedCPUAdam."""
    offload = ds_config.get("zero_optimization", {}).get("offload_optimizer") or {}
    return offload.get("device", "none") in ("cpu", "nvme")


def make_optimizer(groups, learning_rate, offload, device_type):
    """DeepSpeedCPUAdam when `offload` (see `offloads_optimizer`), FusedAdam on CUDA, torch's AdamW
    otherwise (all AdamW-style)."""
    if offload:
        from deepspeed.ops.adam import DeepSpeedCPUAdam
        return DeepSpeedCPUAdam(groups, lr=learning_rate, betas=ADAM_BETAS)
    if device_type == "cuda":
        from deepspeed.ops.adam import FusedAdam
        return FusedAdam(groups, lr=learning_rate, betas=ADAM_BETAS)
    return torch.optim.AdamW(groups, lr=learning_rate, betas=ADAM_BETAS)


def make_scheduler(optimizer, name, num_warmup_steps, num_training_steps):
    from transformers import get_scheduler
    return get_scheduler(name=name, optimizer=optimizer, num_warmup_steps=num_warmup_steps,
                         num_training_steps=num_training_steps)
