"""End-to-end CPU training runs through main.py, as a user runs it.

Run: python -m pytest tests/test_train.py -q    (the 2-rank test is marked slow)
"""
import glob
import json
import os
import re
import shutil

import pytest
import torch

from model.reward_model import RewardModel
from tests.fixtures import run_main

FAST = ["--max_seq_len", "64", "--per_device_train_batch_size", "8", "--gradient_accumulation_steps", "1",
        "--per_device_eval_batch_size", "32", "--learning_rate", "2e-3", "--num_train_epochs", "2",
        "--data_split", "0,10,0", "--num_padding_at_beginning", "1"]


def step_losses(log):
    return [float(x) for x in re.findall(r"^step \d+ \| loss ([0-9.]+)", log, re.M)]


def eval_accuracies(log):
    return [float(x) for x in re.findall(r"^eval \(.*?\) \| acc ([0-9.]+)", log, re.M)]


def check_saved_model(output_dir, data_folder, expected_accuracy):
    """Reload the saved model and score the eval split: same accuracy as main.py reported."""
    from transformers import AutoTokenizer

    from data import PairCollator, build_pair_datasets
    from training.evaluation import evaluate
    for name in ("config.json", "model.safetensors", "tokenizer.json", "ds_config.json", "train_results.json"):
        assert os.path.exists(os.path.join(output_dir, name)), name
    model = RewardModel.from_pretrained(output_dir)
    tokenizer = AutoTokenizer.from_pretrained(output_dir)
    _, eval_set = build_pair_datasets([data_folder], "0,10,0", 1234, tokenizer, 64,
                                      os.path.join(output_dir, "cache"), model.end_of_conversation_token)
    loader = torch.utils.data.DataLoader(eval_set, batch_size=32, collate_fn=PairCollator(tokenizer.pad_token_id))
    metrics = evaluate(model, loader, torch.device("cpu"), len(eval_set))
    assert metrics["accuracy"] == pytest.approx(expected_accuracy, abs=1.5 / len(eval_set))


def test_training_learns_and_saves_a_reloadable_model(tiny_opt, pair_folder, tmp_path):
    out = tmp_path / "out"
    result = run_main(["--model_name_or_path", tiny_opt, "--data_path", pair_folder, "--output_dir", out,
                       "--data_output_path", tmp_path / "cache", "--enable_tensorboard",
                       "--tensorboard_path", tmp_path / "tb"] + FAST)
    log = result.stdout
    assert result.returncode == 0, log[-3000:]
    assert "config: fp16 -> bf16: DeepSpeed's CPU accelerator has no fp16." in log
    losses, accuracies = step_losses(log), eval_accuracies(log)
    assert len(losses) == 2 * 384 // 8
    assert sum(losses[-10:]) / 10 < sum(losses[:10]) / 10 - 0.1, losses
    assert accuracies[-1] >= 0.8 and accuracies[-1] > accuracies[0] + 0.2, accuracies
    results = json.loads((out / "train_results.json").read_text())
    assert results["accuracy"] == accuracies[-1] or abs(results["accuracy"] - accuracies[-1]) < 1e-4
    assert json.loads((out / "ds_config.json").read_text())["bf16"]["enabled"] is True
    assert any(name.startswith("events.out.tfevents") for _, _, files in os.walk(tmp_path / "tb") for name in files)
    check_saved_model(str(out), pair_folder, results["accuracy"])


def test_card_config_command_runs_without_a_launcher(tiny_opt, pair_folder, tmp_path):
    """The issue's command: the card's global batch 64 from ds_config.json, micro batch 8."""
    out = tmp_path / "out"
    result = run_main(["--deepspeed_config", "./ds_config.json", "--model_name_or_path", tiny_opt,
                       "--data_path", pair_folder, "--data_split", "0,10,0", "--per_device_train_batch_size", "8",
                       "--output_dir", out, "--data_output_path", tmp_path / "cache", "--max_seq_len", "64"])
    assert result.returncode == 0, result.stdout[-3000:]
    ds_config = json.loads((out / "ds_config.json").read_text())
    assert ds_config["train_batch_size"] == 64 and ds_config["gradient_accumulation_steps"] == 8
    assert json.loads((out / "train_results.json").read_text())["optimizer_steps"] == 384 // 64
    RewardModel.from_pretrained(str(out))


@pytest.mark.slow
def test_two_ranks_train_and_rank0_saves(tiny_opt, pair_folder, tmp_path):
    deepspeed = shutil.which("deepspeed") or os.path.join(os.path.dirname(os.sys.executable), "deepspeed")
    out = tmp_path / "out"
    args = ["--model_name_or_path", tiny_opt, "--data_path", pair_folder, "--output_dir", out,
            "--data_output_path", tmp_path / "cache", "--zero_stage", "2"] + FAST
    args[args.index("--per_device_train_batch_size") + 1] = "4"
    result = run_main(args, launcher=[deepspeed, "--num_gpus", "2", "--master_port", "29533"])
    log = result.stdout
    assert result.returncode == 0, log[-3000:]
    assert "world_size=2" in log or "dist_world_size=2" in log
    assert "config: prescale_gradients: true -> false" in log
    losses, accuracies = step_losses(log), eval_accuracies(log)
    assert len(losses) == 2 * 384 // 8  # 4 pairs x 2 ranks per step
    assert accuracies[-1] >= 0.8, accuracies
    check_saved_model(str(out), pair_folder, json.loads((out / "train_results.json").read_text())["accuracy"])
    # DeepSpeed's CPU all-reduce files (66 MB of RAM each) are gone with the run (utils/dist.init_distributed)
    assert not glob.glob(f"/dev/shm/deepspeed_allreduce_buffer_{os.getuid()}_*_29533_*")
