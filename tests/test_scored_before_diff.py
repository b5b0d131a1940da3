"""Pairs whose score is read at or before their first difference are found when the data is built,
not as a NaN at step 1. Run: python -m pytest tests/test_scored_before_diff.py -q
"""
from types import SimpleNamespace

import pytest
import torch

from data import build_pair_datasets
from tests.fixtures import learnable_pairs, run_main, write_jsonl
from utils.errors import UserError

EOT = "<|endoftext|>"


def pair_folder(tmp_path, rows):
    write_jsonl(tmp_path / "train.jsonl", rows)
    write_jsonl(tmp_path / "test.jsonl", rows)
    return str(tmp_path)


def eos_in_prompt(rows):
    """A chat-style prompt whose turns end with OPT's EOS `</s>` (= its PAD)."""
    return [dict(r, prompt=" Human: hi</s> Assistant: hello</s>" + r["prompt"]) for r in rows]


def test_eos_inside_the_shared_prompt_stops_before_training(opt_tokenizer, tmp_path):
    folder = pair_folder(tmp_path, eos_in_prompt(learnable_pairs(20, seed=1)))
    with pytest.raises(UserError, match=r"20 of 20 train pairs are scored at or before the first token where "
                                        r"chosen and rejected differ.*PAD id 2 \('</s>'\).*EOS/PAD token inside"):
        build_pair_datasets([folder], "0,1,0", 1234, opt_tokenizer, 64, str(tmp_path / "cache"), EOT, 1)


def test_a_few_such_pairs_are_dropped_with_a_warning(opt_tokenizer, tmp_path, capsys):
    rows = learnable_pairs(20, seed=1)
    folder = pair_folder(tmp_path, eos_in_prompt(rows[:3]) + rows[3:])
    train, _ = build_pair_datasets([folder], "0,1,0", 1234, opt_tokenizer, 64, str(tmp_path / "cache"), EOT, 1)
    out = capsys.readouterr().out
    assert "3 scored before they differ" in out and "warning: 3 of 20 train pairs are scored" in out
    assert len(train) == 17


def test_opt_with_num_padding_at_beginning_0_is_an_error_naming_the_flag(tiny_opt, tmp_path):
    folder = pair_folder(tmp_path, learnable_pairs(20, seed=1))
    result = run_main(["--model_name_or_path", tiny_opt, "--data_path", folder, "--data_split", "0,1,0",
                       "--num_padding_at_beginning", "0", "--max_seq_len", "64",
                       "--data_output_path", str(tmp_path / "cache"), "--output_dir", str(tmp_path / "out")])
    assert result.returncode == 1
    error = result.stdout.strip().splitlines()[-1]
    assert error.startswith("error: 20 of 20 train pairs are scored at or before") and \
        "--num_padding_at_beginning 0 (1 when the tokenizer's BOS equals its PAD" in error, error
    assert "nan" not in result.stdout and "Traceback" not in result.stdout
    assert not (tmp_path / "out" / "model.safetensors").exists()


def test_a_nonfinite_loss_names_its_cause():
    from training.loop import nonfinite_cause
    model = SimpleNamespace(PAD_ID=2, num_padding_at_beginning=1, end_token_rule="deepspeed_chat")
    # pair 1: the second </s> (position 2) comes before the first difference (position 3): empty span
    ids = torch.tensor([[2, 5, 6, 7, 2], [2, 5, 2, 7, 8], [2, 5, 9, 2, 2], [2, 5, 2, 9, 2]])
    assert nonfinite_cause([(4, ids)], model).startswith(
        "Data: 1 pair(s) are scored at or before the token where chosen and rejected first differ, so their "
        "loss span is empty (0/0): micro-batch 4 pair 1.")
    assert "numeric blow-up" in nonfinite_cause([(4, ids[[0, 2]])], model)
