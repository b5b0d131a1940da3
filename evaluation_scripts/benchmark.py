"""Score a reward model on RM-Bench, RewardBench (v1 and 2), JudgeBench or a preference file.

    python evaluation_scripts/benchmark.py MODEL --benchmark rmbench --data chat_filtered.json code_filtered.json ...
    python evaluation_scripts/benchmark.py MODEL --benchmark rewardbench --data filtered.json
    python evaluation_scripts/benchmark.py MODEL --benchmark rewardbench2 --data test.jsonl
    python evaluation_scripts/benchmark.py MODEL --benchmark judgebench --data "dataset=judgebench,response_model=gpt-4o-2024-05-13.jsonl"
    python evaluation_scripts/benchmark.py MODEL --benchmark pairs --data test.jsonl    # the project's own format

Writes MODEL/benchmarks/NAME.json (every figure), NAME_scores.jsonl (every score), NAME.png (bar chart)
and NAME_reliability.png, and prints markdown tables. What each figure means: docs/benchmarks.md.
"""
import argparse
import json
import os
import re
import sys
import time
from collections import defaultdict
from dataclasses import dataclass, field

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import numpy as np  # noqa: E402

from evaluation_scripts import rm_metrics as M  # noqa: E402

PROMPT_FORMATS = ("auto", "human_assistant", "chat_template", "raw")
DTYPES = ("auto", "fp32", "bf16", "fp16")
SCHEMAS = {  # what each --benchmark reads, for error messages
    "rmbench": "fields id, prompt, chosen (3 answers), rejected (3 answers), and a domain: a 'domain' field or a "
               "file name starting with chat, code, math or safety (as RM-Bench's data/*_filtered.json)",
    "rewardbench": "fields prompt, chosen, rejected (one answer each) and subset",
    "rewardbench2": "fields id, prompt, chosen (a list: one answer, several for Ties), rejected (a list) and subset",
    "judgebench": "fields question, response_A, response_B, label ('A>B' or 'B>A') and source",
    "pairs": "fields prompt, chosen, rejected (texts), or chosen/rejected whole '\\n\\nHuman: ... "
             "\\n\\nAssistant: ...' conversations; an optional subset field groups them",
}


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("model_dir", help="A reward model folder written by main.py.")
    parser.add_argument("--benchmark", required=True, choices=sorted(BENCHMARKS),
                        help="Which benchmark (schema and scoring rule) the --data files follow.")
    parser.add_argument("--data", nargs="+", required=True,
                        help="Benchmark file(s): .json, .jsonl[.gz], .csv or .parquet, or an http(s) address.")
    parser.add_argument("--prompt_format", choices=PROMPT_FORMATS, default="auto",
                        help="How prompt and answer become one text: human_assistant is DeepSpeed-Chat's "
                             "' Human: {prompt} Assistant: {answer}', chat_template the tokenizer's template, "
                             "raw is prompt + answer. auto: raw for --benchmark pairs (as training joins "
                             "them), else chat_template if the tokenizer has one, else human_assistant.")
    parser.add_argument("--max_seq_len", type=int, default=None,
                        help="Tokens per text; longer texts are cut at the end (default: the model's "
                             "position limit). The number cut is reported.")
    parser.add_argument("--batch_size", type=int, default=16, help="Texts per forward pass (length-sorted).")
    parser.add_argument("--dtype", choices=DTYPES, default="auto",
                        help="Weights dtype. auto: bf16 on a CUDA device that has it, else the saved dtype.")
    parser.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto",
                        help="auto: cuda when available, else cpu.")
    parser.add_argument("--limit", type=int, default=0, help="Score only the first N items of each file (0: all).")
    parser.add_argument("--ece_bins", type=int, default=10, help="Equal-width bins of the calibration error.")
    parser.add_argument("--output_name", default=None,
                        help="Name of the result files in MODEL/benchmarks/ (default: the benchmark's name).")
    parser.add_argument("--no_plots", action="store_true", help="Skip the PNG bar chart and reliability diagram.")
    parser.add_argument("--debug", action="store_true", help="Show Python tracebacks for user errors.")
    return parser.parse_args(argv)


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


# ---------------------------------------------------------------- reading benchmark files

def _error(path, where, message, benchmark, row):
    """A UserError naming the file and row, what the benchmark needs, and which benchmark the row fits."""
    from utils.errors import UserError
    guess = ("judgebench" if "response_A" in row else
             "rewardbench2" if isinstance(row.get("chosen"), list) and len(row["chosen"]) != 3 else
             "rmbench" if isinstance(row.get("chosen"), list) else
             "rewardbench" if "subset" in row and "prompt" in row else
             "pairs" if "chosen" in row else None)
    hint = f" This row looks like --benchmark {guess}." if guess and guess != benchmark else ""
    return UserError(f"{path}, {where}: {message}. --benchmark {benchmark} needs {SCHEMAS[benchmark]}.{hint}")


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
    from data.readers import is_parquet, read_parquet, read_rows
    from utils.errors import UserError
    if not os.path.isfile(path):
        raise UserError(f"--data {path!r}: no such file.")
    if is_parquet(path):
        rows = read_parquet(path).to_list()
        where = lambda i: f"row {i + 1}"  # noqa: E731
    else:
        rows, where = read_rows(path)
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


def load_items(args):
    """Every --data file read and checked by the benchmark's loader, before any model is loaded."""
    from utils.errors import UserError
    items = []
    for path in args.data:
        local = local_copy(path)
        rows, where = read_file(local, args.limit)
        items += BENCHMARKS[args.benchmark]["load"](rows, where, local)
    if not items:
        raise UserError(f"--data {' '.join(args.data)}: no items to score.")
    return items


def local_copy(path):
    """An http(s) address is downloaded to a temporary file (its name kept); a local path is returned as is."""
    if not re.match(r"https?://", path):
        return path
    import tempfile
    import urllib.parse
    import urllib.request

    from utils.errors import UserError
    name = urllib.parse.unquote(os.path.basename(urllib.parse.urlparse(path).path)) or "data.json"
    target = os.path.join(tempfile.mkdtemp(prefix="benchmark_"), name)
    try:
        urllib.request.urlretrieve(path, target)
    except (OSError, ValueError) as err:
        raise UserError(f"--data {path}: could not download it ({err}). Download the file yourself "
                        "and pass its local path.") from err
    return target


# ---------------------------------------------------------------- model, texts, scores

def load_model(args):
    """(model on its device in eval mode, tokenizer with pad = the model's PAD_ID, device, dtype name)."""
    import torch
    from transformers import AutoTokenizer

    from model.reward_model import RewardModel
    from utils.errors import UserError
    cuda = torch.cuda.is_available()
    if args.device == "cuda" and not cuda:
        raise UserError("--device cuda: no CUDA device here; use --device cpu.")
    device = "cuda" if args.device == "cuda" or (args.device == "auto" and cuda) else "cpu"
    named = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
    dtype = named.get(args.dtype)
    if dtype is None and device == "cuda" and torch.cuda.is_bf16_supported():
        dtype = torch.bfloat16
    model = RewardModel.from_pretrained(args.model_dir, dtype=dtype).to(device)
    tokenizer = AutoTokenizer.from_pretrained(args.model_dir)
    tokenizer.pad_token_id = model.PAD_ID
    tokenizer.model_max_length = sys.maxsize  # texts are cut at --max_seq_len here, so no length warning
    return model, tokenizer, device, str(model.v_head.weight.dtype).replace("torch.", "")


def resolve_format(args, tokenizer):
    from utils.errors import UserError
    has_template = bool(getattr(tokenizer, "chat_template", None))
    if args.prompt_format == "chat_template" and not has_template:
        raise UserError(f"--prompt_format chat_template: the tokenizer in {args.model_dir} has no chat template; "
                        "use --prompt_format human_assistant (DeepSpeed-Chat's) or raw.")
    if args.prompt_format != "auto":
        return args.prompt_format
    if args.benchmark == "pairs":
        return "raw"
    return "chat_template" if has_template else "human_assistant"


def render(prompt, answer, prompt_format, tokenizer):
    """The text a reward model scores, before the end-of-conversation token is appended."""
    from data.sources import HUMAN_ASSISTANT
    if prompt_format == "human_assistant":
        return HUMAN_ASSISTANT.format(prompt) + " " + answer
    if prompt_format == "chat_template":
        return tokenizer.apply_chat_template([{"role": "user", "content": prompt},
                                              {"role": "assistant", "content": answer}], tokenize=False)
    return prompt + answer


def encode(items, tokenizer, prompt_format, eot, max_seq_len):
    """Tokenise each distinct text once; sets item.chosen_at / rejected_at.

    Returns (token ids cut to max_seq_len, answer lengths in tokens, number of texts cut). An answer's
    length is its own token count (the answer text alone, no special tokens), prompt and format aside."""
    index, texts, answers = {}, [], []
    for item in items:
        for answers_in, at in ((item.chosen, item.chosen_at), (item.rejected, item.rejected_at)):
            for answer in answers_in:
                text = render(item.prompt, answer, prompt_format, tokenizer) + eot
                if text not in index:
                    index[text] = len(texts)
                    texts.append(text)
                    answers.append(answer)
                at.append(index[text])
    # Chat templates write their own BOS, so the tokenizer must not add another.
    ids = tokenizer(texts, add_special_tokens=prompt_format != "chat_template")["input_ids"]
    lengths = np.array([len(a) for a in tokenizer(answers, add_special_tokens=False)["input_ids"]])
    cut = sum(len(row) > max_seq_len for row in ids)
    return [row[:max_seq_len] for row in ids], lengths, cut


def score_sequences(model, sequences, batch_size):
    """Reward at each sequence's end token (model.reward_model.end_indices, as training reads it): (N,) floats.

    Longest first, so the batches hold rows of similar length (little padding) and an out-of-memory
    error shows in the first batch; no gradients."""
    import torch
    from tqdm import tqdm

    from model.reward_model import end_indices
    device = model.v_head.weight.device
    order = sorted(range(len(sequences)), key=lambda i: -len(sequences[i]))
    scores = np.empty(len(sequences))
    with torch.no_grad():
        for start in tqdm(range(0, len(order), batch_size), desc="scoring", unit="batch"):
            batch = order[start:start + batch_size]
            length = len(sequences[batch[0]])
            ids = torch.full((len(batch), length), model.PAD_ID, dtype=torch.long)
            mask = torch.zeros_like(ids)
            for row, i in enumerate(batch):
                ids[row, :len(sequences[i])] = torch.tensor(sequences[i])
                mask[row, :len(sequences[i])] = 1
            ids, mask = ids.to(device), mask.to(device)
            values = model.forward_value(ids, mask, return_value_only=True).float()
            end = end_indices(ids, model.PAD_ID, model.num_padding_at_beginning)
            scores[batch] = values.gather(1, (end - 1)[:, None]).squeeze(1).cpu().numpy()
    return scores


# ---------------------------------------------------------------- per-benchmark figures

def summarise_rmbench(items, scored):
    by_domain, by_subdomain = defaultdict(lambda: ([], [])), defaultdict(lambda: ([], []))
    for item, (chosen, rejected) in zip(items, scored):
        for groups, key in ((by_domain, M.rmbench_domain(item.group)), (by_subdomain, item.group)):
            groups[key][0].append(chosen)
            groups[key][1].append(rejected)
    order = [d for d in M.RMBENCH_DOMAINS if d in by_domain]
    result = M.rmbench_scores({d: by_domain[d] for d in order})
    result["subdomains"] = {s: M.rmbench_scores({s: v})["domains"][s]
                            for s, v in sorted(by_subdomain.items()) if s not in by_domain}
    missing = [d for d in M.RMBENCH_DOMAINS if d not in by_domain]
    result["overall"]["domains_missing"] = missing
    name = "overall" if not missing else f"overall of {', '.join(order)} (no {', '.join(missing)})"
    rows = [[d, *(result["domains"][d][k] for k in ("easy", "normal", "hard", "average", "items"))] for d in order]
    pooled = [s for s in result["subdomains"] if sum(M.rmbench_domain(t) == M.rmbench_domain(s)
                                                     for t in result["subdomains"]) > 1]
    rows += [[f"{s} (in {M.rmbench_domain(s)})", *(result["subdomains"][s][k] for k in
                                                   ("easy", "normal", "hard", "average", "items"))] for s in pooled]
    rows.append([name, *(result["overall"][k] for k in ("easy", "normal", "hard", "average", "items"))])
    table = ("RM-Bench accuracy (3x3 style matrix)", ["domain", "easy", "normal", "hard", "average", "items"], rows)
    chart_rows = [r for r in rows if r[0] in order] + rows[-1:]
    chart = ("RM-Bench", order + ["overall"], {k: [r[i] for r in chart_rows] for i, k in
                                               ((1, "easy"), (2, "normal"), (3, "hard"))})
    return result, [table], chart


def _subset_outcomes(items, scored):
    by_group = defaultdict(lambda: ([], []))
    for item, (chosen, rejected) in zip(items, scored):
        by_group[item.group][0].append(chosen[0])
        by_group[item.group][1].append(rejected[0])
    return {group: M.pair_outcomes(*by_group[group]) for group in sorted(by_group)}


def summarise_rewardbench(items, scored):
    subsets = _subset_outcomes(items, scored)
    sections = M.rewardbench_sections({s: v["accuracy"] for s, v in subsets.items()})
    known = set(M.REWARDBENCH_COUNTS) | set(M.PRIOR_SETS)
    result = {"sections": sections, "subsets": subsets, "subsets_in_no_section": sorted(set(subsets) - known)}
    section_rows = [[s, v] for s, v in sections.items()]
    subset_rows = [[s, v["accuracy"], v["pairs"], v["ties"]] for s, v in subsets.items()]
    tables = [("RewardBench sections (weighted as the authors weight them)", ["section", "score"], section_rows),
              ("RewardBench subsets", ["subset", "accuracy", "pairs", "ties"], subset_rows)]
    present = [r for r in section_rows if r[1] is not None]
    return result, tables, ("RewardBench", [r[0] for r in present], {"score": [r[1] for r in present]})


def summarise_rewardbench2(items, scored):
    groups = defaultdict(list)
    for item, (chosen, rejected) in zip(items, scored):
        groups[item.group].append((item, chosen, rejected))
    subsets = {}
    for name, members in sorted(groups.items()):
        if name.lower() == "ties":
            subsets[name] = dict(_ties(members), items=len(members))
            continue
        credit = [M.best_of_n_credit(c[0], r) for _, c, r in members]
        shared = sum(float(np.max(r)) == c[0] for _, c, r in members)
        subsets[name] = {"score": float(np.mean(credit)), "items": len(members), "top_shared_with_rejected": shared}
    overall = float(np.mean([v["score"] for v in subsets.values()]))
    rows = [[s, v["score"], v["items"]] for s, v in subsets.items()]
    rows.append(["Overall (mean of subsets)", overall, len(items)])
    table = ("RewardBench 2 (best-of-4 accuracy; Ties: its weighted score)", ["subset", "score", "items"], rows)
    return {"subsets": subsets, "overall": overall}, [table], ("RewardBench 2", [r[0] for r in rows],
                                                               {"score": [r[1] for r in rows]})


def _ties(members):
    from utils.errors import UserError
    sets = {"ref": {}, "tied": {}}
    for item, chosen, rejected in members:
        kind, prompt_id = item.extra["id"].split(":")
        sets[kind][int(prompt_id)] = (list(chosen), list(rejected))
    if not set(sets["ref"]) & set(sets["tied"]):
        raise UserError("the Ties subset needs a 'ref:N' and a 'tied:N' row for the same N; none match.")
    one = sorted(k for k, (correct, _) in sets["tied"].items() if len(correct) < 2)
    if one:
        raise UserError(f"Ties row 'tied:{one[0]}' has one chosen answer; a tied prompt needs several.")
    return M.ties_score(sets["ref"], sets["tied"])


JUDGEBENCH_CATEGORIES = ("mmlu-pro", "livebench-reasoning", "livebench-math", "livecodebench")  # the authors' groups


def summarise_judgebench(items, scored):
    counts = defaultdict(lambda: defaultdict(int))
    for item, (chosen, rejected) in zip(items, scored):
        a, b = (chosen[0], rejected[0]) if item.extra["label"] == "A>B" else (rejected[0], chosen[0])
        verdict_ab, verdict_ba = M.reward_verdict(a, b), M.reward_verdict(b, a)
        outcome = M.both_orders_outcome(item.extra["label"], verdict_ab, verdict_ba)
        category = next((c for c in JUDGEBENCH_CATEGORIES if item.group.startswith(c)), item.group)
        for key in {category, "source:" + item.group, "Overall"}:
            counts[key][outcome] += 1
            counts[key]["single_game_correct"] += verdict_ab == item.extra["label"]
            counts[key]["pairs"] += 1
    figures = {k: {"accuracy": v["correct"] / v["pairs"], "single_game_accuracy": v["single_game_correct"] / v["pairs"],
                   "ties": v["tie"], "incorrect": v["incorrect"], "pairs": v["pairs"]} for k, v in counts.items()}
    shown = [c for c in JUDGEBENCH_CATEGORIES if c in counts] + sorted(
        k for k in counts if k not in JUDGEBENCH_CATEGORIES and not k.startswith("source:") and k != "Overall")
    shown.append("Overall")
    rows = [[k, figures[k]["accuracy"], figures[k]["single_game_accuracy"], figures[k]["ties"], figures[k]["pairs"]]
            for k in shown]
    table = ("JudgeBench (both orders, the authors' rule; single game: the --single_game rule)",
             ["source", "accuracy", "single game", "ties", "pairs"], rows)
    return figures, [table], ("JudgeBench", shown, {"accuracy": [r[1] for r in rows]})


def summarise_pairs(items, scored):
    groups = _subset_outcomes(items, scored)
    chosen = np.array([c[0] for c, _ in scored])
    rejected = np.array([r[0] for _, r in scored])
    overall = dict(M.pair_outcomes(chosen, rejected), chosen_mean=float(chosen.mean()),
                   rejected_mean=float(rejected.mean()), margin=float((chosen - rejected).mean()))
    rows = [[g, v["accuracy"], v["pairs"], v["ties"]] for g, v in groups.items()]
    if len(groups) > 1:
        rows.append(["all", overall["accuracy"], overall["pairs"], overall["ties"]])
    table = ("Pairwise accuracy (chosen scores strictly higher)", ["group", "accuracy", "pairs", "ties"], rows)
    return {"groups": groups, "overall": overall}, [table], ("pairs", [r[0] for r in rows],
                                                            {"accuracy": [r[1] for r in rows]})


BENCHMARKS = {
    "rmbench": {"load": load_rmbench, "summarise": summarise_rmbench},
    "rewardbench": {"load": load_rewardbench, "summarise": summarise_rewardbench},
    "rewardbench2": {"load": load_rewardbench2, "summarise": summarise_rewardbench2},
    "judgebench": {"load": load_judgebench, "summarise": summarise_judgebench},
    "pairs": {"load": load_pairs, "summarise": summarise_pairs},
}


# ---------------------------------------------------------------- figures every evaluation gets

def bias_and_calibration(items, scores, lengths, bins):
    """Over every (chosen, rejected) comparison the benchmark makes (RM-Bench: 9 per item, RewardBench 2:
    one per rejected answer): accuracy, ties, length bias and calibration; Spearman over distinct texts."""
    at = [(c, r) for item in items for c in item.chosen_at for r in item.rejected_at]
    chosen, rejected = np.array([c for c, _ in at]), np.array([r for _, r in at])
    figures = {"pairs": M.pair_outcomes(scores[chosen], scores[rejected]),
               "length_bias": M.length_bias(scores[chosen], scores[rejected], lengths[chosen], lengths[rejected]),
               "spearman_reward_vs_answer_tokens": M.spearman(scores, lengths),
               "calibration": M.calibration(scores[chosen] - scores[rejected], bins)}
    bias, ece = figures["length_bias"], figures["calibration"]
    rows = [["comparisons (chosen vs rejected)", figures["pairs"]["pairs"]],
            ["accuracy (chosen strictly higher)", figures["pairs"]["accuracy"]],
            ["ties (equal scores, not counted correct)", figures["pairs"]["ties"]],
            ["longer answer wins (baseline, answer tokens)", bias["longer_wins_accuracy"]],
            [f"accuracy when chosen is longer ({bias['pairs_chosen_longer']} pairs)", bias["accuracy_chosen_longer"]],
            [f"accuracy when chosen is shorter ({bias['pairs_chosen_shorter']} pairs)",
             bias["accuracy_chosen_shorter"]],
            ["Spearman(reward, answer tokens)", figures["spearman_reward_vs_answer_tokens"]],
            [f"ECE of sigmoid(r_chosen - r_rejected), {bins} bins", ece["ece"]]]
    return figures, ("Length bias and calibration", ["figure", "value"], rows)


# ---------------------------------------------------------------- output

def markdown(title, columns, rows):
    def cell(value):
        return "-" if value is None else f"{value:.4f}" if isinstance(value, float) else str(value)
    lines = [f"### {title}", "", "| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    return "\n".join(lines + ["| " + " | ".join(cell(v) for v in row) + " |" for row in rows]) + "\n"


def _plain(value):
    return value.item() if hasattr(value, "item") else str(value)  # numpy scalars


def write_atomic(path, text):
    with open(path + ".tmp", "w") as f:
        f.write(text)
    os.replace(path + ".tmp", path)


def write_outputs(out_dir, name, report, items, scores):
    os.makedirs(out_dir, exist_ok=True)
    written = [os.path.join(out_dir, f"{name}.json"), os.path.join(out_dir, f"{name}_scores.jsonl")]
    write_atomic(written[0], json.dumps(report, indent=2, default=_plain) + "\n")
    lines = [json.dumps({"group": item.group, **item.extra, "chosen_scores": scores[item.chosen_at].tolist(),
                         "rejected_scores": scores[item.rejected_at].tolist()}, default=_plain) for item in items]
    write_atomic(written[1], "\n".join(lines) + "\n")
    return written


def bar_chart(chart, path, plt):
    title, labels, series = chart
    figure, axis = plt.subplots(figsize=(max(6, 0.9 * len(labels) * len(series)), 4))
    width = 0.8 / len(series)
    for k, (name, values) in enumerate(series.items()):
        axis.bar(np.arange(len(labels)) + k * width, [v or 0 for v in values], width, label=name)
    axis.set_xticks(np.arange(len(labels)) + 0.4 - width / 2, labels, rotation=30, ha="right")
    axis.set(title=title, ylabel="accuracy", ylim=(0, 1))
    axis.legend()
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)


def reliability_diagram(calibration, path, plt):
    rows = [r for r in calibration["reliability"] if r["count"]]
    figure, axis = plt.subplots(figsize=(5, 5))
    axis.plot([0, 1], [0, 1], color="grey", linestyle="--", linewidth=0.8, label="perfect calibration")
    axis.bar([r["low"] for r in rows], [r["observed"] for r in rows], 1 / calibration["bins"], align="edge",
             edgecolor="black", alpha=0.6, label="observed frequency")
    axis.plot([r["mean_prediction"] for r in rows], [r["observed"] for r in rows], "o", color="black",
              label="bin mean prediction")
    axis.set(title=f"Reliability (ECE {calibration['ece']:.4f})", xlabel="sigmoid(r_first - r_second)",
             ylabel="P(first is the chosen answer)", xlim=(0, 1), ylim=(0, 1))
    axis.legend(loc="upper left")
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)


def write_plots(out_dir, name, chart, calibration):
    from evaluation_scripts.plots import matplotlib_pyplot
    plt = matplotlib_pyplot()
    if plt is None:
        print("matplotlib is not installed: no plots (pip install matplotlib)")
        return []
    paths = [os.path.join(out_dir, f"{name}.png"), os.path.join(out_dir, f"{name}_reliability.png")]
    bar_chart(chart, paths[0], plt)
    reliability_diagram(calibration, paths[1], plt)
    return paths


# ---------------------------------------------------------------- entry point

def check_args(args):
    from utils.errors import UserError
    problems = [f"--{k} {getattr(args, k)} must be >= {low}" for k, low in
                (("batch_size", 1), ("ece_bins", 1), ("limit", 0)) if getattr(args, k) < low]
    if args.max_seq_len is not None and args.max_seq_len < 2:
        problems.append(f"--max_seq_len {args.max_seq_len} must be >= 2")
    if problems:
        raise UserError("; ".join(problems) + ".")


def max_len(args, positions):
    """--max_seq_len, or the model's position limit (512 if it has none); never above that limit."""
    from utils.errors import UserError
    if args.max_seq_len and positions and args.max_seq_len > positions:
        raise UserError(f"--max_seq_len {args.max_seq_len} is above the {positions} positions of the model in "
                        f"{args.model_dir}; use at most {positions}.")
    return args.max_seq_len or positions or 512


def run(args):
    from model.create import model_max_positions
    from model.io import read_reward_settings
    check_args(args)
    read_reward_settings(args.model_dir)  # not a reward model folder: refused before any data is read
    items = load_items(args)
    model, tokenizer, device, dtype = load_model(args)
    prompt_format = resolve_format(args, tokenizer)
    max_seq_len = max_len(args, model_max_positions(args.model_dir))
    sequences, lengths, cut = encode(items, tokenizer, prompt_format, model.end_of_conversation_token, max_seq_len)
    start = time.perf_counter()
    scores = score_sequences(model, sequences, args.batch_size)
    seconds = time.perf_counter() - start
    scored = [(scores[item.chosen_at], scores[item.rejected_at]) for item in items]
    figures, tables, chart = BENCHMARKS[args.benchmark]["summarise"](items, scored)
    common, common_table = bias_and_calibration(items, scores, lengths, args.ece_bins)
    tokens = sum(len(s) for s in sequences)
    speed = {"seconds": seconds, "texts": len(sequences), "tokens": tokens, "texts_per_s": len(sequences) / seconds,
             "pairs_per_s": len(sequences) / 2 / seconds, "tokens_per_s": tokens / seconds,
             "device": device, "dtype": dtype, "batch_size": args.batch_size}
    report = {"benchmark": args.benchmark, "model": os.path.abspath(args.model_dir), "data": args.data,
              "prompt_format": prompt_format, "max_seq_len": max_seq_len, "texts_cut_at_max_seq_len": cut,
              "items": len(items), "scores": figures, **common, "speed": speed}
    for table in [*tables, common_table]:
        print(markdown(*table))
    print(f"speed: {len(sequences)} texts ({tokens} tokens) in {seconds:.1f} s = {speed['pairs_per_s']:.1f} pairs/s "
          f"on {device} ({dtype}, batch {args.batch_size}); {cut} texts cut at {max_seq_len} tokens")
    out_dir = os.path.join(args.model_dir, "benchmarks")
    name = args.output_name or args.benchmark
    written = write_outputs(out_dir, name, report, items, scores)
    if not args.no_plots:
        written += write_plots(out_dir, name, chart, common["calibration"])
    for path in written:
        print(f"wrote {path}")
    return report


def main(argv=None):
    from utils.errors import exit_on_user_error
    args = parse_args(argv)
    return exit_on_user_error(run, args, debug=args.debug)


if __name__ == "__main__":
    main()
