"""--share_prompt: each pair's shared start computed once gives the plain forward's loss, scores and
gradients (fp32), for every supported architecture, and `shared_lengths` never covers a position the loss
reads."""

import pytest
import torch
import transformers

from tests.fixtures import row_settings
from model.reward_model import RewardModel, loss_spans, shared_lengths
from model.shared_prompt import shared_values, supports

PAD = 1
SMALL = dict(vocab_size=96, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, max_position_embeddings=64)
CONFIGS = {
    "opt": lambda: transformers.OPTConfig(ffn_dim=64, word_embed_proj_dim=16, pad_token_id=PAD, **SMALL),
    "llama": lambda: transformers.LlamaConfig(intermediate_size=64, num_key_value_heads=2, pad_token_id=PAD, **SMALL),
    "qwen2": lambda: transformers.Qwen2Config(intermediate_size=64, num_key_value_heads=2, pad_token_id=PAD, **SMALL),
    "mistral": lambda: transformers.MistralConfig(intermediate_size=64, num_key_value_heads=2, sliding_window=None,
                                                  pad_token_id=PAD, **SMALL),
    "gpt2": lambda: transformers.GPT2Config(vocab_size=96, n_embd=32, n_layer=2, n_head=4, n_positions=64,
                                            pad_token_id=PAD),
}


def reward_model(arch, rule, attention="eager"):
    torch.manual_seed(0)
    config = CONFIGS[arch]()
    for key in ("dropout", "attention_dropout", "activation_dropout", "resid_pdrop", "embd_pdrop", "attn_pdrop"):
        if hasattr(config, key):
            setattr(config, key, 0.0)
    base = transformers.AutoModel.from_config(config, attn_implementation=attention)
    model = RewardModel(base, row_settings(PAD, 1 if arch == "opt" else 0, end_token_rule=rule))
    torch.nn.init.normal_(model.v_head.weight, std=0.5)
    return model.train()


def pairs(seed, count=5, length=24):
    """Right-padded (2B, L) rows: a shared prompt of varied length, then different answers ending in PAD
    (the end-of-conversation token, PAD = EOS); one pair identical, one differing at its second token."""
    generator = torch.Generator().manual_seed(seed)
    rows, masks = torch.full((2 * count, length), PAD), torch.zeros(2 * count, length, dtype=torch.long)
    for i in range(count):
        prompt = torch.randint(3, 96, (int(torch.randint(1, 14, (), generator=generator)),), generator=generator)
        if i == 1:
            prompt = prompt[:1]
        for row in (i, count + i):
            answer = torch.randint(3, 96, (int(torch.randint(1, 8, (), generator=generator)),), generator=generator)
            if i == 0 and row == count + i:
                answer = rows[i, len(prompt):int(masks[i].sum()) - 1]  # identical to its chosen row
            text = torch.cat([torch.tensor([2]), prompt, answer, torch.tensor([PAD])])[:length]
            rows[row, :len(text)], masks[row, :len(text)] = text, 1
    return rows, masks


@pytest.mark.parametrize("attention", ["eager", "sdpa"])
@pytest.mark.parametrize("rule", ["deepspeed_chat", "last_token"])
@pytest.mark.parametrize("arch", list(CONFIGS))
def test_shared_start_gives_the_plain_loss_scores_and_gradients(arch, rule, attention):
    model = reward_model(arch, rule, attention)
    assert supports(model.config)
    input_ids, attention_mask = pairs(seed=len(arch))
    runs = []
    for share in (False, True):
        model.zero_grad()
        out = model(input_ids, attention_mask=attention_mask, share_prompt=share)
        out["loss"].backward()
        runs.append((out["loss"].detach(), out["chosen_mean_scores"].detach(), out["rejected_mean_scores"].detach(),
                     [p.grad.clone() for p in model.parameters()]))
    (loss, chosen, rejected, grads), (s_loss, s_chosen, s_rejected, s_grads) = runs
    torch.testing.assert_close(s_loss, loss, atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(s_chosen, chosen, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(s_rejected, rejected, atol=1e-5, rtol=1e-5)
    for s_grad, grad in zip(s_grads, grads):
        torch.testing.assert_close(s_grad, grad, atol=1e-6, rtol=1e-4)


@pytest.mark.parametrize("arch", ["opt", "llama", "gpt2"])
def test_any_shorter_shared_start_gives_the_plain_values(arch):
    """A pair may be run with less than all it shares, none at all included: the values from the shared
    start on, up to the pair's longer row's end, are the plain forward's; the shared start's are 0."""
    model = reward_model(arch, "deepspeed_chat")
    input_ids, attention_mask = pairs(seed=7)
    half = input_ids.size(0) // 2
    shared = shared_lengths(input_ids, attention_mask, PAD, 1, "deepspeed_chat")
    for cut in (torch.zeros_like(shared), shared // 2, torch.where(torch.arange(half) % 2 == 0, shared, 0)):
        plain = model._values(input_ids, attention_mask)
        values = shared_values(model.rwtransformer, model.v_head, input_ids, attention_mask, cut)
        columns = torch.arange(input_ids.size(1))
        ends = (attention_mask * (columns + 1)).max(dim=1).values
        pair_end = torch.maximum(ends[:half], ends[half:]).repeat(2)
        read = (columns >= cut.repeat(2)[:, None]) & (columns < pair_end[:, None])
        torch.testing.assert_close(values[read], plain[read], atol=1e-5, rtol=1e-5)
        assert (values[~read] == 0).all()


def test_shared_lengths_stop_before_every_position_the_loss_reads():
    input_ids, attention_mask = pairs(seed=3, count=8)
    half = input_ids.size(0) // 2
    for rule in ("deepspeed_chat", "last_token"):
        shared = shared_lengths(input_ids, attention_mask, PAD, 1, rule)
        start, _, chosen_end, rejected_end = loss_spans(input_ids[:half], input_ids[half:], PAD, 1,
                                                        attention_mask[:half], attention_mask[half:], rule)
        assert (shared <= start).all() and (shared < chosen_end).all() and (shared < rejected_end).all()
        assert (input_ids[:half] == input_ids[half:])[torch.arange(input_ids.size(1)) < shared[:, None]].all()
        assert shared.sum() > 0  # and they do share something
