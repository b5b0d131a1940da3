"""A pair's chosen and rejected rows computed with their shared start once (`--share_prompt`).

In a causal model the hidden states before the first token where chosen and rejected differ are the same
in both rows, and the loss reads rewards only from that token on (DeepSpeed-Chat's span), the end scores
later still. So each pair goes through the base model as one unpadded run of tokens, its shared start then
its chosen rest then its rejected rest (up to the pair's longer row's end), all pairs of the batch in one
row: every linear layer sees only the tokens the loss needs, none of them padding. Attention alone runs on
padded rows (`pair_rows_attention`): the B shared starts, then the 2B rests, each attending to its pair's
shared start and to itself, with the positions and padding mask the plain forward gives every token. The
rewards where the loss reads them equal the plain forward's to float rounding (tests/test_shared_prompt.py). Dropout masks on the shared tokens are the same in both rows.

Scoring packs texts the same way (`packed_values`, model/scoring.py): the texts of a batch one after the
other in one row, no shared start, each text one attention row; each score equals the text's alone
(tests/test_packed_scoring.py).
"""
from dataclasses import dataclass
import itertools
import sys

import torch
from transformers import AttentionInterface
from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS

from model.reward_model import combine
from utils.settings import HeadOptions
from utils.versions import unverified_reason

# Model types whose base model takes `position_ids`, keeps a prepared 4-D mask as it is and hands its
# keyword arguments to the attention function, checked by tests/test_shared_prompt.py and
# tests/test_packed_scoring.py. Others (and, in training, sliding-window attention) compute every token in
# each row.
SUPPORTED = ("opt", "llama", "qwen2", "mistral", "gpt2")
# The position a padding token gets where it is not its index (OPT counts attended tokens only). DeepSpeed-
# Chat's loss span runs to the longer row's end, so it reads the shorter row's values on padding.
PADDING_POSITION = {"opt": -1}
ATTENTION_NAME = "pair_rows"  # registered with transformers' AttentionInterface on first use


def supports(config, sliding_window=False):
    """True when the base model of `config` can run the one-row forward: full attention for training's shared
    start; with `sliding_window`, also a window every layer uses (Mistral's), which the masks then apply."""
    window = getattr(config, "sliding_window", None)
    every_layer = set(getattr(config, "layer_types", None) or ["sliding_attention"]) == {"sliding_attention"}
    return (config.model_type in SUPPORTED and (window is None or (sliding_window and every_layer))
            and not getattr(config, "reorder_and_upcast_attn", False))


def packs(config):
    """True when scoring packs texts for the base model of `config`: a supported model, sliding windows
    included, and the transformers release series this layout was verified on (utils/versions.py: it relies
    on transformers' attention interface and how each model hands masks and positions to it)."""
    return supports(config, sliding_window=True) and unverified_reason("transformers") is None


@dataclass
class AttentionRows:
    """One batched attention call over rows of the one-row batch's tokens: `query_index` (rows, Q) and
    `key_index` (rows, K) token indices (padded with 0), `mask` (rows, 1, Q, K) additive."""
    query_index: torch.Tensor
    key_index: torch.Tensor
    mask: torch.Tensor


@dataclass
class PairLayout:
    """The attention of the one-row batch: `groups` of `AttentionRows` (the pairs' shared starts, then their
    2B rests), `slot` (T,) where each token's output sits in their flattened queries, one after the other,
    and `inner` the attention implementation the rows run with (eager or sdpa)."""
    groups: list
    slot: torch.Tensor
    inner: str


def pair_rows_attention(module, query, key, value, attention_mask, pair_layout=None, **kwargs):
    """transformers attention function for the one-row batch: (1, heads, T, D) -> (1, T, heads, D), each
    group of `pair_layout` one call of `inner` (`attention_mask`, a placeholder, is not used)."""
    def rows(states, index):  # (1, heads, T, D) -> (rows, heads, len, D)
        return states[0].index_select(1, index.flatten()).unflatten(1, index.shape).transpose(0, 1)

    if pair_layout.inner == "eager":
        inner = sys.modules[type(module).__module__].eager_attention_forward
    else:
        inner = ALL_ATTENTION_FUNCTIONS[pair_layout.inner]
    outputs = [inner(module, rows(query, group.query_index), rows(key, group.key_index),
                     rows(value, group.key_index), group.mask, **kwargs)[0].flatten(0, 1)
               for group in pair_layout.groups]
    return torch.cat(outputs).index_select(0, pair_layout.slot).unsqueeze(0), None



def token_layout(attention_mask, shared):
    """(source row, source column) of every token of the one-row batch, and the token indices of each
    attention row: pair i contributes its shared start, chosen rest and rejected rest, in that order, each
    rest up to the pair's longer row's end (the loss reads no further). Returns (rows, cols, prefix
    queries (B lists), rest queries (2B), rest keys (2B))."""
    pairs, length = attention_mask.size(0) // 2, attention_mask.size(1)
    ends = ((torch.arange(length, device=attention_mask.device) + 1) * (attention_mask != 0)).max(dim=1).values
    source_rows, source_cols, prefixes, rests, rest_keys = [], [], [], [None] * (2 * pairs), [None] * (2 * pairs)
    for pair, (start, end) in enumerate(zip(shared.tolist(), torch.maximum(ends[:pairs], ends[pairs:]).tolist())):
        first = len(source_rows)
        prefixes.append(list(range(first, first + start)))
        for side, row in enumerate((pair, pairs + pair)):
            rest_first = first + start + side * (end - start)
            rests[row] = list(range(rest_first, rest_first + end - start))
            rest_keys[row] = prefixes[-1] + rests[row]
        source_rows += [pair] * end + [pairs + pair] * (end - start)
        source_cols += list(range(end)) + list(range(start, end))
    return source_rows, source_cols, prefixes, rests, rest_keys


def padded(lists, device):
    """Lists of token indices -> (rows, longest) tensor padded with 0, and (rows, longest) True where real."""
    longest = max(len(items) for items in lists)
    index = torch.zeros(len(lists), longest, dtype=torch.long, device=device)
    real = torch.zeros(len(lists), longest, dtype=torch.bool, device=device)
    for row, items in enumerate(lists):
        index[row, :len(items)] = torch.tensor(items, dtype=torch.long, device=device)
        real[row, :len(items)] = True
    return index, real


def attention_rows(queries, keys, source_cols, token_mask, dtype, window=None):
    """AttentionRows for lists of query and key token indices (a query attends to the keys at or before its
    column that the plain forward attends to, less than `window` columns back when there is one; padding
    queries attend to their row's first key: their output is never read, and no row is all masked), its
    real queries' tokens and their flattened places."""
    device = source_cols.device
    query_index, query_real = padded(queries, device)
    key_index, key_real = padded(keys, device)
    key_cols, query_cols = source_cols[key_index][:, None, :], source_cols[query_index][:, :, None]
    allowed = (key_real & (token_mask[key_index] != 0))[:, None, :] & query_real[:, :, None] & (key_cols <= query_cols)
    if window is not None:
        allowed &= key_cols > query_cols - window
    allowed[:, :, 0] |= ~query_real
    mask = torch.zeros(allowed.shape, dtype=dtype, device=device).masked_fill_(~allowed, torch.finfo(dtype).min)
    flat_places = torch.arange(query_index.numel(), device=device).view_as(query_index)
    return AttentionRows(query_index, key_index, mask[:, None]), query_index[query_real], flat_places[query_real]


def one_row_hidden(base, token_ids, token_mask, source_cols, row_groups):
    """(T,) tokens of a one-row batch -> (T, width) last hidden states of `base`. `source_cols` (T,): each
    token's position in the row it stands for, `token_mask` (T,): its padding mask there; `row_groups`:
    (queries, keys) pairs of lists of token-index lists, one batched attention call each (`attention_rows`;
    a pair whose queries are all empty is skipped). The linear layers see the T tokens, no padding."""
    device = token_ids.device
    positions = source_cols
    if base.config.model_type in PADDING_POSITION:  # the loss reads some padding: its values must match too
        positions = torch.where(token_mask != 0, source_cols, PADDING_POSITION[base.config.model_type])
    dtype = base.get_input_embeddings().weight.dtype
    window = getattr(base.config, "sliding_window", None)  # None unless `supports(config, sliding_window=True)`
    groups, slot, offset = [], torch.empty(len(token_ids), dtype=torch.long, device=device), 0
    for queries, keys in row_groups:
        if any(queries):
            group, tokens, places = attention_rows(queries, keys, source_cols, token_mask, dtype, window)
            slot[tokens] = offset + places
            offset += group.query_index.numel()
            groups.append(group)
    if ATTENTION_NAME not in ALL_ATTENTION_FUNCTIONS:  # registered on first use only
        AttentionInterface.register(ATTENTION_NAME, pair_rows_attention)
    previous = base.config._attn_implementation
    layout = PairLayout(groups, slot, previous if previous in ("eager", "sdpa") else "sdpa")
    placeholder = torch.zeros(1, 1, 1, 1, dtype=dtype, device=device)  # 4-D: the model passes it on unchanged
    base.set_attn_implementation(ATTENTION_NAME)
    try:
        return base(token_ids[None], attention_mask=placeholder, position_ids=positions[None],
                    pair_layout=layout)[0][0]
    finally:
        base.set_attn_implementation(previous)


def head_values(v_head, hidden, head):
    """(T, width) hidden states -> (T,) rewards (`v_head`'s outputs combined under HeadOptions `head`), or the
    raw (T, K) outputs when `head` is None."""
    values = v_head(hidden)
    return values if head is None else combine(values, head)


def shared_values(base, v_head, input_ids, attention_mask, shared, head=HeadOptions()):
    """(2B, L) rows, chosen then rejected, and their (B,) `shared_lengths` -> (2B, L) rewards through
    `base` and `v_head` (combined under `head`; None: the (2B, L, K) raw head outputs); a row's first `shared`
    positions, and those past its pair's end, hold 0 (the loss never reads them)."""
    rows, length = input_ids.shape
    device = input_ids.device
    source_rows, source_cols, prefixes, rests, rest_keys = token_layout(attention_mask, shared)
    source_rows, source_cols = torch.tensor(source_rows, device=device), torch.tensor(source_cols, device=device)
    token_ids, token_mask = input_ids[source_rows, source_cols], attention_mask[source_rows, source_cols]
    hidden = one_row_hidden(base, token_ids, token_mask, source_cols, ((prefixes, prefixes), (rests, rest_keys)))
    values = head_values(v_head, hidden, head)
    rest = source_cols >= shared.to(device).repeat(2)[source_rows]
    flat = values.new_zeros((rows * length, *values.shape[1:]))
    flat = flat.index_put((source_rows[rest] * length + source_cols[rest],), values[rest])
    return flat.view(rows, length, *values.shape[1:])


def packed_values(base, v_head, token_ids, lengths, head=HeadOptions()):
    """Texts of `lengths` tokens, their (T,) `token_ids` one after the other -> (T,) rewards through `base` and
    `v_head` (combined under `head`; None: the (T, K) raw head outputs), each text's as it gets them alone in a
    batch of one: causal attention within the text only, positions from 0. The packed layout is the shared-start
    one with no shared start and one row per text."""
    starts = itertools.accumulate(lengths, initial=0)
    texts = [list(range(start, start + length)) for start, length in zip(starts, lengths)]
    source_cols = torch.cat([torch.arange(length, device=token_ids.device) for length in lengths])
    hidden = one_row_hidden(base, token_ids, torch.ones_like(token_ids), source_cols, ((texts, texts),))
    return head_values(v_head, hidden, head)
