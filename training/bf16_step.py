"""DeepSpeed's bf16 ZeRO-0 optimizer step on CPU, computed through one reused fp32 buffer.

With bf16 and ZeRO stage 0 DeepSpeed wraps any optimizer but its CUDA FusedAdam in FP16_UnfusedOptimizer,
whose step, on every micro batch: checks each bf16 gradient for inf/NaN (amax and amin), converts each to
fp32 for the gradient norm, converts each again into a new fp32 `.grad` (500 MB for opt-125m, which the
kernel maps and zeroes afresh each step), scales them for clipping, steps, and copies the fp32 master weights
back to the bf16 ones. For opt-125m that was 0.28-0.39 s of a ~2.3 s micro step here (docs/performance.md).

`use_buffered_step` gives that optimizer a step with the same result, bit for bit (tests/test_bf16_step.py):
- the norm is DeepSpeed's own `get_weight_norm`, fed each gradient's fp32 copy in turn from one buffer as
  large as the largest parameter, so no fp32 gradient set ever exists;
- no separate inf/NaN scan: a non-finite gradient makes the norm invalid, and DeepSpeed then skips the step
  the same way (`_skip_invalid_grad_norm`);
- the fp32 gradients are made again, a buffer-full of parameters at a time, scaled as DeepSpeed scales them,
  and the inner optimizer steps those parameters (AdamW's update and its per-parameter step count do not
  depend on which others step in the same call); their bf16 weights are copied back.
Peak memory falls too: one buffer instead of a second fp32 copy of the model.
"""
import types

import torch
from deepspeed.runtime.fp16.unfused_optimizer import FP16_UnfusedOptimizer
from deepspeed.runtime.utils import get_global_norm, get_weight_norm, is_invalid_grad_norm


def use_buffered_step(engine):
    """Replace the step of `engine.optimizer` when it is DeepSpeed's FP16_UnfusedOptimizer around a bf16
    model on CPU with no MoE, model parallelism or fused LAMB. Returns True when it did."""
    optimizer = engine.optimizer
    applies = (type(optimizer) is FP16_UnfusedOptimizer and engine.bfloat16_enabled()
               and engine.device.type == "cpu" and optimizer.mpu is None and not optimizer.fused_lamb_legacy
               and not engine.has_moe_layers)
    if applies:
        largest = max(p.numel() for group in optimizer.fp16_groups for p in group)
        optimizer.fp32_grad_buffer = torch.empty(largest, dtype=torch.float32)
        optimizer.step = types.MethodType(buffered_step, optimizer)
    return applies


@torch.no_grad()
def buffered_step(self, closure=None):
    """FP16_UnfusedOptimizer.step (DeepSpeed 0.19) without materialising fp32 gradients; `self` is that
    optimizer, given `fp32_grad_buffer` by `use_buffered_step`. Returns whether the step was skipped, as
    DeepSpeed's does."""
    self.overflow = False
    buffer = self.fp32_grad_buffer

    def fp32_grads(params):
        for param in params:
            if param.grad is not None:
                yield buffer[:param.numel()].view(param.shape).copy_(param.grad)

    norms = [get_weight_norm(fp32_grads(group), mpu=self.mpu) for group in self.fp16_groups]
    self._global_grad_norm = get_global_norm(norm_list=norms)
    if is_invalid_grad_norm(self._global_grad_norm):
        return self._skip_invalid_grad_norm()
    self._update_scale(False)
    scale = self.unscale_and_clip_grads(self._global_grad_norm, apply_scale=False)
    pairs = [pair for fp32_group, fp16_group in zip(self.fp32_groups, self.fp16_groups)
             for pair in zip(fp32_group, fp16_group)]
    for chunk in _buffer_fulls(pairs, buffer.numel()):
        start = 0
        for fp32_param, fp16_param in chunk:
            grad = buffer[start:start + fp32_param.numel()].view(fp32_param.shape)
            start += fp32_param.numel()
            if fp16_param.grad is None:
                grad.zero_()
            else:
                grad.copy_(fp16_param.grad)
                if scale != 1.0:  # x * 1.0 is x: DeepSpeed's multiply changes nothing then
                    grad.mul_(1.0 / scale)
            fp32_param.grad = grad
        self.optimizer.step()
        for fp32_param, fp16_param in chunk:
            fp32_param.grad = None
            fp16_param.data.copy_(fp32_param.data)
    return self.overflow


def _buffer_fulls(pairs, capacity):
    """Consecutive runs of (fp32, bf16) parameter pairs whose sizes add up to at most `capacity`."""
    chunk, size = [], 0
    for pair in pairs:
        if chunk and size + pair[0].numel() > capacity:
            yield chunk
            chunk, size = [], 0
        chunk.append(pair)
        size += pair[0].numel()
    if chunk:
        yield chunk
