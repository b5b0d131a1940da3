"""A pair's chosen and rejected rows computed with their shared start once (`--share_prompt`).

In a causal model the hidden states before the first token where chosen and rejected differ are the same
in both rows, and the loss reads rewards only from that token on (DeepSpeed-Chat's span), the end scores
later still. So the pairs' shared starts go through the model once (B rows), their keys and values are
repeated for the chosen and the rejected row, and the 2B remainders attend to them: the same rewards
where the loss reads them, to float rounding (tests/test_shared_prompt.py), for fewer tokens whenever
the prompt is a good part of a pair. Dropout masks on the shared tokens are then the same in both rows.
"""
import torch
from transformers import DynamicCache

# Model types whose base model takes `position_ids` and a 2-D mask over cache + new tokens, checked by
# tests/test_shared_prompt.py. Others (and sliding-window attention) compute every token in each row.
SUPPORTED = ("opt", "llama", "qwen2", "mistral", "gpt2")
# The position a padding token gets where it is not its index (OPT counts attended tokens only). DeepSpeed-
# Chat's loss span runs to the longer row's end, so it reads the shorter row's values on padding.
PADDING_POSITION = {"opt": -1}


def supports(config):
    """True when the base model of `config` can run the shared-start forward."""
    return config.model_type in SUPPORTED and getattr(config, "sliding_window", None) is None


def shared_values(base, v_head, input_ids, attention_mask, shared):
    """(2B, L) rows, chosen then rejected, and their (B,) `shared_lengths` -> (2B, L) rewards through
    `base` and `v_head`; a row's first `shared` positions hold 0 (the loss never reads them)."""
    rows, length = input_ids.shape
    pairs, device = rows // 2, input_ids.device
    width = max(int(shared.max()), 1)
    positions = torch.arange(length, device=device)
    prefix_mask = (positions[:width] < shared[:, None]).to(attention_mask.dtype)
    cache = DynamicCache(config=base.config)
    base(input_ids[:pairs, :width], attention_mask=prefix_mask, position_ids=positions[:width].expand(pairs, -1),
         cache=cache, use_cache=True)
    cache.reorder_cache(torch.arange(pairs, device=device).repeat(2))  # the same keys/values for both rows
    start = shared.repeat(2)
    ends = ((positions + 1) * (attention_mask != 0)).max(dim=1).values  # one past each row's last token
    rest = int((ends - start).max())
    index = start[:, None] + torch.arange(rest, device=device)
    inside = index < length
    index = index.clamp(max=length - 1)  # beyond the row: masked out, and its value is added as 0 below
    rest_mask = attention_mask.gather(1, index) * inside
    rest_positions = index
    if base.config.model_type in PADDING_POSITION:  # the loss reads some padding: its values must match too
        rest_positions = torch.where(rest_mask != 0, index, PADDING_POSITION[base.config.model_type])
    hidden = base(input_ids.gather(1, index), attention_mask=torch.cat([prefix_mask.repeat(2, 1), rest_mask], 1),
                  position_ids=rest_positions, cache=cache, use_cache=True)[0]
    values = v_head(hidden).squeeze(-1) * inside
    return values.new_zeros(rows, length).scatter_add(1, index, values)
