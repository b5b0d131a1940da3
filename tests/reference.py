"""DeepSpeed-Chat's per-pair loop, kept only as the correctness reference for model/reward_model.py."""
import torch
import torch.nn.functional as F


def reference_pairwise_loss(input_ids, rewards, pad_id, num_padding_at_beginning, compute_fp32_loss=False):
    bs = input_ids.shape[0] // 2
    seq_len = input_ids.shape[1]
    chosen_ids, rejected_ids = input_ids[:bs], input_ids[bs:]
    chosen_rewards, rejected_rewards = rewards[:bs], rewards[bs:]
    loss = 0.0
    chosen_scores, rejected_scores = [], []
    n = num_padding_at_beginning
    for i in range(bs):
        c_inds = (chosen_ids[i] == pad_id).nonzero()
        c_ind = c_inds[n].item() if len(c_inds) > n else seq_len
        check_divergence = (chosen_ids[i] != rejected_ids[i]).nonzero()
        if len(check_divergence) == 0:
            end_ind = rejected_rewards[i].size(-1)
            divergence_ind = end_ind - 1
            r_ind = c_ind
        else:
            r_inds = (rejected_ids[i] == pad_id).nonzero()
            r_ind = r_inds[n].item() if len(r_inds) > n else seq_len
            end_ind = max(c_ind, r_ind)
            divergence_ind = check_divergence[0]
        assert divergence_ind > 0
        c_truncated = chosen_rewards[i][divergence_ind:end_ind]
        r_truncated = rejected_rewards[i][divergence_ind:end_ind]
        chosen_scores.append(chosen_rewards[i][c_ind - 1])
        rejected_scores.append(rejected_rewards[i][r_ind - 1])
        if compute_fp32_loss:
            c_truncated, r_truncated = c_truncated.float(), r_truncated.float()
        loss += -F.logsigmoid(c_truncated - r_truncated).mean()
    return loss / bs, torch.stack(chosen_scores), torch.stack(rejected_scores)


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
