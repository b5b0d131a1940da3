"""Read the JSONL logs of benchmarks/sxs_runner.py and compare two runs (benchmarks/side_by_side.py).

Measured: from each run's log, the pairs (row hashes) and fp32 loss of every training micro step,
the learning rate after each step, per-pair end scores of the evaluations before the first and
after the last step, wall time at each step end. Not measured: anything the log does not hold,
e.g. gradients or optimizer state (a wrong update shows up as a loss difference one step later).
"""
import json
import math
import re


def read_log(path):
    with open(path) as f:
        return [json.loads(line) for line in f if line.strip()]


def micro_steps(records):
    """One entry per DeepSpeed micro step: the training forwards since the previous step, joined.

    main.py may run a micro batch as several forwards (sub-batches of similar length): the step's pairs
    are then its `micro_batch` record's (the loader's order), its loss the pair-weighted mean of the
    forwards' losses (what the micro batch's loss is), its padded length the longest forward's.
    """
    steps, forwards, micro_batch = [], [], None
    for record in records:
        if record["kind"] == "forward" and record["train"]:
            forwards.append(record)
        elif record["kind"] == "micro_batch":
            micro_batch = record
        elif record["kind"] == "step":
            pairs = micro_batch["pairs"] if micro_batch else [p for f in forwards for p in f["pairs"]]
            weighted = sum(f["loss"] * len(f["pairs"]) for f in forwards)
            steps.append({"n": record["n"], "t": record["t"], "lr": record["lr"], "forwards": len(forwards),
                          "pairs": pairs, "loss": weighted / len(pairs) if forwards else None,
                          "padded_len": max((f["padded_len"] for f in forwards), default=0),
                          "padded_tokens": sum(f["padded_len"] * 2 * len(f["pairs"]) for f in forwards),
                          "tokens": sum(f.get("tokens", f["padded_len"] * 2 * len(f["pairs"])) for f in forwards)})
            forwards, micro_batch = [], None
    return steps


def eval_phases(records):
    """(eval forwards before the first micro step, eval forwards after the last one)."""
    kinds = [r["kind"] for r in records]
    first = kinds.index("step") if "step" in kinds else len(records)
    last = len(kinds) - 1 - kinds[::-1].index("step") if "step" in kinds else len(records)
    evals = [(i, r) for i, r in enumerate(records) if r["kind"] == "forward" and not r["train"]]
    return [r for i, r in evals if i < first], [r for i, r in evals if i > last]


def pair_scores(forwards):
    """{(chosen hash, rejected hash): (chosen score, rejected score)} over evaluation forwards."""
    scores = {}
    for forward in forwards:
        for pair, chosen, rejected in zip(forward["pairs"], forward["chosen"], forward["rejected"]):
            scores[tuple(pair)] = (chosen, rejected)
    return scores


def accuracy(forwards):
    """Fraction of scored pairs with chosen score > rejected score, and how many were scored."""
    results = [c > r for f in forwards for c, r in zip(f["chosen"], f["rejected"])]
    return (sum(results) / len(results) if results else math.nan), len(results)


REPORTED_ACC = {
    "dschat": re.compile(r"acc \(higher is better\) : ([0-9.]+)"),
    "project": re.compile(r"^eval \([^)]*\) \| acc ([0-9.]+)", re.M),
}


def reported_accuracies(side, stdout_text):
    """The accuracies the program itself printed, in order (before training first)."""
    return [float(x) for x in REPORTED_ACC[side].findall(stdout_text)]


def compare_steps(ref_steps, new_steps):
    """Per micro step: same ordered pairs, same set, |loss diff|, lrs."""
    rows = []
    for i in range(max(len(ref_steps), len(new_steps))):
        a = ref_steps[i] if i < len(ref_steps) else None
        b = new_steps[i] if i < len(new_steps) else None
        row = {"step": i + 1, "ref_loss": a and a["loss"], "new_loss": b and b["loss"],
               "ref_lr": a and a["lr"], "new_lr": b and b["lr"], "same_pairs": False, "same_set": False,
               "identical_pairs_in_batch": a and sum(c == r for c, r in a["pairs"]), "loss_diff": None}
        if a and b:
            row["same_pairs"] = a["pairs"] == b["pairs"]
            row["same_set"] = sorted(map(tuple, a["pairs"])) == sorted(map(tuple, b["pairs"]))
            if a["loss"] is not None and b["loss"] is not None:
                row["loss_diff"] = abs(a["loss"] - b["loss"])
        rows.append(row)
    return rows


def compare_eval(ref_forwards, new_forwards):
    """Accuracy of each, pairs scored by both, and the largest end-score difference on those."""
    ref, new = pair_scores(ref_forwards), pair_scores(new_forwards)
    common = ref.keys() & new.keys()
    diffs = [max(abs(ref[k][0] - new[k][0]), abs(ref[k][1] - new[k][1])) for k in common]
    return {"ref_acc": accuracy(ref_forwards)[0], "new_acc": accuracy(new_forwards)[0],
            "ref_pairs": accuracy(ref_forwards)[1], "new_pairs": accuracy(new_forwards)[1],
            "common_pairs": len(common), "max_score_diff": max(diffs, default=None)}


def _first(records, kind):
    return next((r for r in records if r["kind"] == kind), {})


def summarise_fidelity(ref_records, new_records):
    rows = compare_steps(micro_steps(ref_records), micro_steps(new_records))
    both = [r for r in rows if r["loss_diff"] is not None]
    same = [r for r in both if r["same_pairs"]]
    ref_before, ref_after = eval_phases(ref_records)
    new_before, new_after = eval_phases(new_records)
    ref_params, new_params = _first(ref_records, "params"), _first(new_records, "params")
    return {
        "ref_micro_steps": len(micro_steps(ref_records)), "new_micro_steps": len(micro_steps(new_records)),
        "same_pairs_batches": sum(r["same_pairs"] for r in rows), "same_set_batches": sum(r["same_set"] for r in rows),
        "batches": len(rows),
        "max_loss_diff": max((r["loss_diff"] for r in both), default=None),
        "max_loss_diff_same_pairs": max((r["loss_diff"] for r in same), default=None),
        "identical_pairs_trained_ref": sum(r["identical_pairs_in_batch"] or 0 for r in rows),
        "initial_weights": {"ref": {k: ref_params.get(k) for k in ("all", "v_head", "count")},
                            "new": {k: new_params.get(k) for k in ("all", "v_head", "count")}},
        "rng_at_first_train_forward": {"ref": _first(ref_records, "rng").get("torch_cpu"),
                                       "new": _first(new_records, "rng").get("torch_cpu")},
        "eval_before": compare_eval(ref_before, new_before),
        "eval_after": compare_eval(ref_after, new_after),
        "steps": rows,
    }
