"""Token-embedding gradients added straight into the weight's `.grad`, for micro batches run in several passes.

Each backward through `nn.Embedding` builds a dense gradient as large as the whole table and autograd then adds
it to `.grad`: for opt-125m's 50,272 x 768 table that is ~25 ms of zero-filling and adding per pass on this CPU
(a 77 MB fill and add), however few tokens the pass holds, and a micro batch split into sub-batches runs
several. `direct_embedding_grad` instead adds each pass's gradient
rows into `.grad` in place (`index_add_`, the padding index left out as `nn.Embedding` does): the same sum, to
float rounding, with one zero-filled gradient per optimizer step.

Only under ZeRO stage 0: stages 1-3 reduce and partition gradients from hooks on autograd's accumulation, which
this path does not pass through (ZeRO-0 reads `.grad` after the backward, where the rows already are).
"""
import contextlib

import torch
import torch.nn as nn
import torch.nn.functional as F


class _LookupAddingToGrad(torch.autograd.Function):
    """`F.embedding(ids, weight, padding_idx)` whose backward adds the weight's gradient rows into `weight.grad`
    itself and hands autograd nothing for the weight."""

    @staticmethod
    def forward(ctx, ids, weight, padding_idx):
        ctx.save_for_backward(ids)
        ctx.weight, ctx.padding_idx = weight, padding_idx
        return F.embedding(ids, weight, padding_idx)

    @staticmethod
    def backward(ctx, grad_output):
        (ids,) = ctx.saved_tensors
        weight = ctx.weight
        rows, grads = ids.reshape(-1), grad_output.reshape(-1, grad_output.size(-1))
        if ctx.padding_idx is not None:
            keep = rows != ctx.padding_idx
            rows, grads = rows[keep], grads[keep]
        if weight.grad is None:
            weight.grad = torch.zeros_like(weight)
        weight.grad.index_add_(0, rows, grads.to(weight.grad.dtype))
        return None, None, None


def applies(engine):
    """True when `engine`'s (DeepSpeed) token embedding can take its gradient this way: ZeRO-0, a plain
    trainable `nn.Embedding` (not a subclass that scales or renormalises its output)."""
    embedding = engine.module.rwtransformer.get_input_embeddings()
    return (engine.zero_optimization_stage() == 0 and type(embedding) is nn.Embedding
            and embedding.weight.requires_grad and embedding.max_norm is None
            and not embedding.scale_grad_by_freq and not embedding.sparse)


@contextlib.contextmanager
def direct_embedding_grad(model, enabled=True):
    """Within this block the token embedding of `model` (a RewardModel) looks up through `_LookupAddingToGrad`
    (check `applies` first). The backward may run after the block: the graph keeps the function."""
    if not enabled:
        yield
        return
    embedding = model.rwtransformer.get_input_embeddings()
    embedding.forward = lambda ids: _LookupAddingToGrad.apply(ids, embedding.weight, embedding.padding_idx)
    try:
        yield
    finally:
        del embedding.forward  # back to nn.Embedding.forward
