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
    with_source = "source" in getattr(eval_set, "column_names", ())  # for evaluate's per-source breakdown
    collate_fn = collate_fn or PairCollator(pad_token_id, pad_to_multiple_of, with_source=with_source)
    loader = DataLoader(Subset(eval_set, indices), batch_size=batch_size, collate_fn=collate_fn)
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
def evaluate(model, loader, device, num_real, desc="eval", scores_out=None, source_names=None):
    """Accuracy (chosen end score > rejected; ties count as wrong, as in DeepSpeed-Chat, and are also
    counted apart), mean scores, margin and reward mean/std, over all ranks.

    `model` is a RewardModel or a DeepSpeed engine wrapping one; `loader` yields this rank's shard,
    of which the first `num_real` rows count. `scores_out`, a list, receives this rank's
    (chosen, rejected) end scores. With `source_names` (the name of each `source` id the batches carry,
    see `eval_loader`) the same metrics per source go under 'by_source' {name: metrics}. An ensemble
    (--num_heads > 1) adds training/ensemble.py's `head_metrics`.
    """
    was_training = model.training
    model.eval()
    # correct, ties, pairs, sum chosen, sum rejected, sum of squared rewards (chosen and rejected)
    totals = torch.zeros(6, dtype=torch.float64, device=device)
    heads = []  # an ensemble's (chosen (B, K), rejected (B, K), counted (B,)) per batch
    seen, kept = 0, []
    for batch in tqdm(loader, desc=desc, leave=False, disable=not is_main_process()):
        sources = batch.pop("source", None)
        out = model(**to_device(batch, device))
        chosen = out["chosen_mean_scores"].double()
        rejected = out["rejected_mean_scores"].double()
        counted = (torch.arange(seen, seen + chosen.numel(), device=device) < num_real).double()
        keep = counted.bool()
        if scores_out is not None:
            scores_out.extend(zip(chosen[keep].tolist(), rejected[keep].tolist()))
        if source_names and sources is not None:
            kept.append((sources.to(device)[keep], chosen[keep], rejected[keep]))
        if "chosen_head_scores" in out:
            heads.append((out["chosen_head_scores"], out["rejected_head_scores"], counted))
        seen += chosen.numel()
        totals += pair_totals(chosen, rejected, counted)
    all_reduce(totals)
    model.train(was_training)
    metrics = summarize(totals.tolist())
    if source_names:
        metrics["by_source"] = per_source(kept, source_names, device)
    if heads:
        metrics.update(head_metrics(*(torch.cat(parts) for parts in zip(*heads))))
    return metrics


def pair_totals(chosen, rejected, weight):
    """(6,) float64 sums over pairs with `weight` 1 (of 0/1): correct, ties, pairs, chosen, rejected,
    squared rewards. chosen, rejected, weight: (B,) float64."""
    return torch.stack([((chosen > rejected).double() * weight).sum(), ((chosen == rejected).double() * weight).sum(),
                        weight.sum(), (chosen * weight).sum(), (rejected * weight).sum(),
                        ((chosen ** 2 + rejected ** 2) * weight).sum()])


def summarize(totals):
    """The metrics dict from the 6 `pair_totals` sums (all ranks')."""
    correct, ties, num_pairs, chosen_sum, rejected_sum, square_sum = totals
    pairs = max(num_pairs, 1.0)
    reward_mean = (chosen_sum + rejected_sum) / (2 * pairs)
    return {"accuracy": correct / pairs, "ties": int(ties), "chosen_mean": chosen_sum / pairs,
            "rejected_mean": rejected_sum / pairs, "margin": (chosen_sum - rejected_sum) / pairs,
            "num_pairs": int(num_pairs), "reward_mean": reward_mean,
            "reward_std": math.sqrt(max(square_sum / (2 * pairs) - reward_mean ** 2, 0.0))}


def per_source(kept, names, device):
    """{name: metrics} over all ranks. `kept`: this rank's counted pairs as (source ids, chosen, rejected)
    tensors per batch; every rank calls this (one all_reduce), with or without pairs."""
    totals = torch.zeros(len(names), 6, dtype=torch.float64, device=device)
    if kept:
        sources, chosen, rejected = (torch.cat(parts) for parts in zip(*kept))
        for s in range(len(names)):
            totals[s] = pair_totals(chosen, rejected, (sources == s).double())
    all_reduce(totals)
    return {name: summarize(row) for name, row in zip(names, totals.tolist())}


def evaluate_sets(model, sets, device):
    """{name: metrics} of the named held-out sets (`sets`: {name: (loader, real rows on this rank)}).
    torch's CPU RNG is restored afterwards: each eval pass draws a loader seed from it, and a held-out
    set must not change the training's random stream (dropout masks) nor a resume's."""
    state = torch.get_rng_state()
    results = {name: evaluate(model, loader, device, num_real, desc=f"eval {name}")
               for name, (loader, num_real) in sets.items()}
    torch.set_rng_state(state)
    return results


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
