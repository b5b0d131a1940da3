"""LoRA for the reward model with DeepSpeed-Chat's flags, built on peft.

DeepSpeed-Chat semantics (`convert_linear_layer_to_lora`, `only_optimize_lora_parameters`):
- every `nn.Linear` of the base model whose name (as a RewardModel attribute path, e.g.
  `rwtransformer.decoder.layers.0.fc1`) contains `--lora_module_name` gets a rank-`--lora_dim`
  adapter: y = W x + (B A x) / lora_dim (lora_scaling 1), no dropout, B zero-initialised so training
  starts from the base model's outputs, A uniform(+-1/sqrt(lora_dim)) as DeepSpeed-Chat initialises it;
- `--only_optimize_lora` freezes everything except the adapters and the value head;
- the value head never gets an adapter and always trains;
- the saved model has LoRA merged into plain weights (`merge_lora`), so evaluation and step 3 load an
  ordinary model with no LoRA code.
"""
import torch
from torch import nn

from utils.errors import UserError

BASE_ATTR = "rwtransformer"  # RewardModel's attribute holding the base transformer
HEAD_PREFIX = "v_head."
ADAPTER = "default"  # peft's adapter name; parameter names read `...q_proj.lora_A.default.weight`


def is_lora_param(name):
    """True for adapter weights (peft names them `lora_A` / `lora_B`); what --lora_learning_rate applies to."""
    return ".lora_A." in name or ".lora_B." in name


def lora_targets(model, module_name):
    """Names (relative to `model.rwtransformer`) of the Linear layers that get LoRA."""
    base = getattr(model, BASE_ATTR)
    return [name for name, module in base.named_modules()
            if isinstance(module, nn.Linear) and module_name in f"{BASE_ATTR}.{name}"]


def apply_lora(model, lora_dim, module_name="decoder.layers.", only_optimize_lora=False):
    """Add LoRA adapters to `model.rwtransformer` in place (before deepspeed.initialize); returns model."""
    from peft import LoraConfig, inject_adapter_in_model
    if lora_dim < 1:
        raise UserError(f"the LoRA rank (main.py --lora_dim) must be positive, not {lora_dim}.")
    targets = lora_targets(model, module_name)
    if not targets:
        linears = [name for name, module in getattr(model, BASE_ATTR).named_modules() if isinstance(module, nn.Linear)]
        raise UserError(f"main.py --lora_module_name {module_name!r} matches no Linear layer of the model; its Linear "
                        f"layers are named like {[f'{BASE_ATTR}.{n}' for n in linears[:3]]}: pass a part of "
                        "those names (OPT: decoder.layers., Llama: layers.).")
    config = LoraConfig(r=lora_dim, lora_alpha=1, lora_dropout=0.0, bias="none", target_modules=targets)
    base = getattr(model, BASE_ATTR)
    inject_adapter_in_model(config, base, adapter_name=ADAPTER)
    with torch.no_grad():
        for name, param in base.named_parameters():
            if ".lora_A." in name:  # DeepSpeed-Chat: kaiming_uniform(a=sqrt(5)) on an (in, r) tensor
                param.uniform_(-lora_dim ** -0.5, lora_dim ** -0.5)
    # peft freezes the base model; DeepSpeed-Chat trains it too unless --only_optimize_lora.
    # With every base weight frozen, reentrant gradient checkpointing needs the embeddings' output to
    # require grad or the adapters get none: transformers' activation_checkpointing_enable sees to that
    # (tests/test_lora.py checks both checkpointing kinds).
    for name, param in model.named_parameters():
        param.requires_grad = not only_optimize_lora or is_lora_param(name) or name.startswith(HEAD_PREFIX)
    return model


@torch.no_grad()
def merge_lora(model):
    """Fold each adapter into its base Linear (W + B A / r, computed in fp32) and remove the adapters, in
    place; returns `model`, whose state dict then has only the ordinary base keys and `v_head.weight`.

    Call it on every rank after training (under ZeRO-3 each layer's weights are gathered, merged and
    partitioned again, so all ranks take part). The adapters are gone afterwards: save, do not train on.
    """
    import deepspeed
    from peft.tuners.lora import LoraLayer
    base = getattr(model, BASE_ATTR)
    for name, module in list(base.named_modules()):
        if not isinstance(module, LoraLayer):
            continue
        linear = module.get_base_layer()
        lora_a, lora_b = module.lora_A[ADAPTER].weight, module.lora_B[ADAPTER].weight
        scaling = module.scaling[ADAPTER]
        # A no-op without ZeRO-3; with it, every rank gathers and rank 0's result is kept.
        with deepspeed.zero.GatheredParameters([linear.weight, lora_a, lora_b], modifier_rank=0):
            merged = linear.weight.float() + scaling * (lora_b.float() @ lora_a.float())
            linear.weight.data.copy_(merged.to(linear.weight.dtype))
        parent, _, child = name.rpartition(".")
        setattr(base.get_submodule(parent), child, linear)
    if hasattr(base, "peft_config"):
        del base.peft_config
    return model
