"""LengthGroupedSampler (--group_by_length) and the eval length order, on small in-memory datasets.

Run: .venv/bin/python -m pytest tests/test_sampler.py -q
"""
import collections

import datasets
import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader, DistributedSampler, Subset

from data import PairCollator
from data.sampler import (LengthGroupedSampler, ResumableDistributedSampler, length_sorted_indices,
                          pair_lengths, pair_row_lengths)


def make_pairs(count, seed=0):
    """`count` pairs with long-tailed lengths (like chat data): chosen and rejected differ in length."""
    rng = np.random.default_rng(seed)
    sizes = np.clip(rng.lognormal(np.log(120), 0.8, size=(count, 2)), 3, 512).astype(int)
    return datasets.Dataset.from_dict({
        "chosen_input_ids": [[2] + [5] * (c - 1) for c, _ in sizes],
        "rejected_input_ids": [[2] + [6] * (r - 1) for _, r in sizes]})


@pytest.fixture(scope="module")
def pairs():
    return make_pairs(1003)


def rank_streams(dataset, world, **kwargs):
    samplers = [LengthGroupedSampler(dataset, num_replicas=world, rank=r, **kwargs) for r in range(world)]
    return [list(s) for s in samplers]


def test_lengths_come_from_arrow_and_follow_select_and_subset(pairs):
    rows = [[len(r["chosen_input_ids"]), len(r["rejected_input_ids"])] for r in pairs]
    assert pair_row_lengths(pairs).tolist() == rows
    expected = [max(row) for row in rows]
    assert pair_lengths(pairs).tolist() == expected
    picked = [9, 3, 500, 3]
    assert pair_lengths(pairs.select(picked)).tolist() == [expected[i] for i in picked]
    assert pair_lengths(Subset(pairs, picked)).tolist() == [expected[i] for i in picked]
    assert pair_lengths(list(pairs.select(picked))).tolist() == [expected[i] for i in picked]


def test_eval_order_is_longest_first(pairs):
    order = length_sorted_indices(pairs)
    lengths = pair_lengths(pairs)[order]
    assert sorted(order) == list(range(len(pairs)))
    assert (np.diff(lengths) <= 0).all()


def test_same_seed_and_epoch_give_the_same_order_and_others_differ(pairs):
    first = rank_streams(pairs, 2, batch_size=8, seed=7)
    assert rank_streams(pairs, 2, batch_size=8, seed=7) == first
    assert rank_streams(pairs, 2, batch_size=8, seed=8) != first
    sampler = LengthGroupedSampler(pairs, batch_size=8, num_replicas=1, rank=0, seed=7)
    epoch0 = list(sampler)
    sampler.set_epoch(1)
    epoch1 = list(sampler)
    assert epoch1 != epoch0 and sorted(epoch1) == sorted(epoch0)


@pytest.mark.parametrize("size,world", [(1024, 4), (1003, 4), (1003, 1), (7, 3)])
def test_every_row_once_per_epoch_across_ranks_padding_repeats_like_distributed_sampler(size, world):
    dataset = make_pairs(size)
    streams = rank_streams(dataset, world, batch_size=8, seed=3)
    per_rank = -(-size // world)  # DistributedSampler: ceil(N / ranks) rows on every rank
    assert all(len(s) == per_rank for s in streams)
    counts = collections.Counter(i for s in streams for i in s)
    assert set(counts) == set(range(size))
    repeats = [i for i, n in counts.items() if n == 2]
    assert len(repeats) == per_rank * world - size and max(counts.values()) <= 2
    # the repeated rows are the first rows of the epoch's permutation, as DistributedSampler pads
    generator = torch.Generator().manual_seed(3)
    assert sorted(repeats) == sorted(torch.randperm(size, generator=generator)[:len(repeats)].tolist())


def test_drop_last_drops_the_tail_and_never_repeats():
    dataset = make_pairs(1003)
    streams = rank_streams(dataset, 4, batch_size=8, seed=3, drop_last=True)
    assert all(len(s) == 1003 // 4 for s in streams)
    flat = [i for s in streams for i in s]
    assert len(set(flat)) == len(flat) == 1000


def test_each_micro_batch_is_every_ranks_equal_share_of_one_global_batch(pairs):
    world, batch = 4, 8
    samplers = [LengthGroupedSampler(pairs, batch_size=batch, num_replicas=world, rank=r, seed=1)
                for r in range(world)]
    loaders = [list(DataLoader(range(len(pairs)), batch_size=batch, sampler=s)) for s in samplers]
    reference = list(DataLoader(range(len(pairs)), batch_size=batch,
                                sampler=DistributedSampler(pairs, num_replicas=world, rank=0, seed=1)))
    assert len({len(loader) for loader in loaders}) == 1 and len(loaders[0]) == len(reference)
    global_batches = samplers[0].global_batches()
    assert len(global_batches) == len(loaders[0])
    for step, expected in enumerate(global_batches):
        shares = [loader[step].tolist() for loader in loaders]
        assert len({len(s) for s in shares}) == 1  # no rank gets more rows (the last batch too)
        assert sorted(i for s in shares for i in s) == sorted(expected)


def test_batches_hold_similar_lengths_and_the_longest_comes_first(pairs):
    lengths = pair_lengths(pairs)

    def mean_spread(stream, batch=8):
        spans = [lengths[stream[i:i + batch]] for i in range(0, len(stream) - batch + 1, batch)]
        return np.mean([s.max() - s.min() for s in spans]), [s.max() for s in spans]

    grouped, grouped_max = mean_spread(list(LengthGroupedSampler(pairs, batch_size=8, num_replicas=1, rank=0)))
    random_, random_max = mean_spread(list(DistributedSampler(pairs, num_replicas=1, rank=0, seed=0)))
    assert grouped < 0.15 * random_
    # padded tokens per epoch (what a step costs) drop, and the first batch holds the longest row
    assert sum(grouped_max) < 0.8 * sum(random_max)
    assert grouped_max[0] == lengths.max()
    # still random: batch lengths are not in sorted order
    assert not (np.diff(grouped_max[1:]) <= 0).all() and not (np.diff(grouped_max[1:]) >= 0).all()


def test_resume_at_a_micro_batch_yields_the_rest_of_the_epoch(pairs):
    for rank in range(2):
        sampler = LengthGroupedSampler(pairs, batch_size=8, num_replicas=2, rank=rank, seed=5)
        sampler.set_epoch(2)
        full = list(DataLoader(pairs, batch_size=8, sampler=sampler, collate_fn=PairCollator(1)))
        sampler.set_epoch(2, skip_batches=13)
        resumed = DataLoader(pairs, batch_size=8, sampler=sampler, collate_fn=PairCollator(1))
        assert len(resumed) == len(full) - 13
        for a, b in zip(resumed, full[13:], strict=True):
            assert torch.equal(a["input_ids"], b["input_ids"])
        sampler.set_epoch(3)  # a new epoch starts from its first batch again
        assert len(sampler) == -(-len(pairs) // 2)
    at_start = LengthGroupedSampler(pairs, batch_size=8, num_replicas=2, rank=1, seed=5, skip_batches=4)
    at_start.set_epoch(0, skip_batches=4)
    plain = LengthGroupedSampler(pairs, batch_size=8, num_replicas=2, rank=1, seed=5)
    assert list(at_start) == list(plain)[32:]


def test_without_grouping_the_order_is_distributed_samplers_and_resume_skips_batches(pairs):
    for rank in range(3):
        plain = ResumableDistributedSampler(pairs, batch_size=8, num_replicas=3, rank=rank, seed=4)
        torch_sampler = DistributedSampler(pairs, num_replicas=3, rank=rank, shuffle=True, seed=4)
        plain.set_epoch(1)
        torch_sampler.set_epoch(1)
        assert list(plain) == list(torch_sampler) and len(plain) == len(torch_sampler)
        plain.set_epoch(1, skip_batches=5)
        assert list(plain) == list(torch_sampler)[40:] and len(plain) == len(torch_sampler) - 40


def test_bad_arguments_are_refused(pairs):
    with pytest.raises(ValueError, match="rank 2"):
        LengthGroupedSampler(pairs, batch_size=8, num_replicas=2, rank=2)
    with pytest.raises(ValueError, match="lengths"):
        LengthGroupedSampler(pairs, batch_size=8, num_replicas=1, rank=0, lengths=[1, 2, 3])
