"""Faults driven for real: another run's checkpoints, changed settings on resume, damaged checkpoints,
a full disk (a small tmpfs), kills during a save, signals during the final evaluation, overwrites.

Nothing trained, checkpointed or exported may be lost or overwritten without an explicit flag, and no
run may exit 0 after not doing what was asked. Run: python -m pytest tests/test_faults.py -q
"""
import json
import os
import shutil
import signal
import subprocess
import sys

import pytest

import main
from evaluation_scripts import evaluate, export_hf
from model.reward_model import RewardModel
from tests.fixtures import ROOT, Child, run_main, write_jsonl
from utils import io

RUN = ["--max_seq_len", "64", "--per_device_train_batch_size", "8", "--gradient_accumulation_steps", "1",
       "--data_split", "0,1,0", "--learning_rate", "1e-3"]  # 64 pairs: 8 optimizer steps


@pytest.fixture(scope="module")
def data(small_pair_folder):
    return small_pair_folder


def argv(tiny_opt, data, out, *extra):
    return ["--model_name_or_path", tiny_opt, "--data_path", data, "--output_dir", str(out),
            "--data_output_path", os.path.join(data, "cache"), *RUN, *extra]


@pytest.fixture(scope="module")
def finished(tiny_opt, data, tmp_path_factory):
    """A finished run with checkpoints at steps 4 and 8 (and its model)."""
    out = tmp_path_factory.mktemp("finished") / "out"
    result = run_main(argv(tiny_opt, data, out, "--save_steps", "4"))
    assert result.returncode == 0, result.stdout[-3000:]
    return out


def killed_copy(finished, tmp_path):
    """The finished run as a run killed after its last checkpoint: checkpoints, no model."""
    out = tmp_path / "killed"
    shutil.copytree(finished, out)
    os.remove(out / "model.safetensors")
    return out


pytestmark = pytest.mark.usefixtures("clean_dist_env")


def error_of(function, args, capsys):
    with pytest.raises(SystemExit) as stopped:
        function(args)
    assert stopped.value.code == 1
    return capsys.readouterr().err.strip().splitlines()[-1]


def test_a_folder_with_another_runs_checkpoints_is_refused(tiny_opt, data, finished, tmp_path, capsys):
    out = killed_copy(finished, tmp_path)
    before = sorted(os.listdir(out / "checkpoints"))
    error = error_of(main.main, argv(tiny_opt, data, out, "--save_steps", "2", "--save_total_limit", "1"), capsys)
    assert "holds checkpoints of an earlier run" in error and "--resume_from_checkpoint auto" in error
    assert sorted(os.listdir(out / "checkpoints")) == before == ["step-4", "step-8"]


@pytest.mark.parametrize("change, named", [(["--learning_rate", "5e-4"], "learning_rate: 0.001 then, 0.0005 now"),
                                           (["--per_device_train_batch_size", "4"],  # the global batch 8 -> 4
                                            "global batch (micro batch x ranks x accumulation): 8 then, 4 now"),
                                           (["--max_seq_len", "48"], "max_seq_len: 64 then, 48 now")])
def test_a_resume_that_would_change_the_run_is_refused_naming_the_setting(
        change, named, tiny_opt, data, finished, tmp_path, capsys):
    out = killed_copy(finished, tmp_path)
    args = argv(tiny_opt, data, out, "--resume_from_checkpoint", "auto")
    error = error_of(main.main, args[:args.index(change[0])] + change + args[args.index(change[0]) + 2:], capsys)
    assert "was saved by a run with other settings" in error and named in error, error
    assert not (out / "model.safetensors").exists()


def test_a_damaged_newest_checkpoint_is_reported_and_the_previous_one_used(tiny_opt, data, finished, tmp_path,
                                                                           capsys):
    out = killed_copy(finished, tmp_path)
    shard = out / "checkpoints" / "step-8" / "mp_rank_00_model_states.pt"  # ZeRO-0: weights and optimizer
    shard.write_bytes(shard.read_bytes()[:100])  # truncated, the COMPLETE marker still there
    (out / "checkpoints" / "step-4" / "COMPLETE").write_text("")  # and an empty marker...
    error = error_of(main.main, argv(tiny_opt, data, out, "--resume_from_checkpoint", "auto"), capsys)
    assert "every checkpoint" in error and "damaged" in error  # ...leaves nothing good: an error, not a fresh start
    shutil.copy(finished / "checkpoints" / "step-4" / "COMPLETE", out / "checkpoints" / "step-4" / "COMPLETE")
    explicit = str(out / "checkpoints" / "step-8")
    error = error_of(main.main, argv(tiny_opt, data, out, "--resume_from_checkpoint", explicit), capsys)
    assert "cannot be resumed" in error and "mp_rank_00_model_states.pt has 100 bytes" in error
    for wrong, cause in ((out / "checkpoints" / "step-9", "no such folder"),
                         (out, "it is a run's output folder, which holds checkpoints in checkpoints/ (the newest "
                               f"complete one is {out / 'checkpoints' / 'step-8'})")):
        error = error_of(main.main, argv(tiny_opt, data, out, "--resume_from_checkpoint", str(wrong)), capsys)
        assert f"--resume_from_checkpoint {wrong} cannot be resumed: {cause}. Pass a complete checkpoint" in error
    result = run_main(argv(tiny_opt, data, out, "--resume_from_checkpoint", "auto"))
    assert result.returncode == 0, result.stdout[-3000:]
    assert "step-8 is damaged" in result.stdout and "resumed from" in result.stdout and "step-4" in result.stdout
    assert json.loads((out / "train_results.json").read_text())["optimizer_steps"] == 8  # steps 5-8 trained again
    RewardModel.from_pretrained(str(out))


@pytest.fixture
def small_disk(tmp_path):
    """A 200 KB tmpfs: the tiny model's 240 KB of weights do not fit, its log does."""
    mount = tmp_path / "disk"
    mount.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=200k", "tmpfs", str(mount)], timeout=60).returncode:
        pytest.skip("cannot mount a tmpfs here (needs root)")
    yield mount
    subprocess.run(["umount", "-l", str(mount)], timeout=60)


def test_disk_full_during_the_final_save_keeps_the_model_elsewhere(tiny_opt, data, small_disk):
    result = run_main(argv(tiny_opt, data, small_disk / "out"))
    last = result.stdout.strip().splitlines()[-1]
    assert result.returncode == 1 and "Traceback" not in result.stdout, result.stdout[-3000:]
    assert last.startswith("error: no space left on the disk of") and "saved to" in last, last
    recovered = last.split("saved to ")[1].split(" instead")[0]
    RewardModel.from_pretrained(recovered)  # the trained model survived, complete
    shutil.rmtree(recovered)
    assert not os.path.exists(small_disk / "out" / ".saving")


def test_disk_full_during_a_checkpoint_says_so(tiny_opt, data, small_disk):
    result = run_main(argv(tiny_opt, data, small_disk / "out", "--save_steps", "4"))
    last = result.stdout.strip().splitlines()[-1]
    assert result.returncode == 1 and "Traceback" not in result.stdout, result.stdout[-3000:]
    assert "no space left" in last and "checkpoint step-4" in last and "none was kept" in last, last


def test_a_save_killed_at_any_point_leaves_the_old_or_the_new_model(tmp_path, monkeypatch):
    target = tmp_path / "model"
    target.mkdir()
    for name in ("config.json", "model.safetensors"):
        (target / name).write_text(f"old {name}")
    real_replace = os.replace
    for kill_after in range(6):  # each os.replace of the publish in turn
        (target / "stale.png").write_text("a previous run's picture the new set does not have")
        staging = io.staging_folder(str(target))
        for name in ("config.json", "model.safetensors", "tokenizer.json"):
            (target / ".saving" / name).write_text(f"new {name} {kill_after}")
        calls = []

        def dying_replace(src, dst):
            calls.append(src)
            if len(calls) > kill_after:
                raise KeyboardInterrupt("killed")
            real_replace(src, dst)
        monkeypatch.setattr(os, "replace", dying_replace)
        with pytest.raises(KeyboardInterrupt):
            io.publish(str(target), replaces=["stale.png", "config.json"])
        monkeypatch.setattr(os, "replace", real_replace)
        assert io.recover(str(target))  # what check_output_dir does at the next start
        assert sorted(os.listdir(target)) == ["config.json", "model.safetensors", "tokenizer.json"]
        assert {(target / n).read_text() for n in os.listdir(target)} == {
            f"new {n} {kill_after}" for n in ("config.json", "model.safetensors", "tokenizer.json")}
        assert not os.path.exists(staging)


def test_export_does_not_overwrite_a_model_without_overwrite(finished, tmp_path, capsys):
    target = tmp_path / "export"
    shutil.copytree(finished, target)  # a trained model already there
    before = (target / "model.safetensors").read_bytes()
    error = error_of(export_hf.main, [str(finished), str(target)], capsys)
    assert "already holds a model" in error and "--overwrite" in error
    assert (target / "model.safetensors").read_bytes() == before
    export_hf.main([str(finished), str(target), "--overwrite"])
    assert not (target / ".saving").exists()


def test_score_with_a_bad_row_leaves_no_partial_file(finished, tmp_path, capsys):
    rows = tmp_path / "rows.jsonl"
    write_jsonl(rows, [{"prompt": " Human: hi Assistant:", "answer": " great"}] * 40 + [{"prompt": "no answer"}])
    output = tmp_path / "scores.jsonl"
    output.write_text("earlier scores\n")
    error = error_of(evaluate.main, [str(finished), "--score", str(rows), "--score_output", str(output)], capsys)
    assert "rows.jsonl" in error and "line 41" in error and "'answer'" in error
    assert output.read_text() == "earlier scores\n" and not os.path.exists(f"{output}.tmp")


def test_evaluating_a_folder_with_truncated_weights_is_one_error(finished, tmp_path, capsys):
    model = tmp_path / "model"
    shutil.copytree(finished, model)
    weights = model / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:1000])
    error = error_of(evaluate.main, [str(model)], capsys)
    assert error.startswith("error: ") and "model.safetensors is damaged" in error


def test_sigterm_during_the_final_evaluation_checkpoints_and_stops(tiny_opt, data, tmp_path, monkeypatch):
    real_evaluate, calls = main.evaluate, []

    def evaluate_then_signal(*args, **kwargs):
        calls.append(1)
        if len(calls) == 2:  # before training, then the final one
            os.kill(os.getpid(), signal.SIGTERM)
        return real_evaluate(*args, **kwargs)
    monkeypatch.setattr(main, "evaluate", evaluate_then_signal)
    out = tmp_path / "out"
    with pytest.raises(SystemExit) as stopped:
        main.main(argv(tiny_opt, data, out))
    assert stopped.value.code == 128 + signal.SIGTERM
    assert not (out / "model.safetensors").exists() and (out / "checkpoints" / "step-8" / "COMPLETE").exists()


def test_a_second_ctrl_c_stops_at_once(tiny_opt, data, tmp_path):
    command = [sys.executable, os.path.join(ROOT, "main.py")] + argv(tiny_opt, data, tmp_path / "out") + [
        "--num_train_epochs", "50"]
    child = Child(command, timeout=300)
    for line in child:  # the printed lines are what a user at the terminal answers
        if line.startswith("step 2 |"):
            child.process.send_signal(signal.SIGINT)
        if line.startswith("signal 2: saving a checkpoint"):
            child.process.send_signal(signal.SIGINT)
            break
    assert child.wait() == -signal.SIGINT, child.log()[-3000:]
