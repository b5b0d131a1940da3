"""Optional loss variants, reward statistics, plots and the plateau warning (issue: ecosystem).

Run: python -m pytest tests/test_reward_extras.py -q
"""
import json
import math
import os
import sys

import pytest
import torch

from model.reward_model import RewardModel, loss_spans, pairwise_loss
from tests.fixtures import ROOT, learnable_pairs, run_command, run_main, write_jsonl
from utils.settings import LossOptions

PAD = 2


def one_pair_loss(chosen_reward, rejected_reward, options=LossOptions(), **fields):
    # n=0, chosen [5, 6, PAD], rejected [5, 7, PAD]: the span is position 1 only, end scores at 1
    ids = torch.tensor([[5, 6, PAD], [5, 7, PAD]])
    rewards = torch.tensor([[0.0, chosen_reward, 9.0], [0.0, rejected_reward, -9.0]])
    loss, _, _ = pairwise_loss(rewards[:1], rewards[1:], loss_spans(ids[:1], ids[1:], PAD, 0), options, fields)
    return loss.item()


def test_margin_loss_worked_by_hand():
    loss = one_pair_loss(2.0, 1.0, LossOptions(use_margin=True), margin=torch.tensor([0.5]))
    assert loss == pytest.approx(math.log1p(math.exp(-0.5)))  # -logsigmoid(2 - 1 - 0.5)


def test_centring_term_worked_by_hand():
    loss = one_pair_loss(2.0, 1.0, LossOptions(center_rewards_coefficient=0.1))
    assert loss == pytest.approx(math.log1p(math.exp(-1.0)) + 0.1 * (2.0 + 1.0) ** 2)


def test_defaults_are_deepspeed_chats_loss():
    assert one_pair_loss(2.0, 1.0, margin=torch.tensor([0.5])) == pytest.approx(math.log1p(math.exp(-1.0)))


@pytest.fixture(scope="module")
def margin_run(tiny_opt, tmp_path_factory):
    folder = tmp_path_factory.mktemp("margin_data")
    write_jsonl(folder / "train.jsonl", [dict(r, margin=1.0) for r in learnable_pairs(128, seed=5)])
    write_jsonl(folder / "test.jsonl", [dict(r, margin=1.0) for r in learnable_pairs(64, seed=6)])
    out = folder / "out"
    result = run_main(["--model_name_or_path", tiny_opt, "--data_path", folder, "--output_dir", out,
                       "--data_output_path", folder / "cache", "--data_split", "0,10,0", "--max_seq_len", "64",
                       "--per_device_train_batch_size", "8", "--gradient_accumulation_steps", "1",
                       "--learning_rate", "2e-3", "--num_train_epochs", "2", "--use_margin",
                       "--center_rewards_coefficient", "0.01"])
    assert result.returncode == 0, result.stdout[-3000:]
    return out, str(folder)


def test_reward_stats_are_saved_and_centre_the_scores(margin_run):
    out, data = margin_run
    settings = json.loads((out / "config.json").read_text())["reward_model"]
    results = json.loads((out / "train_results.json").read_text())
    assert settings["reward_mean"] == results["reward_mean"] and settings["reward_std"] == results["reward_std"]
    assert RewardModel.from_pretrained(str(out), center_rewards=True).reward_offset == settings["reward_mean"]
    centred = out / "centred.json"
    result = run_command([sys.executable, os.path.join(ROOT, "evaluation_scripts", "evaluate.py"), out,
                          "--data_path", data, "--center_rewards", "--output", centred], timeout=300)
    assert result.returncode == 0, result.stdout[-3000:]
    metrics = json.loads(centred.read_text())
    assert abs(metrics["reward_mean"]) < 0.05 * max(1.0, settings["reward_std"])
    assert metrics["accuracy"] == results["accuracy"] and metrics["accuracy"] >= 0.8
    for picture in ("eval_rewards.png", "training_curves.png"):
        assert (out / picture).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", picture


def test_loss_stuck_at_ln2_warns(tiny_opt, pair_folder, tmp_path):
    result = run_main(["--model_name_or_path", tiny_opt, "--data_path", pair_folder, "--output_dir", tmp_path / "o",
                       "--data_output_path", tmp_path / "cache", "--data_split", "0,10,0", "--max_seq_len", "64",
                       "--per_device_train_batch_size", "8", "--gradient_accumulation_steps", "1",
                       "--learning_rate", "0", "--loss_plateau_warning", "5", "--eval_iters", "1"])
    assert result.returncode == 0, result.stdout[-3000:]
    assert "warning: the training loss stayed within 0.02 of ln 2" in result.stdout
    assert "--num_padding_at_beginning" in result.stdout
