"""Rated single responses for `main.py --objective regression`: read, split, tokenise, cache, collate.

A row is {"prompt": text, "response": text, attribute: rating, ...}, HelpSteer2's columns as they are
(helpfulness, correctness, coherence, complexity, verbosity); `--attributes` names the rating columns to learn.
A null, blank or absent rating is masked (`label_mask` False), not a zero. Sources are local files (.json,
.jsonl[.gz], .parquet, .csv), a folder of train.* and test.*/eval.*/validation.* files (HelpSteer2's
train.jsonl.gz and validation.jsonl.gz as downloaded), or `synthetic/rated[:N]`; the rows then take the pair
sources' split (a single file is cut 9:1, then `--data_split`'s phase-2 share, data/split.py). Texts are
tokenised by the pairs' rule (data/inputs.py): prompt + response + end-of-conversation text, cut at max_seq_len.
"""
import hashlib
import json
import math
import os
import shutil
import socket
from dataclasses import dataclass
from typing import Optional

import datasets
import torch
from datasets import Features, List, Value

from data import cache, readers, synthetic
from data.end_token import RULES, choose, pad_inside
from data.inputs import encode_texts
from data.pairs import _phase2_rows, tokenizer_identity
from data.split import parse_data_split, shuffle_idx
from utils.dist import barrier, get_rank, print_rank0
from utils.errors import UserError
from utils.spans import pads_at_beginning

CACHE_VERSION = 1  # bump when a change here changes the tokenised rows or the cache layout
TEXT_FIELDS = ("prompt", "response")
FEATURES = Features({"input_ids": List(Value("int32")),
                     "labels": List(Value("float32")),  # (K,) one rating per attribute, 0.0 where masked
                     "label_mask": List(Value("bool")),  # (K,) True where the rating is present
                     "group": Value("int64")})  # rows with the same prompt share it (pairwise accuracy)


@dataclass
class RatedSource:
    """One `--data_path` value, read: rows {'prompt', 'response', 'labels', 'label_mask'}; `eval` is None
    when train must be cut 9:1."""
    name: str
    train: datasets.Dataset
    eval: Optional[datasets.Dataset]
    identity: str
    files: tuple = ()


def load_rated_source(path, attributes):
    """Read one `--data_path` value (a file, a folder of train/test files, or synthetic/rated[:N])."""
    if os.path.isdir(path):
        files = readers.split_files(path)
    elif os.path.exists(path):
        files = {"train": path}
    elif path.split(":")[0] == synthetic.RATED_NAME:
        return _synthetic_source(path, attributes)
    else:
        raise UserError(f"--data_path {path!r} is neither an existing file or folder nor {synthetic.RATED_NAME}[:N]. "
                        "main.py --objective regression reads local files of rated responses (columns prompt, "
                        "response and the main.py --attributes columns), e.g. HelpSteer2's train.jsonl.gz and "
                        "validation.jsonl.gz in one folder.")
    parts = {role: _rows_table(read_rated_file(file, attributes), file) for role, file in files.items()}
    return RatedSource(path, parts["train"], parts.get("eval"), "local:" + readers.hash_files(files),
                       tuple(os.path.realpath(f) for f in files.values()))


def _synthetic_source(path, attributes):
    name, _, count = path.partition(":")
    count = count or str(synthetic.DEFAULT_RATED_ROWS)
    if not count.isdigit() or int(count) < 8:
        raise UserError(f"--data_path {path!r}: the row count after ':' must be an integer >= 8, e.g. {name}:2000.")
    unknown = [a for a in attributes if a not in synthetic.RATED_ATTRIBUTES]
    if unknown:
        raise UserError(f"--data_path {path}: no column {', '.join(map(repr, unknown))} (main.py --attributes); its "
                        f"attributes are {', '.join(synthetic.RATED_ATTRIBUTES)}.")
    train, test = synthetic.make_rated_splits(int(count))
    identity = hashlib.sha256(repr((train, test)).encode()).hexdigest()
    where = f"--data_path {path}"
    return RatedSource(path, _rows_table(labelled(train, attributes, where), where),
                       _rows_table(labelled(test, attributes, where), where), f"synthetic:{identity}")


def read_rated_file(file, attributes):
    """Rows {'prompt', 'response', 'labels' (K,), 'label_mask' (K,)} of a local file. A UserError names the
    file and the column when a text column or an --attributes column is absent from every row, and the
    line when a value is not what it must be."""
    rows, where = readers.read_rows(file)
    if not rows:
        raise UserError(f"{file} holds no rows; each --data_path file needs at least one rated response.")
    columns = list(dict.fromkeys(key for row in rows for key in row))
    missing_text = [c for c in TEXT_FIELDS if c not in columns]
    missing = [a for a in attributes if a not in columns]
    if missing_text or missing:
        named = f" ({', '.join(missing)} named by main.py --attributes)" if missing else ""
        raise UserError(f"{file}: missing column(s) {', '.join(missing_text + missing)}{named}; columns found: "
                        f"{', '.join(map(str, columns))}. main.py --objective regression reads prompt, response "
                        "and one numeric column per attribute: rename the columns or change main.py --attributes.")
    return labelled(rows, attributes, lambda i: f"{file}, {where(i)}")


def labelled(rows, attributes, where):
    """rows -> {'prompt', 'response', 'labels', 'label_mask'}; `where(i)` (or a text) names row i in errors."""
    place = where if callable(where) else (lambda i: f"{where}, row {i + 1}")
    out = []
    for i, row in enumerate(rows):
        for field in TEXT_FIELDS:
            if not isinstance(row.get(field), str):
                got = "missing" if field not in row else "null" if row[field] is None else type(row[field]).__name__
                raise UserError(f"{place(i)}: field {field!r} is {got}; it must be text. Fix or remove that row.")
        ratings = [rating(row.get(name), lambda name=name: f"{place(i)}: column {name!r}") for name in attributes]
        out.append({"prompt": row["prompt"], "response": row["response"],
                    "labels": [0.0 if r is None else r for r in ratings],
                    "label_mask": [r is not None for r in ratings]})
    return out


def rating(value, where):
    """A rating as a float, or None (masked) for null, NaN or a blank CSV cell; UserError for anything else
    (`where()` says where)."""
    if isinstance(value, str):  # a CSV cell
        text = value.strip()
        try:
            value = None if text.lower() in ("", "nan", "null", "none") else float(text)
        except ValueError:
            raise UserError(f"{where()} holds {text[:40]!r}, not a number; give ratings as numbers (blank or "
                            "null where there is none).") from None
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise UserError(f"{where()} holds {value!r}, not a finite number; give ratings as numbers (blank or null "
                        "where there is none).")
    return float(value)


def _rows_table(rows, where):
    if not rows:
        raise UserError(f"{where} holds no rows; each --data_path source needs at least one rated response.")
    return datasets.Dataset.from_list(rows)


# ---------------------------------------------------------------- split, tokenise, cache

def build_rated_datasets(data_paths, data_split, seed, tokenizer, max_seq_len, cache_dir, attributes,
                         end_of_conversation_token, num_padding_at_beginning, end_token_rule):
    """(train, eval) `datasets.Dataset`s of tokenised rated rows (`FEATURES`), memory-mapped from the cache
    `cache_dir/rated-<key>` (its meta.json says the end-token rule chosen and why, as the pairs' does, so
    data.pairs.build_info reads it). Every rank reads the sources (errors come before any model loads);
    local rank 0 writes the cache, the others wait and open it."""
    data_paths = [data_paths] if isinstance(data_paths, str) else list(data_paths)
    if not isinstance(seed, int) or not 0 <= seed < 2**32:
        raise UserError(f"--seed {seed!r} must be an integer in [0, 2**32) (numpy's RandomState shuffles the data).")
    settings = {"version": CACHE_VERSION, "objective": "regression", "attributes": list(attributes),
                "data_split": parse_data_split(data_split), "seed": seed, "max_seq_len": max_seq_len,
                "end_of_conversation_token": end_of_conversation_token, "tokenizer": tokenizer_identity(tokenizer),
                "pad_token_id": tokenizer.pad_token_id, "num_padding_at_beginning": num_padding_at_beginning,
                "end_token_rule": end_token_rule}
    sources = _load_sources(data_paths, attributes)
    key = {"settings": settings, "sources": [(s.identity, s.eval is None) for s in sources]}
    folder = os.path.join(cache_dir, "rated-" + hashlib.sha256(json.dumps(key, sort_keys=True).encode())
                          .hexdigest()[:24])
    if int(os.environ.get("LOCAL_RANK", get_rank())) == 0:
        _build_or_reuse(folder, sources, settings, tokenizer, cache_dir)
    barrier()
    try:
        rows = cache.open_cache(folder)
    except cache.CACHE_ERRORS as err:
        raise UserError(f"{folder}: cannot load the tokenised rated rows ({readers.one_line(err)}); delete that "
                        "folder and run again.") from err
    with open(os.path.join(folder, "meta.json")) as f:
        meta = json.load(f)
    print_rank0(f"data: end-token rule {meta['end_token_rule']}: {RULES[meta['end_token_rule']]}; because "
                f"{meta['reason']}")
    return rows


def _load_sources(data_paths, attributes):
    sources, seen = [], {}
    for path in data_paths:
        source = load_rated_source(path, attributes)
        for key in (source.identity,) + source.files:
            if key in seen:
                raise UserError(f"--data_path {seen[key]!r} and {path!r} read the same data; its rows would be "
                                "trained on twice. Give each source once.")
            seen[key] = path
        sources.append(source)
    return sources


def _build_or_reuse(folder, sources, settings, tokenizer, cache_dir):
    if cache.is_complete(folder) and cache.verify_cache(folder)[1] is None:
        print_rank0(f"data: reusing the tokenised rated rows in {folder}")
        return
    tmp = f"{folder}.tmp-{socket.gethostname()}-{os.getpid()}"
    if os.path.isdir(cache_dir):
        cache.remove_stale_temps(cache_dir)
    shutil.rmtree(folder, ignore_errors=True)  # damaged (a complete build is published by one rename)
    try:
        os.makedirs(tmp)
        _build(tmp, sources, settings, tokenizer)
        cache.publish(tmp, folder)
    except OSError as err:
        raise UserError(f"--data_output_path {cache_dir!r}: writing the tokenised rows failed "
                        f"({readers.one_line(err)}); check that it is writable, or point it elsewhere.") from err
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    print_rank0(f"data: built the tokenised rated rows in {folder}")


def _build(tmp, sources, settings, tokenizer):
    """Write train/, eval/ and meta.json into `tmp`: each split's phase-2 rows of every source, blended."""
    eot, lead = settings["end_of_conversation_token"], pads_at_beginning(tokenizer)
    meta = {"settings": settings, "sources": [s.name for s in sources], "rows": {}, "dropped": {},
            "end_of_conversation_token": eot}
    splits, inside = {}, 0
    for split in ("train", "eval"):
        parts = [_phase2_rows(s, split, settings) for s in sources]
        rows = datasets.concatenate_datasets([p for p in parts if len(p)]) if any(map(len, parts)) else None
        if rows is None:
            shares = ",".join(f"{share:g}" for share in settings["data_split"])
            raise UserError(f"--data_split {shares} leaves no {split} rows for training "
                            f"(share 2 rounds to 0 rows of {', '.join(s.name for s in sources)}).")
        if len(sources) > 1:
            rows = rows.select(shuffle_idx(settings["seed"], len(rows)), keep_in_memory=True)
        splits[split], meta["dropped"][split] = tokenize_rows(rows.to_list(), tokenizer, settings["max_seq_len"], eot)
        if not splits[split]:
            raise UserError(f"--data_path {', '.join(s.name for s in sources)}: no {split} row has any rating of "
                            f"main.py --attributes {','.join(settings['attributes'])}.")
        inside += sum(pad_inside(ids, settings["pad_token_id"], lead) for ids in splits[split]["input_ids"])
    meta["end_token_rule"], meta["reason"] = choose(
        settings["end_token_rule"], False, inside, sum(len(s["input_ids"]) for s in splits.values()),
        tokenizer.convert_ids_to_tokens(settings["pad_token_id"]))
    for split, columns in splits.items():
        datasets.Dataset.from_dict(columns, features=FEATURES).save_to_disk(os.path.join(tmp, split))
        meta["rows"][split] = len(columns["input_ids"])
        print_rank0(f"data: {split}: kept {meta['rows'][split]:,} rated rows; dropped {meta['dropped'][split]:,} "
                    "with no rating of the attributes")
    meta["files"] = cache.file_records(tmp)
    with open(os.path.join(tmp, "meta.json"), "w") as f:
        json.dump(meta, f, indent=1)


def tokenize_rows(rows, tokenizer, max_seq_len, eot):
    """(columns of `FEATURES`, or {} when no row is left; the number of rows dropped for having no rating).
    Text = prompt + response + `eot`, tokenised as training tokenises a pair's side; rows with one prompt
    share a `group`."""
    kept = [row for row in rows if any(row["label_mask"])]
    if not kept:
        return {}, len(rows)
    groups = {}
    columns = {"input_ids": encode_texts(tokenizer, [r["prompt"] + r["response"] + eot for r in kept], max_seq_len),
               "labels": [r["labels"] for r in kept], "label_mask": [r["label_mask"] for r in kept],
               "group": [groups.setdefault(r["prompt"], len(groups)) for r in kept]}
    return columns, len(rows) - len(kept)


class RatedCollator:
    """Turn B rated rows into {'input_ids', 'attention_mask'} LongTensor (B, L), right-padded with
    `pad_token_id` (rounded up to `pad_to_multiple_of`), 'labels' float32 (B, K) and 'label_mask' bool (B, K);
    with `with_groups` also 'group' (B,), the prompt group of each row (evaluation pops it).

    >>> collate = RatedCollator(pad_token_id=1)
    >>> batch = collate([{"input_ids": [2, 5, 6], "labels": [3.0, 0.0], "label_mask": [True, False], "group": 0},
    ...                  {"input_ids": [2, 8], "labels": [1.0, 4.0], "label_mask": [True, True], "group": 0}])
    >>> batch["input_ids"]
    tensor([[2, 5, 6],
            [2, 8, 1]])
    >>> batch["attention_mask"]
    tensor([[1, 1, 1],
            [1, 1, 0]])
    >>> batch["labels"], batch["label_mask"]
    (tensor([[3., 0.],
            [1., 4.]]), tensor([[ True, False],
            [ True,  True]]))
    """

    def __init__(self, pad_token_id, pad_to_multiple_of=None, with_groups=False):
        self.pad_token_id, self.pad_to_multiple_of, self.with_groups = pad_token_id, pad_to_multiple_of, with_groups

    def __call__(self, rows):
        longest = max(len(r["input_ids"]) for r in rows)
        multiple = self.pad_to_multiple_of or 1
        length = -(-longest // multiple) * multiple
        input_ids = torch.full((len(rows), length), self.pad_token_id, dtype=torch.long)
        attention_mask = torch.zeros((len(rows), length), dtype=torch.long)
        for i, row in enumerate(rows):
            input_ids[i, :len(row["input_ids"])] = torch.as_tensor(row["input_ids"], dtype=torch.long)
            attention_mask[i, :len(row["input_ids"])] = 1
        batch = {"input_ids": input_ids, "attention_mask": attention_mask,
                 "labels": torch.tensor([r["labels"] for r in rows], dtype=torch.float32),
                 "label_mask": torch.tensor([r["label_mask"] for r in rows], dtype=torch.bool)}
        if self.with_groups:
            batch["group"] = torch.tensor([r["group"] for r in rows], dtype=torch.long)
        return batch
