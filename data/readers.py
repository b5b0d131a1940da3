"""Read local preference files (.json, .jsonl, .jsonl.gz, .parquet, .csv) with errors that name the line."""
import csv
import gzip
import hashlib
import json
import os

import datasets
import pyarrow as pa
import pyarrow.parquet as pq
from datasets.table import InMemoryTable

from utils.errors import UserError

SUFFIXES = (".jsonl.gz", ".json.gz", ".jsonl", ".json", ".parquet", ".csv")  # longest match first
EVAL_STEMS = ("test", "eval", "validation")


def _suffix(file):
    return next((s for s in SUFFIXES if file.endswith(s)), None)


def is_parquet(file):
    return _suffix(file) == ".parquet"


def is_saved_dataset(folder):
    """True for a folder written by `Dataset.save_to_disk` or `DatasetDict.save_to_disk`."""
    try:
        names = set(os.listdir(folder))
    except OSError as err:
        raise UserError(f"--data_path {folder!r}: cannot list the folder ({err}).") from err
    return "dataset_dict.json" in names or {"state.json", "dataset_info.json"} <= names


def split_files(folder):
    """{'train': path, 'eval': path} from a folder's train.* and test.*/eval.*/validation.* files."""
    try:
        names = sorted(os.listdir(folder))
    except OSError as err:
        raise UserError(f"--data_path {folder!r}: cannot list the folder ({err}).") from err
    found = {"train": [], "eval": []}
    for name in names:
        suffix = _suffix(name)
        stem = name[:-len(suffix)] if suffix else None
        role = "train" if stem == "train" else "eval" if stem in EVAL_STEMS else None
        if role:
            found[role].append(os.path.join(folder, name))
    for role, paths in found.items():
        if len(paths) > 1:
            raise UserError(f"--data_path {folder!r} holds several {role} files ({', '.join(paths)}); keep one.")
    if not found["train"]:
        raise UserError(f"--data_path {folder!r} has no train file (files found: {', '.join(names) or 'none'}). "
                        f"Name it train{{{','.join(SUFFIXES)}}}, with test.* or eval.* next to it, "
                        "or pass a save_to_disk folder.")
    return {role: paths[0] for role, paths in found.items() if paths}


def read_rows(file):
    """(rows, where) from a .json/.jsonl[.gz]/.csv file; where(i) says which line row i came from."""
    suffix = _suffix(file)
    if suffix is None:
        raise UserError(f"--data_path {file!r}: unsupported file type; use one of {', '.join(SUFFIXES)} "
                        "or a save_to_disk folder.")
    opener = gzip.open if suffix.endswith(".gz") else open
    try:
        with opener(file, "rt", encoding="utf-8", newline="" if suffix == ".csv" else None) as f:
            if suffix == ".csv":
                return _csv_rows(f, file)
            text = f.read()
    except UnicodeDecodeError as err:
        raise UserError(f"{file} is not UTF-8 text ({err}).") from err
    except (OSError, EOFError) as err:
        raise UserError(f"--data_path {file!r}: cannot read the file ({err}).") from err
    if suffix.startswith(".jsonl"):
        return _jsonl_rows(text, file)
    return _json_rows(text, file)


def _jsonl_rows(text, file):
    rows, lines = [], []
    for number, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as err:
            raise UserError(f"{file}, line {number}: not valid JSON ({err.msg}, column {err.colno}). "
                            "Fix that line.") from err
        if not isinstance(row, dict):
            raise UserError(f"{file}, line {number}: expected a JSON object like "
                            f'{{"prompt": ..., "chosen": ..., "rejected": ...}}, got {type(row).__name__}.')
        rows.append(row)
        lines.append(number)
    return rows, lambda i: f"line {lines[i]}"


def _json_rows(text, file):
    """A JSON list of objects, one object, or JSON Lines saved as .json (as load_dataset accepts)."""
    if not text.strip():
        return [], None
    try:
        data = json.loads(text)
    except json.JSONDecodeError as err:
        if err.msg == "Extra data":  # several top-level values: JSON Lines
            return _jsonl_rows(text, file)
        raise UserError(f"{file}, line {err.lineno}: not valid JSON ({err.msg}, column {err.colno}). "
                        "Fix that line.") from err
    rows = [data] if isinstance(data, dict) else data
    if not isinstance(rows, list):
        raise UserError(f"{file}: expected a list of JSON objects with prompt/chosen/rejected fields.")
    for i, row in enumerate(rows):
        if not isinstance(row, dict):
            raise UserError(f"{file}, item {i + 1}: expected a JSON object with prompt/chosen/rejected "
                            f"fields, got {type(row).__name__}.")
    return rows, lambda i: f"item {i + 1}"


def _csv_rows(f, file):
    reader = csv.DictReader(f)
    rows, lines = [], []
    try:
        for row in reader:
            row.pop(None, None)  # cells beyond the header
            rows.append(row)
            lines.append(reader.line_num)
    except csv.Error as err:
        raise UserError(f"{file}, line {reader.line_num}: malformed CSV ({err}).") from err
    return rows, lambda i: f"line {lines[i]}"


def read_parquet(file):
    try:
        return datasets.Dataset(InMemoryTable(pq.read_table(file)))
    except (OSError, pa.ArrowException) as err:
        raise UserError(f"--data_path {file!r}: cannot read it as parquet ({err}).") from err


def all_files(folder):
    """{relative path: path} for every file under `folder` (what a save_to_disk folder holds)."""
    files = {}
    for root, _, names in os.walk(folder):
        for name in names:
            path = os.path.join(root, name)
            files[os.path.relpath(path, folder)] = path
    return files


def hash_files(labelled):
    """sha256 over (label, bytes) of each file, so a changed byte or a swapped role changes it."""
    digest = hashlib.sha256()
    for label in sorted(labelled):
        digest.update(f"\0{label}\0".encode())
        try:
            with open(labelled[label], "rb") as f:
                for block in iter(lambda: f.read(1 << 20), b""):
                    digest.update(block)
        except OSError as err:
            raise UserError(f"--data_path: cannot read {labelled[label]!r} ({err}).") from err
    return digest.hexdigest()
