"""Packed scoring (model/scoring.py `score_ids`): the texts of a batch in one unpadded row give each text the
score it gets alone in a batch of one (fp32, 1e-5), for OPT, GPT-2, Llama-, Qwen2- and Mistral-style models,
both end-token rules, eager and SDPA attention; texts of very different lengths, one of a single token, and
texts holding the PAD = EOS id inside. Batches are cut by length and a token budget.

Run: python -m pytest tests/test_packed_scoring.py -q
"""
import pytest
import torch
import transformers

import model.shared_prompt as shared_prompt
from model.reward_model import RewardModel
from model.scoring import length_batches, score_all, score_ids
from tests.fixtures import row_settings
from utils.errors import UserError
from utils.spans import pads_at_beginning

ARCHS = ["opt", "gpt2", "llama", "qwen2", "mistral"]
WORDS = "Human: How do I bake bread? Assistant: Mix flour, water, salt and yeast, then bake it. Thanks!"


@pytest.fixture(scope="module")
def folders(tiny_opt, tiny_gpt2, tiny_chat):
    return {"opt": tiny_opt, "gpt2": tiny_gpt2, **{style: tiny_chat(style) for style in ARCHS[2:]}}


def reward_model(folder, rule, attention, sliding_window=None):
    """A reward model on the tiny base in `folder` with PAD = EOS (DeepSpeed-Chat's setting), a random head,
    in eval mode; `sliding_window` replaces the config's window (Mistral's)."""
    tokenizer = transformers.AutoTokenizer.from_pretrained(folder)
    tokenizer.pad_token = tokenizer.eos_token
    base = transformers.AutoModel.from_pretrained(folder, attn_implementation=attention)
    if sliding_window is not None:
        base.config.sliding_window = sliding_window
    settings = row_settings(tokenizer.pad_token_id, pads_at_beginning(tokenizer), end_token_rule=rule)
    torch.manual_seed(0)
    model = RewardModel(base, settings)
    torch.nn.init.normal_(model.v_head.weight, std=model.v_head.weight.size(1) ** -0.5)
    return model.eval(), tokenizer


def texts(tokenizer):
    """Token ids of texts from 1 to ~200 tokens, as a batch holds them: tokenised with special tokens (OPT's
    BOS), PAD = EOS inside two of them (an earlier turn's end) and at the end of one."""
    encode = lambda text: tokenizer(text)["input_ids"]  # noqa: E731
    plain = tokenizer(WORDS, add_special_tokens=False)["input_ids"]
    eos = tokenizer.eos_token_id
    return [encode(WORDS * 6),
            [plain[0]],
            encode(WORDS) + [eos],
            encode("Hi!") + [eos] + plain[:5] + [eos] + plain[:3],
            encode(WORDS * 2)[:57],
            encode("Thanks") + [eos] + [plain[2]],
            encode("No.")]


def alone(model, ids):
    """Each text scored alone in a batch of one: the plain forward, the model's end-token rule."""
    scores = []
    with torch.no_grad():
        for row in ids:
            input_ids = torch.tensor([row])
            mask = torch.ones_like(input_ids)
            values = model.forward_value(input_ids, mask, return_value_only=True)
            scores.append(values[0, model.end_positions(input_ids, mask)[0] - 1])
    return torch.stack(scores)


@pytest.fixture
def packed_calls(monkeypatch):
    """How many packed forwards ran (so a test cannot pass on the padded path alone)."""
    calls = []
    original = shared_prompt.packed_values

    def counting(*args):
        calls.append(len(args[3]))
        return original(*args)
    monkeypatch.setattr(shared_prompt, "packed_values", counting)
    return calls


@pytest.mark.parametrize("attention", ["eager", "sdpa"])
@pytest.mark.parametrize("rule", ["deepspeed_chat", "last_token"])
@pytest.mark.parametrize("arch", ARCHS)
def test_a_packed_score_is_the_score_of_the_text_alone(arch, rule, attention, folders, packed_calls):
    model, tokenizer = reward_model(folders[arch], rule, attention)
    ids = texts(tokenizer)
    assert shared_prompt.packs(model.config)
    expected = alone(model, ids)
    torch.testing.assert_close(score_ids(model, ids), expected, atol=1e-5, rtol=0)
    assert packed_calls == [len(ids)]
    torch.testing.assert_close(score_ids(model, ids, pack=False), expected, atol=1e-5, rtol=0)
    before_eos = alone(model, [ids[3][:len(tokenizer("Hi!")["input_ids"])]])[0]  # PAD = EOS inside text 3
    assert torch.isclose(expected[3], before_eos) == (rule == "deepspeed_chat")  # read there, not at the end


@pytest.mark.parametrize("attention", ["eager", "sdpa"])
def test_a_sliding_window_shorter_than_the_texts_is_applied_per_text(attention, folders, packed_calls):
    model, tokenizer = reward_model(folders["mistral"], "last_token", attention, sliding_window=8)
    ids = texts(tokenizer)
    wide, _ = reward_model(folders["mistral"], "last_token", attention)
    assert shared_prompt.packs(model.config) and not shared_prompt.supports(model.config)  # scoring only
    expected = alone(model, ids)
    assert not torch.allclose(expected[0], alone(wide, ids[:1])[0])  # the window changes the long text's score
    torch.testing.assert_close(score_ids(model, ids), expected, atol=1e-5, rtol=0)
    assert packed_calls == [len(ids)]


def test_unsupported_models_score_padded_rows_with_the_same_result(folders, packed_calls):
    model, tokenizer = reward_model(folders["gpt2"], "deepspeed_chat", "eager")
    model.config.reorder_and_upcast_attn = True  # GPT-2's upcast attention: its own kernel, not packed
    ids = texts(tokenizer)
    assert not shared_prompt.packs(model.config)
    torch.testing.assert_close(score_ids(model, ids), alone(model, ids), atol=1e-5, rtol=0)
    assert packed_calls == []


def test_scoring_runs_in_eval_mode_and_restores_the_mode(folders):
    model, tokenizer = reward_model(folders["opt"], "deepspeed_chat", "sdpa")
    ids = texts(tokenizer)
    expected = alone(model, ids)
    model.train()  # dropout 0.1 in the tiny OPT: scores would differ run to run
    torch.testing.assert_close(score_ids(model, ids), expected, atol=1e-5, rtol=0)
    assert model.training


def test_batches_are_length_sorted_and_cut_by_tokens(folders):
    # texts x longest <= 100: 60 alone (2 x 60 > 100), then 40 + 30 (2 x 40), then 30 + 10 + 5 (3 x 30)
    assert length_batches([10, 60, 30, 40, 5, 30], 100) == [[1], [3, 2], [5, 0, 4]]
    assert length_batches([300, 2], 100) == [[0], [1]]  # a text over the budget goes alone
    model, tokenizer = reward_model(folders["llama"], "last_token", "sdpa")
    ids = texts(tokenizer)
    torch.testing.assert_close(score_all(model, ids, batch_tokens=120), alone(model, ids), atol=1e-5, rtol=0)


def test_a_text_with_no_token_to_score_is_refused_by_what_is_wrong(folders):
    model, tokenizer = reward_model(folders["gpt2"], "deepspeed_chat", "sdpa")
    with pytest.raises(UserError, match="1 of 2 texts .* starts with the PAD id 0"):
        score_ids(model, [[5, 6], [tokenizer.eos_token_id, 7]])
    with pytest.raises(UserError, match="it is empty"):
        score_ids(model, [[5, 6], []])
