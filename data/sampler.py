"""Length-aware ordering of pairs: a length-grouped training sampler and the eval order.

A pair's length is max(len(chosen ids), len(rejected ids)): the collator pads both rows of every
pair in a batch to the batch's longest row, so that is what a batch costs.
"""
import math

import numpy as np
import torch
from torch.utils.data import DistributedSampler, Sampler, Subset

PAIR_COLUMNS = ("chosen_input_ids", "rejected_input_ids")
DSCHAT_SAMPLER_SEED = 0  # DeepSpeed-Chat builds DistributedSampler(train_dataset): torch's default seed


def _replicas(num_replicas, rank):
    """(num_replicas, rank), each defaulting to this process group's, as DistributedSampler does."""
    from utils.dist import get_rank, get_world_size
    return (get_world_size() if num_replicas is None else num_replicas,
            get_rank() if rank is None else rank)


def train_sampler(dataset, batch_size, group_by_length=False, seed=0, num_replicas=None, rank=None):
    """The training sampler: DeepSpeed-Chat's `DistributedSampler(train_dataset)` order (torch's default
    seed, whatever --seed says), or with `group_by_length` batches of similar length seeded by `seed`.
    Both skip batches on resume (`set_epoch(epoch, skip_batches=k)`)."""
    ranks = {"batch_size": batch_size, "num_replicas": num_replicas, "rank": rank}
    if group_by_length:
        return LengthGroupedSampler(dataset, seed=seed, **ranks)
    return ResumableDistributedSampler(dataset, seed=DSCHAT_SAMPLER_SEED, **ranks)


def pair_row_lengths(dataset):
    """(N, 2) int64 numpy array: [len(chosen_input_ids), len(rejected_input_ids)] per row; (N, 1) [len(input_ids)]
    for rated rows (data/ratings.py).

    Read from the Arrow list offsets of a `datasets.Dataset` (no Python loop over rows; an index
    mapping left by `select` is honoured). A `torch.utils.data.Subset` of one, or any sequence of
    dicts with those two keys, also works (the latter by iterating).
    """
    if isinstance(dataset, Subset):
        return pair_row_lengths(dataset.dataset)[np.asarray(dataset.indices, dtype=np.int64)]
    table = getattr(dataset, "data", None)
    if table is not None and hasattr(table, "column"):
        import pyarrow.compute as pc
        names = [n for n in PAIR_COLUMNS if n in table.column_names] or ["input_ids"]  # rated rows: one
        lengths = np.stack([pc.list_value_length(table.column(name)).to_numpy(zero_copy_only=False)
                            for name in names], axis=1).astype(np.int64)
        indices = getattr(dataset, "_indices", None)  # set by Dataset.select without a flatten
        if indices is not None:
            lengths = lengths[indices.column(0).to_numpy()]
        return lengths
    rows = list(dataset)
    names = ([n for n in PAIR_COLUMNS if n in rows[0]] or ["input_ids"]) if rows else PAIR_COLUMNS
    return np.array([[len(r[n]) for n in names] for r in rows], dtype=np.int64).reshape(-1, len(names))


def pair_lengths(dataset):
    """(N,) int64: max(len(chosen), len(rejected)) per row, the length a pair pads its batch to."""
    return pair_row_lengths(dataset).max(axis=1, initial=0)


def length_sorted_indices(dataset):
    """Row indices of `dataset` from the longest pair to the shortest (stable for ties).

    For evaluation: batches of consecutive rows in this order pad little, and the longest batch
    comes first, so an out-of-memory error shows up at once. Accepts what `pair_row_lengths` accepts.
    """
    return np.argsort(-pair_lengths(dataset), kind="stable").tolist()


class LengthGroupedSampler(Sampler):
    """A drop-in for `DistributedSampler(dataset, num_replicas, rank, shuffle=True, seed, drop_last)`
    whose micro-batches hold pairs of similar length (`--group_by_length`).

    Each epoch, from `seed + epoch` only:
    1. a random permutation of the N rows, cut or padded to `total_size` exactly as
       DistributedSampler does: drop_last=False repeats the first rows of the permutation so every
       rank gets `ceil(N / num_replicas)` rows (the repeats are counted twice in that epoch);
       drop_last=True drops the permutation's tail so every rank gets `N // num_replicas` rows;
    2. cut into megabatches of `megabatch_size` global batches (global batch = batch_size x
       num_replicas rows), each sorted by length, longest first, then cut into global batches:
       the rows of a global batch have similar lengths, so no rank waits for a longer one;
    3. the full global batches are shuffled and the one holding the longest row is moved to the
       front (an out-of-memory error shows at step 1, not hours in); a partial global batch (the
       shortest rows of the last megabatch, when total_size is not a multiple of the global batch)
       stays last, so every rank's micro-batches line up;
    4. rank r takes rows r, r + num_replicas, ... of every global batch: an equal, disjoint share,
       in the same place of the stream on every rank.

    Use it with `DataLoader(dataset, batch_size=batch_size, sampler=sampler)`: each micro-batch
    the loader cuts is this rank's share of one global batch. `len(sampler)` is the number of rows
    this rank yields (as DistributedSampler), less the rows skipped for resume.

    Resume: `set_epoch(epoch, skip_batches=k)` (or `skip_batches=k` at construction) starts the
    epoch at this rank's micro-batch k, yielding exactly the rows that an uninterrupted run yields
    from there. The next `set_epoch` without `skip_batches` starts at 0 again.
    """

    def __init__(self, dataset=None, batch_size=1, num_replicas=None, rank=None, seed=0, drop_last=False,
                 lengths=None, megabatch_size=50, skip_batches=0):
        num_replicas, rank = _replicas(num_replicas, rank)
        if not 0 <= rank < num_replicas:
            raise ValueError(f"LengthGroupedSampler: rank {rank} is not in [0, {num_replicas})")
        if batch_size < 1 or megabatch_size < 1:
            raise ValueError("LengthGroupedSampler: batch_size and megabatch_size must be >= 1")
        self.lengths = np.asarray(pair_lengths(dataset) if lengths is None else lengths, dtype=np.int64)
        if dataset is not None and len(self.lengths) != len(dataset):
            raise ValueError(f"LengthGroupedSampler: {len(self.lengths)} lengths for {len(dataset)} rows")
        self.batch_size, self.num_replicas, self.rank = batch_size, num_replicas, rank
        self.seed, self.drop_last, self.megabatch_size = seed, drop_last, megabatch_size
        self.epoch = 0
        self.skip_batches = skip_batches
        size = len(self.lengths)
        if drop_last:
            self.num_samples = size // num_replicas
        else:
            self.num_samples = math.ceil(size / num_replicas)
        self.total_size = self.num_samples * num_replicas

    def set_epoch(self, epoch, skip_batches=0):
        """Select the epoch's order; `skip_batches` micro-batches of this rank are skipped (resume)."""
        self.epoch = epoch
        self.skip_batches = skip_batches

    def global_batches(self):
        """The epoch's global batches (lists of row indices, all ranks' rows), in training order."""
        generator = torch.Generator()
        generator.manual_seed(self.seed + self.epoch)
        order = torch.randperm(len(self.lengths), generator=generator).numpy()
        if self.total_size > len(order):  # DistributedSampler's padding: repeat from the start
            order = np.resize(order, self.total_size)
        order = order[:self.total_size]
        global_batch = self.batch_size * self.num_replicas
        mega = self.megabatch_size * global_batch
        batches = []
        for start in range(0, len(order), mega):
            chunk = order[start:start + mega]
            chunk = chunk[np.argsort(-self.lengths[chunk], kind="stable")]
            batches += [chunk[i:i + global_batch] for i in range(0, len(chunk), global_batch)]
        tail = [batches.pop()] if batches and len(batches[-1]) < global_batch else []
        if batches:
            shuffle = torch.randperm(len(batches), generator=generator).tolist()
            batches = [batches[i] for i in shuffle]
            longest = int(np.argmax([self.lengths[b[0]] for b in batches]))  # rows are sorted, longest first
            batches.insert(0, batches.pop(longest))
        return [b.tolist() for b in batches + tail]

    def __iter__(self):
        rows = [i for batch in self.global_batches() for i in batch[self.rank::self.num_replicas]]
        return iter(rows[self.skip_batches * self.batch_size:])

    def __len__(self):
        return max(self.num_samples - self.skip_batches * self.batch_size, 0)


class ResumableDistributedSampler(DistributedSampler):
    """torch's `DistributedSampler` (shuffle=True: DeepSpeed-Chat's sample order, the default without
    `--group_by_length`) with LengthGroupedSampler's resume interface: `set_epoch(epoch, skip_batches=k)`
    starts the epoch at this rank's micro-batch k of `batch_size` rows.

    The order is one global list (`global_order`, the same on any number of ranks but for the repeats
    that pad its end) dealt to ranks in turn, so skipping k micro-batches skips its first
    k x batch_size x num_replicas rows: a run resumed on another number of ranks, or with another micro
    batch, trains exactly the rows not yet seen."""

    def __init__(self, dataset, batch_size=1, num_replicas=None, rank=None, seed=0, drop_last=False,
                 skip_batches=0):
        num_replicas, rank = _replicas(num_replicas, rank)
        super().__init__(dataset, num_replicas=num_replicas, rank=rank, shuffle=True, seed=seed,
                         drop_last=drop_last)
        self.batch_size, self.skip_batches = batch_size, skip_batches

    def set_epoch(self, epoch, skip_batches=0):
        super().set_epoch(epoch)
        self.skip_batches = skip_batches

    def global_order(self):
        """The epoch's rows of all ranks in order, padded or cut to total_size as DistributedSampler does."""
        generator = torch.Generator()
        generator.manual_seed(self.seed + self.epoch)
        order = torch.randperm(len(self.dataset), generator=generator).tolist()
        if self.drop_last:
            return order[:self.total_size]
        padding = self.total_size - len(order)
        return order + (order * math.ceil(padding / max(len(order), 1)))[:padding]

    def __iter__(self):
        rest = self.global_order()[self.skip_batches * self.batch_size * self.num_replicas:]
        return iter(rest[self.rank::self.num_replicas])

    def __len__(self):
        return max(self.num_samples - self.skip_batches * self.batch_size, 0)
