"""The end-token rules: DeepSpeed-Chat's (before the (n+1)-th PAD, PAD = EOS) and last_token (the last
attended token), which `auto` picks when a chat template is in use or EOS occurs inside a text.

Run: .venv/bin/python -m pytest tests/test_chat_end_token.py -q
"""
import json
import os

import pytest
import torch
import torch.nn.functional as F

from data import build_pair_datasets
from data.chat import ChatRenderer
from data.pairs import build_info
from model.create import distinct_pad_token, load_tokenizer, resolve_num_padding
from model.io import read_reward_settings
from model.reward_model import LAST_TOKEN, end_indices, loss_spans, pairwise_loss
from tests.fixtures import learnable_pairs, reward_model, write_jsonl
from utils.spans import pads_at_beginning

EOT = "<|endoftext|>"
TURNS = [{"role": "user", "content": "Hi, can you help me?"}, {"role": "assistant", "content": "Sure."},
         {"role": "user", "content": "How do I bake bread?"}]


@pytest.fixture(scope="module")
def llama(tiny_chat):
    return tiny_chat("llama")


def conversation_rows(count):
    return [{"chosen": TURNS + [{"role": "assistant", "content": f"Mix flour and water {i}, thanks!"}],
             "rejected": TURNS + [{"role": "assistant", "content": f"No {i}. Go away."}]} for i in range(count)]


def test_pad_eos_would_read_the_first_turn_the_project_reads_the_last_answer(llama, tmp_path):
    tokenizer = load_tokenizer(llama)  # DeepSpeed-Chat's convention: PAD = EOS = <|eot_id|>
    write_jsonl(tmp_path / "train.jsonl", conversation_rows(8))
    write_jsonl(tmp_path / "test.jsonl", conversation_rows(4))
    train, _ = build_pair_datasets([str(tmp_path)], "0,1,0", 1234, tokenizer, 256, str(tmp_path / "cache"), EOT, 0,
                                   end_token_rule="auto")
    info = build_info(train)
    assert info["end_token_rule"] == LAST_TOKEN and "chat template" in info["reason"]
    assert info["end_of_conversation_token"] == ""  # the template's own end of turn ends the text

    ids = train[0]["chosen_input_ids"]
    eot_id = tokenizer.eos_token_id
    first_turn_end = ids.index(eot_id)  # DeepSpeed-Chat: the score before the first PAD (= EOS)
    assert int(end_indices(torch.tensor([ids]), eot_id, 0)[0]) == first_turn_end
    assert tokenizer.decode(ids[:first_turn_end]).endswith("Hi, can you help me?")

    tokenizer = load_tokenizer(llama, pad_token=distinct_pad_token(tokenizer)[0])
    torch.manual_seed(0)
    model = reward_model(llama, tokenizer, 0, end_token_rule=LAST_TOKEN).eval()
    batch = {"input_ids": torch.tensor([ids + [tokenizer.pad_token_id] * 3, ids[:-4] + [tokenizer.pad_token_id] * 7]),
             "attention_mask": torch.tensor([[1] * len(ids) + [0] * 3, [1] * (len(ids) - 4) + [0] * 7])}
    with torch.no_grad():
        out = model(**batch)
        values = model.forward_value(**batch, return_value_only=True)
    last = len(ids) - 1  # the <|eot_id|> closing the last assistant answer
    assert ids[last] == eot_id and tokenizer.decode(ids[:last]).endswith(", thanks!")
    assert last > first_turn_end + 10
    assert out["chosen_mean_scores"][0] == values[0, last]
    assert out["rejected_mean_scores"][0] == values[1, len(ids) - 5]
    assert values[0, last] != values[0, first_turn_end - 1]


def test_loss_spans_under_both_rules_on_a_worked_example():
    # PAD = EOS = 2, a text with EOS inside at position 2; row lengths 6 and 4 (right padding).
    chosen = torch.tensor([[5, 6, 2, 7, 8, 2, 2]])
    rejected = torch.tensor([[5, 6, 2, 9, 2, 2, 2]])
    chosen_mask, rejected_mask = torch.tensor([[1] * 6 + [0]]), torch.tensor([[1] * 5 + [0] * 2])
    assert [t.item() for t in loss_spans(chosen, rejected, 2, 0)] == [3, 3, 2, 2]  # empty span: 0/0
    spans = loss_spans(chosen, rejected, 2, 0, chosen_mask, rejected_mask, LAST_TOKEN)
    assert [t.item() for t in spans] == [3, 6, 6, 5]  # differ at 3; read at 5 and 4, the final EOS


def reference_last_token_loss(chosen, rejected, chosen_mask, rejected_mask, r_chosen, r_rejected):
    """The per-pair loop with ends at the last attended token (DeepSpeed-Chat's loop otherwise)."""
    losses, c_scores, r_scores = [], [], []
    for i in range(chosen.size(0)):
        c_end, r_end = int(chosen_mask[i].sum()), int(rejected_mask[i].sum())
        differ = (chosen[i] != rejected[i]).nonzero()
        if len(differ) == 0:
            start, end, r_end = chosen.size(1) - 1, chosen.size(1), c_end
        else:
            start, end = int(differ[0]), max(c_end, r_end)
        losses.append(-F.logsigmoid(r_chosen[i, start:end] - r_rejected[i, start:end]).mean())
        c_scores.append(r_chosen[i, c_end - 1])
        r_scores.append(r_rejected[i, r_end - 1])
    return torch.stack(losses).mean(), torch.stack(c_scores), torch.stack(r_scores)


def test_last_token_loss_matches_a_per_pair_loop():
    torch.manual_seed(0)
    lengths = [(5, 7), (8, 3), (6, 6), (4, 4)]  # one side longer either way, no padding, identical pair
    chosen, rejected = torch.full((4, 8), 0), torch.full((4, 8), 0)
    chosen_mask, rejected_mask = torch.zeros(4, 8, dtype=torch.long), torch.zeros(4, 8, dtype=torch.long)
    for i, (c, r) in enumerate(lengths):
        chosen[i, :c], rejected[i, :r] = torch.randint(3, 9, (c,)), torch.randint(3, 9, (r,))
        chosen[i, 0] = rejected[i, 0] = 1
        chosen_mask[i, :c], rejected_mask[i, :r] = 1, 1
    rejected[3], rejected_mask[3] = chosen[3], chosen_mask[3]
    chosen[1, 4] = 0  # the PAD id inside a text does not end it under last_token
    r_chosen, r_rejected = torch.randn(4, 8), torch.randn(4, 8)
    got = pairwise_loss(r_chosen, r_rejected, loss_spans(chosen, rejected, 0, 0, chosen_mask, rejected_mask, LAST_TOKEN))
    expected = reference_last_token_loss(chosen, rejected, chosen_mask, rejected_mask, r_chosen, r_rejected)
    for a, b in zip(got, expected):
        torch.testing.assert_close(a, b, atol=1e-6, rtol=0)


def build(tokenizer, tmp_path, rows, rule="auto", n=1):
    write_jsonl(tmp_path / "train.jsonl", rows)
    write_jsonl(tmp_path / "test.jsonl", rows)
    train, _ = build_pair_datasets([str(tmp_path)], "0,1,0", 1234, tokenizer, 64, str(tmp_path / "cache"), EOT, n,
                                   end_token_rule=rule)
    return train, build_info(train)


def test_auto_keeps_deepspeed_chats_rule_for_its_data(opt_tokenizer, tmp_path):
    train, info = build(opt_tokenizer, tmp_path, learnable_pairs(20, seed=1))
    assert info["end_token_rule"] == "deepspeed_chat" and info["end_of_conversation_token"] == EOT
    assert "occurs only where DeepSpeed-Chat's rule expects it" in info["reason"]


def test_auto_picks_last_token_when_eos_is_inside_a_text(opt_tokenizer, tmp_path, capsys):
    rows = [dict(r, prompt=" Human: hi</s> Assistant: hello</s>" + r["prompt"]) for r in learnable_pairs(20, seed=1)]
    train, info = build(opt_tokenizer, tmp_path, rows)
    assert info["end_token_rule"] == LAST_TOKEN and len(train) == 20  # none scored before it differs
    assert "PAD = EOS '</s>' occurs inside the texts of 40 of 40 pairs" in info["reason"]
    assert "data: end-token rule last_token: the score is read at the last attended token" in capsys.readouterr().out


def test_gpt2_trailing_end_of_conversation_eos_is_not_inside(tiny_gpt2, tmp_path):
    tokenizer = load_tokenizer(tiny_gpt2)  # EOS = PAD = <|endoftext|> = EOT
    _, info = build(tokenizer, tmp_path, learnable_pairs(20, seed=1), n=0)
    assert info["end_token_rule"] == "deepspeed_chat"


def test_num_padding_at_beginning_auto_and_a_contradicting_value(opt_tokenizer, llama, tiny_gpt2):
    gpt2 = load_tokenizer(tiny_gpt2)
    assert [pads_at_beginning(t) for t in (opt_tokenizer, gpt2, load_tokenizer(llama))] == [1, 0, 0]
    (auto, note), (typed, warning) = resolve_num_padding("auto", opt_tokenizer), resolve_num_padding(0, opt_tokenizer)
    assert auto == 1 and typed == 0
    assert "--num_padding_at_beginning auto -> 1" in note
    assert warning == ("warning: --num_padding_at_beginning 0 contradicts the tokenizer: it puts 1 PAD-equal token(s) "
                       "before every text (PAD '</s>', BOS '</s>'). Use --num_padding_at_beginning 1, or leave it at auto.")


@pytest.mark.parametrize("style, pad, added", [("llama", "<|pad|>", True), ("qwen2", "<|endoftext|>", False),
                                               ("mistral", "<|pad|>", True)])
def test_a_pad_distinct_from_eos(style, pad, added, tiny_chat):
    tokenizer = load_tokenizer(tiny_chat(style))
    size = len(tokenizer)
    assert tokenizer.pad_token == tokenizer.eos_token
    token, note = distinct_pad_token(tokenizer)
    tokenizer = load_tokenizer(tiny_chat(style), pad_token=token)
    assert tokenizer.pad_token == pad and tokenizer.pad_token_id not in (tokenizer.eos_token_id, tokenizer.bos_token_id)
    assert len(tokenizer) == size + added and ("added" in note) == added
    text = ChatRenderer(tokenizer)(TURNS + [{"role": "assistant", "content": "Sure, here."}])
    assert tokenizer.pad_token_id not in tokenizer(text)["input_ids"]


def test_models_saved_before_the_rule_existed_read_as_deepspeed_chat(tmp_path):
    settings = {"num_padding_at_beginning": 1, "end_of_conversation_token": EOT, "pad_token_id": 2}
    (tmp_path / "config.json").write_text(json.dumps({"reward_model": settings}))
    read, stats = read_reward_settings(str(tmp_path))
    assert (read.end_token_rule, read.num_padding_at_beginning, read.pad_token_id, stats) == ("deepspeed_chat", 1, 2, {})
    assert os.listdir(tmp_path) == ["config.json"]
