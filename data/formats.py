"""Preference layouts besides prompt/chosen/rejected strings, detected from the columns (`LAYOUTS`):

- conversations (TRL's conversational preference format): `chosen`/`rejected` message lists, with an
  explicit `prompt` (messages or text) or an implicit one (the messages before the final answer);
- rated completions: UltraFeedback's `instruction` + `completions` [{"response", "overall_score", ...}],
  or `prompt` + `completions` + `scores` (higher is better) or `ranks` (1 is best), turned into pairs
  by `--pairs_from_ratings` (ties dropped and counted; the score difference is the pair's margin).

A row is parsed (`RowFormat.parse`) into (prompt, chosen, rejected, margin) tuples, checked when the
source loads; `normalize` renders them to text (chat template) when the tokenised data is built.
"""
from collections import Counter
from dataclasses import dataclass, replace

import datasets
import pyarrow as pa

from data.chat import RowError, as_messages, conversation, conversation_pair, number, prompt_messages, rated_pairs
from utils.dist import print_rank0
from utils.errors import UserError

TEXT, MESSAGES, TEXTS, CONVERSATIONS, NUMBERS, RATED, EMPTY, OTHER = (
    "text", "messages", "list of texts", "list of message lists", "list of numbers", "list of rated completions",
    "empty list", "other")
LISTS = {MESSAGES, TEXTS, CONVERSATIONS, NUMBERS, RATED}  # an empty list may be any of these
HUMAN_ASSISTANT = " Human: {} Assistant:"  # rated text completions for a tokenizer without a chat template


@dataclass(frozen=True)
class ReadOptions:
    """How rated completions become pairs (--pairs_from_ratings, --rating_field)."""
    pairs_from_ratings: str = "best_vs_rest"
    rating_field: str = "overall_score"


# ---------------------------------------------------------------- what a column holds

def value_kind(value):
    """The kind of one Python cell (JSON rows)."""
    if isinstance(value, str):
        return TEXT
    if not isinstance(value, list):
        return OTHER
    if not value:
        return EMPTY
    first = next((v for v in value if v is not None), None)
    if isinstance(first, dict):
        return MESSAGES if "role" in first else RATED if "response" in first else OTHER
    if isinstance(first, list):
        return CONVERSATIONS if value_kind(first) == MESSAGES else OTHER
    return TEXTS if isinstance(first, str) else NUMBERS if isinstance(first, (int, float)) else OTHER


def arrow_kind(dtype):
    """The kind of an Arrow column type (parquet, save_to_disk, hub)."""
    if pa.types.is_string(dtype) or pa.types.is_large_string(dtype):
        return TEXT
    if not (pa.types.is_list(dtype) or pa.types.is_large_list(dtype)):
        return OTHER
    item = dtype.value_type
    if pa.types.is_null(item):  # every list of the column is empty
        return EMPTY
    if pa.types.is_struct(item):
        names = {item.field(i).name for i in range(item.num_fields)}
        return MESSAGES if "role" in names else RATED if "response" in names else OTHER
    if pa.types.is_list(item) or pa.types.is_large_list(item):
        return CONVERSATIONS if arrow_kind(item) == MESSAGES else OTHER
    if pa.types.is_string(item) or pa.types.is_large_string(item):
        return TEXTS
    return NUMBERS if pa.types.is_integer(item) or pa.types.is_floating(item) else OTHER


def rows_kinds(rows):
    """{column: kind} for the first row's columns, each taken from the first row where it is neither null nor an
    empty list, so an empty first row does not hide the layout."""
    return {column: next((value_kind(row[column]) for row in rows if row.get(column) not in (None, [])),
                         value_kind(value)) for column, value in rows[0].items()}


def dataset_kinds(ds):
    return {column: arrow_kind(ds.data.schema.field(column).type) for column in ds.column_names}


# ---------------------------------------------------------------- layouts

def _margin(row):
    return row.get("margin")


def _conversations(row, columns, options):
    prompt = row[columns["prompt"]] if "prompt" in columns else None
    chosen, rejected = conversation_pair(prompt, row[columns["chosen"]], row[columns["rejected"]])
    return [(None, chosen, rejected, _margin(row))], 0


def _answer(value, where):
    """A completion: non-empty text, or assistant messages."""
    if isinstance(value, str):
        if not value.strip():
            raise RowError(f"{where} is empty; remove that completion or the row.")
        return value
    return as_messages(value, where)


def _prompt(row, columns):
    value = row[columns["prompt"]]
    if isinstance(value, str) and not value.strip():
        raise RowError(f"field {columns['prompt']!r} is empty; fix or remove the row.")
    return value if isinstance(value, str) else prompt_messages(value, columns["prompt"])


NO_PAIR_FIX = ("A pair needs two completions of one prompt with different ratings: give each prompt two or more, "
               "or check the rating field (--rating_field names it in UltraFeedback's layout).")


def unpaired_reason(pairs, ties):
    """Why a parsed row gave no pair ('' when it gave some): a rated row whose ratings all tie, or that has one
    completion."""
    return "" if pairs else "all ratings tied" if ties else "one completion"


def count_text(counts):
    """{'one completion': 4, ...} -> '4 with one completion, ...' (rows that gave no pair, by reason)."""
    return ", ".join(f"{n:,} with {reason}" for reason, n in counts.items())


def _rated(prompt, answers, scores, options):
    pairs, ties = rated_pairs(scores, options.pairs_from_ratings)
    return [(prompt, answers[i], answers[j], difference) for i, j, difference in pairs], ties


def _completions(row, columns):
    """The row's list of completions; RowError for anything else, an empty list included."""
    value = row[columns["completions"]]
    if not isinstance(value, list) or not value:
        got = "an empty list" if isinstance(value, list) else "null" if value is None else type(value).__name__
        raise RowError(f"field {columns['completions']!r} is {got}; it must list the prompt's completions (two or "
                       "more with different ratings make pairs). Fix or remove the row.")
    return value


def _rating(item, field, where):
    """The --rating_field value of one UltraFeedback completion."""
    if field not in item:
        raise RowError(f"{where} has no field {field!r}, the one --rating_field names (its fields: "
                       f"{', '.join(map(str, item)) or 'none'}). Pass --rating_field with the field that holds the "
                       "rating, or add it to that completion.")
    return number(item[field], f"{where}.{field} (--rating_field)")


def _ultrafeedback(row, columns, options):
    completions, field = _completions(row, columns), options.rating_field
    answers, scores = [], []
    for i, item in enumerate(completions):
        where = f"completions[{i}]"
        if not isinstance(item, dict):
            raise RowError(f"{where} must be an object with 'response' and {field!r}; fix or remove the row.")
        answers.append(_answer(item.get("response"), where + ".response"))
        scores.append(_rating(item, field, where))
    return _rated(_prompt(row, columns), answers, scores, options)


def _scored(row, columns, options):
    completions, key = _completions(row, columns), columns["scores"]
    values = row[key]
    if not isinstance(values, list) or len(completions) != len(values):
        raise RowError(f"fields {columns['completions']!r} and {key!r} must be lists of one length, got "
                       f"{len(completions)} completions and {len(values) if isinstance(values, list) else values!r}; "
                       "fix or remove the row.")
    answers = [_answer(c, f"completions[{i}]") for i, c in enumerate(completions)]
    scores = [number(v, f"{key}[{i}]") for i, v in enumerate(values)]
    if key == "ranks":
        scores = [-s for s in scores]  # rank 1 is the best
    return _rated(_prompt(row, columns), answers, scores, options)


@dataclass(frozen=True)
class Layout:
    """`needs`: (role, column names that may fill it, kinds it accepts); `parse(row, columns, options)`
    -> ([(prompt or None, chosen, rejected, margin)], ties)."""
    needs: tuple
    parse: object
    example: str


# In detection order: the scores layout comes before UltraFeedback's, as where every completions list is
# empty only the scores column tells them apart.
LAYOUTS = {
    "conversations, explicit prompt": Layout(
        (("prompt", ("prompt",), {TEXT, MESSAGES}), ("chosen", ("chosen",), {MESSAGES}),
         ("rejected", ("rejected",), {MESSAGES})), _conversations,
        '{"prompt": [{"role": "user", "content": "Hi"}], "chosen": [{"role": "assistant", "content": "Hello!"}], '
        '"rejected": [{"role": "assistant", "content": "Go away."}]}'),
    "conversations, implicit prompt": Layout(
        (("chosen", ("chosen",), {MESSAGES}), ("rejected", ("rejected",), {MESSAGES})), _conversations,
        '{"chosen": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello!"}], '
        '"rejected": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Go away."}]}'),
    "rated completions (scores or ranks)": Layout(
        (("prompt", ("prompt", "instruction"), {TEXT, MESSAGES}),
         ("completions", ("completions",), {TEXTS, CONVERSATIONS}),
         ("scores", ("scores", "ranks"), {NUMBERS, TEXTS, OTHER})), _scored,
        '{"prompt": "Hi", "completions": ["Hello!", "Go away."], "scores": [9, 2]}'),
    "rated completions (UltraFeedback)": Layout(
        (("prompt", ("instruction", "prompt"), {TEXT, MESSAGES}), ("completions", ("completions",), {RATED})),
        _ultrafeedback,
        '{"instruction": "Hi", "completions": [{"response": "Hello!", "overall_score": 8.5}, '
        '{"response": "Go away.", "overall_score": 2}]}'),
}


@dataclass(frozen=True)
class RowFormat:
    """A detected layout and the columns that fill its roles; used like `data.sources.Adapter`."""
    layout: str
    columns: tuple  # ((role, column), ...)
    eval_split: str = "test"

    @property
    def fields(self):
        return tuple(column for _, column in self.columns)

    def describe(self):
        return repr((self.layout, self.columns, self.eval_split))

    def parse(self, row, options):
        return LAYOUTS[self.layout].parse(row, dict(self.columns), options)


def detect(kinds):
    """The first layout whose roles `kinds` ({column: kind}) fills, as a RowFormat; None if none does."""
    for name, layout in LAYOUTS.items():
        columns = []
        for role, names, accepted in layout.needs:
            column = next((c for c in names if _fits(kinds.get(c), accepted)), None)
            if column is None:
                break
            columns.append((role, column))
        else:
            return RowFormat(name, tuple(columns))
    return None


def _fits(kind, accepted):
    """An empty list fits every list kind: the row check then reports it with its row."""
    return kind in accepted or (kind == EMPTY and bool(accepted & LISTS))


def accepted_formats():
    """One line per accepted layout, for errors that name them."""
    return "; ".join(f"{name}: {layout.example}" for name, layout in LAYOUTS.items())


def check_rows(rows, adapter, options, where):
    """Parse every row (a list of dicts, or a Dataset); UserError naming `where(i)` for the first bad one."""
    for i, row in enumerate(rows):
        try:
            adapter.parse(row, options)
        except RowError as error:
            raise UserError(f"{where(i)}: {error}") from error


# ---------------------------------------------------------------- rendering, when the data is built

@dataclass(frozen=True)
class PairLists:
    """Adapter of a normalised source: each row holds its pairs' texts as lists (one row may give several, or
    none: then its `unpaired` column says why)."""
    fields: tuple = ("prompt", "chosen", "rejected", "margin")

    def pairs(self, row):
        return list(zip(row["prompt"], row["chosen"], row["rejected"], row["margin"]))


def texts(prompt, chosen, rejected, render):
    """(prompt text, chosen answer text, rejected answer text) of one parsed pair."""
    if prompt is None:  # whole conversations
        return "", render(chosen), render(rejected)
    if render.template:
        head = prompt_messages(prompt)
        answers = [[{"role": "assistant", "content": a}] if isinstance(a, str) else a for a in (chosen, rejected)]
        return ("",) + tuple(render(conversation(head, a, "completion")) for a in answers)
    if isinstance(prompt, str) and isinstance(chosen, str) and isinstance(rejected, str):
        return HUMAN_ASSISTANT.format(prompt), " " + chosen, " " + rejected
    raise RowError("it holds message lists, and the tokenizer has no chat template to render them with: train "
                   "with one (main.py --chat_template FILE, a Jinja template over `messages`).")


def normalize(source, render, options):
    """`source` with every split parsed and rendered to PairLists rows (same row count, so the split rule
    cuts the same prompts); prints pairs and ties per split. UserError names the row of a bad one, or the split
    when no row gives a pair."""
    splits = {}
    for split in ("train", "eval"):
        ds = getattr(source, split)
        if ds is None:
            splits[split] = None
            continue
        columns = {name: [] for name in PairLists.fields + ("unpaired",)}
        ties = 0
        for i, row in enumerate(ds.select_columns(list(source.adapter.fields) + (
                ["margin"] if "margin" in ds.column_names else []))):
            try:
                parsed, tied = source.adapter.parse(row, options)
                rendered = [texts(p, c, r, render) + (m,) for p, c, r, m in parsed]
            except RowError as error:
                raise UserError(f"--data_path {source.name!r} ({split} split), row {i + 1}: {error}") from error
            ties += tied
            for name, values in zip(PairLists.fields, zip(*rendered) if rendered else ((),) * 4):
                columns[name].append(list(values))
            columns["unpaired"].append(unpaired_reason(parsed, tied))
        pairs, unpaired = sum(map(len, columns["chosen"])), Counter(filter(None, columns["unpaired"]))
        print_rank0(f"data: {source.name} ({split}): {len(ds):,} rows in layout '{source.adapter.layout}' gave "
                    f"{pairs:,} pairs" + (f"; {ties:,} tied ratings dropped" if ties else "")
                    + (f"; no pair from {count_text(unpaired)}" if unpaired else ""))
        if not pairs:
            raise UserError(f"--data_path {source.name!r} ({split} split): no usable pairs: {len(ds):,} rows, "
                            f"{count_text(unpaired)}. {NO_PAIR_FIX}")
        splits[split] = datasets.Dataset.from_dict(columns, features=datasets.Features({
            "prompt": datasets.List(datasets.Value("string")), "chosen": datasets.List(datasets.Value("string")),
            "rejected": datasets.List(datasets.Value("string")), "margin": datasets.List(datasets.Value("float64")),
            "unpaired": datasets.Value("string")}))
    return replace(source, adapter=PairLists(), train=splits["train"], eval=splits["eval"])
