"""A checkpoint saved by N ranks resumes on M ranks (DeepSpeed's universal checkpoint for partitioned
optimizer states) and trains exactly the rows not yet seen; a checkpoint exports without training.

Run: python -m pytest tests/test_elastic_resume.py -q    (slow: 2-rank runs)
"""
import collections
import json
import os
import shutil
import signal
import sys

import pytest
import torch
from safetensors.torch import load_file

from model.reward_model import RewardModel
from model.scoring import score_texts
from tests.fixtures import ROOT, finish, run_until
from training.checkpoint import reward_model_from_checkpoint
from utils.dist import free_port

WEIGHT_TOLERANCE = 1e-4  # fp32; the 2-rank and 1-rank uninterrupted runs themselves differ by ~2.5e-5


@pytest.fixture(scope="module")
def data(small_pair_folder):
    return small_pair_folder


def command(tiny_opt, data, out, ranks, stage, *extra):
    """64 pairs, global batch 8 (micro 4 x ranks x accumulation): 8 optimizer steps, fp32, no dropout, the
    card's learning rate (with Adam a larger one turns fp32 rounding into weight differences of ~lr)."""
    launcher = [sys.executable]
    if ranks > 1:
        deepspeed = shutil.which("deepspeed") or os.path.join(os.path.dirname(sys.executable), "deepspeed")
        launcher = [deepspeed, "--num_gpus", str(ranks), "--master_port", free_port()]
    return launcher + [os.path.join(ROOT, "main.py"), "--model_name_or_path", tiny_opt, "--data_path", data,
                       "--output_dir", str(out), "--data_output_path", os.path.join(data, "cache"),
                       "--data_split", "0,1,0", "--max_seq_len", "64", "--per_device_train_batch_size", "4",
                       "--gradient_accumulation_steps", str(2 // ranks),
                       "--dtype", "fp32", "--dropout", "0", "--zero_stage", str(stage), "--log_rows", *extra]


def rows_seen(out, up_to_step=None):
    """Every (rank's) row an optimizer step trained on, as a multiset."""
    seen = collections.Counter()
    for name in os.listdir(out):
        if name.startswith("rows_rank"):
            for line in open(os.path.join(out, name)):
                entry = json.loads(line)
                if up_to_step is None or entry["step"] <= up_to_step:
                    seen.update(entry["rows"])
    return seen


@pytest.mark.slow
@pytest.mark.parametrize("stage, before, after", [(2, 2, 1), (3, 2, 1), (2, 1, 2)])
def test_a_killed_run_resumes_on_another_number_of_ranks(stage, before, after, tiny_opt, data, tmp_path):
    reference, out = tmp_path / "reference", tmp_path / "out"
    finish(command(tiny_opt, data, reference, 1, stage))
    code, log = run_until(command(tiny_opt, data, out, before, stage, "--save_steps", "4"),
                          "saved checkpoint", 1, signal.SIGKILL)
    assert code != 0 and not (out / "model.safetensors").exists(), log[-2000:]
    before_kill = rows_seen(out, up_to_step=4)
    for name in os.listdir(out):  # keep only what the checkpoint covers
        if name.startswith("rows_rank"):
            os.remove(out / name)
    log = finish(command(tiny_opt, data, out, after, stage, "--save_steps", "4", "--resume_from_checkpoint", "auto"))
    assert "resumed from" in log and "step 4" in log
    assert before_kill + rows_seen(out) == rows_seen(reference)  # every row once, none twice
    assert sum(rows_seen(reference).values()) == 64
    ours, theirs = load_file(str(out / "model.safetensors")), load_file(str(reference / "model.safetensors"))
    assert max((ours[k] - theirs[k]).abs().max().item() for k in theirs) < WEIGHT_TOLERANCE
    results = [json.loads((o / "train_results.json").read_text()) for o in (out, reference)]
    assert results[0]["accuracy"] == results[1]["accuracy"] and results[0]["optimizer_steps"] == 8
    if stage == 3:  # the run's last checkpoint (ZeRO-3 shards) exports to the model it then saved
        exported = reward_model_from_checkpoint(str(out / "checkpoints" / "step-8"), str(tmp_path / "exported"))
        texts = [" Human: hi Assistant: great, thanks!<|endoftext|>", " Human: hi Assistant: awful.<|endoftext|>"]
        scores = []
        for folder in (exported, str(out)):
            model = RewardModel.from_pretrained(folder)
            from transformers import AutoTokenizer
            tokenizer = AutoTokenizer.from_pretrained(folder)
            scores.append(score_texts(model, tokenizer, texts, 64))
        torch.testing.assert_close(scores[0], scores[1], atol=1e-5, rtol=0)


def test_a_changed_global_batch_is_refused_naming_what_to_keep(tiny_opt, data, tmp_path):
    from tests.fixtures import run_main
    out = tmp_path / "out"
    first = command(tiny_opt, data, out, 1, 2, "--save_steps", "4")[2:]
    finish([sys.executable, os.path.join(ROOT, "main.py")] + first)
    os.remove(out / "model.safetensors")
    changed = first + ["--resume_from_checkpoint", "auto"]
    changed[changed.index("--gradient_accumulation_steps") + 1] = "1"  # global batch 8 -> 4
    result = run_main(changed)
    assert result.returncode == 1
    assert "global batch (micro batch x ranks x accumulation): 8 then, 4 now" in result.stdout.splitlines()[-1]
