"""training/bf16_step.py: the buffered bf16 ZeRO-0 CPU step updates weights and optimizer state exactly as
DeepSpeed's FP16_UnfusedOptimizer step does (bit for bit), with and without clipping, when a parameter has
no gradient, and when a gradient is not finite (the step is skipped in both).

Run: python -m pytest tests/test_bf16_step.py -q
"""
import math

import pytest
import torch

from tests.fixtures import micro_batches, reward_model
from training.bf16_step import use_buffered_step
from training.optim import ADAM_BETAS, param_groups


def bf16_engine(tiny_opt, tokenizer, clipping, buffered):
    import deepspeed

    from utils.dist import set_single_process_defaults
    set_single_process_defaults()
    torch.manual_seed(0)
    model = reward_model(tiny_opt, tokenizer, 1, dropout=0.0)
    optimizer = torch.optim.AdamW(param_groups(model, 0.1), lr=1e-2, betas=ADAM_BETAS, fused=True)
    config = {"train_micro_batch_size_per_gpu": 4, "gradient_accumulation_steps": 1, "bf16": {"enabled": True},
              "zero_optimization": {"stage": 0}, "gradient_clipping": clipping, "steps_per_print": 10 ** 9}
    engine, *_ = deepspeed.initialize(model=model, optimizer=optimizer, config=config)
    engine.enable_backward_allreduce = False  # as main.py: one process
    if buffered:
        assert use_buffered_step(engine)
    engine.train()
    return engine


def train_steps(engine, batches, spoil=None):
    """Steps over `batches`; `spoil(step, engine)` may change the gradients before a step. Returns each
    step's weights, inner optimizer state and gradient norm."""
    states = []
    for step, batch in enumerate(batches):
        engine.backward(engine(**batch)["loss"])
        if spoil:
            spoil(step, engine)
        engine.step()
        inner = engine.optimizer.optimizer.state
        states.append(([p.detach().clone() for p in engine.module.parameters()],
                       [t.clone() for state in inner.values() for t in state.values()],
                       engine.get_global_grad_norm()))
    return states


def assert_same_steps(plain, buffered):
    for (weights, moments, norm), (weights2, moments2, norm2) in zip(plain, buffered, strict=True):
        assert norm == norm2 or (math.isinf(norm) and math.isinf(norm2))
        assert all(torch.equal(a, b) for a, b in zip(weights, weights2, strict=True))
        assert all(torch.equal(a, b) for a, b in zip(moments, moments2, strict=True))


@pytest.mark.parametrize("clipping", [1.0, 1e-3, 0.0], ids=["card", "clipping-active", "no-clipping"])
def test_buffered_step_equals_deepspeeds_bit_for_bit(clipping, tiny_opt, opt_tokenizer):
    batches = micro_batches(opt_tokenizer)

    def drop_a_gradient(step, engine):  # DeepSpeed steps a parameter without a gradient as if it were zero
        if step == 1:
            next(engine.module.parameters()).grad = None

    runs = [train_steps(bf16_engine(tiny_opt, opt_tokenizer, clipping, buffered), batches, drop_a_gradient)
            for buffered in (False, True)]
    assert_same_steps(*runs)
    first, last = runs[1][0][0], runs[1][-1][0]
    assert not all(torch.equal(a, b) for a, b in zip(first, last))  # the weights moved


def test_a_non_finite_gradient_skips_the_step_as_deepspeed_does(tiny_opt, opt_tokenizer):
    batches = micro_batches(opt_tokenizer)

    def poison(step, engine):
        if step == 1:
            list(engine.module.parameters())[3].grad.view(-1)[0] = float("nan")

    engines = [bf16_engine(tiny_opt, opt_tokenizer, 1.0, buffered) for buffered in (False, True)]
    runs = [train_steps(engine, batches, poison) for engine in engines]
    assert_same_steps(*runs)
    assert [engine.skipped_steps for engine in engines] == [1, 1]
    assert all(torch.equal(a, b) for a, b in zip(runs[1][0][0], runs[1][1][0]))  # step 1 left the weights


def test_other_engines_keep_deepspeeds_step(tiny_opt, opt_tokenizer):
    import deepspeed

    model = reward_model(tiny_opt, opt_tokenizer, 1, dropout=0.0)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    config = {"train_micro_batch_size_per_gpu": 4, "zero_optimization": {"stage": 0}, "steps_per_print": 10 ** 9}
    engine, *_ = deepspeed.initialize(model=model, optimizer=optimizer, config=config)  # fp32: no wrapper
    assert not use_buffered_step(engine)
