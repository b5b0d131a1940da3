"""Checkpoints, exact resume after SIGKILL / SIGTERM, non-finite loss. Run: python -m pytest tests/test_resume.py -q"""
import json
import os
import shutil
import signal
import sys

import pytest
import torch
from safetensors.torch import load_file

import main
from tests.fixtures import DIST_ENV, ROOT, finish, run_until

RUN = ["--max_seq_len", "64", "--per_device_train_batch_size", "8", "--gradient_accumulation_steps", "2",
       "--data_split", "0,5,5", "--num_train_epochs", "2", "--learning_rate", "1e-3", "--dropout", "0.1",
       "--per_device_eval_batch_size", "32"]  # 192 train pairs: 12 optimizer steps per epoch, 24 in all


def command(tiny_opt, pair_folder, out, *extra, launcher=None):
    return (launcher or [sys.executable]) + [os.path.join(ROOT, "main.py"), "--model_name_or_path", tiny_opt,
                                             "--data_path", pair_folder, "--output_dir", str(out),
                                             "--data_output_path", str(out.parent / "cache"), *RUN, *extra]


def assert_same_model(out_a, out_b):
    a, b = load_file(str(out_a / "model.safetensors")), load_file(str(out_b / "model.safetensors"))
    assert a.keys() == b.keys()
    for key in a:
        torch.testing.assert_close(b[key].float(), a[key].float(), atol=1e-6, rtol=0, msg=key)
    results_a = json.loads((out_a / "train_results.json").read_text())
    results_b = json.loads((out_b / "train_results.json").read_text())
    for key in ("accuracy", "chosen_mean", "rejected_mean", "train_loss", "optimizer_steps"):
        assert results_b[key] == pytest.approx(results_a[key], abs=1e-6), key


@pytest.fixture(scope="module")
def uninterrupted(tiny_opt, pair_folder, tmp_path_factory):
    """uninterrupted(*extra_flags) -> output folder of a full run with those flags (cached)."""
    runs = {}

    def get(*extra):
        if extra not in runs:
            runs[extra] = tmp_path_factory.mktemp("uninterrupted") / "out"
            finish(command(tiny_opt, pair_folder, runs[extra], *extra))
        return runs[extra]
    return get


def test_sigkill_then_auto_resume_matches_an_uninterrupted_run(tiny_opt, pair_folder, uninterrupted, tmp_path):
    out = tmp_path / "out"
    cmd = command(tiny_opt, pair_folder, out, "--save_steps", "5", "--save_total_limit", "1")
    code, log = run_until(cmd, "saved checkpoint", 2, signal.SIGKILL)
    assert code == -signal.SIGKILL, log[-2000:]
    assert sorted(os.listdir(out / "checkpoints")) == ["step-10"]  # the limit pruned step-5
    assert not (out / "model.safetensors").exists()
    os.makedirs(out / "checkpoints" / "step-20" / "global_step20")  # a save cut short: no marker
    log = finish(cmd + ["--resume_from_checkpoint", "auto"])
    assert "ignoring incomplete checkpoint" in log and "step-20" in log
    assert "resumed from" in log and "step-10" in log and "eval (before training)" not in log
    assert_same_model(uninterrupted(), out)


def test_sigterm_saves_a_checkpoint_and_exits_cleanly(tiny_opt, pair_folder, uninterrupted, tmp_path):
    """With --group_by_length: the length-grouped order resumes exactly too."""
    out = tmp_path / "out"
    cmd = command(tiny_opt, pair_folder, out, "--group_by_length")
    code, log = run_until(cmd, "| loss", 3, signal.SIGTERM)
    assert code == 128 + signal.SIGTERM and "Traceback" not in log, log[-2000:]
    assert "stopped by signal 15" in log and "--resume_from_checkpoint auto" in log
    finish(cmd + ["--resume_from_checkpoint", "auto"])
    assert_same_model(uninterrupted("--group_by_length"), out)


def test_nan_loss_stops_naming_the_step_and_keeps_the_last_checkpoint(tiny_opt, pair_folder, tmp_path,
                                                                      monkeypatch, capsys):
    import model.reward_model as reward_model
    for key in DIST_ENV:
        monkeypatch.delenv(key, raising=False)
    calls = {"n": 0}
    real_loss = reward_model.pairwise_loss

    def poisoned(*args, **kwargs):
        loss, chosen, rejected = real_loss(*args, **kwargs)
        calls["n"] += torch.is_grad_enabled()  # count training micro-batches only, not eval
        return (loss * float("nan") if calls["n"] > 2 * 3 else loss), chosen, rejected  # from step 4 on
    monkeypatch.setattr(reward_model, "pairwise_loss", poisoned)
    out = tmp_path / "out"
    with pytest.raises(SystemExit) as stopped:
        main.main(command(tiny_opt, pair_folder, out, "--save_steps", "2", "--eval_iters", "1")[2:])
    assert stopped.value.code == 1
    assert "training loss is nan at optimizer step 4" in capsys.readouterr().err
    assert not (out / "model.safetensors").exists()
    assert sorted(os.listdir(out / "checkpoints")) == ["step-2"]
    assert (out / "checkpoints" / "step-2" / "COMPLETE").exists()


@pytest.mark.slow
def test_two_rank_sigkill_resume_matches(tiny_opt, pair_folder, tmp_path):
    deepspeed = shutil.which("deepspeed") or os.path.join(os.path.dirname(sys.executable), "deepspeed")
    launcher = [deepspeed, "--num_gpus", "2", "--master_port", "29541"]
    reference, out = tmp_path / "reference", tmp_path / "out"
    finish(command(tiny_opt, pair_folder, reference, "--per_device_train_batch_size", "4", launcher=launcher))
    cmd = command(tiny_opt, pair_folder, out, "--per_device_train_batch_size", "4", "--save_steps", "5",
                  launcher=launcher)
    code, log = run_until(cmd, "saved checkpoint", 2, signal.SIGKILL)
    assert code != 0 and not (out / "model.safetensors").exists(), log[-2000:]
    log = finish(cmd + ["--resume_from_checkpoint", "auto"])
    assert "resumed from" in log
    assert_same_model(reference, out)
