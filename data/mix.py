"""Which source a pair came from: short source names, `--data_weights` (the per-source training mix) and
`--eval_data_path` (named held-out sets).

Every tokenised pair carries `source`, the index of its `--data_path` value (data/pairs.py). Evaluation
reports metrics per source under the names `source_names` gives; `--data_weights` re-draws the training
pairs so that each source makes up the requested share of an epoch of the same size.
"""
import math
import os

import numpy as np

from data.readers import SUFFIXES
from utils.errors import UserError


def source_name(path):
    """A short name for one `--data_path` value: a local file or folder's base name without its data suffix
    ('data/hh/' -> 'hh', 'x/pairs.jsonl' -> 'pairs'); a hub or synthetic name as given."""
    if not os.path.exists(path):
        return path
    name = os.path.basename(os.path.normpath(path))
    return next((name[:-len(s)] for s in SUFFIXES if name.endswith(s) and len(name) > len(s)), name)


def source_names(data_paths):
    """One distinct name per `--data_path` value (the values themselves where short names would clash)."""
    names = [source_name(p) for p in data_paths]
    return names if len(set(names)) == len(names) else [str(p) for p in data_paths]


def eval_sets(values):
    """--eval_data_path ['NAME=PATH', ...] -> {NAME: PATH} (utils/validate.py checks them first)."""
    return dict(value.split("=", 1) for value in values or [])


def parse_weights(values, data_paths):
    """`--data_weights` as one float per `--data_path` source: either W1 W2 ... in --data_path order, or
    NAME=W for every source (NAME from `source_names`). Raises one UserError naming what is wrong."""
    names = source_names(data_paths)
    if len(data_paths) < 2:
        raise UserError("--data_weights weights the --data_path sources against each other; give it with two or "
                        "more --data_path values (with one source it would change nothing).")
    named = [v for v in values if "=" in v]
    if named and len(named) != len(values):
        raise UserError(f"--data_weights {' '.join(values)}: give every weight as NAME=W or none of them.")
    if named:
        pairs = [v.rsplit("=", 1) for v in values]
        unknown = [n for n, _ in pairs if n not in names]
        if unknown or len({n for n, _ in pairs}) != len(pairs) or len(pairs) != len(names):
            raise UserError(f"--data_weights {' '.join(values)}: name each source once, of {', '.join(names)}"
                            + (f" (unknown: {', '.join(unknown)})" if unknown else "") + ".")
        values = [dict(pairs)[n] for n in names]
    if len(values) != len(data_paths):
        raise UserError(f"--data_weights has {len(values)} weight(s) for {len(data_paths)} --data_path sources "
                        f"({', '.join(names)}): give one per source, in order, or as NAME=W.")
    weights = []
    for name, value in zip(names, values):
        try:
            weight = float(value)
        except ValueError:
            weight = math.nan
        if not math.isfinite(weight) or weight < 0:
            raise UserError(f"--data_weights: the weight of {name} must be a finite number >= 0, not {value!r}.")
        weights.append(weight)
    if sum(weights) <= 0:
        raise UserError("--data_weights: at least one weight must be > 0.")
    return weights


def mix_counts(total, weights):
    """Pairs per source for an epoch of `total` pairs: total x w / sum(w), rounded by largest remainder so
    they sum to `total` (ties go to the earlier source)."""
    shares = np.asarray(weights, dtype=np.float64) * total / sum(weights)
    counts = np.floor(shares).astype(np.int64)
    order = np.argsort(-(shares - counts), kind="stable")
    counts[order[:total - counts.sum()]] += 1
    return counts.tolist()


def mix_indices(sources, weights, seed):
    """Row indices of a weighted epoch, sorted. `sources` (N,) holds each pair's source index.

    The epoch keeps N pairs; source s gets n_s = `mix_counts`(N, weights)[s] of them: each of its pairs
    n_s // size_s times, plus n_s % size_s of its pairs drawn without replacement by
    `numpy.random.RandomState(seed)` (sources in order), so every pair is used as evenly as the count allows.
    """
    sources = np.asarray(sources, dtype=np.int64)
    rng = np.random.RandomState(seed)
    picked = []
    for s, count in enumerate(mix_counts(len(sources), weights)):
        pool = np.flatnonzero(sources == s)
        if count and not len(pool):
            raise UserError(f"--data_weights gives source {s + 1} a weight > 0, but it has no training pairs.")
        if count:
            repeats, rest = divmod(count, len(pool))
            picked += [np.tile(pool, repeats), rng.choice(pool, rest, replace=False)]
    return np.sort(np.concatenate(picked), kind="stable")


def weighted_train_set(train_set, weights, names, seed):
    """(the training pairs re-drawn by `mix_indices`, the log line saying the mix). `train_set` is a
    `datasets.Dataset` with a `source` column; the result selects rows of it (memory-mapped data kept)."""
    sources = train_set.with_format("numpy")["source"]
    before = np.bincount(sources, minlength=len(names))
    empty = [n for n, w, b in zip(names, weights, before) if w > 0 and b == 0]
    if empty:
        raise UserError(f"--data_weights gives {', '.join(empty)} a weight > 0, but no training pairs come from it.")
    indices = mix_indices(sources, weights, seed)
    after = np.bincount(sources[indices], minlength=len(names))
    shown = ", ".join(f"{n}={w:g}" for n, w in zip(names, weights))
    counts = ", ".join(f"{n} {a:,} of {b:,}" for n, a, b in zip(names, after, before))
    line = f"data: weights {shown} -> pairs per source {counts} ({len(indices):,} pairs per epoch)"
    return train_set.select(indices, keep_in_memory=True), line
