"""Where a reward model reads its scores and its loss, as pure tensor functions (torch only).

DeepSpeed-Chat reads a row's score before its (n+1)-th PAD token, with PAD = EOS; OPT's tokenizer puts
that same `</s>` first as BOS, so position 0 looks like a pad and n = `num_padding_at_beginning` = 1
skips it. The `last_token` rule reads the last attended token instead (chat templates end every turn
with EOS). data/ (which pairs can be scored) and model/ (the loss) both use these, so they live here.
"""
import math

import torch

END_OF_CONVERSATION = "<|endoftext|>"  # appended to every chosen/rejected text (DeepSpeed-Chat's)
LN2 = math.log(2)  # the pair loss when chosen and rejected get the same reward
DEEPSPEED_CHAT, LAST_TOKEN = "deepspeed_chat", "last_token"


def end_indices(input_ids, pad_id, num_padding_at_beginning):
    """(N, L) ids -> (N,) position of the (n+1)-th PAD token in each row, or L if there is none.

    DeepSpeed-Chat sets pad = eos. OPT's tokenizer prepends that same `</s>` as BOS, so position 0
    looks like a pad: `num_padding_at_beginning=1` skips it (0 for models without such a BOS).
    """
    length = input_ids.size(1)
    is_pad = input_ids == pad_id
    nth_pad = is_pad & (is_pad.cumsum(dim=1) == num_padding_at_beginning + 1)
    positions = torch.arange(length, device=input_ids.device).expand_as(input_ids)
    return torch.where(nth_pad, positions, length).min(dim=1).values


def last_token_indices(attention_mask):
    """(N, L) mask -> (N,) one past the last attended position of each row (right or left padding)."""
    positions = torch.arange(1, attention_mask.size(1) + 1, device=attention_mask.device)
    return (positions * (attention_mask != 0)).max(dim=1).values


# rule -> (input_ids, attention_mask or None, pad_id, n) -> (N,) one past the position the score is read at
END_TOKEN_RULES = {
    DEEPSPEED_CHAT: lambda ids, mask, pad_id, n: end_indices(ids, pad_id, n),
    LAST_TOKEN: lambda ids, mask, pad_id, n: last_token_indices(ids != pad_id if mask is None else mask),
}


def row_ends(input_ids, attention_mask, pad_id, num_padding_at_beginning, end_token_rule=DEEPSPEED_CHAT):
    """(N, L) rows -> (N,) one past the token whose value is each row's score, under `end_token_rule`."""
    return END_TOKEN_RULES[end_token_rule](input_ids, attention_mask, pad_id, num_padding_at_beginning)


def loss_spans(chosen_ids, rejected_ids, pad_id, num_padding_at_beginning, chosen_mask=None, rejected_mask=None,
               end_token_rule=DEEPSPEED_CHAT):
    """Where DeepSpeed-Chat's loss reads each pair of (B, L) rows: (start, end, chosen_end, rejected_end), (B,) each.

    The loss span is [first differing position, max(end_c, end_j)); identical rows use [L-1, L) and
    score both at chosen_end. `end >= start` always; an empty span (`end == start`) means the score is
    read at or before the first difference, so chosen and rejected cannot be told apart (0/0 loss).
    The ends come from `end_token_rule` (the masks are only read by `last_token`).
    """
    length = chosen_ids.size(1)
    positions = torch.arange(length, device=chosen_ids.device)
    chosen_end = row_ends(chosen_ids, chosen_mask, pad_id, num_padding_at_beginning, end_token_rule)
    rejected_end = row_ends(rejected_ids, rejected_mask, pad_id, num_padding_at_beginning, end_token_rule)
    differs = chosen_ids != rejected_ids
    identical = ~differs.any(dim=1)
    first_diff = torch.where(differs, positions, length).min(dim=1).values
    start = torch.where(identical, length - 1, first_diff)
    end = torch.where(identical, length, torch.maximum(torch.maximum(chosen_end, rejected_end), start))
    return start, end, chosen_end, torch.where(identical, chosen_end, rejected_end)


def shared_lengths(input_ids, attention_mask, pad_id, num_padding_at_beginning, end_token_rule):
    """(2B, L) rows, chosen then rejected -> (B,) leading tokens each pair shares that the loss never reads:
    up to the first difference, the first token not attended in both rows, and the earlier score position."""
    pairs, length = input_ids.size(0) // 2, input_ids.size(1)
    chosen_mask, rejected_mask = attention_mask[:pairs], attention_mask[pairs:]
    start, _, chosen_end, rejected_end = loss_spans(input_ids[:pairs], input_ids[pairs:], pad_id,
                                                    num_padding_at_beginning, chosen_mask, rejected_mask,
                                                    end_token_rule)
    positions = torch.arange(length, device=input_ids.device)
    both = (chosen_mask != 0) & (rejected_mask != 0)
    first_gap = torch.where(both, length, positions).min(dim=1).values
    shared = torch.minimum(torch.minimum(start, first_gap), torch.minimum(chosen_end, rejected_end) - 1)
    return shared.clamp(min=0)


def pads_at_beginning(tokenizer):
    """How many PAD-equal tokens the tokenizer puts before every text: 1 for OPT (its BOS `</s>` is also
    its EOS, and DeepSpeed-Chat sets PAD = EOS), 0 for tokenizers without a BOS or with another one."""
    ids = tokenizer("a")["input_ids"]
    return next((i for i, token in enumerate(ids) if token != tokenizer.pad_token_id), len(ids))
