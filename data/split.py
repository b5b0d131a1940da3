"""DeepSpeed-Chat's split rule: which rows of a source each training phase uses."""
import math

import numpy as np

from utils.errors import UserError

PHASE = 2  # reward-model training takes the second chunk of `--data_split`


def parse_data_split(data_split):
    """'2,4,4' -> [2.0, 4.0, 4.0]; a UserError naming --data_split if it is not usable."""
    try:
        shares = [float(s) for s in str(data_split).split(",")]
    except ValueError:
        shares = None
    if not shares or any(not math.isfinite(s) or s < 0 for s in shares) or sum(shares) <= 0:
        raise UserError(f"--data_split {data_split!r} must be comma-separated non-negative numbers "
                        "with a positive sum, e.g. '2,4,4' (SFT, reward model, RLHF shares).")
    if len(shares) < PHASE:
        raise UserError(f"--data_split {data_split!r} has {len(shares)} share(s); reward-model training "
                        f"uses share number {PHASE}, so give at least {PHASE}, e.g. '2,4,4'.")
    return shares


def shuffle_idx(seed, size):
    """A permutation of range(size) from numpy's RandomState(seed), as DeepSpeed-Chat builds it."""
    dtype = np.uint32 if size < np.iinfo(np.uint32).max - 1 else np.int64
    idx = np.arange(size, dtype=dtype)
    np.random.RandomState(seed=seed).shuffle(idx)
    return idx


def split_indices(size, shares, chunk, seed):
    """Row indices (in shuffled order) of chunk `chunk` when `size` rows are cut by `shares`.

    DeepSpeed-Chat's get_raw_dataset_split_index: normalise the shares, take running sums of
    int(round(share * size)), shift every boundary after the first by the rounding excess so the
    last one is `size`, and cut the RandomState(seed) permutation there. Boundaries are clamped at
    0 (DeepSpeed-Chat would slice with a negative index in that degenerate case).
    """
    total = sum(shares)
    bounds = [0]
    for share in (s / total for s in shares):
        bounds.append(bounds[-1] + int(round(share * float(size))))
    excess = bounds[-1] - size
    bounds = [0] + [max(0, b - excess) for b in bounds[1:]]
    return shuffle_idx(seed, size)[bounds[chunk]:bounds[chunk + 1]].tolist()
