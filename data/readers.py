"""Read local preference files (.json, .jsonl, .jsonl.gz, .parquet, .csv) with errors that name the line."""
import codecs
import csv
import gzip
import hashlib
import io
import json
import os
import re
import zlib

import datasets
import pyarrow as pa
import pyarrow.parquet as pq
from datasets.table import InMemoryTable

from utils.errors import UserError

SUFFIXES = (".jsonl.gz", ".json.gz", ".jsonl", ".json", ".parquet", ".csv")  # longest match first
EVAL_NAMES = ("test", "eval", "validation")  # file stems and saved-split names that hold eval pairs
WRITTEN_LIST = re.compile(r"\[\s*[\[{'\"].*\]", re.DOTALL)  # a list of objects, lists or texts, written out as text


def _suffix(file):
    return next((s for s in SUFFIXES if file.endswith(s)), None)


def has_data_suffix(path):
    return _suffix(path) is not None


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
        role = "train" if stem == "train" else "eval" if stem in EVAL_NAMES else None
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


def check_file(path, flag):
    """UserError naming `flag` unless `path` is a file."""
    if os.path.isdir(path):
        raise UserError(f"{flag} {path!r} is a folder: pass a file ({', '.join(SUFFIXES)}).")
    if not os.path.isfile(path):
        raise UserError(f"{flag} {path!r}: no such file.")


def read_rows(file, flag="--data_path"):
    """(rows, where) from a .json/.jsonl[.gz]/.csv/.parquet file; where(i) says which line row i came from.
    `flag` is the one errors name: the flag that passed `file`."""
    check_file(file, flag)
    suffix = _suffix(file)
    if suffix is None:
        raise UserError(f"{flag} {file!r}: unsupported file type; use one of {', '.join(SUFFIXES)}.")
    if suffix == ".parquet":
        return read_parquet(file, flag).to_list(), lambda i: f"row {i + 1}"
    text = _read_text(file, suffix.endswith(".gz"), flag)
    if suffix == ".csv":
        return _csv_rows(text, file)
    if suffix.startswith(".jsonl"):
        return _jsonl_rows(text, file)
    return _json_rows(text, file)


def _read_text(file, gzipped, flag):
    """The file's text: gunzipped if asked, decoded as UTF-8, a leading byte-order mark removed."""
    try:
        with open(file, "rb") as f:
            data = f.read()
    except OSError as err:
        raise UserError(f"{flag} {file!r}: cannot read the file ({err}).") from err
    if gzipped:
        try:
            data = gzip.decompress(data)
        except (OSError, EOFError, zlib.error) as err:
            raise UserError(f"{flag} {file!r}: cannot read the file: its gzip data is truncated or "
                            f"damaged ({err}); re-create or re-download it.") from err
    if data.startswith(codecs.BOM_UTF8):  # Excel and Notepad write one; it would stick to the first column name
        data = data[len(codecs.BOM_UTF8):]
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as err:
        line = data.count(b"\n", 0, err.start) + 1
        raise UserError(f"{file}, line {line}: not UTF-8 text (byte {data[err.start]:#04x}); save the file "
                        "as UTF-8, or check it is the file you meant.") from err


def _json_error(file, line, err):
    if isinstance(err, RecursionError):
        return UserError(f"{file}, line {line}: JSON nested too deeply to read. Fix that line.")
    return UserError(f"{file}, line {line}: not valid JSON ({err.msg}, column {err.colno}). Fix that line.")


def _jsonl_rows(text, file):
    rows, lines = [], []
    for number, line in enumerate(text.splitlines(), 1):
        line = line.lstrip("\ufeff")  # files joined with `cat` keep each one's byte-order mark
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except (json.JSONDecodeError, RecursionError) as err:
            raise _json_error(file, number, err) from err
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
        raise _json_error(file, err.lineno, err) from err
    except RecursionError as err:
        raise _json_error(file, 1, err) from err
    rows = [data] if isinstance(data, dict) else data
    if not isinstance(rows, list):
        raise UserError(f"{file}: expected a list of JSON objects with prompt/chosen/rejected fields, "
                        f"got {type(data).__name__}.")
    for i, row in enumerate(rows):
        if not isinstance(row, dict):
            raise UserError(f"{file}, item {i + 1}: expected a JSON object with prompt/chosen/rejected "
                            f"fields, got {type(row).__name__}.")
    return rows, lambda i: f"item {i + 1}"


def _csv_rows(text, file):
    """Rows of a CSV file with a header line, parsed strictly: every row has one value per column."""
    csv.field_size_limit(max(csv.field_size_limit(), 2**31 - 1))  # answers may exceed the 128 KiB default
    reader = csv.reader(io.StringIO(text, newline=""), strict=True)
    fix = ('Give each row one value per column, and quote every value that holds a comma, a quote or a '
           'line break ("like, this"; a quote inside doubled: "").')
    rows, lines = [], []
    try:
        header = next(reader, [])
        duplicated = sorted({name for name in header if header.count(name) > 1})
        if duplicated:
            raise UserError(f"{file}, line 1: the header names column(s) {', '.join(duplicated)} twice; "
                            "give each column one name.")
        start = reader.line_num + 1
        for record in reader:
            if record:  # a blank line reads as []
                if len(record) != len(header):
                    raise UserError(f"{file}, line {start}: {len(record)} fields, but the header has "
                                    f"{len(header)} ({', '.join(header)}). {fix}")
                rows.append(dict(zip(header, record)))
                lines.append(start)
            start = reader.line_num + 1
    except csv.Error as err:
        raise UserError(f"{file}, line {reader.line_num}: malformed CSV ({err}). {fix}") from err
    for column in header:
        _decode_lists(rows, column, lines, file)
    return rows, lambda i: f"line {lines[i]}"


def _json_list(text):
    """The list a JSON-encoded cell holds, or None."""
    if not text.lstrip().startswith("["):
        return None
    try:
        value = json.loads(text)
    except (ValueError, RecursionError):
        return None
    return value if isinstance(value, list) else None


def _decode_lists(rows, column, lines, file):
    """A CSV has no list type, so message lists and rated completions are stored JSON-encoded: a column whose
    every non-blank cell is a JSON list becomes lists (blank cells null). A list written another way (a Python
    repr, as pandas' to_csv writes them) or in a column that is text elsewhere is refused, never read as text."""
    cells = [(i, row[column]) for i, row in enumerate(rows) if row[column].strip()]
    lists = {i: _json_list(text) for i, text in cells}
    if cells and all(value is not None for value in lists.values()):
        for i, row in enumerate(rows):
            row[column] = lists.get(i)
        return
    fix = ("A CSV cannot hold list columns: write the data as JSONL or parquet (pandas: "
           "df.to_json(path, orient='records', lines=True)), or JSON-encode every cell of the column "
           f"(df[{column!r}] = df[{column!r}].map(json.dumps)).")
    for i, text in cells:
        if WRITTEN_LIST.fullmatch(text.strip()):
            if lists[i] is None:
                raise UserError(f"{file}, line {lines[i]}: column {column!r} holds a list that is not JSON "
                                f"({_start(text)}), as pandas' to_csv writes lists. {fix}")
            other = next(j for j, value in lists.items() if value is None)
            raise UserError(f"{file}, line {lines[i]}: column {column!r} holds a JSON list, but line {lines[other]} "
                            f"holds text ({_start(rows[other][column])}); a column is read as lists only when every "
                            f"cell is one. {fix}")


def _start(text, limit=40):
    text = text.strip()
    return repr(text if len(text) <= limit else text[:limit] + "...")


def read_parquet(file, flag="--data_path"):
    try:
        return datasets.Dataset(InMemoryTable(pq.read_table(file)))
    except (OSError, ValueError, pa.ArrowException) as err:  # ArrowInvalid is a ValueError
        raise UserError(f"{flag} {file!r}: cannot read it as parquet ({one_line(err)}). Check it is a whole "
                        "parquet file whose columns are text or numbers.") from err


def one_line(err):
    """An exception's message on one line (Arrow's span several), so `error: ...` stays one line."""
    return " ".join(str(err).split())


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
