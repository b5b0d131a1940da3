"""The reward model: a causal LM with a bias-free scalar value head, DeepSpeed-Chat semantics.

The pure tensor functions below (`end_indices`, `pairwise_loss`, `end_scores_after`) hold all the
reward maths, computed for the whole batch at once, so tests can check them directly against a
per-pair reference loop (tests/reference.py).

Two end-token rules say where a row's score is read (`END_TOKEN_RULES`): DeepSpeed-Chat's, before the
(n+1)-th PAD token (PAD = EOS), exact for its data and OPT; and `last_token`, at the last attended
token of the row (the attention mask), for texts where EOS also ends earlier turns (chat templates).
"""
import torch
import torch.nn.functional as F
from torch import nn

from utils.settings import REGRESSION, HeadOptions, LossOptions, Settings
from utils.spans import (DEEPSPEED_CHAT, END_OF_CONVERSATION, END_TOKEN_RULES, LAST_TOKEN, LN2,  # noqa: F401
                         end_indices, last_token_indices, loss_spans, row_ends, shared_lengths)


def combine(outputs, head=HeadOptions()):
    """(..., K) value-head outputs -> (...) rewards under `head` (utils/settings.py HeadOptions): one output
    is the reward itself (DeepSpeed-Chat's head, bit for bit); a pairwise ensemble's reward is the mean of its
    heads; under regression it is attribute_weights . outputs (equal weights summing to 1 when none given)."""
    if outputs.size(-1) == 1:
        return outputs.squeeze(-1)
    if head.objective != REGRESSION:
        return outputs.mean(dim=-1)
    count = outputs.size(-1)
    weights = head.attribute_weights or (1.0 / count,) * count
    if len(weights) != count:
        raise ValueError(f"{len(weights)} attribute weights for {count} head outputs")
    return outputs @ torch.tensor(weights, dtype=outputs.dtype, device=outputs.device)


def single_head(weight, head=HeadOptions()):
    """(K, width) value-head weights -> (1, width): the one bias-free linear head whose output is `combine` of
    the K outputs (combine is linear: the mean of K linear heads is the linear head with the mean weights).
    One head is returned as it is; the others are combined in float64, then cast back."""
    if weight.size(0) == 1:
        return weight
    return combine(weight.double().t(), head)[None].to(weight.dtype)


def head_seed(seed, head):
    """The seed of ensemble head `head`'s own random draws (its init): one per (seed, head), so a head's init
    is the same whatever the number of heads, ranks or processes."""
    return (seed * 1_000_003 + head) % 2 ** 63


def init_heads(weight, seed):
    """Fill (K, width) head weights in place, row k from a generator seeded with `head_seed(seed, k)`, with
    nn.Linear's default distribution U(-1/sqrt(width), 1/sqrt(width)). Used for K > 1 only: one head keeps
    nn.Linear's draw from torch's global RNG (DeepSpeed-Chat's init)."""
    bound = weight.size(1) ** -0.5
    with torch.no_grad():
        for k in range(weight.size(0)):
            generator = torch.Generator().manual_seed(head_seed(seed, k))
            row = torch.rand(weight.size(1), generator=generator, dtype=torch.float64) * 2 * bound - bound
            weight[k].copy_(row)


def pairwise_loss(chosen_rewards, rejected_rewards, spans, options=LossOptions(), fields=None, weights=None):
    """DeepSpeed-Chat's pairwise ranking loss for B pairs at once, plus the optional terms of `options`.

    chosen_rewards, rejected_rewards: (B, L) per-token rewards; spans: `loss_spans`' (start, end, chosen_end,
    rejected_end), (B,) each; fields: the batch's per-pair tensors by name, (B,) each (e.g. `margin`). Each
    pair's loss is the mean of -logsigmoid(r_c - r_j) over [start, end); with `use_margin` the term is
    -logsigmoid(r_c - r_j - margin). The loss is the mean over pairs (with `weights` (B,), of weight x pair
    loss) plus every `EXTRA_TERMS` term. Returns (loss, chosen end scores (B,), rejected end scores (B,)): the
    rewards at chosen_end - 1 and rejected_end - 1.
    """
    fields = fields or {}
    start, end, chosen_end, rejected_end = spans
    positions = torch.arange(chosen_rewards.size(1), device=chosen_rewards.device)
    in_span = (positions >= start[:, None]) & (positions < end[:, None])
    if options.compute_fp32_loss:  # upcast each reward, then subtract (as DeepSpeed-Chat does)
        difference = chosen_rewards.float() - rejected_rewards.float()
    else:
        difference = chosen_rewards - rejected_rewards
    if options.use_margin and "margin" in fields:  # training batches carry it (evaluation reads only the scores)
        difference = difference - fields["margin"].to(difference.dtype)[:, None]
    per_token = torch.where(in_span, -F.logsigmoid(difference), 0.0)
    pair_loss = per_token.sum(dim=1) / in_span.sum(dim=1)
    chosen_scores = chosen_rewards.gather(1, (chosen_end - 1)[:, None]).squeeze(1)
    rejected_scores = rejected_rewards.gather(1, (rejected_end - 1)[:, None]).squeeze(1)
    loss = pair_loss.mean() if weights is None else (pair_loss * weights.to(pair_loss.dtype)).mean()
    for term in EXTRA_TERMS:
        extra = term(options, chosen_scores, rejected_scores, fields)
        if extra is not None:
            loss = loss + extra
    return loss, chosen_scores, rejected_scores


def regression_loss(scores, labels, label_mask):
    """--objective regression's loss: the mean squared error of (B, K) end outputs against (B, K) ratings over
    the present ones only (`label_mask`, (B, K) bool; a masked rating adds nothing, not even a zero), in fp32.
    A batch without any rating gives 0 (still a graph, so every rank runs the same backward)."""
    present = label_mask.bool()
    squared = (scores.float() - labels.float()) ** 2
    return torch.where(present, squared, 0.0).sum() / present.sum().clamp(min=1)


def ensemble_loss(chosen_heads, rejected_heads, spans, options=LossOptions(), fields=None):
    """`pairwise_loss` of every head of an ensemble on its own rewards, averaged over the K heads, computed as
    one batch of K x B pairs (head-major, spans and per-pair fields repeated).

    chosen_heads, rejected_heads: (B, L, K) per-token head outputs; spans and fields as `pairwise_loss`'s; a
    `bootstrap_weights` field (B, K) (data/collator.py) weighs pair i's loss in head k. The weighted mean over
    pairs keeps E[weight] = 1 in the denominator (B, not the sum of weights), so a micro batch cut into
    sub-batches (training/sub_batches.py) sums to the same loss. Returns (loss, chosen end scores (B, K),
    rejected end scores (B, K))."""
    fields = dict(fields or {})
    weights = fields.pop("bootstrap_weights", None)
    pairs, length, heads = chosen_heads.shape

    def per_head(values):  # (B, L, K) -> (K * B, L), head 0's pairs first
        return values.permute(2, 0, 1).reshape(heads * pairs, length)
    spans = tuple(span.repeat(heads) for span in spans)
    fields = {key: value.repeat(heads, *[1] * (value.dim() - 1)) for key, value in fields.items()}
    weights = None if weights is None else weights.t().reshape(heads * pairs)
    loss, chosen, rejected = pairwise_loss(per_head(chosen_heads), per_head(rejected_heads), spans, options,
                                           fields, weights)
    return loss, chosen.view(heads, pairs).t(), rejected.view(heads, pairs).t()


def center_rewards_term(options, chosen_scores, rejected_scores, fields):
    """c * mean((s_c + s_j)^2) over the end scores: keeps rewards centred on 0 (--center_rewards_coefficient)."""
    if not options.center_rewards_coefficient:
        return None
    return options.center_rewards_coefficient * ((chosen_scores.float() + rejected_scores.float()) ** 2).mean()


# Terms added to the ranking loss: (options, chosen scores (B,), rejected scores (B,), per-pair fields) ->
# a scalar, or None when its option is off.
EXTRA_TERMS = (center_rewards_term,)


def end_scores_after(values, input_ids, pad_id, prompt_length):
    """(N, L) values -> (N,) value at the token before the first PAD at or after prompt_length (or L-1)."""
    length = input_ids.size(1)
    positions = torch.arange(length, device=input_ids.device).expand_as(input_ids)
    answer_pad = (input_ids == pad_id) & (positions >= prompt_length)
    end = torch.where(answer_pad, positions, length).min(dim=1).values
    return values.gather(1, (end - 1)[:, None]).squeeze(1)


class RewardModel(nn.Module):
    """A base transformer (`rwtransformer`) plus `v_head`, with DeepSpeed-Chat's interface; `settings`
    (utils/settings.py) say where scores are read and which loss terms apply. Build one with
    model/create.py's `build_reward_model`.

    `forward` takes 2B rows (all chosen, then all rejected) and returns `loss`,
    `chosen_mean_scores` and `rejected_mean_scores`: despite the names (kept for DeepSpeed-Chat's
    step 3), the scores are the reward at each answer's end token (`end_token_rule`), not a mean.
    """

    def __init__(self, base_model, settings):
        super().__init__()
        self.config = base_model.config
        width = getattr(self.config, "word_embed_proj_dim", None) or self.config.hidden_size
        outputs = settings.head.outputs
        if outputs == 1:  # DeepSpeed-Chat's head, drawn from torch's global RNG
            self.v_head = nn.Linear(width, 1, bias=False)
        else:  # each row from its own seeded generator (none from the global RNG)
            self.v_head = nn.Linear(width, outputs, bias=False, device="meta").to_empty(device="cpu")
            init_heads(self.v_head.weight, settings.head.seed)
        self.rwtransformer = base_model
        self.settings = settings
        self.PAD_ID = settings.pad_token_id  # DeepSpeed-Chat's names, read by its step 3
        self.num_padding_at_beginning = settings.num_padding_at_beginning
        self.end_token_rule = settings.end_token_rule
        self.end_of_conversation_token = settings.end_of_conversation_token
        self.reward_stats = {}  # reward_mean / reward_std over the eval set, saved for step 3
        self.reward_offset = 0.0  # subtracted from every value (see load_reward_model's center_rewards)

    def gradient_checkpointing_enable(self, gradient_checkpointing_kwargs=None):
        """Recompute activations in the backward pass (transformers 5 calls it activation checkpointing)."""
        self.rwtransformer.activation_checkpointing_enable(activation_checkpointing_kwargs=gradient_checkpointing_kwargs)

    def gradient_checkpointing_disable(self):
        self.rwtransformer.activation_checkpointing_disable()

    def head_outputs(self, input_ids, attention_mask, use_cache=False, shared=None, **kwargs):
        """(N, L) ids -> (N, L, K) raw value-head outputs (no reward_offset), K = settings.head.outputs. Same
        arguments as `_values`."""
        return self._head_values(input_ids, attention_mask, use_cache, shared, None, **kwargs)

    def _values(self, input_ids, attention_mask, use_cache=False, shared=None, **kwargs):
        """(N, L) ids -> (N, L) per-token rewards (the head outputs `combine`d, less reward_offset). kwargs
        (head_mask, ...) go to the base model. `shared` (N/2,): compute each pair's first `shared` tokens once
        (model/shared_prompt.py; those values are 0; training only: `use_cache` and kwargs do not apply)."""
        return self._offset(self._head_values(input_ids, attention_mask, use_cache, shared, self.settings.head,
                                              **kwargs))

    def _head_values(self, input_ids, attention_mask, use_cache, shared, head, **kwargs):
        """The head outputs combined under `head` (HeadOptions): (N, L); or raw (N, L, K) with head None."""
        if shared is not None:
            from model.shared_prompt import shared_values  # an acceleration (training/accelerations.py)
            return shared_values(self.rwtransformer, self.v_head, input_ids, attention_mask, shared, head)
        outputs = self.rwtransformer(input_ids, attention_mask=attention_mask, use_cache=use_cache, **kwargs)
        values = self.v_head(outputs[0])
        return values if head is None else combine(values, head)

    def _offset(self, values):
        return values - self.reward_offset if self.reward_offset else values

    def packed_values(self, token_ids, lengths, per_head=False):
        """(T,) ids of texts of `lengths` tokens, one after the other -> (T,) rewards, each text's as it gets
        them alone (model/shared_prompt.py `packed_values`, for base models it `packs`; model/scoring.py);
        `per_head`: the raw (T, K) head outputs instead."""
        from model.shared_prompt import packed_values
        if per_head:
            return packed_values(self.rwtransformer, self.v_head, token_ids, lengths, None)
        return self._offset(packed_values(self.rwtransformer, self.v_head, token_ids, lengths, self.settings.head))

    def end_positions(self, input_ids, attention_mask=None):
        """(N, L) rows -> (N,) one past the token each row's score is read at (this model's rule)."""
        return row_ends(input_ids, attention_mask, self.PAD_ID, self.num_padding_at_beginning, self.end_token_rule)

    def forward(self, input_ids=None, attention_mask=None, share_prompt=False, labels=None, label_mask=None,
                **pair_fields):
        """Loss and end scores of 2B rows (B pairs). `pair_fields`: the batch's per-pair tensors, (B,) each
        (e.g. `margin`), handed to the loss. `share_prompt`: each pair's shared start goes through the model
        once (`shared_lengths`; same values where the loss reads them). An ensemble (num_heads > 1) trains each
        head on its own outputs (`ensemble_loss`); its scores are the combined reward's, and `chosen_head_scores`
        / `rejected_head_scores` (B, K) hold each head's. A batch of rated rows (`labels`, see `rated_forward`)
        takes the regression objective instead."""
        if labels is not None:
            return self.rated_forward(input_ids, attention_mask, labels, label_mask)
        shared = None
        if share_prompt:
            shared = shared_lengths(input_ids, attention_mask, self.PAD_ID, self.num_padding_at_beginning,
                                    self.end_token_rule)
        pairs = input_ids.size(0) // 2
        masks = (None, None) if attention_mask is None else (attention_mask[:pairs], attention_mask[pairs:])
        spans = loss_spans(input_ids[:pairs], input_ids[pairs:], self.PAD_ID, self.num_padding_at_beginning,
                           *masks, self.end_token_rule)
        if self.settings.head.num_heads > 1:
            return self._ensemble_forward(input_ids, attention_mask, shared, spans, pair_fields)
        rewards = self._values(input_ids, attention_mask, shared=shared)
        loss, chosen_scores, rejected_scores = pairwise_loss(rewards[:pairs], rewards[pairs:], spans,
                                                             self.settings.loss, pair_fields)
        return {"loss": loss, "chosen_mean_scores": chosen_scores, "rejected_mean_scores": rejected_scores}

    def rated_forward(self, input_ids, attention_mask, labels, label_mask):
        """--objective regression on B rated rows: (B, L) ids and mask, (B, K) `labels` and `label_mask`.
        Returns `loss` (`regression_loss`), `attribute_scores` (B, K), the head outputs at each row's end token
        (the pairs' end-token rule), and `rewards` (B,), those `combine`d with the attribute weights."""
        outputs = self.head_outputs(input_ids, attention_mask)
        ends = self.end_positions(input_ids, attention_mask)
        scores = outputs[torch.arange(outputs.size(0), device=outputs.device), ends - 1]
        return {"loss": regression_loss(scores, labels, label_mask), "attribute_scores": scores,
                "rewards": self._offset(combine(scores, self.settings.head))}

    def _ensemble_forward(self, input_ids, attention_mask, shared, spans, pair_fields):
        heads = self._offset(self.head_outputs(input_ids, attention_mask, shared=shared))  # (2B, L, K)
        pairs = input_ids.size(0) // 2
        loss, chosen, rejected = ensemble_loss(heads[:pairs], heads[pairs:], spans, self.settings.loss, pair_fields)
        return {"loss": loss, "chosen_mean_scores": combine(chosen, self.settings.head),
                "rejected_mean_scores": combine(rejected, self.settings.head),
                "chosen_head_scores": chosen, "rejected_head_scores": rejected}

    def forward_value(self, input_ids=None, attention_mask=None, return_value_only=False,
                      prompt_length=0, **kwargs):
        """Per-token values (N, L), or a dict adding `chosen_end_scores` (N,): what step 3 calls. Under the
        `last_token` rule the end score is the value at the last attended token (`prompt_length` unused)."""
        values = self._values(input_ids, attention_mask, **kwargs)
        if return_value_only:
            return values
        if self.end_token_rule == LAST_TOKEN:
            scores = values.gather(1, (self.end_positions(input_ids, attention_mask) - 1)[:, None]).squeeze(1)
        else:
            scores = end_scores_after(values, input_ids, self.PAD_ID, prompt_length)
        return {"values": values, "chosen_end_scores": scores}

    @classmethod
    def from_pretrained(cls, model_dir, dtype=None, center_rewards=False):
        """A reward model folder saved by main.py (or exported from a checkpoint): see model/create.py
        `load_reward_model`."""
        from model.create import load_reward_model
        return load_reward_model(model_dir, dtype=dtype, center_rewards=center_rewards)
