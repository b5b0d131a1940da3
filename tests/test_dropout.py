"""CPU training dropout (training/cpu_speed.py): torch's semantics, reproducible, used only where it is safe."""
import pytest
import torch
import torch.nn.functional as F

from training.cpu_speed import _torch_dropout, cpu_dropout, cpu_training_speedups, fast_dropout


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_keeps_one_minus_p_and_scales_like_torch(dtype):
    torch.manual_seed(0)
    x = torch.randn(1000, 1000).to(dtype) + 3  # no zeros in x, so y == 0 marks a dropped element
    for p in (0.1, 0.5):
        y = fast_dropout(x, p, training=True)
        keep = y != 0
        # 1e6 Bernoulli draws: 5 standard deviations
        assert abs(keep.float().mean().item() - (1 - p)) < 5 * (p * (1 - p) / x.numel()) ** 0.5
        expected = x * keep.to(dtype).div_(1 - p)  # torch's CPU dropout: input * (mask / (1 - p)) in input's dtype
        assert torch.equal(y, expected)
        rows, cols = keep.float().mean(dim=1), keep.float().mean(dim=0)  # no stripes: every bit position is used
        assert rows.min() > 1 - p - 0.07 and cols.max() < 1 - p + 0.07


def test_masks_follow_torch_seed():
    x = torch.ones(64, 64)
    torch.manual_seed(3)
    first = fast_dropout(x, 0.1)
    torch.manual_seed(3)
    assert torch.equal(fast_dropout(x, 0.1), first)
    assert not torch.equal(fast_dropout(x, 0.1), first)  # the next call draws a new mask


def test_gradient_is_the_mask_times_the_scale():
    x = torch.randn(32, 48, requires_grad=True)
    y = fast_dropout(x, 0.25)
    y.backward(torch.ones_like(y))
    torch.testing.assert_close(x.grad, (y != 0).float() / 0.75)


def test_eval_in_place_and_other_cases_go_to_torch():
    x = torch.randn(8, 8)
    assert torch.equal(fast_dropout(x, 0.1, training=False), x)
    assert torch.equal(fast_dropout(x, 0.0), x)
    assert torch.equal(fast_dropout(x, 1.0), torch.zeros_like(x))
    y = x.clone()
    assert fast_dropout(y, 0.5, inplace=True) is y


def test_context_swaps_dropout_and_restores_it_on_error():
    with pytest.raises(RuntimeError):
        with cpu_dropout():
            assert F.dropout is fast_dropout and torch.nn.functional.dropout is fast_dropout
            raise RuntimeError("boom")
    assert F.dropout is _torch_dropout


def test_training_context_uses_it_only_for_cpu_training_without_checkpointing(monkeypatch):
    from transformers import OPTConfig, OPTModel

    from model.reward_model import RewardModel
    from tests.fixtures import row_settings
    config = OPTConfig(vocab_size=64, hidden_size=16, num_hidden_layers=2, ffn_dim=32, num_attention_heads=2,
                       word_embed_proj_dim=16, max_position_embeddings=32, dropout=0.1)
    model = RewardModel(OPTModel(config), row_settings(1))
    calls = []

    def spy(name, dropout):
        def call(input, p=0.5, training=True, inplace=False):
            if p > 0 and training:  # attention dropout is 0 here
                calls.append(name)
            return dropout(input, p, training, inplace)
        return call
    monkeypatch.setattr(F, "dropout", spy("torch", _torch_dropout))
    torch_spy = F.dropout
    monkeypatch.setattr("training.cpu_speed.fast_dropout", spy("fast", fast_dropout))
    ids = torch.randint(3, 64, (4, 10))

    def dropout_calls(train, checkpointing=False, grad=True, context=True):
        calls.clear()
        model.train(train)
        if checkpointing:
            model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        with torch.set_grad_enabled(grad), cpu_training_speedups(model, ids, dropout=context, attention=context):
            model(input_ids=ids, attention_mask=torch.ones_like(ids))["loss"]
        model.gradient_checkpointing_disable()
        return set(calls)
    assert dropout_calls(train=True) == {"fast"}
    assert dropout_calls(train=True, checkpointing=True) == {"torch"}
    assert dropout_calls(train=True, grad=False) == {"torch"}
    assert dropout_calls(train=False) == set()
    assert dropout_calls(train=True, context=False) == {"torch"}  # --disable_cpu_speedups
    model.train()
    model(input_ids=ids, attention_mask=torch.ones_like(ids))  # a RewardModel alone (a step-3 critic): torch's
    assert set(calls) == {"torch"}
    assert F.dropout is torch_spy
