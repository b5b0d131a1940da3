"""The figures of each benchmark, as its authors define them (docs/benchmarks.md), plus the length-bias
and calibration figures every evaluation gets; tables and chart values for the report."""
from collections import defaultdict

import numpy as np

from evaluation_scripts import rm_metrics as M


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
    table = ("JudgeBench (both orders, the authors' rule; single game: one verdict per pair, A before B)",
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
