"""CPU training rules (training/accelerations.py chooses them): two speed rules entered around each
training forward (`cpu_training_speedups`), and a memory bound set at start (`bound_kernel_caches`).

The speed rules change no result beyond float rounding (tests/test_fidelity.py):
1. Attention: eager for rows up to CPU_EAGER_MAX_LEN tokens or batches up to CPU_EAGER_MAX_TOKENS, SDPA
   otherwise.
2. Dropout, below: torch's keep rate and scale, with the random bits drawn faster. On CPU
   `torch.nn.functional.dropout` draws its Bernoulli mask one element at a time from the Mersenne Twister
   generator, a large share of a training step at the card's dropout 0.1 (docs/performance.md). Here each
   call takes one 64-bit seed from torch's generator (so runs stay reproducible from --seed, and
   checkpoints that save torch's RNG state resume exactly), then numpy's SFC64 generator gives 64 random
   bits per two elements.
"""
import contextlib
import os

import numpy as np
import torch
import torch.nn.functional as F

_torch_dropout = F.dropout
# PyTorch's CPU flash-attention backward is slower than eager on short rows and small batches, faster on
# long rows and large batches: eager up to these (crossovers measured in docs/performance.md).
CPU_EAGER_MAX_LEN = 192
CPU_EAGER_MAX_TOKENS = 3072
# oneDNN and ideep keep the kernels of every input shape (1,024 per cache, ~9.5 MB each for the opt-125m
# shape); dynamic padding brings a new shape nearly every step, so RSS would creep up. 64 keep a few shapes'
# kernels at no measured cost (docs/performance.md).
KERNEL_CACHE_CAPACITY = 64


def fast_dropout(input, p=0.5, training=True, inplace=False):
    """`F.dropout` for CPU training: each element is kept with probability 1 - p and scaled by 1/(1 - p).

    The keep test compares 32 random bits with round(p * 2**32), so p is exact to 2**-33. Calls this
    path does not cover (eval, in-place, p of 0 or 1, other devices or dtypes) go to torch's dropout.
    """
    if not training or inplace or not 0 < p < 1 or input.device.type != "cpu" or not input.is_floating_point():
        return _torch_dropout(input, p, training, inplace)
    seed = int(torch.randint(0, 2**63 - 1, (), dtype=torch.int64))
    count = input.numel()
    bits = np.random.SFC64(seed).random_raw((count + 1) // 2).view(np.int32)[:count]
    # uniform over int32, so P(bits < t - 2**31) = t / 2**32 = p
    keep = torch.from_numpy(bits).view(input.shape) >= round(p * 2**32) - 2**31
    return input * keep.to(input.dtype).div_(1 - p)  # the scale rounds to input's dtype, as in torch's


def bound_kernel_caches():
    """Cap oneDNN's and ideep's per-shape kernel caches at KERNEL_CACHE_CAPACITY, unless the environment
    sets them. Both read the capacity at their first use: call this before the first CPU matmul."""
    for name in ("ONEDNN_PRIMITIVE_CACHE_CAPACITY", "LRU_CACHE_CAPACITY"):
        os.environ.setdefault(name, str(KERNEL_CACHE_CAPACITY))


@contextlib.contextmanager
def cpu_dropout():
    """Within this block every `F.dropout` call (nn.Dropout's too) goes through `fast_dropout`."""
    previous, F.dropout = F.dropout, fast_dropout
    try:
        yield
    finally:
        F.dropout = previous


@contextlib.contextmanager
def cpu_training_speedups(model, input_ids, dropout=True, attention=True):
    """Run one training forward of `model` (a RewardModel) on `input_ids` (N, L) with the CPU rules asked for:
    `dropout` (`fast_dropout`) and `attention` (eager for short rows or small batches).

    Only with gradients on a CPU batch. The attention kernel is set for this batch and put back on exit
    (the backward pass needs only the graph), so evaluation, scoring and a step-3 critic reusing the model
    see transformers' choice. Under gradient checkpointing neither rule applies: the recomputation in
    the backward pass runs outside this block and must draw the same masks with the same kernel.
    """
    base = model.rwtransformer
    active = torch.is_grad_enabled() and input_ids.device.type == "cpu" and not base.is_activation_checkpointing
    previous = base.config._attn_implementation
    switch = active and attention and previous == "sdpa" and base._can_set_attn_implementation()
    if switch:
        eager = input_ids.size(1) <= CPU_EAGER_MAX_LEN or input_ids.numel() <= CPU_EAGER_MAX_TOKENS
        base.set_attn_implementation("eager" if eager else "sdpa")
    try:
        with cpu_dropout() if active and dropout else contextlib.nullcontext():
            yield
    finally:
        if switch:
            base.set_attn_implementation(previous)
