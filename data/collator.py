"""Batch preference pairs into the reward model's input: chosen rows first, then rejected rows."""
import numpy as np
import torch


class PairCollator:
    """Turn B pair rows into {'input_ids', 'attention_mask'}, both LongTensor (2B, L).

    Rows 0..B-1 are the chosen answers, rows B..2B-1 the rejected answers of the same pairs,
    right-padded with `pad_token_id` to one length L: the longest row of the batch, rounded up to
    `pad_to_multiple_of` if given, or exactly `pad_to_length` if given (DeepSpeed-Chat pads every
    row to max_seq_len). attention_mask is 1 on real tokens and 0 on padding, so a real token equal
    to the pad id (OPT's `</s>` BOS) keeps mask 1.

    >>> collate = PairCollator(pad_token_id=1)
    >>> batch = collate([{"chosen_input_ids": [2, 5, 6], "rejected_input_ids": [2, 7]},
    ...                  {"chosen_input_ids": [2, 8], "rejected_input_ids": [2, 9, 9, 4]}])
    >>> batch["input_ids"]
    tensor([[2, 5, 6, 1],
            [2, 8, 1, 1],
            [2, 7, 1, 1],
            [2, 9, 9, 4]])
    >>> batch["attention_mask"]
    tensor([[1, 1, 1, 0],
            [1, 1, 0, 0],
            [1, 1, 0, 0],
            [1, 1, 1, 1]])
    >>> PairCollator(pad_token_id=1, pad_to_multiple_of=8)(
    ...     [{"chosen_input_ids": [2, 5], "rejected_input_ids": [2, 7]}])["input_ids"]
    tensor([[2, 5, 1, 1, 1, 1, 1, 1],
            [2, 7, 1, 1, 1, 1, 1, 1]])
    """

    def __init__(self, pad_token_id, pad_to_multiple_of=None, pad_to_length=None, with_margin=False,
                 with_source=False, bootstrap=None):
        if pad_to_multiple_of is not None and pad_to_length is not None:
            raise ValueError("PairCollator: give pad_to_multiple_of or pad_to_length, not both")
        self.pad_token_id = pad_token_id
        self.pad_to_multiple_of = pad_to_multiple_of
        self.pad_to_length = pad_to_length
        self.with_margin = with_margin  # also return 'margin' (B,) from the rows' margin column
        self.with_source = with_source  # also return 'source' (B,) long: each pair's source index (evaluation)
        self.bootstrap = bootstrap  # (seed, heads): also return 'bootstrap_weights' (B, heads) (rows need
        # 'pair_index': wrap the dataset in IndexedPairs)

    def __call__(self, rows):
        seqs = [r["chosen_input_ids"] for r in rows] + [r["rejected_input_ids"] for r in rows]
        longest = max(len(s) for s in seqs)
        length = self.pad_to_length or longest
        if self.pad_to_multiple_of:
            length = -(-longest // self.pad_to_multiple_of) * self.pad_to_multiple_of
        if longest > length:
            raise ValueError(f"PairCollator: a row has {longest} tokens, more than pad_to_length={length}")
        input_ids = torch.full((len(seqs), length), self.pad_token_id, dtype=torch.long)
        attention_mask = torch.zeros((len(seqs), length), dtype=torch.long)
        for i, seq in enumerate(seqs):
            input_ids[i, :len(seq)] = torch.as_tensor(seq, dtype=torch.long)
            attention_mask[i, :len(seq)] = 1
        batch = {"input_ids": input_ids, "attention_mask": attention_mask}
        if self.with_margin:
            batch["margin"] = torch.tensor([r["margin"] for r in rows], dtype=torch.float32)
        if self.with_source:
            batch["source"] = torch.tensor([r["source"] for r in rows], dtype=torch.long)
        if self.bootstrap:
            batch["bootstrap_weights"] = bootstrap_weights(*self.bootstrap, [r["pair_index"] for r in rows])
        return batch


def bootstrap_weights(seed, heads, pair_indices):
    """(B, heads) float32 Poisson(1) weights of the pairs at `pair_indices` of the training set: pair i's
    weight in head k is the k-th draw of numpy's generator seeded with (seed, i), so it is the same whatever
    the batch, the rank, the number of ranks or a resume (--head_bootstrap, model/reward_model.py
    `ensemble_loss`).

    >>> bootstrap_weights(1234, 3, [0, 5])
    tensor([[2., 0., 0.],
            [0., 0., 2.]])
    """
    draws = [np.random.default_rng((seed, int(index))).poisson(1.0, heads) for index in pair_indices]
    return torch.tensor(np.stack(draws), dtype=torch.float32)


class IndexedPairs:
    """A dataset of pairs whose rows also hold their index, `pair_index` (for `bootstrap_weights`); the
    sampler still reads the wrapped `pairs`."""

    def __init__(self, pairs):
        self.pairs = pairs

    def __len__(self):
        return len(self.pairs)

    def __getitem__(self, index):
        return dict(self.pairs[index], pair_index=index)
