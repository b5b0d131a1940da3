"""evaluation_scripts/ and the offline demo, run as a user runs them.

Run: python -m pytest tests/test_eval.py -q    (the demo test is marked slow)
"""
import json
import os
import sys

import pytest
import torch
from safetensors.torch import load_file, save_file

from model.reward_model import RewardModel
from tests.fixtures import ROOT, child_env, run_command, run_main, write_jsonl

EVAL = os.path.join(ROOT, "evaluation_scripts", "run_eval.sh")


def run_eval(*args):
    env = dict(child_env(), PYTHON=sys.executable)  # same threads as the training run: same numbers
    return run_command(["bash", EVAL, *args], timeout=300, env=env)


@pytest.fixture(scope="module")
def trained(tiny_opt, pair_folder, tmp_path_factory):
    """A briefly trained model: small margins, so any mismatch in eval numerics would show."""
    out = tmp_path_factory.mktemp("trained") / "model"
    result = run_main(["--model_name_or_path", tiny_opt, "--data_path", pair_folder, "--output_dir", out,
                       "--data_output_path", out.parent / "cache", "--data_split", "0,10,0", "--max_seq_len", "64",
                       "--per_device_train_batch_size", "8", "--gradient_accumulation_steps", "1",
                       "--per_device_eval_batch_size", "24", "--learning_rate", "1e-4"])
    assert result.returncode == 0, result.stdout[-3000:]
    return out


def test_eval_script_reproduces_the_training_accuracy(trained, pair_folder):
    result = run_eval(trained, "--data_path", pair_folder)
    assert result.returncode == 0, result.stdout[-3000:]
    assert "good answer score" in result.stdout and "bad answer score" in result.stdout
    metrics = json.loads((trained / "eval_results.json").read_text())
    assert set(metrics) >= {"accuracy", "chosen_mean", "rejected_mean", "margin", "num_pairs", "reward_mean",
                            "reward_std"}
    reported = json.loads((trained / "train_results.json").read_text())
    assert metrics["num_pairs"] == 96
    assert metrics["accuracy"] == reported["accuracy"]
    assert metrics["chosen_mean"] == pytest.approx(reported["chosen_mean"], abs=1e-6)
    assert metrics["margin"] == pytest.approx(metrics["chosen_mean"] - metrics["rejected_mean"])


def test_a_model_without_its_value_head_is_refused(trained, tmp_path):
    broken = tmp_path / "broken"
    broken.mkdir()
    for name in os.listdir(trained):
        if os.path.isfile(trained / name):
            (broken / name).write_bytes((trained / name).read_bytes())
    state = load_file(str(broken / "model.safetensors"))
    del state["v_head.weight"]
    save_file(state, str(broken / "model.safetensors"))
    result = run_eval(broken)
    assert result.returncode == 1 and "Traceback" not in result.stdout
    assert "v_head.weight" in result.stdout.splitlines()[-1]


def test_score_writes_one_reward_per_row(trained, tmp_path):
    from transformers import AutoTokenizer

    from model.scoring import score_texts
    rows = [{"prompt": " Human: hi Assistant:", "answer": " thanks, great and kind."},
            {"prompt": " Human: hi Assistant:", "answer": " awful, rude."}, {"text": " plain text"}]
    output = tmp_path / "scores.jsonl"
    result = run_eval(trained, "--score", write_jsonl(tmp_path / "rows.jsonl", rows), "--score_output", output)
    assert result.returncode == 0, result.stdout[-3000:]
    scored = [json.loads(line) for line in output.read_text().splitlines()]
    model = RewardModel.from_pretrained(str(trained))
    texts = [r.get("text") or r["prompt"] + r["answer"] for r in rows]
    expected = score_texts(model, AutoTokenizer.from_pretrained(str(trained)),
                           [t + model.end_of_conversation_token for t in texts], 64)
    assert [r["prompt"] for r in scored[:2]] == [r["prompt"] for r in rows[:2]]
    torch.testing.assert_close(torch.tensor([r["reward"] for r in scored]), expected, atol=1e-6, rtol=0)


@pytest.mark.slow
def test_a_rerun_replaces_the_results_and_plots_of_the_previous_one(trained, pair_folder, tmp_path):
    """evaluate.py --no_plots after a run with plots: no PNG of the earlier run is left beside the new JSON."""
    from evaluation_scripts import evaluate
    output = tmp_path / "results" / "metrics.json"
    output.parent.mkdir()
    (output.parent / "notes.txt").write_text("mine")
    evaluate.main([str(trained), "--data_path", pair_folder, "--output", str(output)])
    assert {"metrics.json", "eval_rewards.png", "training_curves.png"} <= set(os.listdir(output.parent))
    output.write_text("{}")
    evaluate.main([str(trained), "--data_path", pair_folder, "--output", str(output), "--no_plots"])
    assert sorted(os.listdir(output.parent)) == ["metrics.json", "notes.txt"]
    assert "accuracy" in json.loads(output.read_text())


def test_offline_demo_learns(tmp_path):
    env = dict(child_env(), PYTHON=sys.executable)
    result = run_command(["bash", os.path.join(ROOT, "training_scripts", "run_demo_cpu.sh"), tmp_path], timeout=900,
                         env=env)
    assert result.returncode == 0, result.stdout[-3000:]
    metrics = json.loads((tmp_path / "reward_model" / "eval_results.json").read_text())
    assert metrics["accuracy"] >= 0.9 and metrics["num_pairs"] == 160
