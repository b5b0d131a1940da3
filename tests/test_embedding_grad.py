"""training/embedding_grad.py: token-embedding gradients added into `.grad` in place give what nn.Embedding's
own backward accumulates over several passes (repeated ids, the padding index left at zero), and only where
they may (ZeRO-0, a plain trainable nn.Embedding). The full training path is held to the unsplit micro batch's
gradients by tests/test_sub_batches.py.

Run: python -m pytest tests/test_embedding_grad.py -q
"""
from types import SimpleNamespace

import torch
import torch.nn as nn

from training.embedding_grad import applies, direct_embedding_grad

PAD = 1


def passes(direct):
    """The embedding's .grad after three forward + backward passes of one tiny model, one of them twice."""
    torch.manual_seed(0)
    embedding = nn.Embedding(20, 4, padding_idx=PAD)
    head = nn.Linear(4, 1)
    model = SimpleNamespace(rwtransformer=SimpleNamespace(get_input_embeddings=lambda: embedding))
    batches = [torch.tensor([[3, 3, 5, PAD]]), torch.tensor([[5, 7], [PAD, 3]]), torch.tensor([[19, 0, 3]])]
    for ids in batches:
        with direct_embedding_grad(model, direct):
            out = head(embedding(ids)).square().sum()  # the backward runs after the block, as in training
        out.backward()
    assert "forward" not in vars(embedding)  # the module's own forward is back
    return embedding.weight.grad


def test_direct_rows_equal_the_dense_backward():
    dense, direct = passes(False), passes(True)
    torch.testing.assert_close(direct, dense, rtol=0, atol=1e-6)
    assert direct[PAD].abs().sum() == 0 and direct[3].abs().sum() > 0
    assert direct[2].abs().sum() == 0  # never looked up


def test_applies_only_to_zero0_and_a_plain_trainable_embedding():
    def engine(stage, embedding):
        model = SimpleNamespace(rwtransformer=SimpleNamespace(get_input_embeddings=lambda: embedding))
        return SimpleNamespace(module=model, zero_optimization_stage=lambda: stage)

    class Scaled(nn.Embedding):
        pass
    assert applies(engine(0, nn.Embedding(8, 2)))
    assert not applies(engine(2, nn.Embedding(8, 2)))
    assert not applies(engine(0, Scaled(8, 2)))
    assert not applies(engine(0, nn.Embedding(8, 2, max_norm=1.0)))
    frozen = nn.Embedding(8, 2)
    frozen.weight.requires_grad_(False)
    assert not applies(engine(0, frozen))
