"""Runtime shims that let DeepSpeed-Chat's step-2 script run here (CPU, transformers 5, DeepSpeed 0.19).

Applied in memory by benchmarks/sxs_runner.py before the script is run; the checkout is not edited.
Each shim changes how the script runs on this machine, not what it computes:
- `transformers.modeling_utils.no_init_weights` moved to `transformers.initialization` in v5:
  re-exported under the old name (the script imports it; step 2 never calls it).
- FusedAdam needs CUDA: on a CPU accelerator it becomes torch's fused AdamW with the same arguments
  (FusedAdam's default is AdamW-style decoupled weight decay; a fused kernel, as FusedAdam is; this
  project uses the same optimizer on CPU).
- DeepSpeed's CPU accelerator has no fp16: the script's fp16 section becomes bf16 (this project's
  rule), and `fp32` (SXS_DTYPE) drops the section so the engine trains in fp32, which the script's
  `--dtype` choices (fp16, bf16) cannot ask for.
"""
import functools


def apply(dtype=None):
    _reexport_no_init_weights()
    _cpu_fused_adam()
    _ds_config_dtype(dtype)


def _reexport_no_init_weights():
    import transformers.modeling_utils as modeling_utils
    if not hasattr(modeling_utils, "no_init_weights"):
        from transformers.initialization import no_init_weights
        modeling_utils.no_init_weights = no_init_weights


def _cpu_fused_adam():
    import deepspeed.ops.adam
    import torch
    from deepspeed.accelerator import get_accelerator
    if get_accelerator().device_name() != "cpu":
        return

    class FusedAdam(torch.optim.AdamW):
        """torch's fused AdamW under FusedAdam's signature (adam_w_mode=True, its default)."""

        def __init__(self, params, lr=1e-3, bias_correction=True, betas=(0.9, 0.999), eps=1e-8,
                     adam_w_mode=True, weight_decay=0.0, amsgrad=False, set_grad_none=True):
            if not (bias_correction and adam_w_mode):
                raise NotImplementedError("the CPU stand-in for FusedAdam only does bias-corrected AdamW")
            super().__init__(params, lr=lr, betas=betas, eps=eps, weight_decay=weight_decay, amsgrad=amsgrad,
                             fused=True)

    deepspeed.ops.adam.FusedAdam = FusedAdam


def _ds_config_dtype(dtype):
    from deepspeed.accelerator import get_accelerator

    import dschat.utils.ds_utils as ds_utils
    original = ds_utils.get_train_ds_config
    on_cpu = get_accelerator().device_name() == "cpu"

    @functools.wraps(original)
    def get_train_ds_config(*args, **kwargs):
        config = original(*args, **kwargs)
        if dtype == "fp32":
            config.pop("fp16", None)
            config.pop("bfloat16", None)
        elif on_cpu and "fp16" in config:
            config.pop("fp16")
            config["bfloat16"] = {"enabled": True}
        return config
    ds_utils.get_train_ds_config = get_train_ds_config

