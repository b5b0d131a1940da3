"""The core: one settings object and one model recipe for every entry point, the plain step, and the CPU
accelerations as one switchable, version-gated layer that changes no number.

Run: python -m pytest tests/test_core.py -q      (about two minutes on 2 cores)
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
from model.tiny import CHAT_CORPUS, build_tiny_chat
from tests.fixtures import ROOT, run_command, run_main, step_losses
from training.accelerations import ACCELERATIONS

# A tiny run: 64 pairs, 8 optimizer steps of 8, fp32 without dropout (so every acceleration may apply).
PLAIN_FLAGS = ["--data_split", "0,10,0", "--max_seq_len", "64", "--per_device_train_batch_size", "8",
               "--gradient_accumulation_steps", "1", "--dtype", "fp32", "--dropout", "0", "--learning_rate", "1e-3"]


def train(tiny_opt, data, out, *flags, prelude=None):
    """main.py on `data`; `prelude` is Python run in the same process first (to fake a library version)."""
    args = ["--model_name_or_path", tiny_opt, "--data_path", data, "--output_dir", out,
            "--data_output_path", os.path.join(out, "cache"), *PLAIN_FLAGS, *flags]
    if prelude is None:
        result = run_main(args)
    else:
        code = (f"import sys, runpy; sys.argv = ['main.py'] + {[str(a) for a in args]!r}; {prelude}; "
                f"runpy.run_path({os.path.join(ROOT, 'main.py')!r}, run_name='__main__')")
        result = run_command([sys.executable, "-c", code], timeout=600)
    assert result.returncode == 0, result.stdout[-3000:]
    line = next(line for line in result.stdout.splitlines() if line.startswith("cpu accelerations:"))
    return step_losses(out), line


@pytest.fixture(scope="module")
def runs(tiny_opt, small_pair_folder, tmp_path_factory):
    root = tmp_path_factory.mktemp("core_runs")
    fake = ("import training.accelerations as a; "
            "a.installed_version = lambda package: {'torch': '2.99.0', 'transformers': '5.99.0', "
            "'deepspeed': '0.99.0'}[package]")
    return {"plain": train(tiny_opt, small_pair_folder, str(root / "plain"), "--cpu_accelerations", "off"),
            # every rule at work: split wherever it saves padding, every sub-batch's prompts shared
            "accelerated": train(tiny_opt, small_pair_folder, str(root / "accelerated"), "--sub_batches", "0",
                                 "--share_prompt", "on"),
            "unverified": train(tiny_opt, small_pair_folder, str(root / "unverified"), prelude=fake)}


def test_all_off_flag_gives_the_plain_step_and_says_so(runs):
    losses, line = runs["plain"]
    assert line == "cpu accelerations: none (the plain step); off: all (--cpu_accelerations off)"
    assert len(losses) == 8


def test_accelerations_change_no_number(runs):
    plain, _ = runs["plain"]
    accelerated, line = runs["accelerated"]
    on = line.split(";")[0].removeprefix("cpu accelerations: ").split(", ")
    assert {"sub_batches", "share_prompt", "eager_attention", "skip_allreduce", "fused_adamw"} <= set(on)
    # fp32 rounding of other summation orders, carried by Adam over 8 steps: 6e-8 measured
    torch.testing.assert_close(torch.tensor(accelerated), torch.tensor(plain), rtol=0, atol=1e-5)


def test_an_unverified_library_version_turns_each_internals_dependent_acceleration_off(runs):
    plain, _ = runs["plain"]
    losses, line = runs["unverified"]
    dependent = [name for name, (_, libraries) in ACCELERATIONS.items() if libraries]
    assert line.startswith("cpu accelerations: fused_adamw; off: ")  # the one that uses public API only
    for name in dependent:
        library = ACCELERATIONS[name][1][0]
        assert f"{name} (verified on {library} " in line and ".x, found " in line, name
    torch.testing.assert_close(torch.tensor(losses), torch.tensor(plain), rtol=0, atol=1e-5)


# ---- one recipe: a chat run's checkpoint and its saved model export the same ---------------------------------

def test_a_chat_runs_checkpoint_exports_like_its_model(tmp_path):
    rows, _ = synthetic.make_splits(200, synthetic.CHAT_NAME)
    corpus = CHAT_CORPUS + [m["content"] for row in rows for m in row["chosen"] + row["rejected"][-1:]]
    base = build_tiny_chat(str(tmp_path / "base"), "llama", corpus=corpus)
    out = tmp_path / "model"
    result = run_main(["--model_name_or_path", base, "--data_path", "synthetic/conversations:100", "--output_dir",
                       out, "--data_output_path", tmp_path / "cache", "--data_split", "0,10,0", "--max_seq_len", "256",
                       "--per_device_train_batch_size", "9", "--gradient_accumulation_steps", "1",
                       "--learning_rate", "2e-3", "--save_steps", "5"])
    assert result.returncode == 0, result.stdout[-3000:]
    assert "end-token rule last_token" in result.stdout
    steps = json.loads((out / "train_results.json").read_text())["optimizer_steps"]
    assert steps == 10
    exports = {}
    for name, source in (("model", out), ("checkpoint", out / "checkpoints" / f"step-{steps}")):
        export_main([str(source), str(tmp_path / f"hf_{name}")])
        exports[name] = json.loads((tmp_path / f"hf_{name}" / "config.json").read_text())
    for config in exports.values():  # eval statistics exist only after the final evaluation
        for key in ("reward_mean", "reward_std"):
            config["reward_model"].pop(key, None)
    assert exports["checkpoint"] == exports["model"]
    settings = exports["model"]["reward_model"]
    assert settings["end_token_rule"] == "last_token" and settings["end_of_conversation_token"] == ""
    assert settings["pad_token_id"] == exports["model"]["pad_token_id"] != exports["model"]["eos_token_id"]

    _, test = synthetic.make_splits(100, synthetic.CHAT_NAME)
    tokenizer = AutoTokenizer.from_pretrained(tmp_path / "model")
    texts = [ChatRenderer(tokenizer)(row[side]) for row in test[:4] for side in ("chosen", "rejected")]
    scores = {}
    for name in exports:
        classifier = AutoModelForSequenceClassification.from_pretrained(tmp_path / f"hf_{name}").eval()
        batch = AutoTokenizer.from_pretrained(tmp_path / f"hf_{name}")(texts, padding=True, return_tensors="pt")
        with torch.no_grad():
            scores[name] = classifier(**batch).logits[:, 0].float()
    torch.testing.assert_close(scores["checkpoint"], scores["model"], rtol=0, atol=1e-6)
