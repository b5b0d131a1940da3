"""Per-source evaluation, named held-out sets (--eval_data_path) and the per-source training mix (--data_weights).

Run: python -m pytest tests/test_sources_eval.py -q
"""
import json
import os
import signal
import sys

import datasets
import numpy as np
import pytest
import torch

import main
from data import build_pair_datasets
from data.mix import mix_counts, mix_indices, parse_weights, source_names, weighted_train_set
from data.pairs import build_held_out_set
from data.sampler import train_sampler
from tests.fixtures import ROOT, finish, learnable_pairs, run_command, run_until, train_log, write_jsonl
from tests.test_resume import assert_same_model
from training.evaluation import eval_loader, evaluate
from utils import validate
from utils.errors import UserError

EOT = "<|endoftext|>"
RUN = ["--data_split", "0,1,0", "--max_seq_len", "64", "--per_device_train_batch_size", "8",
       "--gradient_accumulation_steps", "1", "--per_device_eval_batch_size", "16", "--learning_rate", "1e-3",
       "--dropout", "0.1"]  # with --data_weights 1 3: 96 pairs, 24 of small_pairs + 72 of kind, 12 steps


class ScoreByIds(torch.nn.Module):
    """A stand-in reward model: a row's score is a fixed function of its ids, so every pair has a known outcome."""

    def forward(self, input_ids, attention_mask):
        scores = ((input_ids * attention_mask).sum(dim=1) % 7).float() - 3.0
        half = input_ids.size(0) // 2
        return {"chosen_mean_scores": scores[:half], "rejected_mean_scores": scores[half:]}


def pair_rows(count, sources):
    rng = np.random.RandomState(0)
    return datasets.Dataset.from_list([{"chosen_input_ids": [2] + rng.randint(3, 50, rng.randint(2, 9)).tolist(),
                                        "rejected_input_ids": [2] + rng.randint(3, 50, rng.randint(2, 9)).tolist(),
                                        "source": int(rng.randint(sources))} for _ in range(count)])


@pytest.fixture(scope="module")
def kind_folder(tmp_path_factory):
    """A second source next to small_pair_folder: 32 train pairs, 16 test pairs."""
    folder = tmp_path_factory.mktemp("kind")
    write_jsonl(folder / "train.jsonl", learnable_pairs(32, seed=5))
    write_jsonl(folder / "test.jsonl", learnable_pairs(16, seed=6))
    return str(folder)


@pytest.fixture(scope="module")
def held_out_file(tmp_path_factory):
    return write_jsonl(tmp_path_factory.mktemp("held") / "hh_like.jsonl", learnable_pairs(20, seed=7))


def test_per_source_metrics_recombine_to_the_overall_ones():
    pairs = pair_rows(45, 3)
    loader, num_real = eval_loader(pairs, 8, pad_token_id=1)  # 45 rows: the last batch is partial
    metrics = evaluate(ScoreByIds(), loader, torch.device("cpu"), num_real, source_names=["a", "b", "c"])
    parts = metrics["by_source"]
    assert list(parts) == ["a", "b", "c"]
    assert [parts[n]["num_pairs"] for n in parts] == np.bincount(pairs["source"], minlength=3).tolist()
    assert sum(p["num_pairs"] for p in parts.values()) == metrics["num_pairs"] == 45
    assert sum(p["ties"] for p in parts.values()) == metrics["ties"] > 0
    for key in ("accuracy", "chosen_mean", "rejected_mean", "margin"):
        recombined = sum(p[key] * p["num_pairs"] for p in parts.values()) / metrics["num_pairs"]
        assert recombined == pytest.approx(metrics[key], abs=1e-12), key
    assert len({p["accuracy"] for p in parts.values()}) > 1  # the sources differ: a breakdown a user can read
    assert "by_source" not in evaluate(ScoreByIds(), loader, torch.device("cpu"), num_real)


def test_pairs_remember_their_source_and_the_default_order_stays(opt_tokenizer, small_pair_folder, kind_folder,
                                                                   tmp_path):
    train, eval_ = build_pair_datasets([small_pair_folder, kind_folder], "0,1,0", 1234, opt_tokenizer, 64,
                                       str(tmp_path / "cache"), EOT)
    texts = {opt_tokenizer.decode(ids): 0 for ids in _ids(opt_tokenizer, small_pair_folder, "train.jsonl")}
    texts.update({opt_tokenizer.decode(ids): 1 for ids in _ids(opt_tokenizer, kind_folder, "train.jsonl")})
    assert train["source"] == [texts[opt_tokenizer.decode(ids)] for ids in train["chosen_input_ids"]]
    assert np.bincount(train["source"]).tolist() == [64, 32] and np.bincount(eval_["source"]).tolist() == [16, 16]
    assert source_names([small_pair_folder, kind_folder + "/"]) == [os.path.basename(small_pair_folder),
                                                                     os.path.basename(kind_folder)]
    assert source_names(["x/train.jsonl", "y/train.jsonl"]) == ["x/train.jsonl", "y/train.jsonl"]  # no clash


def _ids(tokenizer, folder, name):
    with open(os.path.join(folder, name)) as f:
        rows = [json.loads(line) for line in f]
    return [tokenizer(r["prompt"] + r["chosen"] + EOT, truncation=True, max_length=64)["input_ids"] for r in rows]


def test_a_held_out_set_is_every_pair_of_its_source(opt_tokenizer, small_pair_folder, held_out_file, tmp_path):
    cache = str(tmp_path / "cache")
    folder = build_held_out_set(small_pair_folder, 1234, opt_tokenizer, 64, cache, EOT, 1, False, "deepspeed_chat")
    assert len(folder) == 64 + 16 and set(folder["source"]) == {0}  # train.jsonl, then test.jsonl
    one_file = build_held_out_set(held_out_file, 1234, opt_tokenizer, 64, cache, EOT, 1, False, "deepspeed_chat")
    assert len(one_file) == 20  # not cut 9:1, nor by --data_split
    again = build_held_out_set(held_out_file, 7, opt_tokenizer, 64, cache, EOT, 1, False, "deepspeed_chat")
    assert again.cache_files == one_file.cache_files  # the seed does not change a held-out set


def test_weighted_mix_draws_the_requested_shares():
    sources = np.repeat([0, 1, 2], [1000, 300, 50])
    for weights in ([1, 1, 1], [5, 1, 0], [0.2, 0.3, 0.5]):
        indices = mix_indices(sources, weights, seed=1234)
        counts = np.bincount(sources[indices], minlength=3)
        assert len(indices) == len(sources)
        assert np.abs(counts - np.array(weights) / sum(weights) * len(sources)).max() < 1  # rounding only
        for s in range(3):  # every pair of a source used as evenly as its count allows
            uses = np.bincount(indices[sources[indices] == s], minlength=len(sources))[sources == s]
            assert uses.max() - uses.min() <= 1
    assert (mix_indices(sources, [5, 1, 0], 1234) == mix_indices(sources, [5, 1, 0], 1234)).all()
    assert (mix_indices(sources, [5, 1, 1], 1234) != mix_indices(sources, [5, 1, 1], 99)).any()
    assert mix_counts(10, [1, 1, 1]) == [4, 3, 3]


def test_the_training_sampler_sees_the_weighted_mix():
    pairs = pair_rows(400, 2)
    weighted, line = weighted_train_set(pairs, [1, 3], ["a", "b"], seed=1234)
    before = np.bincount(pairs["source"]).tolist()
    assert line == (f"data: weights a=1, b=3 -> pairs per source a 100 of {before[0]}, b 300 of {before[1]} "
                    "(400 pairs per epoch)")
    sampled = [weighted[i]["source"] for i in train_sampler(weighted, 8, seed=1234, num_replicas=1, rank=0)]
    assert np.bincount(sampled).tolist() == [100, 300]
    grouped = train_sampler(weighted, 8, group_by_length=True, seed=1234, num_replicas=1, rank=0)
    lengths = [max(len(row["chosen_input_ids"]), len(row["rejected_input_ids"])) for row in weighted]
    assert grouped.lengths.tolist() == lengths  # --group_by_length sorts the mix's pairs, not the unweighted ones
    first_half = np.bincount(sampled[:200], minlength=2)[1] / 200  # shuffled, not one source after the other
    assert abs(first_half - 0.75) < 4 * (0.75 * 0.25 / 200) ** 0.5


@pytest.mark.parametrize("flags, message", [
    (["--eval_data_path", "hh"], "must be NAME=PATH"),
    (["--eval_data_path", "a b=x.jsonl"], "must be NAME=PATH"),
    (["--eval_data_path", "a={held}", "a={held}"], "names 'a' twice"),
    (["--eval_data_path", "a=/no/such/file.jsonl"], "is no file or folder"),
    (["--eval_data_path", "a={small}"], "is also a --data_path"),
    (["--data_weights", "1"], "1 weight(s) for 2 --data_path sources ({s}, {k})"),
    (["--data_weights", "1", "-2"], "the weight of {k} must be a finite number >= 0, not '-2'"),
    (["--data_weights", "0", "0"], "at least one weight must be > 0"),
    (["--data_weights", "{s}=1", "other=2"], "unknown: other"),
    (["--data_weights", "{s}=1", "2"], "as NAME=W or none of them"),
])
def test_bad_source_flags_are_named(flags, message, small_pair_folder, kind_folder, held_out_file):
    names = {"held": held_out_file, "small": small_pair_folder, "s": os.path.basename(small_pair_folder),
             "k": os.path.basename(kind_folder)}
    argv = ["--output_dir", "-", "--data_path", small_pair_folder, kind_folder]
    args, _ = main.parse_args(argv + [f.format(**names) for f in flags])
    problems = validate.flag_problems(args)
    assert len(problems) == 1 and message.format(**names) in problems[0], problems


def test_named_weights_mean_the_same_as_weights_in_order(small_pair_folder, kind_folder):
    paths = [small_pair_folder, kind_folder]
    named = [f"{os.path.basename(kind_folder)}=3", f"{os.path.basename(small_pair_folder)}=1"]
    assert parse_weights(named, paths) == parse_weights(["1", "3"], paths) == [1.0, 3.0]


def test_weights_need_several_sources(small_pair_folder):
    with pytest.raises(UserError, match="two or more --data_path"):
        parse_weights(["1"], [small_pair_folder])


def test_a_flag_error_comes_before_the_model_loads(small_pair_folder, held_out_file, tmp_path, capsys,
                                                  clean_dist_env):
    with pytest.raises(SystemExit) as stopped:
        main.main(["--model_name_or_path", str(tmp_path / "no_model"), "--output_dir", str(tmp_path / "out"),
                   "--data_path", small_pair_folder, "--eval_data_path", f"x={held_out_file}", "y=/nowhere"])
    assert stopped.value.code == 1
    err = capsys.readouterr().err
    assert "--eval_data_path 'y=/nowhere': '/nowhere' is no file or folder" in err and "no_model" not in err


def command(tiny_opt, sources, held_out, out, weights=("1", "3"), *extra):
    return [sys.executable, os.path.join(ROOT, "main.py"), "--model_name_or_path", tiny_opt, "--data_path", *sources,
            "--eval_data_path", f"hh_like={held_out}", "--output_dir", str(out), "--data_weights", *weights,
            "--data_output_path", str(out.parent / "cache"), *RUN, *extra]


@pytest.fixture(scope="module")
def weighted_run(tiny_opt, small_pair_folder, kind_folder, held_out_file, tmp_path_factory):
    """(output folder, log) of an uninterrupted run: two sources weighted 1:3, one named held-out set."""
    out = tmp_path_factory.mktemp("weighted") / "out"
    return out, finish(command(tiny_opt, [small_pair_folder, kind_folder], held_out_file, out, ("1", "3"),
                               "--log_rows", "--enable_tensorboard", "--tensorboard_path", out.parent / "tb"))


def test_a_weighted_run_reports_sources_and_held_out_sets(weighted_run, small_pair_folder, kind_folder):
    out, log = weighted_run
    small, kind = os.path.basename(small_pair_folder), os.path.basename(kind_folder)
    assert f"data: weights {small}=1, {kind}=3 -> pairs per source {small} 24 of 64, {kind} 72 of 32" in log
    assert "data: held-out set hh_like: 20 pairs from" in log
    lines = [line for line in log.splitlines() if line.startswith("eval (")]
    assert len(lines) == 4  # before training and after the epoch: the eval split, then hh_like
    assert f"| by source: {small} " in lines[0] and f"(16), {kind} " in lines[0]
    assert lines[1].startswith("eval (before training) hh_like | acc") and "pairs 20 |" in lines[1]
    evals = train_log(out, "rewards")
    assert len(evals) == 2 and len(train_log(out, "train")) == 12  # 96 pairs per epoch, batches of 8
    for entry in evals:
        parts = entry["by_source"].values()
        assert sum(p["num_pairs"] for p in parts) == entry["num_pairs"] == 32
        assert sum(p["accuracy"] * p["num_pairs"] for p in parts) / 32 == pytest.approx(entry["accuracy"])
        assert entry["eval_sets"]["hh_like"]["num_pairs"] == 20
    trained = [row for line in (out / "rows_rank0.jsonl").read_text().splitlines() for row in json.loads(line)["rows"]]
    cache = next(p for p in (out.parent / "cache").iterdir() if (p / "train").is_dir())
    sources = np.asarray(datasets.load_from_disk(str(cache / "train"))["source"])  # rows of the cache
    assert np.bincount(sources).tolist() == [64, 32]
    assert np.bincount(sources[trained]).tolist() == [24, 72]  # the requested 1:3 of 96 pairs
    uses = np.bincount(trained, minlength=len(sources))
    assert sorted(set(uses[sources == 0])) == [0, 1] and sorted(set(uses[sources == 1])) == [2, 3]
    results = json.loads((out / "train_results.json").read_text())
    assert results["eval_sets"]["hh_like"] == evals[-1]["eval_sets"]["hh_like"]
    assert f"rewards/by_source/{kind}/accuracy" in _tensorboard_tags(out.parent / "tb")
    assert "rewards/eval_sets/hh_like/accuracy" in _tensorboard_tags(out.parent / "tb")
    assert results["by_source"] == evals[-1]["by_source"]


def test_evaluate_py_reports_the_same_breakdown_and_held_out_sets(weighted_run, small_pair_folder, kind_folder,
                                                                   held_out_file, clean_dist_env, capsys):
    from evaluation_scripts import evaluate as evaluate_py
    out = weighted_run[0]
    evaluate_py.main([str(out), "--data_path", small_pair_folder, kind_folder, "--eval_data_path",
                      f"hh_like={held_out_file}", "--no_plots"])
    scored = json.loads((out / "eval_results.json").read_text())
    trained = json.loads((out / "train_results.json").read_text())
    for name, metrics in trained["by_source"].items():
        assert scored["by_source"][name] == pytest.approx(metrics, abs=1e-5), name
    assert scored["eval_sets"]["hh_like"] == pytest.approx(trained["eval_sets"]["hh_like"], abs=1e-5)
    with pytest.raises(SystemExit):
        evaluate_py.main([str(out), "--eval_data_path", f"train={kind_folder}"])
    assert "is also the training run's --data_path" in capsys.readouterr().err


def _tensorboard_tags(folder):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    events = EventAccumulator(str(next(folder.rglob("events.out.tfevents.*")).parent))
    events.Reload()
    return events.Tags()["scalars"]


def test_a_held_out_set_changes_no_training_number(weighted_run, tiny_opt, small_pair_folder, kind_folder, tmp_path):
    out = tmp_path / "out"
    cmd = command(tiny_opt, [small_pair_folder, kind_folder], "-", out)
    finish([arg for arg in cmd if arg not in ("--eval_data_path", "hh_like=-")])
    assert_same_model(weighted_run[0], out)  # dropout on: the eval passes of hh_like left the RNG as it was
    assert "eval_sets" not in train_log(out, "rewards")[0]


def test_a_weighted_run_resumes_exactly_and_refuses_other_weights(weighted_run, tiny_opt, small_pair_folder,
                                                                  kind_folder, held_out_file, tmp_path):
    out, sources = tmp_path / "out", [small_pair_folder, kind_folder]
    cmd = command(tiny_opt, sources, held_out_file, out, ("1", "3"), "--save_steps", "5")
    code, log = run_until(cmd, "saved checkpoint", 1, signal.SIGKILL)
    assert code == -signal.SIGKILL, log[-2000:]
    other = command(tiny_opt, sources, held_out_file, out, ("1", "2"), "--save_steps", "5")
    refused = run_command(other + ["--resume_from_checkpoint", "auto"], timeout=300)
    assert refused.returncode == 1 and "saved by a run with other settings" in refused.stdout
    assert "data_weights: ['1', '3'] then, ['1', '2'] now" in refused.stdout
    log = finish(cmd + ["--resume_from_checkpoint", "auto"])
    assert "resumed from" in log and "step-5" in log
    assert_same_model(weighted_run[0], out)
    resumed, reference = train_log(out, "rewards")[-1], train_log(weighted_run[0], "rewards")[-1]
    for name, metrics in reference["by_source"].items():
        assert resumed["by_source"][name] == pytest.approx(metrics, abs=1e-6), name
    assert resumed["eval_sets"]["hh_like"] == pytest.approx(reference["eval_sets"]["hh_like"], abs=1e-6)
