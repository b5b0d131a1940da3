"""DeepSpeed-Chat's phase split, checked against hand computations.

Run: .venv/bin/python -m pytest tests/test_data_split.py -q
"""
import numpy as np
import pytest

from data.split import parse_data_split, split_indices
from utils.errors import UserError


def permutation(seed, size):
    perm = np.arange(size)
    np.random.RandomState(seed).shuffle(perm)
    return perm.tolist()


def test_phase2_takes_the_second_chunk_of_the_seeded_permutation():
    # N=10, "2,4,4": boundaries 0, 2, 6, 10, so phase 2 gets positions 2..5 of the permutation.
    perm = permutation(1234, 10)
    assert split_indices(10, parse_data_split("2,4,4"), 1, seed=1234) == perm[2:6]
    assert split_indices(10, parse_data_split("2,4,4"), 0, seed=1234) == perm[0:2]
    assert split_indices(10, parse_data_split("2,4,4"), 2, seed=1234) == perm[6:10]


def test_whole_share_to_phase2_gives_every_row_in_permuted_order():
    assert split_indices(10, parse_data_split("0,10,0"), 1, seed=1234) == permutation(1234, 10)


def test_rounding_excess_shifts_every_boundary_like_deepspeed_chat():
    # N=5, "1,1,1": round(5/3)=2 each, running sums 0,2,4,6 exceed 5 by 1, and DeepSpeed-Chat
    # subtracts that from every boundary after the first: 0,1,3,5. Phase 2 gets positions 1..2.
    assert split_indices(5, parse_data_split("1,1,1"), 1, seed=7) == permutation(7, 5)[1:3]


def test_chunks_partition_the_rows():
    shares = parse_data_split("2,4,4")
    chunks = [split_indices(37, shares, i, seed=3) for i in range(3)]
    assert sorted(sum(chunks, [])) == list(range(37))
    assert [len(c) for c in chunks] == [7, 15, 15]


def test_nine_to_one_cut_of_train_only_sources():
    perm = permutation(1234, 30)
    assert split_indices(30, [9.0, 1.0], 0, seed=1234) == perm[:27]
    assert split_indices(30, [9.0, 1.0], 1, seed=1234) == perm[27:]


@pytest.mark.parametrize("bad", ["2;4;4", "a,b,c", "1,-1,2", "0,0,0", "", "nan,1,1"])
def test_unusable_data_split_names_the_flag(bad):
    with pytest.raises(UserError, match="--data_split"):
        parse_data_split(bad)


def test_a_single_share_leaves_nothing_for_phase2():
    with pytest.raises(UserError, match="--data_split '10'.*at least 2"):
        parse_data_split("10")
