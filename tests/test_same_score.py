"""One conversation, one score: training's rows, evaluate.py --score and benchmark.py read the same tokens
(data/inputs.py) and give the same reward, for a chat model without BOS in its template and for OPT's
DeepSpeed-Chat conventions.

Run: python -m pytest tests/test_same_score.py -q
"""
import json

import pytest
import torch

from data import PairCollator, build_pair_datasets
from evaluation_scripts.benchmark import main as benchmark_main
from evaluation_scripts.evaluate import main as evaluate_main
from model.create import build_reward_model, build_tokenizer, distinct_pad_token, load_reward_model, load_tokenizer
from model.io import save_hf_model
from tests.fixtures import write_jsonl
from utils.settings import Settings
from utils.spans import END_OF_CONVERSATION, LAST_TOKEN, pads_at_beginning

PAIRS = [("How do I bake bread?", "Mix flour, water and yeast, then bake it.", "No."),
         ("Tell me a joke.", "Why did the chicken cross the road? To get to the other side!", "I would rather not."),
         ("Hi!", "Hello! How can I help?", "Go away, this is a long and rude answer.")]


# A template without BOS for OPT, whose tokenizer adds its `</s>` BOS (as with main.py --chat_template FILE)
OPT_TEMPLATE = "{% for m in messages %}<|{{ m['role'] }}|> {{ m['content'] }}</s>{% endfor %}"


def reward_model_folder(base, folder, chat, template=None):
    """A random-weight reward model on `base`, saved as main.py saves one: the last_token rule with a PAD of
    its own for a chat model (`template`: its chat template, else the tokenizer's own), DeepSpeed-Chat's rule
    with PAD = EOS otherwise."""
    tokenizer = load_tokenizer(base)
    settings = Settings(model_name_or_path=base, max_seq_len=128, num_padding_at_beginning=pads_at_beginning(tokenizer),
                        pad_token_id=tokenizer.pad_token_id, chat_template=template)
    if chat:
        pad = distinct_pad_token(tokenizer)[0]
        tokenizer = load_tokenizer(base, chat_template=template, pad_token=pad)
        settings = settings.replace(end_token_rule=LAST_TOKEN, pad_token=pad, pad_token_id=tokenizer.pad_token_id,
                                    num_padding_at_beginning=pads_at_beginning(tokenizer), end_of_conversation_token="")
    torch.manual_seed(0)
    model = build_reward_model(settings, tokenizer).eval()
    torch.nn.init.normal_(model.v_head.weight, std=model.v_head.weight.size(1) ** -0.5)
    save_hf_model(model, tokenizer, str(folder), zero_stage=0)
    return str(folder)


def training_scores(model_dir, data_dir, cache):
    """(chosen, rejected) scores of each pair as training reads it: its tokenised rows, its forward."""
    model = load_reward_model(model_dir)
    tokenizer = build_tokenizer(model.settings, source=model_dir)
    _, pairs = build_pair_datasets([data_dir], "0,10,0", 1234, tokenizer, model.settings.max_seq_len, cache,
                                   END_OF_CONVERSATION, model.num_padding_at_beginning,
                                   end_token_rule=model.end_token_rule)
    collate = PairCollator(tokenizer.pad_token_id)
    with torch.no_grad():
        outs = [model(**collate([pairs[i]])) for i in range(len(pairs))]
    return sorted((float(o["chosen_mean_scores"][0]), float(o["rejected_mean_scores"][0])) for o in outs)


def assert_same(pairs, expected):
    torch.testing.assert_close(torch.tensor(pairs), torch.tensor(expected), rtol=0, atol=1e-5)


@pytest.mark.parametrize("style", ["llama", "opt_chat_template", "opt"])
def test_every_entry_point_gives_one_score(style, tiny_chat, tiny_opt, tmp_path):
    chat = style != "opt"
    base = tiny_chat(style) if style == "llama" else tiny_opt
    model_dir = reward_model_folder(base, tmp_path / "model", chat, OPT_TEMPLATE if style.endswith("template") else None)
    data = tmp_path / "data"
    data.mkdir()
    if chat:  # conversations: the chat template renders them; no end-of-conversation text
        rows = [{"prompt": [{"role": "user", "content": p}], "chosen": [{"role": "assistant", "content": c}],
                 "rejected": [{"role": "assistant", "content": r}]} for p, c, r in PAIRS]
    else:  # DeepSpeed-Chat's text layout
        rows = [{"prompt": f" Human: {p} Assistant:", "chosen": " " + c, "rejected": " " + r} for p, c, r in PAIRS]
    write_jsonl(data / "train.jsonl", rows)
    write_jsonl(data / "test.jsonl", rows)
    expected = training_scores(model_dir, str(data), str(tmp_path / "cache"))

    if chat:
        score_rows = [{"prompt": p, "completion": answer} for p, c, r in PAIRS for answer in (c, r)]
    else:
        score_rows = [{"prompt": row["prompt"], "answer": row[side]} for row in rows for side in ("chosen", "rejected")]
    write_jsonl(tmp_path / "score.jsonl", score_rows)
    evaluate_main([model_dir, "--score", str(tmp_path / "score.jsonl"), "--score_output", str(tmp_path / "s.jsonl")])
    rewards = [json.loads(line)["reward"] for line in open(tmp_path / "s.jsonl")]
    assert_same(sorted(zip(rewards[0::2], rewards[1::2])), expected)

    write_jsonl(tmp_path / "pairs.jsonl", [{"prompt": p, "chosen": c, "rejected": r} for p, c, r in PAIRS])
    benchmark_main([model_dir, "--benchmark", "pairs", "--data", str(tmp_path / "pairs.jsonl"), "--no_plots",
                    "--prompt_format", "chat_template" if chat else "human_assistant"])
    items = [json.loads(line) for line in open(f"{model_dir}/benchmarks/pairs_scores.jsonl")]
    scored = sorted((item["chosen_scores"][0], item["rejected_scores"][0]) for item in items)
    assert_same(scored, expected)
