"""Odd data files and a damaged cache, made for real: each ends in one clear error or is repaired.

A file quirk must never silently change what a run trains on (a BOM eating the prompt column, an
unquoted comma shifting columns, a test file in another layout, a source given twice, blank
answers) and never end in a traceback; a damaged tokenised cache is rebuilt, not reused.
Run: .venv/bin/python -m pytest tests/test_faults_data.py -q
"""
import errno
import gzip
import json
import os
import shutil
import socket
import subprocess
import sys

import datasets
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

import main
from data import build_pair_datasets
from data.sources import load_source
from tests.fixtures import learnable_pairs, run_main, write_jsonl
from utils.errors import UserError

ROWS = [{"prompt": f" Human: question {i}? Assistant:", "chosen": f" kind answer {i}",
         "rejected": f" rude reply {i}"} for i in range(12)]
EOT = "<|endoftext|>"


def jsonl(rows):
    return "".join(json.dumps(r) + "\n" for r in rows)


def csv_text(rows):
    lines = ["prompt,chosen,rejected"] + [",".join(r[c] for c in ("prompt", "chosen", "rejected")) for r in rows]
    return "\n".join(lines) + "\n"


def texts(source, split="train"):
    return [source.adapter.texts(row) for row in (source.train if split == "train" else source.eval)]


def build(tokenizer, paths, tmp_path, split="0,10,0", max_len=64):
    return build_pair_datasets(paths, split, 1234, tokenizer, max_len, str(tmp_path / "cache"), EOT)


def folder(tmp_path, name, train_text, test_text, suffix="jsonl"):
    path = tmp_path / name
    path.mkdir()
    (path / f"train.{suffix}").write_text(train_text)
    (path / f"test.{suffix}").write_text(test_text)
    return str(path)


# ---------------------------------------------------------------- main.py, in process and as a process



def main_args(tiny_opt, tmp_path, data_path, out="out"):
    return ["--model_name_or_path", tiny_opt, "--output_dir", str(tmp_path / out), "--data_path", *data_path,
            "--data_output_path", str(tmp_path / "cache"), "--max_seq_len", "64",
            "--per_device_train_batch_size", "8", "--gradient_accumulation_steps", "1", "--data_split", "0,10,0"]


def main_error(argv, capsys):
    """Run main.main(argv), expect exit status 1, return its last stderr line."""
    with pytest.raises(SystemExit) as exit_info:
        main.main(argv)
    err = capsys.readouterr().err.strip().splitlines()
    assert exit_info.value.code == 1 and err, err[-3:]
    return err[-1]


def test_unquoted_comma_in_csv_is_an_error_through_main(tiny_opt, tmp_path, capsys, clean_dist_env):
    train = csv_text(ROWS[:3]) + "q,a, with a comma,b\n"
    line = main_error(main_args(tiny_opt, tmp_path, [folder(tmp_path, "d", train, csv_text(ROWS), "csv")]), capsys)
    assert line.startswith("error: ") and "train.csv, line 5: 4 fields, but the header has 3" in line
    assert "quote every value that holds a comma" in line
    assert not os.path.exists(tmp_path / "out" / "model.safetensors")


def test_same_folder_twice_is_refused_through_main(tiny_opt, tmp_path, capsys, clean_dist_env, monkeypatch):
    folder(tmp_path, "d", jsonl(ROWS), jsonl(ROWS))
    monkeypatch.chdir(tmp_path)
    line = main_error(main_args(tiny_opt, tmp_path, ["./d", "d/"]), capsys)
    assert line.startswith("error: --data_path lists the same source twice: './d' and 'd/'"), line
    assert "Give each source once" in line


def test_damaged_gzip_is_one_error_line_as_a_process(tiny_opt, tmp_path):
    packed = gzip.compress(jsonl(learnable_pairs(40, seed=3)).encode())
    (tmp_path / "pairs.jsonl.gz").write_bytes(packed[:len(packed) // 2])
    result = run_main(main_args(tiny_opt, tmp_path, [str(tmp_path / "pairs.jsonl.gz")]), timeout=120)
    assert result.returncode == 1 and "Traceback" not in result.stdout
    last = result.stdout.strip().splitlines()[-1]
    assert last.startswith("error: ") and "pairs.jsonl.gz" in last and "truncated or damaged" in last, last


def test_damaged_cache_is_rebuilt_and_the_run_succeeds(tiny_opt, tmp_path, capsys, clean_dist_env):
    data_folder = folder(tmp_path, "d", jsonl(learnable_pairs(16, seed=1)), jsonl(learnable_pairs(8, seed=2)))
    main.main(main_args(tiny_opt, tmp_path, [data_folder], out="first"))
    assert "built the tokenised pairs" in capsys.readouterr().out
    (arrow,) = [p for p in _cache_files(tmp_path) if p.endswith(".arrow") and "/train/" in p]
    with open(arrow, "r+b") as f:
        f.truncate(os.path.getsize(arrow) // 2)
    main.main(main_args(tiny_opt, tmp_path, [data_folder], out="second"))
    out = capsys.readouterr().out
    assert "are damaged (train/data-00000-of-00001.arrow holds" in out and "built the tokenised pairs" in out
    assert os.path.exists(tmp_path / "second" / "model.safetensors")


def _cache_files(tmp_path):
    return [os.path.join(root, name) for root, _, names in os.walk(tmp_path / "cache") for name in names]


# ---------------------------------------------------------------- file quirks that changed the data silently

@pytest.mark.parametrize("fmt", ["csv", "json", "jsonl", "jsonl.gz"])
def test_utf8_bom_is_stripped(tmp_path, fmt):
    text = {"csv": csv_text(ROWS), "json": json.dumps(ROWS), "jsonl": jsonl(ROWS), "jsonl.gz": jsonl(ROWS)}[fmt]
    raw = "\ufeff".encode() + text.encode()
    path = tmp_path / f"pairs.{fmt}"
    path.write_bytes(gzip.compress(raw) if fmt.endswith("gz") else raw)
    source = load_source(str(path))
    assert source.train.column_names[:3] == ["prompt", "chosen", "rejected"]
    assert texts(source) == [(r["prompt"] + r["chosen"], r["prompt"] + r["rejected"]) for r in ROWS]


def test_files_joined_with_their_boms_read_as_one(tmp_path):
    path = tmp_path / "joined.jsonl"
    path.write_bytes("\ufeff".encode() + jsonl(ROWS[:6]).encode() + "\ufeff".encode() + jsonl(ROWS[6:]).encode())
    assert texts(load_source(str(path))) == [(r["prompt"] + r["chosen"], r["prompt"] + r["rejected"]) for r in ROWS]


@pytest.mark.parametrize("body, line, expected", [
    ('q,"a, quoted",b\nq,a, unquoted,b\n', 3, "4 fields, but the header has 3"),
    ("q,a\n", 2, "2 fields, but the header has 3"),
    ('q,"a"b,c\n', 2, "malformed CSV"),
])
def test_csv_rows_are_parsed_strictly(tmp_path, body, line, expected):
    path = tmp_path / "p.csv"
    path.write_text("prompt,chosen,rejected\n" + body)
    with pytest.raises(UserError, match=rf"p\.csv, line {line}: {expected}.*quote"):
        load_source(str(path))


def test_csv_quoted_commas_and_line_breaks_read_as_one_field(tmp_path):
    path = tmp_path / "p.csv"
    path.write_text('prompt,chosen,rejected\n\n"Q: a, b\nand c?"," yes, both"," no"\n')
    assert texts(load_source(str(path))) == [("Q: a, b\nand c? yes, both", "Q: a, b\nand c? no")]


def test_csv_header_naming_a_column_twice_is_an_error(tmp_path):
    (tmp_path / "p.csv").write_text("prompt,chosen,chosen\nq,a,b\n")
    with pytest.raises(UserError, match=r"p\.csv, line 1: the header names column\(s\) chosen twice"):
        load_source(str(tmp_path / "p.csv"))


@pytest.mark.parametrize("train_rows, test_rows", [
    ([{"chosen": "\n\nHuman: q\n\nAssistant: a", "rejected": "\n\nHuman: q\n\nAssistant: b"}], ROWS),
    (ROWS, [{"chosen": "\n\nHuman: q\n\nAssistant: a", "rejected": "\n\nHuman: q\n\nAssistant: b"}]),
])
def test_train_and_test_files_must_have_the_same_layout(tmp_path, train_rows, test_rows):
    path = folder(tmp_path, "d", jsonl(train_rows), jsonl(test_rows))
    with pytest.raises(UserError) as error:
        load_source(path)
    message = str(error.value)
    assert "train.jsonl and " in message and "test.jsonl have different text columns" in message
    assert "(prompt, chosen, rejected vs chosen, rejected)" in message or \
        "(chosen, rejected vs prompt, chosen, rejected)" in message


def test_train_parquet_and_test_jsonl_in_other_layouts_are_refused(tmp_path):
    pq.write_table(pa.Table.from_pylist(ROWS), str(tmp_path / "train.parquet"))
    write_jsonl(tmp_path / "test.jsonl", [{"chosen": "a", "rejected": "b"}])
    with pytest.raises(UserError, match=r"train\.parquet and .*test\.jsonl have different text columns"):
        load_source(str(tmp_path))


def test_a_row_in_another_layout_than_the_first_is_an_error(tmp_path):
    rows = [{"chosen": "\n\nHuman: q\n\nAssistant: a", "rejected": "\n\nHuman: q\n\nAssistant: b"}, ROWS[0]]
    path = write_jsonl(tmp_path / "p.jsonl", rows)
    with pytest.raises(UserError, match=r"p\.jsonl, line 2: has text fields prompt, chosen, rejected but line 1 "
                                        r"has chosen, rejected"):
        load_source(path)


def test_same_source_twice_or_a_copy_is_refused(opt_tokenizer, tmp_path, monkeypatch):
    path = folder(tmp_path, "d", jsonl(ROWS), jsonl(ROWS))
    monkeypatch.chdir(tmp_path)
    for paths in ([path, path], ["d", path + "/"], ["synthetic/preference:20"] * 2):
        with pytest.raises(UserError, match="--data_path lists the same source twice"):
            build(opt_tokenizer, paths, tmp_path)
    shutil.copytree(path, tmp_path / "copy")
    with pytest.raises(UserError, match=r"--data_path 'd' and 'copy' hold the same data"):
        build(opt_tokenizer, ["d", "copy"], tmp_path)
    with pytest.raises(UserError, match=r"--data_path 'd' and 'd/train.jsonl' both read .*d/train\.jsonl"):
        build(opt_tokenizer, ["d", "d/train.jsonl"], tmp_path)
    os.symlink(tmp_path / "d" / "test.jsonl", tmp_path / "link.jsonl")
    with pytest.raises(UserError, match=r"--data_path 'link.jsonl' and 'd' both read .*d/test\.jsonl"):
        build(opt_tokenizer, ["link.jsonl", "d"], tmp_path)
    assert not os.path.exists(tmp_path / "cache")


def test_whitespace_only_answers_are_dropped_as_empty(opt_tokenizer, tmp_path, capsys):
    blank = [dict(ROWS[0], chosen="   "), dict(ROWS[1], rejected="\n\t"), dict(ROWS[2], chosen=""),
             dict(ROWS[3], chosen=" ", rejected=" ")]
    same = dict(ROWS[4], rejected=ROWS[4]["chosen"])  # identical pairs stay, as in DeepSpeed-Chat
    items = ROWS[5:] + blank + [same]
    train, _ = build(opt_tokenizer, [folder(tmp_path, "d", jsonl(items), jsonl(ROWS))], tmp_path)
    out = capsys.readouterr().out
    assert "train: kept 8 of 12 pairs: dropped 4 empty, 0 diverge at first token" in out
    assert "kept 1 identical pairs as DeepSpeed-Chat does" in out and len(train) == 8


def test_whitespace_only_conversation_answer_is_empty(opt_tokenizer, tmp_path, capsys):
    good = [{"chosen": f"\n\nHuman: q{i}\n\nAssistant: yes {i}", "rejected": f"\n\nHuman: q{i}\n\nAssistant: no"}
            for i in range(4)]
    blank = {"chosen": "\n\nHuman: q\n\nAssistant: yes", "rejected": "\n\nHuman: q\n\nAssistant:  \n"}
    build(opt_tokenizer, [folder(tmp_path, "d", jsonl(good + [blank]), jsonl(good))], tmp_path)
    assert "train: kept 4 of 5 pairs: dropped 1 empty" in capsys.readouterr().out


# ---------------------------------------------------------------- reader exceptions become one clear line

def _gzip_cut(path):
    packed = gzip.compress(jsonl(ROWS).encode())
    path.write_bytes(packed[:len(packed) - 30])


def _gzip_flipped(path):
    packed = gzip.compress(jsonl(ROWS * 20).encode())
    path.write_bytes(packed[:30] + bytes(b ^ 0xFF for b in packed[30:60]) + packed[60:])


def _parquet(table):
    return lambda path: pq.write_table(table, str(path))


def _saved(damage):
    """A save_to_disk folder, then `damage(train folder)`."""
    def write(path):
        datasets.DatasetDict({"train": datasets.Dataset.from_list(ROWS * 50),
                              "test": datasets.Dataset.from_list(ROWS)}).save_to_disk(str(path))
        damage(path / "train")
    return write


def _cut_arrow(split):
    arrow = next(split.glob("*.arrow"))
    arrow.write_bytes(arrow.read_bytes()[:arrow.stat().st_size // 2])


def _drop_state_key(split):
    state = json.loads((split / "state.json").read_text())
    del state["_data_files"]
    (split / "state.json").write_text(json.dumps(state))


FAULTS = {  # file name -> (write it, text the error must hold)
    "cut.jsonl.gz": (_gzip_cut, "its gzip data is truncated or damaged"),
    "flipped.jsonl.gz": (_gzip_flipped, "its gzip data is truncated or damaged"),
    "binary.jsonl": (lambda p: p.write_bytes(b'{"a": 1}\n' + bytes(range(128, 256))), "line 2: not UTF-8 text"),
    "latin1.csv": (lambda p: p.write_bytes("prompt,chosen,rejected\nq,caf\u00e9,b\n".encode("latin-1")),
                   "line 2: not UTF-8 text"),
    "not.parquet": (lambda p: p.write_text("hello"), "cannot read it as parquet"),
    "empty.parquet": (lambda p: p.write_bytes(b""), "cannot read it as parquet"),
    "zero_rows.parquet": (_parquet(pa.table({c: pa.array([], pa.string()) for c in ("prompt", "chosen", "rejected")})),
                          "holds no rows"),
    "map.parquet": (_parquet(pa.Table.from_pylist(ROWS[:1]).append_column(
        "extra", pa.array([[("a", 1)]], pa.map_(pa.string(), pa.int64())))), "cannot read it as parquet"),
    "scalar.json": (lambda p: p.write_text("3"), "expected a list of JSON objects"),
    "numbers.json": (lambda p: p.write_text("[1, 2]"), "item 1: expected a JSON object"),
    "nested.jsonl": (lambda p: p.write_text("[" * 100_000 + "]" * 100_000 + "\n"), "line 1: JSON nested too deeply"),
    "saved_cut_arrow": (_saved(_cut_arrow), "save_to_disk folder but cannot be read"),
    "saved_bad_state": (_saved(_drop_state_key), "save_to_disk folder but cannot be read (KeyError"),
    "huge_number.jsonl": (lambda p: p.write_text(jsonl([dict(ROWS[0], extra=10**30)])), "do not make a table"),
}


@pytest.mark.parametrize("name", FAULTS)
def test_unreadable_file_is_one_user_error_naming_it(tmp_path, name):
    write, expected = FAULTS[name]
    write(tmp_path / name)
    with pytest.raises(UserError) as error:
        load_source(str(tmp_path / name))
    message = str(error.value)
    assert name in message and expected in message and "\n" not in message, message


# ---------------------------------------------------------------- the tokenised cache

def _cache_folder(tmp_path):
    (folder_,) = [p for p in (tmp_path / "cache").iterdir() if p.name.startswith("pairs-") and ".tmp-" not in p.name]
    return folder_


def _break_truncate(cache):
    arrow = next((cache / "eval").glob("*.arrow"))
    arrow.write_bytes(arrow.read_bytes()[:-100])


def _break_missing(cache):
    (cache / "train" / "state.json").unlink()


def _break_split_folder(cache):
    shutil.rmtree(cache / "train")


def _break_same_size(cache):
    info = cache / "train" / "dataset_info.json"
    text = info.read_text()
    info.write_text(text.replace("{", "[", 1))


def _break_meta(cache):
    (cache / "meta.json").write_text('{"settings": ')


@pytest.mark.parametrize("damage, reason", [
    (_break_truncate, "eval/data-00000-of-00001.arrow holds"), (_break_missing, "train/state.json is missing"),
    (_break_split_folder, "train/data-00000-of-00001.arrow is missing"), (_break_same_size, "train/dataset_info.json changed"),
    (_break_meta, "meta.json unreadable"),
])
def test_damaged_cache_is_rebuilt(opt_tokenizer, tmp_path, capsys, damage, reason):
    src = folder(tmp_path, "d", jsonl(ROWS), jsonl(ROWS[:6]))
    first = [ds["chosen_input_ids"][:] for ds in build(opt_tokenizer, [src], tmp_path)]
    damage(_cache_folder(tmp_path))
    capsys.readouterr()
    again = [ds["chosen_input_ids"][:] for ds in build(opt_tokenizer, [src], tmp_path)]
    out = capsys.readouterr().out
    assert f"are damaged ({reason}" in out and "rebuilding them" in out and "built the tokenised pairs" in out
    assert again == first
    build(opt_tokenizer, [src], tmp_path)
    assert "reusing the tokenised pairs" in capsys.readouterr().out


def test_disk_full_while_caching_is_one_error_and_leaves_nothing(opt_tokenizer, tmp_path, monkeypatch):
    def full(self, path, **kwargs):
        os.makedirs(path)
        with open(os.path.join(path, "data-00000-of-00001.arrow"), "wb") as f:
            f.write(b"partial")
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(datasets.Dataset, "save_to_disk", full)
    with pytest.raises(UserError, match=r"--data_output_path .*writing the tokenised pairs failed "
                                        r"\(\[Errno 28\] No space left on device\); free some space"):
        build(opt_tokenizer, [folder(tmp_path, "d", jsonl(ROWS), jsonl(ROWS[:6]))], tmp_path)
    assert os.listdir(tmp_path / "cache") == []


def test_stale_temp_folder_of_a_dead_build_is_removed(opt_tokenizer, tmp_path, capsys):
    src = folder(tmp_path, "d", jsonl(ROWS), jsonl(ROWS[:6]))
    build(opt_tokenizer, [src], tmp_path)
    cache = tmp_path / "cache"
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True,
                          text=True, check=True, timeout=60).stdout.strip()
    host, digest = socket.gethostname(), "0123456789abcdef01234567"
    names = {"dead": f"pairs-{digest}.tmp-{host}-{dead}", "alive": f"pairs-{digest}.tmp-{host}-{os.getpid()}",
             "other_host": f"pairs-{digest}.tmp-elsewhere-{dead}", "not_ours": f"mine.tmp-{host}-{dead}"}
    for name in names.values():
        (cache / name / "train").mkdir(parents=True)
        (cache / name / "train" / "half.arrow").write_bytes(b"x" * 10)
    build(opt_tokenizer, [src], tmp_path)
    out = capsys.readouterr().out
    assert f"removing {cache / names['dead']}, left by a cache build that was stopped (process {dead} is gone)" in out
    assert not (cache / names["dead"]).exists()
    assert all((cache / names[k]).exists() for k in ("alive", "other_host", "not_ours"))


def test_meta_json_records_every_cache_file(opt_tokenizer, tmp_path):
    build(opt_tokenizer, [folder(tmp_path, "d", jsonl(ROWS), jsonl(ROWS[:6]))], tmp_path)
    cache = _cache_folder(tmp_path)
    files = json.loads((cache / "meta.json").read_text())["files"]
    on_disk = {os.path.relpath(p, cache) for p in _cache_files(tmp_path)} - {"meta.json"}
    assert set(files) == on_disk and all(f["size"] == os.path.getsize(cache / n) for n, f in files.items())
