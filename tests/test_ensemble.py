"""Reward ensembles (--num_heads K): the multi-output value head, how its outputs combine into one reward, each
head's seeded init, and that one head stays DeepSpeed-Chat's head bit for bit.

Run: python -m pytest tests/test_ensemble.py -q
"""
import json

import pytest
import torch
import transformers

from main import parse_args
from model.reward_model import RewardModel, combine, init_heads, shared_lengths
from tests.fixtures import row_settings
from utils import validate
from utils.settings import HeadOptions, Settings

PAD = 1


def tiny_base(seed=0):
    """A 2-layer OPT base (width 16 at the head: word_embed_proj_dim), no dropout, built from torch's RNG."""
    torch.manual_seed(seed)
    config = transformers.OPTConfig(vocab_size=96, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                                    max_position_embeddings=64, ffn_dim=64, word_embed_proj_dim=16,
                                    pad_token_id=PAD, dropout=0.0, attention_dropout=0.0)
    return transformers.AutoModel.from_config(config, attn_implementation="eager")


def ensemble(num_heads, seed=0, **head):
    return RewardModel(tiny_base(), row_settings(PAD, head=HeadOptions(num_heads=num_heads, seed=seed, **head)))


def rows(count=4, length=20, seed=3):
    """(2B, L) right-padded rows (BOS 2, a shared prompt, different answers, PAD at the end) and their mask."""
    generator = torch.Generator().manual_seed(seed)
    ids, mask = torch.full((2 * count, length), PAD), torch.zeros(2 * count, length, dtype=torch.long)
    for i in range(count):
        prompt = torch.randint(3, 96, (int(torch.randint(1, 8, (), generator=generator)),), generator=generator)
        for row in (i, count + i):
            answer = torch.randint(3, 96, (int(torch.randint(1, 8, (), generator=generator)),), generator=generator)
            text = torch.cat([torch.tensor([2]), prompt, answer, torch.tensor([PAD])])
            ids[row, :len(text)], mask[row, :len(text)] = text, 1
    return ids, mask


def test_one_head_is_deepspeed_chats_head_bit_for_bit():
    """Same shape, same draw from torch's global RNG, same values as nn.Linear(width, 1) after the base model."""
    model = ensemble(1)
    base = tiny_base()
    expected = torch.nn.Linear(16, 1, bias=False)
    assert torch.equal(model.v_head.weight, expected.weight)
    ids, mask = rows()
    with torch.no_grad():
        plain = expected(base(ids, attention_mask=mask)[0]).squeeze(-1)
        assert torch.equal(model._values(ids, mask), plain)
        assert torch.equal(model.head_outputs(ids, mask)[..., 0], plain)


def test_each_head_has_its_own_seeded_init_whatever_the_number_of_heads():
    three, five, other_seed = ensemble(3, seed=7), ensemble(5, seed=7), ensemble(3, seed=8)
    assert three.v_head.weight.shape == (3, 16)
    assert torch.equal(three.v_head.weight, five.v_head.weight[:3])
    assert not torch.equal(three.v_head.weight, other_seed.v_head.weight)
    assert len({tuple(row.tolist()) for row in five.v_head.weight}) == 5
    bound = 16 ** -0.5
    assert five.v_head.weight.abs().max() <= bound and five.v_head.weight.std() > bound / 3
    weight = torch.empty(2, 16)
    init_heads(weight, 7)
    assert torch.equal(weight, three.v_head.weight[:2])


def test_combine_mean_of_heads_weights_of_attributes_and_one_output():
    outputs = torch.tensor([[[1.0, 2.0, 6.0]], [[0.0, -3.0, 0.0]]])  # (2, 1, 3)
    assert torch.equal(combine(outputs, HeadOptions(num_heads=3)), torch.tensor([[3.0], [-1.0]]))
    regression = HeadOptions(objective="regression", attributes=("a", "b", "c"), attribute_weights=(1.0, 0.5, -1.0))
    assert regression.outputs == 3
    assert torch.equal(combine(outputs, regression), torch.tensor([[-4.0], [-1.5]]))
    assert torch.equal(combine(outputs[..., :1]), outputs[..., 0])


def test_reward_is_the_combined_heads_on_the_plain_and_shared_prompt_paths():
    model = ensemble(3, seed=1)
    ids, mask = rows()
    with torch.no_grad():
        heads = model.head_outputs(ids, mask)
        assert heads.shape == (*ids.shape, 3)
        torch.testing.assert_close(model._values(ids, mask), heads.mean(-1), rtol=0, atol=1e-7)
        shared = shared_lengths(ids, mask, PAD, 1, "deepspeed_chat")
        shared_heads = model.head_outputs(ids, mask, shared=shared)
        shared_reward = model._values(ids, mask, shared=shared)
    half = ids.size(0) // 2
    ends = model.end_positions(ids, mask)
    read = (torch.arange(ids.size(1)) >= shared.repeat(2)[:, None]) & (torch.arange(ids.size(1)) < ends[:, None])
    torch.testing.assert_close(shared_heads[read], heads[read], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(shared_reward[read], heads.mean(-1)[read], atol=1e-5, rtol=1e-5)
    assert half and read.any()


def test_head_options_survive_the_saved_json():
    settings = row_settings(PAD, head=HeadOptions(num_heads=4, bootstrap=True, conservative_lambda=0.5, seed=9,
                                                  attributes=("a", "b"), attribute_weights=(0.3, 0.7)))
    assert Settings.from_dict(json.loads(json.dumps(settings.to_dict()))) == settings
    assert Settings.from_dict({"model_name_or_path": "m"}).head == HeadOptions()  # a model saved before heads


@pytest.mark.parametrize("flags, message", [
    (["--num_heads", "0"], "--num_heads must be an integer >= 1"),
    (["--head_bootstrap"], "--head_bootstrap needs an ensemble: add --num_heads 2"),
    (["--num_heads", "1", "--conservative_lambda", "1"], "--conservative_lambda needs an ensemble"),
    (["--num_heads", "3", "--conservative_lambda", "-1"], "--conservative_lambda must be a finite number >= 0"),
])
def test_head_flags_are_checked_before_any_model_loads(tmp_path, flags, message):
    args, _ = parse_args(["--output_dir", str(tmp_path / "out"), *flags])
    assert any(message in problem for problem in validate.flag_problems(args))


def test_valid_head_flags_pass():
    args, _ = parse_args(["--output_dir", "/tmp/unused", "--num_heads", "3", "--head_bootstrap",
                          "--conservative_lambda", "1.5"])
    assert validate.flag_problems(args) == []
