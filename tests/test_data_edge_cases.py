"""Rows that give no pairs, empty lists, list columns in a CSV, a misspelt --rating_field and a folder where a
file is meant: each ends in one error naming the file (or source and split) and the fix, with no tokenised
data published; lists a CSV holds as JSON train like the same rows in JSONL.

Run: .venv/bin/python -m pytest tests/test_data_edge_cases.py -q
"""
import json
import os
import re

import pytest

import main
from data import build_pair_datasets
from data.formats import ReadOptions
from data.readers import read_rows
from data.split import split_indices
from evaluation_scripts.benchmark_data import read_file
from model.create import load_tokenizer
from tests.fixtures import write_rows as write
from utils.errors import UserError
from utils.spans import pads_at_beginning

EOT = "<|endoftext|>"


@pytest.fixture(scope="module")
def llama(tiny_chat):
    return load_tokenizer(tiny_chat("llama"))


def user(text):
    return {"role": "user", "content": text}


def assistant(text):
    return {"role": "assistant", "content": text}


def build(tokenizer, path, tmp_path, options=ReadOptions()):
    """All rows of `path` as train pairs (split 0,1,0; a 9:1 eval cut), as main.py builds them."""
    return build_pair_datasets([path], "0,1,0", 1234, tokenizer, 128, str(tmp_path / "cache"), EOT,
                               pads_at_beginning(tokenizer), end_token_rule="auto", read_options=options)


def refused(tokenizer, path, tmp_path, options=ReadOptions()):
    """The UserError building `path` raises; nothing may be published in the cache folder."""
    with pytest.raises(UserError) as error:
        build(tokenizer, path, tmp_path, options)
    cache = tmp_path / "cache"
    assert not cache.exists() or os.listdir(cache) == [], os.listdir(cache)
    message = str(error.value)
    assert "\n" not in message
    return message


# ---------------------------------------------------------------- rows that give no pair

def uf(i, ratings):
    return {"instruction": f"Explain thing {i}.",
            "completions": [{"response": f"Answer {k} to {i}.", "overall_score": r} for k, r in enumerate(ratings)]}


def scored(key):
    return lambda i, ratings: {"prompt": f"Explain thing {i}.", "completions": [f"Answer {k}." for k in
                                                                                range(len(ratings))], key: ratings}


def conversations(i, ratings):
    return {"prompt": [user(f"Explain thing {i}.")],
            "completions": [[assistant(f"Answer {k}.")] for k in range(len(ratings))], "scores": ratings}


LAYOUTS = {"ultrafeedback": uf, "scores": scored("scores"), "ranks": scored("ranks"), "conversations": conversations}
NO_PAIR = {"all tied": ([5, 5, 5], "12 with all ratings tied"), "one completion": ([5], "12 with one completion")}


@pytest.mark.parametrize("rule", ["best_vs_rest", "all"])
@pytest.mark.parametrize("reason", NO_PAIR)
@pytest.mark.parametrize("layout", LAYOUTS)
def test_a_file_whose_rows_give_no_pair_is_one_error(llama, tmp_path, layout, reason, rule):
    ratings, counted = NO_PAIR[reason]
    path = write(tmp_path / "train.jsonl", [LAYOUTS[layout](i, ratings) for i in range(12)])
    message = refused(llama, path, tmp_path, ReadOptions(rule))
    assert message.startswith(f"--data_path '{path}' (train split): no usable pairs: 12 rows, {counted}. "), message
    assert "give each prompt two or more" in message


def test_reasons_are_counted_apart_and_a_test_file_is_named(llama, tmp_path):
    os.makedirs(tmp_path / "d")
    write(tmp_path / "d" / "train.jsonl", [uf(i, [9, 2]) for i in range(8)])
    write(tmp_path / "d" / "test.parquet", [uf(i, [4, 4]) for i in range(3)] + [uf(3, [7])])
    message = refused(llama, str(tmp_path / "d"), tmp_path)
    assert message.startswith(f"--data_path '{tmp_path / 'd'}' (eval split): no usable pairs: 4 rows, 3 with all "
                              "ratings tied, 1 with one completion."), message


def test_a_split_cut_that_holds_only_rows_without_pairs(llama, tmp_path, capsys):
    """The file gives pairs, but its 9:1 eval cut holds only rows that give none: the error names the split."""
    eval_rows = split_indices(20, [9.0, 1.0], 1, 1234)
    rows = [uf(i, [3, 3] if i in eval_rows else [9, 2]) for i in range(20)]
    message = refused(llama, write(tmp_path / "p.jsonl", rows), tmp_path)
    assert "gave 18 pairs; 2 tied ratings dropped; no pair from 2 with all ratings tied" in capsys.readouterr().out
    assert message.startswith(f"--data_path '{tmp_path / 'p.jsonl'}': no usable eval pairs: 2 rows, 2 with all "
                              "ratings tied. A pair needs two completions"), message


TEXT_ROWS = {  # pairs that are made, then all dropped: (row i, what the error counts)
    "empty answers": (lambda i: {"prompt": f"Q{i}:", "chosen": " ", "rejected": f" no {i}"}, "11 empty"),
    "same answers": (lambda i: {"prompt": f"Q{i}:", "chosen": " yes", "rejected": " yes"},
                     "11 chosen same as rejected"),
    "empty conversation answers": (lambda i: {"chosen": f"\n\nHuman: q{i}\n\nAssistant: yes",
                                              "rejected": f"\n\nHuman: q{i}\n\nAssistant:  "}, "11 empty"),
}


@pytest.mark.parametrize("case", TEXT_ROWS)
def test_pairs_that_are_all_dropped_are_one_error_with_counts(opt_tokenizer, tmp_path, case):
    row, counted = TEXT_ROWS[case]
    path = write(tmp_path / "p.jsonl", [row(i) for i in range(12)])
    message = refused(opt_tokenizer, path, tmp_path)
    assert message.startswith(f"--data_path '{path}': no usable train pairs: 11 rows; they gave 11 pairs, none "
                              f"usable: {counted}. A pair needs two different, non-empty answers"), message


def test_rows_without_pairs_and_dropped_pairs_are_counted_together(llama, tmp_path):
    same = [dict(uf(i, [9, 1]), completions=[{"response": "Same.", "overall_score": 9},
                                             {"response": "Same.", "overall_score": 1}]) for i in range(6)]
    os.makedirs(tmp_path / "d")
    write(tmp_path / "d" / "train.jsonl", [uf(i, [6, 6]) for i in range(4)] + same)
    write(tmp_path / "d" / "test.jsonl", [uf(i, [9, 2]) for i in range(4)])
    message = refused(llama, str(tmp_path / "d"), tmp_path)
    assert message.startswith(f"--data_path '{tmp_path / 'd'}': no usable train pairs: 10 rows, 4 with all ratings "
                              "tied; the others gave 6 pairs, none usable: 6 chosen same as rejected. "), message
    assert "give each prompt two or more" in message and "two different, non-empty answers" in message


def test_rows_without_pairs_among_good_ones_are_counted_and_skipped(llama, tmp_path, capsys):
    rows = [uf(i, [9, 2]) for i in range(10)] + [uf(10, [4, 4]), uf(11, [8])]
    train, _ = build(llama, write(tmp_path / "p.jsonl", rows), tmp_path)
    out = capsys.readouterr().out
    assert "12 rows in layout 'rated completions (UltraFeedback)' gave 10 pairs; 1 tied ratings dropped; no pair " \
           "from 1 with all ratings tied, 1 with one completion" in out
    assert 0 < len(train) <= 10


# ---------------------------------------------------------------- empty lists: the row and field, not "missing columns"

EMPTY = {  # layout -> (a good row, the same row with an empty list, the field the error names)
    "ultrafeedback": (uf(0, [9, 2]), {"instruction": "Explain.", "completions": []}, "completions"),
    "scores": (scored("scores")(0, [9, 2]), {"prompt": "Explain.", "completions": [], "scores": []}, "completions"),
    "conversations": (conversations(0, [9, 2]), {"prompt": [user("Explain.")], "completions": [], "scores": []},
                      "completions"),
    "chosen": ({"chosen": [user("Hi"), assistant("Hello")], "rejected": [user("Hi"), assistant("No")]},
               {"chosen": [], "rejected": [user("Hi"), assistant("No")]}, "chosen"),
    "prompt": ({"prompt": [user("Hi")], "chosen": [assistant("Hello")], "rejected": [assistant("No")]},
               {"prompt": [], "chosen": [assistant("Hello")], "rejected": [assistant("No")]}, "prompt"),
}
WHERE = {"first": (0, 3), "later": (2, 3), "every": (0, 0)}  # (bad row index, good rows around it)


@pytest.mark.parametrize("suffix", ["jsonl", "parquet"])
@pytest.mark.parametrize("where", WHERE)
@pytest.mark.parametrize("layout", EMPTY)
def test_an_empty_list_is_reported_with_its_row_and_field(llama, tmp_path, layout, where, suffix):
    good, bad, field = EMPTY[layout]
    at, count = WHERE[where]
    rows = [good] * count
    rows.insert(at, bad)
    if where == "every":
        rows = [bad] * 3
    path = write(tmp_path / f"p.{suffix}", rows)
    message = refused(llama, path, tmp_path)
    row = f"line {at + 1}" if suffix == "jsonl" else f"row {at + 1}"
    assert message.startswith(f"{path}, {row}: field '{field}' "), message
    assert "empty list" in message or "non-empty list" in message
    assert "Fix or remove the row" in message and "missing column" not in message


# ---------------------------------------------------------------- --rating_field

def test_a_misspelt_rating_field_names_the_field_the_flag_and_the_fields_found(llama, tmp_path):
    path = write(tmp_path / "p.jsonl", [uf(i, [9, 2]) for i in range(4)])
    message = refused(llama, path, tmp_path, ReadOptions(rating_field="overal_score"))
    assert message == (f"{path}, line 1: completions[0] has no field 'overal_score', the one --rating_field names "
                       "(its fields: response, overall_score). Pass --rating_field with the field that holds the "
                       "rating, or add it to that completion.")
    rows = [uf(i, [9, 2]) for i in range(4)]
    rows[2]["completions"][1]["overall_score"] = None  # present but null: that is what the error says
    message = refused(llama, write(tmp_path / "q.jsonl", rows), tmp_path)
    assert "q.jsonl, line 3: completions[1].overall_score (--rating_field) is None, not a number" in message


# ---------------------------------------------------------------- list columns in a CSV

def csv_file(path, rows, encode):
    """`rows` as a CSV with a header; list cells written by `encode` (json.dumps, or str as pandas does)."""
    import csv
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows({k: encode(v) if isinstance(v, list) else v for k, v in row.items()} for row in rows)
    return str(path)


CSV_LAYOUTS = {
    "implicit conversations": lambda i: {"chosen": [user(f"Hi {i}"), assistant("Hello, friend!")],
                                         "rejected": [user(f"Hi {i}"), assistant("Go away.")]},
    "explicit conversations": lambda i: {"prompt": f"Hi {i}", "chosen": [assistant("Hello, friend!")],
                                         "rejected": [assistant("Go away.")]},
    "ultrafeedback": lambda i: uf(i, [9, 2, 5]),
    "ranks": lambda i: scored("ranks")(i, [2, 1, 3]),
}


def ids(pairs):
    return sorted(zip(map(tuple, pairs["chosen_input_ids"]), map(tuple, pairs["rejected_input_ids"])))


@pytest.mark.parametrize("layout", CSV_LAYOUTS)
def test_json_lists_in_a_csv_train_like_the_same_jsonl(llama, tmp_path, layout):
    rows = [CSV_LAYOUTS[layout](i) for i in range(12)]
    from_csv = build(llama, csv_file(tmp_path / "p.csv", rows, json.dumps), tmp_path)
    from_jsonl = build(llama, write(tmp_path / "p.jsonl", rows), tmp_path)
    assert [ids(a) for a in from_csv] == [ids(b) for b in from_jsonl] and len(from_csv[0]) > 0
    assert all('"role"' not in llama.decode(c) for c in from_csv[0]["chosen_input_ids"])


@pytest.mark.parametrize("layout", CSV_LAYOUTS)
def test_python_lists_in_a_csv_are_refused_naming_column_and_fix(llama, tmp_path, layout):
    rows = [CSV_LAYOUTS[layout](i) for i in range(12)]
    path = csv_file(tmp_path / "p.csv", rows, str)  # what pandas' DataFrame.to_csv writes for list cells
    message = refused(llama, path, tmp_path)
    column = next(k for k, v in rows[0].items() if isinstance(v, list))
    assert message.startswith(f"{path}, line 2: column '{column}' holds a list that is not JSON ("), message
    assert "as pandas' to_csv writes lists. A CSV cannot hold list columns: write the data as JSONL or parquet" \
        in message and f"df['{column}'].map(json.dumps)" in message


def test_a_csv_column_of_json_lists_and_text_is_refused(opt_tokenizer, tmp_path):
    rows = [{"prompt": "Hi", "chosen": json.dumps([assistant("Hello")]), "rejected": "No"},
            {"prompt": "Hi", "chosen": "Hello", "rejected": "No"}]
    path = csv_file(tmp_path / "p.csv", rows, json.dumps)
    message = refused(opt_tokenizer, path, tmp_path)
    assert message.startswith(f"{path}, line 2: column 'chosen' holds a JSON list, but line 3 holds text ('Hello')")
    assert "write the data as JSONL or parquet" in message


def test_csv_text_with_brackets_stays_text(opt_tokenizer, tmp_path):
    rows = [{"prompt": "List two primes:", "chosen": f" [2, 3] ({i})", "rejected": " [citation needed]"}
            for i in range(12)] + [{"prompt": "Sorted?", "chosen": "[1, 2]", "rejected": "[2, 1]"}]
    path = csv_file(tmp_path / "p.csv", rows, json.dumps)
    assert read_rows(path)[0] == rows
    train, _ = build(opt_tokenizer, path, tmp_path)
    assert len(train) > 0


def test_a_pandas_csv_is_refused_through_main(tiny_opt, tmp_path, capsys, clean_dist_env):
    rows = [CSV_LAYOUTS["implicit conversations"](i) for i in range(12)]
    path = csv_file(tmp_path / "p.csv", rows, str)
    with pytest.raises(SystemExit) as exit_info:
        main.main(["--model_name_or_path", tiny_opt, "--output_dir", str(tmp_path / "out"), "--data_path", path,
                   "--data_output_path", str(tmp_path / "cache"), "--max_seq_len", "64", "--data_split", "0,10,0"])
    err = capsys.readouterr().err.strip().splitlines()
    assert exit_info.value.code == 1 and err[-1].startswith(f"error: {path}, line 2: column 'chosen' holds a list")
    assert not os.path.exists(tmp_path / "out" / "model.safetensors")


# ---------------------------------------------------------------- a folder or a missing path where a file is meant

@pytest.mark.parametrize("reader, flag", [(lambda p: read_rows(p, "--score"), "--score"),
                                          (lambda p: read_file(p, None), "--data")], ids=["evaluate", "benchmark"])
def test_a_folder_or_missing_path_where_a_file_is_meant(tmp_path, reader, flag):
    folder = re.escape(str(tmp_path))
    with pytest.raises(UserError, match=rf"^{flag} '{folder}' is a folder: pass a file \(\.jsonl\.gz, .*\.csv\)\.$"):
        reader(str(tmp_path))
    with pytest.raises(UserError, match=rf"^{flag} '{folder}/nope\.jsonl': no such file\.$"):
        reader(str(tmp_path / "nope.jsonl"))


def test_a_parquet_file_reads_as_rows_for_score_and_benchmarks(tmp_path):
    rows = [{"prompt": "p", "chosen": "c", "rejected": "r"}] * 2
    path = write(tmp_path / "p.parquet", rows)
    for got, where in (read_rows(path, "--score"), read_file(path, None)):
        assert got == rows and where(1) == "row 2"


# ---------------------------------------------------------------- the margin column

@pytest.mark.parametrize("margin, expected", [("big", "Failed to parse string: 'big'"),
                                              ([1.0], "Unsupported cast from list")])
def test_a_margin_that_is_not_a_number_names_the_file(opt_tokenizer, tmp_path, margin, expected):
    path = write(tmp_path / "p.jsonl", [{"prompt": f"Q{i}", "chosen": " a", "rejected": " b", "margin": margin}
                                        for i in range(12)])
    message = refused(opt_tokenizer, path, tmp_path)
    assert message.startswith(f"{path}: column 'margin' must hold numbers (") and expected in message
    assert "--use_margin. Give numbers, or drop the column." in message


def test_csv_margins_written_as_text_are_numbers(opt_tokenizer, tmp_path):
    rows = [{"prompt": f"Q{i}", "chosen": " a", "rejected": " b", "margin": str(i / 2)} for i in range(12)]
    train, evaluation = build(opt_tokenizer, csv_file(tmp_path / "p.csv", rows, json.dumps), tmp_path)
    assert sorted(list(train["margin"]) + list(evaluation["margin"])) == [i / 2 for i in range(12)]
