"""Score whole texts with a reward model, exactly as a training row is scored (tokenised, end token), each
text getting the score it gets alone in a batch of one.

`score_ids` packs a batch (model/shared_prompt.py `packed_values`): the texts' tokens one after the other in
one row, so the linear layers see no padding, and attention per text with the positions each text has
alone, through the model's own eager or SDPA attention. Base models that shared_prompt `packs` (OPT, GPT-2,
Llama, Qwen2, Mistral with full attention or one sliding window in every layer, on the transformers series
it was verified on) are packed; others (and `pack=False`) run right-padded rows. `score_all` scores a list
of any size in length-sorted batches of about `batch_tokens_for` its device.
"""
import contextlib

import torch

from data.inputs import encode_texts
from model.shared_prompt import packs
from utils.errors import UserError

# Tokens per scoring batch, counted as texts x longest text (the padded rows attention runs on, packed or
# not). On a CPU a forward costs least per token near 2,048 (bigger ones leave the caches: docs/serving.md,
# docs/benchmarks.md); a GPU wants more work per forward: 32 texts of 512 tokens, 8 of 2048.
BATCH_TOKENS = {"cpu": 2048, "cuda": 16384}


def batch_tokens_for(device):
    """The default tokens per scoring batch on `device` (a torch.device or its name)."""
    return BATCH_TOKENS.get(torch.device(device).type, BATCH_TOKENS["cuda"])


@torch.no_grad()
def score_texts(model, tokenizer, texts, max_seq_len):
    """Reward of each full text (prompt + answer + end-of-conversation) at its end token: (N,) floats.

    Tokenised exactly like training rows and read under the model's end-token rule, so a score equals the
    pair score for that text."""
    return score_ids(model, encode_texts(tokenizer, texts, max_seq_len))


@torch.no_grad()
def score_ids(model, ids, pack=None, per_head=False):
    """Reward of each row of token ids (lists) at its end token under the model's rule, as the row gets it
    alone: (N,) fp32; `per_head`: each value-head output there instead, (N, K) fp32 raw (no reward_offset;
    `ensemble_scores` combines them). `pack`: compute the rows packed (default: where `packs` allows; False:
    right-padded rows). Runs in eval mode (the model's mode is restored after)."""
    device = model.v_head.weight.device
    if not ids:
        return torch.empty((0, model.v_head.weight.size(0)) if per_head else 0, device=device)
    lengths = torch.tensor([len(row) for row in ids], device=device)
    input_ids = torch.full((len(ids), int(lengths.max())), model.PAD_ID, device=device)
    attention_mask = torch.arange(input_ids.size(1), device=device) < lengths[:, None]
    input_ids[attention_mask] = torch.tensor([token for row in ids for token in row], dtype=torch.long, device=device)
    ends = alone_ends(model, input_ids, attention_mask.long(), lengths, ids)
    with eval_mode(model):
        if packs(model.config) if pack is None else pack:
            values = model.packed_values(input_ids[attention_mask], lengths.tolist(), per_head).float()
            return values[lengths.cumsum(0) - lengths + ends - 1]
        if per_head:
            values = model.head_outputs(input_ids, attention_mask.long()).float()
            return values[torch.arange(len(ids), device=device), ends - 1]
        values = model.forward_value(input_ids, attention_mask.long(), return_value_only=True).float()
        return values.gather(1, (ends - 1)[:, None]).squeeze(1)


def attribute_scores(model, head_scores):
    """(N, K) outputs (`score_ids(per_head=True)`) of an attribute model (main.py --objective regression) ->
    {"reward": (N,) the combined reward (attribute_weights . outputs, as `score_ids` gives it), "attributes":
    (N, K) the outputs, attribute k named by settings.head.attributes[k]}."""
    from model.reward_model import combine
    return {"reward": model._offset(combine(head_scores, model.settings.head)), "attributes": head_scores}


def ensemble_scores(model, head_scores):
    """(N, K) raw head scores (`score_ids(per_head=True)`) -> {"reward": (N,) the combined reward (what
    `score_ids` gives), "uncertainty": (N,) how much the heads disagree (training/ensemble.py `uncertainty`,
    with the model's saved statistics), "heads": (N, K) each head's score}, rewards less the model's
    reward_offset; with the model's conservative_lambda, also "conservative": reward - lambda x uncertainty."""
    from model.reward_model import combine
    from training.ensemble import uncertainty
    head = model.settings.head
    scores = {"reward": model._offset(combine(head_scores, head)),
              "uncertainty": uncertainty(head_scores, model.reward_stats),
              "heads": model._offset(head_scores)}
    if head.conservative_lambda:
        scores["conservative"] = scores["reward"] - head.conservative_lambda * scores["uncertainty"]
    return scores


def alone_ends(model, input_ids, attention_mask, lengths, ids):
    """(N,) one past the token each right-padded row's score is read at when the row is alone. The padding
    matters only where DeepSpeed-Chat's rule finds its (n+1)-th PAD there, and alone the row has none: its
    last token, as `row_ends` gives a row without it. UserError for a row with nothing before that token."""
    ends = torch.minimum(model.end_positions(input_ids, attention_mask), lengths)
    unscorable = (ends < 1).nonzero().flatten().tolist()
    if unscorable:
        row = ids[unscorable[0]]
        why = ("it is empty" if not row else f"it starts with the PAD id {model.PAD_ID}, before which DeepSpeed-"
               f"Chat's end-token rule (num_padding_at_beginning 0) reads the score: ids {row[:8]}")
        raise UserError(f"{len(unscorable)} of {len(ids)} texts have no token to read a score at; the first: "
                        f"{why}. Give every text content before its end token.")
    return ends


@contextlib.contextmanager
def eval_mode(model):
    """The model in eval mode (no dropout) inside the block, in its own mode after."""
    training = model.training
    model.eval()
    try:
        yield
    finally:
        model.train(training)


def length_batches(lengths, batch_tokens):
    """Indices of texts of `lengths` tokens in scoring batches: longest first, each batch as many texts as
    fit `batch_tokens` counted as texts x its longest (a text longer than that goes alone)."""
    batches = []
    for i in sorted(range(len(lengths)), key=lambda i: -lengths[i]):
        if batches and (len(batches[-1]) + 1) * lengths[batches[-1][0]] <= batch_tokens:
            batches[-1].append(i)
        else:
            batches.append([i])
    return batches


def score_all(model, ids, batch_tokens=None, progress=iter, per_head=False, pack=None):
    """(N,) fp32 rewards of every row of `ids`, in their order, scored in `length_batches` of `batch_tokens`
    (default: `batch_tokens_for` the model's device); `per_head`: (N, K) raw head scores, as `score_ids`.
    `progress` wraps the list of batches (e.g. tqdm); `pack` as `score_ids`'."""
    batch_tokens = batch_tokens or batch_tokens_for(model.v_head.weight.device)
    scores = torch.empty((len(ids), model.v_head.weight.size(0)) if per_head else len(ids))
    for batch in progress(length_batches([len(row) for row in ids], batch_tokens)):
        scores[batch] = score_ids(model, [ids[i] for i in batch], pack, per_head).cpu()
    return scores


def score_fields(model, ids, batch_tokens=None, heads=False, progress=iter):
    """{field: (N,) or (N, K) fp32 tensor} for every row of `ids` (`score_all`): 'reward'; for an ensemble
    (num_heads > 1) also 'uncertainty' and, with conservative_lambda, 'conservative' (`ensemble_scores`);
    with `heads`, each value-head output 'heads' (any model)."""
    if model.settings.head.num_heads == 1 and not heads:
        return {"reward": score_all(model, ids, batch_tokens, progress)}
    scores = ensemble_scores(model, score_all(model, ids, batch_tokens, progress, per_head=True))
    if model.settings.head.num_heads == 1:
        scores.pop("uncertainty")
    if not heads:
        scores.pop("heads")
    return scores


def speed(texts, tokens, seconds):
    """One line of scoring speed: texts and tokens in how long, per second."""
    return (f"{texts} texts ({tokens:,} tokens) in {seconds:.1f} s: {texts / seconds:,.1f} texts/s, "
            f"{tokens / seconds:,.0f} tokens/s")
