"""An ensemble of value heads (--num_heads K > 1): its uncertainty, and what it adds to the pairwise evaluation.

The pairwise loss fixes neither a head's offset nor its scale (-logsigmoid(r_c - r_j) only sees differences,
and heads on one backbone grow to different scales), so the raw std of the heads' scores mostly measures
how far apart their scales are: it grows with the score itself, in distribution as out of it. The ensemble's
uncertainty is therefore the std of the heads after each is standardised on a reference set (the eval
pairs: each head's mean and std there), times the ensemble reward's std on that set, so it is in reward
units: `uncertainty`. Scale differences then cancel and what remains is where the heads disagree.
"""
import torch

from utils.dist import all_reduce, get_rank, get_world_size


def head_spread(values):
    """(..., K) values of K heads -> (...) their standard deviation (population: divided by K)."""
    return values.std(dim=-1, correction=0)


def uncertainty(head_scores, stats):
    """(..., K) head scores -> (...) the ensemble's uncertainty: `head_spread` of the heads standardised with
    `stats` ("head_mean", "head_std": K each, and "reward_std" of the ensemble's reward, from
    `head_metrics` at the end of training, saved with the model), in reward units. Without those stats
    (a model saved before them): the raw `head_spread`."""
    if not stats.get("head_std") or not stats.get("reward_std"):
        return head_spread(head_scores)
    mean = torch.tensor(stats["head_mean"], dtype=head_scores.dtype, device=head_scores.device)
    std = torch.tensor(stats["head_std"], dtype=head_scores.dtype, device=head_scores.device).clamp_min(1e-12)
    return head_spread((head_scores - mean) / std) * stats["reward_std"]


def gathered(tensor):
    """This rank's (n, ...) rows -> every rank's, (world x n, ...) in rank order; every rank must hold n rows
    (training/evaluation.py's eval_loader gives each rank as many). One process: the tensor itself."""
    world = get_world_size()
    if world == 1:
        return tensor
    rows = tensor.size(0)
    whole = tensor.new_zeros((world * rows, *tensor.shape[1:]))
    whole[get_rank() * rows:(get_rank() + 1) * rows] = tensor
    return all_reduce(whole)


def head_metrics(chosen_heads, rejected_heads, counted):
    """The ensemble's evaluation over every rank's pairs (call on every rank).

    chosen_heads, rejected_heads: (N, K) each head's end scores on this rank's pairs; counted: (N,) True for
    pairs that count. Returns {"accuracy_head_k": each head's accuracy, "head_mean", "head_std": each head's
    score mean and std over chosen and rejected texts (lists; `uncertainty` standardises with them),
    "score_std": mean `uncertainty` of a text, "margin_std": mean uncertainty of a pair's margin (the heads'
    standardised chosen - rejected), "margin_std_error_corr": the point-biserial correlation of the margin's
    uncertainty with the mean's errors (Pearson's r with wrong in {0, 1}; left out when either is constant)}.
    """
    chosen_heads, rejected_heads = gathered(chosen_heads.double()), gathered(rejected_heads.double())
    keep = gathered(counted.double()).bool()
    chosen_heads, rejected_heads = chosen_heads[keep], rejected_heads[keep]
    if not len(chosen_heads):
        return {}
    both = torch.cat([chosen_heads, rejected_heads])
    stats = {"head_mean": both.mean(dim=0).tolist(), "head_std": both.std(dim=0, correction=0).tolist(),
             "reward_std": both.mean(dim=1).std(correction=0).item()}
    metrics = {f"accuracy_head_{k}": (chosen_heads[:, k] > rejected_heads[:, k]).double().mean().item()
               for k in range(chosen_heads.size(1))}
    metrics.update(head_mean=stats["head_mean"], head_std=stats["head_std"],
                   score_std=uncertainty(both, stats).mean().item())
    scale = both.std(dim=0, correction=0).clamp_min(1e-12)
    margin_spread = head_spread((chosen_heads - rejected_heads) / scale) * stats["reward_std"]
    metrics["margin_std"] = margin_spread.mean().item()
    wrong = (chosen_heads.mean(dim=1) <= rejected_heads.mean(dim=1)).double()
    if margin_spread.std() > 0 and wrong.std() > 0:
        metrics["margin_std_error_corr"] = torch.corrcoef(torch.stack([margin_spread, wrong]))[0, 1].item()
    return metrics
