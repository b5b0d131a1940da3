"""build_pair_datasets end to end on small local files: split, blend, drop, cache.

Run: .venv/bin/python -m pytest tests/test_data_pairs.py -q
"""
import json
import os

import numpy as np
import pytest

import data.pairs
import utils.dist
from data import PairCollator, build_pair_datasets
from utils.errors import UserError

EOT = "<|endoftext|>"


def rows(count, tag):
    return [{"prompt": f" Human: {tag} question {i}? Assistant:", "chosen": f" kind answer {i}",
             "rejected": f" rude reply {i}"} for i in range(count)]


def write_jsonl(path, items):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in items))
    return str(path)


def folder(tmp_path, name, train, test):
    write_jsonl(tmp_path / name / "train.jsonl", train)
    write_jsonl(tmp_path / name / "test.jsonl", test)
    return str(tmp_path / name)


def perm(seed, size):
    p = np.arange(size)
    np.random.RandomState(seed).shuffle(p)
    return p.tolist()


def ids(tokenizer, items, side, max_len=512, eot=EOT):
    return [tokenizer(r["prompt"] + r[side] + eot, truncation=True, max_length=max_len)["input_ids"] for r in items]


def build(tokenizer, paths, tmp_path, split="2,4,4", max_len=512, eot=EOT, seed=1234):
    return build_pair_datasets(paths, split, seed, tokenizer, max_len, str(tmp_path / "cache"), eot)


def test_phase2_rows_come_in_the_split_rules_order(opt_tokenizer, tmp_path):
    train, test = rows(20, "train"), rows(10, "test")
    train_ds, eval_ds = build(opt_tokenizer, [folder(tmp_path, "src", train, test)], tmp_path)
    # 20 rows, "2,4,4": boundaries 0, 4, 12, 20; 10 rows: 0, 2, 6, 10.
    want_train = [train[i] for i in perm(1234, 20)[4:12]]
    want_eval = [test[i] for i in perm(1234, 10)[2:6]]
    assert train_ds.column_names == ["chosen_input_ids", "rejected_input_ids", "margin", "source"]
    assert train_ds["chosen_input_ids"][:] == ids(opt_tokenizer, want_train, "chosen")
    assert train_ds["rejected_input_ids"][:] == ids(opt_tokenizer, want_train, "rejected")
    assert eval_ds["chosen_input_ids"][:] == ids(opt_tokenizer, want_eval, "chosen")
    assert all(f["filename"].startswith(str(tmp_path / "cache")) for f in train_ds.cache_files)  # memory-mapped
    batch = PairCollator(opt_tokenizer.pad_token_id)([train_ds[0], train_ds[1]])
    assert batch["input_ids"].shape[0] == 4 and batch["input_ids"][0, 0] == opt_tokenizer.bos_token_id


def test_single_file_is_cut_nine_to_one_before_the_phase_split(opt_tokenizer, tmp_path):
    items = rows(30, "all")
    train_ds, eval_ds = build(opt_tokenizer, [write_jsonl(tmp_path / "all.jsonl", items)], tmp_path)
    cut = perm(1234, 30)
    train_part, eval_part = cut[:27], cut[27:]
    # 27 rows, "2,4,4": boundaries 0, 5, 16, 27; 3 rows: 0, 1, 2, 3.
    want_train = [items[train_part[i]] for i in perm(1234, 27)[5:16]]
    want_eval = [items[eval_part[i]] for i in perm(1234, 3)[1:2]]
    assert train_ds["chosen_input_ids"][:] == ids(opt_tokenizer, want_train, "chosen")
    assert eval_ds["chosen_input_ids"][:] == ids(opt_tokenizer, want_eval, "chosen")


def test_two_paths_are_split_each_then_concatenated_and_permuted(opt_tokenizer, tmp_path):
    a_train, a_test, b_train, b_test = rows(10, "a"), rows(4, "a-test"), rows(10, "b"), rows(4, "b-test")
    paths = [folder(tmp_path, "a", a_train, a_test), folder(tmp_path, "b", b_train, b_test)]
    train_ds, eval_ds = build(opt_tokenizer, paths, tmp_path, split="0,10,0")
    joined = [a_train[i] for i in perm(1234, 10)] + [b_train[i] for i in perm(1234, 10)]
    assert train_ds["chosen_input_ids"][:] == ids(opt_tokenizer, [joined[i] for i in perm(1234, 20)], "chosen")
    joined = [a_test[i] for i in perm(1234, 4)] + [b_test[i] for i in perm(1234, 4)]
    assert eval_ds["chosen_input_ids"][:] == ids(opt_tokenizer, [joined[i] for i in perm(1234, 8)], "chosen")


def test_cache_is_reused_and_rebuilt_when_an_input_changes(opt_tokenizer, tmp_path, capsys):
    src = folder(tmp_path, "src", rows(20, "x"), rows(10, "y"))

    def cache_of(**kwargs):
        train_ds, _ = build(opt_tokenizer, [src], tmp_path, **kwargs)
        out = capsys.readouterr().out
        return os.path.dirname(os.path.dirname(train_ds.cache_files[0]["filename"])), out

    first, out = cache_of()
    assert "built the tokenised pairs" in out
    again, out = cache_of()
    assert again == first and "reusing the tokenised pairs" in out and "Tokenising" not in out
    for change in ({"max_len": 48}, {"eot": "</s>"}, {"seed": 1}, {"split": "1,4,4"}):
        other, out = cache_of(**change)
        assert other != first and "built the tokenised pairs" in out, change
    write_jsonl(tmp_path / "src" / "test.jsonl", rows(10, "changed"))
    other, out = cache_of()
    assert other != first and "built the tokenised pairs" in out


def test_a_crash_while_building_leaves_no_cache_that_looks_valid(opt_tokenizer, tmp_path, monkeypatch):
    src = folder(tmp_path, "src", rows(20, "x"), rows(10, "y"))

    def crash(*args):
        raise KeyboardInterrupt

    monkeypatch.setattr(data.pairs, "_drop_bad_pairs", crash)
    with pytest.raises(KeyboardInterrupt):
        build(opt_tokenizer, [src], tmp_path)
    assert os.listdir(tmp_path / "cache") == []
    monkeypatch.undo()
    train_ds, _ = build(opt_tokenizer, [src], tmp_path)
    assert len(train_ds) == 8


def test_unusable_pairs_are_dropped_identical_ones_kept_unless_asked(opt_tokenizer, tmp_path, capsys):
    good = [{"prompt": " Q:", "chosen": f" yes {i}", "rejected": f" no {i}"} for i in range(4)]
    same_start = {"prompt": " Human: a long shared question that fills the window? Assistant:",
                  "chosen": " kind", "rejected": " rude"}
    empty = {"prompt": "", "chosen": "", "rejected": " something"}
    same_text = {"prompt": " Q:", "chosen": " yes", "rejected": " yes"}
    items = good + [same_start, empty, same_text]
    src = folder(tmp_path, "src", items, items)
    train_ds, _ = build(opt_tokenizer, [src], tmp_path, split="0,1,0", max_len=8)
    out = capsys.readouterr().out
    assert ("train: kept 6 of 7 pairs: dropped 1 empty, 0 diverge at first token, 0 scored before they differ; "
            "kept 2 identical pairs as DeepSpeed-Chat does (--drop_identical_pairs drops them)") in out
    assert len(train_ds) == 6  # DeepSpeed-Chat keeps identical pairs: same permutation, steps and schedule
    train_ds, _ = build_pair_datasets([src], "0,1,0", 1234, opt_tokenizer, 8, str(tmp_path / "cache"), EOT,
                                      drop_identical=True)
    assert ("train: kept 4 of 7 pairs: dropped 1 chosen same as rejected, 1 identical after truncation, 1 empty, "
            "0 diverge at first token, 0 scored before they differ") in capsys.readouterr().out
    assert len(train_ds) == 4
    assert all(c != r for c, r in zip(train_ds["chosen_input_ids"], train_ds["rejected_input_ids"]))


def test_pairs_that_differ_at_the_first_token_are_unusable():
    texts = [("Yes", "No")] * 2
    codes = data.pairs._pair_codes(texts, [[10, 11], [2, 10]], [[12, 11], [2, 12]], pad_id=1,
                                   num_padding_at_beginning=0)
    assert codes == [data.pairs.FIRST_TOKEN, data.pairs.KEEP]


def test_no_pair_left_is_an_error(opt_tokenizer, tmp_path):
    items = [{"prompt": " Human: same long start for every answer here? Assistant:", "chosen": f" a{i}",
              "rejected": f" b{i}"} for i in range(4)]
    with pytest.raises(UserError, match=r"src': no usable train pairs: 2 rows; they gave 2 pairs, none usable: "
                                        r"2 identical after truncation\..*--max_seq_len"):
        build(opt_tokenizer, [folder(tmp_path, "src", items, items)], tmp_path, max_len=4)


@pytest.mark.parametrize("flag, kwargs", [("--max_seq_len", {"max_len": 1}), ("--seed", {"seed": -1}),
                                          ("--data_split", {"split": "2,4,x"})])
def test_bad_settings_name_their_flag_before_any_work(opt_tokenizer, tmp_path, flag, kwargs):
    with pytest.raises(UserError, match=flag):
        build(opt_tokenizer, ["does/not-exist"], tmp_path, **kwargs)


def test_split_that_leaves_phase2_nothing_names_the_flag(opt_tokenizer, tmp_path):
    src = folder(tmp_path, "src", rows(20, "x"), rows(10, "y"))
    with pytest.raises(UserError, match="--data_split '0,0,10' leaves no train pairs"):
        build(opt_tokenizer, [src], tmp_path, split="0,0,10")


def test_other_ranks_read_the_cache_rank0_wrote(opt_tokenizer, tmp_path, monkeypatch, capsys):
    src = folder(tmp_path, "src", rows(20, "x"), rows(10, "y"))

    def be_rank(rank):  # a process group left by an earlier in-process main() would override RANK
        monkeypatch.setenv("LOCAL_RANK", str(rank))
        monkeypatch.setattr(utils.dist, "get_rank", lambda: rank)  # print_rank0 stays quiet on rank 1

    be_rank(1)
    with pytest.raises(UserError, match="local rank 0 should have written"):
        build(opt_tokenizer, [src], tmp_path)
    be_rank(0)
    built, _ = build(opt_tokenizer, [src], tmp_path)
    capsys.readouterr()
    be_rank(1)
    read, _ = build(opt_tokenizer, [src], tmp_path)
    assert read.cache_files == built.cache_files and capsys.readouterr().out == ""


def test_synthetic_source_end_to_end(opt_tokenizer, tmp_path):
    train_ds, eval_ds = build(opt_tokenizer, ["synthetic/preference:100"], tmp_path)
    assert (len(train_ds), len(eval_ds)) == (36, 4)  # 90/10 pairs, then share 2 of "2,4,4"
