"""Sources: registry adapters, local file formats, the synthetic set, and the errors users see.

Run: .venv/bin/python -m pytest tests/test_data_sources.py -q
"""
import csv
import gzip
import json
import time

import datasets
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from data import REGISTRY, synthetic
from data.sources import load_source, split_hh
from utils.errors import UserError

ROWS = [{"prompt": f" Human: question {i}? Assistant:", "chosen": f" good answer {i}",
         "rejected": f" bad answer {i}"} for i in range(12)]


def write(path, rows, fmt):
    """Write `rows` to `path` in one of the local formats; returns the path as str."""
    path = str(path)
    if fmt in ("jsonl", "jsonl.gz"):
        opener = gzip.open if fmt.endswith("gz") else open
        with opener(path, "wt") as f:
            f.writelines(json.dumps(r) + "\n" for r in rows)
    elif fmt == "json":
        with open(path, "w") as f:
            json.dump(rows, f, indent=1)
    elif fmt == "csv":
        with open(path, "w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=list(rows[0]))
            writer.writeheader()
            writer.writerows(rows)
    elif fmt == "parquet":
        pq.write_table(pa.Table.from_pylist(rows), path)
    return path


def texts(source, split="train"):
    ds = source.train if split == "train" else source.eval
    return [source.adapter.texts(row) for row in ds]


# ---------------------------------------------------------------- registry adapters

def test_synthetic_instruct_gets_human_assistant_template_and_leading_space():
    row = {"prompt": "Name a fruit.", "chosen": "Apple.", "rejected": "Rock."}
    assert REGISTRY["Dahoas/synthetic-instruct-gptj-pairwise"].texts(row) == (
        " Human: Name a fruit. Assistant: Apple.", " Human: Name a fruit. Assistant: Rock.")


def test_rm_static_and_yitingxie_concatenate_prompt_and_answer_as_stored():
    row = {"prompt": "\n\nHuman: Hi\n\nAssistant:", "chosen": " Hello!", "rejected": " Go."}
    for name in ("Dahoas/rm-static", "Dahoas/full-hh-rlhf", "yitingxie/rlhf-reward-datasets"):
        assert REGISTRY[name].texts(row) == ("\n\nHuman: Hi\n\nAssistant: Hello!", "\n\nHuman: Hi\n\nAssistant: Go.")


def test_webgpt_picks_the_higher_score_and_strips_citations():
    row = {"question": {"full_text": "Why is the sky blue?"}, "score_0": -1.0, "score_1": 1.0,
           "answer_0": "No idea [1].", "answer_1": "Rayleigh scattering [1][2] (see below) works."}
    chosen, rejected = REGISTRY["openai/webgpt_comparisons"].texts(row)
    assert chosen == " Human: Why is the sky blue? Assistant: Rayleigh scattering works."
    assert rejected == " Human: Why is the sky blue? Assistant: No idea."


def test_shp_label_one_means_a_is_chosen():
    row = {"history": "Is tea good?", "human_ref_A": "Yes.", "human_ref_B": "No.", "labels": 1}
    assert REGISTRY["stanfordnlp/SHP"].texts(row) == (" Human: Is tea good? Assistant: Yes.",
                                                      " Human: Is tea good? Assistant: No.")
    assert REGISTRY["stanfordnlp/SHP"].texts(dict(row, labels=0))[0].endswith("Assistant: No.")


def test_hh_prompt_is_everything_up_to_the_last_assistant_turn():
    conversation = "\n\nHuman: Hi\n\nAssistant: Hello.\n\nHuman: Joke?\n\nAssistant: Knock knock."
    assert split_hh(conversation) == ("\n\nHuman: Hi\n\nAssistant: Hello.\n\nHuman: Joke?\n\nAssistant:",
                                      " Knock knock.")
    row = {"chosen": conversation, "rejected": conversation.replace("Knock knock.", "No.")}
    assert REGISTRY["Anthropic/hh-rlhf"].texts(row) == (row["chosen"], row["rejected"])


# ---------------------------------------------------------------- local formats

@pytest.mark.parametrize("fmt", ["json", "jsonl", "jsonl.gz", "parquet", "csv"])
def test_every_local_file_format_loads_the_same_pairs(tmp_path, fmt):
    source = load_source(write(tmp_path / f"pairs.{fmt}", ROWS, fmt))
    assert source.eval is None  # a single file is cut 9:1 later
    assert texts(source) == [(r["prompt"] + r["chosen"], r["prompt"] + r["rejected"]) for r in ROWS]


def test_folder_with_train_and_test_files(tmp_path):
    write(tmp_path / "train.jsonl", ROWS[:8], "jsonl")
    write(tmp_path / "test.parquet", ROWS[8:], "parquet")
    source = load_source(str(tmp_path))
    assert len(source.train) == 8 and len(source.eval) == 4
    row = ROWS[8]
    assert texts(source, "eval")[0] == (row["prompt"] + row["chosen"], row["prompt"] + row["rejected"])


def test_save_to_disk_dataset_dict_and_single_dataset(tmp_path):
    datasets.DatasetDict({"train": datasets.Dataset.from_list(ROWS[:8]),
                          "test": datasets.Dataset.from_list(ROWS[8:])}).save_to_disk(str(tmp_path / "dd"))
    datasets.Dataset.from_list(ROWS).save_to_disk(str(tmp_path / "single"))
    both = load_source(str(tmp_path / "dd"))
    assert (len(both.train), len(both.eval)) == (8, 4)
    single = load_source(str(tmp_path / "single"))
    assert single.eval is None and texts(single) == texts(load_source(write(tmp_path / "p.jsonl", ROWS, "jsonl")))


def test_chosen_rejected_only_columns_are_split_hh_style(tmp_path):
    row = {"chosen": "\n\nHuman: Hi\n\nAssistant: Hello.", "rejected": "\n\nHuman: Hi\n\nAssistant: Go."}
    source = load_source(write(tmp_path / "hh.jsonl", [row], "jsonl"))
    assert texts(source) == [(row["chosen"], row["rejected"])]


def test_local_copy_named_like_a_hub_source_uses_its_adapter(tmp_path):
    row = {"question": {"full_text": "Q?"}, "score_0": 1.0, "score_1": 0.0,
           "answer_0": "Yes [1].", "answer_1": "No."}
    folder = tmp_path / "openai" / "webgpt_comparisons"
    datasets.DatasetDict({"train": datasets.Dataset.from_list([row])}).save_to_disk(str(folder))
    source = load_source(str(folder))
    assert texts(source) == [(" Human: Q? Assistant: Yes.", " Human: Q? Assistant: No.")]


def test_identity_changes_with_file_content(tmp_path):
    path = write(tmp_path / "p.jsonl", ROWS, "jsonl")
    before = load_source(path).identity
    assert load_source(path).identity == before
    write(path, ROWS[:-1], "jsonl")
    assert load_source(path).identity != before


# ---------------------------------------------------------------- the synthetic demo set

def test_synthetic_source_is_deterministic_and_its_answers_differ():
    first, again = load_source("synthetic/preference:200"), load_source("synthetic/preference:200")
    assert texts(first) == texts(again) and first.identity == again.identity
    assert (len(first.train), len(first.eval)) == (180, 20)
    pairs = texts(first) + texts(first, "eval")
    assert all(chosen != rejected for chosen, rejected in pairs)
    longer = sum(len(c) > len(r) for c, r in pairs) / len(pairs)
    assert 0.3 < longer < 0.7, "length alone must not give the preference away"
    assert len(load_source("synthetic/preference").train) == synthetic.DEFAULT_PAIRS * 9 // 10


def test_synthetic_pair_count_must_be_a_number():
    with pytest.raises(UserError, match="synthetic/preference:many"):
        load_source("synthetic/preference:many")


# ---------------------------------------------------------------- errors a user can fix

def test_malformed_jsonl_names_file_and_line(tmp_path):
    path = tmp_path / "bad.jsonl"
    path.write_text(json.dumps(ROWS[0]) + "\n" + json.dumps(ROWS[1]) + "\n" + '{"prompt": "x", \n')
    with pytest.raises(UserError, match=r"bad\.jsonl, line 3: not valid JSON"):
        load_source(str(path))


def test_malformed_json_names_file_and_line(tmp_path):
    path = tmp_path / "bad.json"
    path.write_text('[\n {"prompt": "a", "chosen": "b", "rejected": "c"},\n {"prompt": "a" "chosen": "b"}\n]')
    with pytest.raises(UserError, match=r"bad\.json, line 3: not valid JSON"):
        load_source(str(path))


@pytest.mark.parametrize("value, got", [(None, "null"), (3, "int"), (["a"], "list")])
def test_null_or_non_string_field_names_file_line_and_field(tmp_path, value, got):
    path = write(tmp_path / "p.jsonl", [ROWS[0], dict(ROWS[1], chosen=value)], "jsonl")
    with pytest.raises(UserError, match=rf"p\.jsonl, line 2: field 'chosen' is {got}"):
        load_source(path)


def test_missing_cell_in_csv_names_the_line(tmp_path):
    path = tmp_path / "p.csv"
    path.write_text("prompt,chosen,rejected\nq,a,b\nq,a\n")
    with pytest.raises(UserError, match=r"p\.csv, line 3: 2 fields, but the header has 3"):
        load_source(str(path))


def test_null_in_parquet_names_the_row(tmp_path):
    path = write(tmp_path / "p.parquet", [ROWS[0], ROWS[1], dict(ROWS[2], rejected=None)], "parquet")
    with pytest.raises(UserError, match=r"p\.parquet, row 3: field 'rejected' is null"):
        load_source(path)


def test_missing_column_is_named_with_the_columns_found(tmp_path):
    path = write(tmp_path / "p.jsonl", [{"question": "q", "answer": "a"}], "jsonl")
    with pytest.raises(UserError, match=r"missing column\(s\) prompt, chosen, rejected "
                                        r"\(columns found: question, answer\)"):
        load_source(path)


def test_empty_file_is_named(tmp_path):
    (tmp_path / "empty.jsonl").write_text("")
    with pytest.raises(UserError, match=r"empty\.jsonl holds no rows"):
        load_source(str(tmp_path / "empty.jsonl"))


def test_unreadable_file_and_unknown_path(tmp_path):
    (tmp_path / "broken.jsonl.gz").write_bytes(b"not gzip at all")
    with pytest.raises(UserError, match="cannot read the file"):
        load_source(str(tmp_path / "broken.jsonl.gz"))
    with pytest.raises(UserError, match="neither an existing file or folder nor a known source"):
        load_source(str(tmp_path / "nope.jsonl"))
    (tmp_path / "notes.txt").write_text("hello")
    with pytest.raises(UserError, match="unsupported file type"):
        load_source(str(tmp_path / "notes.txt"))


def test_folder_without_train_file_lists_what_it_found(tmp_path):
    write(tmp_path / "test.jsonl", ROWS, "jsonl")
    with pytest.raises(UserError, match=r"has no train file \(files found: test\.jsonl\)"):
        load_source(str(tmp_path))


def test_unreachable_hub_fails_fast_and_points_to_local_data(monkeypatch):
    from huggingface_hub import constants
    monkeypatch.setattr(constants, "ENDPOINT", "http://127.0.0.1:9")  # nothing listens: refused at once
    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", False)
    for proxy in ("HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy"):
        monkeypatch.delenv(proxy, raising=False)
    start = time.monotonic()
    expected = "(?s)'Dahoas/rm-static'.*unreachable.*local folder or file with --data_path"
    with pytest.raises(UserError, match=expected):
        load_source("Dahoas/rm-static")
    assert time.monotonic() - start < 10


def test_csv_without_rejected_column_names_it(tmp_path):
    (tmp_path / "p.csv").write_text("prompt,chosen\nq,a\n")
    with pytest.raises(UserError, match=r"missing column\(s\) rejected \(columns found: prompt, chosen\)"):
        load_source(str(tmp_path / "p.csv"))


def test_hub_sources_use_their_registered_splits(monkeypatch):
    fake = {"stanfordnlp/SHP": ["train", "validation", "test"],
            "Dahoas/synthetic-instruct-gptj-pairwise": ["train"]}
    row = {"history": "h", "human_ref_A": "a", "human_ref_B": "b", "labels": 1,
           "prompt": "p", "chosen": "c", "rejected": "r"}
    monkeypatch.setattr("data.sources._check_hub_reachable", lambda name: None)
    monkeypatch.setattr(datasets, "load_dataset", lambda name: datasets.DatasetDict(
        {split: datasets.Dataset.from_list([dict(row, history=split)]) for split in fake[name]}))
    shp = load_source("stanfordnlp/SHP")
    assert shp.eval[0]["history"] == "validation" and shp.identity.startswith("hub:stanfordnlp/SHP:")
    assert load_source("Dahoas/synthetic-instruct-gptj-pairwise").eval is None  # cut 9:1 later
