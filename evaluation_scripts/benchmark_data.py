"""Reading benchmark files (RM-Bench, RewardBench v1/2, JudgeBench, preference pairs) into `Item`s, each
row checked against its benchmark's schema with an error naming the file, the row and the fix."""
import os
import re
from dataclasses import dataclass, field

from evaluation_scripts import rm_metrics as M
from utils.errors import UserError

SCHEMAS = {  # what each --benchmark reads, for error messages
    "rmbench": "fields id, prompt, chosen (3 answers), rejected (3 answers), and a domain: a 'domain' field or a "
               "file name starting with chat, code, math or safety (as RM-Bench's data/*_filtered.json)",
    "rewardbench": "fields prompt, chosen, rejected (one answer each) and subset",
    "rewardbench2": "fields id, prompt, chosen (a list: one answer, several for Ties), rejected (a list) and subset",
    "judgebench": "fields question, response_A, response_B, label ('A>B' or 'B>A') and source",
    "pairs": "fields prompt, chosen, rejected (texts), or chosen/rejected whole '\\n\\nHuman: ... "
             "\\n\\nAssistant: ...' conversations; an optional subset field groups them",
}


@dataclass
class Item:
    """One benchmark prompt: answers that should win (`chosen`) and answers that should lose."""
    group: str  # RM-Bench sub-domain, RewardBench subset, JudgeBench source, or a pairs file's subset
    prompt: str
    chosen: list
    rejected: list
    extra: dict = field(default_factory=dict)
    chosen_at: list = field(default_factory=list)  # indices into the table of unique scored texts
    rejected_at: list = field(default_factory=list)



class RowMismatch(UserError):
    """A row that does not fit its benchmark's schema; `fitting_benchmark_hint` says which one it fits."""

    def __init__(self, message, row, benchmark):
        super().__init__(message)
        self.row, self.benchmark = row, benchmark


def _error(path, where, message, benchmark, row):
    """A RowMismatch naming the file and row, what is wrong and what the benchmark needs."""
    return RowMismatch(f"{path}, {where}: {message}. --benchmark {benchmark} needs {SCHEMAS[benchmark]}.", row,
                       benchmark)


def fitting_benchmark_hint(error, loaders, path):
    """A sentence naming the benchmark whose loader (`loaders`: name -> load function) reads `error`'s row, or
    saying that none does; tried, not guessed, so the benchmark named accepts the row."""
    for name, load in loaders.items():
        try:
            load([error.row], lambda i: "row", path)
        except RowMismatch:
            continue
        if name != error.benchmark:
            return f" This row fits --benchmark {name}."
    if any(isinstance(value, list) and value and isinstance(value[0], dict) for value in error.row.values()):
        return (" It holds conversations (message lists), as main.py reads them, which no --benchmark reads: "
                "measure a reward model on such pairs with evaluate.py --data_path.")
    return ""


def _text(row, name, path, where, benchmark):
    value = row.get(name)
    if not isinstance(value, str):
        got = "missing" if name not in row else "null" if value is None else type(value).__name__
        raise _error(path, where, f"field {name!r} is {got}, not text (fields found: {', '.join(map(str, row))})",
                     benchmark, row)
    return value


def _texts(row, name, path, where, benchmark, count=None):
    value = row.get(name)
    if not (isinstance(value, list) and value and all(isinstance(v, str) for v in value)):
        got = "missing" if name not in row else type(value).__name__
        raise _error(path, where, f"field {name!r} is {got}, not a list of texts", benchmark, row)
    if count is not None and len(value) != count:
        raise _error(path, where, f"field {name!r} holds {len(value)} answers, not {count}", benchmark, row)
    return value


def read_file(path, limit):
    """(rows, where) of one local file; where(i) names row i's line or item."""
    from data.readers import read_rows
    rows, where = read_rows(path, "--data")
    if not rows:
        raise UserError(f"{path} holds no rows: an empty benchmark file scores nothing; pass the full file.")
    return (rows[:limit] if limit else rows), where


def load_rmbench(rows, where, path):
    items = []
    for i, row in enumerate(rows):
        subdomain = row.get("domain") or os.path.basename(path).split("_")[0].split(".")[0]
        if M.rmbench_domain(subdomain) is None:
            raise _error(path, where(i), "no 'domain' field, and the file name does not start with a domain",
                         "rmbench", row)
        items.append(Item(subdomain, _text(row, "prompt", path, where(i), "rmbench"),
                          _texts(row, "chosen", path, where(i), "rmbench", 3),
                          _texts(row, "rejected", path, where(i), "rmbench", 3), {"id": row.get("id")}))
    return items


def load_rewardbench(rows, where, path):
    return [Item(_text(row, "subset", path, where(i), "rewardbench"),
                 _text(row, "prompt", path, where(i), "rewardbench"),
                 [_text(row, "chosen", path, where(i), "rewardbench")],
                 [_text(row, "rejected", path, where(i), "rewardbench")], {"id": row.get("id")})
            for i, row in enumerate(rows)]


def load_rewardbench2(rows, where, path):
    items = []
    for i, row in enumerate(rows):
        subset = _text(row, "subset", path, where(i), "rewardbench2")
        item = Item(subset, _text(row, "prompt", path, where(i), "rewardbench2"),
                    _texts(row, "chosen", path, where(i), "rewardbench2"),
                    _texts(row, "rejected", path, where(i), "rewardbench2"), {"id": row.get("id")})
        if subset.lower() == "ties":
            if not re.fullmatch(r"(ref|tied):\d+", str(row.get("id"))):
                raise _error(path, where(i), f"a Ties row needs an id 'ref:N' or 'tied:N', got {row.get('id')!r}",
                             "rewardbench2", row)
        elif len(item.chosen) != 1:
            raise _error(path, where(i), f"subset {subset!r} needs exactly one chosen answer, got "
                         f"{len(item.chosen)} (only Ties rows hold several)", "rewardbench2", row)
        items.append(item)
    return items


def load_judgebench(rows, where, path):
    items = []
    for i, row in enumerate(rows):
        a, b = (_text(row, k, path, where(i), "judgebench") for k in ("response_A", "response_B"))
        label = row.get("label")
        if label not in ("A>B", "B>A"):
            raise _error(path, where(i), f"label is {label!r}; it must be 'A>B' or 'B>A'", "judgebench", row)
        chosen, rejected = (a, b) if label == "A>B" else (b, a)
        items.append(Item(_text(row, "source", path, where(i), "judgebench"),
                          _text(row, "question", path, where(i), "judgebench"), [chosen], [rejected],
                          {"id": row.get("pair_id"), "label": label}))
    return items


def load_pairs(rows, where, path):
    from data.sources import split_hh
    items = []
    for i, row in enumerate(rows):
        group = str(row.get("subset") or "all")
        if "prompt" in row:
            prompt, chosen, rejected = (_text(row, k, path, where(i), "pairs")
                                        for k in ("prompt", "chosen", "rejected"))
        else:
            prompt, chosen = split_hh(_text(row, "chosen", path, where(i), "pairs"))
            rejected = split_hh(_text(row, "rejected", path, where(i), "pairs"))[1]
        items.append(Item(group, prompt, [chosen], [rejected], {"id": row.get("id")}))
    return items


def local_copy(path):
    """An http(s) address is downloaded to a temporary file (its name kept); a local path is returned as is."""
    if not re.match(r"https?://", path):
        return path
    import tempfile
    import urllib.parse
    import urllib.request

    name = urllib.parse.unquote(os.path.basename(urllib.parse.urlparse(path).path)) or "data.json"
    target = os.path.join(tempfile.mkdtemp(prefix="benchmark_"), name)
    try:
        urllib.request.urlretrieve(path, target)
    except (OSError, ValueError) as err:
        raise UserError(f"--data {path}: could not download it ({err}). Download the file yourself "
                        "and pass its local path.") from err
    return target
