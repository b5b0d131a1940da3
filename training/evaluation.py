"""Pairwise evaluation shared by training (main.py) and evaluation_scripts/: same pairs, same numbers."""
import math

import numpy as np
import torch
from tqdm import tqdm

from data.collator import PairCollator
from data.sampler import length_sorted_indices
from training.ensemble import head_metrics
from utils.dist import all_gather_rows, all_reduce, get_rank, get_world_size, is_main_process


def eval_loader(eval_set, batch_size, pad_token_id, pad_to_multiple_of=None, max_batches=0, collate_fn=None):
    """(DataLoader over this rank's share of the pairs to score, number of real rows in it).

    The pairs: all of eval_set, or with `max_batches` the ones DeepSpeed-Chat's `--eval_iters` scores
    (`dschat_eval_subset`). Rows go longest first (little padding, and an out-of-memory error shows in
    the first batch), dealt to ranks in turn; each rank's share is padded by repeating a row so every
    rank runs the same number of forwards (ZeRO-3 needs that), and the padding is not counted.
    main.py and evaluation_scripts/ both use this, so they see the same batches. `collate_fn`: default
    `PairCollator`; rated rows (--objective regression) pass a `data.ratings.RatedCollator`.
    """
    from torch.utils.data import DataLoader, Subset

    rank, world = get_rank(), get_world_size()
    chosen = dschat_eval_subset(len(eval_set), batch_size, world, max_batches)
    indices = [chosen[i] for i in length_sorted_indices(Subset(eval_set, chosen))][rank::world]
    num_real = len(indices)
    per_rank = math.ceil(len(chosen) / world)
    indices += indices[-1:] * (per_rank - num_real) if indices else [0] * per_rank
    # No generator of its own: each pass draws a seed from torch's global RNG, as DeepSpeed-Chat's eval
    # loader does, so the training dropout masks after an evaluation follow the same random stream.
    loader = DataLoader(Subset(eval_set, indices), batch_size=batch_size,
                        collate_fn=collate_fn or PairCollator(pad_token_id, pad_to_multiple_of))
    return loader, num_real


def dschat_eval_subset(num_pairs, batch_size, world_size, max_batches):
    """Indices of the eval pairs scored: all, or (max_batches > 0) the first `max_batches` batches of
    every rank's `DistributedSampler(eval_dataset)` (shuffled, torch's default seed 0), which is what
    DeepSpeed-Chat's evaluation with `--eval_iters max_batches` sees. Each pair counts once."""
    if not max_batches:
        return list(range(num_pairs))
    from torch.utils.data import DistributedSampler
    picked = set()
    for rank in range(world_size):
        order = list(DistributedSampler(range(num_pairs), num_replicas=world_size, rank=rank, shuffle=True, seed=0))
        picked.update(order[:max_batches * batch_size])
    return sorted(picked)


def to_device(batch, device):
    return {key: value.to(device) for key, value in batch.items()}


@torch.no_grad()
def evaluate(model, loader, device, num_real, desc="eval", scores_out=None):
    """Accuracy (chosen end score > rejected; ties count as wrong, as in DeepSpeed-Chat, and are also
    counted apart), mean scores, margin and reward mean/std, over all ranks.

    `model` is a RewardModel or a DeepSpeed engine wrapping one; `loader` yields this rank's shard,
    of which the first `num_real` rows count. `scores_out`, a list, receives this rank's
    (chosen, rejected) end scores. An ensemble (--num_heads > 1) adds training/ensemble.py's `head_metrics`.
    """
    was_training = model.training
    model.eval()
    # correct, ties, pairs, sum chosen, sum rejected, sum of squared rewards (chosen and rejected)
    totals = torch.zeros(6, dtype=torch.float64, device=device)
    heads = []  # an ensemble's (chosen (B, K), rejected (B, K), counted (B,)) per batch
    seen = 0
    for batch in tqdm(loader, desc=desc, leave=False, disable=not is_main_process()):
        out = model(**to_device(batch, device))
        chosen = out["chosen_mean_scores"].double()
        rejected = out["rejected_mean_scores"].double()
        counted = (torch.arange(seen, seen + chosen.numel(), device=device) < num_real).double()
        if scores_out is not None:
            keep = counted.bool()
            scores_out.extend(zip(chosen[keep].tolist(), rejected[keep].tolist()))
        seen += chosen.numel()
        if "chosen_head_scores" in out:
            heads.append((out["chosen_head_scores"], out["rejected_head_scores"], counted))
        totals += torch.stack([((chosen > rejected).double() * counted).sum(),
                               ((chosen == rejected).double() * counted).sum(), counted.sum(),
                               (chosen * counted).sum(), (rejected * counted).sum(),
                               ((chosen ** 2 + rejected ** 2) * counted).sum()])
    all_reduce(totals)
    model.train(was_training)
    correct, ties, pairs, chosen_sum, rejected_sum, square_sum = totals.tolist()
    pairs = max(pairs, 1.0)
    reward_mean = (chosen_sum + rejected_sum) / (2 * pairs)
    ensemble = head_metrics(*(torch.cat(parts) for parts in zip(*heads))) if heads else {}
    return {"accuracy": correct / pairs, "ties": int(ties), "chosen_mean": chosen_sum / pairs,
            "rejected_mean": rejected_sum / pairs, "margin": (chosen_sum - rejected_sum) / pairs,
            "num_pairs": int(pairs), "reward_mean": reward_mean,
            "reward_std": math.sqrt(max(square_sum / (2 * pairs) - reward_mean ** 2, 0.0))} | ensemble


@torch.no_grad()
def evaluate_regression(model, loader, device, num_real, head, desc="eval"):
    """Attribute heads (--objective regression) on rated rows, over all ranks: per attribute RMSE, Pearson and
    Spearman against the present ratings; their means over the attributes; the combined reward's
    (`head.attribute_weights` . outputs) mean/std; and its pairwise accuracy over the rows of one prompt whose
    rated rewards (the same weights . ratings; rows missing a weighted rating left out) differ.

    `loader` yields this rank's rows (a RatedCollator with groups), of which the first `num_real` count.
    """
    from evaluation_scripts.rm_metrics import attribute_metrics, grouped_pair_accuracy
    was_training = model.training
    model.eval()
    parts, seen = [], 0
    for batch in tqdm(loader, desc=desc, leave=False, disable=not is_main_process()):
        groups = batch.pop("group")
        outputs = model(**to_device(batch, device))["attribute_scores"].double().cpu()  # (B, K)
        counted = torch.arange(seen, seen + len(groups)) < num_real
        seen += len(groups)
        parts.append(torch.cat([outputs, batch["labels"].double(), batch["label_mask"].double(),
                                groups[:, None].double(), counted[:, None].double()], dim=1))
    model.train(was_training)
    table = all_gather_rows(torch.cat(parts).to(device)).cpu().numpy()
    table = table[table[:, -1] == 1]
    count = len(head.attributes)
    outputs, labels, mask = table[:, :count], table[:, count:2 * count], table[:, 2 * count:3 * count] == 1
    weights = np.asarray(head.attribute_weights, dtype=float)
    rewards = outputs @ weights
    weighted = weights != 0
    label_rewards = np.where(mask[:, weighted].all(axis=1), np.where(mask, labels, 0.0) @ weights, np.nan)
    per_attribute = attribute_metrics(outputs, labels, mask, head.attributes)
    metrics = {key: _mean([m[key] for m in per_attribute.values()]) for key in ("rmse", "pearson", "spearman")}
    metrics.update(grouped_pair_accuracy(rewards, label_rewards, table[:, 3 * count]))
    metrics.update(num_rows=len(table), reward_mean=float(rewards.mean()) if len(rewards) else 0.0,
                   reward_std=float(rewards.std()) if len(rewards) else 0.0)
    for name, values in per_attribute.items():
        metrics.update({f"{name}/{key}": value for key, value in values.items()})
    return metrics


def _mean(values):
    values = [v for v in values if v is not None]
    return float(np.mean(values)) if values else None
