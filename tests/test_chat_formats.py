"""Preference layouts found from the columns: TRL's standard and conversational formats (explicit and
implicit prompt), UltraFeedback's rated completions, completions with scores or ranks; and one clear
error, naming the file and row, for every kind of bad row, with nothing written.

Run: .venv/bin/python -m pytest tests/test_chat_formats.py -q
"""
import os

import datasets
import pytest

from data import build_pair_datasets
from data.formats import ReadOptions
from data.sources import load_source
from model.create import load_tokenizer
from tests.fixtures import write_rows as write
from utils.errors import UserError
from utils.spans import pads_at_beginning

EOT = "<|endoftext|>"


def user(text):
    return {"role": "user", "content": text}


def assistant(text):
    return {"role": "assistant", "content": text}


def conversations(count):
    """(prompt messages, chosen answer, rejected answer) of `count` pairs, two user turns each."""
    return [([user(f"Question {i}?"), assistant("Let me think."), user("Well?")],
             assistant(f"Great answer {i}, thanks!"), assistant(f"Awful {i}.")) for i in range(count)]


@pytest.fixture(scope="module")
def llama(tiny_chat):
    return load_tokenizer(tiny_chat("llama"))


def folder(tmp_path, name, rows, suffix="jsonl"):
    os.makedirs(tmp_path / name)
    write(tmp_path / name / f"train.{suffix}", rows)
    write(tmp_path / name / f"test.{suffix}", rows[:4])
    return str(tmp_path / name)


def build(tokenizer, path, tmp_path, **kwargs):
    """All rows of `path` as train pairs (split 0,1,0), as main.py builds them by default."""
    train, _ = build_pair_datasets([path], "0,1,0", 1234, tokenizer, 256, str(tmp_path / "cache"), EOT,
                                   pads_at_beginning(tokenizer), end_token_rule="auto", **kwargs)
    return train


def chat_ids(tokenizer, messages):
    ids = tokenizer.apply_chat_template(messages, tokenize=True)  # the template's own BOS, no second one
    return list(ids["input_ids"] if hasattr(ids, "keys") else ids)


def as_set(train):
    return {(tuple(c), tuple(r)) for c, r in zip(train["chosen_input_ids"], train["rejected_input_ids"])}


def expected(tokenizer, items):
    return {(tuple(chat_ids(tokenizer, p + [c])), tuple(chat_ids(tokenizer, p + [r]))) for p, c, r in items}


# ---------------------------------------------------------------- TRL's formats, read as they are

@pytest.mark.parametrize("suffix", ["jsonl", "parquet"])
def test_conversational_explicit_and_implicit_prompt(llama, tmp_path, suffix):
    items = conversations(10)
    explicit = [{"prompt": p, "chosen": [c], "rejected": [r]} for p, c, r in items]
    implicit = [{"chosen": p + [c], "rejected": p + [r]} for p, c, r in items]
    stored_whole = [{"prompt": p, "chosen": p + [c], "rejected": p + [r]} for p, c, r in items]  # as some sets do
    for name, rows in (("explicit", explicit), ("implicit", implicit), ("whole", stored_whole)):
        path = folder(tmp_path, name, rows, suffix)
        assert load_source(path).adapter.layout == ("conversations, implicit prompt" if name == "implicit"
                                                    else "conversations, explicit prompt")
        assert as_set(build(llama, path, tmp_path)) == expected(llama, items), name


def test_standard_explicit_and_implicit_prompt_keep_their_texts(opt_tokenizer, tmp_path):
    rows = [{"prompt": "The sky is", "chosen": f" blue {i}.", "rejected": f" green {i}."} for i in range(8)]
    implicit = [{"chosen": r["prompt"] + r["chosen"], "rejected": r["prompt"] + r["rejected"]} for r in rows]
    want = {(tuple(opt_tokenizer(r["prompt"] + r["chosen"] + EOT)["input_ids"]),
             tuple(opt_tokenizer(r["prompt"] + r["rejected"] + EOT)["input_ids"])) for r in rows}
    for name, items in (("explicit", rows), ("implicit", implicit)):
        train = build(opt_tokenizer, folder(tmp_path, name, items), tmp_path)
        assert as_set(train) == want, name


def test_a_hub_dataset_in_a_conversational_layout(llama, tmp_path, monkeypatch):
    items = conversations(6)
    rows = [{"chosen": p + [c], "rejected": p + [r], "score_chosen": 8.0} for p, c, r in items]
    monkeypatch.setattr("data.sources._check_hub_reachable", lambda name: None)
    monkeypatch.setattr(datasets, "load_dataset", lambda name: datasets.DatasetDict(
        {"train": datasets.Dataset.from_list(rows), "test": datasets.Dataset.from_list(rows[:2])}))
    source = load_source("someone/chat-prefs")
    assert source.adapter.layout == "conversations, implicit prompt" and len(source.eval) == 2
    assert as_set(build(llama, "someone/chat-prefs", tmp_path)) == expected(llama, items)


# ---------------------------------------------------------------- rated completions

def ultrafeedback_row(i, scores, fine=None):
    """One row in openbmb/UltraFeedback's layout (the fields it has; texts shortened)."""
    return {"source": "evol_instruct", "instruction": f"Explain thing {i}.", "models": list("abcd")[:len(scores)],
            "completions": [{"model": m, "principle": "helpfulness", "custom_system_prompt": "Be helpful.",
                             "response": f"Answer {k} to {i}.", "critique": "Fine.", "overall_score": s,
                             "fine-grained_score": (fine or scores)[k],
                             "annotations": {"helpfulness": {"Rating": "4", "Rationale": "ok"}}}
                            for k, (m, s) in enumerate(zip("abcd", scores))],
            "correct_answers": ["x"], "incorrect_answers": ["y"]}


def rated(tokenizer, prompt, answer):
    return tuple(chat_ids(tokenizer, [user(prompt), assistant(answer)]))


def test_ultrafeedback_best_vs_rest_all_ties_and_margins(llama, tmp_path, capsys):
    rows = [ultrafeedback_row(i, [7.0, 9.0, 7.0, 3.5], fine=[4.0, 2.5, 4.0, 1.0]) for i in range(6)]
    path = folder(tmp_path, "uf", rows)
    assert load_source(path).adapter.layout == "rated completions (UltraFeedback)"
    train = build(llama, path, tmp_path)
    assert len(train) == 18  # completion 1 (9.0) against each of the other three
    pair = {(tuple(c), tuple(r)): m for c, r, m in zip(train["chosen_input_ids"], train["rejected_input_ids"],
                                                       train["margin"])}
    best, worst = (rated(llama, "Explain thing 0.", f"Answer {k} to 0.") for k in (1, 3))
    assert pair[best, worst] == 5.5  # the rating difference: --use_margin uses it
    train = build(llama, path, tmp_path, read_options=ReadOptions("all"))
    assert len(train) == 6 * 5  # 6 pairs of 4 completions, one tie (7.0 and 7.0) dropped
    assert "(train): 6 rows in layout 'rated completions (UltraFeedback)' gave 30 pairs; 6 tied ratings dropped" \
        in capsys.readouterr().out
    fine = build(llama, path, tmp_path, read_options=ReadOptions("best_vs_rest", "fine-grained_score"))
    assert len(fine) == 12  # best is now completion 0 (4.0); its tie with completion 2 is dropped
    assert all(c[:8] == r[:8] for c, r in zip(fine["chosen_input_ids"], fine["rejected_input_ids"]))


def test_completions_with_scores_or_ranks(llama, opt_tokenizer, tmp_path):
    scored = [{"prompt": f"Explain thing {i}.", "completions": ["Good one.", "Bad one.", "Okay one."],
               "scores": [3, 1, 2]} for i in range(5)]
    ranked = [{"prompt": r["prompt"], "completions": r["completions"], "ranks": [1, 3, 2]} for r in scored]
    sets = [as_set(build(llama, folder(tmp_path, name, rows), tmp_path)) for name, rows in
            (("scored", scored), ("ranked", ranked))]
    assert sets[0] == sets[1] and len(sets[0]) == 10
    assert (rated(llama, "Explain thing 0.", "Good one."), rated(llama, "Explain thing 0.", "Bad one.")) in sets[0]
    # A tokenizer without a chat template: DeepSpeed-Chat's ' Human: ... Assistant:' text, end-of-conversation added.
    train = build(opt_tokenizer, folder(tmp_path, "opt", scored), tmp_path)
    assert opt_tokenizer.decode(train["chosen_input_ids"][0], skip_special_tokens=False).startswith(
        "</s> Human: Explain thing") and opt_tokenizer.decode(train["chosen_input_ids"][0]).endswith(f" one.{EOT}")


def test_a_file_in_no_layout_names_its_columns_and_the_layouts(tmp_path):
    path = write(tmp_path / "p.jsonl", [{"question": "q", "answers": ["a", "b"]}])
    with pytest.raises(UserError) as error:
        load_source(path)
    message = str(error.value)
    assert "missing column(s) prompt, chosen, rejected (columns found: question, answers)" in message
    for layout in ("conversations, explicit prompt", "conversations, implicit prompt",
                   "rated completions (UltraFeedback)", "rated completions (scores or ranks)"):
        assert layout in message
    assert "question (text), answers (list of texts)" in message


# ---------------------------------------------------------------- bad rows: one error, file and row, nothing written

PROMPT = [user("Hi")]
GOOD = {"explicit": {"prompt": PROMPT, "chosen": [assistant("Hello")], "rejected": [assistant("No")]},
        "implicit": {"chosen": [user("Hi"), assistant("Hello")], "rejected": [user("Hi"), assistant("No")]},
        "rated": {"instruction": "Hi", "completions": [{"response": "Hello", "overall_score": 9},
                                                       {"response": "No", "overall_score": 2}]}}
BAD_ROWS = {  # case -> (layout of the good rows around it, the bad row, the error after the file name)
    "unknown role": ("explicit", dict(GOOD["explicit"], chosen=[{"role": "gpt", "content": "Hello"}]),
                     r"line 2: chosen\[0\] has the unknown role 'gpt'; use one of system, user, assistant"),
    "empty content": ("explicit", dict(GOOD["explicit"], chosen=[assistant("  ")]),
                      r"line 2: chosen\[0\] \(assistant\) has empty content; drop that message or the row"),
    "no final answer": ("explicit", dict(GOOD["explicit"], chosen=[assistant("Hello"), user("And?")]),
                        r"line 2: field 'chosen': the conversation ends with a user turn; .* Add the answer"),
    "different prompts": ("implicit", dict(GOOD["implicit"], rejected=[user("Bye"), assistant("No")]),
                          r"line 2: chosen and rejected have different prompts \(they differ at message 1\)"),
    "rating not a number": ("rated", {"instruction": "Hi", "completions": [
        {"response": "Hello", "overall_score": "high"}, {"response": "No", "overall_score": 2}]},
        r"line 2: completions\[0\].overall_score \(--rating_field\) is 'high', not a number"),
}


@pytest.mark.parametrize("case", BAD_ROWS)
def test_a_bad_row_is_one_error_naming_file_and_row(llama, tmp_path, case):
    layout, bad, message = BAD_ROWS[case]
    path = write(tmp_path / "p.jsonl", [GOOD[layout], bad, GOOD[layout]])
    with pytest.raises(UserError, match=r"p\.jsonl, " + message):
        build(llama, path, tmp_path)
    assert not os.path.exists(tmp_path / "cache")


def test_a_bad_row_of_a_parquet_file_is_named_by_row(llama, tmp_path):
    rows = [{"chosen": [user("Hi"), assistant("Hello")], "rejected": [user("Hi"), assistant("No")]}] * 3
    rows[2] = {"chosen": [user("Hi"), {"role": "robot", "content": "Hello"}], "rejected": rows[0]["rejected"]}
    path = write(tmp_path / "p.parquet", rows)
    with pytest.raises(UserError, match=r"p\.parquet, row 3: chosen\[1\] has the unknown role 'robot'"):
        build(llama, path, tmp_path)
    assert not os.path.exists(tmp_path / "cache")


def test_a_template_that_fails_to_render_names_the_row(tiny_chat, tmp_path):
    mistral = load_tokenizer(tiny_chat("mistral"))  # user/assistant only
    rows = [{"chosen": [user("Hi"), assistant("Hello")], "rejected": [user("Hi"), assistant("No")]}] * 3
    rows[1] = {key: [{"role": "system", "content": "Be kind."}] + value for key, value in rows[0].items()}
    path = folder(tmp_path, "d", rows)
    with pytest.raises(UserError, match=r"--data_path '.*/d' \(train split\), row 2: the chat template cannot render "
                                        r"it \(TemplateError: this template has only user and assistant turns\)\. "
                                        r"Fix the row, or use a template that accepts it "
                                        r"\(main\.py --chat_template FILE\)"):
        build(mistral, path, tmp_path)
    assert not os.path.exists(tmp_path / "cache")


def test_conversations_without_any_chat_template_name_the_flag(opt_tokenizer, tmp_path):
    rows = [{"chosen": [user("Hi"), assistant("Hello")], "rejected": [user("Hi"), assistant("No")]}] * 3
    with pytest.raises(UserError, match=r"row 1: the tokenizer has no chat template .* train with one "
                                        r"\(main\.py --chat_template FILE"):
        build(opt_tokenizer, folder(tmp_path, "d", rows), tmp_path)
    assert not os.path.exists(tmp_path / "cache")


def test_a_chat_template_file_for_a_tokenizer_without_one(opt_tokenizer, tmp_path):
    from data.chat import set_chat_template
    from transformers import AutoTokenizer
    tokenizer = AutoTokenizer.from_pretrained(opt_tokenizer.name_or_path)
    tokenizer.pad_token = tokenizer.eos_token
    (tmp_path / "broken.jinja").write_text("{% for m in messages %}{{ m['content'] }}")
    with pytest.raises(UserError, match=r"--chat_template '.*broken\.jinja' fails on a one-turn conversation: the chat "
                                        r"template cannot render it \(TemplateSyntaxError"):
        set_chat_template(tokenizer, str(tmp_path / "broken.jinja"))
    (tmp_path / "plain.jinja").write_text("{% for m in messages %}{{ m['role'] }}: {{ m['content'] }}\n{% endfor %}")
    set_chat_template(tokenizer, str(tmp_path / "plain.jinja"))
    items = conversations(6)
    train = build(tokenizer, folder(tmp_path, "d", [{"chosen": p + [c], "rejected": p + [r]} for p, c, r in items]),
                  tmp_path)
    text = tokenizer.decode(train["chosen_input_ids"][0], skip_special_tokens=True)
    assert text.startswith("user: Question") and text.endswith(", thanks!\n")  # no end-of-conversation text added
