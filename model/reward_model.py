"""The reward model: a causal LM with a bias-free scalar value head, DeepSpeed-Chat semantics.

The pure tensor functions below (`end_indices`, `pairwise_loss`, `end_scores_after`) hold all the
reward maths, computed for the whole batch at once, so tests can check them directly against a
per-pair reference loop (tests/reference.py).

Two end-token rules say where a row's score is read (`END_TOKEN_RULES`): DeepSpeed-Chat's, before the
(n+1)-th PAD token (PAD = EOS), exact for its data and OPT; and `last_token`, at the last attended
token of the row (the attention mask), for texts where EOS also ends earlier turns (chat templates).
"""
import math

import torch
import torch.nn.functional as F
from torch import nn

from model.shared_prompt import shared_values

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


def pairwise_loss(chosen_ids, rejected_ids, chosen_rewards, rejected_rewards, pad_id,
                  num_padding_at_beginning, compute_fp32_loss=False, margin=None, center_coefficient=0.0,
                  chosen_mask=None, rejected_mask=None, end_token_rule=DEEPSPEED_CHAT):
    """DeepSpeed-Chat's pairwise ranking loss for B pairs at once.

    ids, rewards and masks are (B, L). For each pair the loss is the mean of -logsigmoid(r_c - r_j) over
    its `loss_spans` span. Options (off by default, so the default is DeepSpeed-Chat's): `margin` (B,)
    makes the term -logsigmoid(r_c - r_j - margin); `center_coefficient` adds c * mean((s_c + s_j)^2)
    over the end scores, which keeps rewards centred on 0; `end_token_rule` picks where scores are read.
    Returns (loss averaged over pairs, chosen end scores (B,), rejected end scores (B,)).
    """
    positions = torch.arange(chosen_ids.size(1), device=chosen_ids.device)
    start, end, chosen_end, rejected_end = loss_spans(chosen_ids, rejected_ids, pad_id, num_padding_at_beginning,
                                                      chosen_mask, rejected_mask, end_token_rule)
    in_span = (positions >= start[:, None]) & (positions < end[:, None])
    if compute_fp32_loss:  # upcast each reward, then subtract (as DeepSpeed-Chat does); scores keep their dtype
        difference = chosen_rewards.float() - rejected_rewards.float()
    else:
        difference = chosen_rewards - rejected_rewards
    if margin is not None:
        difference = difference - margin.to(difference.dtype)[:, None]
    per_token = torch.where(in_span, -F.logsigmoid(difference), 0.0)
    pair_loss = per_token.sum(dim=1) / in_span.sum(dim=1)
    chosen_scores = chosen_rewards.gather(1, (chosen_end - 1)[:, None]).squeeze(1)
    rejected_scores = rejected_rewards.gather(1, (rejected_end - 1)[:, None]).squeeze(1)
    loss = pair_loss.mean()
    if center_coefficient:
        loss = loss + center_coefficient * ((chosen_scores.float() + rejected_scores.float()) ** 2).mean()
    return loss, chosen_scores, rejected_scores


def end_scores_after(values, input_ids, pad_id, prompt_length):
    """(N, L) values -> (N,) value at the token before the first PAD at or after prompt_length (or L-1)."""
    length = input_ids.size(1)
    positions = torch.arange(length, device=input_ids.device).expand_as(input_ids)
    answer_pad = (input_ids == pad_id) & (positions >= prompt_length)
    end = torch.where(answer_pad, positions, length).min(dim=1).values
    return values.gather(1, (end - 1)[:, None]).squeeze(1)


class RewardModel(nn.Module):
    """A base transformer (`rwtransformer`) plus `v_head`, with DeepSpeed-Chat's interface.

    `forward` takes 2B rows (all chosen, then all rejected) and returns `loss`,
    `chosen_mean_scores` and `rejected_mean_scores`: despite the names (kept for DeepSpeed-Chat's
    step 3), the scores are the reward at each answer's end token (`end_token_rule`), not a mean.
    """

    def __init__(self, base_model, tokenizer, num_padding_at_beginning=0, compute_fp32_loss=False,
                 end_of_conversation_token=END_OF_CONVERSATION, center_rewards_coefficient=0.0,
                 end_token_rule=DEEPSPEED_CHAT):
        super().__init__()
        self.config = base_model.config
        width = getattr(self.config, "word_embed_proj_dim", None) or self.config.hidden_size
        self.v_head = nn.Linear(width, 1, bias=False)
        self.rwtransformer = base_model
        self.PAD_ID = tokenizer.pad_token_id
        self.num_padding_at_beginning = num_padding_at_beginning
        self.compute_fp32_loss = compute_fp32_loss
        self.end_of_conversation_token = end_of_conversation_token
        self.center_rewards_coefficient = center_rewards_coefficient
        self.end_token_rule = end_token_rule
        self.reward_stats = {}  # reward_mean / reward_std over the eval set, saved for step 3
        self.reward_offset = 0.0  # subtracted from every value (see from_pretrained's center_rewards)

    def gradient_checkpointing_enable(self, gradient_checkpointing_kwargs=None):
        """Recompute activations in the backward pass (transformers 5 calls it activation checkpointing)."""
        self.rwtransformer.activation_checkpointing_enable(activation_checkpointing_kwargs=gradient_checkpointing_kwargs)

    def gradient_checkpointing_disable(self):
        self.rwtransformer.activation_checkpointing_disable()

    def _values(self, input_ids, attention_mask, use_cache=False, shared=None, **kwargs):
        """(N, L) ids -> (N, L) per-token rewards. kwargs (head_mask, ...) go to the base model. `shared`
        (N/2,): compute each pair's first `shared` tokens once (model/shared_prompt.py; those values are 0;
        training only: `use_cache` and kwargs do not apply)."""
        if shared is not None:
            values = shared_values(self.rwtransformer, self.v_head, input_ids, attention_mask, shared)
        else:
            outputs = self.rwtransformer(input_ids, attention_mask=attention_mask, use_cache=use_cache, **kwargs)
            values = self.v_head(outputs[0]).squeeze(-1)
        return values - self.reward_offset if self.reward_offset else values

    def end_positions(self, input_ids, attention_mask=None):
        """(N, L) rows -> (N,) one past the token each row's score is read at (this model's rule)."""
        return row_ends(input_ids, attention_mask, self.PAD_ID, self.num_padding_at_beginning, self.end_token_rule)

    def forward(self, input_ids=None, attention_mask=None, margin=None, share_prompt=False, **kwargs):
        """`margin` (B,): optional per-pair margins (the data's `margin` column with --use_margin).
        `share_prompt`: each pair's shared start goes through the model once (`shared_lengths`)."""
        shared = None
        if share_prompt:
            shared = shared_lengths(input_ids, attention_mask, self.PAD_ID, self.num_padding_at_beginning,
                                    self.end_token_rule)
        rewards = self._values(input_ids, attention_mask, shared=shared, **kwargs)
        pairs = input_ids.size(0) // 2
        masks = (None, None) if attention_mask is None else (attention_mask[:pairs], attention_mask[pairs:])
        loss, chosen_scores, rejected_scores = pairwise_loss(
            input_ids[:pairs], input_ids[pairs:], rewards[:pairs], rewards[pairs:], self.PAD_ID,
            self.num_padding_at_beginning, self.compute_fp32_loss, margin, self.center_rewards_coefficient,
            *masks, self.end_token_rule)
        return {"loss": loss, "chosen_mean_scores": chosen_scores, "rejected_mean_scores": rejected_scores}

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

    # ---- Hugging Face-format save / load -------------------------------------------------------

    def reward_settings(self):
        return {"num_padding_at_beginning": self.num_padding_at_beginning,
                "end_of_conversation_token": self.end_of_conversation_token,
                "pad_token_id": self.PAD_ID, "end_token_rule": self.end_token_rule, **self.reward_stats}

    @classmethod
    def from_pretrained(cls, model_dir, dtype=None, center_rewards=False, **overrides):
        """Load a model saved by `model.io.save_hf_model`: no other arguments needed.

        `dtype` defaults to the dtype the weights were saved in (the training precision), so scores
        match the ones main.py reported bit for bit on the same device. Only the parameters take that
        dtype: buffers stay as transformers makes them, as in `AutoModelForSequenceClassification`
        (rotary frequencies in fp32; DeepSpeed's bf16 training rounds them, so a bf16 Llama-style model
        scores within about one bf16 step of its training-time evaluation). `center_rewards` subtracts
        the eval-set reward mean saved at the end of training from every value (step 3's usual
        normalisation); the loss is unchanged by it.
        """
        from transformers import AutoConfig, AutoModel, AutoTokenizer

        from model.io import WEIGHTS_NAME, read_reward_settings, read_weights
        from utils.errors import UserError
        settings = dict(read_reward_settings(model_dir), **overrides)
        config = AutoConfig.from_pretrained(model_dir)
        tokenizer = AutoTokenizer.from_pretrained(model_dir)
        tokenizer.pad_token_id = settings.pop("pad_token_id")
        state = read_weights(model_dir)
        head = state.get("v_head.weight")  # None: refused below
        dtype = dtype or (head.dtype if head is not None else torch.float32)
        base = AutoModel.from_config(config, dtype=dtype)
        model = cls(base, tokenizer, **{k: v for k, v in settings.items() if k in _INIT_SETTINGS})
        model.v_head.to(dtype)
        missing, unexpected = model.load_state_dict(state, strict=False)
        if missing or unexpected:
            raise UserError(f"{model_dir}/{WEIGHTS_NAME} does not match the model in config.json: "
                            f"missing {missing[:5]}, unexpected {unexpected[:5]}. A reward model needs its "
                            "trained value head (v_head.weight); re-save it with main.py.")
        model.reward_stats = {k: settings[k] for k in ("reward_mean", "reward_std") if k in settings}
        if center_rewards:
            if "reward_mean" not in model.reward_stats:
                raise UserError(f"{model_dir}/config.json has no reward_mean to centre with: re-train or "
                                "evaluate with this project's main.py.")
            model.reward_offset = model.reward_stats["reward_mean"]
        return model.eval()


_INIT_SETTINGS = ("num_padding_at_beginning", "compute_fp32_loss", "end_of_conversation_token", "end_token_rule")
