"""PairCollator on literal rows.

Run: .venv/bin/python -m pytest tests/test_data_collator.py -q
"""
import doctest

import pytest
import torch

import data.collator
from data import PairCollator

ROWS = [{"chosen_input_ids": [2, 5, 6], "rejected_input_ids": [2, 7]},
        {"chosen_input_ids": [2, 8], "rejected_input_ids": [2, 9, 9, 4]}]


def test_chosen_rows_first_then_rejected_padded_to_the_longest_row():
    batch = PairCollator(pad_token_id=1)(ROWS)
    assert torch.equal(batch["input_ids"], torch.tensor([[2, 5, 6, 1],
                                                         [2, 8, 1, 1],
                                                         [2, 7, 1, 1],
                                                         [2, 9, 9, 4]]))
    assert torch.equal(batch["attention_mask"], torch.tensor([[1, 1, 1, 0],
                                                              [1, 1, 0, 0],
                                                              [1, 1, 0, 0],
                                                              [1, 1, 1, 1]]))
    assert batch["input_ids"].dtype == batch["attention_mask"].dtype == torch.long


def test_a_real_token_equal_to_pad_keeps_mask_one():
    # OPT: pad = eos = </s> = 2 is also the BOS at position 0.
    batch = PairCollator(pad_token_id=2)([{"chosen_input_ids": [2, 5], "rejected_input_ids": [2, 6, 7]}])
    assert batch["input_ids"].tolist() == [[2, 5, 2], [2, 6, 7]]
    assert batch["attention_mask"].tolist() == [[1, 1, 0], [1, 1, 1]]


def test_pad_to_multiple_of_rounds_the_length_up():
    assert PairCollator(1, pad_to_multiple_of=8)(ROWS)["input_ids"].shape == (4, 8)
    assert PairCollator(1, pad_to_multiple_of=4)(ROWS)["input_ids"].shape == (4, 4)


def test_pad_to_length_pads_every_batch_to_max_seq_len_like_deepspeed_chat():
    batch = PairCollator(1, pad_to_length=6)(ROWS)
    assert batch["input_ids"].shape == (4, 6)
    assert batch["attention_mask"].sum(dim=1).tolist() == [3, 2, 2, 4]
    with pytest.raises(ValueError, match="pad_to_length=3"):
        PairCollator(1, pad_to_length=3)(ROWS)


def test_docstring_example_is_true():
    assert doctest.testmod(data.collator, raise_on_error=True).attempted >= 3
