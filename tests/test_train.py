"""End-to-end CPU training runs through main.py, as a user runs it.

Run: python -m pytest tests/test_train.py -q    (2-rank runs: tests/test_zero_matrix.py)
"""
import json
import os

from model.reward_model import RewardModel
from tests.fixtures import check_saved_model, eval_accuracies, run_main, step_losses

FAST = ["--max_seq_len", "64", "--per_device_train_batch_size", "8", "--gradient_accumulation_steps", "1",
        "--per_device_eval_batch_size", "32", "--learning_rate", "2e-3", "--num_train_epochs", "2",
        "--data_split", "0,10,0", "--num_padding_at_beginning", "1"]


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
