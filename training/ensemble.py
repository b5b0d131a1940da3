"""What an ensemble of value heads (--num_heads K > 1) adds to the pairwise evaluation: each head's accuracy,
how much the heads disagree, and whether they disagree more where the ensemble's mean is wrong.

`head_sums` turns one batch into sums that add over batches and ranks (training/evaluation.py all-reduces
them with its own totals); `head_metrics` turns the sums into numbers.
"""
import math

import torch


def head_spread(values):
    """(..., K) values of K heads -> (...) their standard deviation (population: divided by K), the ensemble's
    uncertainty about each value."""
    return values.std(dim=-1, correction=0)


def head_sums(chosen_heads, rejected_heads, wrong, counted):
    """One batch's sums: (K + 6,) float64.

    chosen_heads, rejected_heads: (B, K) end scores of each head; wrong: (B,) 1.0 where the ensemble's mean
    is not above on chosen (ties count as wrong, as in accuracy); counted: (B,) 1.0 for pairs that count.
    Holds each head's correct pairs (K), then over counted pairs: the margin spread s (the heads' std of
    chosen - rejected), s^2, wrong, s x wrong, and the spread of the scores themselves (chosen and rejected,
    summed)."""
    correct = ((chosen_heads > rejected_heads).double() * counted[:, None]).sum(dim=0)
    spread = head_spread((chosen_heads - rejected_heads).double())
    score_spread = head_spread(chosen_heads.double()) + head_spread(rejected_heads.double())
    return torch.cat([correct, torch.stack([(spread * counted).sum(), (spread ** 2 * counted).sum(),
                                            (wrong * counted).sum(), (spread * wrong * counted).sum(),
                                            (score_spread * counted).sum(), counted.sum()])])


def head_metrics(sums):
    """`head_sums` added over every batch and rank -> {"accuracy_head_k": ..., "margin_std": mean spread of the
    heads' margins, "score_std": mean spread of their scores, "margin_std_error_corr": point-biserial
    correlation of the margin spread with the mean's errors (Pearson's r of spread and wrong in {0, 1};
    left out when either does not vary)}."""
    heads = sums.numel() - 6
    spread_sum, square_sum, wrong_sum, both_sum, score_spread_sum, pairs = sums[heads:].tolist()
    pairs = max(pairs, 1.0)
    metrics = {f"accuracy_head_{k}": correct / pairs for k, correct in enumerate(sums[:heads].tolist())}
    mean_spread, error_rate = spread_sum / pairs, wrong_sum / pairs
    metrics.update(margin_std=mean_spread, score_std=score_spread_sum / (2 * pairs))
    spread_variance = square_sum / pairs - mean_spread ** 2
    error_variance = error_rate * (1 - error_rate)
    if spread_variance > 1e-12 and error_variance > 0:
        covariance = both_sum / pairs - mean_spread * error_rate
        metrics["margin_std_error_corr"] = covariance / math.sqrt(spread_variance * error_variance)
    return metrics
