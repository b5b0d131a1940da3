"""Reward maths against DeepSpeed-Chat's per-pair loop. Run: python -m pytest tests/test_reward_model.py -q"""
import pytest
import torch

from model.reward_model import RewardModel, end_indices, loss_spans, pairwise_loss
from training.cpu_speed import CPU_EAGER_MAX_LEN, CPU_EAGER_MAX_TOKENS, cpu_training_speedups
from tests.fixtures import row_settings
from tests.reference import reference_end_scores, reference_pairwise_loss
from utils.settings import LossOptions

PAD = 2  # OPT: pad = eos = bos = </s>


def row(tokens, length, bos):
    ids = ([PAD] if bos else []) + tokens
    return ids + [PAD] * (length - len(ids))


def batch(pairs, length, bos):
    chosen = [row(c, length, bos) for c, _ in pairs]
    rejected = [row(r, length, bos) for _, r in pairs]
    return torch.tensor(chosen + rejected)


EDGE_CASES = {
    "identical": [([5, 6, 7], [5, 6, 7])],
    "no_padding": [([5, 6, 7, 8, 9, 10, 11], [5, 6, 9, 8, 9, 10, 12])],
    "truncated_one_side": [([5, 6, 7, 8, 9, 10, 11], [5, 6, 8])],
    "rejected_longer": [([5, 9], [5, 6, 7, 8, 9])],
    "diverge_at_last_real_token": [([5, 6, 7, 8], [5, 6, 7, 9])],
    "mixed": [([5, 6, 7], [5, 6, 7]), ([5, 6], [5, 7, 7, 7]), ([5, 6, 7, 8, 9, 10, 11], [5, 3])],
}


@pytest.mark.parametrize("bos", [True, False], ids=["n1_opt_bos", "n0"])
@pytest.mark.parametrize("case", EDGE_CASES)
@pytest.mark.parametrize("fp32", [False, True])
def test_batched_loss_matches_per_pair_loop(case, bos, fp32):
    length = 8
    input_ids = batch(EDGE_CASES[case], length, bos)
    torch.manual_seed(0)
    rewards = torch.randn(input_ids.shape, dtype=torch.float32)
    n = 1 if bos else 0
    expected = reference_pairwise_loss(input_ids, rewards, PAD, n, fp32)
    pairs = input_ids.size(0) // 2
    spans = loss_spans(input_ids[:pairs], input_ids[pairs:], PAD, n)
    got = pairwise_loss(rewards[:pairs], rewards[pairs:], spans, LossOptions(compute_fp32_loss=fp32))
    for g, e in zip(got, expected):
        torch.testing.assert_close(g, e, atol=1e-6, rtol=0)


def test_end_index_skips_opt_bos():
    ids = torch.tensor([[PAD, 5, 6, PAD, PAD], [PAD, 5, 6, 7, 8]])
    assert end_indices(ids, PAD, 1).tolist() == [3, 5]
    assert end_indices(ids, PAD, 0).tolist() == [0, 0]


def test_loss_worked_by_hand():
    # one pair, n=0: chosen [5, 6, PAD], rejected [5, 7, PAD]; span = [1, 2) -> one position
    ids = torch.tensor([[5, 6, PAD], [5, 7, PAD]])
    rewards = torch.tensor([[0.0, 2.0, 9.0], [0.0, 1.0, -9.0]])
    loss, chosen, rejected = pairwise_loss(rewards[:1], rewards[1:], loss_spans(ids[:1], ids[1:], PAD, 0))
    assert loss.item() == pytest.approx(-torch.nn.functional.logsigmoid(torch.tensor(1.0)).item())
    assert chosen.tolist() == [2.0] and rejected.tolist() == [1.0]


@pytest.fixture(scope="module")
def tiny_reward_model(tiny_opt, opt_tokenizer):
    from transformers import AutoModel
    torch.manual_seed(0)
    return RewardModel(AutoModel.from_pretrained(tiny_opt), row_settings(opt_tokenizer.pad_token_id)).eval()


@pytest.mark.parametrize("case", EDGE_CASES)
def test_model_forward_matches_loop_on_its_own_values(tiny_reward_model, case):
    input_ids = batch(EDGE_CASES[case], 8, bos=True)
    attention_mask = (input_ids != PAD).long()
    attention_mask[:, 0] = 1
    with torch.no_grad():
        out = tiny_reward_model(input_ids, attention_mask=attention_mask, use_cache=False)  # as DeepSpeed-Chat calls it
        values = tiny_reward_model.forward_value(input_ids, attention_mask, return_value_only=True)
    loss, chosen, rejected = reference_pairwise_loss(input_ids, values, PAD, 1)
    torch.testing.assert_close(out["loss"], loss, atol=1e-6, rtol=0)
    torch.testing.assert_close(out["chosen_mean_scores"], chosen, atol=1e-6, rtol=0)
    torch.testing.assert_close(out["rejected_mean_scores"], rejected, atol=1e-6, rtol=0)


def test_forward_value_end_scores_match_loop(tiny_reward_model):
    input_ids = batch([([5, 6, 7, 8, 9], [5, 6]), ([5, 6, 7, 8, 9, 10, 11], [5])], 8, bos=True)
    with torch.no_grad():
        out = tiny_reward_model.forward_value(input_ids, (input_ids != PAD).long(), prompt_length=2)
    torch.testing.assert_close(out["chosen_end_scores"],
                               reference_end_scores(input_ids, out["values"], PAD, 2), atol=1e-6, rtol=0)


def test_value_head_reads_opt_projection_width(tiny_reward_model):
    config = tiny_reward_model.config
    assert config.word_embed_proj_dim != config.hidden_size
    assert tiny_reward_model.v_head.weight.shape == (1, config.word_embed_proj_dim)
    assert tiny_reward_model.v_head.bias is None


@pytest.mark.parametrize("rows, length, kernel_used", [
    (4, 12, "eager"), (4, CPU_EAGER_MAX_LEN + 8, "eager"),  # long rows, but few tokens in all
    (16, CPU_EAGER_MAX_TOKENS // 16 + 8, "sdpa")])
def test_cpu_attention_switch_keeps_values_and_gradients(tiny_reward_model, rows, length, kernel_used, monkeypatch):
    """Eager attention for short rows or small batches, SDPA otherwise: same values and gradients as SDPA
    alone; the model's own kernel is back once the forward is done."""
    import contextlib
    monkeypatch.setattr("training.cpu_speed.cpu_dropout", contextlib.nullcontext)  # torch's masks in both runs
    torch.manual_seed(1)
    input_ids = torch.randint(3, 100, (rows, length))
    attention_mask = torch.ones_like(input_ids)
    attention_mask[1, length // 2:] = 0  # right padding, as the collator makes
    input_ids[attention_mask == 0] = PAD
    model = tiny_reward_model.train()
    model.rwtransformer.set_attn_implementation("sdpa")
    kernel = lambda: model.rwtransformer.config._attn_implementation  # noqa: E731
    try:
        runs = {}
        for enabled in (True, False):
            model.zero_grad()
            with torch.random.fork_rng():  # the same dropout masks in both runs
                with cpu_training_speedups(model, input_ids, dropout=enabled, attention=enabled):
                    used = kernel()
                    values = model.forward_value(input_ids, attention_mask, return_value_only=True)
                values.sum().backward()
            runs[enabled] = (used, values.detach(), model.v_head.weight.grad.clone())
            assert kernel() == "sdpa"
        assert runs[True][0] == kernel_used
        assert runs[False][0] == "sdpa"
        torch.testing.assert_close(runs[True][1][attention_mask.bool()], runs[False][1][attention_mask.bool()])
        torch.testing.assert_close(runs[True][2], runs[False][2])
    finally:
        model.eval()
