"""main.py against DeepSpeed-Chat's own step-2 script, batch by batch (benchmarks/side_by_side.py).

The slow test needs a DeepSpeed-Chat checkout (the folder applications/DeepSpeed-Chat of
deepspeedai/DeepSpeedExamples; docs/side_by_side.md says how to get one) and is skipped without it:
    DSCHAT_PATH=/path/to/DeepSpeed-Chat .venv/bin/python -m pytest tests/test_side_by_side.py -q
Measured there: the pairs of every micro batch, the fp32 loss of each step and the eval accuracy
before and after training, on a tiny random OPT and HH-style pairs, some identical after truncation.
The other tests check the harness's own arithmetic on literal logs (no checkout needed).
"""
import os

import pytest

from benchmarks import side_by_side, sxs_logs
from data.split import split_indices

DSCHAT = os.environ.get("DSCHAT_PATH")


def test_share_size_is_the_split_rule():
    for total in (19, 39, 249, 250, 2499):
        assert side_by_side.share_size(total) == len(split_indices(total, [2, 4, 4], 1, 1234))
    assert side_by_side.share_size(side_by_side.rows_for_share(100)) == 100


def test_a_baseline_run_needs_a_checkout_and_runs_its_main(tmp_path, capsys):
    with pytest.raises(SystemExit):
        side_by_side.parse_args(["--mode", "speed", "--dschat", str(tmp_path), "--runs", "dschat", "baseline"])
    assert "--runs baseline needs --baseline PATH" in capsys.readouterr().err
    (tmp_path / "main.py").write_text("")
    (tmp_path / "dschat").mkdir()
    (tmp_path / side_by_side.DSCHAT_SCRIPT).parent.mkdir(parents=True)
    (tmp_path / side_by_side.DSCHAT_SCRIPT).write_text("")
    args = side_by_side.parse_args(["--mode", "speed", "--dschat", str(tmp_path), "--baseline", str(tmp_path)])
    script, _, _ = side_by_side.script_command("project", args, "MODEL", "DATA", str(tmp_path / "run"),
                                               project=args.baseline)
    assert script == str(tmp_path / "main.py")


def _forward(train, pairs, loss, chosen=(), rejected=()):
    return {"kind": "forward", "train": train, "pairs": pairs, "loss": loss, "padded_len": 8,
            "chosen": list(chosen), "rejected": list(rejected)}


def test_logs_compare_batches_losses_and_eval():
    def run(second_pair, loss):
        return [_forward(False, [["a", "b"], ["c", "c"]], 0.7, [1.0, 0.5], [0.0, 0.5]),
                _forward(True, [["a", "b"], second_pair], 0.69), {"kind": "step", "n": 1, "t": 1.0, "lr": 1e-5},
                _forward(True, [["d", "e"]], loss), {"kind": "step", "n": 2, "t": 2.0, "lr": 0.0},
                _forward(False, [["a", "b"], ["c", "c"]], 0.7, [2.0, 0.5], [0.0, 0.5])]
    r = sxs_logs.summarise_fidelity(run(["c", "c"], 0.60), run(["f", "g"], 0.61))
    assert [s["same_pairs"] for s in r["steps"]] == [False, True]
    assert r["same_pairs_batches"] == 1 and r["identical_pairs_trained_ref"] == 1
    assert r["max_loss_diff_same_pairs"] == pytest.approx(0.01)
    assert r["eval_after"]["ref_acc"] == 0.5  # the identical pair (equal scores) counts as wrong
    assert r["eval_after"]["max_score_diff"] == 0.0


@pytest.mark.slow
@pytest.mark.skipif(not DSCHAT, reason="set DSCHAT_PATH to a DeepSpeed-Chat checkout (applications/DeepSpeed-Chat "
                                       "of deepspeedai/DeepSpeedExamples) to run main.py beside it")
def test_main_reproduces_deepspeed_chat_step_by_step(tmp_path):
    steps = 6
    r = side_by_side.main(["--mode", "fidelity", "--dschat", DSCHAT, "--steps", str(steps), "--eval_pairs", "32",
                           "--workdir", str(tmp_path)])
    assert r["identical_pairs_trained_ref"] > 0  # the data holds pairs identical after truncation
    assert r["ref_micro_steps"] == r["new_micro_steps"] == steps
    assert r["same_pairs_batches"] == steps
    assert r["max_loss_diff"] < 1e-5
    for phase in ("eval_before", "eval_after"):
        e = r[phase]
        assert e["ref_pairs"] == e["new_pairs"] == e["common_pairs"] == 32
        assert e["ref_acc"] == e["new_acc"]
    printed = r["printed_acc"]
    assert printed["project"] == pytest.approx(printed["dschat"], abs=1e-4)
