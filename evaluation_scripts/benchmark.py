"""Score a reward model on RM-Bench, RewardBench (v1 and 2), JudgeBench or a preference file.

    python evaluation_scripts/benchmark.py MODEL --benchmark rmbench --data chat_filtered.json code_filtered.json ...
    python evaluation_scripts/benchmark.py MODEL --benchmark rewardbench --data filtered.json
    python evaluation_scripts/benchmark.py MODEL --benchmark rewardbench2 --data test.jsonl
    python evaluation_scripts/benchmark.py MODEL --benchmark judgebench --data "dataset=judgebench,response_model=gpt-4o-2024-05-13.jsonl"
    python evaluation_scripts/benchmark.py MODEL --benchmark pairs --data test.jsonl    # the project's own format

Writes MODEL/benchmarks/NAME.json (every figure), NAME_scores.jsonl (every score), NAME.png (bar chart)
and NAME_reliability.png as one set (a rerun replaces all four, --no_plots removes the old PNGs), and prints
markdown tables. What each figure means: docs/benchmarks.md.
"""
import argparse
import json
import os
import sys
import time

import numpy as np

from evaluation_scripts.benchmark_figures import (
    summarise_rmbench, summarise_rewardbench, summarise_rewardbench2, summarise_judgebench, summarise_pairs, bias_and_calibration)
from evaluation_scripts.benchmark_data import (
    RowMismatch, fitting_benchmark_hint, load_judgebench, load_pairs, load_rewardbench, load_rewardbench2, load_rmbench,
    local_copy, read_file)

PROMPT_FORMATS = ("auto", "human_assistant", "chat_template", "raw")
DTYPES = ("auto", "fp32", "bf16", "fp16")


def parse_args(argv=None):
    from model.scoring import BATCH_TOKENS
    default_tokens = ', '.join(f'{n:,} on {d}' for d, n in BATCH_TOKENS.items())
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
    parser.add_argument("--batch_tokens", type=int, default=None,
                        help="Tokens per forward pass, counted as texts x the longest text: texts go longest first, "
                             "each batch packed in one unpadded row where the model allows (model/scoring.py). "
                             f"Default: {default_tokens}.")
    parser.add_argument("--dtype", choices=DTYPES, default="auto",
                        help="Weights dtype. auto: bf16 on a CUDA device that has it, else the saved dtype.")
    parser.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto",
                        help="auto: cuda when available, else cpu.")
    parser.add_argument("--heads", action="store_true",
                        help="Also write each value head's score to NAME_scores.jsonl (a model trained with main.py "
                             "--num_heads > 1 always adds the heads' std, 'uncertainty').")
    parser.add_argument("--limit", type=int, default=0, help="Score only the first N items of each file (0: all).")
    parser.add_argument("--ece_bins", type=int, default=10, help="Equal-width bins of the calibration error.")
    parser.add_argument("--output_name", default=None,
                        help="Name of the result files in MODEL/benchmarks/ (default: the benchmark's name).")
    parser.add_argument("--no_plots", action="store_true",
                        help="Skip the PNG bar chart and reliability diagram (a previous run's are removed).")
    parser.add_argument("--debug", action="store_true", help="Show Python tracebacks for user errors.")
    return parser.parse_args(argv)


def load_items(args):
    """Every --data file read and checked by the benchmark's loader, before any model is loaded."""
    from utils.errors import UserError
    items = []
    for path in args.data:
        local = local_copy(path)
        rows, where = read_file(local, args.limit)
        try:
            items += BENCHMARKS[args.benchmark]["load"](rows, where, local)
        except RowMismatch as error:
            loaders = {name: benchmark["load"] for name, benchmark in BENCHMARKS.items()}
            raise UserError(f"{error}{fitting_benchmark_hint(error, loaders, local)}") from error
    if not items:
        raise UserError(f"--data {' '.join(args.data)}: no items to score.")
    return items


# ---------------------------------------------------------------- model, texts, scores

def load_model(args):
    """(model on its device in eval mode, tokenizer with pad = the model's PAD_ID, device, dtype name)."""
    import torch

    from model.create import build_tokenizer, load_reward_model
    from utils.errors import UserError
    cuda = torch.cuda.is_available()
    if args.device == "cuda" and not cuda:
        raise UserError("--device cuda: no CUDA device here; use --device cpu.")
    device = "cuda" if args.device == "cuda" or (args.device == "auto" and cuda) else "cpu"
    named = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
    dtype = named.get(args.dtype)
    if dtype is None and device == "cuda" and torch.cuda.is_bf16_supported():
        dtype = torch.bfloat16
    model = load_reward_model(args.model_dir, dtype=dtype).to(device)
    tokenizer = build_tokenizer(model.settings, source=args.model_dir)
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


def render(prompt, answer, prompt_format, inputs):
    """The text a reward model scores, as training makes it (data/inputs.py `ModelInputs`)."""
    from data.inputs import assistant_turn
    from data.sources import HUMAN_ASSISTANT
    if prompt_format == "chat_template":
        return inputs.conversation_text(prompt, assistant_turn(answer))
    if prompt_format == "human_assistant":
        return inputs.answer_text(HUMAN_ASSISTANT.format(prompt), " " + answer)
    return inputs.answer_text(prompt, answer)


def encode(items, inputs, prompt_format):
    """Tokenise each distinct text once, as training does (`inputs`: data/inputs.py `ModelInputs`); sets
    item.chosen_at / rejected_at.

    Returns (token ids cut to max_seq_len, answer lengths in tokens, number of texts cut). An answer's
    length is its own token count (the answer text alone, no special tokens), prompt and format aside."""
    index, texts, answers = {}, [], []
    for item in items:
        for answers_in, at in ((item.chosen, item.chosen_at), (item.rejected, item.rejected_at)):
            for answer in answers_in:
                text = render(item.prompt, answer, prompt_format, inputs)
                if text not in index:
                    index[text] = len(texts)
                    texts.append(text)
                    answers.append(answer)
                at.append(index[text])
    whole = inputs.tokenizer(texts)["input_ids"]  # uncut, to count the texts max_seq_len cuts
    lengths = np.array([len(a) for a in inputs.tokenizer(answers, add_special_tokens=False)["input_ids"]])
    cut = sum(len(row) > inputs.max_seq_len for row in whole)
    return inputs.encode(texts), lengths, cut


BENCHMARKS = {
    "rmbench": {"load": load_rmbench, "summarise": summarise_rmbench},
    "rewardbench": {"load": load_rewardbench, "summarise": summarise_rewardbench},
    "rewardbench2": {"load": load_rewardbench2, "summarise": summarise_rewardbench2},
    "judgebench": {"load": load_judgebench, "summarise": summarise_judgebench},
    "pairs": {"load": load_pairs, "summarise": summarise_pairs},
}


# ---------------------------------------------------------------- output

def markdown(title, columns, rows):
    def cell(value):
        return "-" if value is None else f"{value:.4f}" if isinstance(value, float) else str(value)
    lines = [f"### {title}", "", "| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    return "\n".join(lines + ["| " + " | ".join(cell(v) for v in row) + " |" for row in rows]) + "\n"


def _plain(value):
    return value.item() if hasattr(value, "item") else str(value)  # numpy scalars


def output_files(name):
    """Every file a run named `name` writes to MODEL/benchmarks/: a rerun replaces all of them."""
    return {"report": f"{name}.json", "scores": f"{name}_scores.jsonl", "chart": f"{name}.png",
            "reliability": f"{name}_reliability.png"}


def write_outputs(out_dir, name, report, items, scores, plots, extra=None):
    """Write the run's files (`plots`: (chart, calibration), or None) into a staging folder and publish them as
    one set, so no file of a previous run of that name outlives it; returns their paths. `extra` ({name: a
    value per text}, model/scoring.py `score_fields`) adds `chosen_<name>` and `rejected_<name>` to each item's
    scores line."""
    from utils.io import STAGING, publish, staging_folder
    files, staging_name = output_files(name), f"{STAGING}-{name}"
    os.makedirs(out_dir, exist_ok=True)
    staging = staging_folder(out_dir, staging_name)
    with open(os.path.join(staging, files["report"]), "w") as f:
        f.write(json.dumps(report, indent=2, default=_plain) + "\n")
    with open(os.path.join(staging, files["scores"]), "w") as f:
        for item in items:
            more = {f"{side}_{key}": values[at].tolist() for key, values in (extra or {}).items()
                    for side, at in (("chosen", item.chosen_at), ("rejected", item.rejected_at))}
            f.write(json.dumps({"group": item.group, **item.extra, "chosen_scores": scores[item.chosen_at].tolist(),
                                "rejected_scores": scores[item.rejected_at].tolist(), **more},
                               default=_plain) + "\n")
    written = [files["report"], files["scores"]] + (write_plots(staging, files, *plots) if plots else [])
    publish(out_dir, staging_name, replaces=files.values())
    return [os.path.join(out_dir, written_name) for written_name in written]


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


def write_plots(folder, files, chart, calibration):
    """The bar chart and reliability diagram in `folder`; returns their names ([] without matplotlib)."""
    from evaluation_scripts.plots import matplotlib_pyplot
    plt = matplotlib_pyplot()
    if plt is None:
        print("matplotlib is not installed: no plots (pip install matplotlib)")
        return []
    bar_chart(chart, os.path.join(folder, files["chart"]), plt)
    reliability_diagram(calibration, os.path.join(folder, files["reliability"]), plt)
    return [files["chart"], files["reliability"]]


# ---------------------------------------------------------------- entry point

def check_args(args):
    from utils.errors import UserError
    problems = [f"--{k} {getattr(args, k)} must be >= {low}" for k, low in
                (("batch_tokens", 1), ("ece_bins", 1), ("limit", 0)) if (getattr(args, k) or low) < low]
    if args.max_seq_len is not None and args.max_seq_len < 2:
        problems.append(f"--max_seq_len {args.max_seq_len} must be >= 2")
    if args.output_name and (os.path.basename(args.output_name) != args.output_name or args.output_name in (".", "..")):
        problems.append(f"--output_name {args.output_name!r} must be a plain file name (no folder)")
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
    from tqdm import tqdm

    from data.inputs import ModelInputs
    from model.create import model_max_positions
    from model.io import read_reward_settings
    from model.scoring import batch_tokens_for, score_fields, speed
    from model.shared_prompt import packs
    check_args(args)
    read_reward_settings(args.model_dir)  # not a reward model folder: refused before any data is read
    items = load_items(args)
    model, tokenizer, device, dtype = load_model(args)
    prompt_format = resolve_format(args, tokenizer)
    max_seq_len = max_len(args, model_max_positions(args.model_dir))
    sequences, lengths, cut = encode(items, ModelInputs(tokenizer, model.settings, max_seq_len), prompt_format)
    args.batch_tokens = args.batch_tokens or batch_tokens_for(device)
    start = time.perf_counter()
    extra = {key: value.double().numpy() for key, value in score_fields(
        model, sequences, args.batch_tokens, args.heads, lambda batches: tqdm(batches, desc="scoring", unit="batch"))
        .items()}
    scores = extra.pop("reward")
    seconds = time.perf_counter() - start
    scored = [(scores[item.chosen_at], scores[item.rejected_at]) for item in items]
    figures, tables, chart = BENCHMARKS[args.benchmark]["summarise"](items, scored)
    common, common_table = bias_and_calibration(items, scores, lengths, args.ece_bins)
    tokens = sum(len(s) for s in sequences)
    packed = packs(model.config)
    rates = {"seconds": seconds, "texts": len(sequences), "tokens": tokens, "texts_per_s": len(sequences) / seconds,
             "pairs_per_s": len(sequences) / 2 / seconds, "tokens_per_s": tokens / seconds,
             "device": device, "dtype": dtype, "batch_tokens": args.batch_tokens, "packed": packed}
    report = {"benchmark": args.benchmark, "model": os.path.abspath(args.model_dir), "data": args.data,
              "prompt_format": prompt_format, "max_seq_len": max_seq_len, "texts_cut_at_max_seq_len": cut,
              "items": len(items), "scores": figures, **common, "speed": rates}
    if "uncertainty" in extra:
        report["uncertainty_mean"] = float(extra["uncertainty"].mean())
    for table in [*tables, common_table]:
        print(markdown(*table))
    print(f"speed: {speed(len(sequences), tokens, seconds)} on {device} ({dtype}, "
          f"{'packed' if packed else 'padded'} batches of <= {args.batch_tokens} tokens); "
          f"{cut} texts cut at {max_seq_len} tokens")
    out_dir = os.path.join(args.model_dir, "benchmarks")
    name = args.output_name or args.benchmark
    plots = None if args.no_plots else (chart, common["calibration"])
    for path in write_outputs(out_dir, name, report, items, scores, plots, extra):
        print(f"wrote {path}")
    return report


def main(argv=None):
    from utils.errors import exit_on_user_error
    args = parse_args(argv)
    return exit_on_user_error(run, args, debug=args.debug)


if __name__ == "__main__":
    main()
