"""Score whole texts with a reward model, exactly as a training row is scored (tokenised, padded, end token)."""
import torch

from data.inputs import encode_texts


@torch.no_grad()
def score_texts(model, tokenizer, texts, max_seq_len):
    """Reward of each full text (prompt + answer + end-of-conversation) at its end token: (N,) floats.

    Tokenised and padded exactly like training rows, and read under the model's end-token rule, so a
    score equals the pair score for that text.
    """
    return score_ids(model, encode_texts(tokenizer, texts, max_seq_len))


@torch.no_grad()
def score_ids(model, ids):
    """Reward of each row of token ids (lists) at its end token under the model's rule: (N,) floats."""
    length = max(len(row) for row in ids)
    device = model.v_head.weight.device
    input_ids = torch.tensor([row + [model.PAD_ID] * (length - len(row)) for row in ids], device=device)
    attention_mask = torch.tensor([[1] * len(row) + [0] * (length - len(row)) for row in ids], device=device)
    values = model.forward_value(input_ids, attention_mask, return_value_only=True).float()
    end = model.end_positions(input_ids, attention_mask)
    return values.gather(1, (end - 1)[:, None]).squeeze(1)
