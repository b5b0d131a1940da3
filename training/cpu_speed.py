"""CPU training rules: two speed rules the training loop enters around each forward
(`cpu_training_speedups`), and a memory bound main.py sets at start (`bound_kernel_caches`).

The speed rules change no result beyond float rounding (tests/test_fidelity.py):
1. Attention: eager for rows up to CPU_EAGER_MAX_LEN tokens or batches up to CPU_EAGER_MAX_TOKENS, SDPA
   otherwise. PyTorch's CPU flash-attention backward is 2-4x slower than eager on short rows and faster
   on long ones and on large batches.
2. Dropout, below: torch's keep rate and scale, with the random bits drawn faster.

On CPU `torch.nn.functional.dropout` draws its Bernoulli mask one element at a time from the
Mersenne Twister generator: at the card's dropout 0.1 that was 14% of an opt-350m training step
(torch profiler, 152-token batch). Here each call takes one 64-bit seed from torch's generator (so
runs stay reproducible from --seed, and checkpoints that save torch's RNG state resume exactly),
then numpy's SFC64 generator gives 64 random bits per two elements. Forward + backward on a
2432 x 1024 bf16 activation: 11 ms instead of 26 ms.
"""
import contextlib
import os

import numpy as np
import torch
import torch.nn.functional as F

_torch_dropout = F.dropout
# Measured crossover of eager and SDPA attention (forward + backward, bf16) on this project's 2-core CPU
# machine with the opt-125m and opt-350m shapes of benchmarks/bench.py (commit 1994c2f).
CPU_EAGER_MAX_LEN = 192
# ... and for batches of up to this many tokens whatever their length (opt-125m shape, bf16, forward +
# backward, process CPU time: eager 3-7% faster at 8 x 198 ... 8 x 384, 2 x 512 and 4 x 512 rows x tokens;
# SDPA 8-27% faster at 8 x 448, 8 x 512, 16 x 256 and above; docs/performance.md).
CPU_EAGER_MAX_TOKENS = 3072
# oneDNN (torch's bf16 CPU matmuls) and ideep keep the kernels they build for every input shape in LRU caches
# of 1,024 entries each. Batches padded only to their longest row, and sub-batches, bring new shapes nearly
# every step: ~9.5 MB more RSS per new length for the opt-125m shape, never given back, up to ~1 GB.
# DeepSpeed-Chat pads every row to max_seq_len, one shape. 64 entries keep the kernels of a few shapes:
# no slower here (forward + backward over 12 lengths), and RSS stays flat (docs/performance.md).
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
def cpu_training_speedups(model, input_ids, enabled=True):
    """Run one training forward of `model` (a RewardModel) on `input_ids` (N, L) with the CPU rules.

    Only with gradients on a CPU batch. The attention kernel is set for this batch and put back on exit
    (the backward pass needs only the graph), so evaluation, scoring and a step-3 critic reusing the model
    see transformers' choice. Under gradient checkpointing neither rule applies: the recomputation in
    the backward pass runs outside this block and must draw the same masks with the same kernel.
    """
    base = model.rwtransformer
    active = (enabled and torch.is_grad_enabled() and input_ids.device.type == "cpu"
              and not base.is_activation_checkpointing)
    if not active:
        yield
        return
    previous = base.config._attn_implementation
    switch = previous == "sdpa" and base._can_set_attn_implementation()
    if switch:
        eager = input_ids.size(1) <= CPU_EAGER_MAX_LEN or input_ids.numel() <= CPU_EAGER_MAX_TOKENS
        base.set_attn_implementation("eager" if eager else "sdpa")
    try:
        with cpu_dropout():
            yield
    finally:
        if switch:
            base.set_attn_implementation(previous)
