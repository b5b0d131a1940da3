"""Where preference pairs come from: hub datasets (a registry), local files, a synthetic set.

Every source becomes a `Source`: raw `datasets.Dataset` splits plus the `Adapter` that turns a row
into the two texts a pair is scored on (or a `data.formats.RowFormat` for conversations and rated
completions, detected from the columns), and an identity string that changes with the content.
"""
import hashlib
import os
import re
from dataclasses import dataclass
from typing import Callable, Optional

import datasets
import pyarrow as pa
import pyarrow.compute as pc

from data import formats, readers, synthetic
from utils.errors import UserError
from utils.hub import hub_unreachable_reason

TEXT_COLUMNS = ("prompt", "chosen", "rejected")  # the columns of the two local layouts


@dataclass(frozen=True)
class Adapter:
    """How one raw row becomes (prompt + answer) texts for its chosen and rejected answers.

    `fields` are the text columns every row must hold; `pick(row)` returns the raw
    (prompt, chosen, rejected) strings (default: the three fields in order). A text is
    `prompt_template.format(prompt) + answer_prefix + answer`. `eval_split` is the hub split used
    for evaluation; None means the source only has a train split, which is cut 9:1.
    """
    fields: tuple = ("prompt", "chosen", "rejected")
    eval_split: Optional[str] = "test"
    prompt_template: str = "{}"
    answer_prefix: str = ""
    pick: Optional[Callable] = None

    def describe(self):
        """A stable text that changes when the adapter's behaviour does (for the cache key)."""
        pick = self.pick.__qualname__ if self.pick else None
        return repr((self.fields, self.eval_split, self.prompt_template, self.answer_prefix, pick))

    def parts(self, row):
        """(prompt, chosen answer, rejected answer) as scored: template and answer prefix applied."""
        prompt, chosen, rejected = self.pick(row) if self.pick else (row[f] for f in self.fields)
        return self.prompt_template.format(prompt), self.answer_prefix + chosen, self.answer_prefix + rejected

    def texts(self, row):
        prompt, chosen, rejected = self.parts(row)
        return prompt + chosen, prompt + rejected

    def pairs(self, row):
        """[(prompt, chosen answer, rejected answer, margin or None)]: one pair per row."""
        return [self.parts(row) + (row.get("margin"),)]


def split_hh(conversation):
    """'...\\n\\nAssistant: answer' -> (everything up to and including the last
    '\\n\\nAssistant:', the answer); no such marker -> ('', conversation)."""
    marker = "\n\nAssistant:"
    cut = conversation.rfind(marker)
    if cut < 0:
        return "", conversation
    cut += len(marker)
    return conversation[:cut], conversation[cut:]


def _pick_hh(row):
    prompt, chosen = split_hh(row["chosen"])
    return prompt, chosen, split_hh(row["rejected"])[1]


def _strip_citations(text):
    # DeepSpeed-Chat's two substitutions: drop " [1]", "(2)" and the like.
    return re.sub(r"[\(\[].*?[\)\]]", "", re.sub(r" [\(\[].*?[\)\]]", "", text))


def _pick_webgpt(row):
    a, b = _strip_citations(row["answer_0"]), _strip_citations(row["answer_1"])
    first_wins = float(row["score_0"]) >= float(row["score_1"])  # ties: answer_0 is chosen
    return (row["question"]["full_text"],) + ((a, b) if first_wins else (b, a))


def _pick_shp(row):
    a, b = row["human_ref_A"], row["human_ref_B"]
    return (row["history"], a, b) if int(row["labels"]) == 1 else (row["history"], b, a)


HUMAN_ASSISTANT = " Human: {} Assistant:"
PROMPT_CHOSEN_REJECTED = Adapter()
HH_CONVERSATIONS = Adapter(fields=("chosen", "rejected"), pick=_pick_hh)

REGISTRY = {
    "Dahoas/rm-static": PROMPT_CHOSEN_REJECTED,
    "Dahoas/full-hh-rlhf": PROMPT_CHOSEN_REJECTED,
    "Dahoas/synthetic-instruct-gptj-pairwise": Adapter(
        eval_split=None, prompt_template=HUMAN_ASSISTANT, answer_prefix=" "),
    "yitingxie/rlhf-reward-datasets": PROMPT_CHOSEN_REJECTED,
    "openai/webgpt_comparisons": Adapter(
        fields=("answer_0", "answer_1"), eval_split=None, prompt_template=HUMAN_ASSISTANT,
        answer_prefix=" ", pick=_pick_webgpt),
    "stanfordnlp/SHP": Adapter(
        fields=("history", "human_ref_A", "human_ref_B"), eval_split="validation",
        prompt_template=HUMAN_ASSISTANT, answer_prefix=" ", pick=_pick_shp),
    "Anthropic/hh-rlhf": HH_CONVERSATIONS,
}


@dataclass
class Source:
    """One `--data_path` value, loaded. `eval` is None when train must be cut 9:1."""
    name: str
    adapter: Adapter
    train: datasets.Dataset
    eval: Optional[datasets.Dataset]
    identity: str
    files: tuple = ()  # the real paths of the local files it reads


HUB_NAME = re.compile(r"[\w.-]+/[\w.-]+")  # owner/name: read from the hub, its layout found from the columns


def load_source(path, options=formats.ReadOptions()):
    """Load one `--data_path` value: an existing file/folder, `synthetic/preference[:N]`, or a hub name.
    Rows of conversations or rated completions are checked with `options` (see data.formats)."""
    if os.path.exists(path):
        return _load_local(path, options)
    if path.split(":")[0] in synthetic.SETS:
        return _load_synthetic(path)
    if path in REGISTRY or (HUB_NAME.fullmatch(path) and not readers.has_data_suffix(path)):
        return _load_hub(path, options)
    known = ", ".join(list(REGISTRY) + [name + "[:N]" for name in synthetic.SETS])
    raise UserError(f"--data_path {path!r} is neither an existing file or folder nor a known source. "
                    f"Known sources: {known}, or any hub dataset 'owner/name' in an accepted layout. A local "
                    "source is a file or folder with prompt/chosen/rejected columns (or see docs/data.md).")


def names_a_source(path):
    """True when `load_source` reads `path` (not an existing file or folder) as a synthetic or hub source."""
    return (path.split(":")[0] in synthetic.SETS or path in REGISTRY
            or bool(HUB_NAME.fullmatch(path) and not readers.has_data_suffix(path)))


# ---------------------------------------------------------------- synthetic and hub sources

def _load_synthetic(path):
    name, _, count = path.partition(":")
    count = count or str(synthetic.DEFAULT_PAIRS)
    if not count.isdigit() or int(count) < 2:
        raise UserError(f"--data_path {path!r}: the pair count after ':' must be an integer >= 2, "
                        f"e.g. {name}:4000.")
    train, test = synthetic.make_splits(int(count), name)
    identity = hashlib.sha256(repr((train, test)).encode()).hexdigest()
    adapter = _adapter_for_columns(formats.rows_kinds(train), path)
    return Source(path, adapter, datasets.Dataset.from_list(train), datasets.Dataset.from_list(test),
                  f"synthetic:{identity}")


def _load_hub(name, options):
    """A registered dataset, or any other 'owner/name' whose train split's columns fit a layout."""
    _check_hub_reachable(name)
    try:
        raw = datasets.load_dataset(name)
    except OSError as err:  # ConnectionError, DatasetNotFoundError, a broken local cache
        raise UserError(_hub_message(name, err)) from err
    train = _get_split(raw, "train", name)
    adapter = REGISTRY.get(name) or _adapter_for_columns(formats.dataset_kinds(train), f"{name} (train split)")
    eval_split = adapter.eval_split if name in REGISTRY else next((s for s in readers.EVAL_NAMES if s in raw), None)
    eval_ = _get_split(raw, eval_split, name) if eval_split else None
    for split_name, ds in (("train", train), (eval_split, eval_)):
        if ds is not None:
            check_columns(ds, adapter, f"{name} ({split_name} split)", options)
    identity = "hub:" + name + ":" + ",".join(ds._fingerprint for ds in (train, eval_) if ds is not None)
    return Source(name, adapter, train, eval_, identity)


def _check_hub_reachable(name):
    """Fail in seconds, not after minutes of retries, when the hub cannot be reached."""
    error = hub_unreachable_reason()
    if error is not None:
        raise UserError(_hub_message(name, error))


def _hub_message(name, err):
    return (f"--data_path {name!r}: could not load it from the Hugging Face hub, which looks unreachable "
            f"({type(err).__name__}: {err}). Pass a local folder or file with --data_path instead "
            "(train.*/test.* files in .json/.jsonl/.jsonl.gz/.parquet/.csv, or a save_to_disk folder, "
            "with columns prompt/chosen/rejected), or set HF_DATASETS_OFFLINE=1 if the dataset is "
            "already in your Hugging Face cache.")


def _get_split(dataset_dict, split, where):
    if split not in dataset_dict:
        raise UserError(f"{where} has no {split!r} split (splits found: {', '.join(dataset_dict)}).")
    return dataset_dict[split]


# ---------------------------------------------------------------- local sources

def _load_local(path, options):
    """A save_to_disk folder, a folder of train.*/test.* (or eval.*) files, or one file (cut 9:1)."""
    registry_adapter = next((a for n, a in REGISTRY.items()
                             if path.rstrip("/") == n or path.rstrip("/").endswith("/" + n)), None)
    if os.path.isdir(path) and readers.is_saved_dataset(path):
        train, eval_ = _load_saved(path)
        hashed, where = readers.all_files(path), {"train": f"{path} (train)", "eval": f"{path} (eval)"}
    else:
        files = readers.split_files(path) if os.path.isdir(path) else {"train": path}
        train = _read_checked(files["train"], registry_adapter, options)
        eval_ = _read_checked(files["eval"], registry_adapter, options) if "eval" in files else None
        hashed, where = files, files
    adapter = registry_adapter or _adapter_for_columns(formats.dataset_kinds(train), where["train"])
    check_columns(train, adapter, where["train"], options)
    if eval_ is not None:
        _check_same_layout(train, eval_, where)
        check_columns(eval_, adapter, where["eval"], options)
    return Source(path, adapter, train, eval_, "local:" + readers.hash_files(hashed),
                  tuple(os.path.realpath(f) for f in hashed.values()))


def _text_columns(columns):
    """Which of prompt/chosen/rejected `columns` holds: that decides how a row is read."""
    return [c for c in TEXT_COLUMNS if c in columns]


def _check_same_layout(train, eval_, where):
    """Train and eval are read with one adapter, so they must be in one layout with the same text columns."""
    train_layout = formats.detect(formats.dataset_kinds(train))
    eval_layout = formats.detect(formats.dataset_kinds(eval_))
    if train_layout != eval_layout:
        names = [layout.layout if layout else "prompt/chosen/rejected text" for layout in (train_layout, eval_layout)]
        raise UserError(f"{where['train']} and {where['eval']} are in different layouts ({names[0]} vs {names[1]}), "
                        "so one of them would be read in the other's layout. Give both the same columns.")
    train_text, eval_text = _text_columns(train.column_names), _text_columns(eval_.column_names)
    if train_text != eval_text:
        raise UserError(f"{where['train']} and {where['eval']} have different text columns "
                        f"({', '.join(train_text)} vs {', '.join(eval_text) or 'none'}), so one of them would "
                        "be read in the other's layout. Give both the same columns: prompt, chosen, rejected "
                        "(or chosen, rejected only, holding whole conversations).")


def _load_saved(path):
    try:
        saved = datasets.load_from_disk(path)
    except (OSError, ValueError, KeyError, TypeError) as err:  # KeyError, TypeError: a damaged state.json
        raise UserError(f"--data_path {path!r} looks like a save_to_disk folder but cannot be read "
                        f"({type(err).__name__}: {readers.one_line(err)}); save it again with save_to_disk.") from err
    if isinstance(saved, datasets.Dataset):
        return saved, None
    train = _get_split(saved, "train", f"--data_path {path!r}")
    eval_name = next((s for s in readers.EVAL_NAMES if s in saved), None)
    return train, saved[eval_name] if eval_name else None


def _read_checked(file, registry_adapter, options):
    """Read a local file; rows parsed in Python are checked here, so errors can name the line."""
    if readers.is_parquet(file):
        return readers.read_parquet(file)  # Arrow columns: check_columns names the row
    rows, where = readers.read_rows(file)
    if not rows:
        raise UserError(f"{file} holds no rows; each --data_path file needs at least one preference pair.")
    adapter = registry_adapter or _adapter_for_columns(formats.rows_kinds(rows), file)
    if isinstance(adapter, formats.RowFormat):  # before Arrow, which would only say that types clash
        formats.check_rows(rows, adapter, options, lambda i: f"{file}, {where(i)}")
        return _table(rows, file)
    missing = [f for f in adapter.fields if f not in rows[0]]
    if missing:
        raise UserError(f"{file}: missing column(s) {', '.join(missing)} (columns found: {', '.join(rows[0])}).")
    layout = _text_columns(rows[0])
    for i, row in enumerate(rows):
        for field in adapter.fields:
            value = row.get(field)
            if not isinstance(value, str):
                got = "missing" if field not in row else "null" if value is None else type(value).__name__
                raise UserError(f"{file}, {where(i)}: field {field!r} is {got}; it must be text. "
                                "Fix or remove that row.")
        if _text_columns(row) != layout:
            raise UserError(f"{file}, {where(i)}: has text fields {', '.join(_text_columns(row))} but "
                            f"{where(0)} has {', '.join(layout)}; the first row decides how every row is read. "
                            "Give every row the same fields.")
    return _table(rows, file)


def _table(rows, file):
    try:
        return datasets.Dataset.from_list(rows)
    except (pa.ArrowException, ValueError, TypeError, OverflowError) as err:  # ArrowInvalid is a ValueError
        raise UserError(f"{file}: the rows do not make a table ({readers.one_line(err)}); give each column "
                        "one type across rows, and only valid Unicode text.") from err


def _adapter_for_columns(kinds, where):
    """The layout {column: kind} fits: a `data.formats` one (message lists, rated completions), else
    prompt/chosen/rejected text columns, or chosen/rejected whole conversations (hh-rlhf style)."""
    detected = formats.detect(kinds)
    if detected:
        return detected
    if "prompt" in kinds:
        return PROMPT_CHOSEN_REJECTED
    if "chosen" in kinds and "rejected" in kinds:
        return HH_CONVERSATIONS
    missing = [c for c in PROMPT_CHOSEN_REJECTED.fields if c not in kinds]
    found = ", ".join(f"{column} ({kind})" for column, kind in kinds.items())
    raise UserError(f"{where}: missing column(s) {', '.join(missing)} (columns found: "
                    f"{', '.join(map(str, kinds)) or 'none'}). Give prompt/chosen/rejected columns, "
                    "or chosen/rejected columns that hold whole '\\n\\nHuman: ... \\n\\nAssistant: ...' "
                    f"conversations, or one of these layouts: {formats.accepted_formats()}. Column kinds found: "
                    f"{found or 'none'}.")


def check_columns(ds, adapter, where, options=formats.ReadOptions()):
    """Every text field of the adapter is a string column without nulls (Arrow-level, fast); rows of a
    `data.formats` layout are parsed one by one."""
    if len(ds) == 0:
        raise UserError(f"{where} holds no rows; each --data_path source needs at least one preference pair.")
    _check_margin(ds, where)
    if isinstance(adapter, formats.RowFormat):
        fields = list(adapter.fields) + (["margin"] if "margin" in ds.column_names else [])
        return formats.check_rows(ds.select_columns(fields), adapter, options, lambda i: f"{where}, row {i + 1}")
    for field in adapter.fields:
        if field not in ds.column_names:
            raise UserError(f"{where}: missing column {field!r} (columns found: {', '.join(ds.column_names)}).")
        column = ds.data.column(field)
        if not (pa.types.is_string(column.type) or pa.types.is_large_string(column.type)):
            raise UserError(f"{where}: column {field!r} holds {column.type}, not text.")
        if column.null_count:
            row = pc.index(pc.is_null(column), True).as_py()
            raise UserError(f"{where}, row {row + 1}: field {field!r} is null; it must be text. "
                            "Fix or remove that row.")


def _check_margin(ds, where):
    """The optional `margin` column (--use_margin's per-pair margin) holds numbers, or text of numbers (a CSV's)."""
    if "margin" in ds.column_names:
        try:
            pc.cast(ds.data.column("margin"), pa.float64())
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError) as err:
            raise UserError(f"{where}: column 'margin' must hold numbers ({readers.one_line(err)}); it is each pair's "
                            "margin for main.py --use_margin. Give numbers, or drop the column.") from err
