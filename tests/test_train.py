"""The card's command through main.py, as a user runs it.

Run: python -m pytest tests/test_train.py -q    (runs that must learn, every setup: tests/test_zero_matrix.py)
"""
import json

import pytest

from tests.fixtures import reloaded_metrics, run_main


def test_card_config_command_runs_without_a_launcher(tiny_opt, pair_folder, tmp_path):
    """The issue's command: the card's global batch 64 from ds_config.json, micro batch 8; the saved model
    scores the eval split as main.py reported."""
    out = tmp_path / "out"
    result = run_main(["--deepspeed_config", "./ds_config.json", "--model_name_or_path", tiny_opt,
                       "--data_path", pair_folder, "--data_split", "0,10,0", "--per_device_train_batch_size", "8",
                       "--output_dir", out, "--data_output_path", tmp_path / "cache", "--max_seq_len", "64"])
    assert result.returncode == 0, result.stdout[-3000:]
    ds_config = json.loads((out / "ds_config.json").read_text())
    assert ds_config["train_batch_size"] == 64 and ds_config["gradient_accumulation_steps"] == 8
    results = json.loads((out / "train_results.json").read_text())
    assert results["optimizer_steps"] == 384 // 64
    reloaded = reloaded_metrics(out, pair_folder)
    assert reloaded["num_pairs"] == results["num_pairs"] == 96
    assert reloaded["accuracy"] == results["accuracy"]
    for key in ("chosen_mean", "rejected_mean"):
        assert reloaded[key] == pytest.approx(results[key], abs=1e-3 * results["reward_std"]), key
