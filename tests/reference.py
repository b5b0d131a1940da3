"""DeepSpeed-Chat's behaviour, the correctness reference for model/reward_model.py and training/optim.py.

Its per-pair loss loop lives in benchmarks/deepspeed_chat.py (the benchmarks' baseline runs it too) and is
re-exported here.
"""
import torch

from benchmarks.deepspeed_chat import reference_pairwise_loss  # noqa: F401 (tests import it from here)


def reference_end_scores(input_ids, values, pad_id, prompt_length):
    scores = []
    seq_len = input_ids.shape[1]
    for i in range(values.size(0)):
        c_inds = (input_ids[i][prompt_length:] == pad_id).nonzero()
        c_ind = c_inds[0].item() + prompt_length if len(c_inds) > 0 else seq_len
        scores.append(values[i][c_ind - 1])
    return torch.stack(scores)


def reference_grouped_parameters(model, weight_decay, lora_lr=5e-4):
    """DeepSpeed-Chat's `get_optimizer_grouped_parameters`, from its documented rule: a parameter whose
    lower-cased name contains "bias", "layer_norm.weight", "layernorm.weight", "norm.weight" or
    "ln_f.weight" gets no decay; the decayed ones whose name contains "lora_right_weight" or
    "lora_left_weight" (here peft's lora_A / lora_B) form a middle group with lr=lora_lr; empty groups
    are dropped. Returns [(parameter names, weight_decay, lr or None)]."""
    no_decay = ["bias", "layer_norm.weight", "layernorm.weight", "norm.weight", "ln_f.weight"]
    lora = ["lora_a", "lora_b"]
    trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    groups = [([n for n in trainable if not any(k in n.lower() for k in no_decay)
                and not any(k in n.lower() for k in lora)], weight_decay, None),
              ([n for n in trainable if not any(k in n.lower() for k in no_decay)
                and any(k in n.lower() for k in lora)], weight_decay, lora_lr),
              ([n for n in trainable if any(k in n.lower() for k in no_decay)], 0.0, None)]
    return [g for g in groups if g[0]]
