"""Length-aware sub-batches: one micro batch as a few forward + backward passes over pairs of similar
length, then one optimizer step (`--sub_batches`).

DeepSpeed-Chat's sampler puts pairs of any length together and the collator pads all 2B rows to the
longest one, so on human-preference data most of a micro batch is padding. A pair's loss does not depend
on how far its rows are padded, and the micro batch's loss is the mean over its B pairs: a sub-batch of k
pairs, padded only to its own longest pair, backpropagates (k / B) x its own mean, and the gradients it
accumulates add up to the whole micro batch's. The batches, their order, the update (fp32: to 1e-6,
tests/test_sub_batches.py) and the logged loss stay DeepSpeed-Chat's; dropout masks are drawn per sub-batch.

`plan` chooses the split that minimises padded tokens plus a charge for each extra forward + backward
(`FORWARD_COST_X_WIDTH`), measured with benchmarks/sub_batch_cost.py (docs/performance.md). With shared
prompts (`--share_prompt`, `share_mode`) each run may instead compute its pairs' shared starts once, all its
tokens in one unpadded row (model/shared_prompt.py), where `run_cost` says that is cheaper. Under ZeRO-0
several passes add their token-embedding gradient rows straight into `.grad` (training/embedding_grad.py)
instead of one table-sized gradient each.
"""
import argparse

import torch
from torch import nn

from model.create import DROPOUT_KEYS
from model.shared_prompt import supports
from utils.dist import all_reduce, get_world_size
from utils.errors import UserError
from utils.spans import shared_lengths

# One more forward + backward costs about as much as this many padded tokens divided by the model's hidden
# size, on CPU (fitted over a 16x range of widths; docs/performance.md, "The sub-batch rule", has the command).
FORWARD_COST_X_WIDTH = 36_000
# A row of L tokens costs L x (1 + L / ATTENTION_LENGTH) tokens' worth: attention grows with L (same fit).
ATTENTION_LENGTH = 1250
OFF, ALWAYS, CHEAPER = "off", "always", "cheaper"  # share_mode's answers
ROW_KEYS = ("input_ids", "attention_mask")  # (2B, L) in a collated batch; every other field is per pair (B, ...)
SHARE_SETTINGS = ("auto", "on", "off")  # --share_prompt


def parse_setting(text):
    """--sub_batches: 'auto', 'off' or a forward cost in padded tokens (an integer >= 0)."""
    if text in ("auto", "off"):
        return text
    if text.isdigit():
        return int(text)
    raise argparse.ArgumentTypeError(f"{text!r}: use auto, off or an integer >= 0 (padded tokens per forward)")


def forward_cost(setting, config):
    """The charge per forward + backward in padded tokens for `plan` (`config`: the model's), or None: one pass."""
    if setting == "off":
        return None
    return FORWARD_COST_X_WIDTH / config.hidden_size if setting == "auto" else setting


def plan(lengths, cost, parts=None, shared=None):
    """Pairs (their padded lengths) -> sub-batches (lists of pair indices), longest first.

    Minimises the sum over sub-batches of `run_cost`; with `parts`, into exactly that many. Pairs sorted by
    length are cut into runs (without `shared` the cheapest split always is one); each run keeps the
    micro batch's order.

    >>> plan([300, 20, 290, 30], cost=64)
    [[0, 2], [1, 3]]
    >>> plan([300, 20, 290, 30], cost=64, parts=1)
    [[0, 1, 2, 3]]
    """
    if parts is not None and not 1 <= parts <= len(lengths):
        raise ValueError(f"cannot cut {len(lengths)} pairs into {parts} sub-batches (unequal micro batches on ranks?)")
    order = sorted(range(len(lengths)), key=lambda i: -lengths[i])
    count, most = len(order), parts or len(order)
    # best[m][j]: cheapest way to cover the j longest pairs with m sub-batches; start[m][j]: where the last begins
    best = [[0.0] + [float("inf")] * count] + [[float("inf")] * (count + 1) for _ in range(most)]
    start = [[0] * (count + 1) for _ in range(most + 1)]
    for j in range(1, count + 1):
        for i in range(j - 1, -1, -1):
            run = order[i:j]
            price, _ = run_cost([lengths[p] for p in run], None if shared is None else [shared[p] for p in run], cost)
            for m in range(1, min(most, i + 1) + 1):
                if best[m - 1][i] + price < best[m][j]:
                    best[m][j], start[m][j] = best[m - 1][i] + price, i
    m = parts or min(range(1, count + 1), key=lambda n: best[n][count])
    runs, j = [], count
    for m in range(m, 0, -1):
        runs.append(sorted(order[start[m][j]:j]))
        j = start[m][j]
    return runs[::-1]


def run_cost(lengths, shared, cost):
    """(token-equivalents, share the prompt?) of one forward + backward over pairs of these padded lengths.

    k pairs padded to L cost 2k x L x (1 + L / ATTENTION_LENGTH) + cost. With `shared` (each pair's
    `shared_lengths`), the shared-start forward (model/shared_prompt.py) computes each pair's P + 2 x (L_i - P)
    tokens unpadded, and attention over k rows of the longest P and 2k rows of the longest rest S attending
    to L tokens, + cost; the cheaper of the two is taken.
    """
    count, longest = len(lengths), max(lengths)
    plain = 2 * count * longest * (1 + longest / ATTENTION_LENGTH) + cost
    if shared is None:
        return plain, False
    start, rest = max(shared), max(length - n for length, n in zip(lengths, shared))
    tokens = sum(2 * length - n for length, n in zip(lengths, shared))
    packed = tokens + count * (start * start + 2 * rest * longest) / ATTENTION_LENGTH + cost
    return min(plain, packed), packed < plain


def share_mode(setting, model, zero_stage, world_size):
    """--share_prompt resolved for this run: (OFF, ALWAYS or CHEAPER (per sub-batch, where `run_cost` says
    so), why). `on` shares in every sub-batch, so every rank runs the same passes (ZeRO-3 needs that)."""
    if setting == "off":
        return OFF, "--share_prompt off"
    problem = unsupported_reason(model)
    if setting == "on":
        if problem:
            raise UserError(f"--share_prompt on: {problem}; use --share_prompt auto or off")
        return ALWAYS, "--share_prompt on"
    if not problem and has_dropout(model):
        problem = "dropout is on (the shared tokens would share their dropout masks)"
    if not problem and zero_stage == 3 and world_size > 1:
        problem = "ZeRO-3 ranks must all run the same passes (--share_prompt on shares in every sub-batch)"
    return (OFF, f"auto: {problem}") if problem else (CHEAPER, "auto: where it costs fewer tokens")


def unsupported_reason(model):
    """Why `model` (a RewardModel) cannot run the shared-start forward, or None."""
    if not supports(model.config):
        return f"model type {model.config.model_type} is not supported (model/shared_prompt.py)"
    if model.rwtransformer.is_activation_checkpointing:
        return "gradient checkpointing recomputes each layer after the shared forward has ended"
    return None


def has_dropout(model):
    """True when any dropout module or dropout probability in the model's config is above 0."""
    return any(isinstance(m, nn.Dropout) and m.p > 0 for m in model.modules()) or any(
        (getattr(model.config, key, 0) or 0) > 0 for key in DROPOUT_KEYS)


def shared_pair_lengths(model, batch):
    """Each pair's `shared_lengths` under `model`'s (a RewardModel) end-token rule, as a list."""
    return shared_lengths(batch["input_ids"], batch["attention_mask"], model.PAD_ID, model.num_padding_at_beginning,
                          model.end_token_rule).tolist()


def pair_lengths(batch, multiple=None):
    """(B,) padded length of each pair of a collated batch: its longer row, rounded up to `multiple`."""
    rows = batch["attention_mask"].sum(dim=1)
    pairs = rows.size(0) // 2
    lengths = torch.maximum(rows[:pairs], rows[pairs:]).tolist()
    return [-(-n // multiple) * multiple for n in lengths] if multiple else lengths


def select(batch, pairs, length):
    """The sub-batch of `pairs` (indices): its rows (`ROW_KEYS`, chosen then rejected) cut to `length` columns
    (all padding beyond), and every other field of the batch, a per-pair tensor, at those pairs."""
    half = batch["input_ids"].size(0) // 2
    rows = torch.tensor(pairs + [half + p for p in pairs])
    return {key: value[rows, :length] if key in ROW_KEYS else value[torch.tensor(pairs)]
            for key, value in batch.items()}


def split(lengths, cost, device, shared=None):
    """`plan`'s sub-batches, as many on every rank (the most any rank wants): ZeRO-2/3 reduce gradients in
    every backward and ZeRO-3 gathers weights in every forward, so all ranks must run as many."""
    if cost is None:
        return [list(range(len(lengths)))]
    runs = plan(lengths, cost, shared=shared)
    if get_world_size() > 1:
        parts = int(all_reduce(torch.tensor([float(len(runs))], device=device), op="max").item())
        runs = runs if parts == len(runs) else plan(lengths, cost, parts, shared)
    return runs
