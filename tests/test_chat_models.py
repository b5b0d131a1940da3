"""Tiny Llama-, Qwen2- and Mistral-style chat models trained end to end on conversations of 2-4 user
turns: they learn, save, reload, evaluate, score `messages` rows and export to a Hugging Face classifier
that scores like the project.

Run: .venv/bin/python -m pytest tests/test_chat_models.py -q      (15-20 s per style on 2 cores)
"""
import json
import os
import sys

import pytest
import torch
from transformers import AutoModelForSequenceClassification, AutoTokenizer

from data import synthetic
from data.chat import ChatRenderer
from evaluation_scripts.export_hf import main as export_main
from model.reward_model import RewardModel
from model.scoring import score_texts
from model.tiny import CHAT_CORPUS, build_tiny_chat
from tests.fixtures import ROOT, child_env, eval_accuracies, run_command, run_main, step_losses, write_jsonl

DATA = "synthetic/conversations:600"  # 540 train, 60 held-out pairs
MAX_SEQ_LEN = 256


def corpus():
    """The tokenizer's training text: the synthetic conversations' words, so texts stay short."""
    rows, _ = synthetic.make_splits(200, synthetic.CHAT_NAME)
    return CHAT_CORPUS + [m["content"] for row in rows for m in row["chosen"] + row["rejected"][-1:]]


@pytest.fixture(scope="module", params=["llama", "qwen2", "mistral"])
def trained(request, tmp_path_factory):
    """(style, model folder, main.py's log) after one epoch on the synthetic conversations."""
    root = tmp_path_factory.mktemp(request.param)
    base = build_tiny_chat(str(root / "base"), request.param, corpus=corpus())
    result = run_main(["--model_name_or_path", base, "--data_path", DATA, "--output_dir", root / "model",
                       "--data_output_path", root / "cache", "--data_split", "0,10,0", "--max_seq_len", MAX_SEQ_LEN,
                       "--per_device_train_batch_size", "16", "--gradient_accumulation_steps", "1",
                       "--learning_rate", "2e-3", "--num_train_epochs", "1"])
    assert result.returncode == 0, result.stdout[-3000:]
    return request.param, str(root / "model"), result.stdout


def held_out_texts(model_dir, count=8):
    """Rendered held-out conversations (chosen and rejected), as the model's tokenizer renders them."""
    _, test = synthetic.make_splits(600, synthetic.CHAT_NAME)
    render = ChatRenderer(AutoTokenizer.from_pretrained(model_dir))
    return [render(row[side]) for row in test[:count] for side in ("chosen", "rejected")]


def our_scores(model_dir, texts):
    model = RewardModel.from_pretrained(model_dir)
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    tokenizer.pad_token_id = model.PAD_ID
    return score_texts(model, tokenizer, texts, MAX_SEQ_LEN)


def test_learns_the_last_answer_and_saves_the_rule(trained):
    style, model_dir, log = trained
    assert "data: end-token rule last_token" in log and "a chat template renders the conversations" in log
    accuracies, losses = eval_accuracies(model_dir), step_losses(model_dir)
    assert accuracies[-1] >= 0.9 and accuracies[-1] > accuracies[0], accuracies  # held-out pairs
    assert sum(losses[-5:]) < 0.5 * sum(losses[:5]), losses
    settings = json.load(open(os.path.join(model_dir, "config.json")))["reward_model"]
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    assert settings["end_token_rule"] == "last_token" and settings["end_of_conversation_token"] == ""
    assert settings["pad_token_id"] == tokenizer.pad_token_id != tokenizer.eos_token_id
    assert settings["num_padding_at_beginning"] == 0 and tokenizer.chat_template
    results = json.load(open(os.path.join(model_dir, "train_results.json")))
    assert results["accuracy"] == accuracies[-1]


def test_export_scores_like_the_project(trained, tmp_path):
    style, model_dir, _ = trained
    out = str(tmp_path / "hf")
    export_main([model_dir, out])
    classifier = AutoModelForSequenceClassification.from_pretrained(out).eval()
    tokenizer = AutoTokenizer.from_pretrained(out)
    assert classifier.config.pad_token_id == tokenizer.pad_token_id != classifier.config.eos_token_id
    texts = held_out_texts(model_dir)
    batch = tokenizer(texts, padding=True, return_tensors="pt")  # right-padded, rows of different lengths
    assert (batch["attention_mask"] == 0).any()
    with torch.no_grad():
        theirs = classifier(**batch).logits[:, 0].float()
    ours = our_scores(model_dir, texts)
    torch.testing.assert_close(theirs, ours, atol=1e-5, rtol=0)
    assert (ours[0::2] > ours[1::2]).float().mean() >= 0.75  # the chosen answers score higher


def test_deepspeed_chat_export_is_refused_with_the_fix(trained, tmp_path, capsys):
    _, model_dir, _ = trained
    with pytest.raises(SystemExit):
        export_main([model_dir, str(tmp_path / "critic"), "--format", "deepspeed_chat"])
    assert "reads its score at the last attended token" in capsys.readouterr().err
    assert not os.path.exists(tmp_path / "critic" / "pytorch_model.bin")


def run_eval(*args):
    env = dict(child_env(), PYTHON=sys.executable)
    return run_command(["bash", os.path.join(ROOT, "evaluation_scripts", "run_eval.sh"), *args], timeout=300, env=env)


def test_evaluate_and_score_conversations(trained, tmp_path):
    style, model_dir, _ = trained
    if style != "llama":
        pytest.skip("one style is enough for the evaluation script")
    _, test = synthetic.make_splits(600, synthetic.CHAT_NAME)
    rows = [{"messages": test[0]["chosen"]}, {"messages": test[0]["rejected"]},
            {"prompt": test[1]["chosen"][:-1], "completion": test[1]["chosen"][-1:]},
            {"prompt": test[1]["chosen"][:-1], "completion": test[1]["rejected"][-1]["content"]}]
    output = tmp_path / "scores.jsonl"
    result = run_eval(model_dir, "--data_path", DATA, "--output", tmp_path / "eval.json", "--no_plots",
                      "--score", write_jsonl(tmp_path / "rows.jsonl", rows), "--score_output", output)
    assert result.returncode == 0, result.stdout[-3000:]
    metrics = json.loads((tmp_path / "eval.json").read_text())
    trained_with = json.load(open(os.path.join(model_dir, "train_results.json")))
    assert metrics["num_pairs"] == 60 and metrics["accuracy"] == trained_with["accuracy"]
    rewards = [json.loads(line)["reward"] for line in output.read_text().splitlines()]
    render = ChatRenderer(AutoTokenizer.from_pretrained(model_dir))
    texts = [render(test[0]["chosen"]), render(test[0]["rejected"]), render(test[1]["chosen"]),
             render(test[1]["rejected"])]
    torch.testing.assert_close(torch.tensor(rewards), our_scores(model_dir, texts), atol=1e-6, rtol=0)
    assert rewards[0] > rewards[1] and rewards[2] > rewards[3]

    bad = write_jsonl(tmp_path / "bad.jsonl", rows[:1] + [{"messages": test[0]["chosen"][:-1]}])
    result = run_eval(model_dir, "--score", bad, "--score_output", tmp_path / "bad_scores.jsonl")
    assert result.returncode == 1 and not (tmp_path / "bad_scores.jsonl").exists()
    assert "bad.jsonl, line 2: field 'messages': the conversation ends with a user turn" in result.stdout
